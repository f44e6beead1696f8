/**
 * GS-LoRA: LoRA pairs on the FFN linears of every block, with a group lasso
 * alpha·sum_g ||theta_g||_F over groups of LoRA tensors (per block, module or matrix) that
 * drives whole groups to exactly zero, so only a few blocks end up edited.
 *
 * Training: L = L_retain [+ alpha·sum_g ||theta_g||] [+ beta·ReLU(BND - CE_forget)], with
 * alpha = 0 during warm-up. `penalty` picks how the lasso acts:
 * - `prox` (default): proximal gradient. The optimizer sees only the smooth loss; after each
 *   step the exact prox theta_g <- max(0, 1 - lr·alpha/||theta_g||)·theta_g shrinks every group.
 *   (Passing the penalty through AdamW as well would apply it twice and bend its geometry.)
 * - `loss`: the reference recipe, the penalty's gradient goes through AdamW (no exact zeros).
 * - `loss+prox`: both.
 * A group that is exactly zero and whose loss gradient is within the prox dead zone
 * (||grad_g|| <= alpha) gets no gradient at all, so AdamW momentum cannot revive it.
 * Export keeps only groups with ||theta_g|| >= tau·max ||theta_g|| (`lowrank` kind); the
 * other blocks' weights stay bit-identical to the base when fused.
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
import { buildGroups, groupNorm, groupNormSum, isZeroGroup, proxGroupLasso, survivingGroups, survivingPairs, type ParamGroup } from './gs-lora-groups.js';
import { forgetFeeds, forgetTerms, type BatchSource } from './gs-lora-forget.js';

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
   * alpha, the group-lasso weight (after warm-up). Its useful size depends on the model: an
   * AdamW step moves a group by about lr·sqrt(#entries) while the prox shrinks it by lr·alpha,
   * so alpha lives on the scale of sqrt(group size). Measured on stories260K (module groups of
   * ~1.9k entries, lr 1e-2, 40 steps): 30 keeps every group, 40 zeroes 4 of 15, 50 zeroes all.
   * The default is small (a plain LoRA in effect); tune it per model.
   */
  lassoWeight: z.number().nonnegative().default(0.01),
  /** Fraction of the steps trained with alpha = 0 (reference: 20 of 100 epochs). */
  warmupFraction: z.number().min(0).max(1).default(0.2),
  penalty: z.enum(['prox', 'loss', 'loss+prox']).default('prox'),
  /** tau: at export, groups with ||theta_g|| < tau·max ||theta_g|| count as zero. */
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
    const alive = survivingGroups(this.groups, this.config.threshold);
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

  /** The exact group-lasso prox step with this step's lr and alpha. */
  afterStep(ctx: StepContext): void {
    if (!this.usesProx) return;
    const alpha = this.lassoAt(ctx.step, ctx.totalSteps);
    if (alpha > 0) this.lastZeroedGroups = proxGroupLasso(this.groups, ctx.lr * alpha);
  }

  /** Group norms keyed by group, and which survive the export threshold. */
  groupReport(): { key: string; norm: number; alive: boolean }[] {
    const alive = survivingGroups(this.groups, this.config.threshold);
    return this.groups.map((g) => ({ key: g.key, norm: groupNorm(g), alive: alive.has(g) }));
  }

  export(model: CausalLM): Adapter {
    const alive = survivingGroups(this.groups, this.config.threshold);
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

export const configSchema = gsLoraConfigSchema;
export const summary = 'GS-LoRA: block-sparse LoRA on FFN linears via a group lasso with exact prox steps (optional bounded forgetting)';
/** Registry entry: a GS-LoRA method for `model` (forget sets go through `setForgetSource`). */
export function createMethod(model: CausalLM, config: unknown): GsLoraMethod {
  return new GsLoraMethod(model, config as never);
}
