/**
 * Model benchmark (`npm run bench -- models`): prefill and decode tokens/s, batch 1 and 8,
 * against the memory-bandwidth bound (weight bytes read per token / measured bandwidth) and
 * against llama.cpp (node-llama-cpp, same weights as F32 GGUF), side by side in one run.
 *
 * - "session": the DecodeSession path (in-place KV cache via GroupQueryAttention, logits of
 *   the last position only, bound outputs) that generate() uses;
 * - "step": the KvCache `CausalLM.step` path (cache concatenated and returned per token,
 *   logits of every position), the engine before this path existed.
 * The two alternate round by round; tokens/s are medians over rounds.
 *
 * Env: SPARSETUNE_THREADS (2), BENCH_ROUNDS (3), BENCH_DECODE_TOKENS (128), BENCH_PROMPT (128),
 * BENCH_PREFILL (256), BENCH_SCALE=1 adds SmolLM-135M and Qwen2.5-0.5B geometries (random
 * weights; checks free memory first), BENCH_LLAMACPP=0 skips llama.cpp, BENCH_PRECISION=0 skips
 * the lower-precision rows (bench/precision.ts: f32 / f16 / int8 / int4 base weights).
 */
import { freemem } from 'node:os';
import { Graph } from '../src/engine/ir.js';
import { reduceSum } from '../src/engine/ops/index.js';
import { Runtime } from '../src/engine/runtime.js';
import { bundledModelPath } from '../src/io/model-dir.js';
import { CausalLM } from '../src/models/causal-lm.js';
import { DecodeSession } from '../src/models/decode.js';
import { LLAMA_135M, LLAMA_38M, QWEN_05B, randomModel } from '../src/models/random.js';
import { measureLlamaCpp, type LlamaCppResult } from './llamacpp.js';
import { measurePrecisions, type PrecisionRow } from './precision.js';
import { table, writeResults } from './util.js';

const threads = Number(process.env.SPARSETUNE_THREADS ?? 2);
const rounds = Number(process.env.BENCH_ROUNDS ?? 3);
const decodeTokens = Number(process.env.BENCH_DECODE_TOKENS ?? 128);
const promptLen = Number(process.env.BENCH_PROMPT ?? 128);
const prefillLen = Number(process.env.BENCH_PREFILL ?? 256);
const runtime = new Runtime({ threads });
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

/** Single-thread JS copy bandwidth (read + write bytes), as before. */
function copyBandwidthGBs(): number {
  const n = 64 * 1024 * 1024; // 256 MB
  const a = new Float32Array(n).fill(1);
  const b = new Float32Array(n);
  b.set(a);
  const t0 = performance.now();
  for (let i = 0; i < 4; i++) b.set(a);
  const s = (performance.now() - t0) / 1000;
  return (4 * 2 * n * 4) / s / 1e9;
}

/** Read bandwidth of onnxruntime's own kernels at `threads`: ReduceSum over 256 MB. */
async function readBandwidthGBs(): Promise<number> {
  const n = 64 * 1024 * 1024;
  const g = new Graph('read-bw');
  const x = g.input('x', 'f32', [n]);
  g.output('s', reduceSum(x, [0]));
  const c = await runtime.compile(g);
  const feeds = { x: { dtype: 'f32' as const, shape: [n], data: new Float32Array(n).fill(1) } };
  await c.run(feeds);
  const ts: number[] = [];
  for (let i = 0; i < 5; i++) {
    const t0 = performance.now();
    await c.run(feeds);
    ts.push(performance.now() - t0);
  }
  return (n * 4) / (median(ts) / 1000) / 1e9;
}

const tokens = (n: number, vocab: number, salt = 0) => Array.from({ length: n }, (_, i) => 3 + ((i * 7 + salt * 13) % (vocab - 3)));

interface Timing {
  prefillTokS: number;
  decodeTokS: number;
}

/** One round: prefill `prompts` then `n` tokens per row; tokens/s over all rows. */
async function round(model: CausalLM, mode: 'shared' | 'concat', prompts: number[][], n: number, prefillOnly?: number[]): Promise<Timing> {
  const B = prompts.length;
  let prefillTokS = Number.NaN;
  if (prefillOnly) {
    const s = await DecodeSession.open(model, 1, { mode, capacity: prefillOnly.length });
    const t0 = performance.now();
    await s.prefill([prefillOnly]);
    prefillTokS = prefillOnly.length / ((performance.now() - t0) / 1000);
  }
  const s = await DecodeSession.open(model, B, { mode, capacity: Math.max(...prompts.map((p) => p.length)) + n });
  await s.prefill(prompts);
  const t0 = performance.now();
  for (let i = 0; i < n; i++) await s.next(prompts.map((_, b) => 3 + ((i + b) % 100)));
  return { prefillTokS, decodeTokS: (B * n) / ((performance.now() - t0) / 1000) };
}

