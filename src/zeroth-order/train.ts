/**
 * Zeroth-order fine-tuning of a causal LM (MeZO / Sparse-MeZO, specs/sparse-mezo.md): forward
 * passes only, with the trainable tensors perturbed and updated in place.
 *
 * Trainable tensors are either the base weights of the target linear sites, used in place (no
 * copy of the originals is kept: they are re-read from the model's safetensors file when the
 * delta is exported or a rollback needs them), or the params of any first-order `Method`
 * (e.g. LoRA), fed to its eval hooks. The loss graph is compiled once and reused for every
 * forward. The run's trajectory (seed, projected gradient, lr per step) replays to the trained
 * weights bit for bit (replay.ts).
 */
import { SparsetuneError } from '../errors.js';
import { batches, collate, type Batch, type TokenizedExample } from '../io/datasets.js';
import { fingerprintWeights } from '../merge/fingerprint.js';
import { newAdapter, type Adapter } from '../merge/types.js';
import type { CausalLM } from '../models/causal-lm.js';
import type { ModelHooks } from '../models/hooks.js';
import { selectSites } from '../adapters/common.js';
import type { Method } from '../train/method.js';
import { scheduledLr } from '../train/optim.js';
import { stepSeed, type EvalResult, type StepLog, type TrainerCallbacks } from '../train/trainer.js';
import type { HostTensor } from '../tensor.js';
import { BaseWeightsOnDisk, verifyBaseMatchesDisk } from './base-weights.js';
import { AdditiveDeltaBuilder } from './delta.js';
import { replayTrajectory, ZerothOrderOptimizer, type ZoStepRecord } from './mezo.js';
import type { ZoConfig } from './config.js';
import type { TrainableTensor } from './rng.js';
import { DEFAULT_SPARSITY, resolveZoTrainConfig, type ZoExtraParams, type ZoTrainConfig, type ZoTrainConfigInput } from './train-config.js';
import { saveTrajectory } from './trajectory.js';

export {
  DEFAULT_SPARSITY,
  resolveZoTrainConfig,
  zoTrainConfigSchema,
  zoRecipeHelp,
  ZO_RECIPES,
  ZO_EXTRA_PARAMS,
  type ZoExtraParams,
  type ZoRecipe,
  type ZoTrainConfig,
  type ZoTrainConfigInput,
} from './train-config.js';

/** A run's settings plus what cannot be JSON: the adapter method, and where the base lives. */
export interface ZoTrainOptions extends ZoTrainConfigInput {
  /** Train this method's params (its `hooks('eval')` graph) instead of base weights. */
  adapter?: Method;
  /** Directory the original base weights are re-read from (default: the model's source directory). */
  baseDir?: string;
}

export interface ZoTrainResult {
  /** Steps whose updates the weights hold (after a rollback: fewer than were run). */
  steps: number;
  initialEval?: EvalResult;
  finalEval?: EvalResult;
  history: StepLog[];
  stoppedEarly?: string;
}

/** Input embeddings (token, and GPT-2's positions) of the supported architectures. */
const EMBEDDINGS = ['model.embed_tokens.weight', 'transformer.wte.weight', 'transformer.wpe.weight'];

/** Norm parameters (RMSNorm / LayerNorm weights and biases): 1-D tensors named like a norm. */
function isNorm(name: string, shape: readonly number[]): boolean {
  return shape.length === 1 && /(norm|\.ln_)/.test(name);
}

/**
 * Base weights to train: the target sites (default every block linear), then the `include`d
 * embeddings, norms and head, in model order, each buffer once (a tied head is the embedding).
 */
