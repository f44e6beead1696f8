/**
 * `sparsetune train`: fine-tune a model with one method and save the adapter, metrics and
 * checkpoints. Every check that can fail (flags, method, config, model, sequence length,
 * target modules, data lines) runs before the first step.
 */
import { existsSync, promises as fsp } from 'node:fs';
import * as path from 'node:path';
import type { z } from 'zod';
import { SparsetuneError } from '../../errors.js';
import { loadDataset, type TokenizedExample } from '../../io/datasets.js';
import { withDirLock } from '../../io/dir-lock.js';
import { saveAdapter, ADAPTER_JSON, ADAPTER_SAFETENSORS } from '../../merge/adapter.js';
import { fingerprintWeights } from '../../merge/fingerprint.js';
import { exportPeft, PEFT_CONFIG, PEFT_WEIGHTS } from '../../merge/peft.js';
import { formatTrainableParameters, trainableParameters } from '../../train/trainable.js';
import type { CausalLM } from '../../models/causal-lm.js';
import { CHECKPOINTS_DIR, METRICS_FILE, runTraining, type RunTrainingResult } from '../../train/run.js';
import type { TrainerConfigInput } from '../../train/trainer.js';
import { formatHelp, parseCommand, UsageError, wantsHelp, type CommandSpec, type Flags } from '../args.js';
import { loadCliModel, MODEL_FLAG, modelRef } from '../adapters.js';
import { methodHelp } from '../method-help.js';
import { checkMethodName, isZerothOrder, loadMethodModule, readConfigFile, schemaHasField, validateMethodConfig, ALL_METHODS } from '../method-config.js';
import { loadOptional, optionalModules } from '../optional.js';
import { log, trainingProgress } from '../output.js';
import { accuracy, candidateLabels, readLabelledRows } from '../classify-data.js';
import { methodEvalFeeds } from '../../train/evaluation.js';
import { recipeHelp, resolveRecipe, type MethodRecipe } from '../../train/recipe.js';

export const spec: CommandSpec = {
  name: 'train',
  summary: 'Fine-tune a model with a sparse/PEFT method and save the adapter.',
  usage: 'train --method NAME --data FILE --out DIR [--model M] [--eval FILE] [options]',
  flags: {
    model: MODEL_FLAG,
    method: { type: 'string', value: 'NAME', description: `fine-tuning method: ${ALL_METHODS.join(', ')}`, required: true },
    data: { type: 'string', value: 'FILE', description: 'training data (.jsonl with text | prompt+completion | messages, or .txt)', required: true },
    out: { type: 'string', value: 'DIR', description: 'output directory: adapter.json + adapter.safetensors, metrics.jsonl, checkpoints/', required: true },
    format: { type: 'string', value: 'FMT', description: 'adapter files: sparsetune (adapter.json) or peft (adapter_config.json + adapter_model.safetensors, for Hugging Face PEFT; lora and gs-lora)', default: 'sparsetune' },
    eval: { type: 'string', value: 'FILE', description: 'held-out data (default: split --holdout of --data)' },
    steps: { type: 'string', value: 'N', description: 'optimizer steps', default: "the method's recipe" },
    'phase-steps': { type: 'string', value: 'A,B', description: 'multi-phase methods (lt-sft): steps of each phase (--steps alone sets every phase)', default: "the method's recipe" },
    lr: { type: 'string', value: 'X', description: 'peak learning rate', default: "the method's recipe" },
    'batch-size': { type: 'string', value: 'N', description: 'examples per micro-batch', default: "the method's recipe" },
    'grad-accum': { type: 'string', value: 'N', description: 'micro-batches per optimizer step', default: '1' },
    'seq-len': { type: 'string', value: 'N', description: 'tokens per example (at most the model\'s max_position_embeddings)', default: 'min(128, model max)' },
    config: { type: 'string', value: 'FILE.json', description: 'method config (JSON object; see --method NAME --help)' },
    seed: { type: 'string', value: 'N', description: 'seed of data order, holdout split and the method\'s init (unless its config sets one)', default: '0' },
    'eval-every': { type: 'string', value: 'N', description: 'evaluate every N steps (0 = before and after only)', default: '0' },
    'eval-batches': { type: 'string', value: 'N', description: 'at most N batches per evaluation (0 = all)', default: '0' },
    holdout: { type: 'string', value: 'F', description: 'fraction of --data held out when no --eval (0 = no evaluation)', default: '0.1' },
    patience: { type: 'string', value: 'N', description: 'early stopping: stop after N evaluations without improvement (needs --eval-every)' },
    'min-delta': { type: 'string', value: 'X', description: 'early stopping: smallest loss decrease that counts', default: '0' },
    schedule: { type: 'string', value: 'KIND', description: 'learning-rate schedule: constant, linear, cosine', default: "the method's recipe" },
    warmup: { type: 'string', value: 'N', description: 'linear warmup steps', default: "the method's recipe" },
    'weight-decay': { type: 'string', value: 'X', description: 'decoupled weight decay', default: "the method's recipe" },
    'clip-norm': { type: 'string', value: 'X', description: 'clip the global gradient norm (0 = off)', default: "the method's recipe" },
    'checkpoint-every': { type: 'string', value: 'N', description: 'save a checkpoint every N steps (0 = only at the end)', default: '100' },
    'keep-checkpoints': { type: 'string', value: 'N', description: 'checkpoints kept', default: '2' },
    classify: { type: 'boolean', description: 'report accuracy on --eval {"prompt","completion"} rows (label scored by log-likelihood) before and after' },
    labels: { type: 'string', value: 'LIST', description: 'with --classify: comma-separated candidate labels', default: 'the distinct completions in --eval' },
    resume: { type: 'boolean', description: 'continue the run in --out from its newest checkpoint (same flags)' },
    overwrite: { type: 'boolean', description: 'replace the metrics and checkpoints of an earlier run in --out' },
    quiet: { type: 'boolean', description: 'no progress display' },
    'progress-every': { type: 'string', value: 'N', description: 'without a terminal: print progress every N steps', default: 'about 20 lines per run' },
  },
  notes: [
    'Examples:',
    '  sparsetune train --method lora --data train.jsonl --out runs/lora --steps 200',
    '  sparsetune train --method lora --help        # the method\'s config fields and recipe (default lr, steps, optimizer)',
    '  sparsetune train --method lora --config adapter_config.json --format peft ...   # PEFT config in, PEFT directory out',
    '  sparsetune train ... --resume                 # continue an interrupted run exactly',
  ].join('\n'),
};

