/**
 * Zeroth-order benchmark (specs/sparse-mezo.md):
 *  (a) peak RSS of Sparse-MeZO training vs plain inference (the same loss forward, model and
 *      batch), each in its own child process so maxRSS means something (goal <= 1.1x);
 *  (b) time of one Sparse-MeZO step vs two forward passes (goal <= 1.15x);
 *  (c) held-out loss per wall-clock second vs first-order LoRA on the same data;
 *  (d) Sparse-MeZO vs MeZO at the same number of forward passes, several seeds;
 *  (e) the perturbation passes alone (no forwards) per generator, ns per trainable element.
 * Models: stories260K (real) and a random ~30M Llama written to a temp dir (ZO training
 * re-reads original weights from disk, so the model must live in one).
 * Run: node --import tsx bench/zeroth-order.ts   (SPARSETUNE_THREADS, default 2)
 */
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { LoraMethod } from '../src/adapters/lora.js';
import { Runtime } from '../src/engine/runtime.js';
import { collate, loadDataset, splitHoldout, type Batch, type TokenizedExample } from '../src/io/datasets.js';
import { bundledModelPath, writeModelDir } from '../src/io/model-dir.js';
import { CausalLM } from '../src/models/causal-lm.js';
import { LLAMA_30M, randomModel } from '../src/models/random.js';
import { Trainer } from '../src/train/trainer.js';
import { restoreBase } from '../src/zeroth-order/base-weights.js';
import { PerturbationKernel } from '../src/zeroth-order/perturb.js';
import { NOISE_GENERATORS, type TrainableTensor } from '../src/zeroth-order/rng.js';
import { sparseMezoThreshold } from '../src/zeroth-order/thresholds.js';
import { ZerothOrderTrainer, type ZoTrainOptions } from '../src/zeroth-order/train.js';
import { table, timeIt, writeResults } from './util.js';

const threads = Number(process.env.SPARSETUNE_THREADS ?? 2);
const runtime = new Runtime({ threads });
const PUD_EN = join(import.meta.dirname, '..', '..', 'shared', 'data', 'ud-pud', 'pud_en.txt');
const BATCH = 8;
const SEQ = 64;

interface ChildSpec {
  mode: 'infer' | 'train';
  modelDir: string;
  data: 'pud' | 'random';
  forwards: number;
  steps: number;
}

interface ChildResult {
  peakRssMb: number;
  forwardMs: number;
  stepMs?: number;
  sideTableBytes?: number;
  trainable?: number;
}

async function benchBatch(model: CausalLM, data: 'pud' | 'random'): Promise<Batch> {
  if (data === 'pud') return collate((await loadDataset(PUD_EN, model.tokenizer!, { seqLen: SEQ })).slice(0, BATCH), 0);
  let s = 12345;
  const ids = () => {
    s = (Math.imul(s, 1103515245) + 12345) >>> 0;
    return 3 + (s % (model.vocabSize - 3));
  };
  return collate(Array.from({ length: BATCH }, () => {
    const row = Array.from({ length: SEQ }, ids);
    return { inputIds: row, labels: row };
  }), 0);
}

/** Child process: load, run forwards (and ZO steps), report peak RSS and timings as JSON. */
async function child(spec: ChildSpec): Promise<ChildResult> {
  const model = await CausalLM.load(spec.modelDir, { runtime });
  const batch = await benchBatch(model, spec.data);
  const forwardMs = await timeIt(() => model.loss(batch), spec.forwards, 1);
  if (spec.mode === 'infer') return { peakRssMb: process.resourceUsage().maxRSS / 1024, forwardMs };
  const trainer = await ZerothOrderTrainer.create(model, { method: 'sparse-mezo', lr: 1e-6, eps: 1e-3, steps: spec.steps + 1, batchSize: BATCH });
  const examples: TokenizedExample[] = [];
  for (let b = 0; b < BATCH; b++) {
    const row = Array.from(batch.inputIds.subarray(b * batch.seqLen, (b + 1) * batch.seqLen), Number);
    examples.push({ inputIds: row, labels: row });
  }
  // One batch of exactly these rows per step: the same work as the forwards timed above.
  await trainer.train(examples);
  // Step time as the trainer logs it (perturb + 2 forwards + restore/update); the first step is warm-up.
  const times = trainer.history.slice(1).map((log) => (log.tokens / log.tokensPerSecond) * 1000).sort((a, b) => a - b);
  return {
    peakRssMb: process.resourceUsage().maxRSS / 1024,
    forwardMs,
    stepMs: times[Math.floor(times.length / 2)],
    sideTableBytes: trainer.optimizer.sideTableBytes,
    trainable: trainer.trainableCount,
  };
}

