import { describe, expect, it } from 'vitest';
import { SparsetuneError } from '../../src/errors.js';
import { DEFAULT_NOISE_GENERATOR, fillNormal, normalAt, philox4x32, randomUint32, uniform01, DOMAIN_NORMAL, type NoiseGenerator } from '../../src/zeroth-order/rng.js';

const hex = (words: Uint32Array) => Array.from(words, (w) => w.toString(16).padStart(8, '0'));

describe('philox4x32-10', () => {
  // Random123 tests/kat_vectors, lines "philox4x32 10 <ctr x4> <key x2> <expected x4>".
  const vectors: [number[], number[], string[]][] = [
    [[0, 0, 0, 0], [0, 0], ['6627e8d5', 'e169c58d', 'bc57ac4c', '9b00dbd8']],
    [[0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff], [0xffffffff, 0xffffffff], ['408f276d', '41c83b0e', 'a20bc7c6', '6d5451fd']],
    [[0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344], [0xa4093822, 0x299f31d0], ['d16cfe09', '94fdcceb', '5001e420', '24126ea1']],
  ];
  it.each(vectors)('matches the known-answer vector for counter %j', (ctr, key, expected) => {
    const out = new Uint32Array(4);
    philox4x32(ctr[0], ctr[1], ctr[2], ctr[3], key[0], key[1], out);
    expect(hex(out)).toEqual(expected);
  });
});

describe.each(['hash', 'philox'] as NoiseGenerator[])('fillNormal, generator %s', (generator) => {
  const n = 1 << 20;
  const z = new Float32Array(n);
  fillNormal(z, 1234, 7, 0, generator);

  it('has mean 0, variance 1, zero skew and kurtosis 3 within statistical bounds', () => {
    let m1 = 0;
    let m2 = 0;
    let m3 = 0;
    let m4 = 0;
    for (const v of z) {
      m1 += v;
      m2 += v * v;
      m3 += v * v * v;
      m4 += v * v * v * v;
    }
    m1 /= n;
    m2 /= n;
    m3 /= n;
    m4 /= n;
    // Standard errors: mean 1/sqrt(n), variance sqrt(2/n), third moment sqrt(15/n), fourth sqrt(96/n); 5 sigma.
    expect(Math.abs(m1)).toBeLessThan(5 / Math.sqrt(n));
    expect(Math.abs(m2 - 1)).toBeLessThan(5 * Math.sqrt(2 / n));
    expect(Math.abs(m3)).toBeLessThan(5 * Math.sqrt(15 / n));
    expect(Math.abs(m4 - 3)).toBeLessThan(5 * Math.sqrt(96 / n));
  });

  it('puts the normal mass in |z| < 1, 2, 3 within binomial bounds', () => {
    for (const [k, p] of [
      [1, 0.6826894921370859],
      [2, 0.9544997361036416],
      [3, 0.9973002039367398],
    ]) {
      let inside = 0;
      for (const v of z) if (Math.abs(v) < k) inside++;
      const sd = Math.sqrt((p * (1 - p)) / n);
      expect(Math.abs(inside / n - p)).toBeLessThan(5 * sd);
    }
  });

  it('is deterministic and differs across seeds and streams', () => {
    const again = new Float32Array(4096);
    fillNormal(again, 1234, 7, 0, generator);
    expect(Buffer.from(again.buffer).equals(Buffer.from(z.buffer, 0, 4096 * 4))).toBe(true);
    const otherSeed = new Float32Array(4096);
    const otherStream = new Float32Array(4096);
    fillNormal(otherSeed, 1235, 7, 0, generator);
    fillNormal(otherStream, 1234, 8, 0, generator);
    let corrSeed = 0;
    let corrStream = 0;
    for (let i = 0; i < 4096; i++) {
      corrSeed += again[i] * otherSeed[i];
      corrStream += again[i] * otherStream[i];
    }
    // Independent streams: correlation ~ N(0, 1/4096), 5 sigma.
    expect(Math.abs(corrSeed / 4096)).toBeLessThan(5 / 64);
    expect(Math.abs(corrStream / 4096)).toBeLessThan(5 / 64);
  });

  it('regenerates any slice bit-identically to the full fill', () => {
    const offsets = [0, 1, 2, 3, 5, 4095, 65537, 999_999];
    const lengths = [1, 2, 3, 4, 5, 7, 64, 1001];
    for (const off of offsets) {
      for (const len of lengths) {
        if (off + len > n) continue;
        const part = new Float32Array(len);
        fillNormal(part, 1234, 7, off, generator);
        expect(Buffer.from(part.buffer).equals(Buffer.from(z.buffer, off * 4, len * 4))).toBe(true);
      }
    }
    for (const i of [0, 1, 2, 3, 4, 77, 1 << 19]) expect(normalAt(1234, 7, i, generator)).toBe(z[i]);
  });

  it('works at offsets beyond 2^32 (also across the 2^32 boundary) and with seeds beyond 2^32', () => {
    for (const far of [2 ** 40 + 3, 2 ** 32 - 3]) {
      const part = new Float32Array(6);
      fillNormal(part, 2 ** 40 + 17, 1, far, generator);
      for (let i = 0; i < 6; i++) expect(part[i]).toBe(normalAt(2 ** 40 + 17, 1, far + i, generator));
      const near = new Float32Array(6);
      fillNormal(near, 17, 1, far, generator);
      expect(Array.from(near)).not.toEqual(Array.from(part));
    }
  });

  it('rejects bad seeds, streams and offsets', () => {
    const out = new Float32Array(4);
    expect(() => fillNormal(out, -1, 0, 0)).toThrow(SparsetuneError);
    expect(() => fillNormal(out, 1.5, 0, 0)).toThrow(/seed/);
    expect(() => fillNormal(out, 1, 2 ** 32, 0)).toThrow(/stream/);
    expect(() => fillNormal(out, 1, 0, -4, generator)).toThrow(/offset/);
    expect(() => fillNormal(out, 1, 0, 0, 'mt19937' as NoiseGenerator)).toThrow(/generator/);
  });
});

