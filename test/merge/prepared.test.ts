/**
 * Prepared adapters (WeightPatcher.prepare): the hot-swap fast path. Random overlapping
 * adapters of every kind (additive, structured, low-rank, masks, compositions), prepared at
 * random moments (also while others are applied) or applied plain, in random apply/revert
 * orders, against an independent dense oracle at every step and the original bits at the
 * end; plus the checks that keep a prepared adapter from writing wrong values.
 */
import { describe, expect, it } from 'vitest';
import { SparsetuneError } from '../../src/errors.js';
import { WeightPatcher, type AppliedHandle, type PreparedAdapter } from '../../src/merge/apply.js';
import { packBits } from '../../src/merge/bits.js';
import { composeAdapters } from '../../src/merge/compose.js';
import { fingerprintWeights } from '../../src/merge/fingerprint.js';
import { newAdapter, type Adapter } from '../../src/merge/types.js';
import type { HostTensor } from '../../src/tensor.js';
import {
  SHAPES, bits, cloneWeights, denseReference, expectedWeights, firstDifference, randInt, randomAdapter, randomWeights, rng, type DenseAdapter,
} from './helpers.js';

type Weights = Map<string, HostTensor<'f32'>>;
const snapshot = (w: Weights): Map<string, Float32Array> => new Map([...w].map(([k, t]) => [k, t.data.slice()]));

/** Larger parameters than helpers' SHAPES, so the sparse lists have long runs and gaps. */
const BIG: Record<string, number[]> = {
  'big.q.weight': [37, 29],
  'big.q.bias': [37],
  'big.mlp.weight': [48, 40],
  'big.emb.weight': [20, 16],
};

function weightsFor(r: () => number, shapes: Record<string, number[]>): Weights {
  const out: Weights = new Map();
  for (const [name, shape] of Object.entries(shapes)) {
    const n = shape.reduce((a, b) => a * b, 1);
    // Signed zeros among the weights: a zero delta must leave their bits alone.
    const data = Float32Array.from({ length: n }, () => (r() < 0.05 ? [0, -0][randInt(r, 2)] : r() - 0.5));
    out.set(name, { dtype: 'f32', shape: [...shape], data });
  }
  return out;
}

interface PoolEntry {
  adapter: Adapter;
  ref: DenseAdapter;
}

/** Random adapters, some very sparse, plus compositions of pairs of them. */
function pool(r: () => number, shapes: Record<string, number[]>, size: number): PoolEntry[] {
  const density = (): number => [0.01, 0.05, 0.3, 0.7][randInt(r, 4)];
  const out: PoolEntry[] = [];
  for (let k = 0; k < size; k++) {
    const adapter = randomAdapter(r, `p${k}`, { shapes, density });
    out.push({ adapter, ref: denseReference(adapter, shapes) });
  }
  for (let k = 0; k < 2; k++) {
    const composed = composeAdapters([out[randInt(r, size)].adapter, out[randInt(r, size)].adapter], { shapes: new Map(Object.entries(shapes)), method: `c${k}` });
    out.push({ adapter: composed, ref: denseReference(composed, shapes) });
  }
  return out;
}

/**
 * Random apply/revert sequences mixing plain and prepared applies; prepared forms are made
 * (and remade) at random moments, so some are prepared while other adapters are applied.
 */
