/**
 * Magnitude thresholds for Sparse-MeZO: per tensor, the value h with exactly `keepCount`
 * entries at or below it in |x| (ties at h can add more), found by an exact radix select on the
 * float32 bit patterns — no sorted copy of the tensor, two passes and a 256 KiB histogram.
 *
 * Why bit patterns: for non-negative finite float32 values, the order of the values equals the
 * order of their bits read as uint32, so |x| ↦ bits & 0x7fffffff is a monotone integer key.
 */
import { SparsetuneError } from '../errors.js';

const BUCKETS = 1 << 16;
const ABS_MASK = 0x7fffffff;
const INF_BITS = 0x7f800000;

/**
 * The `keepCount`-th smallest |x| of `data` (1-based), exactly; -Infinity when keepCount is 0
 * (no entry selected). Throws BAD_ARGUMENT on a NaN or infinite entry.
 */
export function kthSmallestMagnitude(data: Float32Array, keepCount: number, name = 'tensor'): number {
  if (!Number.isInteger(keepCount) || keepCount < 0 || keepCount > data.length) {
    throw new SparsetuneError('BAD_ARGUMENT', `keepCount must be an integer in [0, ${data.length}] for ${name}, got ${keepCount}.`);
  }
  const bits = new Uint32Array(data.buffer, data.byteOffset, data.length);
  const histogram = new Uint32Array(BUCKETS);
  for (let i = 0; i < bits.length; i++) {
    const key = bits[i] & ABS_MASK;
    if (key >= INF_BITS) {
      throw new SparsetuneError('BAD_ARGUMENT', `${name} has a non-finite value (${data[i]}) at index ${i}; fix or re-initialize the weights before training.`);
    }
    histogram[key >>> 16]++;
  }
  if (keepCount === 0) return -Infinity;
  // Bucket (high 16 bits) holding the keepCount-th key, and the rank inside it.
  let rank = keepCount;
  let high = 0;
  while (histogram[high] < rank) rank -= histogram[high++];
  histogram.fill(0);
  for (let i = 0; i < bits.length; i++) {
    const key = bits[i] & ABS_MASK;
    if (key >>> 16 === high) histogram[key & 0xffff]++;
  }
  let low = 0;
  while (histogram[low] < rank) rank -= histogram[low++];
  const result = new Uint32Array([(high << 16) | low]);
  return new Float32Array(result.buffer)[0];
}

/**
 * Sparse-MeZO threshold of one tensor: `sparsity` is the fraction NOT perturbed, so the
 * round((1 − sparsity)·n) smallest-magnitude entries satisfy |x| <= h and are trained.
 */
export function sparseMezoThreshold(data: Float32Array, sparsity: number, name = 'tensor'): number {
  if (!(sparsity >= 0 && sparsity < 1)) {
    throw new SparsetuneError('BAD_ARGUMENT', `sparsity must be in [0, 1) (fraction of weights NOT perturbed), got ${sparsity}.`);
  }
  const keepCount = Math.min(data.length, Math.round((1 - sparsity) * data.length));
  return kthSmallestMagnitude(data, keepCount, name);
}
