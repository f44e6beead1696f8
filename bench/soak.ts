/**
 * Soak test of the server (`npm run bench -- soak`; not part of `npm test`): 200 concurrent
 * streaming clients over 50 adapters (sparse additive, LoRA, S2FT-style structured) and
 * compositions of them, on loopback, for at least 60 s and 10,000 requests, while adapters
 * are unloaded and loaded again during traffic. Driven through the HTTP API only; the
 * server runs in its own process (bench/soak-server.ts). Checks: 0 errors, 0 crashes,
 * every greedy output equal to the same request run alone, server RSS flat after warm-up,
 * and the base weights bit-identical (fingerprint) at the end.
 *
 *   npm run bench -- soak
 *   node --import tsx bench/soak.ts --concurrency 200 --adapters 50 --duration-s 60 --min-requests 10000
 */
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { createInterface } from 'node:readline';
import { parseArgs } from 'node:util';
import { bundledModelPath, loadModel } from '../src/io/model-dir.js';
import { saveAdapter } from '../src/merge/adapter.js';
import { fingerprintWeights } from '../src/merge/fingerprint.js';
import { newAdapter, type Adapter } from '../src/merge/types.js';
import type { HostTensor } from '../src/tensor.js';
import { mulberry32, type Rng } from '../src/util/random.js';
import { table, writeResults } from './util.js';

const { values } = parseArgs({
  options: {
    concurrency: { type: 'string', default: '200' },
    adapters: { type: 'string', default: '50' },
    'duration-s': { type: 'string', default: '60' },
    'min-requests': { type: 'string', default: '10000' },
    'max-duration-s': { type: 'string', default: '1200' },
    'max-tokens': { type: 'string', default: '8' },
    seed: { type: 'string', default: '16' },
  },
});
const CONCURRENCY = Number(values.concurrency);
const N_ADAPTERS = Number(values.adapters);
const DURATION_S = Number(values['duration-s']);
const MIN_REQUESTS = Number(values['min-requests']);
const MAX_DURATION_S = Number(values['max-duration-s']);
const MAX_TOKENS = Number(values['max-tokens']);
const PROMPTS = ['Once upon a time', 'The little dog'];

// ---------------------------------------------------------------- adapters

const normal = (r: Rng) => (r() + r() + r() - 1.5) * 2;

function sortedSubset(r: Rng, n: number, fraction: number): Int32Array {
  const out: number[] = [];
  for (let i = 0; i < n; i++) if (r() < fraction) out.push(i);
  if (out.length === 0) out.push(Math.floor(r() * n));
  return Int32Array.from(out);
}

/** A sparse additive delta on ~1% of every 2-D weight. */
function sparseAdapter(weights: Map<string, HostTensor<'f32'>>, fp: string, r: Rng, id: string): Adapter {
  const a = newAdapter({ method: 'soak-sparse', kind: 'additive', base: { model: 'stories260K', fingerprint: fp }, config: { id } });
  for (const [name, t] of weights) {
    if (t.shape.length !== 2) continue;
    const indices = sortedSubset(r, t.data.length, 0.01);
    a.additive.set(name, { indices, values: Float32Array.from(indices, () => normal(r) * 0.3) });
  }
  return a;
}

/** LoRA (rank 4) on every q_proj and v_proj. */
function loraAdapter(weights: Map<string, HostTensor<'f32'>>, fp: string, r: Rng, id: string): Adapter {
  const a = newAdapter({ method: 'soak-lora', kind: 'lowrank', base: { model: 'stories260K', fingerprint: fp }, config: { id, r: 4 } });
  for (const [name, t] of weights) {
    if (!/(q_proj|v_proj)\.weight$/.test(name)) continue;
    const [out, inF] = t.shape;
    a.lowrank.set(name, {
      A: { dtype: 'f32', shape: [4, inF], data: Float32Array.from({ length: 4 * inF }, () => normal(r) * 0.3) },
      B: { dtype: 'f32', shape: [out, 4], data: Float32Array.from({ length: out * 4 }, () => normal(r) * 0.3) },
      scale: 2,
    });
  }
  return a;
}

