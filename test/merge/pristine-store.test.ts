/**
 * PristineStore against a plain reference model (element -> reference count and first-seen
 * value) over random acquire/release sequences, through sparse and dense modes; plus the
 * gather/scatter kernels against naive loops.
 */
import { describe, expect, it } from 'vitest';
import { SparsetuneError } from '../../src/errors.js';
import { PristineStore, gather, scatter } from '../../src/merge/pristine.js';
import { bits, randInt, rng } from './helpers.js';

/** A sorted random subset of 0..n-1 (possibly empty). */
function subset(r: () => number, n: number, p: number): Int32Array {
  const out: number[] = [];
  for (let i = 0; i < n; i++) if (r() < p) out.push(i);
  return Int32Array.from(out);
}

const elementsOf = (touched: Int32Array | null, n: number): number[] => (touched ? Array.from(touched) : [...Array(n).keys()]);
const pair = new Float32Array(2);
const pairBits = bits(pair);
/** Equal as float32 bit patterns (so -0 and +0 differ). */
function sameBits(x: number, y: number): boolean {
  pair[0] = x;
  pair[1] = y;
  return pairBits[0] === pairBits[1];
}

describe('PristineStore (random sequences against a reference model)', () => {
  it('keeps first-seen values and counts, reports shared/still-held positions, and restores dropped elements', () => {
    const r = rng(31337);
    let checks = 0;
    for (let trial = 0; trial < 600; trial++) {
      const numel = 1 + randInt(r, 70);
      // -0 and 0 among the weights, so any stray arithmetic on restored values would show.
      const weight = Float32Array.from({ length: numel }, () => [0, -0, r() - 0.5][randInt(r, 3)]);
      const store = new PristineStore(numel);
      const model = new Map<number, { refs: number; val: number }>();
      const held: (Int32Array | null)[] = [];
      for (let op = 0; op < 14; op++) {
        const problems: string[] = [];
        if (held.length === 0 || r() < 0.55) {
          const touched = r() < 0.08 ? null : subset(r, numel, [0.05, 0.2, 0.6][randInt(r, 3)]);
          const els = elementsOf(touched, numel);
          const wantShared = els.flatMap((e, k) => (model.has(e) ? [k] : []));
          const seen = touched && r() < 0.5 ? Float32Array.from(touched, (e) => weight[e]) : undefined;
          const shared = store.acquire(weight, touched, seen);
          expect(Array.from(shared)).toEqual(wantShared);
          for (const e of els) {
            const m = model.get(e);
            if (m) m.refs++;
            else model.set(e, { refs: 1, val: weight[e] });
          }
          // The patcher now changes the touched weights: the store must keep the old ones.
          for (const e of els) weight[e] = r() - 0.5;
          held.push(touched);
        } else {
          const [touched] = held.splice(randInt(r, held.length), 1);
          const els = elementsOf(touched, numel);
          const restore = r() < 0.5;
          const before = weight.slice();
          const wantStill = els.flatMap((e, k) => (model.get(e)!.refs > 1 ? [k] : []));
          const still = store.release(touched, restore ? weight : undefined);
          expect(Array.from(still)).toEqual(wantStill);
          for (const e of els) {
            const m = model.get(e)!;
            if (--m.refs > 0) {
              if (weight[e] !== before[e]) problems.push(`held element ${e} was written`);
              continue;
            }
            model.delete(e);
            if (restore) {
              if (!sameBits(weight[e], m.val)) problems.push(`dropped element ${e} not restored`);
            } else {
              if (weight[e] !== before[e]) problems.push(`element ${e} written without a weight`);
              weight[e] = m.val; // what the patcher's recompute would write
            }
          }
        }
        expect(store.empty).toBe(model.size === 0);
        const copy = weight.slice();
        store.restoreInto(copy);
        const get = store.reader();
        for (let e = 0; e < numel; e++) {
          const m = model.get(e);
          if (!sameBits(copy[e], m ? m.val : weight[e])) problems.push(`restoreInto wrong at ${e}`);
          if (m && !sameBits(get(e), m.val)) problems.push(`reader wrong at ${e}`);
        }
        const index = store.index;
        if (index !== null) {
          expect(Array.from(index)).toEqual([...model.keys()].sort((a, b) => a - b));
          index.forEach((e, k) => {
            if (!sameBits(store.values[k], model.get(e)!.val)) problems.push(`values wrong at ${e}`);
          });
        }
        if (problems.length) throw new Error(`trial ${trial}, op ${op}: ${problems.join('; ')}`);
        checks++;
      }
      while (held.length > 0) store.release(held.pop()!, weight);
      expect(store.empty).toBe(true);
    }
    expect(checks).toBe(600 * 14);
  });

  it('adopts values saved by the caller, as if they had been acquired, and refuses to adopt into a used store', () => {
    const weight = Float32Array.from([10, 11, 12, 13, 14, 15]);
    const s = new PristineStore(6);
    s.adopt(Int32Array.from([1, 4]), Float32Array.from([1, 4]));
    expect(s.empty).toBe(false);
    expect(() => s.adopt(Int32Array.from([2]), Float32Array.from([2]))).toThrow(SparsetuneError);
    expect(Array.from(s.acquire(weight, Int32Array.from([0, 4, 5])))).toEqual([1]); // 4 was held
    expect(Array.from(s.release(Int32Array.from([1, 4]), weight))).toEqual([1]); // 4 still held by the second
    expect(weight[1]).toBe(1);
    expect(weight[4]).toBe(14);
    const copy = weight.slice();
    s.restoreInto(copy);
    expect(Array.from(copy)).toEqual([10, 1, 12, 13, 4, 15]);
    expect(Array.from(s.release(Int32Array.from([0, 4, 5]), weight))).toEqual([]);
    expect(s.empty).toBe(true);
    expect(Array.from(weight)).toEqual([10, 1, 12, 13, 4, 15]);

    expect(() => new PristineStore(3).adopt(Int32Array.from([0, 1]), Float32Array.from([1]))).toThrow(SparsetuneError);
    const dense = new PristineStore(3);
    dense.adopt(null, Float32Array.from([7, 8, 9]));
    const w = Float32Array.from([0, 0, 0]);
    dense.restoreInto(w);
    expect(Array.from(w)).toEqual([7, 8, 9]);
  });
});

describe('gather / scatter', () => {
  it('match naive loops for every length around the unrolled block sizes', () => {
    const r = rng(5);
    const weight = Float32Array.from({ length: 200 }, () => r());
    for (let n = 0; n <= 40; n++) {
      const idx = Int32Array.from({ length: n }, () => randInt(r, 200));
      const out = new Float32Array(n);
      gather(weight, idx, out);
      expect(Array.from(out)).toEqual(Array.from(idx, (e) => weight[e]));
      const from = randInt(r, n + 1);
      const to = from + randInt(r, n - from + 1);
      const vals = Float32Array.from({ length: n }, () => r());
      const got = weight.slice();
      const want = weight.slice();
      scatter(got, idx, vals, from, to);
      for (let k = from; k < to; k++) want[idx[k]] = vals[k - from];
      expect(Array.from(got)).toEqual(Array.from(want));
    }
  });
});
