/**
 * MeZO and Sparse-MeZO (specs/sparse-mezo.md): forward-only fine-tuning of any set of JS-owned
 * float32 tensors, given an async loss callback that reads those buffers in place.
 *
 * One step with n samples: for each sample k with seed s_k
 *   x += eps·z_k;  L+ = loss();  x −= 2·eps·z_k;  L− = loss();  (restore)
 *   g_k = (L+ − L−) / (2·eps)
 * then x −= lr·(mean_k g_k·z_k + wd·x), with z regenerated from the seeds (never stored). The last
 * restore and the update share one pass. Sparse-MeZO restricts all of it to the entries with
 * |x| <= h_l, h_l per tensor the (1 − sparsity) quantile of |x|: recomputed from the weights at
 * the start of every step by default (`thresholds: 'per-step'`), or once at construction
 * ('fixed'); either way membership is decided on each step's start weights. The list of (step, seed, g, lr) records replays the run bit-for-bit, given the
 * config (including its noise `generator`, rng.ts).
 */
import { SparsetuneError } from '../errors.js';
import { resolveZoConfig, type ResolvedZoConfig, type ZoConfig } from './config.js';
import { PerturbationKernel, type PerturbedState } from './perturb.js';
import { DOMAIN_SEED, randomUint32, type TrainableTensor } from './rng.js';
import { sparseMezoThreshold, THRESHOLD_SCRATCH_LENGTH } from './thresholds.js';

export type { ZoConfig } from './config.js';
export type { TrainableTensor } from './rng.js';

/** One (step, sample) of a run: everything needed to replay it. */
export interface ZoStepRecord {
  step: number;
  seed: number;
  projectedGrad: number;
  lr: number;
}

/** Result of one optimizer step. */
export interface ZoStepResult {
  /** Mean over samples of (L+ + L−)/2: an estimate of the loss at the step's start weights. */
  loss: number;
  projectedGrads: number[];
}

/** The seed of sample `sample` in step `step` of a run with base seed `baseSeed` (uint32). */
export function deriveStepSeed(baseSeed: number, step: number, sample: number): number {
  return randomUint32(baseSeed, sample, step, DOMAIN_SEED);
}

function validateTensors(tensors: readonly TrainableTensor[]): void {
  if (!Array.isArray(tensors) || tensors.length === 0) {
    throw new SparsetuneError('BAD_ARGUMENT', 'Zeroth-order optimizer needs at least one trainable tensor; pass the adapter or weight tensors to train.');
  }
  for (const t of tensors) {
    if (!(t?.data instanceof Float32Array) || t.data.length === 0) {
      throw new SparsetuneError('BAD_ARGUMENT', `Trainable tensor "${t?.name}" must have a non-empty Float32Array as data.`);
    }
    // The kernels index elements with 32-bit integers.
    if (t.data.length > 2 ** 32) {
      throw new SparsetuneError('BAD_ARGUMENT', `Trainable tensor "${t.name}" has ${t.data.length} elements (limit 2^32); split it into several tensors.`);
    }
  }
  // Two views of the same memory would be perturbed twice and never restore.
  for (let a = 0; a < tensors.length; a++) {
    for (let b = a + 1; b < tensors.length; b++) {
      const x = tensors[a].data;
      const y = tensors[b].data;
      if (x.buffer !== y.buffer) continue;
      const overlap = x.byteOffset < y.byteOffset + y.byteLength && y.byteOffset < x.byteOffset + x.byteLength;
      if (overlap) {
        throw new SparsetuneError('BAD_ARGUMENT', `Trainable tensors "${tensors[a].name}" and "${tensors[b].name}" share memory; list each buffer once.`);
      }
    }
  }
  if (tensors.length >= 2 ** 32) throw new SparsetuneError('BAD_ARGUMENT', 'Too many trainable tensors (limit 2^32 - 1).');
}

function checkFinite(tensors: readonly TrainableTensor[]): void {
  for (const t of tensors) {
    const data = t.data;
    for (let i = 0; i < data.length; i++) {
      if (!Number.isFinite(data[i])) {
        throw new SparsetuneError('BAD_ARGUMENT', `Trainable tensor "${t.name}" has a non-finite value (${data[i]}) at index ${i}; fix the weights before training.`);
      }
    }
  }
}

