/**
 * Per-op profile of the engine's main workloads, from onnxruntime's own profiler
 * (`enableProfiling`: one Chrome-trace JSON per session, one event per kernel run).
 *
 *   SPARSETUNE_THREADS=2 npm run bench -- profile
 *   SPARSETUNE_THREADS=2 node --import tsx bench/profile.ts --model llama38m --work decode,train-full --label after
 *
 * For each workload it reports, per unit of work (a decoded token or a training step): the
 * wall time seen from JS, the time inside onnxruntime's runs, the sum of kernel times, and
 * the top op types and nodes by kernel time. Wall minus run time is the JS side (feeds,
 * result handling, optimizer); run minus kernel time is onnxruntime's own per-node overhead.
 * For the JS side itself, run with `node --cpu-prof --import tsx bench/profile.ts ...` and
 * open the .cpuprofile in Chrome's DevTools.
 *
 * Options (also env: PROFILE_MODEL, PROFILE_WORK, PROFILE_TOP, PROFILE_LABEL):
 *   --model  llama38m (default) | llama30m | llama135m | stories260K
 *   --work   comma list of decode, decode-b8, prefill, forward, train-full, train-lora (default: all)
 *   --top    rows per table (default 12)
 *   --label  results name suffix: bench/results/profile[-label].md (default none)
 */
import { mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Runtime } from '../src/engine/runtime.js';
import { bundledModelPath } from '../src/io/model-dir.js';
import type { TokenizedExample } from '../src/io/datasets.js';
import { CausalLM } from '../src/models/causal-lm.js';
import { LLAMA_135M, LLAMA_30M, LLAMA_38M, randomModel } from '../src/models/random.js';
import { DecodeSession } from '../src/models/decode.js';
import { methodModule } from '../src/train/registry.js';
import { Trainer } from '../src/train/trainer.js';
import { xorshift32Uint32 } from '../src/util/random.js';
import { table, writeResults } from './util.js';

const arg = (flag: string, env: string, dflt: string): string => {
  const i = process.argv.indexOf(flag);
  return i > 0 && process.argv[i + 1] ? process.argv[i + 1] : (process.env[env] ?? dflt);
};
const threads = Number(process.env.SPARSETUNE_THREADS ?? 2);
const modelName = arg('--model', 'PROFILE_MODEL', 'llama38m');
const works = arg('--work', 'PROFILE_WORK', 'decode,decode-b8,prefill,forward,train-full,train-lora').split(',');
const top = Number(arg('--top', 'PROFILE_TOP', '12'));
const label = arg('--label', 'PROFILE_LABEL', '');

const CONFIGS: Record<string, Record<string, unknown>> = { llama38m: LLAMA_38M, llama30m: LLAMA_30M, llama135m: LLAMA_135M };

async function loadModel(runtime: Runtime): Promise<CausalLM> {
  if (modelName === 'stories260K') return CausalLM.load(bundledModelPath(), { runtime });
  const cfg = CONFIGS[modelName];
  if (!cfg) throw new Error(`--model: choose from stories260K, ${Object.keys(CONFIGS).join(', ')}`);
  return randomModel(cfg, { runtime });
}

interface TraceEvent {
  cat: string;
  name: string;
  ts: number;
  dur: number;
  args?: { op_name?: string };
}

/** What a workload did: how many units it timed, their wall time, and which runs of each session count. */
interface WorkResult {
  units: number;
  unitName: string;
  wallMs: number;
  /** Run indices (per session, in order of the session's runs) to include; the rest is warm-up. */
  keep: (run: number, session: number) => boolean;
  note?: string;
}

const prompt = (n: number, vocab: number, salt = 0) => Array.from({ length: n }, (_, i) => 1 + ((i * 7 + salt * 13) % (vocab - 1)));

function syntheticExamples(n: number, seq: number, vocab: number): TokenizedExample[] {
  const next = xorshift32Uint32(0x5bd1e995);
  return Array.from({ length: n }, () => {
    const ids = Array.from({ length: seq }, () => next() % vocab);
    return { inputIds: ids, labels: [...ids] };
  });
}

