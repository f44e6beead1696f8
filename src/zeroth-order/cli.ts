/**
 * `sparsetune train --method mezo|sparse-mezo`: the CLI's zeroth-order path. The train command
 * (src/cli/commands/train.ts) parses the shared flags and hands them here; this module merges
 * them with the --config JSON (flags win), validates everything before the model loads, trains,
 * and writes OUT/adapter.json + adapter.safetensors, OUT/trajectory.json and OUT/metrics.jsonl.
 *
 * Settings only zeroth-order training has (eps, sparsity, samples, targets, exactRestore) come
 * from --config, e.g. {"eps": 1e-3, "sparsity": 0.8, "targets": ["q_proj", "v_proj"]}.
 */
import type { ZerothOrderTrainOptions } from '../cli/commands/train.js';
import { existsSync, promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { SparsetuneError } from '../errors.js';
import { withDirLock } from '../io/dir-lock.js';
import { loadDataset, type TokenizedExample } from '../io/datasets.js';
import { bundledModelPath } from '../io/model-dir.js';
import { CausalLM } from '../models/causal-lm.js';
import { ProgressBar } from '../train/progress.js';
import { METRICS_FILE } from '../train/run.js';
import { runZerothOrderTraining, TRAJECTORY_FILE, type ZoRunResult } from './run.js';
import { resolveZoTrainConfig, zoRecipeHelp, zoTrainConfigSchema, type ZoTrainConfigInput } from './train.js';

/** Config schema shown by `sparsetune train --method mezo --help`. */
export const configSchema = zoTrainConfigSchema;

/** The reference recipe of a zeroth-order method, as `--help` lines. */
export const recipeHelp = zoRecipeHelp;

/** One line for `--help`. */
export const summary =
  'zeroth-order (forward-only) training of the block linears in place (MeZO; sparse-mezo perturbs only the small-magnitude weights): memory at inference level, writes a replayable trajectory.json beside the additive adapter';

/** What `sparsetune train` passes for a zeroth-order method (defined beside the CLI command). */
export type ZerothOrderCliOptions = ZerothOrderTrainOptions;

function log(line: string): void {
  process.stderr.write(`${line}\n`);
}

/** The last value of `--name V` / `--name=V` in argv, or undefined. */
function rawFlag(argv: readonly string[], name: string): string | undefined {
  let value: string | undefined;
  argv.forEach((a, i) => {
    if (a === `--${name}` && i + 1 < argv.length) value = argv[i + 1];
    else if (a.startsWith(`--${name}=`)) value = a.slice(name.length + 3);
  });
  return value;
}

function numberFlag(argv: readonly string[], name: string): number | undefined {
  const raw = rawFlag(argv, name);
  if (raw === undefined) return undefined;
  const n = Number(raw);
  if (raw.trim() === '' || !Number.isFinite(n)) throw new SparsetuneError('BAD_ARGUMENT', `--${name} must be a finite number, got '${raw}'`);
  return n;
}

/** --config merged with the flags that were given (flags win), validated. */
function runSettings(opts: ZerothOrderCliOptions): ZoTrainConfigInput {
  const source = opts.configPath ?? '--config';
  const cfg = { ...opts.config } as Record<string, unknown>;
  if (cfg.method !== undefined && cfg.method !== opts.method) {
    throw new SparsetuneError('BAD_ARGUMENT', `${source} sets method "${String(cfg.method)}" but --method is ${opts.method}; drop one of them`);
  }
  cfg.method = opts.method;
  const flags: Record<string, unknown> = {
    steps: opts.steps,
    lr: opts.lr,
    batchSize: opts.batchSize,
    seed: opts.seed,
    evalEvery: opts.evalEvery,
    weightDecay: numberFlag(opts.argv, 'weight-decay'),
    evalBatches: numberFlag(opts.argv, 'eval-batches'),
  };
  for (const [k, v] of Object.entries(flags)) if (v !== undefined) cfg[k] = v;
  const scheduleType = rawFlag(opts.argv, 'schedule');
  const warmup = numberFlag(opts.argv, 'warmup');
  if (scheduleType !== undefined || warmup !== undefined) {
    const base = (cfg.schedule ?? {}) as Record<string, unknown>;
    cfg.schedule = { ...base, ...(scheduleType !== undefined ? { type: scheduleType } : {}), ...(warmup !== undefined ? { warmupSteps: warmup } : {}) };
  }
  try {
    resolveZoTrainConfig(cfg as ZoTrainConfigInput);
  } catch (err) {
    if (err instanceof SparsetuneError) throw new SparsetuneError(err.code, `${source} / flags: ${err.message}`);
    throw err;
  }
  return cfg as ZoTrainConfigInput;
}

/** Refuse to mix a new run into an earlier run's files unless --overwrite. */
async function prepareOut(out: string, overwrite: boolean): Promise<void> {
  const st = await fsp.stat(out).catch(() => null);
  if (st && !st.isDirectory()) throw new SparsetuneError('BAD_ARGUMENT', `--out ${out} exists and is not a directory`);
  const earlier = [METRICS_FILE, TRAJECTORY_FILE].filter((f) => existsSync(path.join(out, f)));
  if (earlier.length && !overwrite) {
    throw new SparsetuneError('BAD_ARGUMENT', `${out} already holds a training run (${earlier.join(', ')}); pass --overwrite to start over or choose another --out`);
  }
  for (const f of earlier) await fsp.rm(path.join(out, f), { force: true });
}

async function loadData(model: CausalLM, file: string, seqLen: number): Promise<TokenizedExample[]> {
  if (!model.tokenizer) throw new SparsetuneError('BAD_ARGUMENT', `${model.source} has no tokenizer.json, so ${file} cannot be tokenized; use a model directory with a tokenizer`);
  return loadDataset(file, model.tokenizer, { seqLen, onWarning: (m) => log(`warning: ${m}`) });
}

/**
 * Run `sparsetune train --method mezo|sparse-mezo`: validate, load the model and data, train,
 * write the artifacts, print the before/after eval loss to stdout. Ctrl-C stops after the
 * current step and saves. A NaN loss saves the last good weights and throws TRAINING_DIVERGED.
 */
export async function runZerothOrderTrain(opts: ZerothOrderCliOptions): Promise<ZoRunResult> {
  if (opts.resume) {
    throw new SparsetuneError('BAD_ARGUMENT', `--resume is not supported for ${opts.method}: a zeroth-order run is cheap to restart, and its trajectory.json already replays it (replayOnBase); drop --resume`);
  }
  const settings = runSettings(opts);
  // The run holds --out's lock: a second run on the same directory fails fast, naming this one.
  return withDirLock(opts.out, `sparsetune train --method ${opts.method}`, () => trainLocked(opts, settings));
}

async function trainLocked(opts: ZerothOrderCliOptions, settings: ReturnType<typeof runSettings>): Promise<ZoRunResult> {
  const overwrite = opts.argv.includes('--overwrite');
  const progressEvery = numberFlag(opts.argv, 'progress-every');
  await prepareOut(opts.out, overwrite);

  const ref = opts.model || bundledModelPath();
  log(`loading model ${ref}`);
  const model = await CausalLM.load(ref);
  const maxPos = model.config.maxPositionEmbeddings;
  const seqLen = opts.seqLen ?? Math.min(128, maxPos);
  if (seqLen > maxPos) throw new SparsetuneError('BAD_ARGUMENT', `--seq-len ${seqLen} exceeds the model's max_position_embeddings (${maxPos}); use --seq-len ${maxPos} or less`);
  log(`tokenizing ${opts.data}`);
  const train = await loadData(model, opts.data, seqLen);
  const evalSet = opts.eval ? await loadData(model, opts.eval, seqLen) : undefined;

  const stop = new AbortController();
  const onSigint = () => {
    log('\ninterrupted: finishing this step and saving (press Ctrl-C again to quit now)');
    stop.abort();
  };
  process.once('SIGINT', onSigint);
  let res: ZoRunResult;
  try {
    res = await runZerothOrderTraining({
      ...settings,
      model,
      train,
      eval: evalSet,
      holdout: opts.holdout,
      out: opts.out,
      progress: opts.quiet ? null : new ProgressBar({ stream: process.stderr, every: progressEvery, label: opts.method }),
      signal: stop.signal,
    });
  } finally {
    process.removeListener('SIGINT', onSigint);
  }
  const fmt = (r: { loss: number; ppl: number } | undefined) => (r ? `${r.loss.toFixed(4)} (ppl ${r.ppl.toFixed(2)})` : 'n/a');
  const lines: string[] = [];
  if (res.evalSet?.length) lines.push(`eval loss before: ${fmt(res.initialEval)}`, `eval loss after:  ${fmt(res.finalEval)}`);
  if (res.stoppedEarly) lines.push(`stopped after ${res.steps} steps: ${res.stoppedEarly}`);
  lines.push(
    `trained ${res.trainer.trainableCount.toLocaleString('en-US')} values (${res.trainer.trainable === 'base' ? 'base weights in place' : 'adapter params'}) for ${res.steps} steps, ${2 * res.trainer.config.samples * res.steps} forward passes`,
    `saved ${res.files.adapterJson} and adapter.safetensors (${res.adapter.meta.method}, ${res.adapter.meta.kind}); trajectory in ${res.files.trajectory}; metrics in ${res.files.metrics}`,
  );
  process.stdout.write(`${lines.join('\n')}\n`);
  return res;
}
