/**
 * GS-LoRA: LoRA pairs on the FFN linears of every block, with a group lasso
 * alpha·sum_g ||theta_g||_F over groups of LoRA tensors (per block, module or matrix) that
 * drives whole groups to zero, so only a few blocks end up edited.
 *
 * Training: L = L_retain [+ alpha·sum_g ||theta_g||] [+ beta·ReLU(BND - CE_forget)], with
 * alpha = 0 during warm-up. `penalty` picks how the lasso acts:
 * - `loss` (default, as the official code: engine.py's structure loss through AdamW): the
 *   penalty is part of the loss. A group whose loss gradient stays below alpha in norm is
 *   pulled to zero and then only jitters around it at the scale of the learning rate; at the
 *   end of training every group below the threshold is set to exactly zero (the spec's
 *   post-hoc threshold), so params, evaluation and export agree.
 * - `prox`: proximal gradient. The optimizer sees only the smooth loss; after each step the
 *   exact prox theta_g <- max(0, 1 - lr·alpha/||theta_g||)·theta_g shrinks every group. A zero
 *   group whose loss gradient is within the dead zone (||grad_g|| <= alpha) gets no gradient
 *   at all, so AdamW momentum cannot revive it (its per-param step count stands still).
 * - `loss+prox`: both.
 * Export keeps only groups with ||theta_g|| >= tau·(largest group norm now or at init)
 * (`lowrank` kind); the other blocks' weights stay bit-identical to the base when fused.
 *
 * Forgetting (library API): `method.setForgetSource(cyclingBatchSource(forgetExamples, 8))`
 * before `trainer.train(retainExamples)`. The objective then adds a second forward pass on
 * the forget batch with beta·ReLU(BND - CE_forget); BND = `forgetBound`, or (unset) the base
 * model's CE on `forgetBoundBatches` forget batches + `forgetMargin` nats.
 */
import { z } from 'zod';
import { SparsetuneError } from '../errors.js';
import { add, mul } from '../engine/ops/index.js';
import type { Value } from '../engine/ir.js';
import type { Adapter } from '../merge/types.js';
import type { CausalLM } from '../models/causal-lm.js';
import { composeHooks, type ModelHooks } from '../models/hooks.js';
import { peftTargetingFields } from '../models/targets.js';
import type { HostTensor } from '../tensor.js';
import type { GradMap, Method, Objective, StepContext, TrainableParam } from '../train/method.js';
import { parseMethodConfig, zodMessage } from './common.js';
import { createLoraPairs, exportLoraPairs, loraHooks, setPairScales, targetRulesOf, type LoraPair } from './lora.js';
import { SavedModules } from './modules-to-save.js';
import { buildGroups, groupNorm, groupNormSum, isZeroGroup, proxGroupLasso, survivingGroups, survivingPairs, zeroGroups, type ParamGroup } from './gs-lora-groups.js';
import { forgetFeeds, forgetTerms, type BatchSource } from './gs-lora-forget.js';
import type { MethodRecipe } from '../train/recipe.js';

export { cyclingBatchSource, type BatchSource } from './gs-lora-forget.js';

