/**
 * Serving benchmark (`npx tsx bench/serve.ts`, under 3 minutes):
 * 1. swap latency vs delta density (0.1%, 1%, 10% of every 2-D weight) on stories260K and a
 *    random ~30M Llama: base -> X (apply), X -> Y (revert + apply), Y -> base (revert);
 * 2. throughput and latency of the HTTP server on stories260K with the base alone and with
 *    1, 10 and 100 adapters in rotation, driven by a separate load-generating process
 *    (bench/serve-load.ts) over loopback.
 * Writes bench/results/serve.json and serve.md.
 */
import { spawn } from 'node:child_process';
import { mkdtemp } from 'node:fs/promises';
import { cpus, loadavg, tmpdir } from 'node:os';
import * as path from 'node:path';
import { bundledModelPath } from '../src/io/model-dir.js';
import { saveAdapter } from '../src/merge/adapter.js';
import { fingerprintWeights } from '../src/merge/fingerprint.js';
import { newAdapter, type Adapter } from '../src/merge/types.js';
import { CausalLM } from '../src/models/causal-lm.js';
import { LLAMA_30M, randomModel } from '../src/models/random.js';
import { WeightGate } from '../src/serve/gate.js';
import { createServer } from '../src/serve/server.js';
import { Swapper, type SwapMember, type SwapReport } from '../src/serve/swapper.js';
import type { HostTensor } from '../src/tensor.js';
import { xorshift32 } from '../src/util/random.js';
import { table, writeResults } from './util.js';

/** Load time per scenario, split over ROUNDS interleaved rounds. */
const LOAD_SECONDS = Number(process.env.SERVE_BENCH_SECONDS ?? 15);
const ROUNDS = 3;
const CONCURRENCY = 16;
const MAX_TOKENS = 32;

