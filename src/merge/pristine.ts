/**
 * Where pristine (original) weight values come from while adapters are fused, and the
 * kernels that move them: `gather`/`scatter` between a weight and a compact list, kept apart
 * from the branchy merges over sorted lists so that the cache misses overlap.
 *
 * A touched element's pristine value is kept by every applied prepared edit that touches it
 * (prepared.ts), and by the pristine copy of a whole parameter while a dense edit is applied;
 * an element no applied edit touches holds its pristine value in the weight itself.
 */
import type { PreparedParam } from './prepared.js';

/**
 * The pristine values at `idx` (sorted) of a parameter whose applied edits are `applied`
 * (with `dense`, the pristine copy of the whole parameter, when one of them is dense).
 */
export function pristineValues(weight: Float32Array, idx: Int32Array, applied: readonly PreparedParam[], dense: Float32Array | null): Float32Array {
  const out = new Float32Array(idx.length);
  if (dense !== null) {
    gather(dense, idx, out);
    return out;
  }
  gather(weight, idx, out);
  // Without a dense edit every applied edit is sparse and keeps the pristine values it touches.
  for (const o of applied) copyShared(idx, out, o.idx!, o.pristine!);
  return out;
}

/** out[k] = from[j] wherever idx[k] === at[j] (both lists sorted). */
function copyShared(idx: Int32Array, out: Float32Array, at: Int32Array, from: Float32Array): void {
  let j = 0;
  for (let k = 0; k < idx.length && j < at.length; k++) {
    const e = idx[k];
    j = lowerBound(at, j, e);
    if (j < at.length && at[j] === e) out[k] = from[j];
  }
}

/**
 * out[k] = weight[idx[k]] for every k of `idx`. Scattered reads miss the cache; issuing eight
 * before storing any lets the misses overlap (about twice as fast as one per iteration).
 */
export function gather(weight: Float32Array, idx: Int32Array, out: Float32Array): void {
  const n = idx.length;
  let k = 0;
  for (; k + 8 <= n; k += 8) {
    const v0 = weight[idx[k]], v1 = weight[idx[k + 1]], v2 = weight[idx[k + 2]], v3 = weight[idx[k + 3]];
    const v4 = weight[idx[k + 4]], v5 = weight[idx[k + 5]], v6 = weight[idx[k + 6]], v7 = weight[idx[k + 7]];
    out[k] = v0; out[k + 1] = v1; out[k + 2] = v2; out[k + 3] = v3;
    out[k + 4] = v4; out[k + 5] = v5; out[k + 6] = v6; out[k + 7] = v7;
  }
  for (; k < n; k++) out[k] = weight[idx[k]];
}

/** weight[idx[k]] = vals[k - from] for k in [from, to): branch-free scattered writes. */
export function scatter(weight: Float32Array, idx: Int32Array, vals: Float32Array, from: number, to: number): void {
  let k = from;
  let v = 0;
  for (; k + 4 <= to; k += 4, v += 4) {
    weight[idx[k]] = vals[v];
    weight[idx[k + 1]] = vals[v + 1];
    weight[idx[k + 2]] = vals[v + 2];
    weight[idx[k + 3]] = vals[v + 3];
  }
  for (; k < to; k++, v++) weight[idx[k]] = vals[v];
}

/**
 * First position p >= from with a[p] >= x (a sorted). Gallops from `from`, so walking a
 * list in increasing order costs O(1) per step, and a long jump O(log distance).
 */
export function lowerBound(a: Int32Array, from: number, x: number): number {
  if (from >= a.length || a[from] >= x) return from;
  let step = 1;
  let lo = from; // a[lo] < x
  let hi = from + 1;
  while (hi < a.length && a[hi] < x) {
    lo = hi;
    step *= 2;
    hi = lo + step;
  }
  if (hi > a.length) hi = a.length;
  lo += 1;
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    if (a[mid] < x) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}
