/**
 * First-order methods benchmark (`npm run bench -- methods`):
 *
 * 1. Training step time, tokens/s and peak RSS of every method on stories260K (batch 16 x
 *    64) and a random ~30M Llama (batch 8 x 128), each (model, method) in its own process
 *    (bench/methods-worker.ts) so peak RSS is per method; ratios against full fine-tuning
 *    and LoRA (the S2FT spec's comparison).
 * 2. The same step in PyTorch (scripts/torch_train_step.py, Debian's torch + OpenBLAS) for
 *    full and LoRA on the same shapes; skipped with a message when torch is absent.
 * 3. PAT's exported, pruned model against its base per token (prefill and decode tokens/s):
 *    stories260K after a short PAT run, and the ~30M model pruned with a fixed channel
 *    mask (speed depends only on the pruned shapes).
 *
 * Threads: SPARSETUNE_THREADS (default 2) for onnxruntime and torch alike.
 */
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { cpus, loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { z } from 'zod';
import { PatMethod } from '../src/adapters/pat.js';
import { Runtime } from '../src/engine/runtime.js';
import { collate, loadDataset, splitHoldout, type TokenizedExample } from '../src/io/datasets.js';
import { bundledModelPath } from '../src/io/model-dir.js';
import { CausalLM } from '../src/models/causal-lm.js';
import { LLAMA_30M, randomModel } from '../src/models/random.js';
import { Trainer } from '../src/train/trainer.js';
import { table, writeResults } from './util.js';
import { comparePerToken, fixedMaskPat, prunedModel, type PairedPerToken } from './per-token.js';
import { compare, compareTable, ISSUE_WORKS, SCALE_CASES, torchAvailable, type CompareRow } from './vs-torch.js';

const root = join(import.meta.dirname, '..');
const threads = Number(process.env.SPARSETUNE_THREADS ?? 2);
const PYTHON = '/usr/bin/python3';
const METHODS = ['full', 'lora', 'gs-lora', 'mosa', 's2ft', 'pat', 'maskllm', 'ramt', 'lt-sft'];

/** Shapes and step counts per model (few timed steps on the 30M model keep the run under 10 minutes). */
const MODELS = {
  stories260K: { label: 'stories260K', batch: 16, seq: 64, warmup: 2, steps: 8 },
  llama30m: { label: 'llama ~30M (random)', batch: 8, seq: 128, warmup: 1, steps: 4 },
} as const;
type ModelKey = keyof typeof MODELS;

interface MethodRow {
  method: string;
  model: ModelKey;
  trainable?: number;
  step_ms?: number;
  step_ms_min?: number;
  tokens_per_s?: number;
  peak_rss_mb?: number;
  model_rss_mb?: number;
  note?: string;
  skipped?: string;
}

interface TorchRow {
  method: string;
  model: ModelKey;
  step_ms?: number;
  tokens_per_s?: number;
  peak_rss_mb?: number;
  baseline_rss_mb?: number;
  skipped?: string;
}

const started = performance.now();
const elapsed = () => ((performance.now() - started) / 1000).toFixed(0);
const env = { ...process.env, SPARSETUNE_THREADS: String(threads) };
/**
 * OpenMP threads that spin while waiting collapse when the box is oversubscribed (measured
 * here under load ~12: a stories260K torch step took 4.3 s spinning, 0.26 s passive), so
 * torch waits passively unless the caller chose otherwise.
 */
const torchEnv = { ...process.env, OMP_WAIT_POLICY: process.env.OMP_WAIT_POLICY ?? 'PASSIVE' };

/** The last line of a child's output that parses as a JSON object, or null. */
function lastJson(stdout: string): Record<string, unknown> | null {
  const lines = stdout.trim().split('\n').reverse();
  for (const line of lines) {
    try {
      const v = JSON.parse(line);
      if (v && typeof v === 'object') return v as Record<string, unknown>;
    } catch {
      // not JSON: a log line
    }
  }
  return null;
}

/** A one-line reason from a failed child's stderr (the error line, not the stack). */
function failureReason(stderr: string, status: number | null, signal: string | null): string {
  const lines = stderr.split('\n').map((l) => l.trim()).filter(Boolean);
  // Node prints the throwing source line before `SomeError: message`; Python ends with it.
  const err = lines.find((l) => /^[A-Za-z.]*(Error|Exception)\b.*:/.test(l)) ?? lines[lines.length - 1] ?? '';
  return `${signal ? `killed (${signal})` : `exit ${status}`}: ${err.slice(0, 200)}`;
}

function runWorker(model: ModelKey, method: string): MethodRow {
  const { warmup, steps } = MODELS[model];
  const args = ['--import', 'tsx', join(root, 'bench', 'methods-worker.ts'), '--model', model, '--method', method, '--steps', String(steps), '--warmup', String(warmup)];
  const r = spawnSync(process.execPath, args, { cwd: root, env, encoding: 'utf8', timeout: 240_000, maxBuffer: 16 << 20 });
  const json = r.status === 0 ? lastJson(r.stdout) : null;
  if (!json) return { method, model, skipped: failureReason(r.stderr ?? '', r.status, r.signal) };
  return json as unknown as MethodRow;
}

function runTorch(model: ModelKey, method: 'full' | 'lora', tmp: string): TorchRow {
  const { batch, seq, warmup, steps } = MODELS[model];
  let source: string[];
  if (model === 'stories260K') source = ['--model', bundledModelPath()];
  else {
    const cfg = join(tmp, 'llama30m.json');
    writeFileSync(cfg, JSON.stringify(LLAMA_30M));
    source = ['--config', cfg];
  }
  const args = [join(root, 'scripts', 'torch_train_step.py'), ...source, '--method', method, '--batch-size', String(batch), '--seq-len', String(seq)];
  args.push('--steps', String(steps), '--warmup', String(warmup), '--lr', '1e-4', '--threads', String(threads));
  const r = spawnSync(PYTHON, args, { cwd: root, env: torchEnv, encoding: 'utf8', timeout: 240_000 });
  const json = r.status === 0 ? lastJson(r.stdout) : null;
  if (!json) return { method, model, skipped: failureReason(r.stderr ?? '', r.status, r.signal) };
  return { method, model, step_ms: Number(json.step_ms), tokens_per_s: Number(json.tokens_per_s), peak_rss_mb: Number(json.peak_rss_mb), baseline_rss_mb: Number(json.baseline_rss_mb) };
}

async function heldOutLoss(model: CausalLM, held: TokenizedExample[]): Promise<number> {
  let sum = 0;
  let tokens = 0;
  for (let i = 0; i < held.length; i += 8) {
    const r = await model.loss(collate(held.slice(i, i + 8), model.tokenizer?.padId ?? 0));
    sum += r.loss * r.tokens;
    tokens += r.tokens;
  }
  return sum / tokens;
}

/** PAT's pruned export vs its base, per token. */
async function patExport(): Promise<({ model: string; how: string } & PairedPerToken)[]> {
  const runtime = new Runtime({ threads });
  const out = [];
  // stories260K: a short PAT run on the bundled Spanish text (the mask lands on d_keep = 48 of 64).
  const stories = await CausalLM.load(bundledModelPath(), { runtime });
  const all = await loadDataset(join(root, 'data', 'demo', 'spanish.txt'), stories.tokenizer!, { seqLen: 64 });
  const { train, eval: held } = splitHoldout(all, 0.1, 1);
  const heldSmall = held.slice(0, 32);
  const baseLoss = await heldOutLoss(stories, heldSmall);
  const pat = new PatMethod(stories, { keepRatio: 0.75, r: 4, alpha: 8, dropout: 0, targetModules: ['q_proj', 'v_proj', 'o_proj', 'down_proj'] });
  await new Trainer(stories, pat, { steps: 40, batchSize: 8, optimizer: { lr: 3e-3 } }).train(train);
  const pStories = prunedModel(stories, pat, runtime);
  const small = await comparePerToken(stories, pStories, 128, 64, 7);
  small.base.evalLoss = baseLoss;
  small.pruned.evalLoss = await heldOutLoss(pStories, heldSmall);
  out.push({ model: MODELS.stories260K.label, how: `PAT 40 steps (Spanish text), ${pat.keptChannels().length}/${pat.hidden} channels kept`, ...small });

  // ~30M: PAT's export with a fixed 75% channel mask (no training: per-token cost depends only on shapes).
  const big = randomModel(LLAMA_30M, { runtime });
  const patBig = fixedMaskPat(big);
  const pBig = prunedModel(big, patBig, runtime);
  out.push({ model: MODELS.llama30m.label, how: `PAT export, fixed mask ${patBig.dKeep}/${patBig.hidden} channels (untrained)`, ...(await comparePerToken(big, pBig, 128, 16, 5)) });
  return out;
}

// --- run -------------------------------------------------------------------------------
const pick = (flag: string) => {
  const i = process.argv.indexOf(flag);
  return i > 0 ? process.argv[i + 1]?.split(',') : undefined;
};
const methods = pick('--methods') ?? METHODS;
const modelsArg = z.array(z.enum(Object.keys(MODELS) as [ModelKey, ...ModelKey[]])).safeParse(pick('--models') ?? Object.keys(MODELS));
if (!modelsArg.success) {
  console.error(`--models: choose from ${Object.keys(MODELS).join(', ')} (comma-separated)`);
  process.exit(2);
}
const models = modelsArg.data;
const load0 = loadavg()[0];

// The issue's shapes first (38.7M Llama, batch 4x256), sparsetune and PyTorch alternating.
const issueTmp = mkdtempSync(join(tmpdir(), 'bench-vs-torch-'));
const issueRows: CompareRow[] = [];
const torchRounds = Number(process.env.BENCH_TORCH_ROUNDS ?? 3);
const torchSteps = Number(process.env.BENCH_TORCH_STEPS ?? 3);
try {
  if (process.env.BENCH_ISSUE !== '0') {
    issueRows.push(...(await compare({ model: 'llama38m', works: ISSUE_WORKS, batch: 4, seq: 256, threads, rounds: torchRounds, steps: torchSteps, tmp: issueTmp, needGb: 5 })));
  }
  if (process.env.BENCH_SCALE === '1') {
    for (const scale of SCALE_CASES) issueRows.push(...(await compare({ ...scale, threads, tmp: issueTmp })));
  }
} finally {
  rmSync(issueTmp, { recursive: true, force: true });
}
console.error(`[${elapsed()} s] issue shapes vs PyTorch measured`);

const rows: MethodRow[] = [];
for (const model of models) {
  for (const method of methods) {
    const r = runWorker(model, method);
    rows.push(r);
    console.error(`[${elapsed()} s] ${model} ${method}: ${r.skipped ? `skipped (${r.skipped})` : `${r.step_ms!.toFixed(0)} ms/step, ${r.peak_rss_mb!.toFixed(0)} MB`}`);
  }
}

const torchRows: TorchRow[] = [];
const noTorch = torchAvailable();
if (noTorch) console.error(`PyTorch comparison skipped: ${noTorch}`);
else {
  const tmp = mkdtempSync(join(tmpdir(), 'bench-methods-'));
  try {
    for (const model of models) {
      for (const method of ['full', 'lora'] as const) {
        if (!methods.includes(method)) continue;
        const r = runTorch(model, method, tmp);
        torchRows.push(r);
        console.error(`[${elapsed()} s] torch ${model} ${method}: ${r.skipped ? `failed (${r.skipped})` : `${r.step_ms!.toFixed(0)} ms/step`}`);
      }
    }
  } finally {
    rmSync(tmp, { recursive: true, force: true });
  }
}

const pat = await patExport();
console.error(`[${elapsed()} s] PAT export measured`);

// --- report ----------------------------------------------------------------------------
const fmt = (v: number | undefined, digits = 0) => (v === undefined || !Number.isFinite(v) ? '-' : v.toFixed(digits));
const ratio = (a: number | undefined, b: number | undefined) => (a && b ? `${(a / b).toFixed(2)}x` : '-');
const methodTable = (model: ModelKey) => {
  const mine = rows.filter((r) => r.model === model);
  const full = mine.find((r) => r.method === 'full' && !r.skipped);
  const lora = mine.find((r) => r.method === 'lora' && !r.skipped);
  const body = mine.map((r) =>
    r.skipped
      ? [r.method, '-', '-', '-', '-', '-', '-', '-', '-', '-', `skipped: ${r.skipped}`]
      : [r.method, r.trainable!.toLocaleString('en-US'), fmt(r.step_ms), fmt(r.step_ms_min), fmt(r.tokens_per_s), fmt(r.peak_rss_mb), ratio(r.step_ms, full?.step_ms), ratio(r.step_ms, lora?.step_ms), ratio(r.peak_rss_mb, full?.peak_rss_mb), ratio(r.peak_rss_mb, lora?.peak_rss_mb), r.note ?? ''],
  );
  const { label, batch, seq, warmup, steps } = MODELS[model];
  const modelRss = mine.find((r) => r.model_rss_mb)?.model_rss_mb;
  return [
    `### ${label}: batch ${batch} x seq ${seq} (median of ${steps} steps after ${warmup} warm-up; RSS after loading the model, before any method: ${fmt(modelRss)} MB)`,
    '',
    table(['method', 'trainable', 'step ms', 'best step ms', 'tokens/s', 'peak RSS MB', 'step vs full', 'step vs LoRA', 'RSS vs full', 'RSS vs LoRA', 'note'], body),
  ].join('\n');
};

const torchTable = torchRows.length
  ? table(
      ['model', 'method', 'sparsetune step ms', 'torch step ms', 'sparsetune / torch (time)', 'sparsetune peak RSS MB', 'torch peak RSS MB (incl. ~230 MB torch)'],
      torchRows.map((t) => {
        const ours = rows.find((r) => r.model === t.model && r.method === t.method && !r.skipped);
        return [MODELS[t.model].label, t.method, fmt(ours?.step_ms), t.skipped ? `failed: ${t.skipped}` : fmt(t.step_ms), ratio(ours?.step_ms, t.step_ms), fmt(ours?.peak_rss_mb), fmt(t.peak_rss_mb)];
      }),
    )
  : `PyTorch comparison skipped: ${noTorch ?? 'neither full nor lora was selected'}.`;

const patTable = table(
  ['model', 'pruned how', 'hidden base -> pruned', 'params base -> pruned', 'prefill tok/s base', 'prefill tok/s pruned', 'prefill speed-up', 'decode tok/s base', 'decode tok/s pruned', 'decode speed-up', 'held-out loss (Spanish) base -> pruned'],
  pat.map((p) => [
    p.model,
    p.how,
    `${p.base.hidden} -> ${p.pruned.hidden}`,
    `${(p.base.params / 1e6).toFixed(2)}M -> ${(p.pruned.params / 1e6).toFixed(2)}M`,
    fmt(p.base.prefillTokS),
    fmt(p.pruned.prefillTokS),
    `${p.prefillSpeedup.toFixed(2)}x`,
    fmt(p.base.decodeTokS, 1),
    fmt(p.pruned.decodeTokS, 1),
    `${p.decodeSpeedup.toFixed(2)}x`,
    p.base.evalLoss === undefined ? '-' : `${p.base.evalLoss.toFixed(3)} -> ${p.pruned.evalLoss!.toFixed(3)}`,
  ]),
);

const totalS = Number(elapsed());
const md = [
  `## Methods: training step, throughput and memory (threads=${threads})`,
  '',
  'Each (model, method) runs in its own process through the method registry and the real `Trainer` (AdamW, lr 1e-4, no clipping) on random token ids; ' +
    'step time is the trainer\'s own per-step timing (feeds, forward + backward in onnxruntime, gradient hooks, optimizer, afterStep); tokens/s = batch x seq / step time; ' +
    'peak RSS is the process\'s maxRSS (model, graph, ORT arenas, optimizer state). Method configs are the defaults (LoRA: r 8 on q_proj + v_proj, as PEFT). ' +
    'The ~30M model is `LLAMA_30M` (hidden 384, 8 layers, vocab 32000, tied embeddings) with random weights.',
  '',
  `### Issue shapes against PyTorch (38.7M Llama: hidden 384, 8 layers, 6/6 heads, FFN 1024, vocab 32000, untied; batch 4x256; ${torchRounds} alternating rounds of ${torchSteps} timed steps after 1 warm-up, each run its own process; OMP_WAIT_POLICY=${torchEnv.OMP_WAIT_POLICY})`,
  '',
  'Speed = median over rounds of (PyTorch step time / sparsetune step time): above 1 means sparsetune is faster. Memory = sparsetune peak RSS / PyTorch peak RSS (PyTorch includes ~230 MB for torch itself). ' +
    (process.env.BENCH_SCALE === '1' ? 'Scale rows: SmolLM-135M geometry (4x256) and Qwen2.5-0.5B geometry (2x256), random weights, one round. ' : 'Scale rows (SmolLM-135M, Qwen2.5-0.5B geometries): BENCH_SCALE=1. '),
  '',
  issueRows.length ? compareTable(issueRows) : 'skipped (BENCH_ISSUE=0)',
  '',
  ...models.map((m) => methodTable(m) + '\n'),
  `### Against PyTorch (same step: forward, backward, AdamW; \`scripts/torch_train_step.py\`, OpenBLAS, same threads, shapes and step counts; OMP_WAIT_POLICY=${torchEnv.OMP_WAIT_POLICY})`,
  '',
  torchTable,
  '',
  '### PAT: exported pruned model vs its base, per token (batch 1; prefill 128 tokens, then decode; base and pruned alternate round by round, tokens/s are medians, speed-up is the median per-round ratio)',
  '',
  patTable,
  '',
  `Load average at start: ${load0.toFixed(1)} on ${cpus().length} cores (a shared box skews timings; medians are used). Total bench time ${totalS} s.`,
].join('\n');

writeResults('methods', { threads, issue: issueRows, loadAverageAtStart: load0, totalSeconds: totalS, models: MODELS, methods: rows, torch: torchRows, torchSkipped: noTorch, patExport: pat }, md);