describe('the two generators', () => {
  it('hash is the default and gives different values from philox', () => {
    expect(DEFAULT_NOISE_GENERATOR).toBe('hash');
    expect(normalAt(5, 1, 100)).toBe(normalAt(5, 1, 100, 'hash'));
    expect(normalAt(5, 1, 100, 'philox')).not.toBe(normalAt(5, 1, 100, 'hash'));
  });
});

describe('philox normals (format-1 trajectories)', () => {
  const n = 1 << 17;
  const z = new Float32Array(n);
  fillNormal(z, 1234, 7, 0, 'philox');

  it('is close to the textbook Box-Muller of the same Philox words (polynomial log/sincos)', () => {
    const words = new Uint32Array(4);
    let worst = 0;
    for (let block = 0; block < n / 4; block++) {
      philox4x32(block, 0, 7, DOMAIN_NORMAL, 1234, 0, words);
      for (const pair of [0, 2]) {
        const r = Math.sqrt(-2 * Math.log((words[pair] + 0.5) / 2 ** 32));
        const w = words[pair + 1];
        // Same angle convention: quadrant from the top 2 bits, offset from the low 30 bits.
        const angle = (w >>> 30) * (Math.PI / 2) + (((w & 0x3fffffff) + 0.5) / 2 ** 30 - 0.5) * (Math.PI / 2);
        const exact = [r * Math.cos(angle), r * Math.sin(angle)];
        for (let lane = 0; lane < 2; lane++) {
          const got = z[block * 4 + pair + lane];
          worst = Math.max(worst, Math.abs(got - exact[lane]) / (1 + Math.abs(exact[lane])));
        }
      }
    }
    // float32 rounding alone is up to 6e-8 relative; the polynomials add ~1e-8.
    expect(worst).toBeLessThan(2e-7);
  });

  it('keeps its definition: pinned values (format-1 trajectories replay with them)', () => {
    expect(Array.from(z.subarray(0, 4))).toEqual(PHILOX_PINNED);
  });
});

describe('uniform01 and randomUint32', () => {
  it('are uniform on (0, 1) with the right mean and variance, and pure functions of their arguments', () => {
    const n = 200_000;
    let sum = 0;
    let sumSq = 0;
    let min = 1;
    let max = 0;
    for (let i = 0; i < n; i++) {
      const u = uniform01(99, 3, i);
      sum += u;
      sumSq += u * u;
      min = Math.min(min, u);
      max = Math.max(max, u);
    }
    const mean = sum / n;
    const variance = sumSq / n - mean * mean;
    expect(min).toBeGreaterThan(0);
    expect(max).toBeLessThan(1);
    expect(Math.abs(mean - 0.5)).toBeLessThan(5 * Math.sqrt(1 / 12 / n));
    expect(Math.abs(variance - 1 / 12)).toBeLessThan(5 * Math.sqrt(1 / 180 / n));
    expect(uniform01(99, 3, 12345)).toBe(uniform01(99, 3, 12345));
    expect(uniform01(99, 3, 12345)).not.toBe(uniform01(99, 4, 12345));
    expect(randomUint32(5, 0, 10)).toBe(randomUint32(5, 0, 10));
    expect(randomUint32(5, 0, 10)).not.toBe(randomUint32(5, 0, 11));
  });
});

/** z(1234, 7, 0..3) of the Philox generator as format-1 runs used it (from the original implementation). */
const PHILOX_PINNED = [1.469521164894104, 0.03715681657195091, 0.4266606271266937, -0.02178301475942135];
