/**
 * Counter-based random numbers for zeroth-order training and sampling: every value is a pure
 * function of (seed, stream, index), so any slice can be regenerated on its own — the property
 * MeZO needs to produce the same z several times per step without storing it.
 *
 * Normals come from one of two generators (`NoiseGenerator`, recorded in every trajectory):
 *   - 'hash' (default, ~4 ns per value): a keyed 32-bit integer hash per element and a table of
 *     the normal quantile; see hash-normal.ts for its definition and accuracy.
 *   - 'philox' (format-1 trajectories, ~23 ns per value): Philox4x32-10 blocks and Box-Muller,
 *     laid out as below. Kept so that older runs replay bit for bit.
 * Uniforms and derived seeds always use Philox (the sampler and step seeds depend on them).
 *
 * Philox layout (fixed; changing it changes every trajectory):
 *   key     = [seed mod 2^32, floor(seed / 2^32)]       (seed: integer in [0, 2^53))
 *   counter = [block mod 2^32, floor(block / 2^32), stream, domain]
 * where block = floor(index / 4) and the 4 output words serve indices 4·block .. 4·block+3.
 * Philox normals: Box-Muller on the word pairs (w0,w1) and (w2,w3) of a block, computed in
 * float64 with + * / and sqrt only (correctly rounded in IEEE 754, so the same bits
 * everywhere), rounded to float32 on store.
 */
import { SparsetuneError } from '../errors.js';
import { fillHashNormal, hashKeys, hashNormalAt, ensureHashNormalTables } from './hash-normal.js';
import { DOMAIN_NORMAL, DOMAIN_SEED, DOMAIN_UNIFORM, philox4x32 } from './philox.js';

export { DOMAIN_NORMAL, DOMAIN_SEED, DOMAIN_UNIFORM, philox4x32 } from './philox.js';

/** Which generator produces the normals z: see the module comment. */
export type NoiseGenerator = 'hash' | 'philox';
export const NOISE_GENERATORS: readonly NoiseGenerator[] = ['hash', 'philox'];
/** The generator of new runs. */
export const DEFAULT_NOISE_GENERATOR: NoiseGenerator = 'hash';

const TWO_POW_32 = 4294967296;
const INV_TWO_POW_32 = 1 / TWO_POW_32;

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

function checkGenerator(generator: NoiseGenerator): NoiseGenerator {
  if (!NOISE_GENERATORS.includes(generator)) {
    throw new SparsetuneError('BAD_ARGUMENT', `Unknown noise generator "${String(generator)}"; use one of ${NOISE_GENERATORS.join(', ')}.`);
  }
  return generator;
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
 * Fill `out` with standard normals: out[i] = z(seed, stream, offset + i) of `generator`.
 * Any slice regenerates to exactly the values of the matching part of a longer fill.
 */
export function fillNormal(out: Float32Array, seed: number, stream: number, offset: number, generator: NoiseGenerator = DEFAULT_NOISE_GENERATOR): void {
  checkSeed(seed);
  checkStream(stream);
  checkIndex(offset, 'offset');
  checkIndex(offset + out.length, 'offset + length');
  if (checkGenerator(generator) === 'hash') fillHashNormal(out, seed, stream, offset);
  else fillPhiloxNormal(out, seed, stream, offset);
}

function fillPhiloxNormal(out: Float32Array, seed: number, stream: number, offset: number): void {
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
 * z(seed, stream, index) of `generator` computed on its own (for the hash generator from one
 * hash, for Philox from one block) — the definition that `fillNormal` agrees with at every offset.
 */
export function normalAt(seed: number, stream: number, index: number, generator: NoiseGenerator = DEFAULT_NOISE_GENERATOR): number {
  checkSeed(seed);
  checkStream(stream);
  checkIndex(index, 'index');
  if (checkGenerator(generator) === 'hash') {
    ensureHashNormalTables();
    const hi = Math.floor(index / TWO_POW_32);
    const [kMul, kAdd] = hashKeys(seed, stream, hi);
    return hashNormalAt(index - hi * TWO_POW_32, kMul, kAdd);
  }
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
  /** Weight decay applies to it (default true; MeZO's code exempts biases and norms). */
  decay?: boolean;
}
