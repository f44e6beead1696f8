/**
 * PAT — pruning-aware tuning (specs/pat.md): LoRA fine-tuning while HSMs with ONE shared
 * trainable channel mask learn which hidden (residual-stream) channels to remove. The
 * export is a `pruned` adapter; src/merge/prune-export.ts turns it into a smaller dense
 * HF model (hidden_size = number of kept channels).
 *
 * Training graph: LoRA on the target linears + HSMs with the soft, scheduled mask; loss =
 * LM loss + mask loss + identity loss. Eval graph (and the export): the hard mask 1[m >= 0].
 */
import { z } from 'zod';
import { SparsetuneError } from '../errors.js';
import type { Value } from '../engine/ir.js';
import { add, mul } from '../engine/ops/index.js';
import type { LlamaConfig } from '../io/config.js';
import { fingerprintWeights } from '../merge/fingerprint.js';
import { PAT_EXTRA, prunedConfigJson } from '../merge/prune-export.js';
import { newAdapter, type Adapter } from '../merge/types.js';
import type { CausalLM } from '../models/causal-lm.js';
import { composeHooks, type ModelHooks } from '../models/hooks.js';
import type { HostTensor } from '../tensor.js';
import type { Method, Objective, StepContext, TrainableParam } from '../train/method.js';
import { parseMethodConfig } from './common.js';
import { createLoraPairs, loraHooks, type LoraPair } from './lora.js';
import { createHsms, hsmHooks, identityLoss, maskLoss, SCHEDULE_INPUTS, type Hsm } from './pat-hsm.js';
import { keptChannels, maskSchedule } from './pat-schedule.js';
import type { MethodRecipe } from '../train/recipe.js';

export const patConfigSchema = z.object({
  /** Target kept width as a fraction of hidden_size (reference: 3072 / 4096 = 0.75). */
  keepRatio: z.number().gt(0).lt(1).default(0.75),
  /** Target kept width in channels; overrides keepRatio. */
  dKeep: z.number().int().positive().optional(),
  /** Rank k of each HSM's D/U pair (reference 200; capped at hidden_size). */
  hsmRank: z.number().int().positive().default(200),
  /** T_end of the mask schedule in optimizer steps (default: the run's total steps). */
  tEnd: z.number().int().min(2).optional(),
  /** Fraction of T_end after which the LM loss no longer moves the mask logits. */
  freezeFraction: z.number().gt(0).max(1).default(0.8),
  /** Weight of the |count − d_keep| / d_keep term (reference 10). */
  countLossWeight: z.number().nonnegative().default(10),
  /** Weight of the summed identity losses MSE(D Dᵀ, I). */
  identityLossWeight: z.number().nonnegative().default(1),
  /** Learning-rate multiplier for the mask logits. */
  maskLrScale: z.number().positive().default(1),
  /** LoRA rank (reference: 20). */
  r: z.number().int().positive().default(20),
  /** LoRA scale numerator, s = alpha / r (reference: 4, so s = 0.2). */
  alpha: z.number().positive().default(4),
  targetModules: z.union([z.array(z.string()).min(1), z.string()]).default(['q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj', 'down_proj']),
  /** LoRA dropout (reference 0.05; seeded from the run's seed). */
  dropout: z.number().min(0).max(0.9).default(0.05),
  seed: z.number().int().default(0),
});
export type PatConfig = z.infer<typeof patConfigSchema>;

const f32 = (shape: number[], data: Float32Array): HostTensor<'f32'> => ({ dtype: 'f32', shape, data });

export class PatMethod implements Method {
  readonly name = 'pat';
  readonly kind = 'pruned' as const;
  readonly config: PatConfig;
  readonly dKeep: number;
  readonly hidden: number;
  readonly lora: LoraPair[];
  readonly loraScale: number;
  readonly hsms: Hsm[];
  /** The shared mask logits m [d] (init 0: every channel kept, mask = 1 at step 0). */
  readonly mask: TrainableParam;
  /**
   * The model ties lm_head to the embedding. Then the embedding gets the shared mask but no
   * HSM of its own (its fold into E would change the head as well), so the pruned model keeps
   * one matrix, E[:, kept], for both ends: tied stays tied and the export never grows.
   */
  readonly tied: boolean;

  constructor(
    readonly model: CausalLM,
    config: z.input<typeof patConfigSchema> = {},
  ) {
    this.config = parseMethodConfig('pat', patConfigSchema, config ?? {});
    if (model.config.arch !== 'llama') {
      throw new SparsetuneError('UNSUPPORTED_MODEL', `pat prunes the hidden width of Llama-family models (llama, mistral, qwen2) only; this model is ${model.config.modelType}. Use lora or s2ft for it.`);
    }
    const cfg: LlamaConfig = model.config;
    this.hidden = cfg.hiddenSize;
    this.tied = cfg.tieWordEmbeddings;
    this.dKeep = this.config.dKeep ?? Math.max(1, Math.round(this.config.keepRatio * this.hidden));
    if (this.dKeep >= this.hidden) throw new SparsetuneError('BAD_CONFIG', `pat: dKeep ${this.dKeep} must be below hidden_size ${this.hidden}`);
    const k = Math.min(this.config.hsmRank, this.hidden);
    this.loraScale = this.config.alpha / this.config.r;
    this.lora = createLoraPairs(model, 'pat.lora', this.config.targetModules, this.config.r, this.config.seed);
    this.hsms = createHsms(cfg.numLayers, this.hidden, k, this.config.seed, { embed: !this.tied });
    this.mask = { name: 'pat.mask_logits', shape: [this.hidden], data: new Float32Array(this.hidden), decay: false, lrScale: this.config.maskLrScale };
  }

