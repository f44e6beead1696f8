import { describe, expect, it } from 'vitest';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { CausalLM } from '../../src/models/causal-lm.js';
import { bundledModelPath } from '../../src/io/model-dir.js';
import { loadDataset, splitHoldout, collate, type TokenizedExample } from '../../src/io/datasets.js';
import { Trainer } from '../../src/train/trainer.js';
import { WeightPatcher } from '../../src/merge/apply.js';
import { saveAdapter } from '../../src/merge/adapter.js';
import { fingerprintWeights } from '../../src/merge/fingerprint.js';
import type { Adapter } from '../../src/merge/types.js';
import { LtSftMethod, createMethod, resolveLtSftConfig } from '../../src/masks/lt-sft.js';
import { selectTopKByDelta, type SelectionTensor } from '../../src/masks/lt-sft-select.js';
import { mulberry32 } from '../../src/util/random.js';
import { sameBits, snapshotWeights } from '../helpers.js';

const FIX = join(import.meta.dirname, '..', 'fixtures', 'models');
const DATA = join(import.meta.dirname, '..', '..', '..', 'shared', 'data');

/** Random token windows over a small sub-vocabulary (so the model has something to learn). */
function tokenData(seed: number, n: number, len: number, vocab: number): TokenizedExample[] {
  const r = mulberry32(seed);
  const sub = Array.from({ length: 8 }, () => 3 + Math.floor(r() * (vocab - 3)));
  return Array.from({ length: n }, () => {
    const ids = Array.from({ length: len }, (_, t) => (t === 0 ? 1 : sub[Math.floor(r() * sub.length)]));
    return { inputIds: ids, labels: [...ids] };
  });
}

/** Names of tensors whose bits differ from `snap`. */
function changedBits(model: CausalLM, snap: Map<string, Float32Array>): string[] {
  return [...model.weights].filter(([k, v]) => !sameBits(v.data, snap.get(k)!)).map(([k]) => k);
}

async function trainSft(model: CausalLM, config: Record<string, unknown>, data: TokenizedExample[], opts: { sources?: Adapter[]; steps?: number; weightDecay?: number } = {}) {
  const method = new LtSftMethod(model, config, { sources: opts.sources });
  const trainer = new Trainer(model, method, { steps: opts.steps ?? 6, batchSize: 4, optimizer: { lr: 1e-2, weightDecay: opts.weightDecay ?? 0 }, seed: 3 });
  const result = await trainer.train(data);
  return { method, result };
}

