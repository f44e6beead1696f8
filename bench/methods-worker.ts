/**
 * One (model, method) training-step measurement, in its own process so that the peak RSS
 * it reports (process.resourceUsage().maxRSS) belongs to that method alone. Spawned by
 * bench/methods.ts; prints ONE JSON line on stdout.
 *
 *   SPARSETUNE_THREADS=2 node --import tsx bench/methods-worker.ts --model llama30m --method lora [--steps 5] [--warmup 2]
 *
 * The data is a synthetic stream of random token ids (step time does not depend on token
 * values). Every method goes through the registry and the real Trainer, so a step is what
 * `sparsetune train` runs: feeds, forward + backward in onnxruntime, the method's gradient
 * hooks, AdamW, the method's afterStep. Clipping is off (clipNorm 0) to match the PyTorch
 * step in scripts/torch_train_step.py (forward, backward, AdamW).
 */
import { z } from 'zod';
import { collate, type TokenizedExample } from '../src/io/datasets.js';
import { bundledModelPath } from '../src/io/model-dir.js';
import { CausalLM } from '../src/models/causal-lm.js';
import { LLAMA_135M, LLAMA_30M, LLAMA_38M, QWEN_05B, randomModel } from '../src/models/random.js';
import { methodModule } from '../src/train/registry.js';
import { Trainer, type StepLog } from '../src/train/trainer.js';
import { xorshift32Uint32 } from '../src/util/random.js';
import { peakRssMb } from './util.js';

/** The two benchmark models and their batch shapes (from the issue). */
const BENCH_MODELS = {
  stories260K: { batch: 16, seq: 64 },
  llama30m: { batch: 8, seq: 128 },
  llama38m: { batch: 4, seq: 256 },
  llama135m: { batch: 4, seq: 256 },
  qwen05b: { batch: 2, seq: 256 },
} as const;
const RANDOM_CONFIGS: Record<string, Record<string, unknown>> = { llama30m: LLAMA_30M, llama38m: LLAMA_38M, llama135m: LLAMA_135M, qwen05b: QWEN_05B };
type BenchModel = keyof typeof BENCH_MODELS;

/** Method configs: defaults, except where a default needs data the benchmark does not have. */
const BENCH_METHOD_CONFIGS: Record<string, Record<string, unknown>> = {
  full: {},
  lora: {}, // PEFT defaults (r 8, q_proj + v_proj), as scripts/torch_train_step.py --method lora
  'gs-lora': {},
  mosa: {},
  s2ft: {}, // random selection: needs no calibration data
  pat: {},
  maskllm: { prior: 'magnitude' },
  ramt: {},
  'lt-sft': {},
};

const argsSchema = z.object({
  model: z.enum(Object.keys(BENCH_MODELS) as [BenchModel, ...BenchModel[]]),
  method: z.string().min(1),
  steps: z.coerce.number().int().positive().default(5),
  warmup: z.coerce.number().int().nonnegative().default(2),
  seed: z.coerce.number().int().default(0),
  batch: z.coerce.number().int().positive().optional(),
  /** Comma-separated target modules for adapter methods (e.g. all linears for LoRA). */
  targets: z.string().optional(),
  seq: z.coerce.number().int().positive().optional(),
});

interface WorkerResult {
  method: string;
  model: BenchModel;
  batch: number;
  seq: number;
  trainable: number;
  total_params: number;
  step_ms: number;
  step_ms_min: number;
  tokens_per_s: number;
  peak_rss_mb: number;
  /** maxRSS after loading the model and building the data, before the method exists. */
  model_rss_mb: number;
  setup_ms: number;
  loss_first: number;
  loss_last: number;
  note?: string;
  /** LT-SFT: median step time of phase 1 (full fine-tuning); step_ms is phase 2 (sparse). */
  phase1_step_ms?: number;
}

function parseArgs(argv: string[]): z.infer<typeof argsSchema> {
  const raw: Record<string, string> = {};
  for (let i = 0; i < argv.length; i += 2) {
    const k = argv[i];
    if (!k.startsWith('--') || argv[i + 1] === undefined) throw new Error(`methods-worker: expected --flag value pairs, got '${k}'`);
    raw[k.slice(2)] = argv[i + 1];
  }
  const parsed = argsSchema.safeParse(raw);
  if (!parsed.success) throw new Error(`methods-worker: ${parsed.error.issues.map((i) => `--${i.path.join('.')}: ${i.message}`).join('; ')}`);
  return parsed.data;
}

