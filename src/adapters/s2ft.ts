/**
 * S²FT — structured sparse fine-tuning, "select sparsely, compute densely" (specs/s2ft.md).
 *
 * A few attention heads and FFN channels are selected from the global pool; each gets a
 * dense, zero-initialised delta on its weight slice:
 *   o_proj / down_proj input columns:  y = W x + ΔW · x[cols]     (ΔW [out, k])
 *   v_proj / up_proj output rows:      y = W x, y[rows] += ΔW · x  (ΔW [k, in])
 * The column form gathers the selected input features (the unpermuted gather form, which
 * is exact for GQA too), so the backward pass forms a weight gradient only for the small
 * ΔW, never for a base weight. The co-permuted equivalent is in s2ft-permute.ts.
 * Export: a `structured` adapter (indices and dense values in the ORIGINAL order).
 */
import { z } from 'zod';
import { SparsetuneError } from '../errors.js';
import type { Graph, Value } from '../engine/ir.js';
import { add, constTensor, expand, gatherElements, gemm, reshape, scatterElements } from '../engine/ops/index.js';
import { mulDims } from '../engine/shapes.js';
import { loadDataset, shuffled, type TokenizedExample } from '../io/datasets.js';
import type { LlamaConfig } from '../io/config.js';
import { fingerprintWeights } from '../merge/fingerprint.js';
import { newAdapter, type Adapter } from '../merge/types.js';
import type { CausalLM } from '../models/causal-lm.js';
import type { LinearSite, ModelHooks } from '../models/hooks.js';
import type { Method, TrainableParam } from '../train/method.js';
import { paramValue, parseMethodConfig } from './common.js';
import type { MethodRecipe } from '../train/recipe.js';
import {
  activationNormScores, budget, gradientNormScores, PART_MODULE, partAxis, poolGeometry, S2FT_PARTS, selectUnits, unitWidth, weightNormScores,
  type PoolScores, type S2ftPart, type S2ftSelection,
} from './s2ft-select.js';

const ratio = z.number().min(0).max(1);

export const s2ftConfigSchema = z.object({
  /** Fraction of all (layer, query head) pairs whose o_proj input columns train (reference Llama-2: 0.052). */
  oRatio: ratio.default(0.05),
  /** Fraction of all (layer, KV head) pairs whose v_proj output rows train (0 in the released scripts). */
  vRatio: ratio.default(0),
  /** Fraction of all (layer, FFN channel) pairs whose down_proj input columns train (reference: 0.02-0.03). */
  dRatio: ratio.default(0.02),
  /** Fraction of all (layer, FFN channel) pairs whose up_proj output rows train (0 in the released scripts). */
  uRatio: ratio.default(0),
  /** How units are chosen: seeded random (reference) or ranked by weight / activation / gradient norm. */
  strategy: z.enum(['random', 'weight-norm', 'activation-norm', 'gradient-norm']).default('random'),
  /** For ranked strategies: take the largest or the smallest scores. */
  order: z.enum(['largest', 'smallest']).default('largest'),
  seed: z.number().int().default(0),
  /** Data file (txt/JSONL) for activation-norm / gradient-norm selection. */
  calibrationData: z.string().min(1).optional(),
  calibrationExamples: z.number().int().positive().default(16),
  calibrationSeqLen: z.number().int().min(2).default(128),
});
export type S2ftConfig = z.infer<typeof s2ftConfigSchema>;

/** One trainable slice: the site, the sorted row or column indices it covers, and its delta param. */
export interface S2ftSlice {
  site: LinearSite;
  part: S2ftPart;
  axis: 'rows' | 'cols';
  /** Row indices (v/up) or column indices (o/down) of the base weight, strictly increasing. */
  indices: Int32Array;
  delta: TrainableParam;
}

function parseConfig(config: unknown): S2ftConfig {
  return parseMethodConfig('s2ft', s2ftConfigSchema, config ?? {});
}

function llamaConfig(model: CausalLM): LlamaConfig {
  if (model.config.arch !== 'llama') {
    throw new SparsetuneError('UNSUPPORTED_MODEL', `s2ft supports the Llama family (llama, mistral, qwen2); this model is ${model.config.modelType}. Use lora or another method for it.`);
  }
  return model.config;
}

const ratiosOf = (c: S2ftConfig): Record<S2ftPart, number> => ({ o: c.oRatio, v: c.vRatio, down: c.dRatio, up: c.uRatio });

/** Expand unit indices (heads or channels) to weight row/column indices. */
function entryIndices(units: number[], width: number): Int32Array {
  const out = new Int32Array(units.length * width);
  units.forEach((u, i) => {
    for (let j = 0; j < width; j++) out[i * width + j] = u * width + j;
  });
  return out;
}

