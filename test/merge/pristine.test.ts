/** The kernels that move pristine values: galloping search, gather and scatter. */
import { describe, expect, it } from 'vitest';
import { gather, lowerBound, scatter } from '../../src/merge/pristine.js';
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