/** Random-token examples (labels = inputs: every position counts in the loss). */
function syntheticExamples(n: number, seq: number, vocab: number, seed: number): TokenizedExample[] {
  const next = xorshift32Uint32(seed ^ 0x5bd1e995);
  return Array.from({ length: n }, () => {
    const ids = Array.from({ length: seq }, () => next() % vocab);
    return { inputIds: ids, labels: [...ids] };
  });
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)];
}

async function main(): Promise<void> {
  const args = parseArgs(process.argv.slice(2));
  const batch = args.batch ?? BENCH_MODELS[args.model].batch;
  const seq = args.seq ?? BENCH_MODELS[args.model].seq;
  const t0 = performance.now();
  const model = args.model === 'stories260K' ? await CausalLM.load(bundledModelPath()) : randomModel(RANDOM_CONFIGS[args.model], { seed: args.seed });
  const data = syntheticExamples(batch * 4, seq, model.vocabSize, args.seed);
  const modelRss = peakRssMb();

  if (args.method === 'forward') return forwardOnly(model, data, batch, seq, args, modelRss);
  const mod = await methodModule(args.method);
  const overrides = args.targets ? { targetModules: args.targets.split(',') } : {};
  const config = mod.configSchema.parse({ ...(BENCH_METHOD_CONFIGS[args.method] ?? {}), ...overrides });
  const method = await mod.createMethod(model, config);
  const trainable = method.params().reduce((n, p) => n + p.data.length, 0);
  const perPhase = args.warmup + args.steps;
  const logs: StepLog[] = [];
  const trainer = new Trainer(
    model,
    method,
    { steps: perPhase, batchSize: batch, clipNorm: 0, optimizer: { lr: 1e-4, weightDecay: 0 }, seed: args.seed },
    { onStep: (log) => void logs.push(log) },
  );
  const setupMs = performance.now() - t0;
  await trainer.train(data);

  // The trainer times each step (batch, feeds, run, gradient hooks, optimizer, afterStep).
  const stepMs = (l: StepLog) => (1000 * l.tokens) / l.tokensPerSecond;
  const timed = (phase: number) => logs.filter((l) => (l.phase ?? 0) === phase).slice(args.warmup).map(stepMs);
  const lastPhase = Math.max(...logs.map((l) => l.phase ?? 0));
  const times = timed(lastPhase);
  const ms = median(times);
  const result: WorkerResult = {
    method: args.method,
    model: args.model,
    batch,
    seq,
    trainable,
    total_params: [...model.weights.values()].reduce((n, w) => n + w.data.length, 0),
    step_ms: ms,
    step_ms_min: Math.min(...times),
    tokens_per_s: (batch * seq * 1000) / ms,
    peak_rss_mb: peakRssMb(),
    model_rss_mb: modelRss,
    setup_ms: setupMs,
    loss_first: logs[0].loss,
    loss_last: logs[logs.length - 1].loss,
  };
  if (lastPhase > 0) {
    result.phase1_step_ms = median(timed(0));
    const budget = (method as { budget?: number }).budget;
    result.note = `step_ms: phase 2 (sparse FT${budget ? `, ${budget} tunable entries` : ''}); phase 1 (full FT) ${result.phase1_step_ms.toFixed(0)} ms`;
  }
  process.stdout.write(`${JSON.stringify(result)}\n`);
}

/** `--method forward`: the loss forward alone (what `sparsetune eval` runs per batch). */
async function forwardOnly(model: CausalLM, data: TokenizedExample[], batch: number, seq: number, args: z.infer<typeof argsSchema>, modelRss: number): Promise<void> {
  const b = collate(data.slice(0, batch), 0);
  const times: number[] = [];
  for (let i = 0; i < args.warmup + args.steps; i++) {
    const t0 = performance.now();
    await model.loss(b);
    if (i >= args.warmup) times.push(performance.now() - t0);
  }
  const ms = median(times);
  const total = [...model.weights.values()].reduce((n, w) => n + w.data.length, 0);
  const result = { method: 'forward', model: args.model, batch, seq, trainable: 0, total_params: total, step_ms: ms, step_ms_min: Math.min(...times), tokens_per_s: (batch * seq * 1000) / ms, peak_rss_mb: peakRssMb(), model_rss_mb: modelRss };
  process.stdout.write(`${JSON.stringify(result)}\n`);
}

await main();