export class S2ftMethod implements Method {
  readonly name = 's2ft';
  readonly kind = 'structured' as const;
  readonly config: S2ftConfig;
  readonly selection: S2ftSelection;
  readonly slices: S2ftSlice[];
  private indexConsts = new WeakMap<Graph, Map<string, Value>>();

  /**
   * Synchronous construction for selections that need no data (random, weight-norm) or a
   * precomputed `selection`. For activation-norm / gradient-norm use `S2ftMethod.create`.
   */
  constructor(
    readonly model: CausalLM,
    config: z.input<typeof s2ftConfigSchema> = {},
    selection?: S2ftSelection,
  ) {
    this.config = parseConfig(config);
    const cfg = llamaConfig(model);
    const geo = poolGeometry(cfg);
    if (!selection) {
      if (this.config.strategy === 'activation-norm' || this.config.strategy === 'gradient-norm') {
        throw new SparsetuneError('BAD_ARGUMENT', `s2ft: strategy ${this.config.strategy} needs calibration data; build the method with S2ftMethod.create(model, config, examples) or set calibrationData`);
      }
      const scores = this.config.strategy === 'weight-norm' ? weightNormScores(model, geo, activeParts(this.config, cfg)) : undefined;
      selection = selectUnits(geo, ratiosOf(this.config), { strategy: this.config.strategy, order: this.config.order, seed: this.config.seed, scores });
    }
    this.selection = selection;
    this.slices = this.buildSlices(cfg);
    if (this.slices.length === 0) {
      throw new SparsetuneError(
        'BAD_CONFIG',
        `s2ft: the ratios select nothing on this model (${cfg.numLayers} layers x ${cfg.numHeads} heads, ${cfg.intermediateSize} FFN channels); raise oRatio or dRatio`,
      );
    }
  }

  /** Build the method, computing data-driven scores from `calibration` (or config.calibrationData) when the strategy needs them. */
  static async create(model: CausalLM, config: z.input<typeof s2ftConfigSchema> = {}, calibration?: TokenizedExample[]): Promise<S2ftMethod> {
    const c = parseConfig(config);
    if (c.strategy !== 'activation-norm' && c.strategy !== 'gradient-norm') return new S2ftMethod(model, c);
    const cfg = llamaConfig(model);
    let data = calibration;
    if (!data) {
      if (!c.calibrationData) throw new SparsetuneError('BAD_CONFIG', `s2ft: strategy ${c.strategy} needs calibration data; set calibrationData to a .txt/.jsonl file`);
      if (!model.tokenizer) throw new SparsetuneError('BAD_ARGUMENT', 's2ft: the model has no tokenizer to read calibrationData with');
      data = await loadDataset(c.calibrationData, model.tokenizer, { seqLen: c.calibrationSeqLen });
    }
    data = shuffled(data, c.seed).slice(0, c.calibrationExamples);
    if (data.length === 0) throw new SparsetuneError('BAD_DATA', 's2ft: the calibration data is empty');
    const geo = poolGeometry(cfg);
    const parts = activeParts(c, cfg);
    const scores: PoolScores = c.strategy === 'activation-norm' ? await activationNormScores(model, geo, parts, data) : await gradientNormScores(model, geo, parts, data);
    const selection = selectUnits(geo, ratiosOf(c), { strategy: c.strategy, order: c.order, seed: c.seed, scores });
    return new S2ftMethod(model, c, selection);
  }

  private buildSlices(cfg: LlamaConfig): S2ftSlice[] {
    const geo = poolGeometry(cfg);
    const out: S2ftSlice[] = [];
    for (let l = 0; l < cfg.numLayers; l++) {
      for (const part of S2FT_PARTS) {
        const units = this.selection[part][l] ?? [];
        if (units.length === 0) continue;
        const site = this.model.sites().find((s) => s.name === `model.layers.${l}.${PART_MODULE[part]}`)!;
        const axis = partAxis(part);
        const indices = entryIndices(units, unitWidth(geo, part));
        const shape = axis === 'cols' ? [site.outFeatures, indices.length] : [indices.length, site.inFeatures];
        out.push({ site, part, axis, indices, delta: { name: `s2ft.${site.name}.delta`, shape, data: new Float32Array(shape[0] * shape[1]), decay: true } });
      }
    }
    return out;
  }

  params(): TrainableParam[] {
    return this.slices.map((s) => s.delta);
  }

