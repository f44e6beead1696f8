/**
 * The server meeting other tools' conventions: Hugging Face PEFT LoRA directories in the
 * adapters directory and through POST /v1/adapters (greedy output equal to PEFT's forward in
 * PyTorch, from scripts/make_peft_fixtures.py).
 */
import { cpSync, readFileSync } from 'node:fs';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
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
  peftText = model.tokenizer!.decode(refs['stories260K-lora'].greedy.generated_ids);
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
