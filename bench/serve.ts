/**
 * Serving benchmark (`npm run bench -- serve`, about 8 minutes; SERVE_BENCH_SECONDS=N
 * lengthens each scenario): aggregate tokens/s and p50/p99 latency of the HTTP server with
 * the base alone and with 1, 10, 100 and 1,000 adapters in rotation (a mix of 1% sparse
 * deltas, LoRA r8/r16 and S2FT: bench/serve-adapters.ts), 16 and 64 concurrent streaming
 * clients, on stories260K and the random ~30M Llama. The default server runs mixed-adapter
 * batches (unfused deltas); a second server on its own copy of the weights runs the same
 * adapters fused one set at a time (--fused-only), side by side. Scenarios alternate in
 * rounds so background load hits them alike; ratios are taken within one run. The 1,000-
 * adapter scenario runs with payload and table budgets below what 1,000 adapters need, so
 * adapters are evicted and read back from disk (LRU). Also: resident memory per adapter.
 * Writes bench/results/serve.json and serve.md.
 *
 * Quick runs: SERVE_BENCH_MODELS=stories260K|llama-30M, SERVE_BENCH_COUNTS=100,1000 (the base
 * is always run), SERVE_BENCH_CLIENTS=16, SERVE_BENCH_FUSED=none (or a list), and
 * SERVE_BENCH_PREPARE_ONLY=1 writes the adapter directories (once, in the temp dir) and exits.
 */
import { spawn } from 'node:child_process';
import { existsSync, writeFileSync } from 'node:fs';
import { mkdir } from 'node:fs/promises';
import { cpus, loadavg, tmpdir } from 'node:os';
import * as path from 'node:path';
import { bundledModelPath } from '../src/io/model-dir.js';
import { saveAdapter } from '../src/merge/adapter.js';
import { fingerprintWeights } from '../src/merge/fingerprint.js';
import { CausalLM } from '../src/models/causal-lm.js';
import { LLAMA_30M, randomModel } from '../src/models/random.js';
import { Runtime } from '../src/engine/runtime.js';
import { adapterBytes } from '../src/serve/registry.js';
import { createServer, type SparsetuneServer } from '../src/serve/server.js';
import { Arena } from '../src/serve/unfused/arena.js';
import { modelLayout } from '../src/serve/unfused/layout.js';
import { buildTables } from '../src/serve/unfused/tables.js';
import type { ExecutorStats } from '../src/serve/unfused/executor.js';
import { MIX, mixAdapter, type MixKind } from './serve-adapters.js';
import { table, writeResults } from './util.js';

const SECONDS = Number(process.env.SERVE_BENCH_SECONDS ?? 6);
const ROUNDS = 2;
const MAX_TOKENS = 32;
/** Comma-separated numbers from an env var (quick runs), else the default list. */
const listEnv = (name: string, def: number[]) => process.env[name]?.split(',').map(Number) ?? def;
/** Rotation sizes (0 = base only, always run: it is the reference); SERVE_BENCH_COUNTS=0,100 for a quick run. */
const COUNTS = [...new Set([0, ...listEnv('SERVE_BENCH_COUNTS', [0, 1, 10, 100, 1000])])];
const CLIENTS = listEnv('SERVE_BENCH_CLIENTS', [16, 64]);
/** Rotation sizes also run on the fused-only server (SERVE_BENCH_FUSED=none to skip that server). */
const FUSED_COUNTS = process.env.SERVE_BENCH_FUSED === 'none' ? [] : listEnv('SERVE_BENCH_FUSED', [1, 10, 100]);
/** Token ids of the prompt (valid for both vocabularies; the random model has no tokenizer). */
const PROMPT = [1, 403, 407, 261, 30, 500, 12, 90];
/** Adapters written to disk (the largest default rotation; quick runs use a prefix). */
const MAX_ADAPTERS = Math.max(1000, ...COUNTS);
const ids = Array.from({ length: MAX_ADAPTERS }, (_, i) => `ad${String(i).padStart(4, '0')}`);

interface Load {
  seconds: number;
  tokens: number;
  requests: number;
  errors: number;
  firstError?: string;
  errorKinds: Record<string, number>;
  samples: [number, number, number][];
}