export function baseTensorNames(model: CausalLM, targets: ZoTrainConfig['targets'], include: readonly ZoExtraParams[] = []): string[] {
  const sites = targets === undefined ? model.sites().filter((s) => s.kind !== 'lm_head') : selectSites(model, targets);
  const names = sites.map((s) => s.weightName);
  const extra = new Set(include);
  for (const [name, w] of model.weights) {
    if ((extra.has('embeddings') && EMBEDDINGS.includes(name)) || (extra.has('norms') && isNorm(name, w.shape))) names.push(name);
  }
  if (extra.has('head')) {
    const head = model.sites().find((s) => s.kind === 'lm_head');
    if (head) names.push(head.weightName);
  }
  const seen = new Set<Float32Array>();
  return [...new Set(names)].filter((n) => {
    const data = model.weights.get(n)!.data;
    if (seen.has(data)) return false;
    seen.add(data);
    return true;
  });
}

function isDivergence(err: unknown): err is SparsetuneError {
  return err instanceof SparsetuneError && err.code === 'TRAINING_DIVERGED';
}

/** A MeZO / Sparse-MeZO run on one model: train, evaluate, export the adapter and trajectory. */
export class ZerothOrderTrainer {
  history: StepLog[] = [];
  /** Steps whose updates the trainable tensors hold now. */
  step = 0;
  initialEval: EvalResult | undefined;
  finalEval: EvalResult | undefined;
  private stopReason: string | null = null;
  /** After a rewind the optimizer's step counter no longer matches the weights. */
  private rewound = false;
  /** Records of the optimizer's trajectory that the weights reflect (fewer after a rollback). */
  private keptRecords: number | null = null;
  private readonly feeds: Record<string, HostTensor>;
  private readonly hooks: ModelHooks | undefined;

  private constructor(
    readonly model: CausalLM,
    readonly config: ZoTrainConfig,
    readonly zoConfig: ZoConfig,
    readonly tensors: TrainableTensor[],
    readonly adapter: Method | undefined,
    /** Base mode: the original weights on disk. */
    private readonly disk: BaseWeightsOnDisk | null,
    /** Adapter mode: the params' initial values (small), for rollback. */
    private readonly initialParams: Float32Array[] | null,
    /** Fingerprint of the base weights before any step (adapters record it). */
    readonly baseFingerprint: string,
    readonly optimizer: ZerothOrderOptimizer,
    readonly callbacks: TrainerCallbacks,
  ) {
    this.hooks = adapter?.hooks('eval');
    this.feeds = {};
    if (adapter) {
      for (const p of adapter.params()) this.feeds[p.name] = { dtype: 'f32', shape: p.shape, data: p.data };
      const ctx = { model, step: 0, totalSteps: config.steps, lr: config.lr, seed: stepSeed(config.seed, 0) };
      Object.assign(this.feeds, adapter.evalFeeds?.(ctx) ?? adapter.stepFeeds?.(ctx) ?? {});
    }
  }

  /**
   * Validate the settings, pick the trainable tensors and set up the optimizer (Sparse-MeZO
   * thresholds come from the weights as they are now). In base mode the in-memory weights are
   * checked against the originals on disk first, since the export is computed against them.
   */
  static async create(model: CausalLM, opts: ZoTrainOptions, callbacks: TrainerCallbacks = {}): Promise<ZerothOrderTrainer> {
    model.requireF32('zeroth-order training');
    const { adapter, baseDir, ...settings } = opts;
    const config = resolveZoTrainConfig(settings);
    // Before any step: later calls get this cached value (see fingerprintWeights).
    const baseFingerprint = fingerprintWeights(model.weights);
    let tensors: TrainableTensor[];
    let disk: BaseWeightsOnDisk | null = null;
    let initialParams: Float32Array[] | null = null;
    if (adapter) {
      const params = adapter.params();
      if (params.length === 0) {
        throw new SparsetuneError('BAD_ARGUMENT', `method ${adapter.name} has no trainable tensors; check its target modules`);
      }
      tensors = params.map((p) => ({ name: p.name, data: p.data, decay: p.decay }));
      initialParams = params.map((p) => p.data.slice());
    } else {
      const names = baseTensorNames(model, config.targets, config.include);
      if (names.length === 0) throw new SparsetuneError('BAD_ARGUMENT', 'no trainable weights: the model has no linear layers outside lm_head; set targets');
      disk = await BaseWeightsOnDisk.open(baseDir ?? model.source);
      await verifyBaseMatchesDisk(model, disk, names);
      // As MeZO's code: no weight decay on norms (or any other 1-D tensor, e.g. biases).
      tensors = names.map((name) => {
        const w = model.weights.get(name)!;
        return { name, data: w.data, decay: w.shape.length > 1 };
      });
    }
    const zoConfig: ZoConfig = {
      lr: config.lr,
      eps: config.eps,
      weightDecay: config.weightDecay,
      samples: config.samples,
      seed: config.seed,
      exactRestore: config.exactRestore,
      ...(config.method === 'sparse-mezo' ? { sparsity: config.sparsity ?? DEFAULT_SPARSITY, thresholds: config.thresholds ?? 'per-step' } : {}),
    };
    const optimizer = new ZerothOrderOptimizer(tensors, zoConfig);
    return new ZerothOrderTrainer(model, config, zoConfig, tensors, adapter, disk, initialParams, baseFingerprint, optimizer, callbacks);
  }