function runChild(spec: ChildSpec): ChildResult {
  const self = fileURLToPath(import.meta.url);
  const r = spawnSync(process.execPath, ['--import', 'tsx', self, '--child', JSON.stringify(spec)], { encoding: 'utf8', maxBuffer: 1 << 24 });
  if (r.status !== 0) throw new Error(`child ${spec.mode} ${spec.modelDir} failed: ${r.stderr}`);
  const lines = r.stdout.trim().split('\n');
  return JSON.parse(lines[lines.length - 1]) as ChildResult;
}

// ---------------------------------------------------------------------------------------
// (a) + (b): memory and step time, in child processes.

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

/** Peak RSS varies by ~10 MB between identical processes, so each side runs `reps` times (median). */
async function memoryAndStepTime(models: { name: string; dir: string; data: 'pud' | 'random'; forwards: number; steps: number; reps: number }[]) {
  const rows = [];
  for (const m of models) {
    const infer: ChildResult[] = [];
    const train: ChildResult[] = [];
    for (let r = 0; r < m.reps; r++) {
      infer.push(runChild({ mode: 'infer', modelDir: m.dir, data: m.data, forwards: m.forwards, steps: 0 }));
      train.push(runChild({ mode: 'train', modelDir: m.dir, data: m.data, forwards: m.forwards, steps: m.steps }));
    }
    const inferRss = median(infer.map((c) => c.peakRssMb));
    const trainRss = median(train.map((c) => c.peakRssMb));
    const forwardMs = median(train.map((c) => c.forwardMs));
    const stepMs = median(train.map((c) => c.stepMs!));
    rows.push({
      model: m.name,
      reps: m.reps,
      trainable: train[0].trainable!,
      inferPeakRssMb: inferRss,
      trainPeakRssMb: trainRss,
      rssRatio: trainRss / inferRss,
      inferPeakRssRangeMb: [Math.min(...infer.map((c) => c.peakRssMb)), Math.max(...infer.map((c) => c.peakRssMb))],
      trainPeakRssRangeMb: [Math.min(...train.map((c) => c.peakRssMb)), Math.max(...train.map((c) => c.peakRssMb))],
      sideTableKb: train[0].sideTableBytes! / 1024,
      forwardMs,
      stepMs,
      stepOverTwoForwards: stepMs / (2 * forwardMs),
    });
  }
  return rows;
}

// ---------------------------------------------------------------------------------------
// (c) + (d): training quality on stories260K -> UD PUD English.

async function zoRun(model: CausalLM, opts: ZoTrainOptions, train: TokenizedExample[], held: TokenizedExample[], budgetS?: number) {
  const curve: { seconds: number; loss: number }[] = [];
  let trainSeconds = 0;
  const trainer = await ZerothOrderTrainer.create(model, { batchSize: BATCH, ...opts }, {
    onStep: (log) => {
      trainSeconds += log.tokens / log.tokensPerSecond;
      if (budgetS !== undefined && trainSeconds >= budgetS) trainer.requestStop('time budget');
    },
    onEval: (_step, r) => {
      curve.push({ seconds: trainSeconds, loss: r.loss });
    },
  });
  const res = await trainer.train(train, held);
  await restoreBase(model);
  return { initial: res.initialEval!.loss, final: res.finalEval!.loss, steps: res.steps, trainSeconds, curve };
}

async function loraRun(model: CausalLM, train: TokenizedExample[], held: TokenizedExample[], budgetS: number, evalEvery: number) {
  const lora = new LoraMethod(model, { r: 8, alpha: 16, targetModules: ['q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj', 'down_proj'] });
  const curve: { seconds: number; loss: number }[] = [];
  let trainSeconds = 0;
  const trainer: Trainer = new Trainer(model, lora, { steps: 100000, batchSize: BATCH, optimizer: { lr: 3e-3 }, schedule: { type: 'constant' }, evalEvery }, {
    onStep: (log) => {
      trainSeconds += log.tokens / log.tokensPerSecond;
      if (trainSeconds >= budgetS) trainer.requestStop('time budget');
    },
    onEval: (_step, r) => {
      curve.push({ seconds: trainSeconds, loss: r.loss });
    },
  });
  const res = await trainer.train(train, held);
  return { initial: res.initialEval!.loss, final: res.finalEval!.loss, steps: res.steps, trainSeconds, curve };
}