function runSequences(seed: number, shapes: Record<string, number[]>, sequences: number, ops: number): number {
  const r = rng(seed);
  let steps = 0;
  for (let seq = 0; seq < sequences; seq++) {
    const base = weightsFor(r, shapes);
    const entries = pool(r, shapes, 5);
    const weights = cloneWeights(base);
    // Every 10th patcher works out the pristine fingerprint itself, while adapters are applied.
    const patcher = new WeightPatcher(weights, seq % 10 === 0 ? {} : { fingerprint: 'x' });
    const prepared: (PreparedAdapter | null)[] = entries.map(() => null);
    const applied: { h: AppliedHandle; k: number }[] = [];
    for (let op = 0; op < ops; op++) {
      const roll = r();
      if (roll < 0.15) {
        const k = randInt(r, entries.length);
        prepared[k] = patcher.prepare(entries[k].adapter);
        continue;
      }
      if (applied.length === 0 || roll < 0.6) {
        const k = randInt(r, entries.length);
        const use = prepared[k] !== null && r() < 0.8 ? prepared[k]! : entries[k].adapter;
        applied.push({ h: patcher.apply(use), k });
      } else {
        patcher.revert(applied.splice(randInt(r, applied.length), 1)[0].h);
      }
      steps++;
      const diff = firstDifference(weights, expectedWeights(base, applied.map((x) => entries[x.k].ref)));
      if (diff) throw new Error(`sequence ${seq}, op ${op}: ${diff}`);
    }
    if (seq % 10 === 0) expect(patcher.fingerprint).toBe(fingerprintWeights(base));
    while (applied.length > 0) patcher.revert(applied.splice(randInt(r, applied.length), 1)[0].h);
    const diff = firstDifference(weights, snapshot(base));
    if (diff) throw new Error(`sequence ${seq}: base not restored: ${diff}`);
  }
  return steps;
}

function additive(label: string, name: string, indices: number[], values: number[]): Adapter {
  const a = newAdapter({ method: label, kind: 'additive', base: { model: 'tiny', fingerprint: '' } });
  a.additive.set(name, { indices: Int32Array.from(indices), values: Float32Array.from(values) });
  return a;
}

const Q = 'model.layers.0.self_attn.q_proj.weight';
const O = 'model.layers.1.self_attn.o_proj.weight';

