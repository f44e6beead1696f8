/**
 * The default noise generator of the zeroth-order optimizers, `hash`: one normal per element
 * from a keyed 32-bit integer hash and a table of the normal quantile, ~3-4 ns per value in JS
 * and ~2.7 in the WebAssembly batch of member-scan.ts (Philox + Box-Muller: ~23 ns). Each value is a pure function of (seed, stream, index), so an
 * element's z can be produced on its own — Sparse-MeZO draws it for its members only.
 *
 * Definition (fixed; changing any of it changes every trajectory made with it):
 *   (kMul, kAdd) = words 0 and 1 of Philox4x32-10(counter [hi, 0, stream, DOMAIN_HASH_KEY],
 *                  key [seed mod 2^32, floor(seed / 2^32)]), kMul forced odd,
 *                  where hi = floor(index / 2^32) and lo = index mod 2^32
 *   word = mix32(kMul·lo + kAdd mod 2^32), mix32 = the "lowbias32" finalizer found by
 *          C. Wellons' hash-prospector (xorshift 16, ×0x7feb352d, xorshift 15, ×0x846ca68b,
 *          xorshift 16): a bijection with near-ideal avalanche
 *   z    = float32(Q(u)), u = (word + 0.5)/2^32, Q ≈ Φ⁻¹ by linear interpolation in tables:
 *          - centre, u in [2^-7, 1 − 2^-7] (|z| <= 2.4176): 4096 equal bins in u (word >>> 20);
 *          - tails, the 2^-6 of words outside: the tail probability q (u or 1 − u) is split into
 *            octaves [2^-(k+2), 2^-(k+1)) by its leading zeros, each cut into 64 equal bins.
 *          Nodes are Φ⁻¹ computed with basic arithmetic only (normal-quantile.ts), so the tables
 *          are the same bits on every platform.
 * Accuracy: |z − Φ⁻¹(u)| < 5e-5 everywhere (largest at the centre's edge, |z| ≈ 2.4), < 6e-6
 * for |z| < 2 and < 3e-7 for |z| < 1 (measured in the tests). Tail cut: u >= 2^-33, so the
 * largest |z| is −Φ⁻¹(2^-33) = 6.338 and |Z| > 6.34 (probability 2.3e-10) never occurs, as
 * with any 32-bit draw.
 * Streams of different (seed, stream) use different multipliers, so they are not shifts of
 * each other; the tests check moments, tail masses, bin and pair chi-squares and correlations.
 */
import { normalQuantileLower } from './normal-quantile.js';
import { DOMAIN_HASH_KEY, philox4x32 } from './philox.js';

const TWO_POW_32 = 4294967296;
const CENTER_BINS = 4096;
/** Centre bins 0..31 and 4064..4095 (word >>> 25 equal to 0 or 127) are the tails. */
const TAIL_BINS = 32;
const OCTAVE_BINS = 64;
const OCTAVE_ROW = OCTAVE_BINS + 1;

/** Interleaved (base, slope) per centre bin: z = base + (word & 0xfffff)·slope. */
let centerTable: Float64Array | null = null;
/** Interleaved (base, slope) per (octave k, bin j) at 2·(k·65 + j): |z| = base + frac·slope. */
let tailTable: Float64Array | null = null;

/** Builds the quantile tables once (~10 ms); every entry point calls this before generating. */
export function ensureHashNormalTables(): void {
  if (centerTable !== null) return;
  // Φ⁻¹(b/4096) for b = 0..4096, odd-symmetric about b = 2048 (entries outside the centre unused).
  const nodes = new Float64Array(CENTER_BINS + 1);
  for (let b = TAIL_BINS; b <= CENTER_BINS / 2; b++) {
    const z = normalQuantileLower(b / CENTER_BINS);
    nodes[b] = z;
    nodes[CENTER_BINS - b] = -z;
  }
  const center = new Float64Array(2 * CENTER_BINS);
  for (let b = TAIL_BINS; b < CENTER_BINS - TAIL_BINS; b++) {
    // u = (b + (f + 0.5)/2^20)/4096 for the low 20 bits f: interpolate at f + 0.5.
    const slope = (nodes[b + 1] - nodes[b]) / 1048576;
    center[2 * b] = nodes[b] + 0.5 * slope;
    center[2 * b + 1] = slope;
  }
  // Octave k holds q = n/2^(33+k) for the normalized n in [2^31, 2^32); node j at n = 2^31 + j·2^25.
  const tail = new Float64Array(2 * 32 * OCTAVE_ROW);
  for (let k = 6; k < 32; k++) {
    let scale = 1;
    for (let i = 0; i < k + 2; i++) scale *= 0.5;
    const row = new Float64Array(OCTAVE_ROW);
    for (let j = 0; j <= OCTAVE_BINS; j++) row[j] = -normalQuantileLower(scale * (1 + j / OCTAVE_BINS));
    for (let j = 0; j < OCTAVE_BINS; j++) {
      const e = 2 * (k * OCTAVE_ROW + j);
      tail[e] = row[j];
      tail[e + 1] = (row[j + 1] - row[j]) / 33554432;
    }
  }
  tailTable = tail;
  centerTable = center;
}