function runLoad(url: string, models: string[], clients: number, seconds: number): Promise<Load> {
  const args = ['--url', url, '--models', models.join(','), '--concurrency', String(clients), '--duration-s', String(seconds), '--max-tokens', String(MAX_TOKENS), '--prompt-ids', PROMPT.join(',')];
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ['--import', 'tsx', path.join(import.meta.dirname, 'serve-load.ts'), ...args], { stdio: ['ignore', 'pipe', 'inherit'] });
    let out = '';
    child.stdout.on('data', (d: Buffer) => (out += d.toString()));
    child.on('exit', (code) => (code === 0 ? resolve(JSON.parse(out.trim().split('\n').pop()!)) : reject(new Error(`serve-load exited with ${code}`))));
  });
}

async function metrics(url: string): Promise<Map<string, number>> {
  const out = new Map<string, number>();
  for (const line of (await (await fetch(`${url}/metrics`)).text()).split('\n')) {
    if (!line || line.startsWith('#')) continue;
    const cut = line.lastIndexOf(' ');
    out.set(line.slice(0, cut), Number(line.slice(cut + 1)));
  }
  return out;
}

function percentile(xs: number[], p: number): number {
  const s = xs.filter((x) => !Number.isNaN(x)).sort((a, b) => a - b);
  return s.length ? s[Math.min(s.length - 1, Math.max(0, Math.ceil((p / 100) * s.length) - 1))] : NaN;
}

/** The adapters directory of a model, written once and reused by later runs (same seeds). */
async function adapterDir(name: string, model: CausalLM): Promise<string> {
  const dir = path.join(tmpdir(), `sparsetune-bench-serve-${name}-v1`);
  if (existsSync(path.join(dir, 'COMPLETE'))) return dir;
  await mkdir(dir, { recursive: true });
  const fp = fingerprintWeights(model.weights);
  const t0 = performance.now();
  for (let i = 0; i < MAX_ADAPTERS; i++) await saveAdapter(path.join(dir, ids[i]), mixAdapter(model, i, fp).adapter);
  writeFileSync(path.join(dir, 'COMPLETE'), '');
  console.error(`wrote ${MAX_ADAPTERS} adapters for ${name} in ${((performance.now() - t0) / 1000).toFixed(0)} s`);
  return dir;
}

/** Payload and unfused-table bytes of each adapter kind. */
function memoryPerKind(model: CausalLM) {
  const fp = fingerprintWeights(model.weights);
  const arena = new Arena();
  const layout = modelLayout(model);
  return MIX.map((kind, i) => {
    const { adapter } = mixAdapter(model, i, fp);
    const t = buildTables(arena, adapter, layout);
    return { kind, payloadBytes: adapterBytes(adapter), tableBytes: t.bytes, unfusedUsPerToken: t.costNs / 1000 };
  });
}

const zeroStats = (): ExecutorStats => ({ denseRuns: 0, denseTokens: 0, denseNs: 0, cutRuns: 0, cutTokens: 0, cutNs: 0, kernelNs: 0 });

interface Scenario {
  server: 'mixed' | 'fused-only';
  clients: number;
  adapters: number;
  /** Executor time counters (mixed server), summed over rounds. */
  exec: ExecutorStats;
  acc: { seconds: number; tokens: number; requests: number; errors: number; errorKinds: Record<string, number>; ms: number[]; ttft: number[]; swaps: number; unfusedRows: number; rows: number; reloads: number; fusedChanges: number };
}