describe('selectTopKByDelta (global streaming top-K)', () => {
  it('picks exactly k entries, all at least as changed as any candidate left out, ignoring masked ones', () => {
    const r = mulberry32(7);
    for (let trial = 0; trial < 20; trial++) {
      const tensors: SelectionTensor[] = Array.from({ length: 1 + Math.floor(r() * 4) }, (_, t) => {
        const n = 1 + Math.floor(r() * 3000);
        const reference = Float32Array.from({ length: n }, () => r() - 0.5);
        // Quantized changes make many exact ties; some entries do not change at all.
        const current = reference.map((v) => (r() < 0.2 ? v : v + Math.round((r() - 0.5) * 40) / 64));
        const mask = Uint8Array.from({ length: n }, () => (r() < 0.1 ? 1 : 0));
        return { name: `t${t}`, current, reference, mask };
      });
      const before = tensors.map((t) => t.mask.slice());
      const candidates = tensors.reduce((s, t) => s + t.mask.reduce((a, b) => a + (b ? 0 : 1), 0), 0);
      const k = Math.floor(r() * (candidates + 1));
      const res = selectTopKByDelta(tensors, k);
      expect(res.picked).toBe(k);
      expect(res.candidates).toBe(candidates);
      let minPicked = Infinity;
      let maxLeft = -Infinity;
      let newly = 0;
      tensors.forEach((t, ti) => {
        for (let i = 0; i < t.mask.length; i++) {
          if (before[ti][i]) {
            expect(t.mask[i]).toBe(1);
            continue;
          }
          const d = Math.fround(Math.abs(t.current[i] - t.reference[i]));
          if (t.mask[i]) {
            newly++;
            minPicked = Math.min(minPicked, d);
          } else maxLeft = Math.max(maxLeft, d);
        }
      });
      expect(newly).toBe(k);
      if (k > 0 && k < candidates) {
        expect(minPicked).toBeGreaterThanOrEqual(maxLeft);
        expect(res.threshold).toBe(minPicked);
      }
      // Brute force: the k-th largest candidate |delta| is the threshold.
      if (k > 0) {
        const all: number[] = [];
        tensors.forEach((t, ti) => t.current.forEach((v, i) => !before[ti][i] && all.push(Math.fround(Math.abs(v - t.reference[i])))));
        all.sort((a, b) => b - a);
        expect(res.threshold).toBe(all[k - 1]);
      }
    }
  });

  it("ties 'all' (the official |delta| >= threshold) takes every tie at the K-th value, but never an unchanged entry", () => {
    const mk = (deltas: number[]): SelectionTensor => ({ name: 'a', current: Float32Array.from(deltas), reference: new Float32Array(deltas.length), mask: new Uint8Array(deltas.length) });
    const t = mk([0.5, 0.25, 0.25, 0.25, 0.125, 0]);
    expect(selectTopKByDelta([t], 2, { ties: 'all' })).toMatchObject({ picked: 4, tiesPicked: 3, threshold: 0.25 });
    expect([...t.mask]).toEqual([1, 1, 1, 1, 0, 0]);
    const first = mk([0.5, 0.25, 0.25, 0.25, 0.125, 0]);
    expect(selectTopKByDelta([first], 2).picked).toBe(2);
    expect([...first.mask]).toEqual([1, 1, 0, 0, 0, 0]);
    // K beyond the changed entries: the zero threshold does not unmask the unchanged ones.
    const z = mk([0.5, 0, 0, -0.25]);
    expect(selectTopKByDelta([z], 3, { ties: 'all' }).picked).toBe(2);
    expect([...z.mask]).toEqual([1, 0, 0, 1]);
  });

  it('refuses k above the number of unselected entries', () => {
    const t: SelectionTensor = { name: 'a', current: new Float32Array(4), reference: new Float32Array(4), mask: Uint8Array.from([1, 0, 0, 0]) };
    expect(() => selectTopKByDelta([t], 4)).toThrow(/only 3 maskable entries/);
  });
});

