import { promises as fsp } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { describe, expect, it } from 'vitest';
import { SparsetuneError } from '../../src/errors.js';
import { loadAdapter, saveAdapter } from '../../src/merge/adapter.js';
import { WeightPatcher } from '../../src/merge/apply.js';
import { packBits, unpackBits } from '../../src/merge/bits.js';
import { composeAdapters, lowRankToAdditive } from '../../src/merge/compose.js';
import { scaleAdapter } from '../../src/merge/scale.js';
import { newAdapter, type Adapter, type LowRankPair } from '../../src/merge/types.js';
import { cloneWeights, firstDifference, randInt, randomAdapter, randomWeights, rng, shapesMap } from './helpers.js';

const Q = 'model.layers.0.self_attn.q_proj.weight';
const O = 'model.layers.1.self_attn.o_proj.weight';

const blank = (method: string, fingerprint = ''): Adapter => newAdapter({ method, kind: 'additive', base: { model: 'tiny', fingerprint } });

function fused(base: ReturnType<typeof randomWeights>, adapters: Adapter[]): Map<string, Float32Array> {
  const w = cloneWeights(base);
  const p = new WeightPatcher(w, { fingerprint: 'x' });
  for (const a of adapters) p.apply(a);
  return new Map([...w].map(([k, t]) => [k, t.data]));
}

function pair(r: () => number, out: number, inDim: number, rank: number, scale: number): LowRankPair {
  return {
    A: { dtype: 'f32', shape: [rank, inDim], data: Float32Array.from({ length: rank * inDim }, () => r() - 0.5) },
    B: { dtype: 'f32', shape: [out, rank], data: Float32Array.from({ length: out * rank }, () => r() - 0.5) },
    scale,
  };
}

