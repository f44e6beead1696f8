/**
 * LoRA, the low-rank baseline: y = W x + s · B(A(dropout(x))), s = alpha / r (or alpha /
 * sqrt(r) with rsLoRA). PEFT naming and init: A Kaiming-uniform, B zeros. The config takes
 * PEFT's fields and rules (snake_case names too): target/exclude modules, layers_to_transform,
 * per-module rank_pattern / alpha_pattern, and modules_to_save (whole modules trained beside
 * the pairs, exported as additive deltas).
 */
import { z } from 'zod';
import { mul } from '../engine/ops/index.js';
import { seededDropout } from '../engine/noise.js';
import { linear } from '../engine/nn.js';
import { fingerprintWeights } from '../merge/fingerprint.js';
import { newAdapter, type Adapter, type LowRankPair } from '../merge/types.js';
import type { CausalLM } from '../models/causal-lm.js';
import { composeHooks, type LinearSite, type ModelHooks } from '../models/hooks.js';
import { patternValue, peftTargetingFields, type TargetRules } from '../models/targets.js';
import type { Method, TrainableParam } from '../train/method.js';
import { initRng, kaimingUniform, paramValue, parseMethodConfig, selectSites } from './common.js';
import { SavedModules } from './modules-to-save.js';

export const loraConfigSchema = z.object({
  r: z.number().int().positive().default(8),
  /** Scale numerator (s = alpha / r); 8 as in PEFT's LoraConfig (r 8, lora_alpha 8: s = 1). */
  alpha: z.number().positive().default(8),
  targetModules: z.union([z.array(z.string()).min(1), z.string()]).default(['q_proj', 'v_proj']),
  dropout: z.number().min(0).max(0.9).default(0),
  useRslora: z.boolean().default(false),
  ...peftTargetingFields,
  seed: z.number().int().default(0),
});
export type LoraConfig = z.infer<typeof loraConfigSchema>;

export interface LoraPair {
  site: LinearSite;
  A: TrainableParam;
  B: TrainableParam;
  /** This pair's scale (alpha_pattern / rank_pattern); absent: the method's single scale. */
  scale?: number;
}

/** The targeting rules of a LoRA-style config (PEFT's fields). */
export function targetRulesOf(c: Pick<LoraConfig, 'targetModules' | 'excludeModules' | 'layersToTransform' | 'layersPattern' | 'modulesToSave'>): TargetRules {
  return { targetModules: c.targetModules, excludeModules: c.excludeModules, layersToTransform: c.layersToTransform, layersPattern: c.layersPattern, modulesToSave: c.modulesToSave };
}

/**
 * Create LoRA pairs on the chosen sites (shared by LoRA-based methods such as GS-LoRA and PAT).
 * `rankPattern` gives some modules another rank (PEFT's rank_pattern).
 */
export function createLoraPairs(model: CausalLM, prefix: string, targets: string[] | string | TargetRules, r: number, seed: number, opts: { rankPattern?: Record<string, number> } = {}): LoraPair[] {
  const rand = initRng(seed);
  return selectSites(model, targets).map((site) => {
    const rank = patternValue(opts.rankPattern, site.name) ?? r;
    return {
      site,
      A: { name: `${prefix}.${site.name}.lora_A`, shape: [rank, site.inFeatures], data: kaimingUniform(rank * site.inFeatures, site.inFeatures, rand), decay: true },
      B: { name: `${prefix}.${site.name}.lora_B`, shape: [site.outFeatures, rank], data: new Float32Array(site.outFeatures * rank), decay: true },
    };
  });
}

/** Give each pair PEFT's scale: alpha / r (rsLoRA: alpha / sqrt(r)) with its own rank and alpha_pattern. */
export function setPairScales(pairs: LoraPair[], alpha: number, opts: { alphaPattern?: Record<string, number>; rslora?: boolean }): void {
  for (const p of pairs) {
    const a = patternValue(opts.alphaPattern, p.site.name) ?? alpha;
    const rank = p.A.shape[0];
    p.scale = opts.rslora ? a / Math.sqrt(rank) : a / rank;
  }
}

/**
 * Linear hook adding s · B(A(dropout(x))) on the pairs' sites (a pair's own scale wins over
 * `scale`). Dropout masks come from seeded noise inputs (`noise:<A's name>`) that the trainer
 * feeds, so runs are reproducible.
 */
