/**
 * Regularized mask tuning (R-AMT): freeze the weights and learn a binary mask over the
 * weights of the key layers. Masks come from real-valued scores S through a
 * straight-through estimator, W_eff = 1[S > tau] ⊙ W with dL/dS = dL/dW_eff ⊙ W. The task
 * gradient is randomly dropped where it disagrees with the gradient of a KL term toward
 * the frozen base (gradient dropout); without dropout the method is plain AMT.
 * See specs/ramt.md.
 */
import { z } from 'zod';
import { SparsetuneError } from '../errors.js';
import type { Value } from '../engine/ir.js';
import { add, cast, equal, greater, mul, not, sqrt, stopGradient, straightThrough, sumAll } from '../engine/ops/index.js';
import { klDivergence } from '../engine/nn.js';
import { packBits } from '../merge/bits.js';
import { fingerprintWeights } from '../merge/fingerprint.js';
import { newAdapter, type Adapter } from '../merge/types.js';
import type { CausalLM } from '../models/causal-lm.js';
import type { LinearSite, ModelHooks } from '../models/hooks.js';
import type { GradMap, Method, Objective, StepContext, TrainableParam } from '../train/method.js';
import type { MethodRecipe } from '../train/recipe.js';
import { stepSeed } from '../train/trainer.js';
import { initRng, paramValue, parseMethodConfig, selectSites } from '../adapters/common.js';
import { gradientDropout } from './ramt-dropout.js';

export const ramtConfigSchema = z
  .object({
    /** Masked layers: attention q, k, v, o by default (GPT-2: c_attn and the attention c_proj). */
    targetModules: z.union([z.array(z.string()).min(1), z.string()]).default(['q_proj', 'k_proj', 'v_proj', 'o_proj', 'c_attn', 'attn.c_proj']),
    /** Initial score; above `threshold` so every mask starts at 1 (step 0 equals the base). */
    scoreInit: z.number().default(1e-2),
    threshold: z.number().default(5e-3),
    /** w_m: weight of the unsquared L2 norm of each score tensor in the task loss. */
    scoreNormWeight: z.number().nonnegative().default(1e-4),
    /** R-AMT (true) or plain AMT (false: no knowledge pass, no dropout). */
    gradientDropout: z.boolean().default(true),
    /** lambda: 1 drops a losing gradient fully, 0 never drops. */
    dropoutStrength: z.number().min(0).max(1).default(1),
    /** Softmax temperature of the knowledge (KL-to-base) term. */
    klTemperature: z.number().positive().default(1),
    seed: z.number().int().default(0),
  })
  .refine((c) => c.scoreInit > c.threshold, { message: 'scoreInit must exceed threshold so every mask starts at 1', path: ['scoreInit'] });
export type RamtConfig = z.infer<typeof ramtConfigSchema>;

/** One masked weight and its trainable scores (same shape as the weight). */
export interface RamtTensor {
  site: LinearSite;
  scores: TrainableParam;
}

export class RamtMethod implements Method {
  readonly name = 'ramt';
  readonly kind = 'mask' as const;
  readonly config: RamtConfig;
  readonly tensors: RamtTensor[];
  private readonly byWeight: Map<string, RamtTensor>;
  /** Kept/dropped counts of the last step's gradient dropout. */
  lastDropout = { kept: 0, dropped: 0 };

  constructor(
    readonly model: CausalLM,
    config: z.input<typeof ramtConfigSchema> = {},
  ) {
    this.config = parseMethodConfig('ramt', ramtConfigSchema, config);
    this.tensors = selectSites(model, this.config.targetModules).map((site) => {
      const shape = [...model.weights.get(site.weightName)!.shape];
      const n = shape.reduce((a, b) => a * b, 1);
      return { site, scores: { name: `ramt.${site.name}.scores`, shape, data: new Float32Array(n).fill(this.config.scoreInit), decay: false } };
    });
    this.byWeight = new Map(this.tensors.map((t) => [t.site.weightName, t]));
  }

  params(): TrainableParam[] {
    return this.tensors.map((t) => t.scores);
  }

  /**
   * W_eff = W ⊙ 1[S > tau]. In training the mask goes through straightThrough(hard, S):
   * the forward value is exactly the 0/1 mask and dL/dS = dL/dmask = dL/dW_eff ⊙ W.
   */
  hooks(mode: 'train' | 'eval'): ModelHooks {
    return {
      param: (name, value, g) => {
        const t = this.byWeight.get(name);
        if (!t) return value;
        const s = paramValue(g, t.scores);
        const hard = cast(greater(s, this.config.threshold), 'f32');
        return mul(value, mode === 'train' ? straightThrough(hard, s) : hard);
      },
    };
  }

