/**
 * MoSA (Mixture of Sparse Adapters): a bottleneck adapter beside every block's MLP,
 *   out = x + MLP(norm(x)) + s·Up(dropout(act(Down(norm_a(x))))),
 * whose split tensors (Up by default; Down too with share 'none') are partitioned entry by
 * entry into K sparse modules kept as K full-size copies. Each step runs two stochastic
 * passes of the same batch in one graph, each with an independently chosen module per
 * block and split tensor (one-hot selection feeds), and minimizes
 *   L = CE(z1) + klWeight·½[KL(sg p2 || p1) + KL(sg p1 || p2)].
 * Gradients are masked per module; unused modules get none. After training the copies
 * are merged by averaging, into one dense adapter the size of a plain one.
 *
 * Export: a `lowrank`-kind adapter with no low-rank pairs; the merged tensors are `extra`
 * tensors named `mosa.layers.<l>.{norm.weight,down.weight,down.bias,up.weight,up.bias}` and
 * adapter.json's config describes them (mosaAdapterConfigSchema). MoSA adapters run
 * UNFUSED: fusing one with WeightPatcher changes nothing. Run one with
 * `const { hooks, feeds } = MosaMethod.fromAdapter(model, adapter)` and
 * `model.logits(ids, { hooks, extraFeeds: feeds })`.
 */
import { z } from 'zod';
import { SparsetuneError } from '../errors.js';
import type { Value } from '../engine/ir.js';
import { klDivergence } from '../engine/nn.js';
import { add, equal, mul, not, stopGradient } from '../engine/ops/index.js';
import { fingerprintWeights } from '../merge/fingerprint.js';
import { newAdapter, type Adapter } from '../merge/types.js';
import type { CausalLM } from '../models/causal-lm.js';
import type { ModelHooks } from '../models/hooks.js';
import { numel, type HostTensor } from '../tensor.js';
import type { GradMap, Method, Objective, StepContext, TrainableParam } from '../train/method.js';
import { paramFeeds } from '../train/param-feeds.js';
import { initRng, kaimingUniform, paramValue, parseMethodConfig, zodMessage } from './common.js';
import { adapterBranch, layerTensorNames, layerTensorShapes, mergedHooks, mosaActivations, mosaAdapterConfigSchema, type BranchOptions, type MosaAdapterConfig } from './mosa-branch.js';
import { createSplit, maskGradients, mergeSplit, restoreMaskedOut, selectedModule, snapshotUsed, type SplitTensor } from './mosa-split.js';
import type { MethodRecipe } from '../train/recipe.js';

export const mosaConfigSchema = z.object({
  /** Bottleneck width m. */
  bottleneck: z.number().int().positive().default(32),
  /** Number of sparse modules K. */
  modules: z.number().int().min(1).max(255).default(4),
  scale: z.number().finite().default(0.1),
  dropout: z.number().min(0).max(0.9).default(0.1),
  act: z.enum(mosaActivations).default('gelu'),
  /** 'down': Down is one dense shared projection and only Up is split; 'none': both are split. */
  share: z.enum(['down', 'none']).default('down'),
  /** Weight of the symmetric KL between the two passes (0: one pass, plain CE). */
  klWeight: z.number().nonnegative().default(1),
  normEps: z.number().positive().default(1e-6),
  /** Blocks that get an adapter (default: all). */
  layers: z.array(z.number().int().nonnegative()).optional(),
  seed: z.number().int().default(0),
});
export type MosaConfig = z.infer<typeof mosaConfigSchema>;

type Proj = 'down' | 'up';

/** One block's adapter: dense params plus split (or shared) projections. */
interface LayerAdapter {
  layer: number;
  norm: TrainableParam;
  downB: TrainableParam;
  upB: TrainableParam;
  /** Shared dense Down (share 'down'). */
  downW?: TrainableParam;
  splits: Partial<Record<Proj, SplitTensor>>;
}

const selectInput = (pass: number, layer: number, proj: Proj) => `mosa.select.p${pass}.layers.${layer}.${proj}`;