describe('prepared adapters', () => {
  it('match the dense oracle at every step of random sequences (prepared and plain, every kind) and restore the exact base', () => {
    expect(runSequences(4242, SHAPES, 1200, 10)).toBeGreaterThan(8000);
    expect(runSequences(4243, BIG, 150, 12)).toBeGreaterThan(1000);
  });

  it('give the same bits as plain applies in every order, and as a fresh patcher applying the set', () => {
    const r = rng(77);
    const base = randomWeights(r);
    const adapters = Array.from({ length: 4 }, (_, k) => randomAdapter(r, `o${k}`));
    const fresh = cloneWeights(base);
    const p0 = new WeightPatcher(fresh, { fingerprint: 'x' });
    adapters.forEach((a) => p0.apply(a));
    for (let t = 0; t < 20; t++) {
      const w = cloneWeights(base);
      const p = new WeightPatcher(w, { fingerprint: 'x' });
      const prepared = adapters.map((a) => p.prepare(a));
      const handles = [0, 1, 2, 3].sort(() => r() - 0.5).map((k) => p.apply(prepared[k]));
      expect(firstDifference(w, snapshot(fresh))).toBeNull();
      for (const h of handles.sort(() => r() - 0.5)) p.revert(h);
      expect(firstDifference(w, snapshot(base))).toBeNull();
    }
  });

  it('apply twice as two handles (the delta counts twice), each revertible on its own', () => {
    const w = randomWeights(rng(3));
    const pristine = cloneWeights(w);
    const base = snapshot(w);
    const a = additive('a', Q, [0, 3, 7], [0.5, -0.25, 1e-3]);
    const p = new WeightPatcher(w, { fingerprint: 'x' });
    const prep = p.prepare(a);
    const h1 = p.apply(prep);
    const h2 = p.apply(prep);
    const ref = denseReference(a);
    expect(firstDifference(w, expectedWeights(pristine, [ref, ref]))).toBeNull();
    p.revert(h1);
    expect(w.get(Q)!.data[0]).toBe(Math.fround(base.get(Q)![0] + 0.5));
    p.revert(h2);
    expect(firstDifference(w, base)).toBeNull();
  });

  it('are checked when prepared: a bad adapter or a fingerprint mismatch throws and nothing is written', () => {
    const w = randomWeights(rng(4));
    const base = snapshot(w);
    const fp = fingerprintWeights(w);
    const p = new WeightPatcher(w, { fingerprint: fp });
    const bad = additive('bad', Q, [1, 2], [1, 2]);
    bad.additive.set(O, { indices: Int32Array.from([3, 2]), values: Float32Array.from([1, 1]) });
    expect(() => p.prepare(bad)).toThrow(/strictly increasing/);
    const foreign = additive('foreign', Q, [1], [1]);
    foreign.meta.base.fingerprint = 'sha256:ffff';
    expect(() => p.prepare(foreign)).toThrow(SparsetuneError);
    const forced = p.prepare(foreign, { force: true });
    expect(firstDifference(w, base)).toBeNull();
    p.revert(p.apply(forced));
    expect(firstDifference(w, base)).toBeNull();
  });

  it('belong to the patcher that prepared them', () => {
    const w = randomWeights(rng(5));
    const p1 = new WeightPatcher(w, { fingerprint: 'x' });
    const p2 = new WeightPatcher(cloneWeights(w), { fingerprint: 'x' });
    const prep = p1.prepare(additive('a', Q, [0], [1]));
    expect(() => p2.apply(prep)).toThrow(/another WeightPatcher/);
  });

  it('refuse to apply once the weights they were prepared on changed outside the patcher', () => {
    const w = randomWeights(rng(6));
    const p = new WeightPatcher(w, { fingerprint: 'x' });
    const prep = p.prepare(additive('a', Q, [2, 9, 30], [1, 1, 1]));
    w.get(Q)!.data[9] += 1; // e.g. a training step on the base
    const before = snapshot(w);
    expect(() => p.apply(prep)).toThrow(/prepare it again/);
    expect(firstDifference(w, before)).toBeNull();
    expect(p.applied).toEqual([]);
    const again = p.prepare(additive('a', Q, [2, 9, 30], [1, 1, 1]));
    p.revert(p.apply(again));
    expect(firstDifference(w, before)).toBeNull();
  });

  it('copy what they need: later changes to the adapter do not reach the prepared form', () => {
    const w = randomWeights(rng(7));
    const base = snapshot(w);
    const a = additive('a', Q, [1, 5, 9], [0.5, 0.25, -1]);
    const p = new WeightPatcher(w, { fingerprint: 'x' });
    const prep = p.prepare(a);
    a.additive.get(Q)!.indices.set([0, 2, 3]);
    a.additive.get(Q)!.values.fill(100);
    const h = p.apply(prep);
    expect(w.get(Q)!.data[5]).toBe(Math.fround(base.get(Q)![5] + 0.25));
    expect(w.get(Q)!.data[0]).toBe(base.get(Q)![0]);
    p.revert(h);
    expect(firstDifference(w, base)).toBeNull();
  });

  it('report their size, and keep signed zeros under zero deltas and restore masked elements', () => {
    const data = Float32Array.from([-0, 0, -0, 1, -0, 0, -0, 0, -0, 0]);
    const w: Weights = new Map([['z.weight', { dtype: 'f32', shape: [2, 5], data }]]);
    const before = data.slice();
    const p = new WeightPatcher(w, { fingerprint: 'x' });
    const zero = p.prepare(additive('z', 'z.weight', [0, 1, 2, 3, 9], [-0, 0, 0, -0, 0]));
    expect(zero.elements).toBe(5);
    expect(zero.bytes).toBe(5 * 16);
    const m = newAdapter({ method: 'm', kind: 'mask', base: { model: 'z', fingerprint: '' } });
    m.masks.set('z.weight', { bits: packBits([1, 1, 1, 0, 1, 1, 1, 1, 1, 0]), numel: 10 });
    const mask = p.prepare(m);
    const hz = p.apply(zero);
    expect(bits(data)).toEqual(bits(before));
    const hm = p.apply(mask);
    expect([data[3], data[9]]).toEqual([0, 0]);
    p.revert(hz);
    expect([data[3], data[9]]).toEqual([0, 0]);
    p.revert(hm);
    expect(bits(data)).toEqual(bits(before));
  });
});