/** Batch-B decode: a prompt of P tokens, then N tokens (warm-up round first, untimed). */
async function decodeWork(model: CausalLM, B: number, P: number, N: number): Promise<WorkResult> {
  const prompts = Array.from({ length: B }, (_, b) => prompt(P, model.vocabSize, b));
  await decodeSteps(model, prompts, 4);
  const t0 = performance.now();
  const { prefillMs } = await decodeSteps(model, prompts, N);
  const wallMs = performance.now() - t0 - prefillMs;
  return { units: N, unitName: B === 1 ? 'token' : `step of ${B} tokens`, wallMs, keep: decodeKeep(N), note: `prompt ${P}, ${N} new tokens, batch ${B}` };
}

/** One prefill, then n single-token steps, through a DecodeSession (SPARSETUNE_DECODE=concat: the KvCache step path). */
async function decodeSteps(model: CausalLM, prompts: number[][], n: number): Promise<{ prefillMs: number }> {
  const session = await DecodeSession.open(model, prompts.length, { capacity: 256 });
  const t0 = performance.now();
  await session.prefill(prompts);
  const prefillMs = performance.now() - t0;
  for (let s = 0; s < n; s++) await session.next(prompts.map(() => 5));
  return { prefillMs };
}

/** Runs of the one decode session graph: warm-up (prefill + 4), then the timed prefill, then N decode runs. */
const decodeKeep = (N: number): WorkResult['keep'] => (i) => i >= 6 && i < 6 + N;

async function prefillWork(model: CausalLM, P: number, reps: number): Promise<WorkResult> {
  const ids = prompt(P, model.vocabSize);
  await model.logits([ids]);
  const t0 = performance.now();
  for (let r = 0; r < reps; r++) await model.logits([ids]);
  return { units: reps, unitName: `prefill of ${P}`, wallMs: performance.now() - t0, keep: (i) => i >= 1, note: `${P} tokens, batch 1` };
}

async function forwardWork(model: CausalLM, B: number, T: number, reps: number): Promise<WorkResult> {
  const data = syntheticExamples(B, T, model.vocabSize);
  const { collate } = await import('../src/io/datasets.js');
  const batch = collate(data, 0);
  await model.loss(batch);
  const t0 = performance.now();
  for (let r = 0; r < reps; r++) await model.loss(batch);
  return { units: reps, unitName: 'forward', wallMs: performance.now() - t0, keep: (i) => i >= 1, note: `loss forward, batch ${B}x${T}` };
}

async function trainWork(model: CausalLM, method: string, B: number, T: number, steps: number, warm: number): Promise<WorkResult> {
  const mod = await methodModule(method);
  const m = await mod.createMethod(model, mod.configSchema.parse({}));
  const logs: number[] = [];
  const trainer = new Trainer(model, m, { steps: steps + warm, batchSize: B, clipNorm: 0, optimizer: { lr: 1e-4 } }, {
    onStep: (l) => void logs.push((1000 * l.tokens) / l.tokensPerSecond),
  });
  await trainer.train(syntheticExamples(B * 4, T, model.vocabSize));
  const wallMs = logs.slice(warm).reduce((a, b) => a + b, 0);
  return { units: steps, unitName: 'step', wallMs, keep: (i) => i >= warm, note: `${method}, batch ${B}x${T}, AdamW` };
}

interface OpRow {
  op: string;
  us: number;
  count: number;
}

