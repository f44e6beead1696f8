import { describe, expect, it } from 'vitest';
import { PristineStore, lowerBound } from '../../src/merge/pristine.js';
import { randInt, rng } from './helpers.js';

describe('lowerBound', () => {
  it('matches a linear scan from any start, for any target', () => {
    const r = rng(17);
    for (let t = 0; t < 300; t++) {
      const a = Int32Array.from(new Set(Array.from({ length: randInt(r, 40) }, () => randInt(r, 100)))).sort();
      for (let q = 0; q < 20; q++) {
        const from = randInt(r, a.length + 1);
        const x = randInt(r, 110) - 5;
        let want = from;
        while (want < a.length && a[want] < x) want++;
        expect(lowerBound(a, from, x)).toBe(want);
      }
    }
  });
});

describe('PristineStore', () => {
  it('keeps first-seen values through sparse and dense modes and empties when released', () => {
    const weight = Float32Array.from({ length: 10 }, (_, i) => i);
    const s = new PristineStore(10);
    s.acquire(weight, Int32Array.from([2, 5]));
    weight[2] = 100; // patched: the store must keep 2
    s.acquire(weight, Int32Array.from([1, 2])); // 1 new, 2 again
    weight[1] = 200;
    let get = s.reader();
    expect([get(1), get(2), get(5)]).toEqual([1, 2, 5]);
    s.acquire(weight, Int32Array.from([0, 3, 4, 6])); // past half of the elements: dense
    get = s.reader();
    expect([get(0), get(1), get(2), get(5), get(6)]).toEqual([0, 1, 2, 5, 6]);
    const copy = weight.slice();
    s.restoreInto(copy);
    expect(Array.from(copy)).toEqual([0, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
    s.release(Int32Array.from([2, 5]));
    expect(s.empty).toBe(false);
    s.release(Int32Array.from([1, 2]));
    s.release(Int32Array.from([0, 3, 4, 6]));
    expect(s.empty).toBe(true);
    s.acquire(weight, null);
    expect(s.reader()(1)).toBe(200); // a new cycle sees the current value as pristine
    s.release(null);
    expect(s.empty).toBe(true);
  });
});