async function benchModel(name: string, load: () => Promise<CausalLM>, budgets: { payloadMb: number; tableMb: number }) {
  const modelU = await load();
  const dir = await adapterDir(name, modelU);
  if (process.env.SERVE_BENCH_PREPARE_ONLY === '1') return null;
  const modelF = await load();
  let reloads = 0;
  const log = (m: string) => {
    if (m.startsWith('reloaded adapter')) reloads++;
  };
  const common = { adaptersDir: dir, maxBatch: 64, maxActive: 64, maxQueue: 4096, maxConsecutiveSteps: 8, memoryBudgetMb: budgets.payloadMb, log };
  const t0 = performance.now();
  const servers: Record<Scenario['server'], SparsetuneServer> = {
    mixed: await createServer({ ...common, model: modelU, unfusedBudgetMb: budgets.tableMb }),
    'fused-only': await createServer({ ...common, model: modelF, unfused: false }),
  };
  console.error(`${name}: servers up in ${((performance.now() - t0) / 1000).toFixed(0)} s`);
  // Cumulative model-time counters of the mixed server's executor (in-process; not part of /metrics).
  const execStats = (): ExecutorStats => servers.mixed.service.unfused?.executor.stats ?? zeroStats();
  const urls = { mixed: await servers.mixed.listen(0), 'fused-only': await servers['fused-only'].listen(0) };
  const scenarios: Scenario[] = [];
  const fresh = () => ({ seconds: 0, tokens: 0, requests: 0, errors: 0, errorKinds: {} as Record<string, number>, ms: [], ttft: [], swaps: 0, unfusedRows: 0, rows: 0, reloads: 0, fusedChanges: 0 });
  for (const clients of CLIENTS) {
    for (const n of COUNTS) scenarios.push({ server: 'mixed', clients, adapters: n, acc: fresh(), exec: zeroStats() });
    for (const n of FUSED_COUNTS) scenarios.push({ server: 'fused-only', clients, adapters: n, acc: fresh(), exec: zeroStats() });
  }
  // Warm-up: sessions (one-piece and cut graphs), JIT, the first tables; not reported.
  for (const s of ['mixed', 'fused-only'] as const) await runLoad(urls[s], ids.slice(0, 8), 16, 2);
  for (let round = 0; round < ROUNDS; round++) {
    for (const sc of scenarios) {
      const url = urls[sc.server];
      const before = await metrics(url);
      const exec0 = { ...execStats() };
      const reloads0 = reloads;
      const models = sc.adapters === 0 ? ['base'] : ids.slice(0, sc.adapters);
      const r = await runLoad(url, models, sc.clients, SECONDS / ROUNDS);
      const after = await metrics(url);
      const d = (k: string) => (after.get(k) ?? 0) - (before.get(k) ?? 0);
      const a = sc.acc;
      a.seconds += r.seconds;
      a.tokens += r.tokens;
      a.requests += r.requests;
      a.errors += r.errors;
      for (const [m, c] of Object.entries(r.errorKinds)) a.errorKinds[m] = (a.errorKinds[m] ?? 0) + c;
      for (const [ms, ttft] of r.samples) {
        a.ms.push(ms);
        a.ttft.push(ttft);
      }
      a.swaps += d('sparsetune_swaps_total');
      a.unfusedRows += d('sparsetune_unfused_rows_total');
      a.rows += d('sparsetune_completion_tokens_total');
      a.fusedChanges += d('sparsetune_fused_set_changes_total');
      a.reloads += reloads - reloads0;
      const exec1 = execStats();
      for (const k of Object.keys(sc.exec) as (keyof ExecutorStats)[]) sc.exec[k] += exec1[k] - exec0[k];
      console.error(`${name} round ${round + 1} ${sc.server} ${sc.clients} clients ${sc.adapters} adapters: ${(r.tokens / r.seconds).toFixed(0)} tokens/s${r.errors ? `, ${r.errors} errors: ${JSON.stringify(r.errorKinds)}` : ''}`);
    }
  }
  const rss = process.memoryUsage().rss;
  const viewRetries = servers.mixed.service.unfused ? (await servers.mixed.service.unfused.executor.segments()).viewRetries : 0;
  const tableBytes = servers.mixed.service.metrics.render().match(/^sparsetune_unfused_table_bytes (\d+)/m)?.[1];
  await servers.mixed.close();
  await servers['fused-only'].close();
  const rows = scenarios.map((sc) => {
    const a = sc.acc;
    const base = scenarios.find((x) => x.server === 'mixed' && x.clients === sc.clients && x.adapters === 0)!.acc;
    const tps = a.tokens / a.seconds;
    return {
      model: name,
      server: sc.server,
      clients: sc.clients,
      adapters: sc.adapters,
      requests: a.requests,
      errors: a.errors,
      errorKinds: a.errorKinds,
      tokensPerSecond: tps,
      vsBase: tps / (base.tokens / base.seconds),
      latencyMs: { p50: percentile(a.ms, 50), p99: percentile(a.ms, 99) },
      ttftMs: { p50: percentile(a.ttft, 50), p99: percentile(a.ttft, 99) },
      swaps: a.swaps,
      unfusedRowShare: a.rows ? a.unfusedRows / a.rows : 0,
      fusedSetChanges: a.fusedChanges,
      reloadsFromDisk: a.reloads,
      exec: sc.exec,
    };
  });
  return { rows, memory: memoryPerKind(modelU), viewRetries, rssBytes: rss, tableBytes: Number(tableBytes ?? 0), budgets };
}

