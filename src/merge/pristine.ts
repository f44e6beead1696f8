/**
 * The original ("pristine") values of the touched elements of one parameter, reference
 * counted by how many applied adapters touch each element. Sparse (sorted indices) while
 * few elements are touched, a dense copy once more than half are (cheaper per element).
 * Invariant kept by the patcher: an element with no reference holds its pristine value.
 *
 * Everything lives in flat typed arrays (no per-element objects), and the store never
 * writes into an index list it was handed: it may keep a reference to one instead of a copy.
 */
import { SparsetuneError } from '../errors.js';

const NO_INDICES = new Int32Array(0);
const NO_VALUES = new Float32Array(0);
const NO_REFS = new Uint32Array(0);

export class PristineStore {
  /** Sorted touched elements (sparse mode), or null in dense mode. Never written in place. */
  private idx: Int32Array | null = NO_INDICES;
  /** Pristine values: aligned with `idx`, or one per element in dense mode. */
  private vals = NO_VALUES;
  /**
   * Reference counts aligned like `vals`, or null when every held element has exactly one
   * (the common single-adapter case: no counts are allocated until a second reference).
   */
  private refs: Uint32Array | null = NO_REFS;
  private live = 0;

  constructor(readonly numel: number) {}

  /** True when no element is referenced (the store can be dropped). */
  get empty(): boolean {
    return this.live === 0;
  }

  /** Sorted referenced elements (sparse mode), or null in dense mode. Read only. */
  get index(): Int32Array | null {
    return this.idx;
  }

  /**
   * Pristine values, aligned with `index` (sparse mode) or one slot per element (dense mode;
   * only referenced slots are meaningful). Read only; valid until the next acquire/release.
   */
  get values(): Float32Array {
    return this.vals;
  }

  /**
   * Fill an empty store in one step with one reference on each element of `touched`
   * (sorted; null = all) whose pristine values the caller already read into `vals`
   * (aligned with `touched`, or one per element). Takes ownership of both arrays: the
   * caller must not change them afterwards. Lets a caller save and patch in a single pass.
   */
  adopt(touched: Int32Array | null, vals: Float32Array): void {
    const count = touched ? touched.length : this.numel;
    if (this.live !== 0 || vals.length !== count) {
      throw new SparsetuneError('BAD_ARGUMENT', `PristineStore.adopt needs an empty store and one value per element (got ${vals.length} values for ${count} elements, ${this.live} already held); use acquire to add references`);
    }
    if (count === 0) return;
    this.idx = touched;
    this.vals = vals;
    this.refs = null;
    this.live = count;
  }

  /** Take a reference on `touched` (sorted; null = all), saving values seen for the first time. */
  acquire(weight: Float32Array, touched: Int32Array | null): void {
    if (touched !== null && touched.length === 0) return;
    if (this.idx !== null && (touched === null || this.idx.length + touched.length > this.numel / 2)) this.toDense();
    if (this.idx === null) {
      this.acquireDense(weight, touched);
      return;
    }
    if (this.live === 0) {
      // First use: save the touched values directly (no merge with an empty list).
      const t = touched!;
      const vals = new Float32Array(t.length);
      for (let k = 0; k < t.length; k++) vals[k] = weight[t[k]];
      this.idx = t.slice();
      this.vals = vals;
      this.refs = null;
      this.live = t.length;
      return;
    }
    this.acquireSparse(weight, touched!);
  }

  /** Drop a reference on `touched`; call after the weights there were recomputed. */
  release(touched: Int32Array | null): void {
    if (touched !== null && touched.length === 0) return;
    const refs = this.counts();
    if (this.idx === null) {
      let live = this.live;
      if (touched === null) {
        for (let e = 0; e < this.numel; e++) if (--refs[e] === 0) live--;
      } else {
        for (let k = 0; k < touched.length; k++) if (--refs[touched[k]] === 0) live--;
      }
      this.live = live;
      if (live === 0) this.reset();
      return;
    }
    const idx = this.idx;
    let dropped = 0;
    let pos = 0;
    for (let k = 0; k < touched!.length; k++) {
      pos = lowerBound(idx, pos, touched![k]);
      if (--refs[pos] === 0) dropped++;
    }
    if (dropped === 0) return;
    const size = idx.length - dropped;
    if (size === 0) {
      this.reset();
      return;
    }
    // Compact into fresh arrays: `idx` may be shared with the caller, so it is never written.
    const vals = this.vals;
    const nIdx = new Int32Array(size);
    const nVals = new Float32Array(size);
    const nRefs = new Uint32Array(size);
    let w = 0;
    for (let r = 0; r < idx.length; r++) {
      const c = refs[r];
      if (c === 0) continue;
      nIdx[w] = idx[r];
      nVals[w] = vals[r];
      nRefs[w] = c;
      w++;
    }
    this.idx = nIdx;
    this.vals = nVals;
    this.refs = nRefs;
    this.live = size;
  }

