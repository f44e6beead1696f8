import { describe, expect, it } from 'vitest';
import { computeNormalNodes, ensureHashNormalTables, hashKeys, hashWord, NODE_COUNT, normalFromWord } from '../../src/zeroth-order/hash-normal.js';
import { normalNodes } from '../../src/zeroth-order/normal-nodes.js';
import { expBasic, logBasic, normalQuantileLower } from '../../src/zeroth-order/normal-quantile.js';
import { fillNormal, normalAt } from '../../src/zeroth-order/rng.js';

/** Φ⁻¹((w + 0.5)/2^32), the exact transform the tables approximate. */
function exactNormalOfWord(w: number): number {
  const u = (w + 0.5) / 2 ** 32;
  return u <= 0.5 ? normalQuantileLower(u) : -normalQuantileLower((2 ** 32 - w - 0.5) / 2 ** 32);
}

/** Chi-square statistic of `counts` against a uniform expectation. */
function chiSquare(counts: Uint32Array, total: number): number {
  const expected = total / counts.length;
  let chi = 0;
  for (const c of counts) chi += (c - expected) ** 2 / expected;
  return chi;
}

/** Passes when a chi-square with df degrees of freedom is within 5 standard deviations of df. */
function expectChiSquareFits(chi: number, df: number): void {
  const sd = Math.sqrt(2 * df);
  expect(chi).toBeGreaterThan(df - 5 * sd); // far too even is structure too (e.g. a bare counter)
  expect(chi).toBeLessThan(df + 5 * sd);
}

describe('normalQuantileLower (basic-arithmetic Φ⁻¹ behind the tables)', () => {
  it('matches reference quantiles (SciPy ndtri) to ~1e-14', () => {
    const reference: [number, number][] = [
      [2 ** -33, -6.3379577545537895],
      [1e-9, -5.9978070150076865],
      [2 ** -20, -4.763001034267814],
      [1e-5, -4.264890793922825],
      [0.001, -3.090232306167813],
      [2 ** -7, -2.4175590162365053],
      [0.025, -1.9599639845400545],
      [0.1, -1.2815515655446004],
      [0.3, -0.5244005127080409],
      [0.5 - 2 ** -12, -0.0006119698318089206],
    ];
    for (const [p, z] of reference) expect(Math.abs(normalQuantileLower(p) - z)).toBeLessThanOrEqual(2e-14 * Math.max(1, Math.abs(z)));
    expect(normalQuantileLower(0.5)).toBe(0);
    expect(() => normalQuantileLower(0)).toThrow(RangeError);
    expect(() => normalQuantileLower(0.6)).toThrow(RangeError);
  });

  it('builds on exp and log that agree with Math.exp / Math.log', () => {
    for (let x = -40; x < 40; x += 0.37) expect(Math.abs(expBasic(x) / Math.exp(x) - 1)).toBeLessThan(1e-15);
    for (let x = 1e-12; x < 1e9; x *= 3.7) expect(Math.abs(logBasic(x) - Math.log(x))).toBeLessThan(1e-14);
  });
});

describe('hash generator: stored quantile nodes', () => {
  it('normal-nodes.ts holds exactly the bits of computeNormalNodes (regenerate with scripts/gen-normal-nodes.ts)', () => {
    const stored = normalNodes();
    const computed = computeNormalNodes();
    expect(stored.length).toBe(NODE_COUNT);
    expect(Buffer.from(stored.buffer).equals(Buffer.from(computed.buffer))).toBe(true);
  });
});

describe('hash generator: uniform words', () => {
  const n = 1 << 20;
  const [kMul, kAdd] = hashKeys(2024, 3);
  const words = Uint32Array.from({ length: n }, (_, i) => hashWord(i, kMul, kAdd));

  it('has uniform high and low 12 bits (chi-square, 4096 cells)', () => {
    const high = new Uint32Array(4096);
    const low = new Uint32Array(4096);
    for (const w of words) {
      high[w >>> 20]++;
      low[w & 0xfff]++;
    }
    expectChiSquareFits(chiSquare(high, n), 4095);
    expectChiSquareFits(chiSquare(low, n), 4095);
  });

  it('has independent consecutive words (chi-square of 6-bit pairs at lags 1 and 2)', () => {
    for (const lag of [1, 2]) {
      const pairs = new Uint32Array(4096);
      for (let i = 0; i + lag < n; i++) pairs[((words[i] >>> 26) << 6) | (words[i + lag] >>> 26)]++;
      expectChiSquareFits(chiSquare(pairs, n - lag), 4095);
    }
  });

  it('keys differ per seed and stream and the multiplier is odd', () => {
    const keys = new Set<string>();
    for (let seed = 0; seed < 50; seed++) {
      for (let stream = 0; stream < 20; stream++) {
        const [m, a] = hashKeys(seed, stream);
        expect(m & 1).toBe(1);
        keys.add(`${m},${a}`);
      }
    }
    expect(keys.size).toBe(1000);
  });
});

