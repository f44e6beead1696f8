/**
 * Bad input gets the right HTTP status and an OpenAI-style JSON error, the server keeps
 * serving, and the weights stay intact: bad JSON and wrong types (400), unknown adapter or
 * route (404), oversize body (413), full queue (429), path escapes (403), missing API key (401).
 */
import { symlink, writeFile } from 'node:fs/promises';
import * as path from 'node:path';
import OpenAI from 'openai';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { bundledModelPath } from '../../src/io/model-dir.js';
import { saveAdapter } from '../../src/merge/adapter.js';
import { CausalLM } from '../../src/models/causal-lm.js';
import { createServer, type SparsetuneServer } from '../../src/serve/server.js';
import { changedWeights, randomSparseAdapter, snapshot, tempDir, writeAdapters } from './helpers.js';

const KEY = 'test-key-123456';
let model: CausalLM;
let server: SparsetuneServer;
let url: string;
let dir: string;
let outside: string;
let original: Map<string, Uint8Array>;

async function call(method: string, route: string, body?: string | object, headers: Record<string, string> = {}) {
  const res = await fetch(`${url}${route}`, {
    method,
    headers: { authorization: `Bearer ${KEY}`, ...(body !== undefined ? { 'content-type': 'application/json' } : {}), ...headers },
    body: body === undefined ? undefined : typeof body === 'string' ? body : JSON.stringify(body),
  });
  const text = await res.text();
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch {
    json = text;
  }
  return { status: res.status, json: json as { error?: { message: string; type: string; code: string } } };
}

/** Expect an OpenAI-style error with `status` (and `code` when given). */
async function expectError(p: ReturnType<typeof call>, status: number, code?: string) {
  const r = await p;
  expect(r.status, JSON.stringify(r.json)).toBe(status);
  expect(r.json.error).toBeDefined();
  expect(typeof r.json.error!.message).toBe('string');
  expect(r.json.error!.message.length).toBeGreaterThan(10);
  expect(typeof r.json.error!.type).toBe('string');
  if (code) expect(r.json.error!.code).toBe(code);
  return r.json.error!;
}

beforeAll(async () => {
  model = await CausalLM.load(bundledModelPath());
  original = snapshot(model.weights);
  dir = await tempDir('sparsetune-serve-err-');
  outside = await tempDir('sparsetune-outside-');
  await writeAdapters(dir, { a: randomSparseAdapter(model.weights, { seed: 5, density: 0.05, scale: 0.3 }) });
  await saveAdapter(path.join(outside, 'evil'), randomSparseAdapter(model.weights, { seed: 6, density: 0.05, scale: 0.3 }));
  await symlink(path.join(outside, 'evil'), path.join(dir, 'link-out'));
  // An adapter of another base: refused at start (skipped), the server still starts.
  const other = randomSparseAdapter(model.weights, { seed: 7, density: 0.01, scale: 0.1 });
  other.meta.base.fingerprint = 'sha256:0000000000000000000000000000000000000000000000000000000000000000';
  await saveAdapter(path.join(dir, 'foreign'), other);
  await writeFile(path.join(dir, 'README.txt'), 'not an adapter');
  server = await createServer({ model, adaptersDir: dir, apiKey: KEY, maxQueue: 1, maxBatch: 1, maxActive: 1, maxTokens: 64, bodyLimitBytes: 16 * 1024 });
  url = await server.listen(0);
});

afterAll(async () => {
  await server?.close();
});

