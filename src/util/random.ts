/**
 * Small seeded pseudo-random generators shared by data shuffling, parameter init, random
 * models, benchmarks and tests. Their exact output sequences are part of what callers
 * produce (data order, initial weights, resumable runs, test thresholds), so these
 * formulas must not change: a new need gets a new function. None is cryptographic.
 * (Zeroth-order perturbations use their own counter-based Philox stream.)
 */

/** A generator: each call returns the next number of its sequence. */
export type Rng = () => number;

/**
 * mulberry32: uniforms in [0, 1) with 2^32 period. The seed is taken mod 2^32; every seed,
 * 0 included, gives a distinct sequence.
 */
export function mulberry32(seed: number): Rng {
  let s = seed >>> 0;
  return () => {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/**
 * xorshift32 (shifts 13, 17, 5) as raw states: integers in [1, 2^32). The seed is taken
 * mod 2^32; a zero seed becomes 1 because 0 is the generator's fixed point.
 */
export function xorshift32Uint32(seed: number): Rng {
  let s = seed >>> 0 || 1;
  return () => {
    s ^= s << 13;
    s >>>= 0;
    s ^= s >>> 17;
    s ^= s << 5;
    s >>>= 0;
    return s;
  };
}

/** xorshift32 uniforms in (0, 1): the states of `xorshift32Uint32(seed)` divided by 2^32. */
export function xorshift32(seed: number): Rng {
  const next = xorshift32Uint32(seed);
  return () => next() / 2 ** 32;
}

/** Multiplier and increment of a 32-bit linear congruential generator. */
export interface LcgParams {
  multiplier: number;
  increment: number;
}

/** Numerical Recipes' LCG constants (full period mod 2^32). */
export const NUMERICAL_RECIPES_LCG: LcgParams = { multiplier: 1664525, increment: 1013904223 };
/** The ANSI C `rand()` LCG constants (full period mod 2^32). */
export const ANSI_C_LCG: LcgParams = { multiplier: 1103515245, increment: 12345 };

/**
 * A linear congruential generator mod 2^32 as raw states: each call returns
 * s = (multiplier * s + increment) mod 2^32, an integer in [0, 2^32), starting from
 * s = seed mod 2^32. The product is exact (Math.imul), never rounded through a double.
 */
export function lcg32Uint32(seed: number, params: LcgParams): Rng {
  const { multiplier, increment } = params;
  let s = seed >>> 0;
  return () => {
    s = (Math.imul(s, multiplier) + increment) >>> 0;
    return s;
  };
}

/** LCG uniforms in [0, 1): the states of `lcg32Uint32(seed, params)` divided by 2^32. */
export function lcg32(seed: number, params: LcgParams): Rng {
  const next = lcg32Uint32(seed, params);
  return () => next() / 2 ** 32;
}

/**
 * Fill `out` with uniforms in [0, 1) on a 2^-24 grid (exact in float32, so never rounded
 * up to 1): the mulberry32 sequence of `seed`, top 24 bits of each state. Used for seeded
 * dropout noise, where a fresh, reproducible draw per step and input is needed fast.
 */
export function fillUniform24(out: Float32Array, seed: number): Float32Array {
  let s = seed >>> 0;
  for (let i = 0; i < out.length; i++) {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    out[i] = ((t ^ (t >>> 14)) >>> 8) / 16777216;
  }
  return out;
}

/** 32-bit FNV-1a hash of a string's UTF-16 code units (mixing names into seeds). */
export function fnv1a32(text: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < text.length; i++) h = Math.imul(h ^ text.charCodeAt(i), 0x01000193) >>> 0;
  return h >>> 0;
}