// ---------------------------------------------------------------------------------------
// (e) The passes of one step (plus, minus, restore + update) without forwards.

/** Fastest of `reps` steps' passes over `tensors` (a copy), in ns per element, per generator and method. */
function kernelTimes(tensors: TrainableTensor[], reps: number) {
  const total = tensors.reduce((a, t) => a + t.data.length, 0);
  const rows = [];
  for (const generator of NOISE_GENERATORS) {
    for (const sparsity of [0.8, undefined]) {
      const copy = tensors.map((t) => ({ name: t.name, data: t.data.slice() }));
      const thresholds = sparsity === undefined ? null : Float64Array.from(copy, (t) => sparseMezoThreshold(t.data, sparsity));
      const kernel = new PerturbationKernel({ tensors: copy, thresholds, eps: 1e-3, chunk: 16384, exactRestore: false, generator });
      let best = Infinity;
      for (let r = 0; r <= reps; r++) {
        const t0 = performance.now();
        kernel.plus(r);
        kernel.minus(r);
        kernel.restoreAndUpdate([r], [0.01], 1e-6, 0);
        if (r > 0) best = Math.min(best, performance.now() - t0); // r = 0 warms up
      }
      rows.push({ generator, method: sparsity === undefined ? 'mezo' : 'sparse-mezo', ms: best, nsPerElement: (best * 1e6) / total });
    }
  }
  return { elements: total, rows };
}

const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / xs.length;
const std = (xs: number[]) => Math.sqrt(mean(xs.map((x) => (x - mean(xs)) ** 2)));