const t0 = performance.now();
const loadBefore = loadavg()[0];
/**
 * onnxruntime's idle threads sleep instead of spinning (both servers, all scenarios): on the
 * shared dev machine spinning threads made every run several times slower (runtime.ts).
 */
const runtime = () => new Runtime({ spinning: process.env.SPARSETUNE_ORT_SPINNING === '1' });
const only = process.env.SERVE_BENCH_MODELS?.split(',');
const results: NonNullable<Awaited<ReturnType<typeof benchModel>>>[] = [];
const push = (r: Awaited<ReturnType<typeof benchModel>>) => r && results.push(r);
if (!only || only.includes('stories260K')) push(await benchModel('stories260K', () => CausalLM.load(bundledModelPath(), { runtime: runtime() }), { payloadMb: 1024, tableMb: 1024 }));
// Budgets below what 1,000 adapters need (~1.4 GB of payloads, about as much in tables).
if (!only || only.includes('llama-30M')) push(await benchModel('llama-30M (random)', async () => randomModel(LLAMA_30M, { runtime: runtime() }), { payloadMb: 384, tableMb: 384 }));
if (process.env.SERVE_BENCH_PREPARE_ONLY === '1') process.exit(0);
const totalSeconds = (performance.now() - t0) / 1000;
const loadAfter = loadavg()[0];

