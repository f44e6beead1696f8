/**
 * The server over real HTTP on 127.0.0.1 with the official `openai` client: adapter outputs
 * equal the fused reference model's (also under concurrent mixed traffic, and while adapters
 * are loaded and unloaded), streaming equals non-streaming, the base weights come back
 * bit-identical, and a client disconnect cancels its generation.
 */

import * as path from 'node:path';
import OpenAI from 'openai';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { bundledModelPath } from '../../src/io/model-dir.js';
import { saveAdapter } from '../../src/merge/adapter.js';
import type { Adapter } from '../../src/merge/types.js';
import { CausalLM } from '../../src/models/causal-lm.js';
import { generateText } from '../../src/models/generate.js';
import { createServer, type SparsetuneServer } from '../../src/serve/server.js';
import { changedWeights, fusedGreedy, randomSparseAdapter, snapshot, tempDir, writeAdapters } from './helpers.js';

let model: CausalLM;
let ref: CausalLM;
let server: SparsetuneServer;
let url: string;
let client: OpenAI;
let dir: string;
let original: Map<string, Uint8Array>;
const adapters: Record<string, Adapter> = {};

/** Greedy completion text through the server. */
async function complete(modelName: string, prompt: string, maxTokens: number, extra: Record<string, unknown> = {}): Promise<string> {
  const r = await client.completions.create({ model: modelName, prompt, max_tokens: maxTokens, temperature: 0, ...extra } as OpenAI.CompletionCreateParamsNonStreaming);
  return r.choices[0].text;
}

async function metric(name: string): Promise<number> {
  const text = await (await fetch(`${url}/metrics`)).text();
  const line = text.split('\n').find((l) => l.startsWith(`${name} `));
  return line ? Number(line.split(' ')[1]) : NaN;
}

