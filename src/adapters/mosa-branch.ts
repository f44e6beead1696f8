/**
 * The MoSA parallel adapter beside a block's MLP, s·Up(dropout(act(Down(norm_a(x))))), and
 * the hooks that run a merged (dense) MoSA adapter from named graph inputs. The same hooks
 * serve the method's eval graph and adapters loaded from disk, which run unfused: the
 * branch has a norm and a nonlinearity, so it cannot be folded into the base weights.
 */
import { z } from 'zod';
import type { Graph, Value } from '../engine/ir.js';
import { geluErf, linear, rmsNorm, silu } from '../engine/nn.js';
import { add, mul } from '../engine/ops/index.js';
import { seededDropout } from '../engine/noise.js';
import type { ModelHooks } from '../models/hooks.js';

export const mosaActivations = ['gelu', 'silu'] as const;
export type MosaActivation = (typeof mosaActivations)[number];

export interface BranchOptions {
  scale: number;
  act: MosaActivation;
  normEps: number;
  dropout: number;
  /** Name of the dropout's seeded noise input (unique per block and pass). */
  noiseKey?: string;
}

export interface BranchTensors {
  norm: Value;
  downW: Value;
  downB: Value;
  upW: Value;
  upB: Value;
}

/** s·Up(dropout(act(Down(rmsNorm_a(x))))) for x [..., d]. */
export function adapterBranch(x: Value, t: BranchTensors, o: BranchOptions): Value {
  const n = rmsNorm(x, t.norm, o.normEps);
  const h = linear(n, t.downW, t.downB);
  const a = o.act === 'gelu' ? geluErf(h) : silu(h);
  return mul(linear(seededDropout(a, o.dropout, o.noiseKey ?? 'mosa'), t.upW, t.upB), o.scale);
}

/** Names of one block's merged adapter tensors (graph inputs and exported extra tensors). */
export function layerTensorNames(layer: number): { norm: string; downW: string; downB: string; upW: string; upB: string } {
  const p = `mosa.layers.${layer}`;
  return { norm: `${p}.norm.weight`, downW: `${p}.down.weight`, downB: `${p}.down.bias`, upW: `${p}.up.weight`, upB: `${p}.up.bias` };
}

/** Shapes of one block's tensors for hidden size d and bottleneck m. */
export function layerTensorShapes(d: number, m: number): { norm: number[]; downW: number[]; downB: number[]; upW: number[]; upB: number[] } {
  return { norm: [d], downW: [m, d], downB: [m], upW: [d, m], upB: [d] };
}

/** What adapter.json's config must say for a MoSA adapter to be run from its extra tensors. */
export const mosaAdapterConfigSchema = z.object({
  hiddenSize: z.number().int().positive(),
  bottleneck: z.number().int().positive(),
  scale: z.number().finite(),
  act: z.enum(mosaActivations),
  normEps: z.number().positive(),
  layers: z.array(z.number().int().nonnegative()).min(1),
});
export type MosaAdapterConfig = z.infer<typeof mosaAdapterConfigSchema>;

/** Declare (once per graph) a graph input by name. */
function inputOnce(g: Graph, name: string, shape: number[]): Value {
  return g.inputs.find((v) => v.name === name) ?? g.input(name, 'f32', shape);
}

/** `mlp` hooks adding a dense MoSA branch on `cfg.layers`, reading its tensors from graph inputs named by layerTensorNames. */
export function mergedHooks(cfg: MosaAdapterConfig): ModelHooks {
  const layers = new Set(cfg.layers);
  const shapes = layerTensorShapes(cfg.hiddenSize, cfg.bottleneck);
  const o: BranchOptions = { scale: cfg.scale, act: cfg.act, normEps: cfg.normEps, dropout: 0 };
  return {
    mlp: (layer, x, out, g) => {
      if (!layers.has(layer)) return out;
      const n = layerTensorNames(layer);
      const t: BranchTensors = {
        norm: inputOnce(g, n.norm, shapes.norm),
        downW: inputOnce(g, n.downW, shapes.downW),
        downB: inputOnce(g, n.downB, shapes.downB),
        upW: inputOnce(g, n.upW, shapes.upW),
        upB: inputOnce(g, n.upB, shapes.upB),
      };
      return add(out, adapterBranch(x, t, o));
    },
  };
}
