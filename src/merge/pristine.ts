/**
 * The original ("pristine") values of the touched elements of one parameter, reference
 * counted by how many applied adapters touch each element. Sparse (sorted indices) while
 * few elements are touched, a dense copy once more than half are (cheaper per element).
 * Invariant kept by the patcher: an element with no reference holds its pristine value.
 */
export class PristineStore {
  /** Sorted touched elements (sparse mode), or null in dense mode. */
  private idx: Int32Array | null = new Int32Array(0);
  /** Pristine values: aligned with `idx`, or one per element in dense mode. */
  private vals = new Float32Array(0);
  private refs = new Uint32Array(0);
  private live = 0;

  constructor(readonly numel: number) {}

  /** True when no element is referenced (the store can be dropped). */
  get empty(): boolean {
    return this.live === 0;
  }

  /** Take a reference on `touched` (sorted; null = all), saving values seen for the first time. */
  acquire(weight: Float32Array, touched: Int32Array | null): void {
    if (this.idx !== null && (touched === null || this.idx.length + touched.length > this.numel / 2)) this.toDense();
    if (this.idx === null) {
      const count = touched ? touched.length : this.numel;
      for (let k = 0; k < count; k++) {
        const e = touched ? touched[k] : k;
        if (this.refs[e]++ === 0) {
          this.vals[e] = weight[e];
          this.live++;
        }
      }
      return;
    }
    const old = this.idx;
    const size = countUnion(old, touched!);
    const idx = new Int32Array(size);
    const vals = new Float32Array(size);
    const refs = new Uint32Array(size);
    let i = 0, j = 0;
    for (let k = 0; k < size; k++) {
      const x = i < old.length ? old[i] : Infinity;
      const y = j < touched!.length ? touched![j] : Infinity;
      if (x <= y) {
        idx[k] = x;
        vals[k] = this.vals[i];
        refs[k] = this.refs[i] + (x === y ? 1 : 0);
        i++;
        if (x === y) j++;
      } else {
        idx[k] = y;
        vals[k] = weight[y];
        refs[k] = 1;
        j++;
      }
    }
    this.idx = idx;
    this.vals = vals;
    this.refs = refs;
    this.live = size;
  }

  /** Drop a reference on `touched`; call after the weights there were recomputed. */
  release(touched: Int32Array | null): void {
    if (this.idx === null) {
      const count = touched ? touched.length : this.numel;
      for (let k = 0; k < count; k++) if (--this.refs[touched ? touched[k] : k] === 0) this.live--;
      if (this.live === 0) this.reset();
      return;
    }
    const idx = this.idx;
    let pos = 0;
    for (let k = 0; k < touched!.length; k++) {
      pos = lowerBound(idx, pos, touched![k]);
      if (--this.refs[pos] === 0) this.live--;
    }
    let w = 0;
    for (let r = 0; r < idx.length; r++) {
      if (this.refs[r] === 0) continue;
      idx[w] = idx[r];
      this.vals[w] = this.vals[r];
      this.refs[w] = this.refs[r];
      w++;
    }
    this.idx = idx.slice(0, w);
    this.vals = this.vals.slice(0, w);
    this.refs = this.refs.slice(0, w);
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

  /** Write the pristine values of all referenced elements into `out` (a copy of the weight). */
  restoreInto(out: Float32Array): void {
    if (this.idx === null) {
      for (let e = 0; e < this.numel; e++) if (this.refs[e] > 0) out[e] = this.vals[e];
    } else {
      for (let k = 0; k < this.idx.length; k++) out[this.idx[k]] = this.vals[k];
    }
  }

  private toDense(): void {
    const vals = new Float32Array(this.numel);
    const refs = new Uint32Array(this.numel);
    const idx = this.idx!;
    for (let k = 0; k < idx.length; k++) {
      vals[idx[k]] = this.vals[k];
      refs[idx[k]] = this.refs[k];
    }
    this.idx = null;
    this.vals = vals;
    this.refs = refs;
  }

  private reset(): void {
    this.idx = new Int32Array(0);
    this.vals = new Float32Array(0);
    this.refs = new Uint32Array(0);
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
    if (a[i] < b[j]) i++;
    else if (b[j] < a[i]) j++;
    else { i++; j++; }
    n++;
  }
  return n + (a.length - i) + (b.length - j);
}