describe('LT-SFT config and maskable tensors', () => {
  it('resolves defaults by purpose and rejects bad configs', () => {
    expect(resolveLtSftConfig({ purpose: 'language' })).toMatchObject({ density: 0.04, l1: 0.1, count: null });
    expect(resolveLtSftConfig({})).toMatchObject({ purpose: 'task', density: 0.08, l1: 0 });
    expect(resolveLtSftConfig({ count: 10 })).toMatchObject({ density: null, count: 10 });
    expect(() => resolveLtSftConfig({ count: 10, density: 0.1 })).toThrow(/not both/);
    expect(() => resolveLtSftConfig({ density: 2 })).toThrow(/density/);
  });

  it('masks q,k,v,o,gate,up,down and the tied embedding once; never norms; untied head frozen', async () => {
    const tied = await CausalLM.load(join(FIX, 'llama-mha-tied'));
    const m = new LtSftMethod(tied, {});
    const names = m.tensors.map((t) => t.name);
    expect(names.filter((n) => n === 'model.embed_tokens.weight')).toHaveLength(1);
    expect(names.some((n) => n.includes('norm') || n.includes('lm_head'))).toBe(false);
    expect(names).toHaveLength(2 * 7 + 1);
    for (const t of m.tensors) expect(t.data).toBe(tied.weights.get(t.name)!.data);
    expect(m.budget).toBe(Math.floor(0.08 * m.maskableEntries));

    const untied = await CausalLM.load(join(FIX, 'llama-gqa'));
    expect(new LtSftMethod(untied, {}).tensors.map((t) => t.name)).not.toContain('lm_head.weight');
    const gpt2 = await CausalLM.load(join(FIX, 'gpt2'));
    const gnames = new LtSftMethod(gpt2, {}).tensors.map((t) => t.name);
    expect(gnames).toContain('transformer.wte.weight');
    expect(gnames.some((n) => n.includes('wpe') || n.includes('ln_') || n.endsWith('.bias'))).toBe(false);
  });

  it('trains an untied head densely for task SFTs (rewound between phases, exported whole), never for language SFTs', async () => {
    const model = await CausalLM.load(join(FIX, 'llama-gqa'));
    const head = model.weights.get('lm_head.weight')!.data;
    const h0 = head.slice();
    const data = tokenData(4, 16, 10, model.vocabSize);
    const lang = await trainSft(model, { purpose: 'language', count: 50 }, data, { steps: 2 });
    expect(lang.method.head).toBeNull();
    expect(sameBits(head, h0)).toBe(true);
    const la = lang.method.export(model);
    expect(la.additive.has('lm_head.weight')).toBe(false);

    let afterPhase1: Float32Array | null = null;
    const task = new LtSftMethod(model, { purpose: 'task', count: 50 });
    expect(task.head?.name).toBe('lm_head.weight');
    const trainer = new Trainer(model, task, { steps: 3, batchSize: 4, optimizer: { lr: 1e-2 }, seed: 3 }, {
      onStep: (log) => {
        if (log.phase === 1 && log.step === 1) afterPhase1 = head.slice();
      },
    });
    const origNext = task.nextPhase.bind(task);
    let rewound = false;
    task.nextPhase = () => {
      const r = origNext();
      if (task.phase === 'sparse') rewound = sameBits(head, h0);
      return r;
    };
    await trainer.train(data);
    expect(rewound).toBe(true); // the head goes back to P0 with everything else
    expect(afterPhase1).not.toBeNull();
    const trained = head.slice();
    let moved = 0;
    for (let i = 0; i < head.length; i++) if (trained[i] !== h0[i]) moved++;
    expect(moved).toBeGreaterThan(head.length / 2); // dense, not limited to K
    const ta = task.export(model);
    expect(sameBits(head, h0)).toBe(true);
    const d = ta.additive.get('lm_head.weight')!;
    expect(d.indices.length).toBe(moved);
    expect(ta.meta.metrics.headEntries).toBe(moved);
  });

  it('adds the L1 gradient lambda·sign(P − P0)/N, N = all parameters', async () => {
    const model = await CausalLM.load(join(FIX, 'llama-mha-tied'));
    const m = new LtSftMethod(model, { l1: 0.5, count: 10 });
    const t = m.tensors[0];
    t.data[0] += 1;
    t.data[1] -= 1;
    const grads = new Map(m.tensors.map((x) => [x.name, new Float32Array(x.data.length)]));
    m.adjustGradients(grads);
    const g = grads.get(t.name)!;
    // Normalised by every parameter of the model (norms included), as the official code.
    const all = [...model.weights.values()].reduce((n, w) => n + w.data.length, 0);
    expect(m.parameterCount).toBe(all);
    expect(m.parameterCount).toBeGreaterThan(m.maskableEntries);
    expect(g[0]).toBe(Math.fround(0.5 / all));
    expect(g[1]).toBe(Math.fround(-0.5 / all));
    expect(g[2]).toBe(0);
    expect(Math.abs(m.l1Distance() - 2 / all)).toBeLessThan(1e-9); // float32 rounding of w ± 1
    m.restoreBase();
  });
});

