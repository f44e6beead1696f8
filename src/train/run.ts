/**
 * A training run with the user-facing pieces wired around the Trainer: metrics.jsonl,
 * periodic checkpoints and exact resume, early stopping, a progress display, and a
 * held-out split when no eval set is given. The CLI's `train` is a thin layer over this.
 */
import * as path from 'node:path';
import { SparsetuneError } from '../errors.js';
import { splitHoldout, type TokenizedExample } from '../io/datasets.js';
import { withDirLock } from '../io/dir-lock.js';
import { fingerprintWeights } from '../merge/fingerprint.js';
import type { CausalLM } from '../models/causal-lm.js';
import { CheckpointManager, hashExamples, loadCheckpoint, type Checkpoint, type CheckpointMeta } from './checkpoint.js';
import { EarlyStopping, type EarlyStoppingState } from './early-stopping.js';
import type { Method } from './method.js';
import { MetricsWriter } from './metrics.js';
import type { ProgressBar } from './progress.js';
import { Trainer, type TrainerCallbacks, type TrainerConfigInput, type TrainResult } from './trainer.js';

export const METRICS_FILE = 'metrics.jsonl';
export const CHECKPOINTS_DIR = 'checkpoints';

export interface RunTrainingOptions {
  model: CausalLM;
  method: Method;
  trainer: TrainerConfigInput;
  train: TokenizedExample[];
  /** Held-out set; when absent, `holdout` of the training data is split off (seeded). */
  eval?: TokenizedExample[];
  /** Fraction split off for evaluation when `eval` is absent (default 0.1; 0 = no evaluation). */
  holdout?: number;
  /** Where metrics.jsonl and checkpoints/ go (omit to write neither). */
  outDir?: string;
  /** Save a checkpoint every N global steps (0 = only when the run ends). Default 0. */
  checkpointEvery?: number;
  /** Checkpoints kept (newest). Default 2. */
  keepCheckpoints?: number;
  /** true: continue from the newest checkpoint in outDir/checkpoints; a path: from that checkpoint. */
  resume?: boolean | string;
  earlyStopping?: { patience: number; minDelta?: number };
  progress?: ProgressBar | null;
  callbacks?: TrainerCallbacks;
  /** Fingerprint of the pristine base weights (computed if absent; pass it when known). */
  baseFingerprint?: string;
  /** Aborting stops after the current step, saves a checkpoint, and returns normally. */
  signal?: AbortSignal;
}

export interface RunTrainingResult extends TrainResult {
  trainer: Trainer;
  /** Global step the run resumed from, if it did. */
  resumedFrom?: number;
  /** Directory of the last checkpoint written. */
  lastCheckpoint?: string;
  /** The held-out examples used (given or split off). */
  evalSet?: TokenizedExample[];
}

function sameJson(a: unknown, b: unknown): boolean {
  return JSON.stringify(a) === JSON.stringify(b);
}

/** Refuse a checkpoint from another run: each mismatch is named with its fix. */
function checkResumable(ck: Checkpoint, meta: CheckpointMeta): void {
  const problems: string[] = [];
  if (ck.meta.method !== meta.method) problems.push(`method is ${meta.method}, the checkpoint's is ${ck.meta.method}`);
  else if (!sameJson(ck.meta.methodConfig, meta.methodConfig)) problems.push(`method config differs (checkpoint: ${JSON.stringify(ck.meta.methodConfig)})`);
  if (ck.meta.baseFingerprint !== meta.baseFingerprint) problems.push('the base model weights differ');
  if (ck.meta.dataHash !== meta.dataHash) problems.push('the training data (or --seq-len / holdout split) differs');
  if (problems.length) {
    throw new SparsetuneError('BAD_ARGUMENT', `cannot resume from ${ck.dir}: ${problems.join('; ')}. Resume with the original model, data and settings, or start a new run`);
  }
}

/**
 * The training and held-out sets of a run: the given eval set, or `holdout` (default 0.1)
 * of the training data split off with a seed derived from the run's.
 */
export function trainEvalSplit(
  train: TokenizedExample[],
  evalSet: TokenizedExample[] | undefined,
  holdout: number | undefined,
  seed: number | undefined,
): { train: TokenizedExample[]; evalSet: TokenizedExample[] | undefined } {
  const fraction = holdout ?? 0.1;
  if (evalSet || fraction <= 0 || train.length < 2) return { train, evalSet };
  const split = splitHoldout(train, fraction, (seed ?? 0) + 1);
  return { train: split.train, evalSet: split.eval };
}

/**
 * Train with metrics, checkpoints, early stopping and progress. With `outDir`, the run holds
 * that directory's lock (see io/dir-lock.ts): a second run on the same directory fails fast
 * with CONFLICT naming this one.
 */