describe('composeAdapters', () => {
  it('applied alone gives bitwise what applying its inputs together gives (every kind, 400 random cases)', () => {
    const r = rng(4242);
    for (let t = 0; t < 400; t++) {
      const base = randomWeights(r);
      const inputs = Array.from({ length: 2 + randInt(r, 2) }, (_, k) => randomAdapter(r, `in${k}`));
      const composed = composeAdapters(inputs, t % 2 ? { shapes: shapesMap() } : {});
      const onBase = cloneWeights(base);
      new WeightPatcher(onBase, { fingerprint: 'x' }).apply(composed);
      const diff = firstDifference(onBase, fused(base, inputs));
      if (diff) throw new Error(`case ${t}: ${diff}`);
    }
  });

  it('with weights, gives bitwise what applying each input scaled by its weight gives (200 random cases)', () => {
    const r = rng(1515);
    for (let t = 0; t < 200; t++) {
      const base = randomWeights(r);
      const inputs = Array.from({ length: 2 + randInt(r, 2) }, (_, k) => randomAdapter(r, `w${k}`)).filter((a) => a.masks.size === 0);
      if (inputs.length === 0) continue;
      const weights = inputs.map(() => [0.5, -1, 2, 0.3, 1][randInt(r, 5)]);
      const composed = composeAdapters(inputs, { weights });
      expect((composed.meta.config.inputs as { weight: number }[]).map((i) => i.weight)).toEqual(weights);
      const onBase = cloneWeights(base);
      new WeightPatcher(onBase, { fingerprint: 'x' }).apply(composed);
      const diff = firstDifference(onBase, fused(base, inputs.map((a, k) => scaleAdapter(a, weights[k]))));
      if (diff) throw new Error(`case ${t}: ${diff}`);
    }
    // A weight of 2 is the adapter applied twice; 0.5 twice is the adapter once.
    const a = blank('a');
    a.additive.set(Q, { indices: Int32Array.from([1, 3]), values: Float32Array.from([1.5, -2]) });
    expect(Array.from(composeAdapters([a], { weights: [2] }).additive.get(Q)!.values)).toEqual([3, -4]);
    expect(Array.from(composeAdapters([a, a], { weights: [0.5, 0.5] }).additive.get(Q)!.values)).toEqual([1.5, -2]);
  });

  it('refuses weights for masks (other than 1) and a weight count that does not match', () => {
    const m = blank('m');
    m.masks.set(Q, { bits: packBits(Uint8Array.from({ length: 35 }, (_, i) => i % 2)), numel: 35 });
    expect(composeAdapters([m], { weights: [1] }).masks.size).toBe(1);
    expect(() => composeAdapters([m], { weights: [0.5] })).toThrow(/masks, which cannot be scaled/);
    expect(() => composeAdapters([m, m], { weights: [1] })).toThrow(/1 weight\(s\) for 2 adapter\(s\)/);
  });

  it('merges additive deltas by index and sums the values', () => {
    const a = blank('a');
    a.additive.set(Q, { indices: Int32Array.from([1, 3]), values: Float32Array.from([1, 2]) });
    const b = blank('b');
    b.additive.set(Q, { indices: Int32Array.from([3, 5]), values: Float32Array.from([0.5, -1]) });
    b.additive.set(O, { indices: Int32Array.from([0]), values: Float32Array.from([4]) });
    const c = composeAdapters([a, b]);
    expect(c.meta).toMatchObject({ method: 'compose', kind: 'additive', format: 'sparsetune.adapter/1' });
    expect(Array.from(c.additive.get(Q)!.indices)).toEqual([1, 3, 5]);
    expect(Array.from(c.additive.get(Q)!.values)).toEqual([1, 2.5, -1]);
    expect(Array.from(c.additive.get(O)!.values)).toEqual([4]);
    expect(c.structured.size + c.lowrank.size + c.masks.size).toBe(0);
    // The result owns its arrays: changing it does not change the inputs.
    c.additive.get(O)!.values[0] = 9;
    expect(b.additive.get(O)!.values[0]).toBe(4);
  });

  it('intersects masks, keeps lone low-rank pairs and folds overlapping ones into a dense block', () => {
    const r = rng(3);
    const a = blank('a');
    a.masks.set(O, { bits: packBits(Array.from({ length: 24 }, (_, i) => (i % 2 ? 1 : 0))), numel: 24 });
    a.lowrank.set(Q, pair(r, 5, 7, 2, 2));
    const b = blank('b');
    b.masks.set(O, { bits: packBits(Array.from({ length: 24 }, (_, i) => (i % 3 ? 1 : 0))), numel: 24 });
    b.structured.set(O, { cols: Int32Array.from([2, 4]), values: Float32Array.from({ length: 8 }, (_, i) => i), shape: [4, 6] });
    const c = composeAdapters([a, b]);
    expect(Array.from(unpackBits(c.masks.get(O)!.bits, 24))).toEqual(Array.from({ length: 24 }, (_, i) => (i % 2 && i % 3 ? 1 : 0)));
    expect(c.lowrank.get(Q)).toEqual(a.lowrank.get(Q));
    expect(c.structured.get(O)).toEqual(b.structured.get(O));
    expect(c.meta.kind).toBe('additive'); // mixed payloads

    const d = blank('d');
    d.lowrank.set(Q, pair(r, 5, 7, 3, 0.5));
    const cd = composeAdapters([a, d]);
    expect(cd.lowrank.size).toBe(0);
    expect(cd.structured.get(Q)!.rows).toBeUndefined();
    expect(cd.structured.get(Q)!.cols).toBeUndefined();
    expect(cd.structured.get(Q)!.values.length).toBe(35);

    const e = blank('e');
    e.structured.set(O, { cols: Int32Array.from([2, 4]), values: Float32Array.from({ length: 8 }, () => 1), shape: [4, 6] });
    const be = composeAdapters([b, e]);
    expect(Array.from(be.structured.get(O)!.cols!)).toEqual([2, 4]);
    expect(Array.from(be.structured.get(O)!.values)).toEqual(Array.from({ length: 8 }, (_, i) => i + 1));
    expect(be.meta.kind).toBe('additive');
    expect(composeAdapters([e, e]).meta.kind).toBe('structured');
  });

  it('survives a save/load round trip with the same fused bits', async () => {
    const r = rng(8);
    const dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'sparsetune-compose-'));
    try {
      for (let t = 0; t < 5; t++) {
        const base = randomWeights(r);
        const inputs = [randomAdapter(r, 'x'), randomAdapter(r, 'y')];
        await saveAdapter(path.join(dir, `c${t}`), composeAdapters(inputs));
        const loaded = await loadAdapter(path.join(dir, `c${t}`), { shapes: shapesMap() });
        expect(firstDifference(new Map([...base].map(([k, v]) => [k, { ...v, data: fused(base, [loaded]).get(k)! }])), fused(base, inputs))).toBeNull();
      }
    } finally {
      await fsp.rm(dir, { recursive: true, force: true });
    }
  });

  it('refuses different bases, pruned adapters and an empty list', () => {
    const a = blank('a', 'sha256:aaaa');
    const b = blank('b', 'sha256:bbbb');
    try {
      composeAdapters([a, b]);
      expect.unreachable();
    } catch (err) {
      expect((err as SparsetuneError).code).toBe('FINGERPRINT_MISMATCH');
    }
    expect(composeAdapters([a, blank('unknown')]).meta.base.fingerprint).toBe('sha256:aaaa');
    const m1 = newAdapter({ method: 'm1', kind: 'additive', base: { model: 'llama-a', fingerprint: '' } });
    const m2 = newAdapter({ method: 'm2', kind: 'additive', base: { model: 'llama-b', fingerprint: '' } });
    expect(() => composeAdapters([m1, m2])).toThrow(/different base models/);
    const p = newAdapter({ method: 'pat', kind: 'pruned', base: { model: 'tiny', fingerprint: '' } });
    p.pruned = { keptChannels: Int32Array.from([1]), configJson: {} };
    expect(() => composeAdapters([a, p])).toThrow(/pruned/);
    expect(() => composeAdapters([])).toThrow(SparsetuneError);
  });
});

