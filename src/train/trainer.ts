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
import type { HostTensor } from '../tensor.js';
import { defaultObjective, type GradMap, type Method, type StepContext, type TrainableParam } from './method.js';
import { clipGlobalNorm, Optimizer, optimizerSchema, scheduledLr, scheduleSchema } from './optim.js';

export const trainerConfigSchema = z.object({
  steps: z.number().int().positive().default(100),
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
  step: number;
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

export interface TrainerCallbacks {
  onStep?(log: StepLog): void | Promise<void>;
  onEval?(step: number, result: EvalResult): void | Promise<void>;
}

export interface TrainResult {
  steps: number;
  initialEval?: EvalResult;
  finalEval?: EvalResult;
  history: StepLog[];
}

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
}

export class Trainer {
  readonly cfg: TrainerConfig;
  private objective: Promise<CompiledObjective> | null = null;
  private hooks: ModelHooks;
  private evalHooks: ModelHooks;
  optimizer: Optimizer | null = null;
  step = 0;

  constructor(
    readonly model: CausalLM,
    readonly method: Method,
    cfg: TrainerConfigInput = {},
    readonly callbacks: TrainerCallbacks = {},
  ) {
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
      return { compiled: await this.model.runtime.compile(g), params, extraNames, metricNames };
    })();
    return this.objective;
  }

  private ctx(lr: number): StepContext {
    return { model: this.model, step: this.step, totalSteps: this.cfg.steps, lr, seed: stepSeed(this.cfg.seed, this.step) };
  }

  private paramFeeds(params: TrainableParam[]): Record<string, HostTensor> {
    const out: Record<string, HostTensor> = {};
    for (const p of params) out[p.name] = { dtype: 'f32', shape: p.shape, data: p.data };
    return out;
  }

  /** Held-out loss and perplexity with the method applied (deterministic feeds). */
  async evaluate(data: TokenizedExample[]): Promise<EvalResult> {
    if (data.length === 0) throw new SparsetuneError('BAD_DATA', 'evaluation set is empty');
    const ctx = this.ctx(0);
    const extra = { ...this.paramFeeds(this.method.params()), ...(this.method.evalFeeds?.(ctx) ?? this.method.stepFeeds?.(ctx) ?? {}) };
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

  /** Train for cfg.steps optimizer steps (cycling through the data in seeded epochs). */
  async train(train: TokenizedExample[], evalData?: TokenizedExample[]): Promise<TrainResult> {
    if (train.length === 0) throw new SparsetuneError('BAD_DATA', 'training set is empty');
    let { compiled, params, extraNames, metricNames } = await this.compileObjective();
    const result: TrainResult = { steps: 0, history: [] };
    await this.method.beforeTraining?.(this.ctx(this.cfg.optimizer.lr));
    if (evalData?.length) {
      result.initialEval = await this.evaluate(evalData);
      await this.callbacks.onEval?.(0, result.initialEval);
    }
    const padId = this.model.tokenizer?.padId ?? 0;
    let epoch = 0;
    let iter = batches(train, this.cfg.batchSize, { seed: this.cfg.seed, epoch, padId });
    const nextBatch = () => {
      let r = iter.next();
      if (r.done) {
        iter = batches(train, this.cfg.batchSize, { seed: this.cfg.seed, epoch: ++epoch, padId });
        r = iter.next();
      }
      return r.value!;
    };
    this.optimizer ??= new Optimizer(params, this.cfg.optimizer);
    for (;;) {
      while (this.step < this.cfg.steps) {
        const lr = scheduledLr(this.cfg.optimizer.lr, this.step, this.cfg.steps, this.cfg.schedule);
        const ctx = this.ctx(lr);
        const t0 = performance.now();
        const acc: (Float32Array | null)[] = params.map(() => null);
        const extraAcc: Record<string, GradMap> = {};
        let lossSum = 0;
        let tokens = 0;
        const metrics: Record<string, number> = {};
        for (let micro = 0; micro < this.cfg.gradAccum; micro++) {
          const batch = nextBatch();
          const feeds = { ...this.paramFeeds(params), ...(this.method.stepFeeds?.(ctx) ?? {}), ...CausalLM.trainFeeds(batch) };
          const out = await compiled.run(this.model.feeds(compiled, feeds));
          const loss = Number(out.loss.data[0]);
          if (!Number.isFinite(loss)) {
            throw new SparsetuneError('TRAINING_DIVERGED', `loss became ${loss} at step ${this.step}; lower the learning rate (now ${lr}) or enable clipping`);
          }
          lossSum += loss;
          for (const l of batch.labels) if (l !== -100n) tokens++;
          params.forEach((p, k) => {
            const g = out[`grad:${p.name}`].data as Float32Array;
            if (!acc[k]) acc[k] = g;
            else for (let i = 0; i < g.length; i++) acc[k]![i] += g[i];
          });
          for (const name of extraNames) {
            const map = (extraAcc[name] ??= new Map());
            for (const p of params) {
              const g = out[`grad@${name}:${p.name}`].data as Float32Array;
              const prev = map.get(p.name);
              if (!prev) map.set(p.name, g);
              else for (let i = 0; i < g.length; i++) prev[i] += g[i];
            }
          }
          for (const m of metricNames) metrics[m] = (metrics[m] ?? 0) + Number(out[`metric:${m}`].data[0]) / this.cfg.gradAccum;
        }
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
        const log: StepLog = { step: this.step + 1, loss: lossSum / this.cfg.gradAccum, lr, gradNorm, tokens, tokensPerSecond: tokens / seconds, metrics };
        result.history.push(log);
        this.step++;
        await this.callbacks.onStep?.(log);
        if (evalData?.length && this.cfg.evalEvery && this.step % this.cfg.evalEvery === 0 && this.step < this.cfg.steps) {
          await this.callbacks.onEval?.(this.step, await this.evaluate(evalData));
        }
      }
      if (this.method.nextPhase && (await this.method.nextPhase(this.ctx(0)))) {
        // New phase (e.g. LT-SFT's sparse retraining): fresh optimizer and schedule over the
        // method's current params.
        result.steps += this.step;
        this.step = 0;
        this.objective = null;
        ({ compiled, params, extraNames, metricNames } = await this.compileObjective());
        this.optimizer = new Optimizer(params, this.cfg.optimizer);
        continue;
      }
      break;
    }
    result.steps += this.step;
    if (evalData?.length) {
      result.finalEval = await this.evaluate(evalData);
      await this.callbacks.onEval?.(this.step, result.finalEval);
    }
    return result;
  }
}
