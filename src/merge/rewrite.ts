/**
 * Recomputing fused weights from pristine values and the applied prepared edits of one
 * parameter (the slow paths of WeightPatcher: elements several adapters touch, and dense
 * edits). The value rule of types.ts: w = float32(p + D), D the canonical float64 sum of
 * the deltas there rounded once, p kept bit for bit when D is 0, and 0 where a mask clears.
 * An edit that touches an element only through its mask contributes a delta of 0 there,
 * which changes no sum (the mask decides the value anyway).
 */
import { canonicalSum } from './reduce.js';
import { lowerBound, scatter } from './pristine.js';
import type { PreparedParam } from './prepared.js';

/** Elements recomputed per batch: their new values are worked out first, then scattered. */
const BATCH = 4096;
const batchValues = new Float32Array(BATCH);

/** The fused value of one element from its pristine value and `n` deltas in `buf`. */
function combine(p: number, masked: boolean, buf: Float64Array, n: number): number {
  if (masked) return 0;
  if (n === 0) return p;
  // One term is already a float32; two terms add the same in either order.
  const D = n === 1 ? buf[0] : Math.fround(n === 2 ? buf[0] + buf[1] : canonicalSum(buf, n));
  // A zero delta leaves the pristine bits alone (p + 0 would turn -0 into +0).
  return D === 0 ? p : p + D; // the float32 store rounds p + D once
}

/**
 * Rewrite the elements of sparse edit `self` when `others` (the other edits applied to the
 * parameter) may touch some of them. `adding`: `self` is being applied, so it counts, and an
 * element no other edit touches takes `self.fused`; else `self` is being reverted and such an
 * element gets its pristine value back. Every list is sorted, so each other edit is walked by
 * a galloping cursor; the scattered writes come in a separate, branch-free pass per batch.
 */
export function rewriteSparse(self: PreparedParam, others: readonly PreparedParam[], adding: boolean): void {
  const weight = self.weight;
  const idx = self.idx!;
  const pristine = self.pristine!;
  const fused = self.fused;
  const ownDelta = adding ? self.delta : null;
  const ownCleared = adding ? self.cleared : null;
  const R = others.length;
  const pos = new Int32Array(R);
  const buf = new Float64Array(R + 1);
  for (let start = 0; start < idx.length; start += BATCH) {
    const end = Math.min(idx.length, start + BATCH);
    for (let k = start; k < end; k++) {
      const e = idx[k];
      let hit = false;
      let masked = ownCleared !== null && ownCleared[k] === 1;
      let n = 0;
      if (ownDelta !== null) buf[n++] = ownDelta[k];
      for (let r = 0; r < R; r++) {
        const o = others[r];
        const oIdx = o.idx;
        let at = e;
        if (oIdx !== null) {
          at = lowerBound(oIdx, pos[r], e);
          pos[r] = at;
          if (at >= oIdx.length || oIdx[at] !== e) continue;
        }
        hit = true;
        if (o.cleared !== null && o.cleared[at] === 1) masked = true;
        if (o.delta !== null) buf[n++] = o.delta[at];
      }
      let v: number;
      if (hit) v = combine(pristine[k], masked, buf, n);
      else if (!adding) v = pristine[k];
      else v = fused === null ? 0 : fused[k];
      batchValues[k - start] = v;
    }
    scatter(weight, idx, batchValues, start, end);
  }
}

/**
 * Rewrite every element of a parameter from its pristine copy `dense` and the applied
 * `edits` (used while a dense edit is applied, or just reverted). Sequential: sparse edits
 * are walked by a cursor that moves one step per element they touch.
 */
export function rewriteDense(weight: Float32Array, dense: Float32Array, edits: readonly PreparedParam[]): void {
  const R = edits.length;
  const pos = new Int32Array(R);
  const buf = new Float64Array(R);
  if (R === 1 && edits[0].idx === null) {
    // One dense edit alone (a low-rank pair, say): no cursors.
    const { delta, cleared } = edits[0];
    for (let e = 0; e < weight.length; e++) {
      const p = dense[e];
      const d = delta === null ? 0 : delta[e];
      weight[e] = cleared !== null && cleared[e] === 1 ? 0 : d === 0 ? p : p + d;
    }
    return;
  }
  for (let e = 0; e < weight.length; e++) {
    let masked = false;
    let n = 0;
    for (let r = 0; r < R; r++) {
      const o = edits[r];
      const oIdx = o.idx;
      let at = e;
      if (oIdx !== null) {
        at = pos[r];
        if (at >= oIdx.length || oIdx[at] !== e) continue;
        pos[r] = at + 1;
      }
      if (o.cleared !== null && o.cleared[at] === 1) masked = true;
      if (o.delta !== null) buf[n++] = o.delta[at];
    }
    weight[e] = combine(dense[e], masked, buf, n);
  }
}