/** Per-tensor Sparse-MeZO thresholds from the current weights, or null for plain MeZO. */
function computeThresholds(tensors: readonly TrainableTensor[], cfg: ResolvedZoConfig, scratch?: Uint32Array): Float64Array | null {
  if (cfg.sparsity === undefined) return null;
  const sparsity = cfg.sparsity;
  return Float64Array.from(tensors, (t) => sparseMezoThreshold(t.data, sparsity, t.name, scratch));
}

/** A kernel over `tensors` and a `beginStep` to call before each step's passes. */
function makeKernel(tensors: readonly TrainableTensor[], cfg: ResolvedZoConfig): { kernel: PerturbationKernel; thresholds: Float64Array | null; beginStep: () => void } {
  validateTensors(tensors);
  const thresholds = computeThresholds(tensors, cfg);
  if (thresholds === null) checkFinite(tensors); // the threshold pass already checks
  const kernel = new PerturbationKernel({ tensors, thresholds, eps: cfg.eps, chunk: cfg.chunk, exactRestore: cfg.exactRestore, generator: cfg.generator });
  const perStep = thresholds !== null && cfg.thresholds === 'per-step';
  const scratch = perStep ? new Uint32Array(THRESHOLD_SCRATCH_LENGTH) : undefined;
  // Per-step thresholds: the quantile of the weights as they are at the step's start.
  const beginStep = perStep ? () => kernel.setThresholds(computeThresholds(tensors, cfg, scratch)!) : () => undefined;
  return { kernel, thresholds, beginStep };
}

function checkLr(lr: number): void {
  if (!(typeof lr === 'number' && lr > 0 && Number.isFinite(lr))) {
    throw new SparsetuneError('BAD_ARGUMENT', `Learning rate must be a positive finite number, got ${lr}.`);
  }
}

/**
 * MeZO / Sparse-MeZO optimizer over JS-owned float32 tensors. Memory: the tensors themselves,
 * chunk-sized scratch and (Sparse-MeZO or `exactRestore`) a small per-sample side table.
 * The tensors must not be read or written by anyone else while `step` runs, except by the loss
 * callback reading them.
 */
export class ZerothOrderOptimizer {
  /** One record per (step, sample), in execution order. */
  readonly trajectory: ZoStepRecord[] = [];
  private readonly tensors: readonly TrainableTensor[];
  private readonly cfg: ResolvedZoConfig;
  private readonly kernel: PerturbationKernel;
  private readonly liveThresholds: Float64Array | null;
  private readonly beginStep: () => void;
  private stepIndex = 0;
  private busy = false;

  /** Validates the config (lr/eps positive finite, …) and tensors; throws SparsetuneError('BAD_ARGUMENT'). */
  constructor(tensors: TrainableTensor[], cfg: ZoConfig) {
    this.cfg = resolveZoConfig(cfg);
    this.tensors = [...tensors];
    const { kernel, thresholds, beginStep } = makeKernel(this.tensors, this.cfg);
    this.kernel = kernel;
    this.liveThresholds = thresholds;
    this.beginStep = beginStep;
  }

  /**
   * Sparse-MeZO thresholds per tensor (|x| <= h is trained): those of the last step (or, before
   * the first, of the weights at construction); undefined for MeZO.
   */
  get thresholds(): readonly number[] | undefined {
    return this.liveThresholds === null ? undefined : Array.from(this.liveThresholds);
  }

  /** The validated config with defaults filled in. */
  get config(): ResolvedZoConfig {
    return { ...this.cfg };
  }

  /** Steps completed so far. */
  get stepsTaken(): number {
    return this.stepIndex;
  }

  /** Bytes of extra state beyond chunk scratch (the side table's capacity). */
  get sideTableBytes(): number {
    return this.kernel.sideTableBytes;
  }

  /** Most side-table entries one sample has needed (elements whose start value was kept). */
  get peakSideEntries(): number {
    return this.kernel.peakSideEntries;
  }

