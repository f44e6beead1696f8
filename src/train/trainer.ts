/**
 * The training loop. It knows no method by name: it differentiates the method's objective
 * with respect to the method's params, lets the method adjust the gradients, clips,
 * accumulates, steps the optimizer, and calls the method's per-step hooks.
 */
import { z } from 'zod';
import { SparsetuneError } from '../errors.js';
import { grad } from '../engine/autodiff.js';
import type { CompiledGraph } from '../engine/runtime.js';
import type { Value } from '../engine/ir.js';
import { batches, collate, type TokenizedExample } from '../io/datasets.js';
import { CausalLM } from '../models/causal-lm.js';
import type { ModelHooks } from '../models/hooks.js';
import { defaultObjective, type GradMap, type Method, type StepContext, type TrainableParam } from './method.js';
import { clipGlobalNorm, Optimizer, optimizerSchema, scheduledLr, scheduleSchema, type OptimizerState } from './optim.js';
import { paramFeeds } from './param-feeds.js';
import { noiseFeeds, noiseSeed, noiseSpecs, type InputSpec } from './noise-feeds.js';
import { GradBuffers } from './grad-buffers.js';

export const trainerConfigSchema = z.object({
  /** Optimizer steps (of every phase, unless phaseSteps says otherwise). */
  steps: z.number().int().positive().default(100),
  /**
   * Steps of each training phase, for methods with `nextPhase` (LT-SFT's dense and sparse
   * phases); a phase past the end of the list runs `steps`.
   */
  phaseSteps: z.array(z.number().int().positive()).min(1).optional(),
  batchSize: z.number().int().positive().default(8),
  gradAccum: z.number().int().positive().default(1),
  optimizer: optimizerSchema.default(optimizerSchema.parse({})),
  schedule: scheduleSchema.default(scheduleSchema.parse({})),
  /** Clip the global gradient norm (0 = off). */
  clipNorm: z.number().nonnegative().default(1),
  /** Evaluate every N steps (0 = only before and after training). */
  evalEvery: z.number().int().nonnegative().default(0),
  /** At most this many eval batches per evaluation (0 = all). */
  evalBatches: z.number().int().nonnegative().default(0),
  seed: z.number().int().default(0),
});
export type TrainerConfig = z.infer<typeof trainerConfigSchema>;
export type TrainerConfigInput = z.input<typeof trainerConfigSchema>;

export interface StepLog {
  /** 1-based step within the current phase. */
  step: number;
  /** 0-based training phase (methods with `nextPhase`); absent means phase 0. */
  phase?: number;
  /** 1-based step counted over all phases. */
  globalStep?: number;
  /** Optimizer steps of this phase (the `step` counter runs up to it). */
  phaseSteps?: number;
  loss: number;
  lr: number;
  gradNorm: number;
  tokens: number;
  tokensPerSecond: number;
  metrics: Record<string, number>;
}

export interface EvalResult {
  loss: number;
  ppl: number;
  tokens: number;
}

export type EvalKind = 'initial' | 'periodic' | 'final';

export interface TrainerCallbacks {
  onStep?(log: StepLog): void | Promise<void>;
  /** `kind`: the baseline before training, a periodic one (evalEvery), or the one after training. */
  onEval?(step: number, result: EvalResult, kind?: EvalKind): void | Promise<void>;
  /**
   * After a step's log and its periodic evaluation, if any: the trainer's state is
   * consistent here, so this is where checkpoints are taken (`trainer.captureState()`).
   */
  onStepEnd?(log: StepLog): void | Promise<void>;
}

export interface TrainResult {
  steps: number;
  initialEval?: EvalResult;
  finalEval?: EvalResult;
  history: StepLog[];
  /** Why training ended before its last step (`requestStop` reason), if it did. */
  stoppedEarly?: string;
}

/**
 * Everything needed to continue a run exactly where it stopped: step and phase, the
 * position in the data order, the trainable tensors, the optimizer moments and the
 * method's own state. Arrays are copies, safe to keep while training goes on.
 */