/** Methods whose adapters are PEFT LoRA (low-rank pairs, optionally saved modules). */
const PEFT_METHODS = ['lora', 'gs-lora'];

/** What `runZerothOrderTrain` receives (zeroth-order methods; src/zeroth-order/cli.ts). */
export interface ZerothOrderTrainOptions {
  method: 'mezo' | 'sparse-mezo';
  /** Model directory or hub id (`--model`, default the bundled model). */
  model: string;
  data: string;
  out: string;
  eval?: string;
  /** Numeric flags are undefined when not given, so the zeroth-order defaults apply. */
  steps?: number;
  lr?: number;
  batchSize?: number;
  seqLen?: number;
  seed?: number;
  evalEvery?: number;
  holdout?: number;
  /** Parsed --config JSON (unvalidated: the zeroth-order module owns its schema). */
  config: Record<string, unknown>;
  configPath?: string;
  resume: boolean;
  quiet: boolean;
  /** The raw arguments after `train`, for flags only the zeroth-order trainer knows. */
  argv: string[];
}

type ZerothOrderModule = {
  runZerothOrderTrain?: (opts: ZerothOrderTrainOptions) => Promise<unknown>;
  configSchema?: z.ZodTypeAny;
  summary?: string;
  recipeHelp?: (method: 'mezo' | 'sparse-mezo') => string[];
};

async function printMethodHelp(name: string): Promise<void> {
  if (isZerothOrder(name)) {
    let mod: ZerothOrderModule = {};
    try {
      mod = (await optionalModules.zerothOrder()) as ZerothOrderModule;
    } catch {
      // not in this build; fall through to the generic text
    }
    const summary = mod.summary ?? 'zeroth-order (forward-only) training: perturbs the trainable tensors in place, memory at inference level';
    if (mod.configSchema) process.stdout.write(methodHelp(name, summary, mod.configSchema));
    if (mod.recipeHelp) process.stdout.write(`\n${mod.recipeHelp(name as 'mezo' | 'sparse-mezo').join('\n')}\n`);
    else process.stdout.write(`Method ${name}: ${summary}\n\nIts config fields come with the zeroth-order trainer (src/zeroth-order/cli.ts), which this build does not include.\n`);
    return;
  }
  const mod = await loadMethodModule(name);
  process.stdout.write(methodHelp(name, mod.summary, mod.configSchema));
  process.stdout.write(`\n${recipeHelp(mod.recipe).join('\n')}\n`);
}