export class MosaMethod implements Method {
  readonly name = 'mosa';
  readonly kind = 'lowrank' as const;
  readonly config: MosaConfig;
  readonly layers: LayerAdapter[];
  readonly hiddenSize: number;
  /** Modules chosen by the last stepFeeds: `${proj}:${layer}` -> [pass 0 module, pass 1 module]. */
  readonly selection = new Map<string, number[]>();
  private snapshots: { split: SplitTensor; snap: Map<number, Float32Array> }[] = [];

  constructor(
    readonly model: CausalLM,
    config: z.input<typeof mosaConfigSchema> = {},
  ) {
    this.config = parseMethodConfig('mosa', mosaConfigSchema, config);
    const d = model.config.hiddenSize;
    const nLayers = model.arch.kvShape(model.config).layers;
    const chosen = this.config.layers ?? Array.from({ length: nLayers }, (_, l) => l);
    const bad = chosen.filter((l) => l >= nLayers);
    if (bad.length) throw new SparsetuneError('BAD_CONFIG', `mosa config: layers ${bad.join(', ')} do not exist; this model has blocks 0..${nLayers - 1}`);
    this.hiddenSize = d;
    const m = this.config.bottleneck;
    const K = this.config.modules;
    const rand = initRng(this.config.seed);
    const shapes = layerTensorShapes(d, m);
    this.layers = [...new Set(chosen)].sort((a, b) => a - b).map((layer) => {
      const n = layerTensorNames(layer);
      const p = (name: string, shape: number[], data: Float32Array, decay: boolean): TrainableParam => ({ name, shape, data, decay });
      const downInit = kaimingUniform(m * d, d, rand);
      const la: LayerAdapter = {
        layer,
        norm: p(n.norm, shapes.norm, new Float32Array(d).fill(1), false),
        downB: p(n.downB, shapes.downB, new Float32Array(m), false),
        upB: p(n.upB, shapes.upB, new Float32Array(d), false),
        splits: { up: createSplit(n.upW, shapes.upW, new Float32Array(d * m), K, rand, true) },
      };
      if (this.config.share === 'down') la.downW = p(n.downW, shapes.downW, downInit, true);
      else la.splits.down = createSplit(n.downW, shapes.downW, downInit, K, rand, true);
      return la;
    });
  }

  /** Every split tensor with its block. */
  splitTensors(): { layer: number; proj: Proj; split: SplitTensor }[] {
    return this.layers.flatMap((la) => (Object.entries(la.splits) as [Proj, SplitTensor][]).map(([proj, split]) => ({ layer: la.layer, proj, split })));
  }

  private get passes(): number {
    return this.config.klWeight > 0 ? 2 : 1;
  }

  private branchOptions(train: boolean): BranchOptions {
    return { scale: this.config.scale, act: this.config.act, normEps: this.config.normEps, dropout: train ? this.config.dropout : 0 };
  }

  params(): TrainableParam[] {
    return this.layers.flatMap((la) => [
      la.norm,
      ...(la.downW ? [la.downW] : []),
      la.downB,
      la.upB,
      ...Object.values(la.splits).flatMap((s) => s.modules),
    ]);
  }

  /** Training hooks of one stochastic pass: each split tensor is the module its one-hot selection feed picks. */
  private trainHooks(pass: number): ModelHooks {
    const byLayer = new Map(this.layers.map((la) => [la.layer, la]));
    const K = this.config.modules;
    return {
      mlp: (layer, x, out, g) => {
        const la = byLayer.get(layer);
        if (!la) return out;
        const pick = (proj: Proj, dense?: TrainableParam): Value => {
          const s = la.splits[proj];
          return s ? selectedModule(g, s, g.input(selectInput(pass, layer, proj), 'f32', [K])) : paramValue(g, dense!);
        };
        const t = { norm: paramValue(g, la.norm), downW: pick('down', la.downW), downB: paramValue(g, la.downB), upW: pick('up'), upB: paramValue(g, la.upB) };
        return add(out, adapterBranch(x, t, { ...this.branchOptions(true), noiseKey: `mosa.p${pass}.layers.${layer}` }));
      },
    };
  }

  /** `train`: pass 0 of the stochastic training graph; `eval`: the merged adapter (fed by evalFeeds). */
  hooks(mode: 'train' | 'eval'): ModelHooks {
    return mode === 'train' ? this.trainHooks(0) : mergedHooks(this.adapterConfig());
  }