export interface TrainerState {
  /** Step within the current phase (number of completed optimizer steps). */
  step: number;
  phase: number;
  /** Steps completed in earlier phases. */
  stepsBefore: number;
  /** Data position: epoch and the number of batches already drawn from it. */
  epoch: number;
  batchInEpoch: number;
  config: TrainerConfig;
  params: { name: string; shape: number[]; data: Float32Array }[];
  optimizer: OptimizerState | null;
  methodState?: Record<string, unknown>;
  initialEval?: EvalResult;
}

/** Trainer config fields that change the trajectory; a resumed run must match them. */
const TRAJECTORY_FIELDS = ['steps', 'phaseSteps', 'batchSize', 'gradAccum', 'optimizer', 'schedule', 'clipNorm', 'seed'] as const;

/** Mix a run seed and a step into a 31-bit seed (methods use it for noise and dropout). */
export function stepSeed(seed: number, step: number): number {
  let h = (seed ^ 0x9e3779b9) >>> 0;
  h = Math.imul(h ^ (step + 0x7f4a7c15), 0x85ebca6b) >>> 0;
  h = Math.imul(h ^ (h >>> 13), 0xc2b2ae35) >>> 0;
  return (h ^ (h >>> 16)) & 0x7fffffff;
}

interface CompiledObjective {
  compiled: CompiledGraph;
  params: TrainableParam[];
  extraNames: string[];
  metricNames: string[];
  /** Seeded noise inputs (dropout) the trainer feeds each micro-batch. */
  noise: InputSpec[];
  grads: GradBuffers;
}

export class Trainer {
  readonly cfg: TrainerConfig;
  private objective: Promise<CompiledObjective> | null = null;
  private hooks: ModelHooks;
  private evalHooks: ModelHooks;
  optimizer: Optimizer | null = null;
  step = 0;
  /** 0-based phase (see Method.nextPhase) and the steps completed in earlier phases. */
  phase = 0;
  stepsBefore = 0;
  /** Position in the seeded data order: epoch, and batches already drawn from it. */
  epoch = 0;
  batchInEpoch = 0;
  private stopReason: string | null = null;
  private pendingResume: TrainerState | null = null;
  private initialEval: EvalResult | undefined;

  constructor(
    readonly model: CausalLM,
    readonly method: Method,
    cfg: TrainerConfigInput = {},
    readonly callbacks: TrainerCallbacks = {},
  ) {
    model.requireF32('training');
    const parsed = trainerConfigSchema.safeParse(cfg);
    if (!parsed.success) throw new SparsetuneError('BAD_CONFIG', `trainer config: ${parsed.error.issues.map((i) => `${i.path.join('.')}: ${i.message}`).join('; ')}`);
    this.cfg = parsed.data;
    this.hooks = method.hooks('train');
    this.evalHooks = method.hooks('eval');
  }

  private compileObjective(): Promise<CompiledObjective> {
    this.objective ??= (async () => {
      const obj = this.method.objective ? this.method.objective(this.model, this.hooks) : defaultObjective(this.method, this.model, this.hooks);
      const g = obj.graph;
      const params = this.method.params();
      if (params.length === 0) throw new SparsetuneError('BAD_ARGUMENT', `method ${this.method.name} has no trainable tensors: check its target modules`);
      const wrt: Value[] = params.map((p) => {
        const v = g.inputs.find((i) => i.name === p.name);
        if (!v) throw new SparsetuneError('BAD_GRAPH', `trainable '${p.name}' is not an input of the training graph (its hooks never used it)`);
        return v;
      });
      g.output('loss', obj.loss);
      grad(obj.loss, wrt).forEach((gv, k) => g.output(`grad:${params[k].name}`, gv));
      const extraNames = Object.keys(obj.extraLosses ?? {});
      for (const name of extraNames) grad(obj.extraLosses![name], wrt).forEach((gv, k) => g.output(`grad@${name}:${params[k].name}`, gv));
      const metricNames = Object.keys(obj.metrics ?? {});
      for (const m of metricNames) g.output(`metric:${m}`, obj.metrics![m]);
      const gradOutputs = new Map<string, number[]>();
      for (const p of params) {
        gradOutputs.set(`grad:${p.name}`, p.shape);
        for (const name of extraNames) gradOutputs.set(`grad@${name}:${p.name}`, p.shape);
      }
      const compiled = await this.model.runtime.compile(g);
      return { compiled, params, extraNames, metricNames, noise: noiseSpecs(compiled.inputs), grads: new GradBuffers(gradOutputs) };
    })();
    return this.objective;
  }