/** The built tables (interleaved base, slope), for copies into WebAssembly memory (member-scan.ts). */
export function hashNormalTables(): { center: Float64Array; tail: Float64Array } {
  ensureHashNormalTables();
  return { center: centerTable!, tail: tailTable! };
}

/** The stream keys (kMul, kAdd) of (seed, stream) for indices hi·2^32 .. hi·2^32 + 2^32 − 1. */
export function hashKeys(seed: number, stream: number, hi = 0): [kMul: number, kAdd: number] {
  const words = new Uint32Array(4);
  philox4x32(hi, 0, stream, DOMAIN_HASH_KEY, seed % TWO_POW_32, Math.floor(seed / TWO_POW_32), words);
  // As int32 values: V8 keeps those unboxed in the hot loops (callers still coerce with `| 0`).
  return [words[0] | 1, words[1] | 0];
}

/** The uniform word of element `lo` (< 2^32) of the stream with keys (kMul, kAdd). */
export function hashWord(lo: number, kMul: number, kAdd: number): number {
  let x = (Math.imul(lo, kMul) + (kAdd | 0)) | 0;
  x ^= x >>> 16;
  x = Math.imul(x, 0x7feb352d);
  x ^= x >>> 15;
  x = Math.imul(x, 0x846ca68b);
  x ^= x >>> 16;
  return x >>> 0;
}

/** z of a tail word (word >>> 25 is 0 or 127): ~1.6% of draws. */
function tailNormal(word: number): number {
  const lower = word < 0x80000000;
  // The 25-bit distance from the nearer end; odd = q·2^33 with q the tail probability.
  const odd = 2 * (lower ? word : ~word & 0x1ffffff) + 1;
  const k = Math.clz32(odd);
  const n = (odd << k) >>> 0;
  const e = 2 * (k * OCTAVE_ROW + ((n >>> 25) & 63));
  const table = tailTable!;
  const magnitude = table[e] + (n & 0x1ffffff) * table[e + 1];
  return Math.fround(lower ? -magnitude : magnitude);
}

/**
 * z for element `lo` (< 2^32) of the stream with keys (kMul, kAdd), as a float32 value.
 * Call `ensureHashNormalTables()` once before (the entry points of rng.ts and perturb.ts do).
 */
export function hashNormalAt(lo: number, kMul: number, kAdd: number): number {
  return normalFromWord(hashWord(lo, kMul, kAdd));
}

/** float32(Q((word + 0.5)/2^32)) for a uint32 `word`: the table quantile (tables must be built). */
export function normalFromWord(word: number): number {
  const top = word >>> 25;
  if (top === 0 || top === 127) return tailNormal(word);
  const e = (word >>> 20) << 1;
  const table = centerTable!;
  return Math.fround(table[e] + (word & 0xfffff) * table[e + 1]);
}

/** out[i] = z(seed, stream, offset + i) of the hash generator (arguments already validated). */
export function fillHashNormal(out: Float32Array, seed: number, stream: number, offset: number): void {
  ensureHashNormalTables();
  let written = 0;
  while (written < out.length) {
    const index = offset + written;
    const hi = Math.floor(index / TWO_POW_32);
    const lo = index - hi * TWO_POW_32;
    const count = Math.min(out.length - written, TWO_POW_32 - lo);
    const [kMul, kAdd] = hashKeys(seed, stream, hi);
    for (let j = 0; j < count; j++) out[written + j] = hashNormalAt(lo + j, kMul, kAdd);
    written += count;
  }
}