interface ModelRow {
  name: string;
  params: number;
  weightBytesPerToken: number;
  session: { prefill: number; decode1: number; decode8: number };
  step: { prefill: number; decode1: number; decode8: number };
  llamacpp: LlamaCppResult[] | string;
}

async function measure(name: string, model: CausalLM): Promise<ModelRow> {
  const params = [...model.weights.values()].reduce((s, w) => s + w.data.length, 0);
  const cfg = model.config;
  // Weights read per token: all but the embedding table (one row gathered), unless tied (it is the LM head).
  const embed = cfg.tieWordEmbeddings ? 0 : cfg.vocabSize * cfg.hiddenSize;
  const weightBytesPerToken = (params - embed) * 4;
  const V = model.vocabSize;
  const one = [tokens(promptLen, V)];
  const eight = Array.from({ length: 8 }, (_, b) => tokens(promptLen, V, b));
  const pre = tokens(prefillLen, V, 9);
  const modes = ['shared', 'concat'] as const;
  for (const mode of modes) {
    await round(model, mode, one, 4, pre); // compile + warm up
    await round(model, mode, eight, 2);
  }
  const acc = { shared: { p: [] as number[], d1: [] as number[], d8: [] as number[] }, concat: { p: [] as number[], d1: [] as number[], d8: [] as number[] } };
  for (let r = 0; r < rounds; r++) {
    for (const mode of modes) {
      const a = await round(model, mode, one, decodeTokens, pre);
      const b = await round(model, mode, eight, Math.max(8, decodeTokens / 4));
      acc[mode].p.push(a.prefillTokS);
      acc[mode].d1.push(a.decodeTokS);
      acc[mode].d8.push(b.decodeTokS);
    }
    console.error(`[models] ${name} round ${r + 1}/${rounds}: session ${acc.shared.d1.at(-1)!.toFixed(1)} tok/s, step ${acc.concat.d1.at(-1)!.toFixed(1)} tok/s`);
  }
  const sum = (m: 'shared' | 'concat') => ({ prefill: median(acc[m].p), decode1: median(acc[m].d1), decode8: median(acc[m].d8) });
  const llamacpp =
    process.env.BENCH_LLAMACPP === '0'
      ? 'skipped (BENCH_LLAMACPP=0)'
      : await measureLlamaCpp(model, { threads: [...new Set([1, threads])], prompt: pre, decode: decodeTokens, rounds }).catch((e: Error) => `llama.cpp failed: ${e.message.split('\n')[0]}`);
  return { name, params, weightBytesPerToken, session: sum('shared'), step: sum('concat'), llamacpp };
}

const copyBw = copyBandwidthGBs();
const readBw = await readBandwidthGBs();
const results: ModelRow[] = [];
results.push(await measure('stories260K', await CausalLM.load(bundledModelPath(), { runtime })));
results.push(await measure('llama 38.7M (random, untied; issue shapes)', randomModel(LLAMA_38M, { runtime })));
if (process.env.BENCH_SCALE === '1') {
  for (const [name, cfg, needGb] of [
    ['SmolLM-135M geometry (random)', LLAMA_135M, 2],
    ['Qwen2.5-0.5B geometry (random)', QWEN_05B, 5],
  ] as const) {
    const free = freemem() / 2 ** 30;
    if (free < needGb + 2) {
      console.error(`[models] ${name} skipped: ${free.toFixed(1)} GiB free, needs about ${needGb + 2}`);
      continue;
    }
    results.push(await measure(name, randomModel(cfg, { runtime })));
  }
}

const precision: { name: string; rows: PrecisionRow[] }[] = [];
if (process.env.BENCH_PRECISION !== '0') {
  const popts = { rounds, decodeTokens, promptLen, prefillLen };
  const cases: [string, () => Promise<CausalLM> | CausalLM][] = [
    ['stories260K', () => CausalLM.load(bundledModelPath(), { runtime })],
    ['llama 38.7M (random, untied; issue shapes)', () => randomModel(LLAMA_38M, { runtime, seed: 1 })],
  ];
  if (process.env.BENCH_SCALE === '1' && freemem() / 2 ** 30 > 4) cases.push(['SmolLM-135M geometry (random)', () => randomModel(LLAMA_135M, { runtime, seed: 1 })]);
  for (const [name, make] of cases) {
    precision.push({ name, rows: await measurePrecisions(make, { ...popts, log: (m) => console.error(`[models] precision ${name} ${m}`) }) });
  }
}