  /** CE of pass 1 plus the symmetric KL between two stochastic passes of the same batch, in one graph. */
  objective(model: CausalLM, hooks: ModelHooks): Objective {
    const built = model.build('train', hooks);
    const g = built.graph;
    const ce = built.loss!;
    const metrics: Record<string, Value> = { lm_loss: ce };
    if (this.passes === 1) return { graph: g, loss: ce, metrics };
    const z1 = built.result.logits;
    const z2 = model.forward(g, { ids: built.ids, positions: built.positions, mask: built.mask }, this.trainHooks(1)).logits;
    // Positions with a target (padding and the last position have none).
    const valid = not(equal(built.targets!, -100));
    const symKl = mul(add(klDivergence(stopGradient(z2), z1, valid), klDivergence(stopGradient(z1), z2, valid)), 0.5);
    metrics.sym_kl = symKl;
    return { graph: g, loss: add(ce, mul(symKl, this.config.klWeight)), metrics };
  }

  /** One-hot module choices per pass, block and split tensor (seeded by the step). */
  stepFeeds(ctx: StepContext): Record<string, HostTensor> {
    const rand = initRng(ctx.seed ^ 0x5eed);
    const K = this.config.modules;
    const out: Record<string, HostTensor> = {};
    this.selection.clear();
    for (const { layer, proj } of this.splitTensors()) {
      const picks: number[] = [];
      for (let pass = 0; pass < this.passes; pass++) {
        const k = Math.min(K - 1, Math.floor(rand() * K));
        picks.push(k);
        const oneHot = new Float32Array(K);
        oneHot[k] = 1;
        out[selectInput(pass, layer, proj)] = { dtype: 'f32', shape: [K], data: oneHot };
      }
      this.selection.set(`${proj}:${layer}`, picks);
    }
    return out;
  }

  /** Merged split tensors for the eval graph (the dense params are fed as params). */
  evalFeeds(): Record<string, HostTensor> {
    const out: Record<string, HostTensor> = {};
    for (const { split } of this.splitTensors()) out[split.name] = { dtype: 'f32', shape: split.shape, data: mergeSplit(split) };
    return out;
  }

  /** Every feed `hooks('eval')` needs: the dense params and the merged split tensors. */
  inferenceFeeds(): Record<string, HostTensor> {
    const dense = this.layers.flatMap((la) => [la.norm, la.downB, la.upB, ...(la.downW ? [la.downW] : [])]);
    return { ...paramFeeds(dense), ...this.evalFeeds() };
  }

  /** Mask each used module's gradient; drop unused modules' gradients; remember used modules to undo decay on masked-out entries. */
  adjustGradients(grads: GradMap, _extra: Record<string, GradMap>, _ctx: StepContext): void {
    this.snapshots = [];
    for (const { layer, proj, split } of this.splitTensors()) {
      const picks = this.selection.get(`${proj}:${layer}`);
      if (!picks) throw new SparsetuneError('BAD_ARGUMENT', 'mosa: adjustGradients ran without a module selection; stepFeeds must run first in the same step');
      const used = new Set(picks);
      maskGradients(split, grads, used);
      this.snapshots.push({ split, snap: snapshotUsed(split, used) });
    }
  }

  /** Masked-out entries keep their values (AdamW's weight decay would otherwise move them). */
  afterStep(): void {
    for (const { split, snap } of this.snapshots) restoreMaskedOut(split, snap);
    this.snapshots = [];
  }

  /** The config adapter.json carries so that fromAdapter can rebuild the branch. */
  adapterConfig(): MosaAdapterConfig {
    const { scale, act, normEps, bottleneck } = this.config;
    return { hiddenSize: this.hiddenSize, bottleneck, scale, act, normEps, layers: this.layers.map((la) => la.layer) };
  }

  export(model: CausalLM): Adapter {
    const a = newAdapter({
      method: this.name,
      kind: 'lowrank',
      base: { model: model.source, fingerprint: fingerprintWeights(model.weights) },
      config: { ...this.config, ...this.adapterConfig(), tensors: 'extra', fusable: false },
    });
    const extra = new Map<string, HostTensor>();
    for (const [name, t] of Object.entries(this.inferenceFeeds())) extra.set(name, { dtype: 'f32', shape: [...t.shape], data: (t.data as Float32Array).slice() });
    a.extra = extra;
    a.meta.metrics = { parameters: [...extra.values()].reduce((s, t) => s + numel(t.shape), 0), modules: this.config.modules, layers: this.layers.length };
    return a;
  }

