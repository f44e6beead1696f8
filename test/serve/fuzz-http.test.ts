/**
 * Property fuzz of the HTTP API: seeded random request bodies (valid bodies edited at
 * random paths, broken JSON, odd content types) on every route. Each answer is a 2xx with
 * the documented shape or a 4xx with an OpenAI-style error that explains itself; never a
 * 5xx, a hang or a crash, and afterwards the server still answers correctly with the base
 * weights bit-identical.
 */
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { bundledModelPath } from '../../src/io/model-dir.js';
import { CausalLM } from '../../src/models/causal-lm.js';
import { createServer, type SparsetuneServer } from '../../src/serve/server.js';
import { mulberry32, type Rng } from '../../src/util/random.js';
import { mutateBytes, mutateJsonTimes, pick } from '../fuzz.js';
import { changedWeights, fusedGreedy, randomSparseAdapter, snapshot, tempDir, writeAdapters } from './helpers.js';

let model: CausalLM;
let server: SparsetuneServer;
let url: string;
let original: Map<string, Uint8Array>;

beforeAll(async () => {
  model = await CausalLM.load(bundledModelPath());
  original = snapshot(model.weights);
  const dir = await tempDir('sparsetune-fuzz-http-');
  await writeAdapters(dir, {
    a: randomSparseAdapter(model.weights, { seed: 1, density: 0.03, scale: 0.2 }),
    b: randomSparseAdapter(model.weights, { seed: 2, density: 0.03, scale: 0.2 }),
    spare: randomSparseAdapter(model.weights, { seed: 3, density: 0.03, scale: 0.2 }),
  });
  // A valid adapter that is not loaded at start, for POST /v1/adapters bodies to find.
  await writeAdapters(path.join(dir, 'later'), { x: randomSparseAdapter(model.weights, { seed: 4, density: 0.03, scale: 0.2 }) });
  server = await createServer({ model, adaptersDir: dir, maxTokens: 8, maxQueue: 256, bodyLimitBytes: 32 * 1024 });
  url = await server.listen(0);
});

afterAll(async () => {
  await server?.close();
});

const VALID: Record<string, Record<string, unknown>> = {
  '/v1/completions': { model: 'a', prompt: 'Once upon a time', max_tokens: 4, temperature: 0, stream: false },
  '/v1/chat/completions': { model: 'base', messages: [{ role: 'user', content: 'Hi' }], max_tokens: 3, adapters: ['b'], stream: true },
  '/v1/adapters': { id: 'x', path: 'later/x' },
};