const bound = (bw: number, r: ModelRow) => (bw * 1e9) / r.weightBytesPerToken;
const rows = results.map((r) => [
  r.name,
  `${(r.params / 1e6).toFixed(2)}M`,
  r.step.decode1,
  r.session.decode1,
  bound(copyBw, r),
  r.session.decode1 / bound(copyBw, r),
  r.session.decode1 / bound(readBw, r),
  r.session.decode8,
  r.session.decode8 / r.session.decode1,
  r.step.prefill,
  r.session.prefill,
]);
const cppRows: (string | number)[][] = [];
for (const r of results) {
  if (typeof r.llamacpp === 'string') {
    cppRows.push([r.name, r.llamacpp, '-', '-', '-', '-', '-']);
    continue;
  }
  for (const c of r.llamacpp) {
    cppRows.push([r.name, c.threads, c.decodeTokS, r.session.decode1 / c.decodeTokS, c.prefillTokS, r.session.prefill / c.prefillTokS, `${c.maxLogitDiff.toExponential(1)} (largest logit ${c.maxLogit.toFixed(1)})`]);
  }
}
const md = [
  `## Models: prefill and decode (threads=${threads})`,
  '',
  `Copy bandwidth ${copyBw.toFixed(1)} GB/s (one JS thread, read+write bytes); read bandwidth ${readBw.toFixed(1)} GB/s (onnxruntime ReduceSum, ${threads} threads). ` +
    'Bound = bandwidth / f32 weight bytes read per token (the embedding table counts only when tied, as the LM head). ' +
    `Batch 1: prompt ${promptLen}, ${decodeTokens} new tokens; batch 8: ${Math.max(8, decodeTokens / 4)} new tokens per row (tokens/s over all rows); prefill: ${prefillLen} tokens. ` +
    `"step" = KvCache step path (cache copied per token, every position's logits); "session" = DecodeSession (in-place cache, last-position logits). Medians of ${rounds} alternating rounds.`,
  '',
  table(
    ['model', 'params', 'decode tok/s (step)', 'decode tok/s (session)', 'bound tok/s (copy bw)', 'session / bound (copy)', 'session / bound (read)', 'batch-8 decode tok/s', 'batch-8 / batch-1', 'prefill tok/s (step)', 'prefill tok/s (session)'],
    rows,
  ),
  '',
  '### llama.cpp (node-llama-cpp, F32 GGUF of the same weights)',
  '',
  table(['model', 'llama.cpp threads', 'llama.cpp decode tok/s', 'session decode / llama.cpp', 'llama.cpp prefill tok/s', 'session prefill / llama.cpp', 'logit check: max abs diff'], cppRows),
  ...(precision.length ? ['', precisionTable()] : []),
].join('\n');
writeResults('models', { threads, copyBandwidthGBs: copyBw, readBandwidthGBs: readBw, results, precision }, md);

function precisionTable(): string {
  const rows: (string | number)[][] = [];
  for (const { name, rows: ps } of precision) {
    const f32 = ps[0];
    for (const p of ps) {
      rows.push([
        name,
        p.dtype,
        p.weightBytes / 1e6,
        p.rssDeltaBytes / 1e6,
        p.decode1,
        p.decode1 / f32.decode1,
        p.decode1 / ((readBw * 1e9) / p.bytesPerToken),
        p.decode8,
        p.decode8 / f32.decode8,
        p.prefill,
        p.prefill / f32.prefill,
        p.dtype === 'f32' ? `0 (largest logit ${p.maxLogit.toFixed(1)})` : p.maxLogitErr.toExponential(2),
      ]);
    }
  }
  return [
    '### Lower-precision base weights (`--weights-dtype`, side by side, alternating rounds)',
    '',
    'Linear weights (attention, MLP, LM head) stored as f16 (cast to f32 per run) or int8 / int4 (onnxruntime MatMulNBits, blocks of 32, int8 activations); embeddings and norms stay f32. ' +
      '"RSS added" = resident memory grown by building that copy and compiling its decode graph (after GC; onnxruntime prepacks the quantized weights). ' +
      'Bound = read bandwidth / that copy\'s weight bytes per token. Logit error = max |logit - f32 logit| over 64 tokens (random weights for the 38.7M model: the real checkpoints\' errors are in test/models/low-precision.test.ts).',
    '',
    table(['model', 'weights', 'weight MB', 'RSS added MB', 'decode tok/s', 'vs f32', 'decode / bound (read)', 'batch-8 tok/s', 'vs f32', 'prefill tok/s', 'vs f32', 'max logit error vs f32'], rows),
  ].join('\n');
}
