/**
 * Counter-based random numbers for zeroth-order training and sampling.
 *
 * Generator: Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3",
 * SC 2011). It maps a 128-bit counter and a 64-bit key to 128 random bits with no state, so
 * the value at any position is a pure function of (seed, stream, index) and any slice can be
 * regenerated on its own — the property MeZO needs to produce the same z four times per step
 * without storing it. Checked against the Random123 known-answer vectors in the tests.
 *
 * Layout (fixed; changing it changes every trajectory):
 *   key     = [seed mod 2^32, floor(seed / 2^32)]       (seed: integer in [0, 2^53))
 *   counter = [block mod 2^32, floor(block / 2^32), stream, domain]
 * where block = floor(index / 4) and the 4 output words serve indices 4·block .. 4·block+3.
 * `domain` separates independent uses of one (seed, stream): normals, uniforms, derived seeds.
 *
 * Normals: Box-Muller on the word pairs (w0,w1) and (w2,w3) of a block, one pair of normals
 * each (see `boxMullerPair`), computed in float64 and rounded to float32 on store. Only + * /
 * and sqrt are used (all correctly rounded in IEEE 754), so the bits are the same everywhere.
 * z is a pure function of (seed, stream, index): a fill of any slice equals the same slice of
 * a longer fill. Cost on the 2-core dev box: ~23 ns per normal (Philox ~15, transform ~8).
 */
import { SparsetuneError } from '../errors.js';

/** Counter word 3 values: independent sub-generators for one (seed, stream). */
export const DOMAIN_NORMAL = 0;
export const DOMAIN_UNIFORM = 1;
export const DOMAIN_SEED = 2;

const PHILOX_M0 = 0xd2511f53;
const PHILOX_M1 = 0xcd9e8d57;
const PHILOX_W0 = 0x9e3779b9;
const PHILOX_W1 = 0xbb67ae85;
const M0_LO = PHILOX_M0 & 0xffff;
const M0_HI = PHILOX_M0 >>> 16;
const M1_LO = PHILOX_M1 & 0xffff;
const M1_HI = PHILOX_M1 >>> 16;
const TWO_POW_32 = 4294967296;
const INV_TWO_POW_32 = 1 / TWO_POW_32;

/** High 32 bits of the 64-bit product of uint32 `a` and a multiplier split into 16-bit halves. */
function mulHi(a: number, bLo: number, bHi: number): number {
  const aLo = a & 0xffff;
  const aHi = a >>> 16;
  const ll = aLo * bLo;
  const lh = aLo * bHi;
  const hl = aHi * bLo;
  // Every partial product is < 2^32, so these doubles are exact.
  const mid = (ll >>> 16) + (lh & 0xffff) + (hl & 0xffff);
  return (aHi * bHi + (lh >>> 16) + (hl >>> 16) + (mid >>> 16)) >>> 0;
}

/**
 * One Philox4x32-10 block: writes the 4 output words for counter (c0..c3) and key (k0, k1)
 * into `out`. All inputs are uint32 values.
 */
export function philox4x32(c0: number, c1: number, c2: number, c3: number, k0: number, k1: number, out: Uint32Array): void {
  let x0 = c0 >>> 0;
  let x1 = c1 >>> 0;
  let x2 = c2 >>> 0;
  let x3 = c3 >>> 0;
  let key0 = k0 >>> 0;
  let key1 = k1 >>> 0;
  for (let round = 0; round < 10; round++) {
    const hi0 = mulHi(x0, M0_LO, M0_HI);
    const lo0 = Math.imul(x0, PHILOX_M0) >>> 0;
    const hi1 = mulHi(x2, M1_LO, M1_HI);
    const lo1 = Math.imul(x2, PHILOX_M1) >>> 0;
    x0 = (hi1 ^ x1 ^ key0) >>> 0;
    x1 = lo1;
    x2 = (hi0 ^ x3 ^ key1) >>> 0;
    x3 = lo0;
    key0 = (key0 + PHILOX_W0) >>> 0;
    key1 = (key1 + PHILOX_W1) >>> 0;
  }
  out[0] = x0;
  out[1] = x1;
  out[2] = x2;
  out[3] = x3;
}