describe('LT-SFT training', () => {
  it('keeps every entry outside the mask bit-identical, exports nnz <= K in maskable tensors only, and restores the base', async () => {
    const model = await CausalLM.load(join(FIX, 'llama-mha-tied'));
    const original = snapshotWeights(model);
    const fp = fingerprintWeights(model.weights, { cache: false });
    // Weight decay on the trainer is deliberately on: LT-SFT must neutralize it.
    const { method, result } = await trainSft(model, { count: 300, l1: 0.1 }, tokenData(1, 24, 12, model.vocabSize), { weightDecay: 0.1 });
    expect(method.phase).toBe('done');
    expect(result.steps).toBe(12); // two phases of 6 steps
    expect(method.selectedEntries).toBe(300);

    let changedInMask = 0;
    for (const t of method.tensors) {
      const mask = method.mask(t.name);
      const p0 = new Uint32Array(method.reference(t.name).buffer);
      const now = new Uint32Array(t.data.buffer, t.data.byteOffset, t.data.length);
      for (let i = 0; i < mask.length; i++) {
        if (!mask[i]) expect(now[i]).toBe(p0[i]);
        else if (now[i] !== p0[i]) changedInMask++;
      }
    }
    expect(changedInMask).toBeGreaterThan(100);
    const maskable = new Set(method.tensors.map((t) => t.name));
    expect(changedBits(model, original).every((n) => maskable.has(n))).toBe(true);

    const trained = snapshotWeights(model);
    const ids = [[1, 5, 9, 13, 7, 2]];
    const trainedLogits = await model.logits(ids);
    const adapter = method.export(model);
    expect(method.export(model)).toBe(adapter);
    expect(changedBits(model, original)).toEqual([]);
    expect(adapter.meta.base.fingerprint).toBe(fp);
    let nnz = 0;
    for (const [name, d] of adapter.additive) {
      expect(maskable.has(name)).toBe(true);
      for (let i = 1; i < d.indices.length; i++) expect(d.indices[i]).toBeGreaterThan(d.indices[i - 1]);
      for (const v of d.values) expect(Math.abs(v)).toBeGreaterThan(1e-7);
      const mask = method.mask(name);
      for (const i of d.indices) expect(mask[i]).toBe(1);
      nnz += d.indices.length;
    }
    expect(nnz).toBe(adapter.meta.metrics.nnz);
    expect(nnz).toBeGreaterThan(100);
    expect(nnz).toBeLessThanOrEqual(method.budget);

    // Applying the exported delta reproduces the trained model.
    const patcher = new WeightPatcher(model.weights);
    const h = patcher.apply(adapter);
    for (const [name, d] of adapter.additive) {
      const w = model.weights.get(name)!.data;
      const want = trained.get(name)!;
      for (const i of d.indices) expect(Math.abs(w[i] - want[i])).toBeLessThanOrEqual(1e-6 * Math.max(1, Math.abs(want[i])));
    }
    const fused = await model.logits(ids);
    let worst = 0;
    for (let i = 0; i < fused.data.length; i++) worst = Math.max(worst, Math.abs(fused.data[i] - trainedLogits.data[i]));
    expect(worst).toBeLessThan(1e-4);
    patcher.revert(h);
    expect(changedBits(model, original)).toEqual([]);
    await expect(new Trainer(model, method, { steps: 1 }).train(tokenData(1, 4, 8, model.vocabSize))).rejects.toThrow(/create a new method/);
  });

  it('runs several iterations with masks that accumulate to K', async () => {
    const model = await CausalLM.load(join(FIX, 'llama-mha-tied'));
    const original = snapshotWeights(model);
    const { method, result } = await trainSft(model, { count: 301, iterations: 2 }, tokenData(2, 16, 10, model.vocabSize), { steps: 3 });
    expect(result.steps).toBe(12);
    expect(method.selections.map((s) => s.picked)).toEqual([150, 151]);
    let inMasks = 0;
    for (const t of method.tensors) {
      const mask = method.mask(t.name);
      const p0 = new Uint32Array(method.reference(t.name).buffer);
      const now = new Uint32Array(t.data.buffer, t.data.byteOffset, t.data.length);
      for (let i = 0; i < mask.length; i++) {
        inMasks += mask[i];
        if (!mask[i]) expect(now[i]).toBe(p0[i]);
      }
    }
    expect(inMasks).toBe(301);
    method.export(model);
    expect(changedBits(model, original)).toEqual([]);
  });

  it('composes: deltas commute bitwise, unapply restores exact bits, a task SFT trained over a source SFT is relative to it', async () => {
    const model = await CausalLM.load(join(FIX, 'llama-mha-tied'));
    const original = snapshotWeights(model);
    const fp = fingerprintWeights(model.weights, { cache: false });
    const a = (await trainSft(model, { purpose: 'language', density: 0.05 }, tokenData(10, 16, 12, model.vocabSize))).method.export(model);

    // Task SFT over the language SFT, loaded from disk through the registry entry.
    const dir = await mkdtemp(join(tmpdir(), 'lt-sft-'));
    try {
      await saveAdapter(join(dir, 'lang'), a);
      const task = await createMethod(model, { density: 0.05, sourceSfts: [join(dir, 'lang')] });
      // While it trains, the base is theta0 + phi_lang.
      expect(changedBits(model, original).length).toBeGreaterThan(0);
      await new Trainer(model, task, { steps: 6, batchSize: 4, optimizer: { lr: 1e-2 }, seed: 5 }).train(tokenData(11, 16, 12, model.vocabSize));
      const trained = snapshotWeights(model);
      const b = task.export(model);
      expect(changedBits(model, original)).toEqual([]);
      expect(b.meta.base.fingerprint).toBe(fp);
      expect((b.meta.metrics.sources as unknown[]).length).toBe(1);

      // theta0 + phi_lang + phi_task reproduces the weights the task SFT ended with.
      const p1 = new WeightPatcher(model.weights);
      const ha = p1.apply(a);
      const hb = p1.apply(b);
      for (const [name, want] of trained) {
        const w = model.weights.get(name)!.data;
        for (let i = 0; i < w.length; i++) expect(Math.abs(w[i] - want[i])).toBeLessThanOrEqual(2e-6 * Math.max(1, Math.abs(want[i])));
      }
      const ab = snapshotWeights(model);
      p1.revert(ha);
      p1.revert(hb);
      expect(changedBits(model, original)).toEqual([]);

      const p2 = new WeightPatcher(model.weights);
      p2.apply(b);
      p2.apply(a);
      expect(changedBits(model, ab)).toEqual([]);
      p2.revertAll();
      expect(changedBits(model, original)).toEqual([]);

      // apply then unapply, one adapter at a time.
      const p3 = new WeightPatcher(model.weights);
      p3.revert(p3.apply(b));
      expect(changedBits(model, original)).toEqual([]);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  it('lowers held-out loss of stories260K on Spanish text, and the fused adapter gives the same loss', async () => {
    const model = await CausalLM.load(bundledModelPath());
    const original = snapshotWeights(model);
    const all = await loadDataset(join(DATA, 'ud-pud', 'pud_es.txt'), model.tokenizer!, { seqLen: 64 });
    const { train, eval: held } = splitHoldout(all, 0.1, 1);
    const method = new LtSftMethod(model, { purpose: 'language' });
    const trainer = new Trainer(model, method, { steps: 25, batchSize: 8, optimizer: { lr: 1e-2 }, evalBatches: 4, seed: 1 });
    const res = await trainer.train(train, held);
    expect(res.finalEval!.loss).toBeLessThan(res.initialEval!.loss - 0.1);
    const adapter = method.export(model);
    expect(changedBits(model, original)).toEqual([]);
    const nnz = [...adapter.additive.values()].reduce((s, d) => s + d.indices.length, 0);
    expect(nnz).toBeLessThanOrEqual(method.budget);

    const patcher = new WeightPatcher(model.weights);
    patcher.apply(adapter);
    let sum = 0;
    let tokens = 0;
    for (let i = 0; i < Math.min(held.length, 32); i += 8) {
      const r = await model.loss(collate(held.slice(i, i + 8), model.tokenizer!.padId));
      sum += r.loss * r.tokens;
      tokens += r.tokens;
    }
    expect(Math.abs(sum / tokens - res.finalEval!.loss)).toBeLessThan(1e-3);
    patcher.revertAll();
    expect(changedBits(model, original)).toEqual([]);
  });
});