export async function runTraining(opts: RunTrainingOptions): Promise<RunTrainingResult> {
  return opts.outDir ? withDirLock(opts.outDir, 'train', () => runLocked(opts)) : runLocked(opts);
}

async function runLocked(opts: RunTrainingOptions): Promise<RunTrainingResult> {
  const { model, method } = opts;
  const { train, evalSet } = trainEvalSplit(opts.train, opts.eval, opts.holdout, opts.trainer.seed);
  if (opts.earlyStopping && !evalSet?.length) {
    throw new SparsetuneError('BAD_ARGUMENT', 'early stopping needs evaluations: give an eval set or a holdout fraction > 0');
  }
  if (opts.earlyStopping && !opts.trainer.evalEvery) {
    throw new SparsetuneError('BAD_ARGUMENT', 'early stopping needs periodic evaluations: set evalEvery (--eval-every N)');
  }

  const meta: CheckpointMeta = {
    method: method.name,
    methodConfig: method.config,
    baseFingerprint: opts.baseFingerprint ?? fingerprintWeights(model.weights),
    dataHash: hashExamples(train),
    extra: {},
  };
  const ckpts = opts.outDir ? new CheckpointManager(path.join(opts.outDir, CHECKPOINTS_DIR), opts.keepCheckpoints ?? 2) : null;
  const stopper = opts.earlyStopping ? new EarlyStopping(opts.earlyStopping) : null;
  const progress = opts.progress ?? null;
  const user = opts.callbacks ?? {};
  const every = opts.checkpointEvery ?? 0;
  let lastSavedStep = -1;
  let lastCheckpoint: string | undefined;

  let trainer: Trainer;
  const globalStep = () => trainer.stepsBefore + trainer.step;
  const save = async () => {
    if (!ckpts || lastSavedStep === globalStep()) return;
    meta.extra = stopper ? { earlyStopping: stopper.state() } : {};
    lastCheckpoint = await ckpts.save(trainer.captureState(), meta);
    lastSavedStep = globalStep();
  };

  let metrics: MetricsWriter | null = null;
  const callbacks: TrainerCallbacks = {
    onStep: async (log) => {
      metrics?.step(log);
      progress?.update(log);
      await user.onStep?.(log);
    },
    onEval: async (step, r, kind) => {
      const g = trainer.stepsBefore + step;
      metrics?.eval(g, r, kind);
      progress?.message(`eval @ step ${g}: loss ${r.loss.toFixed(4)}  ppl ${r.ppl.toFixed(2)}  (${r.tokens} tokens)`);
      // The baseline and periodic evaluations count for stopping; the one after training cannot.
      if (stopper && kind !== 'final') {
        const reason = stopper.update(g, r.loss);
        if (reason) trainer.requestStop(reason);
      }
      await user.onEval?.(step, r, kind);
    },
    onStepEnd: async (log) => {
      if (ckpts && ((every > 0 && globalStep() % every === 0) || trainer.stopRequested)) await save();
      await user.onStepEnd?.(log);
    },
  };
  trainer = new Trainer(model, method, opts.trainer, callbacks);

  let resumedFrom: number | undefined;
  let resumedPhaseStep = 0;
  if (opts.resume) {
    let ck: Checkpoint | null;
    if (typeof opts.resume === 'string') ck = await loadCheckpoint(opts.resume);
    else {
      if (!ckpts) throw new SparsetuneError('BAD_ARGUMENT', 'resume: true needs outDir (the checkpoints live in <outDir>/checkpoints)');
      ck = await ckpts.latest();
      if (!ck) throw new SparsetuneError('NOT_FOUND', `no checkpoint in ${ckpts.root} to resume from; start the run without --resume`);
    }
    checkResumable(ck, meta);
    trainer.resumeFrom(ck.state);
    const es = ck.meta.extra.earlyStopping as EarlyStoppingState | undefined;
    if (stopper && es) stopper.loadState(es);
    resumedFrom = ck.state.stepsBefore + ck.state.step;
    resumedPhaseStep = ck.state.step;
    lastSavedStep = resumedFrom;
  }
  if (opts.outDir) metrics = await MetricsWriter.open(path.join(opts.outDir, METRICS_FILE), resumedFrom === undefined ? {} : { keepUpToStep: resumedFrom });

  const onAbort = () => trainer.requestStop('interrupted');
  opts.signal?.addEventListener('abort', onAbort);
  if (opts.signal?.aborted) onAbort();
  progress?.start(trainer.phaseTotal, resumedPhaseStep);
  let result: TrainResult;
  try {
    result = await trainer.train(train, evalSet);
    await save();
  } finally {
    opts.signal?.removeEventListener('abort', onAbort);
    progress?.finish();
  }
  return { ...result, trainer, resumedFrom, lastCheckpoint, evalSet };
}