function checkSeed(seed: number): void {
  if (!Number.isSafeInteger(seed) || seed < 0) {
    throw new SparsetuneError('BAD_ARGUMENT', `seed must be an integer in [0, 2^53), got ${seed}; pass a non-negative whole number.`);
  }
}

function checkStream(stream: number): void {
  if (!Number.isInteger(stream) || stream < 0 || stream >= TWO_POW_32) {
    throw new SparsetuneError('BAD_ARGUMENT', `stream must be an integer in [0, 2^32), got ${stream}.`);
  }
}

function checkIndex(index: number, what: string): void {
  if (!Number.isSafeInteger(index) || index < 0) {
    throw new SparsetuneError('BAD_ARGUMENT', `${what} must be an integer in [0, 2^53), got ${index}.`);
  }
}

const blockWords = new Uint32Array(4);

/** The uint32 word at `index` of the (seed, stream, domain) sequence. */
export function randomUint32(seed: number, stream: number, index: number, domain: number = DOMAIN_SEED): number {
  checkSeed(seed);
  checkStream(stream);
  checkIndex(index, 'index');
  const block = Math.floor(index / 4);
  philox4x32(block % TWO_POW_32, Math.floor(block / TWO_POW_32), stream, domain, seed % TWO_POW_32, Math.floor(seed / TWO_POW_32), blockWords);
  return blockWords[index % 4];
}

/** A uniform number in the open interval (0, 1): a pure function of (seed, stream, index). */
export function uniform01(seed: number, stream: number, index: number): number {
  return (randomUint32(seed, stream, index, DOMAIN_UNIFORM) + 0.5) * INV_TWO_POW_32;
}

// ---- Box-Muller with polynomial log and sincos ---------------------------------------------
// Math.log/cos/sin cost ~10 ns each here; these polynomials use only + and * (IEEE-exact, so
// bit-identical on every platform) and stay within ~1e-8 of the exact transform, far below the
// float32 rounding of the stored value.

const INV_TWO_POW_30 = 1 / 1073741824;
const HALF_PI = Math.PI / 2;
const LN_1_5 = Math.log(1.5);
/** 2^-e for e = -1..31 (index e + 1): scales w + 0.5 into [1, 2). */
const POW2_NEG = new Float64Array(33).map((_, i) => 2 ** -(i - 1));
/** cos and sin of q·π/2 for the quadrant q = top two bits of the angle word. */
const QUADRANT_COS = new Float64Array([1, 0, -1, 0]);
const QUADRANT_SIN = new Float64Array([0, 1, 0, -1]);

/**
 * Writes the normal pair from words (wRadius, wAngle) to out[i], out[i+1]:
 *   u = (wRadius + 0.5) / 2^32,  r = sqrt(-2 ln u)
 *   angle = q·π/2 + x,  q = wAngle >>> 30,  x = ((low 30 bits + 0.5)/2^30 − 0.5)·π/2 ∈ (−π/4, π/4)
 * The angle is uniform on the circle (a rotation of the textbook 2π·u, same distribution).
 */
