/**
 * Magnitude thresholds for Sparse-MeZO: per tensor, the value h with exactly `keepCount`
 * entries at or below it in |x| (ties at h can add more), found by an exact radix select on the
 * float32 bit patterns — no sorted copy of the tensor: three passes (11, 11 and 9 bits of the
 * key) with a 2048-bin histogram (pass `scratch`, at least THRESHOLD_SCRATCH_LENGTH long, to
 * reuse one across calls). Small histograms keep it cheap enough to run every step.
 *
 * Why bit patterns: for non-negative finite float32 values, the order of the values equals the
 * order of their bits read as uint32, so |x| ↦ bits & 0x7fffffff is a monotone integer key.
 */
import { SparsetuneError } from '../errors.js';

const BUCKETS = 1 << 11;
/** Length of a reusable histogram for kthSmallestMagnitude / sparseMezoThreshold. */
export const THRESHOLD_SCRATCH_LENGTH = BUCKETS;
const ABS_MASK = 0x7fffffff;
const INF_BITS = 0x7f800000;

/**
 * The `keepCount`-th smallest |x| of `data` (1-based), exactly; -Infinity when keepCount is 0
 * (no entry selected). Throws BAD_ARGUMENT on a NaN or infinite entry.
 */
export function kthSmallestMagnitude(data: Float32Array, keepCount: number, name = 'tensor', scratch?: Uint32Array): number {
  if (!Number.isInteger(keepCount) || keepCount < 0 || keepCount > data.length) {
    throw new SparsetuneError('BAD_ARGUMENT', `keepCount must be an integer in [0, ${data.length}] for ${name}, got ${keepCount}.`);
  }
  const bits = new Uint32Array(data.buffer, data.byteOffset, data.length);
  const histogram = scratch && scratch.length >= BUCKETS ? scratch.subarray(0, BUCKETS) : new Uint32Array(BUCKETS);
  histogram.fill(0);
  // Level 1: key bits 30..20 (finiteness is checked here, on every entry).
  for (let i = 0; i < bits.length; i++) {
    const key = bits[i] & ABS_MASK;
    if (key >= INF_BITS) {
      throw new SparsetuneError('BAD_ARGUMENT', `${name} has a non-finite value (${data[i]}) at index ${i}; fix or re-initialize the weights before training.`);
    }
    histogram[key >>> 20]++;
  }
  if (keepCount === 0) return -Infinity;
  let rank = keepCount;
  let b1 = 0;
  while (histogram[b1] < rank) rank -= histogram[b1++];
  // Level 2: bits 19..9 of the keys in bin b1.
  histogram.fill(0);
  for (let i = 0; i < bits.length; i++) {
    const key = bits[i] & ABS_MASK;
    if (key >>> 20 === b1) histogram[(key >>> 9) & 0x7ff]++;
  }
  let b2 = 0;
  while (histogram[b2] < rank) rank -= histogram[b2++];
  // Level 3: bits 8..0 of the keys with prefix (b1, b2).
  const prefix = (b1 << 11) | b2;
  histogram.fill(0, 0, 512);
  for (let i = 0; i < bits.length; i++) {
    const key = bits[i] & ABS_MASK;
    if (key >>> 9 === prefix) histogram[key & 0x1ff]++;
  }
  let b3 = 0;
  while (histogram[b3] < rank) rank -= histogram[b3++];
  const result = new Uint32Array([(prefix << 9) | b3]);
  return new Float32Array(result.buffer)[0];
}

/**
 * Sparse-MeZO threshold of one tensor: `sparsity` is the fraction NOT perturbed, so the
 * round((1 − sparsity)·n) smallest-magnitude entries satisfy |x| <= h and are trained.
 */
export function sparseMezoThreshold(data: Float32Array, sparsity: number, name = 'tensor', scratch?: Uint32Array): number {
  if (!(sparsity >= 0 && sparsity < 1)) {
    throw new SparsetuneError('BAD_ARGUMENT', `sparsity must be in [0, 1) (fraction of weights NOT perturbed), got ${sparsity}.`);
  }
  const keepCount = Math.min(data.length, Math.round((1 - sparsity) * data.length));
  return kthSmallestMagnitude(data, keepCount, name, scratch);
}