export const gsLoraConfigSchema = z.object({
  r: z.number().int().positive().default(8),
  /** LoRA scale s = loraAlpha / r (reference: 1/8). */
  loraAlpha: z.number().positive().default(1),
  targetModules: z.union([z.array(z.string()).min(1), z.string()]).default(['gate_proj', 'up_proj', 'down_proj']),
  dropout: z.number().min(0).max(0.9).default(0),
  /** Lasso groups: all LoRA tensors of a block, A and B of one linear, or each matrix alone. */
  groupBy: z.enum(['block', 'module', 'matrix']).default('block'),
  /**
   * alpha, the group-lasso weight (after warm-up). With `penalty: 'loss'` a group dies when
   * the norm of its loss gradient stays below alpha, so alpha lives on the scale of the
   * gradient norms: measured with the recipe (lr 1e-2, 100 steps) on stories260K, 0.1 zeroes
   * 3 of 5 blocks on English news text and 0.3-1 is needed on the sentiment demo set (larger
   * gradients). With `penalty: 'prox'` each step shrinks a group by lr·alpha in norm against
   * an AdamW move of about lr·sqrt(#entries), so there alpha is on the scale of sqrt(group
   * size) (stories260K, module groups of ~1.9k entries: 30 keeps every group, 50 zeroes all).
   */
  lassoWeight: z.number().nonnegative().default(0.1),
  /** Fraction of the steps trained with alpha = 0 (reference: 20 of 100 epochs). */
  warmupFraction: z.number().min(0).max(1).default(0.2),
  /** How the lasso acts: through the loss and AdamW (reference), an exact prox step, or both. */
  penalty: z.enum(['prox', 'loss', 'loss+prox']).default('loss'),
  /**
   * tau: groups with ||theta_g|| < tau·max(largest group norm, largest initial group norm)
   * count as zero (at export, in evaluation, and in the params after the last step).
   */
  threshold: z.number().min(0).max(1).default(0.01),
  /** beta, the weight of the bounded forget loss. */
  forgetWeight: z.number().nonnegative().default(1),
  /** BND in nats; unset = base CE on the forget set + forgetMargin. */
  forgetBound: z.number().positive().optional(),
  forgetMargin: z.number().nonnegative().default(3),
  forgetBoundBatches: z.number().int().positive().default(4),
  /** rsLoRA scaling loraAlpha / sqrt(r) (PEFT's use_rslora). */
  useRslora: z.boolean().default(false),
  ...peftTargetingFields,
  seed: z.number().int().default(0),
});
export type GsLoraConfig = z.infer<typeof gsLoraConfigSchema>;

const ALPHA_INPUT = 'gs_lora.alpha';

export class GsLoraMethod implements Method {
  readonly name = 'gs-lora';
  readonly kind = 'lowrank' as const;
  readonly config: GsLoraConfig;
  readonly pairs: LoraPair[];
  readonly groups: ParamGroup[];
  readonly scale: number;
  /** PEFT's modules_to_save: whole modules trained beside the pairs (outside the lasso groups). */
  readonly saved: SavedModules;
  private forgetSource: BatchSource | null;
  private bound: number | null;
  /** Whether the compiled objective has the forget pass (null: not compiled yet). */
  private objectiveHasForget: boolean | null = null;
  /** Groups zeroed by the last prox step (for logs and tests). */
  lastZeroedGroups = 0;
  /** The largest group norm at initialisation (the threshold's floor; see survivingGroups). */
  private readonly initialMaxNorm: number;

  constructor(
    readonly model: CausalLM,
    config: z.input<typeof gsLoraConfigSchema> = {},
    opts: { forget?: BatchSource } = {},
  ) {
    this.config = parseMethodConfig('gs-lora', gsLoraConfigSchema, config);
    this.scale = this.config.useRslora ? this.config.loraAlpha / Math.sqrt(this.config.r) : this.config.loraAlpha / this.config.r;
    this.pairs = createLoraPairs(model, 'gs_lora', targetRulesOf(this.config), this.config.r, this.config.seed, { rankPattern: this.config.rankPattern });
    setPairScales(this.pairs, this.config.loraAlpha, { alphaPattern: this.config.alphaPattern, rslora: this.config.useRslora });
    this.saved = new SavedModules(model, 'gs_lora', this.config.modulesToSave);
    this.groups = buildGroups(this.pairs, this.config.groupBy);
    this.initialMaxNorm = Math.max(0, ...this.groups.map((g) => groupNorm(g)));
    this.forgetSource = opts.forget ?? null;
    this.bound = this.config.forgetBound ?? null;
  }

  /** Turn on forgetting: each training step draws one batch from `source`. Call before training starts. */
  setForgetSource(source: BatchSource): void {
    if (this.objectiveHasForget === false) {
      throw new SparsetuneError('BAD_ARGUMENT', 'gs-lora: the training graph was already built without a forget set; call setForgetSource before trainer.train');
    }
    this.forgetSource = source;
  }

  /** The forget bound BND in use (null until resolved in beforeTraining when not configured). */
  get forgetBound(): number | null {
    return this.bound;
  }