function boxMullerPair(wRadius: number, wAngle: number, out: Float32Array, i: number): void {
  // ln u = (e − 32)·ln 2 + ln m with m = (w + 0.5)/2^e ∈ [1, 2); ln m = ln 1.5 + 2·atanh(s),
  // s = (m − 1.5)/(m + 1.5) ∈ [−0.2, 0.143], so 7 odd terms reach ~1e-12 with no branch.
  const e = 31 - Math.clz32(wRadius); // floor(log2(w)), −1 for w = 0 (w + 0.5 = 2^−1)
  const m = (wRadius + 0.5) * POW2_NEG[e + 1];
  const s = (m - 1.5) / (m + 1.5);
  const s2 = s * s;
  const lnM = LN_1_5 + 2 * s * (1 + s2 * (1 / 3 + s2 * (1 / 5 + s2 * (1 / 7 + s2 * (1 / 9 + s2 * (1 / 11 + s2 * (1 / 13)))))));
  const r = Math.sqrt(-2 * ((e - 32) * Math.LN2 + lnM));
  const q = wAngle >>> 30;
  const x = (((wAngle & 0x3fffffff) + 0.5) * INV_TWO_POW_30 - 0.5) * HALF_PI;
  const x2 = x * x;
  // Taylor series on |x| <= π/4: truncation below 2e-9.
  const sinX = x * (1 - x2 * (1 / 6 - x2 * (1 / 120 - x2 * (1 / 5040 - x2 * (1 / 362880)))));
  const cosX = 1 - x2 * (1 / 2 - x2 * (1 / 24 - x2 * (1 / 720 - x2 * (1 / 40320 - x2 * (1 / 3628800)))));
  const cq = QUADRANT_COS[q];
  const sq = QUADRANT_SIN[q];
  out[i] = r * (cq * cosX - sq * sinX);
  out[i + 1] = r * (sq * cosX + cq * sinX);
}

/**
 * Fill `out` with standard normals: out[i] = z(seed, stream, offset + i).
 * Any slice regenerates to exactly the values of the matching part of a longer fill.
 */
export function fillNormal(out: Float32Array, seed: number, stream: number, offset: number): void {
  checkSeed(seed);
  checkStream(stream);
  checkIndex(offset, 'offset');
  checkIndex(offset + out.length, 'offset + length');
  const n = out.length;
  if (n === 0) return;
  const k0 = seed % TWO_POW_32;
  const k1 = Math.floor(seed / TWO_POW_32);
  const words = new Uint32Array(4);
  const edge = new Float32Array(4);
  let block = Math.floor(offset / 4);
  let written = 0;
  // A partial first block (offset not a multiple of 4): compute it whole, copy the tail lanes.
  const firstLane = offset % 4;
  if (firstLane !== 0) {
    philox4x32(block % TWO_POW_32, Math.floor(block / TWO_POW_32), stream, DOMAIN_NORMAL, k0, k1, words);
    boxMullerPair(words[0], words[1], edge, 0);
    boxMullerPair(words[2], words[3], edge, 2);
    for (let lane = firstLane; lane < 4 && written < n; lane++) out[written++] = edge[lane];
    block++;
  }
  while (n - written >= 4) {
    philox4x32(block % TWO_POW_32, Math.floor(block / TWO_POW_32), stream, DOMAIN_NORMAL, k0, k1, words);
    boxMullerPair(words[0], words[1], out, written);
    boxMullerPair(words[2], words[3], out, written + 2);
    written += 4;
    block++;
  }
  if (written < n) {
    philox4x32(block % TWO_POW_32, Math.floor(block / TWO_POW_32), stream, DOMAIN_NORMAL, k0, k1, words);
    boxMullerPair(words[0], words[1], edge, 0);
    boxMullerPair(words[2], words[3], edge, 2);
    for (let lane = 0; written < n; lane++) out[written++] = edge[lane];
  }
}

/**
 * z(seed, stream, index) computed on its own from one Philox block — the definition that
 * `fillNormal` agrees with at every offset (used by tests and for spot checks).
 */
export function normalAt(seed: number, stream: number, index: number): number {
  checkSeed(seed);
  checkStream(stream);
  checkIndex(index, 'index');
  const block = Math.floor(index / 4);
  const words = new Uint32Array(4);
  const values = new Float32Array(4);
  philox4x32(block % TWO_POW_32, Math.floor(block / TWO_POW_32), stream, DOMAIN_NORMAL, seed % TWO_POW_32, Math.floor(seed / TWO_POW_32), words);
  boxMullerPair(words[0], words[1], values, 0);
  boxMullerPair(words[2], words[3], values, 2);
  return values[index % 4];
}

/** A trainable tensor: a name (for messages and files) and its JS-owned weights, updated in place. */
export interface TrainableTensor {
  name: string;
  data: Float32Array;
}