/** Trainer settings from the flags; a flag not given takes the method's recipe value. */
function trainerConfig(f: Flags, recipe: MethodRecipe | undefined): TrainerConfigInput & { steps: number } {
  const r = resolveRecipe(recipe);
  // --steps sets every phase; --phase-steps (or, without either flag, the recipe) sets them one by one.
  const phaseFlag = f.str('phase-steps');
  const phaseSteps = phaseFlag !== undefined ? parsePhaseSteps(phaseFlag) : f.has('steps') ? undefined : r.phaseSteps;
  return {
    steps: f.int('steps', { min: 1 }, r.steps)!,
    ...(phaseSteps ? { phaseSteps } : {}),
    batchSize: f.int('batch-size', { min: 1 }, r.batchSize)!,
    gradAccum: f.int('grad-accum', { min: 1 }, 1)!,
    optimizer: { ...r.optimizer, lr: f.num('lr', { gt: 0 }, r.lr)!, weightDecay: f.num('weight-decay', { min: 0 }, r.optimizer.weightDecay ?? 0)! },
    schedule: { ...r.schedule, type: f.choice('schedule', ['constant', 'linear', 'cosine'] as const, r.schedule.type ?? 'cosine')!, warmupSteps: f.int('warmup', { min: 0 }, r.schedule.warmupSteps ?? 0)! },
    clipNorm: f.num('clip-norm', { min: 0 }, r.clipNorm)!,
    evalEvery: f.int('eval-every', { min: 0 }, 0)!,
    evalBatches: f.int('eval-batches', { min: 0 }, 0)!,
    seed: f.int('seed', { min: 0 }, 0)!,
  };
}

function parsePhaseSteps(text: string): number[] {
  const parts = text.split(',').map((x) => x.trim());
  const steps = parts.map(Number);
  if (parts.length === 0 || steps.some((n, i) => parts[i] === '' || !Number.isInteger(n) || n < 1)) {
    throw new UsageError('train', `--phase-steps ${text}: give positive integers separated by commas, one per phase (e.g. --phase-steps 200,200)`);
  }
  return steps;
}

/** Refuse to mix a new run into an old run's files unless asked. */
async function prepareOutDir(out: string, resume: boolean, overwrite: boolean): Promise<void> {
  const st = await fsp.stat(out).catch(() => null);
  if (st && !st.isDirectory()) throw new UsageError('train', `--out ${out} exists and is not a directory`);
  const metrics = path.join(out, METRICS_FILE);
  const ckpts = path.join(out, CHECKPOINTS_DIR);
  const earlier = existsSync(metrics) || existsSync(ckpts);
  if (resume && overwrite) throw new UsageError('train', '--resume and --overwrite contradict each other; pick one');
  if (resume && !existsSync(ckpts)) throw new UsageError('train', `--resume: ${out} has no ${CHECKPOINTS_DIR}/ to resume from; drop --resume to start a new run`);
  if (earlier && !resume && !overwrite) {
    throw new UsageError('train', `${out} already holds a training run (${METRICS_FILE} / ${CHECKPOINTS_DIR}/); pass --resume to continue it or --overwrite to start over`);
  }
  if (overwrite) {
    await fsp.rm(metrics, { force: true });
    await fsp.rm(ckpts, { recursive: true, force: true });
  }
}

async function loadData(model: CausalLM, file: string, seqLen: number): Promise<TokenizedExample[]> {
  if (!model.tokenizer) throw new SparsetuneError('BAD_ARGUMENT', `${model.source} has no tokenizer.json, so ${file} cannot be tokenized; use a model directory with a tokenizer`);
  return loadDataset(file, model.tokenizer, { seqLen, onWarning: (m) => log(`warning: ${m}`) });
}

function fmtEval(r: { loss: number; ppl: number } | undefined): string {
  return r ? `${r.loss.toFixed(4)} (ppl ${r.ppl.toFixed(2)})` : 'n/a';
}