  /** alpha at `step`: zero during warm-up, then lassoWeight. */
  lassoAt(step: number, totalSteps: number): number {
    return step < Math.ceil(this.config.warmupFraction * totalSteps) ? 0 : this.config.lassoWeight;
  }

  private get usesProx(): boolean {
    return this.config.penalty !== 'loss';
  }

  private get penaltyInLoss(): boolean {
    return this.config.penalty !== 'prox';
  }

  params(): TrainableParam[] {
    return [...this.pairs.flatMap((p) => [p.A, p.B]), ...this.saved.params];
  }

  hooks(mode: 'train' | 'eval'): ModelHooks {
    return composeHooks([this.saved.hooks(), loraHooks(this.pairs, this.scale, mode === 'train' ? this.config.dropout : 0)]);
  }

  /** L_retain (+ alpha·sum_g ||theta_g|| when the penalty is in the loss) (+ beta·ReLU(BND - CE_forget)). */
  objective(model: CausalLM, hooks: ModelHooks): Objective {
    const built = model.build('train', hooks);
    const g = built.graph;
    let loss = built.loss!;
    const norms = groupNormSum(g, this.groups);
    const metrics: Record<string, Value> = { lm_loss: loss, group_norm_sum: norms };
    if (this.penaltyInLoss) {
      const penalty = mul(g.input(ALPHA_INPUT, 'f32', []), norms);
      metrics.penalty = penalty;
      loss = add(loss, penalty);
    }
    this.objectiveHasForget = this.forgetSource !== null;
    if (this.forgetSource) {
      const f = forgetTerms(model, g, hooks);
      metrics.forget_ce = f.ce;
      metrics.forget_loss = f.loss;
      loss = add(loss, mul(f.loss, this.config.forgetWeight));
    }
    return { graph: g, loss, metrics };
  }

  /** Resolve BND from the base model's CE on the forget set when it is not configured. */
  async beforeTraining(): Promise<void> {
    if (!this.forgetSource || this.bound !== null) return;
    let sum = 0;
    let tokens = 0;
    for (let i = 0; i < this.config.forgetBoundBatches; i++) {
      // No hooks: the frozen base model.
      const r = await this.model.loss(this.forgetSource());
      sum += r.loss * r.tokens;
      tokens += r.tokens;
    }
    if (tokens === 0) throw new SparsetuneError('BAD_DATA', 'gs-lora: the forget batches have no target tokens; check the forget set');
    this.bound = sum / tokens + this.config.forgetMargin;
  }

  stepFeeds(ctx: StepContext): Record<string, HostTensor> {
    const out: Record<string, HostTensor> = {};
    if (this.penaltyInLoss) out[ALPHA_INPUT] = { dtype: 'f32', shape: [], data: Float32Array.of(this.lassoAt(ctx.step, ctx.totalSteps)) };
    if (this.objectiveHasForget) {
      if (!this.forgetSource || this.bound === null) {
        throw new SparsetuneError('BAD_ARGUMENT', 'gs-lora: the forget set or its bound is missing; train through Trainer (it calls beforeTraining) or set forgetBound');
      }
      Object.assign(out, forgetFeeds(this.forgetSource(), this.bound));
    }
    return out;
  }

  /** Deterministic eval feeds: the params with groups below the threshold zeroed, as exported. */
  evalFeeds(): Record<string, HostTensor> {
    return this.inferenceFeeds();
  }

  /** Feeds for `hooks('eval')` outside the trainer: param values with dead groups zeroed (what export fuses). */
  inferenceFeeds(): Record<string, HostTensor> {
    const alive = this.alive();
    const out: Record<string, HostTensor> = {};
    for (const grp of this.groups) {
      for (const p of grp.params) {
        out[p.name] = { dtype: 'f32', shape: p.shape, data: alive.has(grp) ? p.data : new Float32Array(p.data.length) };
      }
    }
    for (const p of this.saved.params) out[p.name] = { dtype: 'f32', shape: p.shape, data: p.data };
    return out;
  }

