/**
 * The server meeting other tools' conventions: Hugging Face PEFT LoRA directories in the
 * adapters directory and through POST /v1/adapters (greedy output equal to PEFT's forward in
 * PyTorch, from scripts/make_peft_fixtures.py); vLLM's adapter and tokenizer routes; OpenAI's
 * completions `logprobs` (through the official `openai` client, streaming and not), checked
 * against the PyTorch reference logits and a full forward pass.
 */
import { cpSync, readFileSync } from 'node:fs';
import * as path from 'node:path';
import OpenAI from 'openai';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadAdapter } from '../../src/merge/adapter.js';
import { WeightPatcher } from '../../src/merge/apply.js';
import { CausalLM } from '../../src/models/causal-lm.js';
import { createServer, type SparsetuneServer } from '../../src/serve/server.js';
import { changedWeights, snapshot, tempDir } from './helpers.js';

const FIX = path.resolve('test/fixtures/peft');
const refs = JSON.parse(readFileSync(path.join(FIX, 'reference.json'), 'utf8'));
let model: CausalLM;
let server: SparsetuneServer;
let dir: string;
let original: Map<string, Uint8Array>;
let peftText: string;
let client: OpenAI;

/** log softmax of a logits row, in float64. */
function logSoftmax(row: ArrayLike<number>): number[] {
  const max = Math.max(...Array.from(row));
  const z = Math.log(Array.from(row).reduce((s, x) => s + Math.exp(x - max), 0)) + max;
  return Array.from(row, (x) => x - z);
}

async function post(url: string, body: unknown): Promise<{ status: number; json: Record<string, any> }> {
  const r = await server.app.inject({ method: 'POST', url, payload: body as Record<string, unknown> });
  return { status: r.statusCode, json: r.json() };
}

beforeAll(async () => {
  model = await CausalLM.load(path.resolve('models/stories260K'));
  original = snapshot(model.weights);
  dir = await tempDir('sparsetune-serve-interop-');
  cpSync(path.join(FIX, 'stories260K-lora'), path.join(dir, 'peft'), { recursive: true });
  cpSync(path.join(FIX, 'stories260K-lora'), path.join(dir, 'more', 'peft2'), { recursive: true });
  server = await createServer({ model, adaptersDir: dir });
  const { prompt_ids: promptIds, generated_ids: genIds } = refs['stories260K-lora'].greedy;
  peftText = model.tokenizer!.decode([...promptIds, ...genIds]).slice(model.tokenizer!.decode(promptIds).length);
  // The fixture LoRA changes the greedy text, so matching it proves the adapter was applied.
  const baseIds = JSON.parse(readFileSync(path.resolve('test/fixtures/stories260K-reference.json'), 'utf8')).greedy.generated_ids;
  expect(peftText).not.toBe(model.tokenizer!.decode([...promptIds, ...baseIds]).slice(model.tokenizer!.decode(promptIds).length));
  client = new OpenAI({ baseURL: `${await server.listen(0)}/v1`, apiKey: 'unused', maxRetries: 0 });
});
afterAll(async () => {
  await server?.close();
  expect(changedWeights(model.weights, original)).toEqual([]);
});

describe('PEFT adapters in the server', () => {
  it('serves a PEFT directory found in the adapters directory, as PEFT computes it', async () => {
    expect(server.skipped).toEqual([]);
    const list = (await server.app.inject({ method: 'GET', url: '/v1/adapters' })).json();
    expect(list.data.map((a: { id: string; method: string }) => [a.id, a.method])).toEqual([['peft', 'peft-lora']]);
    const r = await post('/v1/completions', { model: 'peft', prompt: 'Once upon a time', max_tokens: 20, temperature: 0 });
    expect(r.status).toBe(200);
    expect(r.json.choices[0].text).toBe(peftText);
  });

  it('loads one with POST /v1/adapters', async () => {
    const r = await post('/v1/adapters', { id: 'p2', path: 'more/peft2' });
    expect(r.status).toBe(201);
    expect(r.json).toMatchObject({ id: 'p2', method: 'peft-lora', kind: 'lowrank' });
    const c = await post('/v1/completions', { model: 'p2', prompt: 'Once upon a time', max_tokens: 20, temperature: 0 });
    expect(c.json.choices[0].text).toBe(peftText);
  });
});