  /**
   * Task loss L_a = CE + w_m·sum_t ||S_t||_2 and, for R-AMT, the knowledge loss L_b =
   * KL(base || masked) on the same batch, from a second, hook-free pass of the frozen base
   * in the same graph (its gradients reach adjustGradients as `knowledge`).
   */
  objective(model: CausalLM, hooks: ModelHooks): Objective {
    const built = model.build('train', hooks);
    const g = built.graph;
    const ce = built.loss!;
    // sqrt(sum S^2 + tiny): the tiny term keeps the gradient finite if a tensor reaches 0.
    const norms = this.tensors.map((t) => sqrt(add(sumAll(mul(paramValue(g, t.scores), paramValue(g, t.scores))), 1e-12)));
    const normSum = norms.reduce((a, b) => add(a, b));
    const loss = add(ce, mul(normSum, this.config.scoreNormWeight));
    const metrics: Record<string, Value> = { ce, score_norm: normSum };
    if (!this.config.gradientDropout) return { graph: g, loss, metrics };
    const base = model.forward(g, { ids: built.ids, positions: built.positions, mask: built.mask }, {});
    const invT = 1 / this.config.klTemperature;
    const counted = not(equal(built.targets!, -100));
    const kl = klDivergence(mul(stopGradient(base.logits), invT), mul(built.result.logits, invT), counted);
    metrics.kl_to_base = kl;
    return { graph: g, loss, extraLosses: { knowledge: kl }, metrics };
  }

  /** Gradient dropout of the task gradient, one fresh seeded uniform per element. */
  adjustGradients(grads: GradMap, extra: Record<string, GradMap>, ctx: StepContext): void {
    if (!this.config.gradientDropout) return;
    const knowledge = extra.knowledge;
    if (!knowledge) throw new SparsetuneError('BAD_GRAPH', 'ramt: the knowledge-loss gradients are missing (was the objective replaced?)');
    const total = { kept: 0, dropped: 0 };
    this.tensors.forEach((t, k) => {
      const ga = grads.get(t.scores.name);
      const gb = knowledge.get(t.scores.name);
      if (!ga || !gb) return;
      const s = gradientDropout(ga, gb, this.config.dropoutStrength, initRng(stepSeed(ctx.seed, k)));
      total.kept += s.kept;
      total.dropped += s.dropped;
    });
    this.lastDropout = total;
  }

  /** The 0/1 mask of a tensor (1 = keep), in the weight's layout. */
  maskOf(t: RamtTensor): Uint8Array {
    const { threshold } = this.config;
    return Uint8Array.from(t.scores.data, (v) => (v > threshold ? 1 : 0));
  }

  export(model: CausalLM): Adapter {
    const a = newAdapter({ method: this.name, kind: 'mask', base: { model: model.source, fingerprint: fingerprintWeights(model.weights) }, config: { ...this.config } });
    let masked = 0;
    let inTensors = 0;
    for (const t of this.tensors) {
      const mask = this.maskOf(t);
      for (const v of mask) masked += 1 - v;
      inTensors += mask.length;
      a.masks.set(t.site.weightName, { bits: packBits(mask), numel: mask.length });
    }
    let allParams = 0;
    for (const w of model.weights.values()) allParams += w.data.length;
    a.meta.metrics = { maskedWeights: masked, maskedFractionOfTargets: masked / inTensors, maskedFractionOfParams: masked / allParams };
    return a;
  }
}

/**
 * The reference trainer settings (the defaults of `train --method ramt`). Masks flip after
 * about (scoreInit − threshold)/lr steps (62 here): keep that ratio when rescaling the lr.
 */
export const recipe: MethodRecipe = {
  source:
    'R-AMT (Zheng et al., ICCV 2023), official code wuw2019/R-AMT: configs/trainers/MASK/vit_b16.yaml + trainers/masktuning.py ' +
    '(Adam lr 8e-5, betas 0.9/0.999, no weight decay, cosine to 0, no gradient clipping; scores 1e-2, threshold 5e-3, w_m 1e-4, lambda 1)',
  lr: 8e-5,
  steps: 300,
  batchSize: 16,
  optimizer: { type: 'adamw', beta1: 0.9, beta2: 0.999, eps: 1e-8, weightDecay: 0 },
  schedule: { type: 'cosine', warmupSteps: 0, minRatio: 0 },
  clipNorm: 0,
  notes:
    'the reference trains 30 epochs of 16-shot data at batch 32 (a few hundred steps); no mask can flip before step (1e-2 − 5e-3)/8e-5 ≈ 62, whereas lr 1e-3 flips masks after ~5 steps',
};

export const configSchema = ramtConfigSchema;
export const summary = 'R-AMT: binary weight masks from STE scores with KL-guided gradient dropout (gradientDropout:false = AMT)';
export function createMethod(model: CausalLM, config: unknown): RamtMethod {
  return new RamtMethod(model, config as never);
}
