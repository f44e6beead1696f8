/**
 * Serving benchmark (`npx tsx bench/serve.ts`, under 3 minutes): throughput and latency of
 * the HTTP server on stories260K with the base alone and with 1, 10 and 100 adapters in
 * rotation, driven by a separate load-generating process (bench/serve-load.ts) over
 * loopback. Swap latency (apply/revert of sparse deltas) is measured by bench/merge.ts.
 * Writes bench/results/serve.json and serve.md.
 */
import { spawn } from 'node:child_process';
import { mkdtemp } from 'node:fs/promises';
import { cpus, loadavg, tmpdir } from 'node:os';
import * as path from 'node:path';
import { bundledModelPath } from '../src/io/model-dir.js';
import { saveAdapter } from '../src/merge/adapter.js';
import { fingerprintWeights } from '../src/merge/fingerprint.js';
import { CausalLM } from '../src/models/causal-lm.js';
import { createServer } from '../src/serve/server.js';
import { sparseAdapter } from './sparse-adapters.js';
import { table, writeResults } from './util.js';

/** Load time per scenario, split over ROUNDS interleaved rounds. */
const LOAD_SECONDS = Number(process.env.SERVE_BENCH_SECONDS ?? 15);
const ROUNDS = 3;
const CONCURRENCY = 16;
const MAX_TOKENS = 32;

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
const loadRows = await throughput();
const totalSeconds = (performance.now() - t0) / 1000;
const loadAfter = loadavg()[0];

const md = [
  '## Serving: multi-adapter throughput',
  '',
  'Swap latency (apply/revert of sparse deltas) is in the merge benchmark (bench/results/merge.md).',
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
writeResults('serve', { concurrency: CONCURRENCY, maxTokens: MAX_TOKENS, loadSeconds: LOAD_SECONDS, loadAverage: { start: loadBefore, end: loadAfter, cores: cpus().length }, load: loadRows, totalSeconds }, md);
