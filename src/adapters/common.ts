/** Helpers the adapter modules share: site selection, initializers, param declaration. */
import { SparsetuneError } from '../errors.js';
import type { Graph, Value } from '../engine/ir.js';
import type { CausalLM } from '../models/causal-lm.js';
import { matchesTarget, type LinearSite } from '../models/hooks.js';
import type { TrainableParam } from '../train/method.js';

/** Sites selected by PEFT-style target modules; an empty selection is an error listing valid names. */
export function selectSites(model: CausalLM, targets: string[] | string, opts: { excludeLmHead?: boolean } = {}): LinearSite[] {
  const all = model.sites().filter((s) => !(opts.excludeLmHead ?? true) || s.kind !== 'lm_head');
  const chosen = all.filter((s) => matchesTarget(s, targets));
  if (chosen.length === 0) {
    const kinds = [...new Set(all.map((s) => s.kind))].join(', ');
    throw new SparsetuneError('BAD_CONFIG', `target modules ${JSON.stringify(targets)} match no layer of this ${model.config.modelType} model; valid module names: ${kinds} (or a full path / regex)`);
  }
  return chosen;
}

/** A small deterministic PRNG (xorshift32) for parameter init; returns uniforms in [0, 1). */
export function initRng(seed: number): () => number {
  let s = (seed ^ 0x2545f491) >>> 0 || 1;
  return () => {
    s ^= s << 13;
    s >>>= 0;
    s ^= s >>> 17;
    s ^= s << 5;
    s >>>= 0;
    return s / 2 ** 32;
  };
}

/** Kaiming-uniform with a = sqrt(5) (PyTorch's Linear default): U(-1/sqrt(fanIn), 1/sqrt(fanIn)). */
export function kaimingUniform(n: number, fanIn: number, rand: () => number): Float32Array {
  const bound = 1 / Math.sqrt(fanIn);
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) out[i] = (rand() * 2 - 1) * bound;
  return out;
}

/** Standard normal samples (Box-Muller) scaled by std. */
export function normalInit(n: number, std: number, rand: () => number): Float32Array {
  const out = new Float32Array(n);
  for (let i = 0; i < n; i += 2) {
    const u = Math.max(rand(), 1e-12);
    const v = rand();
    const r = Math.sqrt(-2 * Math.log(u)) * std;
    out[i] = r * Math.cos(2 * Math.PI * v);
    if (i + 1 < n) out[i + 1] = r * Math.sin(2 * Math.PI * v);
  }
  return out;
}

/** Declare (once per graph) the graph input for a trainable param. */
export function paramValue(g: Graph, p: TrainableParam): Value {
  return g.inputs.find((v) => v.name === p.name) ?? g.input(p.name, 'f32', p.shape);
}

/** Format zod issues as one line. */
export function zodMessage(method: string, issues: { path: PropertyKey[]; message: string }[]): string {
  return `${method} config: ${issues.map((i) => `${i.path.map(String).join('.') || '(root)'}: ${i.message}`).join('; ')}`;
}