describe("vLLM's routes", () => {
  it('load_lora_adapter / unload_lora_adapter manage adapters under vLLM\'s names and answers', async () => {
    const load = await server.app.inject({ method: 'POST', url: '/v1/load_lora_adapter', payload: { lora_name: 'v1', lora_path: path.join(dir, 'more', 'peft2') } });
    expect(load.statusCode).toBe(200);
    expect(load.body).toBe("Success: LoRA adapter 'v1' added successfully.");
    expect((await post('/v1/completions', { model: 'v1', prompt: 'Once upon a time', max_tokens: 20, temperature: 0 })).json.choices[0].text).toBe(peftText);
    const again = await post('/v1/load_lora_adapter', { lora_name: 'v1', lora_path: 'peft' });
    expect(again.status).toBe(409);
    const inplace = await server.app.inject({ method: 'POST', url: '/v1/load_lora_adapter', payload: { lora_name: 'v1', lora_path: 'peft', load_inplace: true } });
    expect(inplace.statusCode).toBe(200);
    const outside = await post('/v1/load_lora_adapter', { lora_name: 'v2', lora_path: FIX });
    expect(outside.status).toBe(403);
    expect(outside.json.error.message).toMatch(/outside the adapters directory/);
    const unload = await server.app.inject({ method: 'POST', url: '/v1/unload_lora_adapter', payload: { lora_name: 'v1' } });
    expect(unload.body).toBe("Success: LoRA adapter 'v1' removed successfully.");
    const gone = await post('/v1/unload_lora_adapter', { lora_name: 'v1' });
    expect(gone.status).toBe(404);
    expect((await post('/v1/load_lora_adapter', { lora_name: 'x' })).json.error.message).toMatch(/lora_path/);
  });

  it('tokenize and detokenize answer vLLM\'s shapes with the model\'s tokenizer', async () => {
    const tok = model.tokenizer!;
    const t = await post('/tokenize', { prompt: 'Once upon a time', return_token_strs: true });
    expect(t.json).toEqual({ count: 5, max_model_len: model.config.maxPositionEmbeddings, tokens: [1, 403, 407, 261, 378], token_strs: [1, 403, 407, 261, 378].map((i) => tok.idToToken(i)) });
    expect((await post('/tokenize', { model: 'peft', prompt: 'Once upon a time', add_special_tokens: false })).json.tokens).toEqual([403, 407, 261, 378]);
    expect((await post('/detokenize', { tokens: [1, 403, 407, 261, 378] })).json).toEqual({ prompt: tok.decode([1, 403, 407, 261, 378], { skipSpecialTokens: false }) });
    expect((await post('/detokenize', { tokens: [403, 407, 261, 378] })).json.prompt).toBe('Once upon a time');
    expect((await post('/detokenize', { tokens: [99999] })).status).toBe(400);
    expect((await post('/tokenize', { model: 'nope', prompt: 'x' })).status).toBe(404);
    expect((await post('/tokenize', { prompt: 'x', messages: [] })).status).toBe(400);
  });
});

describe('completions logprobs', () => {
  it('match the PyTorch reference and a full forward pass, in OpenAI\'s format, streaming or not', async () => {
    const ref = refs['stories260K-lora'];
    const r = await client.completions.create({ model: 'peft', prompt: 'Once upon a time', max_tokens: 8, temperature: 0, logprobs: 3 });
    const lp = r.choices[0].logprobs!;
    expect(lp.tokens).toHaveLength(8);
    expect(lp.tokens!.join('')).toBe(r.choices[0].text);
    expect(lp.text_offset).toEqual(lp.tokens!.map((_, i) => lp.tokens!.slice(0, i).join('').length));
    // First token: against PEFT's forward in PyTorch (float64).
    const first = logSoftmax(ref.logits[0][4]);
    expect(Math.abs(lp.token_logprobs![0] - first[ref.greedy.generated_ids[0]])).toBeLessThan(1e-4);
    // Every token: against one forward pass over prompt + completion with the adapter fused.
    const ids = [...ref.greedy.prompt_ids, ...ref.greedy.generated_ids.slice(0, 8)];
    const fusedModel = await CausalLM.load(path.resolve('models/stories260K'));
    new WeightPatcher(fusedModel.weights).apply(await loadAdapter(path.join(FIX, 'stories260K-lora')));
    const logits = await fusedModel.logits([ids]);
    const V = logits.shape[2];
    for (let i = 0; i < 8; i++) {
      const row = logSoftmax(logits.data.subarray((4 + i) * V, (5 + i) * V));
      expect(Math.abs(lp.token_logprobs![i] - row[ids[5 + i]]), `token ${i}`).toBeLessThan(1e-4);
      const best = row.map((v, id) => [v, id]).sort((a, b) => b[0] - a[0]).slice(0, 3);
      const top = lp.top_logprobs![i];
      expect(Object.keys(top).length).toBeLessThanOrEqual(4);
      for (const [v, id] of best) expect(Math.abs(top[model.tokenizer!.decode([...ids.slice(0, 5 + i), id]).slice(model.tokenizer!.decode(ids.slice(0, 5 + i)).length)] - v)).toBeLessThan(1e-4);
    }
    // Streaming: the same entries, split over the chunks, offsets continuing.
    const stream = await client.completions.create({ model: 'peft', prompt: 'Once upon a time', max_tokens: 8, temperature: 0, logprobs: 3, stream: true });
    const got = { tokens: [] as string[], token_logprobs: [] as number[], text_offset: [] as number[] };
    for await (const chunk of stream) {
      const c = chunk.choices[0]?.logprobs;
      if (!c) continue;
      got.tokens.push(...c.tokens!);
      got.token_logprobs.push(...c.token_logprobs!);
      got.text_offset.push(...c.text_offset!);
    }
    expect(got).toEqual({ tokens: lp.tokens, token_logprobs: lp.token_logprobs, text_offset: lp.text_offset });
    expect((await post('/v1/completions', { model: 'peft', prompt: 'x', logprobs: 21 })).status).toBe(400);
    expect((await post('/v1/completions', { model: 'peft', prompt: 'x' })).json.choices[0].logprobs).toBeNull();
  });
});