async function main() {
  const t0 = performance.now();
  const tmp = mkdtempSync(join(tmpdir(), 'zo-bench-'));
  try {
    // The random ~30M Llama lives in a temp dir like any HF model.
    const big = randomModel(LLAMA_30M, { runtime });
    await writeModelDir(join(tmp, 'llama30m'), { configJson: LLAMA_30M, weights: big.weights });
    const memRows = await memoryAndStepTime([
      { name: 'stories260K', dir: bundledModelPath(), data: 'pud', forwards: 20, steps: 20, reps: 3 },
      { name: 'random llama ~30M', dir: join(tmp, 'llama30m'), data: 'random', forwards: 5, steps: 5, reps: 2 },
    ]);
    console.log('memory/step done', ((performance.now() - t0) / 1000).toFixed(0), 's');
    if (process.argv.includes('--memory-only')) {
      console.log(JSON.stringify(memRows, null, 2));
      return;
    }

    const model = await CausalLM.load(bundledModelPath(), { runtime });
    const all = await loadDataset(PUD_EN, model.tokenizer!, { seqLen: SEQ });
    const { train, eval: held } = splitHoldout(all, 0.1, 1);
    const STEPS = 200;

    // (d) Tune lr on seed 0, then compare on seeds 1..3 at that lr (same steps = same forwards).
    const grids = { mezo: [1e-4, 2e-4, 4e-4], 'sparse-mezo': [5e-4, 1e-3, 2e-3] } as const;
    const tuning: { method: string; lr: number; final: number }[] = [];
    const best: Record<string, number> = {};
    for (const method of ['mezo', 'sparse-mezo'] as const) {
      let bestLoss = Infinity;
      for (const lr of grids[method]) {
        const r = await zoRun(model, { method, lr, eps: 1e-3, steps: STEPS, seed: 0 }, train, held);
        tuning.push({ method, lr, final: r.final });
        if (r.final < bestLoss) {
          bestLoss = r.final;
          best[method] = lr;
        }
      }
    }
    const seeds = [1, 2, 3];
    const compare: { method: string; lr: number; finals: number[]; initial: number }[] = [];
    for (const method of ['mezo', 'sparse-mezo'] as const) {
      const finals: number[] = [];
      let initial = 0;
      for (const seed of seeds) {
        const r = await zoRun(model, { method, lr: best[method], eps: 1e-3, steps: STEPS, seed }, train, held);
        finals.push(r.final);
        initial = r.initial;
      }
      compare.push({ method, lr: best[method], finals, initial });
    }
    console.log('sparse vs mezo done', ((performance.now() - t0) / 1000).toFixed(0), 's');

    // (c) Same wall-clock training budget: Sparse-MeZO (tuned lr) vs first-order LoRA.
    const BUDGET_S = 20;
    const zo = await zoRun(model, { method: 'sparse-mezo', lr: best['sparse-mezo'], eps: 1e-3, steps: 100000, seed: 1, evalEvery: 100 }, train, held, BUDGET_S);
    const lora = await loraRun(model, train, held, BUDGET_S, 20);
    const perSecond = [
      { method: `sparse-mezo (full block linears, lr ${best['sparse-mezo']})`, ...zo },
      { method: 'lora r=8 all linears, AdamW lr 3e-3 (first order)', ...lora },
    ];

    // (e) Last: its tensor copies raise this process's RSS, and a child spawned after that would
    // report it (Linux keeps the peak RSS across fork + exec).
    const kernelTensors = [...big.weights.entries()]
      .filter(([name]) => /\.(q|k|v|o|gate|up|down)_proj\.weight$/.test(name))
      .map(([name, t]) => ({ name, data: t.data as Float32Array }));
    const kernel = kernelTimes(kernelTensors, 4);
    const totalS = (performance.now() - t0) / 1000;

    const md = [
      `## Zeroth-order: MeZO / Sparse-MeZO (threads=${threads})`,
      '',
      '(a) Peak RSS, each in its own process: plain inference = load + the loss forward on one batch',
      `(${BATCH}x${SEQ} tokens); Sparse-MeZO = the same, then training steps on that batch (goal <= 1.1x).`,
      '(b) Median Sparse-MeZO step (2 forwards + perturb/restore/update passes) over two forwards (goal <= 1.15x).',
      '',
      table(
        ['model', 'trainable', 'processes', 'inference peak RSS MB (range)', 'Sparse-MeZO peak RSS MB (range)', 'ratio of medians', 'side table KB', 'forward ms', 'step ms', 'step / 2 forwards'],
        memRows.map((r) => [
          r.model,
          r.trainable,
          `${r.reps} + ${r.reps}`,
          `${r.inferPeakRssMb.toFixed(1)} (${r.inferPeakRssRangeMb.map((x) => x.toFixed(0)).join('-')})`,
          `${r.trainPeakRssMb.toFixed(1)} (${r.trainPeakRssRangeMb.map((x) => x.toFixed(0)).join('-')})`,
          r.rssRatio,
          r.sideTableKb,
          r.forwardMs,
          r.stepMs,
          r.stepOverTwoForwards,
        ]),
      ),
      '',
      `(d) stories260K -> UD PUD English, ${STEPS} steps (${2 * STEPS} forwards) of batch ${BATCH}x${SEQ}, eps 1e-3, held-out loss (${held.length} examples).`,
      `lr tuned on seed 0 over ${JSON.stringify(grids)}; compared on seeds ${seeds.join(', ')}.`,
      '',
      table(['method', 'lr (seed 0)', 'held-out loss after'], tuning.map((t) => [t.method, t.lr, t.final])),
      '',
      table(
        ['method', 'lr', 'loss before', 'loss after (mean)', 'std', 'min', 'max'],
        compare.map((c) => [c.method, c.lr, c.initial, mean(c.finals), std(c.finals), Math.min(...c.finals), Math.max(...c.finals)]),
      ),
      '',
      `(c) Same training wall-clock budget (${BUDGET_S} s, evaluation time excluded), same data and batch size.`,
      '',
      table(
        ['method', 'steps', 'train s', 'loss before', 'loss after', 'loss drop / s'],
        perSecond.map((p) => [p.method, p.steps, p.trainSeconds, p.initial, p.final, (p.initial - p.final) / p.trainSeconds]),
      ),
      '',
      `(e) The passes of one step alone (plus, minus, restore + update; no forwards) over the ${kernel.elements} block-linear`,
      'weights of the random ~30M Llama, fastest of 4 steps, chunk 16384, eps 1e-3. Generators: hash = keyed integer hash +',
      'quantile table (default), philox = Philox4x32-10 + Box-Muller (format-1 trajectories).',
      '',
      table(['generator', 'method', 'ms per step', 'ns per element per step'], kernel.rows.map((r) => [r.generator, r.method, r.ms, r.nsPerElement])),
      '',
      `Total bench time ${totalS.toFixed(0)} s.`,
    ].join('\n');
    writeResults('zeroth-order', { threads, batch: BATCH, seqLen: SEQ, memory: memRows, tuning, compare, perSecond, kernel, totalSeconds: totalS }, md);
  } finally {
    rmSync(tmp, { recursive: true, force: true });
  }
}

if (process.argv[2] === '--child') {
  const result = await child(JSON.parse(process.argv[3]) as ChildSpec);
  process.stdout.write(`${JSON.stringify(result)}\n`);
  process.exit(0);
} else {
  await main();
}
