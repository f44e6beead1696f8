/**
 * Reduce an adapter to one float32 delta per touched element (plus the elements its masks
 * clear), the canonical form that fusing (apply.ts) and composing (compose.ts) share.
 * Summation is float64 in ascending value order, rounded once: the result depends on the
 * multiset of contributions only, so it is the same whatever order adapters come in.
 */
import { SparsetuneError } from '../errors.js';
import { numel as numelOf } from '../tensor.js';
import { clearedIndices } from './bits.js';
import { biasParamOf, type Adapter, type LowRankPair, type StructuredDelta } from './types.js';

/** One adapter's effect on one parameter. */
export interface ParamEdit {
  /** Element count of the parameter, when known. */
  numel: number | undefined;
  /** Sorted flat indices the delta covers; null = every element (dense, `delta.length === numel`). */
  idx: Int32Array | null;
  /** Float32 delta per covered element; null when the adapter only masks this parameter. */
  delta: Float32Array | null;
  /** Sorted flat indices a mask sets to zero; null when no mask. */
  cleared: Int32Array | null;
}

/** A list of per-element contributions: sparse (sorted idx) or dense (idx null). */
export interface Contribution {
  idx: Int32Array | null;
  vals: ArrayLike<number>;
}

/** Sum the first `n` entries of `buf` in ascending order in float64 (sorts `buf` in place). */
export function canonicalSum(buf: Float64Array, n: number): number {
  for (let i = 1; i < n; i++) {
    const v = buf[i];
    let j = i - 1;
    while (j >= 0 && buf[j] > v) {
      buf[j + 1] = buf[j];
      j--;
    }
    buf[j + 1] = v;
  }
  // Start from the first term (not from +0) so a lone value keeps its bits, -0 included.
  let s = n > 0 ? buf[0] : 0;
  for (let i = 1; i < n; i++) s += buf[i];
  return s;
}

/**
 * scale · B · A as a dense float64 [out, in] array: products of float32 values are exact in
 * float64, accumulated over the rank in order r = 0..R-1, then scaled once.
 */
export function lowRankProduct(pair: LowRankPair): Float64Array {
  const [rank, inDim] = pair.A.shape;
  const outDim = pair.B.shape[0];
  const A = pair.A.data;
  const B = pair.B.data;
  const out = new Float64Array(outDim * inDim);
  for (let o = 0; o < outDim; o++) {
    const row = o * inDim;
    for (let r = 0; r < rank; r++) {
      const b = B[o * rank + r];
      if (b === 0) continue;
      const aRow = r * inDim;
      for (let i = 0; i < inDim; i++) out[row + i] += b * A[aRow + i];
    }
    for (let i = 0; i < inDim; i++) out[row + i] *= pair.scale;
  }
  return out;
}

/** Union of two sorted, unique index lists. */
export function unionSorted(a: Int32Array, b: Int32Array): Int32Array {
  const out = new Int32Array(a.length + b.length);
  let i = 0, j = 0, k = 0;
  while (i < a.length && j < b.length) {
    const x = a[i], y = b[j];
    if (x < y) { out[k++] = x; i++; }
    else if (y < x) { out[k++] = y; j++; }
    else { out[k++] = x; i++; j++; }
  }
  while (i < a.length) out[k++] = a[i++];
  while (j < b.length) out[k++] = b[j++];
  return k === out.length ? out : out.slice(0, k);
}

/**
 * Merge contributions into one float32 value per element (canonical float64 sum, one
 * rounding). The result is dense when any input is dense (then `numel` is required).
 */
export function mergeContributions(sources: Contribution[], numel?: number): { idx: Int32Array | null; vals: Float32Array } {
  const dense = sources.some((s) => s.idx === null);
  if (dense && numel === undefined) throw new SparsetuneError('BAD_ARGUMENT', 'mergeContributions: a dense contribution needs the element count');
  if (sources.length === 1) {
    // Copies, so later changes to the adapter's arrays cannot reach an applied edit.
    const only = sources[0];
    return { idx: only.idx === null ? null : only.idx.slice(), vals: new Float32Array(only.vals) };
  }
  let idx: Int32Array | null = null;
  if (!dense) {
    idx = new Int32Array(0);
    for (const s of sources) idx = unionSorted(idx, s.idx!);
  }
  const count = idx ? idx.length : numel!;
  const vals = new Float32Array(count);
  const cursors = new Int32Array(sources.length);
  const buf = new Float64Array(sources.length);
  for (let k = 0; k < count; k++) {
    const e = idx ? idx[k] : k;
    let n = 0;
    for (let s = 0; s < sources.length; s++) {
      const src = sources[s];
      if (src.idx === null) {
        buf[n++] = src.vals[e];
      } else if (cursors[s] < src.idx.length && src.idx[cursors[s]] === e) {
        // Each source is a subset of the union, so its cursor moves at most one step per element.
        buf[n++] = src.vals[cursors[s]++];
      }
    }
    vals[k] = canonicalSum(buf, n);
  }
  return { idx, vals };
}