  /** The [1, k] int64 index constant of a slice, declared once per graph. */
  private indexConst(g: Graph, s: S2ftSlice): Value {
    let m = this.indexConsts.get(g);
    if (!m) this.indexConsts.set(g, (m = new Map()));
    let v = m.get(s.site.name);
    if (!v) {
      v = constTensor(g, { dtype: 'i64', shape: [1, s.indices.length], data: BigInt64Array.from(s.indices, (i) => BigInt(i)) }, 's2ft_idx');
      m.set(s.site.name, v);
    }
    return v;
  }

  hooks(): ModelHooks {
    const bySite = new Map(this.slices.map((s) => [s.site.name, s]));
    return {
      linear: (site, x, base, g) => {
        const y = base(x);
        const s = bySite.get(site.name);
        if (!s) return y;
        const lead = x.shape.slice(0, -1);
        const N = mulDims(lead);
        const k = s.indices.length;
        const idx = expand(this.indexConst(g, s), [N, k]);
        const delta = paramValue(g, s.delta);
        const x2 = reshape(x, [N, site.inFeatures]);
        if (s.axis === 'cols') {
          // Gather only the selected input features: dΔW = dyᵀ · x[:, cols] is [out, k].
          const extra = gemm(gatherElements(x2, idx, 1), delta, { transB: true });
          return add(y, reshape(extra, [...lead, site.outFeatures]));
        }
        const z = gemm(x2, delta, { transB: true }); // [N, k] contributions to the selected output rows
        const y2 = scatterElements(reshape(y, [N, site.outFeatures]), idx, z, 1, 'add');
        return reshape(y2, [...lead, site.outFeatures]);
      },
    };
  }

  export(model: CausalLM): Adapter {
    const a = newAdapter({ method: this.name, kind: 'structured', base: { model: model.source, fingerprint: fingerprintWeights(model.weights) }, config: { ...this.config } });
    for (const s of this.slices) {
      const shape: [number, number] = [s.site.outFeatures, s.site.inFeatures];
      const values = s.delta.data.slice();
      a.structured.set(s.site.weightName, s.axis === 'cols' ? { cols: s.indices.slice(), values, shape } : { rows: s.indices.slice(), values, shape });
    }
    return a;
  }

  state(): Record<string, unknown> {
    return { selection: this.selection };
  }

  loadState(s: Record<string, unknown>): void {
    const sel = s.selection as S2ftSelection | undefined;
    if (!sel || JSON.stringify(sel) !== JSON.stringify(this.selection)) {
      throw new SparsetuneError('BAD_ARGUMENT', 's2ft: the checkpoint was trained on a different head/channel selection; use the same config, seed and calibration data');
    }
  }
}

/** Parts with a non-zero budget (only those need scores). */
function activeParts(c: S2ftConfig, cfg: LlamaConfig): S2ftPart[] {
  const geo = poolGeometry(cfg);
  const r = ratiosOf(c);
  return S2FT_PARTS.filter((p) => budget(geo, p, r[p]) > 0);
}

/**
 * The reference recipe (experiments/train_script/finetune_*_llama2_s2.sh with
 * experiments/train/finetune.py): Adam betas (0.9, 0.95), no weight decay, lr 2e-4
 * (1e-3 for math), linear decay after 100 warmup steps, gradient clipping 1.0, global batch 64,
 * 3 epochs.
 */
export const recipe: MethodRecipe = {
  source: 'S2FT (Yang et al. 2024), Infini-AI-Lab/S2FT experiments/train_script/finetune_commensense_llama2_s2.sh + experiments/train/finetune.py (Adam 0.9/0.95, wd 0, lr 2e-4, linear, warmup 100, clip 1.0, batch 64)',
  lr: 3e-2,
  steps: 200,
  batchSize: 8,
  optimizer: { type: 'adamw', beta1: 0.9, beta2: 0.95, weightDecay: 0 },
  schedule: { type: 'linear', warmupSteps: 4, minRatio: 0 },
  clipNorm: 1,
  notes: 'the reference runs ~8k steps on Llama-2 7B; tiny models over 200 steps need ~150x (best of 3e-3/1e-2/3e-2 on stories260K; grid in bench/outcomes/s2ft.ts), keeping the reference ratio S2FT lr = 3-4x LoRA lr; warmup scaled to ~2% of the steps',
};

export const configSchema = s2ftConfigSchema;
export const summary = 'S²FT: dense deltas on randomly (or norm-) selected attention heads and FFN channels; structured adapter';
export function createMethod(model: CausalLM, config: unknown): Promise<S2ftMethod> {
  return S2ftMethod.create(model, config as z.input<typeof s2ftConfigSchema>);
}