/** S2FT-style structured deltas: dense columns of every o_proj and down_proj (selected heads / channels). */
function s2ftAdapter(weights: Map<string, HostTensor<'f32'>>, fp: string, r: Rng, id: string): Adapter {
  const a = newAdapter({ method: 'soak-s2ft', kind: 'structured', base: { model: 'stories260K', fingerprint: fp }, config: { id } });
  for (const [name, t] of weights) {
    if (!/(o_proj|down_proj)\.weight$/.test(name)) continue;
    const [out, inF] = t.shape;
    const cols = sortedSubset(r, inF, 0.1);
    a.structured.set(name, { cols, values: Float32Array.from({ length: out * cols.length }, () => normal(r) * 0.2), shape: [out, inF] });
  }
  return a;
}

// ---------------------------------------------------------------- the server process

interface ServerProc {
  url: string;
  pid: number;
  fingerprint: string;
  ask(cmd: string): Promise<Record<string, unknown>>;
  exited: () => { code: number | null; signal: string | null } | null;
}

async function startServer(adaptersDir: string): Promise<ServerProc> {
  const child = spawn(process.execPath, ['--import', 'tsx', path.join(import.meta.dirname, 'soak-server.ts'), '--model', bundledModelPath(), '--adapters', adaptersDir], {
    stdio: ['pipe', 'pipe', 'inherit'],
    env: { ...process.env, SPARSETUNE_THREADS: process.env.SPARSETUNE_THREADS ?? '1' },
  });
  let exit: { code: number | null; signal: string | null } | null = null;
  child.on('exit', (code, signal) => (exit = { code, signal }));
  const lines = createInterface({ input: child.stdout! });
  const waiting: ((o: Record<string, unknown>) => void)[] = [];
  lines.on('line', (l) => waiting.shift()?.(JSON.parse(l) as Record<string, unknown>));
  const next = () => new Promise<Record<string, unknown>>((resolve) => waiting.push(resolve));
  const hello = await next();
  return {
    url: hello.url as string,
    pid: hello.pid as number,
    fingerprint: hello.fingerprint as string,
    ask: (cmd) => {
      const p = next();
      child.stdin!.write(`${cmd}\n`);
      return p;
    },
    exited: () => exit,
  };
}

// ---------------------------------------------------------------- requests

