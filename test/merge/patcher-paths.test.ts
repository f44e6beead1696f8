/**
 * WeightPatcher's fast paths (one adapter alone on a parameter, a mask-free sparse delta
 * beside others, reverts that restore unshared elements directly) on parameters large
 * enough for the unrolled kernels and the sparse/dense pristine modes, against an
 * independent dense oracle; plus edge cases those paths must keep exact.
 */
import { describe, expect, it } from 'vitest';
import { WeightPatcher, type AppliedHandle } from '../../src/merge/apply.js';
import { packBits } from '../../src/merge/bits.js';
import { newAdapter, type Adapter } from '../../src/merge/types.js';
import type { HostTensor } from '../../src/tensor.js';
import { bits, cloneWeights, expectedWeights, firstDifference, nastyValue, randInt, rng, type DenseAdapter } from './helpers.js';

const SHAPES: Record<string, [number, number]> = { 'big.a.weight': [37, 29], 'big.b.weight': [16, 64] };
const NAMES = Object.keys(SHAPES);
const numelOf = (name: string): number => SHAPES[name][0] * SHAPES[name][1];

type Weights = Map<string, HostTensor<'f32'>>;

function baseWeights(r: () => number): Weights {
  const out: Weights = new Map();
  for (const name of NAMES) {
    // Signed zeros among the weights: a zero delta must leave their bits alone.
    const data = Float32Array.from({ length: numelOf(name) }, () => (r() < 0.05 ? [0, -0][randInt(r, 2)] : r() - 0.5));
    out.set(name, { dtype: 'f32', shape: [...SHAPES[name]], data });
  }
  return out;
}

/** An adapter with one payload per parameter it touches (additive, mask, both, or low-rank), plus its dense oracle. */
function randomCase(r: () => number, label: string): { adapter: Adapter; dense: DenseAdapter } {
  const adapter = newAdapter({ method: label, kind: 'additive', base: { model: 'big', fingerprint: '' } });
  const dense: DenseAdapter = { delta: new Map(), cleared: new Map() };
  for (const name of NAMES) {
    if (r() < 0.35) continue;
    const n = numelOf(name);
    const [out, inDim] = SHAPES[name];
    const kind = randInt(r, 10);
    if (kind < 7) {
      // Sparse additive, from a handful of entries to most of the parameter (dense pristine mode).
      const p = [0.01, 0.1, 0.3, 0.8][randInt(r, 4)];
      const idx: number[] = [];
      for (let e = 0; e < n; e++) if (r() < p) idx.push(e);
      const values = Float32Array.from(idx, () => (r() < 0.1 ? [0, -0][randInt(r, 2)] : nastyValue(r)));
      adapter.additive.set(name, { indices: Int32Array.from(idx), values });
      const d = new Float64Array(n).fill(NaN);
      idx.forEach((e, k) => (d[e] = values[k]));
      dense.delta.set(name, d);
    }
    if (kind >= 5 && kind < 9) {
      const keep = Array.from({ length: n }, () => (r() < 0.8 ? 1 : 0));
      adapter.masks.set(name, { bits: packBits(keep), numel: n });
      dense.cleared.set(name, Uint8Array.from(keep, (b) => 1 - b));
    }
    if (kind === 9) {
      const rank = 1 + randInt(r, 2);
      const A = Float32Array.from({ length: rank * inDim }, () => r() - 0.5);
      const B = Float32Array.from({ length: out * rank }, () => r() - 0.5);
      const scale = [0.5, 2][randInt(r, 2)];
      adapter.lowrank.set(name, { A: { dtype: 'f32', shape: [rank, inDim], data: A }, B: { dtype: 'f32', shape: [out, rank], data: B }, scale });
      const d = new Float64Array(n);
      for (let o = 0; o < out; o++) {
        for (let i = 0; i < inDim; i++) {
          let acc = 0;
          for (let k = 0; k < rank; k++) acc += B[o * rank + k] * A[k * inDim + i];
          d[o * inDim + i] = Math.fround(acc * scale);
        }
      }
      dense.delta.set(name, d);
    }
  }
  return { adapter, dense };
}

const snapshot = (w: Weights): Map<string, Float32Array> => new Map([...w].map(([k, t]) => [k, t.data.slice()]));

function additive(name: string, indices: number[], values: number[]): Adapter {
  const a = newAdapter({ method: 'a', kind: 'additive', base: { model: 'big', fingerprint: '' } });
  a.additive.set(name, { indices: Int32Array.from(indices), values: Float32Array.from(values) });
  return a;
}

