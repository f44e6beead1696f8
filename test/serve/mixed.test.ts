/**
 * Mixed-adapter batches over HTTP, on stories260K and tinystories-656K: concurrent requests
 * for sets of every adapter kind (sparse deltas, S2FT-style structured blocks, LoRA pairs of
 * several ranks, GS-LoRA's export, sparse masks), compositions, per-request scales and the
 * base share model runs (the mixed batch), join and leave it at different times, and each
 * answer equals the same request served alone with its adapters fused. A set that must be
 * fused (a dense 2:4 mask) runs with swaps beside them. Bad adapter requests get 400/404
 * naming the adapter and never touch the weights. Also: what is prepared for fast swaps and
 * counted in the memory budget, no compiled graph per set, and the fused-only server.
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
import { sharedModelDir } from '../helpers.js';
import { changedWeights, fusedGreedy, snapshot, tempDir, writeAdapters } from './helpers.js';
import { denseMask, gsLora, lora, sparse, sparseMask, structured } from './zoo.js';

type Json = { choices?: { text: string }[]; error?: { message: string } };

for (const name of ['stories260K', 'tinystories-656K'] as const) {
  describe(`mixed-adapter batches (${name})`, () => {
    let model: CausalLM;
    let ref: CausalLM;
    let server: SparsetuneServer;
    let url: string;
    let original: Map<string, Uint8Array>;
    let preparedAtLoad: string[];
    let dir: string;
    const zoo: Record<string, Adapter> = {};
    const load = () => CausalLM.load(name === 'stories260K' ? bundledModelPath() : sharedModelDir(name));

    async function post(body: unknown): Promise<{ status: number; json: Json }> {
      const res = await fetch(`${url}/v1/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: typeof body === 'string' ? body : JSON.stringify(body) });
      return { status: res.status, json: (await res.json()) as Json };
    }

    async function metric(m: string): Promise<number> {
      const text = await (await fetch(`${url}/metrics`)).text();
      return text
        .split('\n')
        .filter((l) => l.startsWith(m) && !l.startsWith('#'))
        .reduce((s, l) => s + Number(l.split(' ').pop()), 0);
    }

    beforeAll(async () => {
      model = await load();
      ref = await load();
      original = snapshot(model.weights);
      Object.assign(zoo, {
        sp: sparse(model, 1, 0.03, 0.3),
        sp2: sparse(model, 2, 0.01, 0.3),
        s2: structured(model, 3, 0.2),
        r4: lora(model, 4, 4, 3),
        r16: lora(model, 5, 16, 3, ['q_proj', 'v_proj']),
        gs: gsLora(model, 7),
        mask: sparseMask(model, 6, 0.04),
        nm: denseMask(model),
      });
      dir = await tempDir('sparsetune-mixed-');
      await writeAdapters(dir, zoo);
      const pruned = newAdapter({ method: 'pat', kind: 'pruned', base: { model: 'test', fingerprint: fingerprintWeights(model.weights) } });
      pruned.pruned = { keptChannels: Int32Array.of(0, 1, 2), configJson: { intermediate_size: 3 } };
      await saveAdapter(path.join(dir, 'pat'), pruned);
      server = await createServer({ model, adaptersDir: dir, maxBatch: 16, maxConsecutiveSteps: 4 });
      url = await server.listen(0);
      preparedAtLoad = server.service.registry.list().filter((e) => server.service.swapper.isPrepared(e)).map((e) => e.id);
    });

    afterAll(async () => {
      await server?.close();
    });

    it('serves every kind, compositions, scales and the base together, each as its fused single run', async () => {
      const prompt = 'Once upon a time, there was';
      const cases: { body: Record<string, unknown>; fused: Adapter[]; tokens: number; delay: number }[] = [
        { body: { model: 'base' }, fused: [], tokens: 24, delay: 0 },
        { body: { model: 'sp' }, fused: [zoo.sp], tokens: 12, delay: 0 },
        { body: { model: 's2' }, fused: [zoo.s2], tokens: 30, delay: 5 },
        { body: { model: 'r4' }, fused: [zoo.r4], tokens: 8, delay: 0 },
        { body: { model: 'gs' }, fused: [zoo.gs], tokens: 16, delay: 25 },
        { body: { model: 'r16+sp2' }, fused: [zoo.r16, zoo.sp2], tokens: 20, delay: 30 },
        { body: { model: 'mask' }, fused: [zoo.mask], tokens: 16, delay: 0 },
        { body: { model: 'mask+sp+r4' }, fused: [zoo.mask, zoo.sp, zoo.r4], tokens: 18, delay: 60 },
        { body: { model: 'base', adapters: [{ id: 'sp', scale: 0.5 }, { id: 'r16', scale: -1.5 }] }, fused: [scaleAdapter(zoo.sp, 0.5), scaleAdapter(zoo.r16, -1.5)], tokens: 14, delay: 10 },
        { body: { model: 's2', adapters: [{ id: 'sp2', scale: 2 }, { id: 'gs', scale: 0.5 }] }, fused: [zoo.s2, scaleAdapter(zoo.sp2, 2), scaleAdapter(zoo.gs, 0.5)], tokens: 10, delay: 90 },
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
      expect(texts.size).toBeGreaterThan(7); // the adapters really change the text
      // GS-LoRA's export: ranks 2, 8 and 16 in one adapter, the zeroed block left out, and it changes the text.
      expect(new Set([...zoo.gs.lowrank.values()].map((p) => p.A.shape[0]))).toEqual(new Set([2, 8, 16]));
      expect(zoo.gs.lowrank.size).toBe(3 * (model.arch.kvShape(model.config).layers - 1));
      expect(answers[0].startsWith(answers[4])).toBe(false);
      expect(await metric('sparsetune_mixed_runs_total{path="unfused"}')).toBeGreaterThan(runsBefore);
      expect(await metric('sparsetune_unfused_rows_total')).toBeGreaterThan(30);
      expect(await metric('sparsetune_swaps_total')).toBeGreaterThan(0); // the 2:4 mask is fused for its runs
    });

    it('refuses bad adapter requests with 400/404 naming the adapter, without touching the weights', async () => {
      const cases: [unknown, number, RegExp][] = [
        [{ model: 'sp+nope', prompt: 'x' }, 404, /"nope" does not exist/],
        [{ model: 'base', adapters: [{ id: 'ghost', scale: 1 }], prompt: 'x' }, 404, /"ghost"/],
        [{ model: 'sp', adapters: [{ id: 'sp', scale: 0.5 }], prompt: 'x' }, 400, /"sp" is asked for twice/],
        [{ model: 'base', adapters: [{ id: 'sp', scale: 'big' }], prompt: 'x' }, 400, /scale/],
        [{ model: 'base', adapters: [{ id: 'sp', scale: 1000 }], prompt: 'x' }, 400, /"sp": scale 1000 must be a finite number/],
        ['{"model":"base","prompt":"x","adapters":[{"id":"sp","scale":1e999}]}', 400, /scale/],
        [{ model: 'base', adapters: [{ id: 'sp', scale: null }], prompt: 'x' }, 400, /scale/],
        [{ model: 'base', adapters: [{ id: 'mask', scale: 0.5 }], prompt: 'x' }, 400, /"mask" holds masks/],
        [{ model: 'sp+pat', prompt: 'x' }, 400, /"pat" cannot be served: .*pruned/],
        [{ model: 'nm', adapters: ['pat'], prompt: 'x' }, 400, /"pat" cannot be served/],
        [{ model: 'base', adapters: [{ id: 'sp', scale: 1, extra: true }], prompt: 'x' }, 400, /extra|unrecognized/i],
      ];
      const before = snapshot(model.weights); // whatever set the weights hold now
      const swaps = await metric('sparsetune_swaps_total');
      for (const [body, status, msg] of cases) {
        const r = await post(body);
        expect(r.status, JSON.stringify(r.json)).toBe(status);
        expect(r.json.error!.message).toMatch(msg);
      }
      expect(changedWeights(model.weights, before)).toEqual([]);
      expect(await metric('sparsetune_swaps_total')).toBe(swaps);
      await server.service.swapper.reset();
      expect(changedWeights(model.weights, original)).toEqual([]);
    });

    if (name !== 'stories260K') return;

    it('fuses the set every row uses, so the batch runs the one-piece graph', async () => {
      const before = await metric('sparsetune_mixed_runs_total{path="dense"}');
      const prompt = 'The little dog';
      const got = await Promise.all([0, 1, 2, 3].map(() => post({ model: 'sp', prompt, max_tokens: 24, temperature: 0 })));
      const want = await fusedGreedy(ref, [zoo.sp], prompt, 24);
      for (const r of got) expect(r.json.choices![0].text).toBe(want);
      expect(await metric('sparsetune_mixed_runs_total{path="dense"}')).toBeGreaterThan(before + 10);
    });

    it('prepares fast swaps only where they will be used, counts them and the tables in the memory budget', async () => {
      const { registry, swapper, unfused } = server.service;
      const entry = (id: string) => registry.get(id)!;
      // Only the dense mask must be fused, so only it was prepared at load; sp was prepared
      // once the cost rule wanted it fused (previous test).
      expect(preparedAtLoad).toEqual(['nm']);
      expect(swapper.isPrepared(entry('sp'))).toBe(true);
      const prepared = ['nm', 'sp'].reduce((n, id) => n + swapper.preparedBytes([entry(id).payload()]), 0);
      expect(prepared).toBeGreaterThan(0);
      const tables = registry.list().reduce((n, e) => n + unfused!.tableBytesOf(e.uid), 0);
      expect(tables).toBe(unfused!.residentBytes);
      expect(tables).toBeGreaterThan(0);
      // The budget counts payloads, prepared forms, tables and the scaled copies requests asked for.
      expect(registry.residentBytes).toBeGreaterThanOrEqual(registry.payloadBytes + prepared + tables);
      expect(await metric('sparsetune_adapter_resident_bytes')).toBe(registry.residentBytes);
      expect(await metric('sparsetune_adapter_payload_bytes')).toBe(registry.payloadBytes);
    });

    it('compiles no graph per adapter or set: new sets reuse the one-piece and cut graphs', async () => {
      const seg = await server.service.unfused!.executor.segments();
      const before = { model: model.runtime.sessionStats.created, segments: seg.sessionStats.created };
      expect(before.segments).toBe(seg.segmentCount); // every segment built once, never rebuilt
      const prompt = 'A cat';
      const bodies = [0.25, 0.75, 1.5, -0.5].flatMap((scale) => [
        { model: 'base', adapters: [{ id: 'sp2', scale }] },
        { model: 'r4', adapters: [{ id: 's2', scale }] },
        { model: 'mask+r16', adapters: [{ id: 'gs', scale }] },
      ]);
      const got = await Promise.all(bodies.map((b) => post({ prompt, max_tokens: 4, temperature: 0, ...b })));
      for (const r of got) expect(r.status).toBe(200);
      expect(model.runtime.sessionStats.created).toBe(before.model);
      expect(seg.sessionStats.created).toBe(before.segments);
      expect(seg.sessionStats.evicted).toBe(0);
    });

    it('fused-only server: prepares every adapter at load, counts it in the budget, and answers as the fused model', async () => {
      const own = await load();
      const pristine = snapshot(own.weights);
      const fusedOnly = await createServer({ model: own, adaptersDir: dir, unfused: false, maxBatch: 4 });
      try {
        const { registry, swapper } = fusedOnly.service;
        const entries = registry.list();
        for (const e of entries) expect(swapper.isPrepared(e), e.id).toBe(true);
        const prepared = entries.reduce((n, e) => n + swapper.preparedBytes([e.payload()]), 0);
        expect(registry.residentBytes).toBe(registry.payloadBytes + prepared);
        const prompt = 'Once upon a time';
        for (const [body, fused] of [
          [{ model: 'sp' }, [zoo.sp]],
          [{ model: 'r4+s2' }, [zoo.r4, zoo.s2]],
          [{ model: 'base', adapters: [{ id: 'sp2', scale: 1.5 }] }, [scaleAdapter(zoo.sp2, 1.5)]],
        ] as [Record<string, unknown>, Adapter[]][]) {
          const r = await fusedOnly.app.inject({ method: 'POST', url: '/v1/completions', payload: { prompt, max_tokens: 10, temperature: 0, ...body } });
          expect(r.statusCode, r.body).toBe(200);
          expect(r.json().choices[0].text, JSON.stringify(body)).toBe(await fusedGreedy(ref, fused, prompt, 10));
        }
        // A scale other than 1 was prepared (and counted) before its first swap, as its own form.
        expect(registry.residentBytes).toBeGreaterThan(registry.payloadBytes + prepared);
      } finally {
        await fusedOnly.close();
      }
      expect(changedWeights(own.weights, pristine)).toEqual([]);
    });
  });
}