  params(): TrainableParam[] {
    return [this.mask, ...this.hsms.flatMap((h) => [h.D, h.U, h.s]), ...this.lora.flatMap((p) => [p.A, p.B])];
  }

  hooks(mode: 'train' | 'eval'): ModelHooks {
    return composeHooks([loraHooks(this.lora, this.loraScale, mode === 'train' ? this.config.dropout : 0), hsmHooks(this.hsms, this.mask, mode)]);
  }

  /** LM loss + mask loss + identity loss, with each term and the kept count as metrics. */
  objective(model: CausalLM, hooks: ModelHooks): Objective {
    const built = model.build('train', hooks);
    const g = built.graph;
    const { loss: mLoss, count } = maskLoss(g, this.mask, this.dKeep, this.config.countLossWeight);
    let idLoss: Value = identityLoss(g, this.hsms[0].D);
    for (const h of this.hsms.slice(1)) idLoss = add(idLoss, identityLoss(g, h.D));
    const loss = add(built.loss!, add(mLoss, mul(idLoss, this.config.identityLossWeight)));
    return { graph: g, loss, metrics: { lm_loss: built.loss!, mask_loss: mLoss, identity_loss: idLoss, kept_channels: count } };
  }

  private tEnd(ctx: StepContext): number {
    return this.config.tEnd ?? ctx.totalSteps;
  }

  stepFeeds(ctx: StepContext): Record<string, HostTensor> {
    const s = maskSchedule(ctx.step, this.tEnd(ctx), this.config.freezeFraction);
    return {
      [SCHEDULE_INPUTS.temperature]: f32([1], Float32Array.of(s.temperature)),
      [SCHEDULE_INPUTS.bias]: f32([1], Float32Array.of(s.bias)),
      [SCHEDULE_INPUTS.live]: f32([1], Float32Array.of(s.frozen ? 0 : 1)),
    };
  }

  /** The eval graph uses the hard mask: it needs no schedule inputs. */
  evalFeeds(): Record<string, HostTensor> {
    return {};
  }

  /** Channels the hard mask keeps now (m >= 0). */
  keptChannels(): Int32Array {
    return keptChannels(this.mask.data);
  }

  export(model: CausalLM): Adapter {
    const kept = this.keptChannels();
    if (kept.length === 0) throw new SparsetuneError('BAD_ARGUMENT', 'pat: the mask keeps no channel; train longer or raise keepRatio');
    const cfg = model.config as LlamaConfig;
    const a = newAdapter({
      method: this.name,
      kind: 'pruned',
      base: { model: model.source, fingerprint: fingerprintWeights(model.weights) },
      config: { ...this.config },
      metrics: { keptChannels: kept.length, targetKeep: this.dKeep, hiddenSize: this.hidden },
    });
    a.pruned = { keptChannels: kept, configJson: prunedConfigJson(cfg, kept.length) };
    const extra = new Map<string, HostTensor>();
    for (const p of this.lora) {
      extra.set(PAT_EXTRA.loraA(p.site.name), f32([...p.A.shape], p.A.data.slice()));
      extra.set(PAT_EXTRA.loraB(p.site.name), f32([...p.B.shape], p.B.data.slice()));
      extra.set(PAT_EXTRA.loraScale(p.site.name), f32([1], Float32Array.of(this.loraScale)));
    }
    for (const h of this.hsms) {
      extra.set(PAT_EXTRA.hsm(h.key, 'D'), f32([...h.D.shape], h.D.data.slice()));
      extra.set(PAT_EXTRA.hsm(h.key, 'U'), f32([...h.U.shape], h.U.data.slice()));
      extra.set(PAT_EXTRA.hsm(h.key, 's'), f32([...h.s.shape], h.s.data.slice()));
    }
    extra.set(PAT_EXTRA.maskLogits, f32([this.hidden], this.mask.data.slice()));
    a.extra = extra;
    return a;
  }
}

/**
 * The reference recipe (train_args/sft/lora/llama2-7b-sft-lora-dimdown-learn3072.json and the
 * README's train.py call): AdamW (paged, 32-bit) lr 5e-5, no weight decay, cosine schedule
 * with 100 warmup steps, max grad norm 0.3, batch 8 x 2 accumulation x 8 GPUs, 10,000 steps
 * (the mask schedule's T_end = the run's steps).
 */
export const recipe: MethodRecipe = {
  source: 'PAT (Liu et al. 2024), kriskrisliu/PAT_Pruning-Aware-Tuning train_args/sft/lora/llama2-7b-sft-lora-dimdown-learn3072.json + README (AdamW lr 5e-5, wd 0, cosine, warmup 100, max_grad_norm 0.3, global_step 10000)',
  lr: 3e-2,
  steps: 200,
  batchSize: 8,
  optimizer: { type: 'adamw', beta1: 0.9, beta2: 0.999, weightDecay: 0 },
  schedule: { type: 'cosine', warmupSteps: 2, minRatio: 0 },
  clipNorm: 0.3,
  notes: 'the reference runs 10k steps on Llama-2 7B at lr 5e-5; tiny models over 200 steps need 3e-2 (best of 1e-2/3e-2 with the reference LoRA r 20, alpha 4 on stories260K; grid in bench/outcomes/pat.ts); warmup kept at 1% of the steps',
};

export const configSchema = patConfigSchema;
export const summary = 'PAT: LoRA + hybrid sparsification modules with one shared channel mask; exports a smaller dense model (pruned hidden width)';
export function createMethod(model: CausalLM, config: unknown): PatMethod {
  return new PatMethod(model, config as z.input<typeof patConfigSchema>);
}
