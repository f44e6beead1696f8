/**
 * The original ("pristine") values of the touched elements of one parameter, reference
 * counted by how many applied adapters touch each element. Sparse (sorted indices) while
 * few elements are touched, a dense copy once more than half are (cheaper per element).
 * Invariant kept by the patcher: an element with no reference holds its pristine value.
 *
 * Everything lives in flat typed arrays (no per-element objects), and the store never
 * writes into an index list it was handed: it may keep a reference to one instead of a copy.
 * Reads and writes of the (large, cache-missing) weight go through `gather`/`scatter`, kept
 * apart from the branchy merges over the sorted lists so that the cache misses overlap.
 */
import { SparsetuneError } from '../errors.js';

const NO_INDICES = new Int32Array(0);
const NO_VALUES = new Float32Array(0);
const NO_REFS = new Uint32Array(0);

export class PristineStore {
  /** Sorted touched elements (sparse mode), or null in dense mode. Never written in place. */
  private idx: Int32Array | null = NO_INDICES;
  /** Pristine values: aligned with `idx`, or one per element in dense mode. */
  private vals: Float32Array = NO_VALUES;
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

  /**
   * Take a reference on `touched` (sorted; null = all), saving values seen for the first
   * time. `seen`, if given, holds the current weight at each touched element (the caller
   * already read them; the store then does not read `weight` again). Returns the positions
   * in `touched` of the elements that were already referenced ("shared"): every other
   * touched element is referenced by this caller alone.
   */
  acquire(weight: Float32Array, touched: Int32Array | null, seen?: Float32Array): Int32Array {
    if (touched !== null && touched.length === 0) return NO_INDICES;
    if (this.idx !== null && (touched === null || this.idx.length + touched.length > this.numel / 2)) this.toDense();
    if (this.idx === null) return this.acquireDense(weight, touched);
    const t = touched!;
    let current = seen;
    if (current === undefined) {
      current = new Float32Array(t.length);
      gather(weight, t, current);
    }
    if (this.live === 0) {
      // First use: nothing to merge with.
      this.idx = t.slice();
      this.vals = current === seen ? current.slice() : current;
      this.refs = null;
      this.live = t.length;
      return NO_INDICES;
    }
    return this.acquireSparse(t, current);
  }

  /**
   * Drop a reference on `touched` (sorted; null = all). With `weight`, the elements left
   * with no reference get their pristine value written back (nothing else touches them
   * now); without it, call this after the weights there were recomputed. Returns the
   * positions in `touched` of the elements that are still referenced.
   */
  release(touched: Int32Array | null, weight?: Float32Array): Int32Array {
    if (touched !== null && touched.length === 0) return NO_INDICES;
    const refs = this.counts();
    if (this.idx === null) return this.releaseDense(refs, touched, weight);
    const t = touched!;
    const idx = this.idx;
    const vals = this.vals;
    const still = new Int32Array(t.length);
    const droppedAt = new Int32Array(t.length);
    let nStill = 0;
    let nDropped = 0;
    let pos = 0;
    for (let k = 0; k < t.length; k++) {
      pos = lowerBound(idx, pos, t[k]);
      if (--refs[pos] === 0) droppedAt[nDropped++] = pos;
      else still[nStill++] = k;
    }
    if (weight) {
      for (let k = 0; k < nDropped; k++) {
        const p = droppedAt[k];
        weight[idx[p]] = vals[p];
      }
    }
    const size = idx.length - nDropped;
    if (size === 0) this.reset();
    else if (nDropped > 0) this.compact(size);
    return still.subarray(0, nStill);
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
    if (this.idx !== null) {
      scatter(out, this.idx, vals, 0, this.idx.length);
      return;
    }
    const refs = this.refs;
    if (refs === null) out.set(vals);
    else for (let e = 0; e < this.numel; e++) if (refs[e] > 0) out[e] = vals[e];
  }

  /** The reference counts, materialized (all ones) if they were implicit. */
  private counts(): Uint32Array {
    if (this.refs === null) this.refs = new Uint32Array(this.idx === null ? this.numel : this.idx.length).fill(1);
    return this.refs;
  }

  private acquireDense(weight: Float32Array, touched: Int32Array | null): Int32Array {
    const refs = this.counts();
    const vals = this.vals;
    const count = touched === null ? this.numel : touched.length;
    const shared = new Int32Array(count);
    let nShared = 0;
    let live = this.live;
    for (let k = 0; k < count; k++) {
      const e = touched === null ? k : touched[k];
      if (refs[e]++ === 0) {
        vals[e] = weight[e];
        live++;
      } else shared[nShared++] = k;
    }
    this.live = live;
    return shared.slice(0, nShared);
  }

  /** Merge `touched` (current weights `current`) into the sorted list. */
  private acquireSparse(touched: Int32Array, current: Float32Array): Int32Array {
    const old = this.idx!;
    const oldVals = this.vals;
    const oldRefs = this.counts();
    const size = countUnion(old, touched);
    const shared = new Int32Array(old.length + touched.length - size);
    const idx = new Int32Array(size);
    const vals = new Float32Array(size);
    const refs = new Uint32Array(size);
    const na = old.length;
    const nb = touched.length;
    let i = 0, j = 0, k = 0, s = 0;
    while (i < na && j < nb) {
      const x = old[i];
      const y = touched[j];
      if (x < y) {
        idx[k] = x; vals[k] = oldVals[i]; refs[k] = oldRefs[i]; i++;
      } else if (y < x) {
        idx[k] = y; vals[k] = current[j]; refs[k] = 1; j++;
      } else {
        idx[k] = x; vals[k] = oldVals[i]; refs[k] = oldRefs[i] + 1; shared[s++] = j; i++; j++;
      }
      k++;
    }
    for (; i < na; i++, k++) {
      idx[k] = old[i]; vals[k] = oldVals[i]; refs[k] = oldRefs[i];
    }
    for (; j < nb; j++, k++) {
      idx[k] = touched[j]; vals[k] = current[j]; refs[k] = 1;
    }
    this.idx = idx;
    this.vals = vals;
    this.refs = refs;
    this.live = size;
    return shared;
  }

  private releaseDense(refs: Uint32Array, touched: Int32Array | null, weight: Float32Array | undefined): Int32Array {
    const vals = this.vals;
    const count = touched === null ? this.numel : touched.length;
    const still = new Int32Array(count);
    let nStill = 0;
    let live = this.live;
    for (let k = 0; k < count; k++) {
      const e = touched === null ? k : touched[k];
      if (--refs[e] === 0) {
        live--;
        if (weight) weight[e] = vals[e];
      } else still[nStill++] = k;
    }
    this.live = live;
    if (live === 0) this.reset();
    return still.slice(0, nStill);
  }

  /** Keep only the referenced entries, in fresh arrays (`idx` may be shared, so it is never written). */
  private compact(size: number): void {
    const idx = this.idx!;
    const vals = this.vals;
    const refs = this.refs!;
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