describe('lowRankToAdditive', () => {
  it('without a budget fuses to the same bits as the pair', () => {
    const r = rng(12);
    for (let t = 0; t < 20; t++) {
      const base = randomWeights(r);
      const lr = blank('lr');
      lr.lowrank.set(O, pair(r, 4, 6, 1 + randInt(r, 3), [1, 0.3, 8][t % 3]));
      const add = blank('add');
      add.additive.set(O, lowRankToAdditive(lr.lowrank.get(O)!, [4, 6]));
      expect(add.additive.get(O)!.indices.length).toBe(24);
      const w = cloneWeights(base);
      new WeightPatcher(w, { fingerprint: 'x' }).apply(add);
      expect(firstDifference(w, fused(base, [lr]))).toBeNull();
    }
  });

  it('keeps the largest |values| for a count or fraction budget, ties to the lower index', () => {
    // B·A = [[1, -3, 2], [-3, 0.5, 3]] with A = [[1, -3, 2]]... built as rank 1 plus exact values.
    const p: LowRankPair = {
      A: { dtype: 'f32', shape: [1, 3], data: Float32Array.from([1, -3, 2]) },
      B: { dtype: 'f32', shape: [2, 1], data: Float32Array.from([1, -1]) },
      scale: 1,
    };
    // values: [1, -3, 2, -1, 3, -2]
    const top3 = lowRankToAdditive(p, [2, 3], { budget: 3 });
    expect(Array.from(top3.indices)).toEqual([1, 2, 4]); // |-3| at 1, |3| at 4, then the first |2| (index 2)
    expect(Array.from(top3.values)).toEqual([-3, 2, 3]);
    const half = lowRankToAdditive(p, [2, 3], { budget: 0.5 });
    expect(Array.from(half.indices)).toEqual([1, 2, 4]);
    expect(lowRankToAdditive(p, [2, 3], { budget: 100 }).indices.length).toBe(6);
    expect(() => lowRankToAdditive(p, [2, 3], { budget: 0 })).toThrow(/budget/);
    expect(() => lowRankToAdditive(p, [2, 3], { budget: 2.5 })).toThrow(/integer/);
    expect(() => lowRankToAdditive(p, [3, 2])).toThrow(/shape/);
  });
});