/** Run `sparsetune train`; resolves to 130 when Ctrl-C ended the run early (its state is saved). */
export async function run(argv: string[]): Promise<number | void> {
  if (wantsHelp(argv)) {
    const i = argv.findIndex((a) => a === '--method' || a.startsWith('--method='));
    const name = i < 0 ? undefined : argv[i].includes('=') ? argv[i].slice('--method='.length) : argv[i + 1];
    if (name && !name.startsWith('-')) {
      checkMethodName('train', name);
      await printMethodHelp(name);
    } else process.stdout.write(formatHelp(spec));
    return;
  }
  const f = parseCommand(spec, argv);
  const method = f.required('method');
  checkMethodName('train', method);
  const format = f.choice('format', ['sparsetune', 'peft'] as const, 'sparsetune')!;
  if (format === 'peft' && !PEFT_METHODS.includes(method)) {
    throw new UsageError('train', `--format peft writes a PEFT LoRA directory, which only low-rank methods produce (${PEFT_METHODS.join(', ')}); ${method} adapters are saved as sparsetune adapters (drop --format)`);
  }
  const data = f.required('data');
  const out = f.required('out');
  const cfgPath = f.str('config');
  const rawConfig = cfgPath ? await readConfigFile(cfgPath) : {};
  const holdout = f.num('holdout', { min: 0, max: 0.9 }, 0.1)!;
  const seqLenFlag = f.int('seq-len', { min: 2 });

  if (isZerothOrder(method)) {
    if (f.has('phase-steps')) throw new UsageError('train', `--phase-steps applies to multi-phase methods (lt-sft); ${method} has one phase: use --steps`);
    const runZo = await loadOptional<(o: ZerothOrderTrainOptions) => Promise<unknown>>(optionalModules.zerothOrder, 'zeroth-order/cli.js', 'runZerothOrderTrain', `method ${method}`);
    const ret = await runZo({
      method: method as 'mezo' | 'sparse-mezo',
      model: modelRef(f.str('model')),
      data,
      out,
      eval: f.str('eval'),
      steps: f.int('steps', { min: 1 }),
      lr: f.num('lr', { gt: 0 }),
      batchSize: f.int('batch-size', { min: 1 }),
      seqLen: seqLenFlag,
      seed: f.int('seed', { min: 0 }),
      evalEvery: f.int('eval-every', { min: 0 }),
      holdout: f.has('holdout') ? holdout : undefined,
      config: rawConfig,
      configPath: cfgPath,
      resume: f.bool('resume'),
      quiet: f.bool('quiet'),
      argv,
    });
    return typeof ret === 'number' ? ret : undefined;
  }

  // Config problems surface before the (slow) model load.
  const mod = await loadMethodModule(method);
  const trainer = trainerConfig(f, mod.recipe);
  const patience = f.int('patience', { min: 1 });
  if (patience !== undefined && !trainer.evalEvery) throw new UsageError('train', '--patience needs periodic evaluations: add --eval-every N');
  if (patience !== undefined && holdout === 0 && !f.str('eval')) throw new UsageError('train', '--patience needs an eval set: give --eval FILE or a --holdout > 0');
  const checkpointEvery = f.int('checkpoint-every', { min: 0 }, 100)!;
  const keep = f.int('keep-checkpoints', { min: 1 }, 2)!;
  const progressEvery = f.int('progress-every', { min: 1 });
  const evalFile = f.str('eval');
  if (f.bool('classify') && !evalFile) throw new UsageError('train', '--classify needs --eval FILE with {"prompt","completion"} rows');
  if (f.has('labels') && !f.bool('classify')) throw new UsageError('train', '--labels only applies with --classify');
  const labelsFlag = (f.str('labels') ?? '').split(',').map((x) => x.trim()).filter(Boolean);

  const withSeed = schemaHasField(mod.configSchema, 'seed') && rawConfig.seed === undefined ? { ...rawConfig, seed: trainer.seed } : rawConfig;
  const methodConfig = validateMethodConfig(method, mod.configSchema, withSeed, cfgPath ?? 'config');
  // From here on the run holds --out's lock: a second run on the same directory fails fast, naming this one.
  return withDirLock(out, 'sparsetune train', async () => {
    await prepareOutDir(out, f.bool('resume'), f.bool('overwrite'));

    const model = await loadCliModel(f.str('model'), log);
    const maxPos = model.config.maxPositionEmbeddings;
    const seqLen = seqLenFlag ?? Math.min(128, maxPos);
    if (seqLen > maxPos) throw new UsageError('train', `--seq-len ${seqLen} exceeds the model's max_position_embeddings (${maxPos}); use --seq-len ${maxPos} or less`);
    const baseFingerprint = fingerprintWeights(model.weights);

    log(`tokenizing ${data}`);
    const trainSet = await loadData(model, data, seqLen);
    const evalSet = evalFile ? await loadData(model, evalFile, seqLen) : undefined;
    const m = await mod.createMethod(model, methodConfig);
    log(`method ${method}: ${formatTrainableParameters(trainableParameters(model, m))}; ${trainSet.length} examples of <= ${seqLen} tokens in ${data}`);

    // Accuracy runs the method unfused in its eval form; one hooks object keeps one compiled graph.
    const classify = f.bool('classify') ? await readLabelledRows(evalFile!) : null;
    const labels = classify ? candidateLabels(classify, labelsFlag) : [];
    const evalHooks = classify ? m.hooks('eval') : undefined;
    const scoreAccuracy = () => accuracy(model, classify!, labels, { hooks: evalHooks, extraFeeds: methodEvalFeeds(m, model, trainer.seed) });
    const accBefore = classify && !f.bool('resume') ? await scoreAccuracy() : undefined;
    if (accBefore) log(`accuracy before: ${accBefore.correct}/${accBefore.total}`);

    const stop = new AbortController();
    const onSigint = () => {
      log('\ninterrupted: finishing this step and saving a checkpoint (press Ctrl-C again to quit now)');
      stop.abort();
    };
    process.once('SIGINT', onSigint);
    let res: RunTrainingResult;
    try {
      res = await runTraining({
        model,
        method: m,
        trainer,
        train: trainSet,
        eval: evalSet,
        holdout,
        outDir: out,
        checkpointEvery,
        keepCheckpoints: keep,
        resume: f.bool('resume'),
        earlyStopping: patience === undefined ? undefined : { patience, minDelta: f.num('min-delta', { min: 0 }, 0)! },
        progress: trainingProgress(f.bool('quiet'), progressEvery),
        baseFingerprint,
        signal: stop.signal,
      });
    } finally {
      process.removeListener('SIGINT', onSigint);
    }

    const accAfter = classify ? await scoreAccuracy() : undefined;
    const adapter = await m.export(model);
    if (!adapter.meta.base.model) adapter.meta.base.model = modelRef(f.str('model'));
    if (!adapter.meta.base.fingerprint) adapter.meta.base.fingerprint = baseFingerprint;
    const lastTrain = res.history[res.history.length - 1];
    adapter.meta.metrics = {
      ...adapter.meta.metrics,
      steps: res.steps,
      ...(res.initialEval ? { evalLossBefore: res.initialEval.loss } : {}),
      ...(res.finalEval ? { evalLossAfter: res.finalEval.loss, evalPplAfter: res.finalEval.ppl } : {}),
      ...(lastTrain ? { trainLossLast: lastTrain.loss } : {}),
      ...(res.stoppedEarly ? { stoppedEarly: res.stoppedEarly } : {}),
      ...(accAfter ? { accuracyAfter: accAfter.accuracy } : {}),
      ...(accBefore ? { accuracyBefore: accBefore.accuracy } : {}),
    };
    if (format === 'peft') await exportPeft(adapter, out, { base: model.weights });
    else await saveAdapter(out, adapter);

    const lines: string[] = [];
    if (res.resumedFrom !== undefined) lines.push(`resumed from step ${res.resumedFrom}`);
    if (res.evalSet?.length) {
      lines.push(`eval loss before: ${fmtEval(res.initialEval)}`);
      lines.push(`eval loss after:  ${fmtEval(res.finalEval)}`);
    } else if (res.history.length) {
      lines.push(`train loss first step: ${res.history[0].loss.toFixed(4)}`);
      lines.push(`train loss last step:  ${lastTrain.loss.toFixed(4)}`);
    }
    if (accBefore) lines.push(`accuracy before:  ${(100 * accBefore.accuracy).toFixed(1)}% (${accBefore.correct}/${accBefore.total})`);
    if (accAfter) lines.push(`accuracy after:   ${(100 * accAfter.accuracy).toFixed(1)}% (${accAfter.correct}/${accAfter.total})`);
    if (res.stoppedEarly) lines.push(`stopped after ${res.steps} steps: ${res.stoppedEarly}${res.stoppedEarly === 'interrupted' ? ' (continue with --resume)' : ''}`);
    const [manifest, tensors] = format === 'peft' ? [PEFT_CONFIG, PEFT_WEIGHTS] : [ADAPTER_JSON, ADAPTER_SAFETENSORS];
    lines.push(`saved ${path.join(out, manifest)} and ${tensors} (${adapter.meta.method}, ${format === 'peft' ? 'PEFT LoRA' : adapter.meta.kind}); metrics in ${path.join(out, METRICS_FILE)}`);
    process.stdout.write(`${lines.join('\n')}\n`);
    return res.stoppedEarly === 'interrupted' ? 130 : 0;
  });
}