export function loraHooks(pairs: LoraPair[], scale: number, dropoutP: number): ModelHooks {
  const bySite = new Map(pairs.map((p) => [p.site.name, p]));
  return {
    linear: (site, x, base, g) => {
      const y = base(x);
      const p = bySite.get(site.name);
      if (!p) return y;
      const h = linear(linear(seededDropout(x, dropoutP, p.A.name), paramValue(g, p.A)), paramValue(g, p.B));
      return g.add('Add', [y, mul(h, p.scale ?? scale)])[0];
    },
  };
}

/**
 * Export pairs as a `lowrank` adapter keyed by weight name. Conv1D sites (GPT-2, weights
 * [in, out]) are stored transposed-equivalently, and the config records PEFT's
 * `fan_in_fan_out: true` so that a PEFT export writes them back in PEFT's orientation.
 */
export function exportLoraPairs(pairs: LoraPair[], scale: number, meta: { method: string; model: CausalLM; config: Record<string, unknown> }): Adapter {
  const config = pairs.some((p) => p.site.layout === 'in_out') ? { ...meta.config, fan_in_fan_out: true } : meta.config;
  const a = newAdapter({ method: meta.method, kind: 'lowrank', base: { model: meta.model.source, fingerprint: fingerprintWeights(meta.model.weights) }, config });
  for (const p of pairs) {
    const pairScale = p.scale ?? scale;
    const r = p.A.shape[0];
    let pair: LowRankPair;
    if (p.site.layout === 'out_in') {
      pair = { A: { dtype: 'f32', shape: [...p.A.shape], data: p.A.data.slice() }, B: { dtype: 'f32', shape: [...p.B.shape], data: p.B.data.slice() }, scale: pairScale };
    } else {
      // W[in, out] += s (B A)^T = s A^T B^T: store B' = A^T [in, r], A' = B^T [r, out].
      const inF = p.site.inFeatures;
      const outF = p.site.outFeatures;
      const At = new Float32Array(inF * r);
      const Bt = new Float32Array(r * outF);
      for (let i = 0; i < r; i++) for (let j = 0; j < inF; j++) At[j * r + i] = p.A.data[i * inF + j];
      for (let o = 0; o < outF; o++) for (let i = 0; i < r; i++) Bt[i * outF + o] = p.B.data[o * r + i];
      pair = { A: { dtype: 'f32', shape: [r, outF], data: Bt }, B: { dtype: 'f32', shape: [inF, r], data: At }, scale: pairScale };
    }
    a.lowrank.set(p.site.weightName, pair);
  }
  return a;
}

export class LoraMethod implements Method {
  readonly name = 'lora';
  readonly kind = 'lowrank' as const;
  readonly config: LoraConfig;
  readonly pairs: LoraPair[];
  readonly scale: number;
  /** PEFT's modules_to_save: whole modules trained beside the pairs. */
  readonly saved: SavedModules;

  constructor(
    readonly model: CausalLM,
    config: z.input<typeof loraConfigSchema> = {},
  ) {
    this.config = parseMethodConfig('lora', loraConfigSchema, config);
    this.scale = this.config.useRslora ? this.config.alpha / Math.sqrt(this.config.r) : this.config.alpha / this.config.r;
    this.pairs = createLoraPairs(model, 'lora', targetRulesOf(this.config), this.config.r, this.config.seed, { rankPattern: this.config.rankPattern });
    setPairScales(this.pairs, this.config.alpha, { alphaPattern: this.config.alphaPattern, rslora: this.config.useRslora });
    this.saved = new SavedModules(model, 'lora', this.config.modulesToSave);
  }

  params(): TrainableParam[] {
    return [...this.pairs.flatMap((p) => [p.A, p.B]), ...this.saved.params];
  }

  hooks(mode: 'train' | 'eval'): ModelHooks {
    return composeHooks([this.saved.hooks(), loraHooks(this.pairs, this.scale, mode === 'train' ? this.config.dropout : 0)]);
  }

  export(model: CausalLM): Adapter {
    const a = exportLoraPairs(this.pairs, this.scale, { method: this.name, model, config: { ...this.config } });
    this.saved.exportInto(a);
    return a;
  }
}