/** One greedy streamed completion; resolves to its text or throws with why it failed. */
async function complete(url: string, model: string, prompt: string): Promise<string> {
  // Until the response starts, the server may not have taken the adapters yet (see churner).
  for (const m of model.split('+')) awaitingStart.set(m, (awaitingStart.get(m) ?? 0) + 1);
  let res: Response;
  try {
    res = await fetch(`${url}/v1/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ model, prompt, max_tokens: MAX_TOKENS, temperature: 0, stream: true }),
      signal: AbortSignal.timeout(120_000),
    });
  } finally {
    for (const m of model.split('+')) awaitingStart.set(m, awaitingStart.get(m)! - 1);
  }
  if (!res.ok || !res.body) throw new Error(`HTTP ${res.status} for ${model}: ${(await res.text()).slice(0, 200)}`);
  const text = await res.text();
  let out = '';
  let done = false;
  for (const event of text.split('\n\n')) {
    if (!event.startsWith('data: ')) continue;
    const data = event.slice(6);
    if (data === '[DONE]') {
      done = true;
      continue;
    }
    const chunk = JSON.parse(data) as { error?: { message: string }; choices?: { text?: string }[] };
    if (chunk.error) throw new Error(`stream error for ${model}: ${chunk.error.message}`);
    out += chunk.choices?.[0]?.text ?? '';
  }
  if (!done) throw new Error(`stream for ${model} ended without [DONE]`);
  return out;
}

async function call(url: string, method: string, route: string, body?: unknown): Promise<number> {
  return (await callJson(url, method, route, body)).status;
}

async function callJson(url: string, method: string, route: string, body?: unknown): Promise<{ status: number; json: Record<string, unknown> }> {
  const res = await fetch(`${url}${route}`, { method, headers: body ? { 'content-type': 'application/json' } : {}, body: body ? JSON.stringify(body) : undefined });
  const text = await res.text();
  let json: Record<string, unknown> = {};
  try {
    json = JSON.parse(text) as Record<string, unknown>;
  } catch {
    // not JSON: the status says enough
  }
  return { status: res.status, json };
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
/** Requests per adapter id sent but not yet answered with response headers. */
const awaitingStart = new Map<string, number>();

// ---------------------------------------------------------------- main

const t0 = performance.now();
const tmp = mkdtempSync(path.join(tmpdir(), 'sparsetune-soak-'));
const adaptersDir = path.join(tmp, 'adapters');
const base = await loadModel(bundledModelPath());
const fp = fingerprintWeights(base.weights);
const rand = mulberry32(Number(values.seed));
const ids: string[] = [];
const kinds: Record<string, string> = {};
for (let k = 0; k < N_ADAPTERS; k++) {
  const kind = ['sparse', 'lora', 's2ft'][k % 3];
  const id = `${kind}-${k}`;
  const make = kind === 'sparse' ? sparseAdapter : kind === 'lora' ? loraAdapter : s2ftAdapter;
  await saveAdapter(path.join(adaptersDir, id), make(base.weights, fp, rand, id));
  ids.push(id);
  kinds[id] = kind;
}
const SPARES = 5;
for (let k = 0; k < SPARES; k++) await saveAdapter(path.join(adaptersDir, 'spare', `extra-${k}`), sparseAdapter(base.weights, fp, rand, `extra-${k}`));
// Compositions: a delta from each kind with another.
const compositions: string[] = [];
for (let k = 0; k + 4 < ids.length && compositions.length < 10; k += 5) compositions.push(`${ids[k]}+${ids[k + 1]}`, `${ids[k + 2]}+${ids[k + 4]}`);
const churned = new Set(ids.slice(-10));
const targets = ['base', ...ids, ...compositions];

const server = await startServer(adaptersDir);
console.log(`server ${server.url} (pid ${server.pid}); ${ids.length} adapters, ${compositions.length} compositions; references...`);

// Isolated runs: each target and prompt alone, one request in flight.
const reference = new Map<string, string>();
for (const target of targets) for (const prompt of PROMPTS) reference.set(`${target}\n${prompt}`, await complete(server.url, target, prompt));
const distinct = new Set(reference.values()).size;
console.log(`${reference.size} reference outputs (${distinct} distinct); load: ${CONCURRENCY} clients`);

const available = new Set(targets);
const isAvailable = (t: string) => available.has(t);
let running = true;
let requests = 0;
let tokensOut = 0;
let errors = 0;
let mismatches = 0;
const errorSamples: string[] = [];
const latencies: number[] = [];
const note = (msg: string) => {
  if (errorSamples.length < 10) errorSamples.push(msg);
};

async function client(r: Rng): Promise<void> {
  while (running) {
    const pool = targets.filter(isAvailable);
    const target = pool[Math.floor(r() * pool.length)];
    const prompt = PROMPTS[Math.floor(r() * PROMPTS.length)];
    const start = performance.now();
    try {
      const text = await complete(server.url, target, prompt);
      latencies.push(performance.now() - start);
      requests++;
      tokensOut += MAX_TOKENS;
      if (text !== reference.get(`${target}\n${prompt}`)) {
        mismatches++;
        note(`mismatch for ${target} / ${prompt}: ${JSON.stringify(text)} vs ${JSON.stringify(reference.get(`${target}\n${prompt}`))}`);
      }
    } catch (err) {
      errors++;
      requests++;
      note((err as Error).message);
    }
  }
}

const churn = { unloads: 0, whileInUse: 0, loads: 0, failures: 0, spareLoads: 0, spareUnloads: 0 };
async function churner(r: Rng): Promise<void> {
  let spare = 0;
  let spareLoaded: string | null = null;
  while (running) {
    // Of the churned adapters, one with the fewest requests not yet started (shortest wait).
    const pick = [...churned].filter((id) => available.has(id)).sort((x, y) => (awaitingStart.get(x) ?? 0) - (awaitingStart.get(y) ?? 0) || (r() < 0.5 ? -1 : 1));
    const id = pick[0];
    // No new requests for it (or compositions with it). Requests already answering (streaming)
    // hold it and must finish with it through the unload; those not yet started are waited for.
    for (const t of [...available]) if (t === id || t.split('+').includes(id)) available.delete(t);
    while ((awaitingStart.get(id) ?? 0) > 0) await sleep(1);
    await sleep(r() * 20);
    const deleted = await callJson(server.url, 'DELETE', `/v1/adapters/${id}`);
    const del = deleted.status;
    if (typeof deleted.json.in_use === 'number' && deleted.json.in_use > 0) churn.whileInUse++;
    const add = await call(server.url, 'POST', '/v1/adapters', { id });
    churn.unloads++;
    churn.loads++;
    if (del !== 200 || add !== 201) {
      churn.failures++;
      note(`churn ${id}: DELETE ${del}, POST ${add}`);
    }
    // One adapter is out at a time, so everything that needs it can come back.
    for (const t of targets) if (t.split('+').includes(id)) available.add(t);
    // An adapter nobody asks for comes and goes too.
    if (spareLoaded) {
      if ((await call(server.url, 'DELETE', `/v1/adapters/${spareLoaded}`)) !== 200) churn.failures++;
      churn.spareUnloads++;
      spareLoaded = null;
    } else {
      spareLoaded = `extra-${spare++ % SPARES}`;
      if ((await call(server.url, 'POST', '/v1/adapters', { id: spareLoaded, path: `spare/${spareLoaded}` })) !== 201) churn.failures++;
      churn.spareLoads++;
    }
    await sleep(200 + r() * 200);
  }
}

const samples: { s: number; requests: number; rss: number; sessions: number }[] = [];
const loadStart = performance.now();
const clients = Array.from({ length: CONCURRENCY }, (_, k) => client(mulberry32(1000 + k)));
const churning = churner(mulberry32(7));
let crashes = 0;
for (;;) {
  await sleep(1000);
  const s = (performance.now() - loadStart) / 1000;
  if (server.exited()) {
    crashes++;
    break;
  }
  const st = await server.ask('stats');
  samples.push({ s, requests, rss: st.rss as number, sessions: st.sessions as number });
  if (Math.round(s) % 10 === 0) console.log(`${s.toFixed(0)} s: ${requests} requests, ${errors} errors, ${mismatches} mismatches, rss ${((st.rss as number) / 2 ** 20).toFixed(1)} MiB, ${String(st.sessions)} sessions`);
  if ((s >= DURATION_S && requests >= MIN_REQUESTS) || s >= MAX_DURATION_S) break;
}
running = false;
await Promise.all([...clients, churning]);
const loadSeconds = (performance.now() - loadStart) / 1000;

// After the load: every target alone again gives the reference text.
let afterMismatches = 0;
if (!server.exited()) {
  for (const target of targets) for (const prompt of PROMPTS) if ((await complete(server.url, target, prompt)) !== reference.get(`${target}\n${prompt}`)) afterMismatches++;
}
const final = server.exited() ? null : await server.ask('close');
if (!final) crashes++;

// RSS after warm-up (the first quarter of the requests): least-squares slope per request.
const warm = samples.filter((x) => x.requests >= requests / 4);
const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / xs.length;
const mx = mean(warm.map((x) => x.requests));
const my = mean(warm.map((x) => x.rss));
const slope = warm.reduce((a, x) => a + (x.requests - mx) * (x.rss - my), 0) / Math.max(1e-9, warm.reduce((a, x) => a + (x.requests - mx) ** 2, 0));
const growthPer10k = slope * 10_000;
const rssWarm = warm[0]?.rss ?? NaN;
const rssEnd = warm[warm.length - 1]?.rss ?? NaN;
const rssMax = Math.max(...warm.map((x) => x.rss));
const rssFlat = growthPer10k < Math.max(16 * 2 ** 20, 0.05 * my);
latencies.sort((a, b) => a - b);
const pct = (p: number) => latencies[Math.min(latencies.length - 1, Math.floor(p * latencies.length))];
const fingerprintEqual = final !== null && final.fingerprintBefore === final.fingerprintAfter && final.fingerprintAfter === fp;
const pass = errors === 0 && crashes === 0 && mismatches === 0 && afterMismatches === 0 && churn.failures === 0 && rssFlat && fingerprintEqual && requests >= MIN_REQUESTS;
const mib = (b: number) => (b / 2 ** 20).toFixed(1);

const result = {
  pass,
  config: { concurrency: CONCURRENCY, adapters: N_ADAPTERS, kinds: { sparse: ids.filter((i) => kinds[i] === 'sparse').length, lora: ids.filter((i) => kinds[i] === 'lora').length, s2ft: ids.filter((i) => kinds[i] === 's2ft').length }, compositions: compositions.length, maxTokens: MAX_TOKENS, prompts: PROMPTS, durationS: DURATION_S, minRequests: MIN_REQUESTS },
  loadSeconds,
  requests,
  requestsPerSecond: requests / loadSeconds,
  completionTokensPerSecond: tokensOut / loadSeconds,
  latencyMs: { p50: pct(0.5), p99: pct(0.99) },
  errors,
  errorSamples,
  crashes,
  mismatches,
  afterMismatches,
  referenceOutputs: reference.size,
  distinctReferenceOutputs: distinct,
  churn,
  rss: { warmMiB: rssWarm / 2 ** 20, endMiB: rssEnd / 2 ** 20, maxMiB: rssMax / 2 ** 20, growthPer10kRequestsMiB: growthPer10k / 2 ** 20, flat: rssFlat },
  sessions: { last: samples[samples.length - 1]?.sessions, max: Math.max(...samples.map((x) => x.sessions)), final: final?.sessionStats ?? null },
  fingerprint: { before: fp, after: final?.fingerprintAfter ?? null, equal: fingerprintEqual },
  samples,
  totalSeconds: (performance.now() - t0) / 1000,
  loadAverage: (await import('node:os')).loadavg(),
};

const md = [
  '## Soak: 200 concurrent streaming clients over 50 adapters, with loads and unloads during traffic',
  '',
  `stories260K on loopback; server in its own process (1 ORT thread); ${CONCURRENCY} closed-loop streaming clients, greedy, ${MAX_TOKENS} tokens, over ${N_ADAPTERS} adapters (${result.config.kinds.sparse} sparse additive at 1%, ${result.config.kinds.lora} LoRA r=4 on q/v, ${result.config.kinds.s2ft} S2FT-style structured columns of o/down) and ${compositions.length} two-adapter compositions; 10 adapters unloaded and reloaded in turn during traffic (${churn.unloads} times, ${churn.whileInUse} of them while requests were streaming with the adapter), spare adapters loaded and unloaded (${churn.spareLoads} + ${churn.spareUnloads}). Every output is compared with the same request run alone before the load (${reference.size} references, ${distinct} distinct texts) and again after it. Command: \`npm run bench -- soak\`.`,
  '',
  table(
    ['requests', 'seconds', 'req/s', 'tokens/s', 'p50 ms', 'p99 ms', 'errors', 'crashes', 'mismatches (during / after)', 'RSS warm -> end MiB', 'RSS growth / 10k req MiB', 'sessions (max)', 'base bit-identical', 'pass'],
    [[requests, loadSeconds, result.requestsPerSecond, result.completionTokensPerSecond, pct(0.5), pct(0.99), errors, crashes, `${mismatches} / ${afterMismatches}`, `${mib(rssWarm)} -> ${mib(rssEnd)}`, result.rss.growthPer10kRequestsMiB, result.sessions.max, fingerprintEqual ? 'yes' : 'NO', pass ? 'yes' : 'NO']],
  ),
  '',
  errorSamples.length ? `First problems: ${errorSamples.map((e) => `\`${e.slice(0, 160)}\``).join('; ')}` : 'No errors.',
  '',
  `Total time ${result.totalSeconds.toFixed(0)} s; load average ${result.loadAverage.map((x) => x.toFixed(1)).join(' ')} at the end (2 shared cores: other work on the machine slows the server; the checks do not depend on speed).`,
  '',
].join('\n');
writeResults('soak', result, md);
rmSync(tmp, { recursive: true, force: true });
process.exit(pass ? 0 : 1);