async function until(cond: () => Promise<boolean>, what: string, ms = 10_000): Promise<void> {
  const end = Date.now() + ms;
  while (!(await cond())) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

beforeAll(async () => {
  model = await CausalLM.load(bundledModelPath());
  ref = await CausalLM.load(bundledModelPath());
  original = snapshot(model.weights);
  dir = await tempDir('sparsetune-serve-');
  adapters.a = randomSparseAdapter(model.weights, { seed: 11, density: 0.05, scale: 0.3 });
  adapters.b = randomSparseAdapter(model.weights, { seed: 22, density: 0.05, scale: 0.3 });
  adapters.c = randomSparseAdapter(model.weights, { seed: 33, density: 0.02, scale: 0.5 });
  await writeAdapters(dir, { a: adapters.a, b: adapters.b });
  // Small batches and short turns, so concurrent traffic really interleaves sets and swaps.
  server = await createServer({ model, adaptersDir: dir, maxBatch: 3, maxConsecutiveSteps: 3, maxTokens: 256 });
  url = await server.listen(0);
  client = new OpenAI({ baseURL: `${url}/v1`, apiKey: 'unused', maxRetries: 0 });
});

afterAll(async () => {
  await server?.close();
});

describe('sparsetune serve over HTTP', () => {
  it('answers completions with the base, an adapter, and compositions exactly as the fused model does', async () => {
    const prompt = 'Once upon a time';
    const sets: [string, Adapter[]][] = [
      ['base', []],
      ['a', [adapters.a]],
      ['b', [adapters.b]],
      ['a+b', [adapters.a, adapters.b]],
    ];
    const outputs = new Set<string>();
    for (const [name, set] of sets) {
      const got = await complete(name, prompt, 20);
      expect(got).toBe(await fusedGreedy(ref, set, prompt, 20));
      outputs.add(got);
    }
    expect(outputs.size).toBe(4); // the adapters really change the output
    // The `adapters` field composes too, and the order of ids does not matter.
    expect(await complete('base', prompt, 20, { adapters: ['b', 'a'] })).toBe(await fusedGreedy(ref, [adapters.a, adapters.b], prompt, 20));
    expect(await complete('b+a', prompt, 20)).toBe(await fusedGreedy(ref, [adapters.a, adapters.b], prompt, 20));
  });

  it('samples reproducibly with a seed, like generateText', async () => {
    const r = await client.completions.create({ model: 'base', prompt: 'The dog', max_tokens: 16, temperature: 0.9, seed: 7 });
    const expected = await generateText(ref, 'The dog', { maxNewTokens: 16, temperature: 0.9, seed: 7 });
    expect(r.choices[0].text).toBe(expected.text);
    expect(r.usage?.completion_tokens).toBe(expected.ids.length);
  });

  it('streams completions and chat with SSE, matching the non-streamed answers', async () => {
    const stream = await client.completions.create({ model: 'a', prompt: 'The cat', max_tokens: 15, temperature: 0, stream: true, stream_options: { include_usage: true } });
    let text = '';
    let finish: string | null = null;
    let usage: OpenAI.CompletionUsage | undefined;
    for await (const chunk of stream) {
      if (chunk.usage) usage = chunk.usage;
      for (const c of chunk.choices) {
        text += c.text;
        finish = c.finish_reason ?? finish;
      }
    }
    expect(text).toBe(await complete('a', 'The cat', 15));
    expect(finish).toBe('length');
    expect(usage?.completion_tokens).toBe(15);

    const messages: OpenAI.ChatCompletionMessageParam[] = [{ role: 'user', content: 'Tell me a story.' }];
    const whole = await client.chat.completions.create({ model: 'b', messages, max_tokens: 12, temperature: 0 });
    expect(whole.object).toBe('chat.completion');
    expect(whole.choices[0].message.role).toBe('assistant');
    const chatStream = await client.chat.completions.create({ model: 'b', messages, max_tokens: 12, temperature: 0, stream: true });
    let content = '';
    let role: string | undefined;
    for await (const chunk of chatStream) {
      role ??= chunk.choices[0]?.delta.role;
      content += chunk.choices[0]?.delta.content ?? '';
    }
    expect(role).toBe('assistant');
    expect(content).toBe(whole.choices[0].message.content);
    expect(content.length).toBeGreaterThan(0);
  });

  it('serves concurrent requests for different adapter sets, each equal to its fused model alone', async () => {
    const prompts = ['Once upon a time', 'The little bird', 'Tom and Sue', 'One day, a big'];
    const sets: [string, Adapter[]][] = [
      ['base', []],
      ['a', [adapters.a]],
      ['b', [adapters.b]],
      ['a+b', [adapters.a, adapters.b]],
    ];
    const jobs = sets.flatMap(([name, set], i) =>
      prompts.slice(0, 3).map((p, j) => ({ name, set, prompt: prompts[(i + j) % prompts.length], tokens: 10 + 4 * j })),
    );
    const unfusedBefore = await metric('sparsetune_unfused_rows_total');
    const got = await Promise.all(jobs.map((j) => complete(j.name, j.prompt, j.tokens)));
    for (let k = 0; k < jobs.length; k++) {
      expect(got[k], `${jobs[k].name}: ${jobs[k].prompt}`).toBe(await fusedGreedy(ref, jobs[k].set, jobs[k].prompt, jobs[k].tokens));
    }
    // The sets shared model runs: rows of some sets ran their adapters unfused beside the others.
    expect(await metric('sparsetune_unfused_rows_total')).toBeGreaterThan(unfusedBefore);
  });

  it('loads and unloads adapters while requests are in flight', async () => {
    await saveAdapter(path.join(dir, 'late', 'c'), adapters.c);
    const prompt = 'The sun was';
    const inflight = [complete('a', prompt, 100), complete('a+b', prompt, 100), complete('b', prompt, 30)];
    // Load c (a nested directory the start-up scan did not see) and use it during the traffic.
    const loaded = await fetch(`${url}/v1/adapters`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ id: 'c', path: 'late/c' }) });
    expect(loaded.status).toBe(201);
    expect((await client.models.list()).data.map((m) => m.id)).toEqual(['base', 'a', 'b', 'c']);
    const withC = complete('c', prompt, 12);
    // Unload a while its requests still run: they finish with it, new requests get 404.
    await until(async () => (await metric('sparsetune_active_sequences')) > 0, 'a running sequence');
    const del = await fetch(`${url}/v1/adapters/a`, { method: 'DELETE' });
    expect(del.status).toBe(200);
    expect(await del.json()).toMatchObject({ id: 'a', deleted: true, in_use: 2 });
    await expect(complete('a', prompt, 5)).rejects.toMatchObject({ status: 404, error: { code: 'model_not_found' } });
    const [outA, outAB, outB] = await Promise.all(inflight);
    expect(outA).toBe(await fusedGreedy(ref, [adapters.a], prompt, 100));
    expect(outAB).toBe(await fusedGreedy(ref, [adapters.a, adapters.b], prompt, 100));
    expect(outB).toBe(await fusedGreedy(ref, [adapters.b], prompt, 30));
    expect(await withC).toBe(await fusedGreedy(ref, [adapters.c], prompt, 12));
    // Load a again (from its directory, the default path) and use it.
    const again = await fetch(`${url}/v1/adapters`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ id: 'a' }) });
    expect(again.status).toBe(201);
    expect(await complete('a+c', prompt, 10)).toBe(await fusedGreedy(ref, [adapters.a, adapters.c], prompt, 10));
    const list = (await (await fetch(`${url}/v1/adapters`)).json()) as { data: { id: string; kind: string }[] };
    expect(list.data.map((e) => e.id)).toEqual(['a', 'b', 'c']);
  });

  it('cancels the generation of a client that disconnects', async () => {
    const before = await metric('sparsetune_cancelled_sequences_total');
    const tokensBefore = await metric('sparsetune_completion_tokens_total');
    const controller = new AbortController();
    const stream = await client.completions.create(
      { model: 'b', prompt: 'Once upon a time', max_tokens: 250, temperature: 0, stream: true },
      { signal: controller.signal },
    );
    let chunks = 0;
    for await (const _ of stream) {
      if (++chunks === 2) {
        controller.abort();
        break;
      }
    }
    await until(async () => (await metric('sparsetune_cancelled_sequences_total')) > before, 'the cancellation');
    await until(async () => (await metric('sparsetune_active_sequences')) === 0, 'an idle scheduler');
    // It stopped early: far fewer than the 250 tokens asked for were generated.
    expect((await metric('sparsetune_completion_tokens_total')) - tokensBefore).toBeLessThan(200);
  });

  it('reports models, health and Prometheus metrics', async () => {
    const health = (await (await fetch(`${url}/health`)).json()) as { status: string; model: string };
    expect(health).toMatchObject({ status: 'ok', model: 'stories260K' });
    const card = await client.models.retrieve('a+b');
    expect(card.id).toBe('a+b');
    const text = await (await fetch(`${url}/metrics`)).text();
    for (const series of ['sparsetune_requests_total{', 'sparsetune_completion_tokens_total ', 'sparsetune_queue_depth ', 'sparsetune_swaps_total ', 'sparsetune_swap_seconds_bucket{le="+Inf"} ', 'sparsetune_adapter_requests_total{adapter="a"} ']) {
      expect(text).toContain(series);
    }
    expect(await metric('sparsetune_swap_seconds_count')).toBe(await metric('sparsetune_swaps_total'));
  });

  it('leaves the base weights bit-identical after all the traffic', async () => {
    await complete('base', 'Hello', 3); // the active set is now the base
    expect(changedWeights(model.weights, original)).toEqual([]);
    await complete('a+b', 'Hello', 3);
    // The cost rule may run a+b fused or unfused; the weights differ exactly when something is fused.
    expect(changedWeights(model.weights, original).length > 0).toBe(server.service.swapper.activeIds.length > 0);
    await server.close();
    expect(changedWeights(model.weights, original)).toEqual([]);
  });
});

