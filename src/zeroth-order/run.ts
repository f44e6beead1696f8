/**
 * A zeroth-order run that leaves its artifacts in an output directory: adapter.json +
 * adapter.safetensors (the additive delta, or the adapter method's export), trajectory.json
 * (the replayable record of the run) and metrics.jsonl (one line per step and evaluation).
 * A run that diverges still writes the adapter and trajectory of its last good weights.
 */
import * as path from 'node:path';
import { SparsetuneError } from '../errors.js';
import type { TokenizedExample } from '../io/datasets.js';
import { ADAPTER_JSON, ADAPTER_SAFETENSORS, saveAdapter } from '../merge/adapter.js';
import type { Adapter } from '../merge/types.js';
import type { CausalLM } from '../models/causal-lm.js';
import { MetricsWriter } from '../train/metrics.js';
import type { ProgressBar } from '../train/progress.js';
import { METRICS_FILE, trainEvalSplit } from '../train/run.js';
import type { TrainerCallbacks } from '../train/trainer.js';
import { ZerothOrderTrainer, type ZoTrainOptions, type ZoTrainResult } from './train.js';

export const TRAJECTORY_FILE = 'trajectory.json';

export interface ZoRunOptions extends ZoTrainOptions {
  model: CausalLM;
  train: TokenizedExample[];
  /** Held-out set; when absent, `holdout` of the training data is split off (seeded). */
  eval?: TokenizedExample[];
  /** Fraction split off for evaluation when `eval` is absent (default 0.1; 0 = no evaluation). */
  holdout?: number;
  /** Output directory (created if needed; other files in it are left alone). */
  out: string;
  progress?: ProgressBar | null;
  callbacks?: TrainerCallbacks;
  /** Aborting stops after the current step; the run is then saved and returns normally. */
  signal?: AbortSignal;
}

export interface ZoRunResult extends ZoTrainResult {
  trainer: ZerothOrderTrainer;
  adapter: Adapter;
  /** The held-out examples used (given or split off). */
  evalSet?: TokenizedExample[];
  files: { adapterJson: string; adapterSafetensors: string; trajectory: string; metrics: string };
}

async function saveArtifacts(trainer: ZerothOrderTrainer, out: string, extraMetrics: Record<string, unknown>): Promise<Adapter> {
  const adapter = await trainer.exportAdapter();
  const last = trainer.history[trainer.history.length - 1];
  adapter.meta.metrics = {
    ...adapter.meta.metrics,
    ...(trainer.initialEval ? { evalLossBefore: trainer.initialEval.loss } : {}),
    ...(trainer.finalEval ? { evalLossAfter: trainer.finalEval.loss, evalPplAfter: trainer.finalEval.ppl } : {}),
    ...(last ? { trainLossLast: last.loss } : {}),
    ...extraMetrics,
  };
  // Trajectory first: once adapter.json exists, everything it refers to is in place.
  await trainer.saveTrajectory(path.join(out, TRAJECTORY_FILE));
  await saveAdapter(out, adapter);
  return adapter;
}

/**
 * Train with MeZO / Sparse-MeZO and write the adapter, trajectory and metrics to `opts.out`.
 * The base fingerprint is taken before the first step. In base-weight mode the model's weights
 * hold the trained values afterwards (`restoreBase` puts the originals back). On a NaN loss the
 * weights are rolled back to the last finite-loss step, saved, and TRAINING_DIVERGED is thrown.
 */
export async function runZerothOrderTraining(opts: ZoRunOptions): Promise<ZoRunResult> {
  const { model, out, progress, signal, callbacks: user = {}, holdout, eval: givenEval, train: givenTrain, ...settings } = opts;
  const { train, evalSet } = trainEvalSplit(givenTrain, givenEval, holdout, settings.seed);
  let metrics: MetricsWriter | null = null;
  const callbacks: TrainerCallbacks = {
    onStep: async (log) => {
      metrics?.step(log);
      progress?.update(log);
      await user.onStep?.(log);
    },
    onEval: async (step, r, kind) => {
      metrics?.eval(step, r, kind);
      progress?.message(`eval @ step ${step}: loss ${r.loss.toFixed(4)}  ppl ${r.ppl.toFixed(2)}  (${r.tokens} tokens)`);
      await user.onEval?.(step, r, kind);
    },
    onStepEnd: user.onStepEnd,
  };
  const trainer = await ZerothOrderTrainer.create(model, settings, callbacks);
  metrics = await MetricsWriter.open(path.join(out, METRICS_FILE));
  const files = {
    adapterJson: path.join(out, ADAPTER_JSON),
    adapterSafetensors: path.join(out, ADAPTER_SAFETENSORS),
    trajectory: path.join(out, TRAJECTORY_FILE),
    metrics: path.join(out, METRICS_FILE),
  };
  const onAbort = () => trainer.requestStop('interrupted');
  signal?.addEventListener('abort', onAbort);
  if (signal?.aborted) onAbort();
  progress?.start(trainer.config.steps, 0);
  let result: ZoTrainResult;
  try {
    result = await trainer.train(train, evalSet);
  } catch (err) {
    if (err instanceof SparsetuneError && err.code === 'TRAINING_DIVERGED') {
      await saveArtifacts(trainer, out, { diverged: err.message });
      throw new SparsetuneError('TRAINING_DIVERGED', `${err.message} The adapter and trajectory of those weights were saved to ${out}.`, { cause: err });
    }
    throw err;
  } finally {
    signal?.removeEventListener('abort', onAbort);
    progress?.finish();
  }
  const adapter = await saveArtifacts(trainer, out, result.stoppedEarly ? { stoppedEarly: result.stoppedEarly } : {});
  return { ...result, trainer, adapter, evalSet, files };
}
