/**
 * Mixed-adapter batches over HTTP: concurrent requests for sets of every adapter kind,
 * compositions, per-request scales and the base share model runs (the mixed batch), join
 * and leave it at different times, and each answer equals the same request served alone
 * with its adapters fused. A set that must be fused (a dense 2:4 mask) runs with swaps
 * beside them. Bad adapter requests get 400/404 naming the adapter, and the base weights
 * stay bit-identical through all of it.
 */
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { bundledModelPath } from '../../src/io/model-dir.js';
import { saveAdapter } from '../../src/merge/adapter.js';
import { fingerprintWeights } from '../../src/merge/fingerprint.js';
import { scaleAdapter } from '../../src/merge/scale.js';
import { newAdapter, type Adapter } from '../../src/merge/types.js';
import { CausalLM } from '../../src/models/causal-lm.js';
import { createServer, type SparsetuneServer } from '../../src/serve/server.js';
import { changedWeights, fusedGreedy, snapshot, tempDir, writeAdapters } from './helpers.js';
import { denseMask, lora, sparse, sparseMask, structured } from './zoo.js';

let model: CausalLM;
let ref: CausalLM;
let server: SparsetuneServer;
let url: string;
let original: Map<string, Uint8Array>;
const zoo: Record<string, Adapter> = {};