  /**
   * One MeZO / Sparse-MeZO step. `loss` must evaluate the model on the step's batch with the
   * tensors as they are when it is called. A non-finite loss (or a throwing callback) restores the
   * step's start weights (exactly with `exactRestore`, else within rounding) and throws
   * SparsetuneError('TRAINING_DIVERGED') (or rethrows the callback's error); the step is not recorded.
   */
  async step(loss: () => Promise<number>, opts: { lr?: number } = {}): Promise<ZoStepResult> {
    if (this.busy) throw new SparsetuneError('BAD_ARGUMENT', 'step() called while another step is running; await each step before the next.');
    const lr = opts.lr ?? this.cfg.lr;
    checkLr(lr);
    this.busy = true;
    try {
      this.beginStep();
      const { eps, samples } = this.cfg;
      const seeds: number[] = [];
      const grads: number[] = [];
      let lossSum = 0;
      for (let k = 0; k < samples; k++) {
        const seed = deriveStepSeed(this.cfg.seed, this.stepIndex, k);
        this.kernel.plus(seed);
        const lPlus = await this.evaluate(loss, seed, 'plus', 'L+');
        this.kernel.minus(seed);
        const lMinus = await this.evaluate(loss, seed, 'minus', 'L-');
        const g = (lPlus - lMinus) / (2 * eps);
        if (!Number.isFinite(g)) {
          this.kernel.restore(seed, 'minus');
          throw new SparsetuneError('TRAINING_DIVERGED', `Projected gradient is not finite at step ${this.stepIndex} (L+ = ${lPlus}, L- = ${lMinus}); weights restored. Lower eps or lr.`);
        }
        if (k < samples - 1) this.kernel.restore(seed, 'minus');
        seeds.push(seed);
        grads.push(g);
        lossSum += (lPlus + lMinus) / 2;
      }
      this.kernel.restoreAndUpdate(seeds, grads, lr, this.cfg.weightDecay);
      for (let k = 0; k < samples; k++) this.trajectory.push({ step: this.stepIndex, seed: seeds[k], projectedGrad: grads[k], lr });
      this.stepIndex++;
      return { loss: lossSum / samples, projectedGrads: grads };
    } finally {
      this.busy = false;
    }
  }

  /** Calls the loss; on failure restores the start weights from `state` and throws. */
  private async evaluate(loss: () => Promise<number>, seed: number, state: PerturbedState, label: string): Promise<number> {
    let value: number;
    try {
      value = await loss();
    } catch (err) {
      this.kernel.restore(seed, state);
      throw err;
    }
    if (typeof value !== 'number' || !Number.isFinite(value)) {
      this.kernel.restore(seed, state);
      throw new SparsetuneError(
        'TRAINING_DIVERGED',
        `Loss ${label} is ${String(value)} at step ${this.stepIndex}; weights restored to the start of the step. Lower lr (full-parameter ZO needs ~1e-6 or less) or eps, or check the data.`,
      );
    }
    return value;
  }
}

/** Splits records into consecutive groups of one step each, checking the sample count. */
function groupSteps(trajectory: readonly ZoStepRecord[], samples: number): ZoStepRecord[][] {
  const groups: ZoStepRecord[][] = [];
  for (const record of trajectory) {
    const last = groups[groups.length - 1];
    if (last !== undefined && last[0].step === record.step) last.push(record);
    else groups.push([record]);
  }
  for (const group of groups) {
    if (group.length !== samples) {
      throw new SparsetuneError('BAD_ARGUMENT', `Trajectory step ${group[0].step} has ${group.length} records but the config has samples = ${samples}; replay with the run's config.`);
    }
    for (const r of group) {
      checkLr(r.lr);
      if (!Number.isFinite(r.projectedGrad) || !Number.isInteger(r.seed) || r.seed < 0) {
        throw new SparsetuneError('BAD_ARGUMENT', `Trajectory record of step ${r.step} is invalid (seed ${r.seed}, projectedGrad ${r.projectedGrad}).`);
      }
    }
  }
  return groups;
}

/**
 * Replays a run on `tensors` holding the run's START weights (modified in place): reproduces
 * the trained weights bit-for-bit without any loss evaluation. `cfg` must be the run's config.
 * With `exactRestore` only the updates are applied; otherwise the perturbation passes are
 * repeated too, because their rounding is part of the run.
 */
export function replayTrajectory(tensors: TrainableTensor[], cfg: ZoConfig, trajectory: ZoStepRecord[]): void {
  const resolved = resolveZoConfig(cfg);
  const { kernel, beginStep } = makeKernel(tensors, resolved);
  for (const group of groupSteps(trajectory, resolved.samples)) {
    beginStep();
    const seeds = group.map((r) => r.seed);
    const grads = group.map((r) => r.projectedGrad);
    const lr = group[0].lr;
    if (resolved.exactRestore) {
      kernel.update(seeds, grads, lr, resolved.weightDecay);
      continue;
    }
    for (let k = 0; k < seeds.length; k++) {
      kernel.plus(seeds[k]);
      kernel.minus(seeds[k]);
      if (k < seeds.length - 1) kernel.restore(seeds[k], 'minus');
    }
    kernel.restoreAndUpdate(seeds, grads, lr, resolved.weightDecay);
  }
}