  /** What the trainable tensors are: base weights (by HF name) or an adapter's params. */
  get trainable(): 'base' | 'adapter' {
    return this.adapter ? 'adapter' : 'base';
  }

  /** The (step, seed, projected gradient, lr) records that reproduce the current weights. */
  get trajectory(): ZoStepRecord[] {
    const all = this.optimizer.trajectory;
    return this.keptRecords === null ? [...all] : all.slice(0, this.keptRecords);
  }

  /** Number of trainable elements (all of them for MeZO; Sparse-MeZO perturbs a subset of these). */
  get trainableCount(): number {
    return this.tensors.reduce((s, t) => s + t.data.length, 0);
  }

  /** Ask the loop to stop after the current step (Ctrl-C); `train` then evaluates and returns. */
  requestStop(reason: string): void {
    this.stopReason ??= reason;
  }

  private async batchLoss(batch: Batch): Promise<number> {
    return (await this.model.loss(batch, { hooks: this.hooks, extraFeeds: this.feeds })).loss;
  }

  /** Token-weighted held-out loss and perplexity with the current weights. */
  async evaluate(data: TokenizedExample[]): Promise<EvalResult> {
    if (data.length === 0) throw new SparsetuneError('BAD_DATA', 'evaluation set is empty');
    const padId = this.model.tokenizer?.padId ?? 0;
    const bs = this.config.batchSize;
    let sum = 0;
    let tokens = 0;
    let n = 0;
    for (let i = 0; i < data.length; i += bs) {
      const r = await this.model.loss(collate(data.slice(i, i + bs), padId), { hooks: this.hooks, extraFeeds: this.feeds });
      sum += r.loss * r.tokens;
      tokens += r.tokens;
      if (this.config.evalBatches && ++n >= this.config.evalBatches) break;
    }
    const loss = sum / Math.max(1, tokens);
    return { loss, ppl: Math.exp(loss), tokens };
  }