describe('hash generator: normals', () => {
  ensureHashNormalTables();

  it('is within 5e-5 of the exact quantile transform everywhere (6e-6 for |z| < 2, 3e-7 for |z| < 1), cut at |z| = 6.338', () => {
    let worst = 0;
    let worstWithin2 = 0;
    let worstWithin1 = 0;
    const check = (w: number) => {
      const exact = exactNormalOfWord(w);
      const err = Math.abs(normalFromWord(w) - exact);
      worst = Math.max(worst, err);
      if (Math.abs(exact) < 2) worstWithin2 = Math.max(worstWithin2, err);
      if (Math.abs(exact) < 1) worstWithin1 = Math.max(worstWithin1, err);
    };
    for (let w = 0; w < 2 ** 32; w += 104729) check(w);
    // Every octave edge of both tails, and the centre/tail boundary.
    for (let e = 0; e < 32; e++) for (const d of [-1, 0, 1, 2, 1000]) for (const w of [2 ** e + d, 2 ** 32 - 1 - 2 ** e - d]) if (w >= 0 && w < 2 ** 32) check(w);
    expect(worst).toBeLessThan(5e-5);
    expect(worstWithin2).toBeLessThan(6e-6);
    expect(worstWithin1).toBeLessThan(3e-7);
    expect(normalFromWord(0)).toBe(Math.fround(normalQuantileLower(2 ** -33)));
    expect(normalFromWord(2 ** 32 - 1)).toBe(-normalFromWord(0));
    expect(normalFromWord(0)).toBeCloseTo(-6.338, 3);
  });

  it('has the normal mass in the tails: |z| > 2, 3, 4 within binomial bounds', () => {
    const n = 1 << 21;
    const z = new Float32Array(n);
    fillNormal(z, 77, 5, 0, 'hash');
    for (const [k, p] of [
      [2, 0.04550026389635842],
      [3, 0.0026997960632601866],
      [4, 6.334248366623996e-5],
    ]) {
      let outside = 0;
      for (const v of z) if (Math.abs(v) > k) outside++;
      expect(Math.abs(outside / n - p)).toBeLessThan(5 * Math.sqrt((p * (1 - p)) / n));
    }
  });

  it('is uncorrelated across lags 1..4, 64 and 4096 and with a neighbouring seed', () => {
    const n = 1 << 18;
    const z = new Float32Array(n + 4096);
    fillNormal(z, 9, 0, 0, 'hash');
    const other = new Float32Array(n);
    fillNormal(other, 10, 0, 0, 'hash');
    const corr = (a: Float32Array, b: Float32Array, lag: number) => {
      let s = 0;
      for (let i = 0; i < n; i++) s += a[i] * b[i + lag];
      return s / n;
    };
    for (const lag of [1, 2, 3, 4, 64, 4096]) expect(Math.abs(corr(z, z, lag))).toBeLessThan(5 / Math.sqrt(n));
    expect(Math.abs(corr(z, other, 0))).toBeLessThan(5 / Math.sqrt(n));
  });

  it('keeps its definition: pinned values (a change here breaks every saved trajectory)', () => {
    expect(hashKeys(1234, 7)).toEqual([299323991, 1821106348]);
    expect([hashWord(0, 299323991, 1821106348), hashWord(1, 299323991, 1821106348)]).toEqual([276861454, 446140049]);
    expect([0, 1, 2, 3, 1000003, 2 ** 32 + 5].map((i) => normalAt(1234, 7, i, 'hash'))).toEqual([
      -1.5183601379394531, -1.2597763538360596, -0.014381730929017067, -1.0694853067398071, -0.12225341796875, 1.8487542867660522,
    ]);
  });
});