function aggregate(dir: string, prefix: string, keep: WorkResult['keep']) {
  const files = readdirSync(dir).filter((f) => f.startsWith(prefix) && f.endsWith('.json')).sort();
  const byOp = new Map<string, OpRow>();
  const byNode = new Map<string, OpRow & { node: string }>();
  let runUs = 0;
  let kernelUs = 0;
  files.forEach((f, session) => {
    const events = JSON.parse(readFileSync(join(dir, f), 'utf8')) as TraceEvent[];
    const runs = events.filter((e) => e.cat === 'Session' && e.name === 'model_run').sort((a, b) => a.ts - b.ts);
    const kept = runs.filter((_, i) => keep(i, session));
    runUs += kept.reduce((s, r) => s + r.dur, 0);
    const inKept = (ts: number) => kept.some((r) => ts >= r.ts && ts <= r.ts + r.dur);
    for (const e of events) {
      if (e.cat !== 'Node' || !e.name.endsWith('_kernel_time') || !inKept(e.ts)) continue;
      const op = e.args?.op_name ?? '?';
      if (op === 'Scan' || op === 'Loop') continue; // containers: their body nodes are listed themselves
      kernelUs += e.dur;
      const o = byOp.get(op) ?? { op, us: 0, count: 0 };
      o.us += e.dur;
      o.count++;
      byOp.set(op, o);
      const node = e.name.replace(/_kernel_time$/, '');
      const key = `${session}:${node}`;
      const n = byNode.get(key) ?? { op, node, us: 0, count: 0 };
      n.us += e.dur;
      n.count++;
      byNode.set(key, n);
    }
  });
  return { runUs, kernelUs, ops: [...byOp.values()].sort((a, b) => b.us - a.us), nodes: [...byNode.values()].sort((a, b) => b.us - a.us) };
}

const sections: string[] = [];
const json: Record<string, unknown> = { model: modelName, threads, label, works: {} };
for (const work of works) {
  const dir = mkdtempSync(join(tmpdir(), 'sparsetune-profile-'));
  const runtime = new Runtime({ threads, profilePrefix: join(dir, 'ort') });
  try {
    const model = await loadModel(runtime);
    let r: WorkResult;
    if (work === 'decode') r = await decodeWork(model, 1, 128, 64);
    else if (work === 'decode-b8') r = await decodeWork(model, 8, 128, 32);
    else if (work === 'prefill') r = await prefillWork(model, 256, 5);
    else if (work === 'forward') r = await forwardWork(model, 4, 256, 3);
    else if (work === 'train-full') r = await trainWork(model, 'full', 4, 256, 3, 2);
    else if (work === 'train-lora') r = await trainWork(model, 'lora', 4, 256, 3, 2);
    else throw new Error(`unknown --work ${work}`);
    await runtime.endProfiling();
    const agg = aggregate(dir, 'ort', r.keep);
    const per = (us: number) => us / 1000 / r.units;
    const wall = r.wallMs / r.units;
    (json.works as Record<string, unknown>)[work] = { ...r, keep: undefined, wallMsPerUnit: wall, runMsPerUnit: per(agg.runUs), kernelMsPerUnit: per(agg.kernelUs), ops: agg.ops, nodes: agg.nodes.slice(0, 50) };
    const opRows = agg.ops.slice(0, top).map((o) => [o.op, per(o.us), `${((100 * o.us) / agg.kernelUs).toFixed(1)}%`, o.count / r.units]);
    const nodeRows = agg.nodes.slice(0, top).map((n) => [n.node, n.op, per(n.us), `${((100 * n.us) / agg.kernelUs).toFixed(1)}%`]);
    sections.push(
      `### ${work} (${r.note ?? ''}), per ${r.unitName}`,
      '',
      `Wall ${wall.toFixed(2)} ms; inside onnxruntime runs ${per(agg.runUs).toFixed(2)} ms; sum of kernels ${per(agg.kernelUs).toFixed(2)} ms (JS side ${(wall - per(agg.runUs)).toFixed(2)} ms, ORT between kernels ${(per(agg.runUs) - per(agg.kernelUs)).toFixed(2)} ms).`,
      '',
      table(['op type', 'ms', 'share of kernels', 'nodes run'], opRows),
      '',
      table(['node', 'op', 'ms', 'share'], nodeRows),
      '',
    );
    console.error(`profiled ${work}: ${wall.toFixed(2)} ms per ${r.unitName}`);
  } finally {
    await runtime.dispose();
    rmSync(dir, { recursive: true, force: true });
  }
}

const md = [`## Profile${label ? ` (${label})` : ''}: ${modelName}, threads=${threads}`, '', 'onnxruntime profiler, kernel times summed per op type and per node, per unit of work (`bench/profile.ts`).', '', ...sections].join('\n');
writeResults(label ? `profile-${label}` : 'profile', json, md);