  /** A zero group inside the prox dead zone (||grad_g|| <= alpha) gets no update at all, so it stays exactly zero. */
  adjustGradients(grads: GradMap, _extra: Record<string, GradMap>, ctx: StepContext): void {
    if (!this.usesProx) return;
    const alpha = this.lassoAt(ctx.step, ctx.totalSteps);
    for (const grp of this.groups) {
      if (!isZeroGroup(grp)) continue;
      if (groupNorm(grp, (p) => grads.get(p.name) ?? new Float32Array(0)) <= alpha) for (const p of grp.params) grads.delete(p.name);
    }
  }

  /** Groups above the threshold now. */
  private alive(): Set<ParamGroup> {
    return survivingGroups(this.groups, this.config.threshold, this.initialMaxNorm);
  }

  /** The exact group-lasso prox step with this step's lr and alpha; after the last step, groups below the threshold become exactly 0. */
  afterStep(ctx: StepContext): void {
    const alpha = this.lassoAt(ctx.step, ctx.totalSteps);
    if (this.usesProx && alpha > 0) this.lastZeroedGroups = proxGroupLasso(this.groups, ctx.lr * alpha);
    if (ctx.step === ctx.totalSteps - 1 && alpha > 0) zeroGroups(this.groups, this.alive());
  }

  /** Group norms keyed by group, and which survive the export threshold. */
  groupReport(): { key: string; norm: number; alive: boolean }[] {
    const alive = this.alive();
    return this.groups.map((g) => ({ key: g.key, norm: groupNorm(g), alive: alive.has(g) }));
  }

  export(model: CausalLM): Adapter {
    const alive = this.alive();
    const pairs = survivingPairs(this.pairs, this.groups, alive);
    const a = exportLoraPairs(pairs, this.scale, { method: this.name, model, config: { ...this.config } });
    this.saved.exportInto(a);
    a.meta.metrics = {
      survivingGroups: alive.size,
      totalGroups: this.groups.length,
      groupBy: this.config.groupBy,
      survivingLayers: [...new Set(pairs.map((p) => p.site.layer))],
      ...(this.bound !== null && this.forgetSource ? { forgetBound: this.bound } : {}),
    };
    return a;
  }

  state(): Record<string, unknown> {
    return { forgetBound: this.bound };
  }

  loadState(s: Record<string, unknown>): void {
    const parsed = z.object({ forgetBound: z.number().nullable().optional() }).safeParse(s);
    if (!parsed.success) throw new SparsetuneError('BAD_CONFIG', zodMessage('gs-lora state', parsed.error.issues));
    if (parsed.data.forgetBound !== undefined) this.bound = parsed.data.forgetBound;
  }
}

/**
 * The reference recipe of the official code (scripts/run_forget.sh with train/train_own_forget.py
 * and timm's optimizer/scheduler defaults): AdamW lr 1e-2, weight decay 0.05, cosine decay to
 * 1e-5, no LR warmup, no clipping; the lasso switched on after 20 of 100 epochs (warmupFraction).
 */
export const recipe: MethodRecipe = {
  source: 'GS-LoRA (Zhao et al. 2024), bjzhb666/GS-LoRA scripts/run_forget.sh + train/train_own_forget.py + engine.py get_structure_loss (AdamW lr 1e-2, wd 0.05, cosine to min-lr 1e-5, alpha after epoch 20 of 100)',
  lr: 1e-2,
  steps: 100,
  batchSize: 8,
  optimizer: { type: 'adamw', beta1: 0.9, beta2: 0.999, weightDecay: 0.05 },
  schedule: { type: 'cosine', warmupSteps: 0, minRatio: 1e-3 },
  clipNorm: 0,
  notes: 'the reference trains 100 epochs at batch 48 (4 in few-shot runs); here 100 steps at batch 8. lassoWeight (alpha) is data dependent: a group dies when its loss gradient stays below alpha in norm',
};

export const configSchema = gsLoraConfigSchema;
export const summary = 'GS-LoRA: block-sparse LoRA on FFN linears via a group lasso (in the loss through AdamW, or exact prox steps), exact zeros after the threshold (optional bounded forgetting)';
/** Registry entry: a GS-LoRA method for `model` (forget sets go through `setForgetSource`). */
export function createMethod(model: CausalLM, config: unknown): GsLoraMethod {
  return new GsLoraMethod(model, config as never);
}
