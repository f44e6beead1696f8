import { describe, expect, it } from 'vitest';
import { SparsetuneError } from '../../src/errors.js';
import { normalAt } from '../../src/zeroth-order/rng.js';
import { kthSmallestMagnitude, sparseMezoThreshold } from '../../src/zeroth-order/thresholds.js';

function sortedMagnitudes(data: Float32Array): Float32Array {
  return Float32Array.from(data, Math.abs).sort();
}

describe('kthSmallestMagnitude', () => {
  it('equals the k-th element of a sorted copy for every k on data with ties, zeros, subnormals and both signs', () => {
    const data = new Float32Array(3000);
    for (let i = 0; i < data.length; i++) data[i] = 0.05 * normalAt(11, 0, i);
    // Ties (including values sharing the high 16 bits), signed zeros, subnormals, large values.
    data.set([0, -0, 1e-40, -1e-40, 1e-45, 0.25, -0.25, 0.25, 3e30, -3e30, 0.0500001, -0.0500002], 100);
    const sorted = sortedMagnitudes(data);
    for (let k = 1; k <= data.length; k += k < 40 || k > data.length - 40 ? 1 : 17) expect(kthSmallestMagnitude(data, k)).toBe(sorted[k - 1]);
    expect(kthSmallestMagnitude(data, 0)).toBe(-Infinity);
  });

  it('works on a view into a larger buffer', () => {
    const backing = new Float32Array(1000);
    for (let i = 0; i < backing.length; i++) backing[i] = normalAt(12, 0, i);
    const view = backing.subarray(137, 737);
    const sorted = sortedMagnitudes(view);
    for (const k of [1, 2, 300, 599, 600]) expect(kthSmallestMagnitude(view, k)).toBe(sorted[k - 1]);
  });

  it('rejects NaN or infinite entries and a bad keepCount', () => {
    expect(() => kthSmallestMagnitude(new Float32Array([1, NaN, 2]), 1, 'w')).toThrow(/w has a non-finite value/);
    expect(() => kthSmallestMagnitude(new Float32Array([1, -Infinity]), 1)).toThrow(SparsetuneError);
    expect(() => kthSmallestMagnitude(new Float32Array([1, 2]), 3)).toThrow(/keepCount/);
  });
});

describe('sparseMezoThreshold', () => {
  it('selects round((1 - sparsity) n) entries with |x| <= h on distinct data', () => {
    const data = new Float32Array(100_000);
    for (let i = 0; i < data.length; i++) data[i] = 0.02 * normalAt(13, 0, i);
    for (const sparsity of [0, 0.5, 0.8, 0.99]) {
      const h = sparseMezoThreshold(data, sparsity);
      let members = 0;
      for (const v of data) if (Math.abs(v) <= h) members++;
      const expected = Math.round((1 - sparsity) * data.length);
      // Float32 normals have a few duplicate magnitudes; ties at h may add one or two.
      expect(members).toBeGreaterThanOrEqual(expected);
      expect(members - expected).toBeLessThanOrEqual(2);
    }
  });

  it('rejects sparsity outside [0, 1)', () => {
    expect(() => sparseMezoThreshold(new Float32Array(4), 1)).toThrow(/sparsity/);
    expect(() => sparseMezoThreshold(new Float32Array(4), -0.1)).toThrow(/sparsity/);
  });
});