async function post(body: unknown): Promise<{ status: number; json: { choices?: { text: string }[]; error?: { message: string } } }> {
  const res = await fetch(`${url}/v1/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: typeof body === 'string' ? body : JSON.stringify(body) });
  return { status: res.status, json: (await res.json()) as { choices?: { text: string }[]; error?: { message: string } } };
}

async function metric(name: string): Promise<number> {
  const text = await (await fetch(`${url}/metrics`)).text();
  return text
    .split('\n')
    .filter((l) => l.startsWith(name) && !l.startsWith('#'))
    .reduce((s, l) => s + Number(l.split(' ').pop()), 0);
}

beforeAll(async () => {
  model = await CausalLM.load(bundledModelPath());
  ref = await CausalLM.load(bundledModelPath());
  original = snapshot(model.weights);
  Object.assign(zoo, {
    sp: sparse(model, 1, 0.03, 0.3),
    sp2: sparse(model, 2, 0.01, 0.3),
    s2: structured(model, 3, 0.2),
    r4: lora(model, 4, 4, 3),
    r16: lora(model, 5, 16, 3, ['q_proj', 'v_proj']),
    mask: sparseMask(model, 6, 0.04),
    nm: denseMask(model),
  });
  const dir = await tempDir('sparsetune-mixed-');
  await writeAdapters(dir, zoo);
  const pruned = newAdapter({ method: 'pat', kind: 'pruned', base: { model: 'test', fingerprint: fingerprintWeights(model.weights) } });
  pruned.pruned = { keptChannels: Int32Array.of(0, 1, 2), configJson: { intermediate_size: 3 } };
  await saveAdapter(path.join(dir, 'pat'), pruned);
  server = await createServer({ model, adaptersDir: dir, maxBatch: 16, maxConsecutiveSteps: 4 });
  url = await server.listen(0);
});

afterAll(async () => {
  await server?.close();
});

describe('mixed-adapter batches', () => {
  it('serves every kind, compositions, scales and the base together, each as its fused single run', async () => {
    const prompt = 'Once upon a time, there was';
    const cases: { body: Record<string, unknown>; fused: Adapter[]; tokens: number; delay: number }[] = [
      { body: { model: 'base' }, fused: [], tokens: 24, delay: 0 },
      { body: { model: 'sp' }, fused: [zoo.sp], tokens: 12, delay: 0 },
      { body: { model: 's2' }, fused: [zoo.s2], tokens: 30, delay: 5 },
      { body: { model: 'r4' }, fused: [zoo.r4], tokens: 8, delay: 0 },
      { body: { model: 'r16+sp2' }, fused: [zoo.r16, zoo.sp2], tokens: 20, delay: 30 },
      { body: { model: 'mask' }, fused: [zoo.mask], tokens: 16, delay: 0 },
      { body: { model: 'mask+sp+r4' }, fused: [zoo.mask, zoo.sp, zoo.r4], tokens: 18, delay: 60 },
      { body: { model: 'base', adapters: [{ id: 'sp', scale: 0.5 }, { id: 'r16', scale: -1.5 }] }, fused: [scaleAdapter(zoo.sp, 0.5), scaleAdapter(zoo.r16, -1.5)], tokens: 14, delay: 10 },
      { body: { model: 's2', adapters: [{ id: 'sp2', scale: 2 }] }, fused: [zoo.s2, scaleAdapter(zoo.sp2, 2)], tokens: 10, delay: 90 },
      { body: { model: 'base', adapters: [{ id: 'sp', scale: 0 }] }, fused: [], tokens: 12, delay: 20 },
      { body: { model: 'nm' }, fused: [zoo.nm], tokens: 10, delay: 15 },
    ];
    const runsBefore = await metric('sparsetune_mixed_runs_total{path="unfused"}');
    const answers = await Promise.all(
      cases.map(async (c) => {
        await new Promise((r) => setTimeout(r, c.delay)); // rows join a running batch
        const r = await post({ prompt, max_tokens: c.tokens, temperature: 0, ...c.body });
        expect(r.status, JSON.stringify(r.json)).toBe(200);
        return r.json.choices![0].text;
      }),
    );
    const texts = new Set<string>();
    for (let i = 0; i < cases.length; i++) {
      expect(answers[i], JSON.stringify(cases[i].body)).toBe(await fusedGreedy(ref, cases[i].fused, prompt, cases[i].tokens));
      texts.add(answers[i]);
    }
    expect(texts.size).toBeGreaterThan(6); // the adapters really change the text
    expect(await metric('sparsetune_mixed_runs_total{path="unfused"}')).toBeGreaterThan(runsBefore);
    expect(await metric('sparsetune_unfused_rows_total')).toBeGreaterThan(30);
    expect(await metric('sparsetune_swaps_total')).toBeGreaterThan(0); // the 2:4 mask is fused for its runs
  });

  it('fuses the set every row uses, so the batch runs the one-piece graph', async () => {
    const before = await metric('sparsetune_mixed_runs_total{path="dense"}');
    const prompt = 'The little dog';
    const got = await Promise.all([0, 1, 2, 3].map(() => post({ model: 'sp', prompt, max_tokens: 24, temperature: 0 })));
    const want = await fusedGreedy(ref, [zoo.sp], prompt, 24);
    for (const r of got) expect(r.json.choices![0].text).toBe(want);
    expect(await metric('sparsetune_mixed_runs_total{path="dense"}')).toBeGreaterThan(before + 10);
  });

  it('refuses bad adapter requests with 400/404 naming the adapter, and the weights stay intact', async () => {
    const cases: [unknown, number, RegExp][] = [
      [{ model: 'sp+nope', prompt: 'x' }, 404, /"nope" does not exist/],
      [{ model: 'base', adapters: [{ id: 'ghost', scale: 1 }], prompt: 'x' }, 404, /"ghost"/],
      [{ model: 'sp', adapters: [{ id: 'sp', scale: 0.5 }], prompt: 'x' }, 400, /"sp" is asked for twice/],
      [{ model: 'base', adapters: [{ id: 'sp', scale: 'big' }], prompt: 'x' }, 400, /scale/],
      [{ model: 'base', adapters: [{ id: 'sp', scale: 1000 }], prompt: 'x' }, 400, /"sp": scale 1000 must be a finite number/],
      ['{"model":"base","prompt":"x","adapters":[{"id":"sp","scale":1e999}]}', 400, /scale/],
      [{ model: 'base', adapters: [{ id: 'mask', scale: 0.5 }], prompt: 'x' }, 400, /"mask" holds masks/],
      [{ model: 'sp+pat', prompt: 'x' }, 400, /"pat" cannot be served: .*pruned/],
      [{ model: 'base', adapters: [{ id: 'sp', scale: 1, extra: true }], prompt: 'x' }, 400, /extra|unrecognized/i],
    ];
    for (const [body, status, msg] of cases) {
      const r = await post(body);
      expect(r.status, JSON.stringify(r.json)).toBe(status);
      expect(r.json.error!.message).toMatch(msg);
    }
    await server.service.swapper.reset();
    expect(changedWeights(model.weights, original)).toEqual([]);
  });
});