/** A sparse additive adapter on a `density` fraction of every 2-D weight (geometric gaps, so O(nnz)). */
function sparseAdapter(weights: Map<string, HostTensor<'f32'>>, density: number, seed: number, fingerprint: string): Adapter {
  const r = xorshift32(seed);
  const a = newAdapter({ method: 'bench-random', kind: 'additive', base: { model: 'bench', fingerprint } });
  const logq = Math.log(1 - density);
  for (const [name, t] of weights) {
    if (t.shape.length !== 2) continue;
    const idx: number[] = [];
    for (let i = Math.floor(Math.log(1 - r()) / logq); i < t.data.length; i += 1 + Math.floor(Math.log(1 - r()) / logq)) idx.push(i);
    if (!idx.length) continue;
    a.additive.set(name, { indices: Int32Array.from(idx), values: Float32Array.from(idx, () => (r() - 0.5) * 0.02) });
  }
  return a;
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

async function swapLatency(name: string, weights: Map<string, HostTensor<'f32'>>) {
  const params = [...weights.values()].reduce((s, t) => s + t.data.length, 0);
  const fp = fingerprintWeights(weights);
  const rows = [];
  for (const density of [0.001, 0.01, 0.1]) {
    const X = sparseAdapter(weights, density, 1, fp);
    const Y = sparseAdapter(weights, density, 2, fp);
    const nnz = [...X.additive.values()].reduce((s, d) => s + d.indices.length, 0);
    const reports: SwapReport[] = [];
    const swapper = new Swapper(weights, new WeightGate(), { fingerprint: fp, onSwap: (r) => reports.push(r) });
    const mx: SwapMember = { uid: 1, id: 'X', payload: () => X };
    const my: SwapMember = { uid: 2, id: 'Y', payload: () => Y };
    const apply: number[] = [];
    const swap: number[] = [];
    const revert: number[] = [];
    const reps = density >= 0.1 && params > 1e7 ? 3 : 7;
    for (let i = 0; i < reps + 1; i++) {
      await swapper.runWith([mx], async () => {});
      await swapper.runWith([my], async () => {});
      await swapper.runWith([], async () => {});
      const [a, s, r] = reports.splice(0).map((x) => x.seconds * 1000);
      if (i > 0) { // the first round warms up the JIT
        apply.push(a);
        swap.push(s);
        revert.push(r);
      }
    }
    const exact = fingerprintWeights(weights, { cache: false }) === fp;
    rows.push({ model: name, params, density, nnz, applyMs: median(apply), swapMs: median(swap), revertMs: median(revert), nsPerElement: (median(apply) * 1e6) / nnz, exactRestore: exact });
    console.error(`swap ${name} density ${density}: apply ${median(apply).toFixed(2)} ms, swap ${median(swap).toFixed(2)} ms, revert ${median(revert).toFixed(2)} ms, exact ${exact}`);
  }
  return rows;
}

/** Run the load generator in its own process; resolves to its JSON result. */
function runLoad(url: string, models: string[], seconds: number): Promise<Record<string, unknown>> {
  return new Promise((resolve, reject) => {
    const child = spawn(
      process.execPath,
      ['--import', 'tsx', path.join(import.meta.dirname, 'serve-load.ts'), '--url', url, '--models', models.join(','), '--concurrency', String(CONCURRENCY), '--duration-s', String(seconds), '--max-tokens', String(MAX_TOKENS)],
      { stdio: ['ignore', 'pipe', 'inherit'] },
    );
    let out = '';
    child.stdout.on('data', (d: Buffer) => (out += d.toString()));
    child.on('exit', (code) => (code === 0 ? resolve(JSON.parse(out.trim().split('\n').pop()!)) : reject(new Error(`serve-load exited with ${code}`))));
  });
}

async function metricValue(url: string, name: string): Promise<number> {
  const text = await (await fetch(`${url}/metrics`)).text();
  const line = text.split('\n').find((l) => l.startsWith(`${name} `));
  return line ? Number(line.split(' ')[1]) : NaN;
}

function percentile(xs: number[], p: number): number {
  const s = xs.filter((x) => !Number.isNaN(x)).sort((a, b) => a - b);
  return s.length ? s[Math.min(s.length - 1, Math.max(0, Math.ceil((p / 100) * s.length) - 1))] : NaN;
}

/**
 * Throughput and latency per scenario. The scenarios run in interleaved rounds (A B C D A B
 * C D ...) so that changing background load on the machine hits all of them alike.
 */
async function throughput() {
  const model = await CausalLM.load(bundledModelPath());
  const fp = fingerprintWeights(model.weights);
  const dir = await mkdtemp(path.join(tmpdir(), 'sparsetune-bench-serve-'));
  const ids = Array.from({ length: 100 }, (_, i) => `ad${String(i).padStart(3, '0')}`);
  for (let i = 0; i < ids.length; i++) await saveAdapter(path.join(dir, ids[i]), sparseAdapter(model.weights, 0.01, 100 + i, fp));
  const server = await createServer({ model, adaptersDir: dir, maxBatch: 8, maxQueue: 1024, maxActive: 64, maxConsecutiveSteps: 8 });
  const url = await server.listen(0);
  const scenarios: [string, string[]][] = [
    ['base only', ['base']],
    ['1 adapter', ids.slice(0, 1)],
    ['10 adapters in rotation', ids.slice(0, 10)],
    ['100 adapters in rotation', ids],
  ];
  const acc = scenarios.map(() => ({ seconds: 0, tokens: 0, requests: 0, errors: 0, ms: [] as number[], ttft: [] as number[], swaps: 0, swapSeconds: 0 }));
  await runLoad(url, ['base'], 3).catch(() => {}); // warm-up (sessions, JIT); not reported
  for (let round = 0; round < ROUNDS; round++) {
    for (let k = 0; k < scenarios.length; k++) {
      const swaps0 = await metricValue(url, 'sparsetune_swaps_total');
      const swapSum0 = await metricValue(url, 'sparsetune_swap_seconds_sum');
      const r = (await runLoad(url, scenarios[k][1], LOAD_SECONDS / ROUNDS)) as { seconds: number; tokens: number; requests: number; errors: number; samples: [number, number, number][] };
      const a = acc[k];
      a.seconds += r.seconds;
      a.tokens += r.tokens;
      a.requests += r.requests;
      a.errors += r.errors;
      for (const [ms, ttft] of r.samples) {
        a.ms.push(ms);
        a.ttft.push(ttft);
      }
      a.swaps += (await metricValue(url, 'sparsetune_swaps_total')) - swaps0;
      a.swapSeconds += (await metricValue(url, 'sparsetune_swap_seconds_sum')) - swapSum0;
      console.error(`round ${round + 1} ${scenarios[k][0]}: ${(r.tokens / r.seconds).toFixed(0)} tokens/s`);
    }
  }
  await server.close();
  return scenarios.map(([label, models], k) => {
    const a = acc[k];
    return {
      scenario: label,
      adapters: models[0] === 'base' ? 0 : models.length,
      seconds: a.seconds,
      requests: a.requests,
      errors: a.errors,
      tokens: a.tokens,
      tokensPerSecond: a.tokens / a.seconds,
      requestsPerSecond: a.requests / a.seconds,
      latencyMs: { p50: percentile(a.ms, 50), p99: percentile(a.ms, 99) },
      ttftMs: { p50: percentile(a.ttft, 50), p99: percentile(a.ttft, 99) },
      swaps: a.swaps,
      swapSecondsTotal: a.swapSeconds,
    };
  });
}

const t0 = performance.now();
const loadBefore = loadavg()[0];
const stories = await CausalLM.load(bundledModelPath());
const swapRows = [...(await swapLatency('stories260K', stories.weights)), ...(await swapLatency('random llama ~30M', randomModel(LLAMA_30M).weights))];
const loadRows = await throughput();
const totalSeconds = (performance.now() - t0) / 1000;
const loadAfter = loadavg()[0];

const md = [
  '## Serving: hot swap and multi-adapter throughput',
  '',
  `Swap latency (median) of sparse additive deltas touching a fraction of every 2-D weight; "swap" = revert X + apply Y. Exact restore checked by fingerprint after each series.`,
  '',
  table(
    ['model', 'params', 'density', 'delta elements', 'apply ms', 'swap X->Y ms', 'revert ms', 'ns / element (apply)', 'exact restore'],
    swapRows.map((r) => [r.model, `${(r.params / 1e6).toFixed(2)}M`, `${r.density * 100}%`, r.nnz, r.applyMs, r.swapMs, r.revertMs, r.nsPerElement, r.exactRestore ? 'yes' : 'NO']),
  ),
  '',
  `HTTP throughput on stories260K over loopback: ${CONCURRENCY} closed-loop streaming clients in a separate process, ${MAX_TOKENS} max tokens, greedy, ${LOAD_SECONDS} s per scenario in ${ROUNDS} interleaved rounds; adapters touch 1% of every 2-D weight. Server: max batch 8 per adapter set, at most 8 consecutive model runs per set while another waits. Client and server share the 2 cores.`,
  '',
  table(
    ['scenario', 'requests', 'errors', 'tokens/s', 'requests/s', 'latency p50 ms', 'latency p99 ms', 'TTFT p50 ms', 'TTFT p99 ms', 'swaps', 'time in swaps s'],
    loadRows.map((r) => [r.scenario, r.requests, r.errors, r.tokensPerSecond, r.requestsPerSecond, r.latencyMs.p50, r.latencyMs.p99, r.ttftMs.p50, r.ttftMs.p99, r.swaps, r.swapSecondsTotal]),
  ),
  '',
  `Total benchmark time: ${totalSeconds.toFixed(0)} s. Machine load average (1 min) ${loadBefore.toFixed(1)} at start, ${loadAfter.toFixed(1)} at end, on ${cpus().length} cores: other work on the machine skews these numbers.`,
].join('\n');
writeResults('serve', { concurrency: CONCURRENCY, maxTokens: MAX_TOKENS, loadSeconds: LOAD_SECONDS, loadAverage: { start: loadBefore, end: loadAfter, cores: cpus().length }, swap: swapRows, load: loadRows, totalSeconds }, md);