/** Flat row-major indices of a structured block inside a parameter with `inDim` columns. */
export function structuredIndices(d: StructuredDelta, inDim: number): Int32Array {
  const colCount = d.cols?.length ?? inDim;
  const rowCount = d.values.length / colCount;
  const out = new Int32Array(d.values.length);
  let k = 0;
  for (let ri = 0; ri < rowCount; ri++) {
    const base = (d.rows ? d.rows[ri] : ri) * inDim;
    for (let ci = 0; ci < colCount; ci++) out[k++] = base + (d.cols ? d.cols[ci] : ci);
  }
  return out;
}

/**
 * The column count of a structured delta's parameter: from `shapes`, the delta's own
 * `shape`, or derived when only `rows` is given.
 */
export function structuredInDim(name: string, d: StructuredDelta, shapeOf: (name: string) => number[] | undefined): number {
  const shape = shapeOf(name) ?? d.shape;
  if (shape) return shape[1];
  if (d.cols === undefined && d.rows !== undefined) return d.values.length / d.rows.length;
  throw new SparsetuneError(
    'BAD_ARGUMENT',
    `structured delta "${name}": its parameter shape is unknown; set StructuredDelta.shape or pass the base shapes`,
  );
}

/** Every parameter an adapter's deltas touch (low-rank bias deltas touch the module's `.bias`). */
export function deltaParams(a: Adapter): Set<string> {
  const out = new Set<string>([...a.additive.keys(), ...a.structured.keys(), ...a.lowrank.keys()]);
  for (const [name, p] of a.lowrank) if (p.biasDelta) out.add(biasParamOf(name));
  return out;
}

/**
 * The raw contributions an adapter makes to parameter `name` (before the within-adapter
 * sum). `shapeOf` supplies parameter shapes where payloads alone do not tell them.
 */
export function contributionsTo(a: Adapter, name: string, shapeOf: (name: string) => number[] | undefined): Contribution[] {
  const out: Contribution[] = [];
  const add = a.additive.get(name);
  if (add) out.push({ idx: add.indices, vals: add.values });
  const st = a.structured.get(name);
  if (st) out.push({ idx: structuredIndices(st, structuredInDim(name, st, shapeOf)), vals: st.values });
  const lr = a.lowrank.get(name);
  if (lr) out.push({ idx: null, vals: lowRankProduct(lr) });
  for (const [weight, p] of a.lowrank) {
    if (p.biasDelta && biasParamOf(weight) === name) {
      const v = new Float64Array(p.biasDelta.length);
      for (let i = 0; i < v.length; i++) v[i] = p.scale * p.biasDelta[i];
      out.push({ idx: null, vals: v });
    }
  }
  return out;
}

/** Element count of parameter `name` as far as the adapter and `shapeOf` tell. */
export function knownNumel(a: Adapter, name: string, shapeOf: (name: string) => number[] | undefined): number | undefined {
  const s = shapeOf(name) ?? a.structured.get(name)?.shape;
  if (s) return numelOf(s);
  const lr = a.lowrank.get(name);
  if (lr) return lr.B.shape[0] * lr.A.shape[1];
  for (const [weight, p] of a.lowrank) if (p.biasDelta && biasParamOf(weight) === name) return p.biasDelta.length;
  const m = a.masks.get(name);
  return m?.numel;
}

/** Reduce every parameter an adapter touches to its canonical ParamEdit. */
export function reduceAdapter(a: Adapter, shapeOf: (name: string) => number[] | undefined): Map<string, ParamEdit> {
  const edits = new Map<string, ParamEdit>();
  for (const name of deltaParams(a)) {
    const n = knownNumel(a, name, shapeOf);
    const merged = mergeContributions(contributionsTo(a, name, shapeOf), n);
    edits.set(name, { numel: n, idx: merged.idx, delta: merged.vals, cleared: null });
  }
  for (const [name, m] of a.masks) {
    const cleared = clearedIndices(m.bits, m.numel);
    const e = edits.get(name);
    if (e) e.cleared = cleared;
    else edits.set(name, { numel: m.numel, idx: null, delta: null, cleared });
  }
  return edits;
}