  /** Steps of the current phase (phaseSteps, else steps). */
  get phaseTotal(): number {
    return this.cfg.phaseSteps?.[this.phase] ?? this.cfg.steps;
  }

  private ctx(lr: number): StepContext {
    return { model: this.model, step: this.step, totalSteps: this.phaseTotal, lr, seed: stepSeed(this.cfg.seed, this.step) };
  }

  /** Ask the loop to stop after the current step (early stopping, Ctrl-C); `train` then evaluates and returns. */
  requestStop(reason: string): void {
    this.stopReason ??= reason;
  }

  /** The pending stop reason, or null while training goes on. */
  get stopRequested(): string | null {
    return this.stopReason;
  }

  /** A copy of the state needed to resume exactly (see TrainerState). */
  captureState(): TrainerState {
    const params = this.method.params().map((p) => ({ name: p.name, shape: [...p.shape], data: p.data.slice() }));
    const opt = this.optimizer?.state();
    return {
      step: this.step,
      phase: this.phase,
      stepsBefore: this.stepsBefore,
      epoch: this.epoch,
      batchInEpoch: this.batchInEpoch,
      config: structuredClone(this.cfg),
      params,
      optimizer: opt ? { t: opt.t, steps: [...opt.steps], m: opt.m.map((a) => a.slice()), v: opt.v.map((a) => a.slice()) } : null,
      methodState: this.method.state ? structuredClone(this.method.state()) : undefined,
      initialEval: this.initialEval,
    };
  }

  /**
   * Continue from a captured state on the next `train` call (same data, fresh method
   * instance built with the same config). The trajectory-defining config (steps, batch
   * size, accumulation, optimizer, schedule, clipping, seed) must match, else the result
   * would not be the run that was interrupted.
   */
  resumeFrom(state: TrainerState): void {
    const differs = TRAJECTORY_FIELDS.filter((k) => JSON.stringify(state.config[k]) !== JSON.stringify(this.cfg[k]));
    if (differs.length) {
      const detail = differs.map((k) => `${k}: checkpoint ${JSON.stringify(state.config[k])}, now ${JSON.stringify(this.cfg[k])}`).join('; ');
      throw new SparsetuneError('BAD_ARGUMENT', `cannot resume: the trainer settings differ from the checkpoint (${detail}); rerun with the original settings`);
    }
    this.pendingResume = state;
  }

  /** Put a captured state back: method state first (it may change the param set), then tensors. */
  private async applyResume(state: TrainerState): Promise<CompiledObjective> {
    if (state.phase > 0 && !this.method.loadState) {
      throw new SparsetuneError('BAD_ARGUMENT', `cannot resume: the checkpoint is in training phase ${state.phase + 1} of method ${this.method.name}, which keeps no state to resume a later phase; start the run again`);
    }
    if (state.methodState !== undefined) {
      if (!this.method.loadState) throw new SparsetuneError('BAD_ARGUMENT', `cannot resume: the checkpoint holds state for method ${this.method.name}, which cannot load state`);
      this.method.loadState(structuredClone(state.methodState));
    }
    this.step = state.step;
    this.phase = state.phase;
    this.stepsBefore = state.stepsBefore;
    this.epoch = state.epoch;
    this.batchInEpoch = state.batchInEpoch;
    this.initialEval = state.initialEval;
    this.objective = null; // the param set may differ from the one compiled before loadState
    const obj = await this.compileObjective();
    const saved = new Map(state.params.map((p) => [p.name, p]));
    for (const p of obj.params) {
      const s = saved.get(p.name);
      if (!s) throw new SparsetuneError('BAD_ARGUMENT', `cannot resume: the checkpoint has no tensor '${p.name}' (was it written by another method or config?)`);
      if (s.data.length !== p.data.length) {
        throw new SparsetuneError('SHAPE_MISMATCH', `cannot resume: tensor '${p.name}' has ${s.data.length} values in the checkpoint, ${p.data.length} now`);
      }
      p.data.set(s.data);
    }
    this.optimizer = new Optimizer(obj.params, this.cfg.optimizer);
    if (state.optimizer) {
      if (state.optimizer.m.length !== obj.params.length) {
        throw new SparsetuneError('SHAPE_MISMATCH', `cannot resume: the checkpoint's optimizer has ${state.optimizer.m.length} slots, the method has ${obj.params.length} params`);
      }
      this.optimizer.loadState(state.optimizer);
    }
    return obj;
  }