const fmt = (x: number) => (Number.isNaN(x) ? '-' : x);
type Row = (typeof results)[number]['rows'][number];
/** Model time per token fed (prompt and generated) from the executor counters: all runs, the cut graph's own share, the kernels. */
function perToken(e: ExecutorStats) {
  const tokens = e.denseTokens + e.cutTokens;
  return { modelUs: (e.denseNs + e.cutNs) / tokens / 1000, graphUs: (e.cutNs - e.kernelNs) / tokens / 1000, kernelUs: e.kernelNs / tokens / 1000, denseUs: e.denseNs / e.denseTokens / 1000 };
}
/** Every failure seen, by scenario, with its message (so no error in a table goes unexplained). */
function errorLines(rows: Row[]): string[] {
  const bad = rows.filter((x) => x.errors > 0);
  if (bad.length === 0) return ['Errors: none (every request of every scenario completed).', ''];
  return ['Errors (message as the client saw it: HTTP status and body, an error event in the stream, or a network failure):', '', ...bad.flatMap((x) => Object.entries(x.errorKinds).map(([m, n]) => `- ${x.server}, ${x.clients} clients, ${label(x.adapters)}: ${n} x \`${m}\``)), ''];
}
/** The issue's goal for this model, stated: 100 adapters at >= 0.8x of base-only tokens/s, and why where it falls short. */
function goalLines(rows: Row[]): string[] {
  const out: string[] = [];
  for (const clients of CLIENTS) {
    const base = rows.find((x) => x.server === 'mixed' && x.clients === clients && x.adapters === 0);
    const hundred = rows.find((x) => x.server === 'mixed' && x.clients === clients && x.adapters === 100);
    if (!base || !hundred) continue;
    const b = perToken(base.exec);
    const h = perToken(hundred.exec);
    const met = hundred.vsBase >= 0.8;
    out.push(
      `- ${clients} clients, 100 adapters: **${hundred.vsBase.toFixed(2)}x** of base-only tokens/s — goal (>= 0.8x) ${met ? '**met**' : `**not met** (short by ${(0.8 - hundred.vsBase).toFixed(2)})`}. ` +
        `Model time per token fed: base only ${b.modelUs.toFixed(1)} µs; 100 adapters ${h.modelUs.toFixed(1)} µs, of which unfused kernels ${h.kernelUs.toFixed(1)} µs and the cut graph's extra runs ${Math.max(0, h.modelUs - h.kernelUs - b.modelUs).toFixed(1)} µs over the one-piece graph; model-bound ratio ${(b.modelUs / h.modelUs).toFixed(2)}x.`,
    );
  }
  for (const x of rows.filter((r) => r.adapters === 1000)) {
    out.push(`- ${x.server}, ${x.clients} clients, 1,000 adapters: ${x.requests} requests, ${x.errors} errors, ${x.reloadsFromDisk} adapters read back from disk after eviction, within the budgets below (no out-of-memory).`);
  }
  return out.length ? ['Goal check (100 adapters in rotation vs base only, same run; executor counters):', '', ...out, ''] : [];
}
const label = (n: number) => (n === 0 ? 'base only' : n === 1 ? '1 adapter' : `${n} adapters in rotation`);
const md = [
  '## Serving: mixed-adapter batches',
  '',
  `HTTP over loopback, closed-loop streaming clients in a separate process, ${MAX_TOKENS} max tokens, greedy, a ${PROMPT.length}-token prompt, ${SECONDS} s per scenario in ${ROUNDS} alternating rounds. Adapters in rotation: a mix of 1% sparse deltas of every 2-D weight, LoRA r8 and r16 on q_proj/v_proj, and S2FT (1/16 of the rows of v_proj/up_proj and columns of o_proj/down_proj) — one kind in four each. "mixed" is the default server (one batch of up to 64 rows whatever their adapters; unfused contributions per row; the cost rule picks the fused set); "fused-only" is \`--fused-only\` (one set at a time, swapped in; max batch 64). "vs base" is tokens/s over the mixed server's base-only tokens/s at the same client count, same run. "unfused rows" is the share of generated tokens whose row ran unfused work. Client and server share the 2 cores.`,
  '',
  ...results.flatMap((r) => [
    `### ${r.rows[0].model}`,
    '',
    table(
      ['server', 'clients', 'scenario', 'requests', 'errors', 'tokens/s', 'vs base', 'latency p50 ms', 'latency p99 ms', 'TTFT p50 ms', 'swaps', 'unfused rows', 'fused-set changes', 'reloads from disk', 'model µs / token', 'kernels µs / token'],
      r.rows.map((x) => {
        const t = perToken(x.exec);
        return [x.server, x.clients, label(x.adapters), x.requests, x.errors, x.tokensPerSecond, x.vsBase, x.latencyMs.p50, x.latencyMs.p99, fmt(x.ttftMs.p50), x.swaps, `${(100 * x.unfusedRowShare).toFixed(0)}%`, x.fusedSetChanges, x.reloadsFromDisk, x.server === 'mixed' ? fmt(t.modelUs) : '-', x.server === 'mixed' ? fmt(t.kernelUs) : '-'];
      }),
    ),
    '',
    ...errorLines(r.rows),
    ...goalLines(r.rows),
    `Resident memory per adapter (payload as loaded; unfused tables in the WebAssembly arena; estimated unfused kernel time per token). Budgets: ${r.budgets.payloadMb} MiB of payloads and ${r.budgets.tableMb} MiB of tables, least recently used evicted and read back from disk; process RSS at the end ${(r.rssBytes / 2 ** 20).toFixed(0)} MiB (both servers, both model copies), tables resident ${(r.tableBytes / 2 ** 20).toFixed(0)} MiB; cut-graph segments rerun because the arena's memory was replaced while they were pending: ${r.viewRetries}.`,
    '',
    table(
      ['kind', 'payload KiB', 'tables KiB', 'unfused µs / token'],
      r.memory.map((m) => [m.kind as MixKind, m.payloadBytes / 1024, m.tableBytes / 1024, m.unfusedUsPerToken]),
    ),
    '',
  ]),
  `Total benchmark time: ${totalSeconds.toFixed(0)} s. Machine load average (1 min) ${loadBefore.toFixed(1)} at start, ${loadAfter.toFixed(1)} at end, on ${cpus().length} cores: other work on the machine skews these numbers.`,
].join('\n');
writeResults('serve', { maxTokens: MAX_TOKENS, secondsPerScenario: SECONDS, rounds: ROUNDS, loadAverage: { start: loadBefore, end: loadAfter, cores: cpus().length }, results, totalSeconds }, md);