/** One random request: route, method, headers and body. */
function randomRequest(rand: Rng): { method: string; route: string; headers: Record<string, string>; body?: string | Uint8Array } {
  const r = rand();
  if (r < 0.08) return { method: 'DELETE', route: `/v1/adapters/${encodeURIComponent(pick(rand, ['x', 'nope', '..', 'a%2F..', 'x'.repeat(300), '']))}`, headers: {} };
  if (r < 0.12) return { method: 'GET', route: `/v1/models/${encodeURIComponent(pick(rand, ['a', 'a+b', 'base', '+', 'a+a+a', 'zz', '%00']))}`, headers: {} };
  if (r < 0.13) return { method: 'GET', route: pick(rand, ['/v1/models/%', '/v1/models/%E0%A4%A', `/v1/models/${'m'.repeat(200)}`]), headers: {} };
  const route = pick(rand, Object.keys(VALID));
  const text = JSON.stringify(mutateJsonTimes(rand, VALID[route], Math.floor(rand() * 4)));
  const how = rand();
  const headers: Record<string, string> = { 'content-type': 'application/json' };
  if (how < 0.1) return { method: 'POST', route, headers, body: mutateBytes(rand, new TextEncoder().encode(text)) };
  if (how < 0.14) return { method: 'POST', route, headers: { 'content-type': pick(rand, ['text/plain', 'application/x-www-form-urlencoded', 'application/json; charset=latin1']) }, body: text };
  if (how < 0.17) return { method: 'POST', route, headers, body: '' };
  if (how < 0.19) return { method: 'POST', route, headers, body: `[${text}]` };
  if (how < 0.21) return { method: 'POST', route, headers, body: text.replace(/"[^"]*"/, `"${'y'.repeat(40_000)}"`) };
  return { method: 'POST', route, headers, body: text };
}

describe('fuzz: HTTP bodies', () => {
  it('300 seeded requests: 2xx with the right shape or 4xx with a clear error, never 5xx', async () => {
    const rand = mulberry32(1616);
    const statuses = new Map<number, number>();
    for (let trial = 0; trial < 300; trial++) {
      const req = randomRequest(rand);
      const label = `trial ${trial}: ${req.method} ${req.route} ${String(req.body instanceof Uint8Array ? '<bytes>' : req.body).slice(0, 300)}`;
      const res = await fetch(`${url}${req.route}`, { method: req.method, headers: req.headers, body: req.body, signal: AbortSignal.timeout(30_000) });
      const text = await res.text();
      statuses.set(res.status, (statuses.get(res.status) ?? 0) + 1);
      expect(res.status, `${label} -> ${text.slice(0, 300)}`).toBeLessThan(500);
      if (res.status >= 400) {
        const body = JSON.parse(text) as { error: { message: string; type: string; code: string } };
        expect(typeof body.error.type, label).toBe('string');
        expect(body.error.message.length, `${label}: ${body.error.message}`).toBeGreaterThan(10);
        continue;
      }
      if ((res.headers.get('content-type') ?? '').includes('text/event-stream')) {
        // A stream ends with [DONE]; every other event is a JSON chunk (or an error chunk).
        const events = text.split('\n\n').filter((e) => e.startsWith('data: ')).map((e) => e.slice(6));
        expect(events[events.length - 1], label).toBe('[DONE]');
        for (const e of events.slice(0, -1)) expect(() => JSON.parse(e), label).not.toThrow();
      } else if (req.route.endsWith('completions')) {
        expect((JSON.parse(text) as { choices: unknown[] }).choices.length, label).toBeGreaterThan(0);
      }
      if (req.method === 'POST' && req.route === '/v1/adapters') {
        // Put the spare adapter back so later bodies can load it again.
        const id = (JSON.parse(text) as { id: string }).id;
        expect((await fetch(`${url}/v1/adapters/${id}`, { method: 'DELETE' })).status).toBe(200);
      }
    }
    expect(statuses.get(400) ?? 0).toBeGreaterThan(60);
    expect([...statuses.keys()].filter((s) => s < 300).reduce((n, s) => n + statuses.get(s)!, 0)).toBeGreaterThan(30);
  });

  it('found by this fuzz: errors raised before routing (over-long path parameter, bad URL encoding) have the OpenAI shape', async () => {
    for (const [route, status] of [[`/v1/adapters/${'x'.repeat(300)}`, 414], ['/v1/models/%E0%A4%A', 400]] as const) {
      const res = await fetch(`${url}${route}`, { method: route.startsWith('/v1/adapters') ? 'DELETE' : 'GET' });
      expect(res.status).toBe(status);
      const body = (await res.json()) as { error: { message: string; type: string } };
      expect(body.error.type).toBe('invalid_request_error');
      expect(body.error.message.length).toBeGreaterThan(10);
    }
  });

  it('still serves exactly afterwards, with the base weights bit-identical', async () => {
    const res = await fetch(`${url}/v1/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ model: 'base', prompt: 'Once upon a time', max_tokens: 6, temperature: 0 }),
    });
    expect(res.status).toBe(200);
    const text = ((await res.json()) as { choices: { text: string }[] }).choices[0].text;
    expect(text).toBe(await fusedGreedy(model, [], 'Once upon a time', 6));
    expect((await fetch(`${url}/health`)).status).toBe(200);
    expect(changedWeights(model.weights, original)).toEqual([]);
  });
});