describe('errors', () => {
  it('skips adapters of another base at start', () => {
    expect(server.skipped.map((s) => s.id).sort()).toEqual(['foreign', 'link-out']);
    expect(server.skipped.find((s) => s.id === 'foreign')!.error).toMatch(/fingerprint/);
    expect(server.service.registry.list().map((e) => e.id)).toEqual(['a']);
  });

  it('requires the API key everywhere but /health', async () => {
    await expectError(call('GET', '/v1/models', undefined, { authorization: '' }), 401, 'invalid_api_key');
    await expectError(call('GET', '/v1/models', undefined, { authorization: 'Bearer wrong-key-000000' }), 401, 'invalid_api_key');
    const client = new OpenAI({ baseURL: `${url}/v1`, apiKey: 'nope', maxRetries: 0 });
    await expect(client.models.list()).rejects.toMatchObject({ status: 401, error: { type: 'authentication_error' } });
    const open = await fetch(`${url}/health`);
    expect(open.status).toBe(200);
    expect(await open.json()).toEqual({ status: 'ok' }); // no details without the key
    expect((await call('GET', '/health')).json).toMatchObject({ status: 'ok', model: 'stories260K', adapters: 1 });
  });

  it('answers 400 for bad JSON, wrong types and unsupported options', async () => {
    await expectError(call('POST', '/v1/completions', '{"model": "base", "prompt": '), 400, 'invalid_json');
    await expectError(call('POST', '/v1/completions', '[1, 2]'), 400, 'bad_argument');
    await expectError(call('POST', '/v1/completions', { model: 'base', prompt: 5 }), 400, 'bad_argument');
    const e = await expectError(call('POST', '/v1/completions', { model: 'base', prompt: 'x', max_tokens: 'ten' }), 400);
    expect(e.message).toMatch(/max_tokens/);
    await expectError(call('POST', '/v1/completions', { model: 'base', prompt: 'x', temperature: -1 }), 400);
    await expectError(call('POST', '/v1/completions', { model: 'base', prompt: 'x', max_tokens: 1000 }), 400);
    await expectError(call('POST', '/v1/completions', { model: 'base', prompt: [[1, 99999]] }), 400);
    await expectError(call('POST', '/v1/completions', { model: 'base', prompt: 'x', logprobs: 30 }), 400);
    await expectError(call('POST', '/v1/chat/completions', { model: 'base', messages: [{ role: 'user', content: 'hi' }], logprobs: true }), 400);
    await expectError(call('POST', '/v1/chat/completions', { model: 'base', messages: [] }), 400);
    await expectError(call('POST', '/v1/chat/completions', { model: 'base', messages: [{ role: 'wizard', content: 'hi' }] }), 400);
    await expectError(call('POST', '/v1/adapters', { id: 'bad id!' }), 400);
    // More sequences than the queue could ever hold is a bad request, not a busy server.
    await expectError(call('POST', '/v1/completions', { model: 'base', prompt: ['a', 'b'], max_tokens: 2 }), 400);
  });

  it('answers 404 for unknown adapters and routes', async () => {
    await expectError(call('POST', '/v1/completions', { model: 'nope', prompt: 'x' }), 404, 'model_not_found');
    await expectError(call('POST', '/v1/completions', { model: 'a+nope', prompt: 'x' }), 404, 'model_not_found');
    await expectError(call('POST', '/v1/chat/completions', { model: 'base', adapters: ['zzz'], messages: [{ role: 'user', content: 'hi' }] }), 404);
    await expectError(call('GET', '/v1/nothing'), 404, 'not_found');
    await expectError(call('DELETE', '/v1/adapters/nope'), 404);
    await expectError(call('POST', '/v1/adapters', { id: 'ghost' }), 404);
  });

  it('answers 413 for an oversize body', async () => {
    await expectError(call('POST', '/v1/completions', { model: 'base', prompt: 'x'.repeat(40_000) }), 413, 'request_too_large');
  });

  it('answers 403 for adapter paths outside the adapters directory, 409 for a duplicate id', async () => {
    await expectError(call('POST', '/v1/adapters', { id: 'evil', path: '../' + path.basename(outside) + '/evil' }), 403);
    await expectError(call('POST', '/v1/adapters', { id: 'evil', path: path.join(outside, 'evil') }), 403);
    await expectError(call('POST', '/v1/adapters', { id: 'evil', path: 'link-out' }), 403);
    await expectError(call('POST', '/v1/adapters', { id: 'a' }), 409);
    await expectError(call('POST', '/v1/adapters', { id: 'foreign' }), 400, 'fingerprint_mismatch');
  });

  it('answers 429 when the queue is full', async () => {
    const long = call('POST', '/v1/completions', { model: 'a', prompt: 'Once upon a time', max_tokens: 64, temperature: 0 });
    const active = async () => ((await call('GET', '/health')).json as unknown as { active_sequences: number }).active_sequences;
    while ((await active()) < 1) await new Promise((r) => setTimeout(r, 5));
    const queued = call('POST', '/v1/completions', { model: 'base', prompt: 'Hello', max_tokens: 4 });
    while (((await call('GET', '/health')).json as unknown as { queue_depth: number }).queue_depth < 1) await new Promise((r) => setTimeout(r, 5));
    const e = await expectError(call('POST', '/v1/completions', { model: 'base', prompt: 'Hi', max_tokens: 4 }), 429, 'queue_full');
    expect(e.type).toBe('rate_limit_error');
    expect((await long).status).toBe(200);
    expect((await queued).status).toBe(200);
  });

  it('keeps serving after all of that, with intact weights', async () => {
    const r = await call('POST', '/v1/completions', { model: 'base', prompt: 'The end', max_tokens: 5, temperature: 0 });
    expect(r.status).toBe(200);
    expect(changedWeights(model.weights, original)).toEqual([]);
    const text = await (await fetch(`${url}/metrics`, { headers: { authorization: `Bearer ${KEY}` } })).text();
    expect(text).toMatch(/sparsetune_requests_total\{endpoint="\/v1\/completions",status="429"\} 1/);
    expect(text).toMatch(/sparsetune_requests_total\{endpoint="\/v1\/completions",status="400"\} \d/);
  });
});