  /**
   * Run the configured steps over `train` (seeded epochs, like the first-order trainer), with
   * evaluations on `evalData` before, periodically and after. Once per trainer. A non-finite
   * loss rolls the weights back to the last step at which the loss was finite and throws
   * TRAINING_DIVERGED.
   */
  async train(train: TokenizedExample[], evalData?: TokenizedExample[]): Promise<ZoTrainResult> {
    if (train.length === 0) throw new SparsetuneError('BAD_DATA', 'training set is empty');
    if (this.rewound) throw new SparsetuneError('BAD_ARGUMENT', 'this run was rewound (or rolled back after divergence) and cannot continue; start a new run');
    if (this.step > 0) throw new SparsetuneError('BAD_ARGUMENT', 'train() already ran on this trainer; create a new one for another run');
    const { steps, batchSize, seed, samples } = this.config;
    if (evalData?.length) {
      this.initialEval = await this.evaluate(evalData);
      await this.callbacks.onEval?.(0, this.initialEval, 'initial');
    }
    const padId = this.model.tokenizer?.padId ?? 0;
    let epoch = 0;
    let iter = batches(train, batchSize, { seed, epoch, padId });
    const nextBatch = (): Batch => {
      let r = iter.next();
      if (r.done) {
        iter = batches(train, batchSize, { seed, epoch: ++epoch, padId });
        r = iter.next();
      }
      return r.value!;
    };
    while (this.step < steps && !this.stopReason) {
      const lr = scheduledLr(this.config.lr, this.step, steps, this.config.schedule);
      const batch = nextBatch();
      const t0 = performance.now();
      let result;
      try {
        result = await this.optimizer.step(() => this.batchLoss(batch), { lr });
      } catch (err) {
        if (isDivergence(err)) await this.divergeAndRollBack(err, lr);
        throw err;
      }
      const seconds = (performance.now() - t0) / 1000;
      let tokens = 0;
      for (const l of batch.labels) if (l !== -100n) tokens++;
      const g = result.projectedGrads.reduce((a, b) => a + b, 0) / result.projectedGrads.length;
      this.step++;
      const log: StepLog = {
        step: this.step,
        phase: 0,
        globalStep: this.step,
        loss: result.loss,
        lr,
        // ZO has no full gradient: this is |g|, the directional derivative along the perturbation.
        gradNorm: Math.abs(g),
        tokens,
        tokensPerSecond: tokens / seconds,
        metrics: { projected_grad: g, forward_passes: 2 * samples * this.step },
      };
      this.history.push(log);
      await this.callbacks.onStep?.(log);
      if (evalData?.length && this.config.evalEvery && this.step % this.config.evalEvery === 0 && this.step < steps) {
        await this.callbacks.onEval?.(this.step, await this.evaluate(evalData), 'periodic');
      }
      await this.callbacks.onStepEnd?.(log);
    }
    const stoppedEarly = this.stopReason ?? undefined;
    this.stopReason = null;
    if (evalData?.length) {
      this.finalEval = await this.evaluate(evalData);
      await this.callbacks.onEval?.(this.step, this.finalEval, 'final');
    }
    return { steps: this.step, initialEval: this.initialEval, finalEval: this.finalEval, history: this.history, stoppedEarly };
  }

  /**
   * The loss of step s+1 was not finite. The optimizer already put back the weights of that
   * step's start, but they are the ones that gave the bad loss; the last weights measured finite
   * are those before step s's update. Rebuild them by replaying the trajectory minus its last
   * step from the originals, then report.
   */
  private async divergeAndRollBack(err: SparsetuneError, lr: number): Promise<never> {
    const failed = this.step + 1;
    const keep = Math.max(0, this.step - 1);
    await this.rewind(keep);
    throw new SparsetuneError(
      'TRAINING_DIVERGED',
      `zeroth-order training diverged at step ${failed} of ${this.config.steps} (${err.message}). ` +
        `The weights were rolled back to those after step ${keep}, the last at which the loss was finite. ` +
        `Lower the learning rate (now ${lr}; full-parameter ZO needs 1e-4 or less on small models, ~1e-6 on 7B) or eps (${this.config.eps}).`,
      { cause: err },
    );
  }

  /**
   * Put the trainable tensors back to their state after `steps` (<= the steps taken) steps:
   * the originals (re-read from disk, or the adapter's initial params) plus a replay of the
   * trajectory's first `steps` steps, bit for bit. Training cannot continue afterwards.
   */
  async rewind(steps: number): Promise<void> {
    if (!Number.isInteger(steps) || steps < 0 || steps > this.step) {
      throw new SparsetuneError('BAD_ARGUMENT', `rewind: steps must be an integer in [0, ${this.step}] (the steps taken), got ${steps}`);
    }
    const records = this.optimizer.trajectory.filter((r) => r.step < steps);
    if (this.disk) {
      for (const t of this.tensors) await this.disk.readInto(t.name, t.data);
    } else {
      this.tensors.forEach((t, k) => t.data.set(this.initialParams![k]));
    }
    replayTrajectory(this.tensors, this.zoConfig, records);
    this.keptRecords = records.length;
    this.step = steps;
    this.history = this.history.slice(0, steps);
    this.rewound = true;
  }

