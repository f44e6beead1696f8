/**
 * An adapter's exact delta at chosen elements of one parameter, by the fused value rule of
 * merge/types.ts: the element's contributions (additive and structured values, the
 * low-rank product) summed in float64 in canonical order and rounded once to float32, for
 * the adapter scaled by `scale` (as merge/scale.ts defines it). Used where unfused serving
 * needs values rather than a kernel: token-embedding rows and mask tables.
 */
import { canonicalSum } from '../../merge/reduce.js';
import type { Adapter } from '../../merge/types.js';

/** First position in sorted `a` whose value is >= x. */
export function lowerBound(a: Int32Array, x: number, lo = 0, hi = a.length): number {
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    if (a[mid] < x) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

/**
 * The delta of `adapter` (times `scale`) at the sorted flat `indices` of parameter `param`
 * (shape [out, in]); NaN where the adapter does not touch an element.
 */
export function deltaAt(adapter: Adapter, param: string, shape: readonly number[], indices: Int32Array, scale: number): Float64Array {
  const inDim = shape[1];
  const n = indices.length;
  const out = new Float64Array(n).fill(NaN);
  const terms: number[][] = Array.from({ length: n }, () => []);
  const add = adapter.additive.get(param);
  if (add && n > 0) {
    // Jump to the first query, then merge-walk (queries and indices are both sorted).
    const ai = add.indices;
    for (let k = lowerBound(ai, indices[0]), q = 0; q < n && k < ai.length; ) {
      if (ai[k] < indices[q]) k++;
      else if (ai[k] > indices[q]) q++;
      else terms[q++].push(Math.fround(scale * add.values[k++]));
    }
  }
  const st = adapter.structured.get(param);
  if (st) {
    const nc = st.cols?.length ?? inDim;
    for (let q = 0; q < n; q++) {
      const row = Math.floor(indices[q] / inDim);
      const col = indices[q] - row * inDim;
      const ri = st.rows ? lowerBound(st.rows, row) : row;
      const ci = st.cols ? lowerBound(st.cols, col) : col;
      if ((st.rows && st.rows[ri] !== row) || (st.cols && st.cols[ci] !== col) || ri >= st.values.length / nc) continue;
      terms[q].push(Math.fround(scale * st.values[ri * nc + ci]));
    }
  }
  const lr = adapter.lowrank.get(param);
  if (lr) {
    const rank = lr.A.shape[0];
    const s = lr.scale * scale;
    for (let q = 0; q < n; q++) {
      const row = Math.floor(indices[q] / inDim);
      const col = indices[q] - row * inDim;
      let acc = 0;
      for (let r = 0; r < rank; r++) acc += lr.B.data[row * rank + r] * lr.A.data[r * inDim + col];
      terms[q].push(acc * s);
    }
  }
  const buf = new Float64Array(3);
  for (let q = 0; q < n; q++) {
    const t = terms[q];
    if (t.length === 0) continue;
    for (let i = 0; i < t.length; i++) buf[i] = t[i];
    out[q] = Math.fround(canonicalSum(buf, t.length));
  }
  return out;
}

/** Flat indices row·width .. row·width + width - 1. */
export function rowIndices(row: number, width: number): Int32Array {
  const out = new Int32Array(width);
  for (let i = 0; i < width; i++) out[i] = row * width + i;
  return out;
}

/**
 * The set delta at each element from the members' deltas (`perMember[m][q]`, NaN =
 * untouched), as fusing the members together gives it: one term keeps its bits, more are
 * summed canonically and rounded once. NaN where no member touches the element.
 */
export function setDelta(perMember: Float64Array[], n: number): Float64Array {
  const out = new Float64Array(n).fill(NaN);
  const buf = new Float64Array(perMember.length);
  for (let q = 0; q < n; q++) {
    let k = 0;
    for (const d of perMember) if (!Number.isNaN(d[q])) buf[k++] = d[q];
    if (k === 0) continue;
    out[q] = k === 1 ? buf[0] : Math.fround(canonicalSum(buf, k));
  }
  return out;
}