  /**
   * Hooks and feeds that run an exported MoSA adapter (unfused) on `model`:
   * `model.logits(ids, { hooks, extraFeeds: feeds })`.
   */
  static fromAdapter(model: CausalLM, adapter: Adapter): { hooks: ModelHooks; feeds: Record<string, HostTensor> } {
    const where = `adapter "${adapter.meta.method}"`;
    if (adapter.meta.method !== 'mosa') throw new SparsetuneError('BAD_ADAPTER', `${where} is not a MoSA adapter; load it with its own method`);
    const parsed = mosaAdapterConfigSchema.safeParse(adapter.meta.config);
    if (!parsed.success) throw new SparsetuneError('BAD_ADAPTER', `${where}: ${zodMessage('mosa adapter', parsed.error.issues)}; re-export it with MosaMethod.export`);
    const cfg = parsed.data;
    const nLayers = model.arch.kvShape(model.config).layers;
    if (cfg.hiddenSize !== model.config.hiddenSize || cfg.layers.some((l) => l >= nLayers)) {
      throw new SparsetuneError('BAD_ADAPTER', `${where} was trained for hidden size ${cfg.hiddenSize} and blocks [${cfg.layers}], but this model has hidden size ${model.config.hiddenSize} and ${nLayers} blocks; use the base model it was trained on`);
    }
    const shapes = layerTensorShapes(cfg.hiddenSize, cfg.bottleneck);
    const feeds: Record<string, HostTensor> = {};
    for (const layer of cfg.layers) {
      const names = layerTensorNames(layer);
      for (const part of Object.keys(names) as (keyof typeof names)[]) {
        const t = adapter.extra?.get(names[part]);
        const want = shapes[part];
        if (!t || t.dtype !== 'f32' || t.shape.length !== want.length || t.shape.some((s, i) => s !== want[i])) {
          throw new SparsetuneError('BAD_ADAPTER', `${where} lacks the f32 tensor "${names[part]}" of shape [${want}]; re-export it with MosaMethod.export`);
        }
        feeds[names[part]] = t;
      }
    }
    return { hooks: mergedHooks(cfg), feeds };
  }
}

/**
 * The reference recipe (scripts/mosa/vit/FGVC/*.sh over configs/base-finetune.yaml): AdamW
 * lr 1e-3, weight decay 0.01 (biases and norms excluded), cosine schedule with 10 of 100
 * epochs of warmup, batch 128, bottleneck 64, K 4, shared Down, consistency weight 1.
 */
export const recipe: MethodRecipe = {
  source: 'MoSA (Split & Merge, Zhang et al. 2024), Theia-4869/MoSA scripts/mosa/vit/FGVC/cub.sh + configs/base-finetune.yaml (AdamW lr 1e-3, wd 0.01, cosine, warmup 10 of 100 epochs, batch 128)',
  lr: 1e-2,
  steps: 200,
  batchSize: 8,
  optimizer: { type: 'adamw', beta1: 0.9, beta2: 0.999, weightDecay: 0.01 },
  schedule: { type: 'cosine', warmupSteps: 20, minRatio: 0 },
  clipNorm: 0,
  notes: 'warmup kept at 10% of the steps; batch 8 and lr 1e-2 for tiny models over 200 steps (on stories260K 1e-3 barely moves in 100 steps, 1e-2 to 3e-2 is best; grid in bench/outcomes/mosa.ts)',
};

export const configSchema = mosaConfigSchema;
export const summary = 'MoSA: parallel MLP adapters split into K sparse modules (two-pass consistency training), merged into one dense adapter that runs unfused';
/** Registry entry: a MoSA method for `model`. */
export function createMethod(model: CausalLM, config: unknown): MosaMethod {
  return new MosaMethod(model, config as never);
}

/** Registry hook: MoSA adapters run unfused (a parallel branch cannot be folded into a weight). */
export function adapterHooks(model: CausalLM, adapter: Adapter): { hooks: ModelHooks; feeds: Record<string, HostTensor> } {
  return MosaMethod.fromAdapter(model, adapter);
}