describe('WeightPatcher fast paths', () => {
  it('match the dense oracle at every step of 300 random fuse/unfuse sequences on larger parameters', () => {
    const r = rng(777);
    for (let seq = 0; seq < 300; seq++) {
      const base = baseWeights(r);
      const pool = Array.from({ length: 5 }, (_, k) => randomCase(r, `p${k}`));
      const weights = cloneWeights(base);
      const patcher = new WeightPatcher(weights, { fingerprint: 'x' });
      const applied: { h: AppliedHandle; k: number }[] = [];
      for (let op = 0; op < 8; op++) {
        if (applied.length === 0 || r() < 0.55) {
          const k = randInt(r, pool.length);
          applied.push({ h: patcher.apply(pool[k].adapter), k });
        } else {
          patcher.revert(applied.splice(randInt(r, applied.length), 1)[0].h);
        }
        const diff = firstDifference(weights, expectedWeights(base, applied.map((x) => pool[x.k].dense)));
        if (diff) throw new Error(`sequence ${seq}, op ${op}: ${diff}`);
      }
      while (applied.length > 0) patcher.revert(applied.splice(randInt(r, applied.length), 1)[0].h);
      const diff = firstDifference(weights, snapshot(base));
      if (diff) throw new Error(`sequence ${seq}: base not restored: ${diff}`);
    }
  });

  it('fuses one sparse delta on a large parameter as float32(p + d) and unfuses it to the exact bits', () => {
    const r = rng(9);
    const n = 300_000;
    const data = Float32Array.from({ length: n }, () => r() - 0.5);
    const weights: Weights = new Map([['w.weight', { dtype: 'f32', shape: [600, 500], data }]]);
    const before = data.slice();
    const idx: number[] = [];
    for (let e = 0; e < n; e++) if (r() < 0.01) idx.push(e);
    const values = Float32Array.from(idx, () => (r() - 0.5) * 1e-3);
    const patcher = new WeightPatcher(weights, { fingerprint: 'x' });
    const h = patcher.apply(additive('w.weight', idx, Array.from(values)));
    const want = before.slice();
    idx.forEach((e, k) => (want[e] = before[e] + values[k]));
    expect(firstDifference(weights, new Map([['w.weight', want]]))).toBeNull();
    patcher.revert(h);
    expect(firstDifference(weights, new Map([['w.weight', before]]))).toBeNull();
  });

  it('keeps signed zeros when every delta on them is zero, alone and beside another adapter', () => {
    const data = Float32Array.from([-0, 0, -0, 1, -0, 0, -0, 0, -0, 0]);
    const weights: Weights = new Map([['z.weight', { dtype: 'f32', shape: [2, 5], data }]]);
    const before = data.slice();
    const patcher = new WeightPatcher(weights, { fingerprint: 'x' });
    const all = [...Array(10).keys()];
    const h1 = patcher.apply(additive('z.weight', all, all.map((e) => (e % 2 ? 0 : -0))));
    expect(bits(data)).toEqual(bits(before));
    const h2 = patcher.apply(additive('z.weight', [0, 2, 3, 9], [-0, 0, 0, -0]));
    expect(bits(data)).toEqual(bits(before));
    patcher.revert(h1);
    expect(bits(data)).toEqual(bits(before));
    patcher.revert(h2);
    expect(bits(data)).toEqual(bits(before));
  });

  it('reverts an adapter with an empty delta after another adapter on the same parameter was reverted', () => {
    const data = Float32Array.from([1, 2, 3, 4, 5, 6]);
    const weights: Weights = new Map([['q.weight', { dtype: 'f32', shape: [2, 3], data }]]);
    const patcher = new WeightPatcher(weights, { fingerprint: 'x' });
    const empty = patcher.apply(additive('q.weight', [], []));
    const other = patcher.apply(additive('q.weight', [1, 4], [0.5, 0.25]));
    expect(Array.from(data)).toEqual([1, 2.5, 3, 4, 5.25, 6]);
    patcher.revert(other);
    expect(Array.from(data)).toEqual([1, 2, 3, 4, 5, 6]);
    patcher.revert(empty);
    expect(patcher.applied).toEqual([]);
    expect(Array.from(data)).toEqual([1, 2, 3, 4, 5, 6]);
  });

  it('is unaffected by changes to an adapter\'s arrays after it was fused', () => {
    const r = rng(12);
    const base = baseWeights(r);
    const weights = cloneWeights(base);
    const patcher = new WeightPatcher(weights, { fingerprint: 'x' });
    const name = NAMES[0];
    const a = additive(name, [1, 5, 9, 40], [0.5, 0.25, -1, 2]);
    const b = additive(name, [5, 40, 41], [1, 1, 1]);
    const ha = patcher.apply(a);
    const hb = patcher.apply(b);
    const fused = snapshot(weights);
    // Scribble over a's payload: reverting b recomputes the shared elements from a's fused edit, not from these.
    a.additive.get(name)!.indices.set([0, 2, 3, 4]);
    a.additive.get(name)!.values.fill(100);
    patcher.revert(hb);
    const onlyA = cloneWeights(base);
    new WeightPatcher(onlyA, { fingerprint: 'x' }).apply(additive(name, [1, 5, 9, 40], [0.5, 0.25, -1, 2]));
    expect(firstDifference(weights, snapshot(onlyA))).toBeNull();
    patcher.revert(ha);
    expect(firstDifference(weights, snapshot(base))).toBeNull();
    expect(fused.get(name)![40]).toBe(Math.fround(base.get(name)!.data[40] + 3));
  });
});
