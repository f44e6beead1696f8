import { describe, expect, it } from 'vitest';
import { SparsetuneError } from '../../src/errors.js';
import { WeightPatcher, type AppliedHandle } from '../../src/merge/apply.js';
import { fingerprintWeights } from '../../src/merge/fingerprint.js';
import { packBits } from '../../src/merge/bits.js';
import { newAdapter, type Adapter } from '../../src/merge/types.js';
import {
  bits, cloneWeights, denseReference, expectedWeights, firstDifference, randInt, randomAdapter, randomWeights, rng, type DenseAdapter,
} from './helpers.js';

const Q = 'model.layers.0.self_attn.q_proj.weight';
const O = 'model.layers.1.self_attn.o_proj.weight';

function additive(label: string, name: string, indices: number[], values: number[]): Adapter {
  const a = newAdapter({ method: label, kind: 'additive', base: { model: 'tiny', fingerprint: '' } });
  a.additive.set(name, { indices: Int32Array.from(indices), values: Float32Array.from(values) });
  return a;
}

function snapshot(w: Map<string, { data: Float32Array }>): Map<string, Float32Array> {
  return new Map([...w].map(([k, t]) => [k, t.data.slice()]));
}

describe('WeightPatcher', () => {
  it('10,000 random fuse/unfuse sequences match a from-scratch application at every step and restore the exact base', () => {
    const r = rng(20240607);
    let steps = 0;
    let state = newPool(r);
    for (let seq = 0; seq < 10_000; seq++) {
      // A fresh base and pool every 50 sequences keeps the test fast and still varied.
      if (seq > 0 && seq % 50 === 0) state = newPool(r);
      const { base, pool, refs } = state;
      const weights = cloneWeights(base);
      const patcher = new WeightPatcher(weights, { fingerprint: 'unused' });
      const applied: { h: AppliedHandle; k: number }[] = [];
      const ops = 4 + randInt(r, 8);
      for (let op = 0; op < ops; op++) {
        if (applied.length === 0 || r() < 0.55) {
          const k = randInt(r, pool.length);
          applied.push({ h: patcher.apply(pool[k]), k });
        } else {
          const [gone] = applied.splice(randInt(r, applied.length), 1);
          patcher.revert(gone.h);
        }
        steps++;
        const diff = firstDifference(weights, expectedWeights(base, applied.map((x) => refs[x.k])));
        if (diff) throw new Error(`sequence ${seq}, op ${op}: ${diff}`);
        expect(patcher.applied).toEqual(applied.map((x) => x.h));
        if (seq % 97 === 0) {
          // Also against the patcher itself on a fresh copy, applying the remaining set in order.
          const fresh = cloneWeights(base);
          const p2 = new WeightPatcher(fresh, { fingerprint: 'unused' });
          for (const x of applied) p2.apply(pool[x.k]);
          const d2 = firstDifference(weights, snapshot(fresh));
          if (d2) throw new Error(`sequence ${seq}, op ${op} vs fresh patcher: ${d2}`);
        }
      }
      while (applied.length > 0) patcher.revert(applied.splice(randInt(r, applied.length), 1)[0].h);
      const diff = firstDifference(weights, snapshot(base));
      if (diff) throw new Error(`sequence ${seq}: base not restored: ${diff}`);
    }
    expect(steps).toBeGreaterThan(50_000);
  });

  it('gives bitwise the same weights in every fuse order of additive deltas, where naive summation would not', () => {
    // 2^53 - 2^53 + 1: the float64 sum is 1 or 0 depending on the order unless it is canonical.
    const deltas = [2 ** 53, -(2 ** 53), 1];
    const adapters = deltas.map((v, k) => additive(`a${k}`, Q, [3], [v]));
    const orders = [[0, 1, 2], [0, 2, 1], [1, 0, 2], [1, 2, 0], [2, 0, 1], [2, 1, 0]];
    const results = orders.map((order) => {
      const w = randomWeights(rng(7));
      const p = new WeightPatcher(w, { fingerprint: 'x' });
      for (const k of order) p.apply(adapters[k]);
      return bits(w.get(Q)!.data).slice();
    });
    for (const res of results) expect(res).toEqual(results[0]);
    // With a structured and a low-rank delta on the same elements, in random orders.
    const r = rng(99);
    const pool = Array.from({ length: 5 }, (_, k) => randomAdapter(r, `p${k}`));
    const ref = (() => {
      const w = randomWeights(rng(8));
      const p = new WeightPatcher(w, { fingerprint: 'x' });
      pool.forEach((a) => p.apply(a));
      return snapshot(w);
    })();
    for (let t = 0; t < 30; t++) {
      const w = randomWeights(rng(8));
      const p = new WeightPatcher(w, { fingerprint: 'x' });
      for (const k of [0, 1, 2, 3, 4].sort(() => r() - 0.5)) p.apply(pool[k]);
      expect(firstDifference(w, ref)).toBeNull();
    }
  });

  it('adds one additive delta exactly like a float32 add, and masks zero what they clear', () => {
    const w = randomWeights(rng(1));
    const before = w.get(Q)!.data.slice();
    const p = new WeightPatcher(w, { fingerprint: 'x' });
    p.apply(additive('a', Q, [0, 4], [0.25, -1.5]));
    expect(w.get(Q)!.data[0]).toBe(Math.fround(before[0] + 0.25));
    expect(w.get(Q)!.data[4]).toBe(Math.fround(before[4] - 1.5));
    const m = newAdapter({ method: 'm', kind: 'mask', base: { model: 'tiny', fingerprint: '' } });
    const keep = new Array(35).fill(1);
    keep[0] = 0;
    keep[34] = 0;
    m.masks.set(Q, { bits: packBits(keep), numel: 35 });
    const hm = p.apply(m);
    expect(w.get(Q)!.data[0]).toBe(0);
    expect(w.get(Q)!.data[34]).toBe(0);
    expect(w.get(Q)!.data[4]).toBe(Math.fround(before[4] - 1.5));
    p.revert(hm);
    expect(w.get(Q)!.data[0]).toBe(Math.fround(before[0] + 0.25));
    expect(w.get(Q)!.data[34]).toBe(before[34]);
  });

  it('leaves the weights untouched when any part of an adapter is bad', () => {
    const w = randomWeights(rng(2));
    const pristine = snapshot(w);
    const p = new WeightPatcher(w, { fingerprint: 'x' });
    const bad: [string, Adapter][] = [];
    const mk = (): Adapter => {
      const a = additive('bad', Q, [1, 2], [1, 2]); // valid first entry, so a partial apply would show
      return a;
    };
    let a = mk();
    a.additive.set(O, { indices: Int32Array.from([0, 24]), values: Float32Array.from([1, 1]) });
    bad.push(['index out of range', a]);
    a = mk();
    a.additive.set(O, { indices: Int32Array.from([3, 2]), values: Float32Array.from([1, 1]) });
    bad.push(['unsorted indices', a]);
    a = mk();
    a.additive.set(O, { indices: Int32Array.from([2, 2]), values: Float32Array.from([1, 1]) });
    bad.push(['duplicate indices', a]);
    a = mk();
    a.additive.set(O, { indices: Int32Array.from([2]), values: Float32Array.from([NaN]) });
    bad.push(['NaN value', a]);
    a = mk();
    a.additive.set('model.nope.weight', { indices: Int32Array.from([0]), values: Float32Array.from([1]) });
    bad.push(['unknown parameter', a]);
    a = mk();
    a.structured.set(O, { rows: Int32Array.from([1, 4]), values: new Float32Array(12) });
    bad.push(['row out of range', a]);
    a = mk();
    a.structured.set(O, { cols: Int32Array.from([1, 2]), values: new Float32Array(7) });
    bad.push(['block size mismatch', a]);
    a = mk();
    a.lowrank.set(O, { A: { dtype: 'f32', shape: [2, 7], data: new Float32Array(14) }, B: { dtype: 'f32', shape: [4, 2], data: new Float32Array(8) }, scale: 1 });
    bad.push(['low-rank shape mismatch', a]);
    a = mk();
    a.masks.set(O, { bits: new Uint8Array(3), numel: 24 });
    a.masks.get(O)!.bits[2] = 0; // valid...
    a.masks.set(Q, { bits: new Uint8Array(4), numel: 35 }); // ...but 35 bits need 5 bytes
    bad.push(['mask too short', a]);
    a = mk();
    a.meta.base.fingerprint = 'sha256:0000';
    bad.push(['fingerprint mismatch', a]);
    for (const [why, adapter] of bad) {
      expect(() => p.apply(adapter), why).toThrow(SparsetuneError);
      expect(firstDifference(w, pristine), why).toBeNull();
      expect(p.applied).toEqual([]);
    }
  });

  it('checks the fingerprint of the pristine base, and --force overrides it', () => {
    const w = randomWeights(rng(3));
    const fp = fingerprintWeights(w);
    const p = new WeightPatcher(w);
    const good = additive('good', Q, [0], [1]);
    good.meta.base.fingerprint = fp;
    const h1 = p.apply(good);
    // Weights are now patched, but the patcher still knows (and recomputes) the pristine fingerprint.
    expect(p.fingerprint).toBe(fp);
    const p3 = new WeightPatcher(w);
    expect(p3.fingerprint).not.toBe(fp); // another patcher on the patched weights sees them as its base...
    const other = additive('other', O, [0], [1]);
    other.meta.base.fingerprint = 'sha256:ffff';
    try {
      p.apply(other);
      expect.unreachable();
    } catch (err) {
      expect((err as SparsetuneError).code).toBe('FINGERPRINT_MISMATCH');
      expect((err as Error).message).toMatch(/--force/);
    }
    const h2 = p.apply(other, { force: true });
    p.revert(h1);
    p.revert(h2);
    const fresh = new WeightPatcher(new Map(w));
    expect(fresh.fingerprint).toBe(fp); // ...and after reverting everything the bits are the original ones
  });

  it('computes the pristine fingerprint even when first asked while adapters are applied', () => {
    const w = randomWeights(rng(4));
    const expected = fingerprintWeights(cloneWeights(w));
    const p = new WeightPatcher(w);
    p.apply(randomAdapter(rng(5), 'x'));
    p.apply(randomAdapter(rng(6), 'y'));
    expect(p.fingerprint).toBe(expected);
  });

  it('refuses pruned adapters and unknown handles', () => {
    const w = randomWeights(rng(5));
    const p = new WeightPatcher(w, { fingerprint: 'x' });
    const pruned = newAdapter({ method: 'pat', kind: 'pruned', base: { model: 'tiny', fingerprint: '' } });
    pruned.pruned = { keptChannels: Int32Array.from([0, 2]), configJson: { hidden_size: 2 } };
    expect(() => p.apply(pruned)).toThrow(/cannot be fused in place/);
    const h = p.apply(additive('a', Q, [0], [1]));
    p.revert(h);
    expect(() => p.revert(h)).toThrow(/not applied/);
    const other = new WeightPatcher(randomWeights(rng(5)), { fingerprint: 'x' });
    expect(() => other.revert(h)).toThrow(SparsetuneError);
  });

  it('fuses a low-rank pair as float32(scale · B·A) computed in float64, plus its bias delta', () => {
    const w = randomWeights(rng(6));
    const before = snapshot(w);
    const a = newAdapter({ method: 'lora', kind: 'lowrank', base: { model: 'tiny', fingerprint: '' } });
    const A = Float32Array.from({ length: 2 * 7 }, (_, i) => Math.fround(0.1 * (i - 6)));
    const B = Float32Array.from({ length: 5 * 2 }, (_, i) => Math.fround(0.3 - 0.07 * i));
    a.lowrank.set(Q, { A: { dtype: 'f32', shape: [2, 7], data: A }, B: { dtype: 'f32', shape: [5, 2], data: B }, scale: 2, biasDelta: Float32Array.from([1, 2, 3, 4, 5]) });
    const p = new WeightPatcher(w, { fingerprint: 'x' });
    const h = p.apply(a);
    for (let o = 0; o < 5; o++) {
      for (let i = 0; i < 7; i++) {
        const delta = Math.fround(2 * (B[o * 2] * A[i] + B[o * 2 + 1] * A[7 + i]));
        const expected = delta === 0 ? before.get(Q)![o * 7 + i] : Math.fround(before.get(Q)![o * 7 + i] + delta);
        expect(w.get(Q)!.data[o * 7 + i]).toBe(expected);
      }
      expect(w.get('model.layers.0.self_attn.q_proj.bias')!.data[o]).toBe(Math.fround(before.get('model.layers.0.self_attn.q_proj.bias')![o] + 2 * (o + 1)));
    }
    p.revert(h);
    expect(firstDifference(w, before)).toBeNull();
  });
});

interface PoolState {
  base: Map<string, { dtype: 'f32'; shape: number[]; data: Float32Array }>;
  pool: Adapter[];
  refs: DenseAdapter[];
}

function newPool(r: () => number): PoolState {
  const base = randomWeights(r);
  const pool = Array.from({ length: 6 }, (_, k) => randomAdapter(r, `p${k}`));
  return { base, pool, refs: pool.map((a) => denseReference(a)) };
}