  /** The run's settings as recorded in adapter.json (`tensors` lets replayOnBase find them). */
  describe(): Record<string, unknown> {
    return {
      algorithm: this.config.method,
      trainable: this.trainable,
      ...(this.adapter ? { adapterMethod: this.adapter.name } : {}),
      tensors: this.tensors.map((t) => t.name),
      ...(this.config.targets !== undefined ? { targets: this.config.targets } : {}),
      zo: { ...this.zoConfig },
      steps: this.step,
      plannedSteps: this.config.steps,
      batchSize: this.config.batchSize,
      schedule: this.config.schedule,
    };
  }

  private summary(): Record<string, unknown> {
    return {
      steps: this.step,
      forwardPasses: 2 * this.config.samples * this.step,
      trainableElements: this.trainableCount,
      ...(this.initialEval ? { initialEvalLoss: this.initialEval.loss } : {}),
      ...(this.finalEval ? { finalEvalLoss: this.finalEval.loss } : {}),
    };
  }

  /**
   * The trained result as an adapter: base mode gives an `additive` delta W − W0 over the
   * elements that changed (W0 re-read from disk one tensor at a time; values chosen so that
   * fusing gives W exactly); adapter mode gives the method's own export.
   */
  async exportAdapter(): Promise<Adapter> {
    if (this.adapter) {
      const a = await this.adapter.export(this.model);
      a.meta.config = { ...a.meta.config, zerothOrder: this.describe() };
      a.meta.metrics = { ...a.meta.metrics, ...this.summary() };
      if (!a.meta.base.fingerprint) a.meta.base = { ...a.meta.base, fingerprint: this.baseFingerprint };
      return a;
    }
    const a = newAdapter({
      method: this.config.method,
      kind: 'additive',
      base: { model: this.model.source, fingerprint: this.baseFingerprint },
      config: this.describe(),
    });
    let inexact = 0;
    let touched = 0;
    for (const t of this.tensors) {
      const builder = new AdditiveDeltaBuilder();
      await this.disk!.scan(t.name, (start, original) => builder.add(t.data, original, start));
      const delta = builder.finish();
      inexact += builder.inexact;
      touched += delta.indices.length;
      if (delta.indices.length > 0) a.additive.set(t.name, delta);
    }
    a.meta.metrics = { ...this.summary(), changedElements: touched, inexactDeltaElements: inexact };
    return a;
  }

  /** Write the trajectory file (the run's ZoConfig + records) atomically. */
  async saveTrajectory(path: string): Promise<void> {
    await saveTrajectory(path, this.zoConfig, this.trajectory);
  }
}

/**
 * Train `model` with MeZO / Sparse-MeZO: base weights of the target sites in place, or the
 * params of `opts.adapter`. Returns the result and the trainer (for exportAdapter /
 * saveTrajectory). Throws BAD_ARGUMENT for bad settings or an empty trainable set, and
 * TRAINING_DIVERGED (after rolling back to the last finite-loss weights) on a NaN loss.
 */
export async function trainZerothOrder(
  model: CausalLM,
  opts: ZoTrainOptions,
  train: TokenizedExample[],
  evalData?: TokenizedExample[],
  callbacks: TrainerCallbacks = {},
): Promise<ZoTrainResult & { trainer: ZerothOrderTrainer }> {
  const trainer = await ZerothOrderTrainer.create(model, opts, callbacks);
  const result = await trainer.train(train, evalData);
  return { ...result, trainer };
}