  /** A lookup of pristine values for referenced elements asked in increasing order. */
  reader(): (e: number) => number {
    const idx = this.idx;
    const vals = this.vals;
    if (idx === null) return (e) => vals[e];
    let pos = 0;
    return (e) => {
      pos = lowerBound(idx, pos, e);
      return vals[pos];
    };
  }

  /** Write the pristine values of all referenced elements into `out` (a copy of the weight, or the weight itself). */
  restoreInto(out: Float32Array): void {
    const vals = this.vals;
    if (this.idx === null) {
      const refs = this.refs;
      if (refs === null) out.set(vals);
      else for (let e = 0; e < this.numel; e++) if (refs[e] > 0) out[e] = vals[e];
      return;
    }
    const idx = this.idx;
    const n = idx.length;
    let k = 0;
    // Unrolled: the scattered writes then overlap better.
    for (; k + 4 <= n; k += 4) {
      out[idx[k]] = vals[k];
      out[idx[k + 1]] = vals[k + 1];
      out[idx[k + 2]] = vals[k + 2];
      out[idx[k + 3]] = vals[k + 3];
    }
    for (; k < n; k++) out[idx[k]] = vals[k];
  }

  /** The reference counts, materialized (all ones) if they were implicit. */
  private counts(): Uint32Array {
    if (this.refs === null) this.refs = new Uint32Array(this.idx === null ? this.numel : this.idx.length).fill(1);
    return this.refs;
  }

  private acquireDense(weight: Float32Array, touched: Int32Array | null): void {
    const refs = this.counts();
    const vals = this.vals;
    let live = this.live;
    if (touched === null) {
      for (let e = 0; e < this.numel; e++) {
        if (refs[e]++ === 0) {
          vals[e] = weight[e];
          live++;
        }
      }
    } else {
      for (let k = 0; k < touched.length; k++) {
        const e = touched[k];
        if (refs[e]++ === 0) {
          vals[e] = weight[e];
          live++;
        }
      }
    }
    this.live = live;
  }

  /** Merge `touched` into the sorted list; new elements save their current weight. */
  private acquireSparse(weight: Float32Array, touched: Int32Array): void {
    const old = this.idx!;
    const oldVals = this.vals;
    const oldRefs = this.counts();
    const size = countUnion(old, touched);
    const idx = new Int32Array(size);
    const vals = new Float32Array(size);
    const refs = new Uint32Array(size);
    const na = old.length;
    const nb = touched.length;
    let i = 0, j = 0, k = 0;
    while (i < na && j < nb) {
      const x = old[i];
      const y = touched[j];
      if (x < y) {
        idx[k] = x; vals[k] = oldVals[i]; refs[k] = oldRefs[i]; i++;
      } else if (y < x) {
        idx[k] = y; vals[k] = weight[y]; refs[k] = 1; j++;
      } else {
        idx[k] = x; vals[k] = oldVals[i]; refs[k] = oldRefs[i] + 1; i++; j++;
      }
      k++;
    }
    for (; i < na; i++, k++) {
      idx[k] = old[i]; vals[k] = oldVals[i]; refs[k] = oldRefs[i];
    }
    for (; j < nb; j++, k++) {
      const y = touched[j];
      idx[k] = y; vals[k] = weight[y]; refs[k] = 1;
    }
    this.idx = idx;
    this.vals = vals;
    this.refs = refs;
    this.live = size;
  }

  private toDense(): void {
    const vals = new Float32Array(this.numel);
    const refs = new Uint32Array(this.numel);
    const idx = this.idx!;
    for (let k = 0; k < idx.length; k++) {
      vals[idx[k]] = this.vals[k];
      refs[idx[k]] = this.refs === null ? 1 : this.refs[k];
    }
    this.idx = null;
    this.vals = vals;
    this.refs = refs;
  }

  private reset(): void {
    this.idx = NO_INDICES;
    this.vals = NO_VALUES;
    this.refs = NO_REFS;
    this.live = 0;
  }
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

function countUnion(a: Int32Array, b: Int32Array): number {
  let i = 0, j = 0, n = 0;
  while (i < a.length && j < b.length) {
    const x = a[i], y = b[j];
    if (x < y) i++;
    else if (y < x) j++;
    else { i++; j++; }
    n++;
  }
  return n + (a.length - i) + (b.length - j);
}