  /** Held-out loss and perplexity with the method applied (deterministic feeds). */
  async evaluate(data: TokenizedExample[]): Promise<EvalResult> {
    if (data.length === 0) throw new SparsetuneError('BAD_DATA', 'evaluation set is empty');
    const ctx = this.ctx(0);
    const extra = { ...paramFeeds(this.method.params()), ...(this.method.evalFeeds?.(ctx) ?? this.method.stepFeeds?.(ctx) ?? {}) };
    let sum = 0;
    let tokens = 0;
    let n = 0;
    const padId = this.model.tokenizer?.padId ?? 0;
    for (let i = 0; i < data.length; i += this.cfg.batchSize) {
      const b = collate(data.slice(i, i + this.cfg.batchSize), padId);
      const r = await this.model.loss(b, { hooks: this.evalHooks, extraFeeds: extra });
      sum += r.loss * r.tokens;
      tokens += r.tokens;
      if (this.cfg.evalBatches && ++n >= this.cfg.evalBatches) break;
    }
    const loss = sum / Math.max(1, tokens);
    return { loss, ppl: Math.exp(loss), tokens };
  }

  /**
   * Train for cfg.steps optimizer steps per phase (or cfg.phaseSteps; cycling through the data in seeded epochs), or
   * continue a run given to `resumeFrom`.
   */
  async train(train: TokenizedExample[], evalData?: TokenizedExample[]): Promise<TrainResult> {
    if (train.length === 0) throw new SparsetuneError('BAD_DATA', 'training set is empty');
    let { compiled, params, extraNames, metricNames, noise, grads } = await this.compileObjective();
    const result: TrainResult = { steps: 0, history: [] };
    await this.method.beforeTraining?.(this.ctx(this.cfg.optimizer.lr), train);
    const resume = this.pendingResume;
    this.pendingResume = null;
    if (resume) {
      ({ compiled, params, extraNames, metricNames, noise, grads } = await this.applyResume(resume));
      result.initialEval = this.initialEval;
    } else if (evalData?.length) {
      result.initialEval = this.initialEval = await this.evaluate(evalData);
      await this.callbacks.onEval?.(0, result.initialEval, 'initial');
    }
    const padId = this.model.tokenizer?.padId ?? 0;
    const epochBatches = () => batches(train, this.cfg.batchSize, { seed: this.cfg.seed, epoch: this.epoch, padId });
    let iter = epochBatches();
    // Resuming mid-epoch: the order is a pure function of (seed, epoch), so skip what was drawn.
    for (let k = 0; k < this.batchInEpoch; k++) {
      if (iter.next().done) {
        this.epoch++;
        this.batchInEpoch = 0;
        iter = epochBatches();
        break;
      }
    }
    const nextBatch = () => {
      let r = iter.next();
      if (r.done) {
        this.epoch++;
        this.batchInEpoch = 0;
        iter = epochBatches();
        r = iter.next();
      }
      this.batchInEpoch++;
      return r.value!;
    };
    this.optimizer ??= new Optimizer(params, this.cfg.optimizer);
    for (;;) {
      while (this.step < this.phaseTotal && !this.stopReason) {
        const lr = scheduledLr(this.cfg.optimizer.lr, this.step, this.phaseTotal, this.cfg.schedule);
        const ctx = this.ctx(lr);
        const t0 = performance.now();
        let lossSum = 0;
        let tokens = 0;
        const metrics: Record<string, number> = {};
        for (let micro = 0; micro < this.cfg.gradAccum; micro++) {
          const batch = nextBatch();
          const feeds = { ...paramFeeds(params), ...(this.method.stepFeeds?.(ctx) ?? {}), ...CausalLM.trainFeeds(batch) };
          // Dropout noise: a pure function of (seed, global step, micro-batch), so resumed runs draw the same masks.
          Object.assign(feeds, noiseFeeds(noise, compiled.inputs, feeds, noiseSeed(this.cfg.seed, this.stepsBefore + this.step, micro)));
          const fetch = ['loss', ...metricNames.map((m) => `metric:${m}`)];
          const out = await compiled.runInto(this.model.feeds(compiled, feeds), grads.bind(micro), fetch);
          if (micro > 0) grads.accumulate();
          const loss = Number(out.loss.data[0]);
          if (!Number.isFinite(loss)) {
            throw new SparsetuneError('TRAINING_DIVERGED', `loss became ${loss} at step ${this.step}; lower the learning rate (now ${lr}) or enable clipping`);
          }
          lossSum += loss;
          for (const l of batch.labels) if (l !== -100n) tokens++;
          for (const m of metricNames) metrics[m] = (metrics[m] ?? 0) + Number(out[`metric:${m}`].data[0]) / this.cfg.gradAccum;
        }
        const acc: (Float32Array | null)[] = params.map((p) => grads.get(`grad:${p.name}`));
        const extraAcc: Record<string, GradMap> = {};
        for (const name of extraNames) extraAcc[name] = new Map(params.map((p) => [p.name, grads.get(`grad@${name}:${p.name}`)]));
        if (this.cfg.gradAccum > 1) {
          const s = 1 / this.cfg.gradAccum;
          for (const g of acc) if (g) for (let i = 0; i < g.length; i++) g[i] *= s;
          for (const map of Object.values(extraAcc)) for (const g of map.values()) for (let i = 0; i < g.length; i++) g[i] *= s;
        }
        if (this.method.adjustGradients) {
          const gm: GradMap = new Map(params.map((p, k) => [p.name, acc[k]!]));
          this.method.adjustGradients(gm, extraAcc, ctx);
          params.forEach((p, k) => (acc[k] = gm.get(p.name) ?? null));
        }
        const gradNorm = clipGlobalNorm(acc, this.cfg.clipNorm);
        this.optimizer.step(acc, lr);
        await this.method.afterStep?.(ctx);
        const seconds = (performance.now() - t0) / 1000;
        const log: StepLog = {
          step: this.step + 1,
          phase: this.phase,
          globalStep: this.stepsBefore + this.step + 1,
          phaseSteps: this.phaseTotal,
          loss: lossSum / this.cfg.gradAccum,
          lr,
          gradNorm,
          tokens,
          tokensPerSecond: tokens / seconds,
          metrics,
        };
        result.history.push(log);
        this.step++;
        await this.callbacks.onStep?.(log);
        if (evalData?.length && this.cfg.evalEvery && this.step % this.cfg.evalEvery === 0 && this.step < this.phaseTotal) {
          await this.callbacks.onEval?.(this.step, await this.evaluate(evalData), 'periodic');
        }
        await this.callbacks.onStepEnd?.(log);
      }
      if (!this.stopReason && this.method.nextPhase && (await this.method.nextPhase(this.ctx(0)))) {
        // New phase (e.g. LT-SFT's sparse retraining): fresh optimizer and schedule over the
        // method's current params.
        this.stepsBefore += this.step;
        this.phase++;
        this.step = 0;
        this.objective = null;
        ({ compiled, params, extraNames, metricNames, noise, grads } = await this.compileObjective());
        this.optimizer = new Optimizer(params, this.cfg.optimizer);
        continue;
      }
      break;
    }
    result.steps = this.stepsBefore + this.step;
    if (this.stopReason) result.stoppedEarly = this.stopReason;
    if (evalData?.length) {
      result.finalEval = await this.evaluate(evalData);
      await this.callbacks.onEval?.(this.step, result.finalEval, 'final');
    }
    this.stopReason = null; // consumed: a later train() call runs normally
    return result;
  }
}
