/**
 * The prepared ("fast") form of an adapter, built once by `WeightPatcher.prepare` so that
 * applying and reverting it are plain scatters into the weights.
 *
 * Per parameter it holds the sorted elements the adapter touches (delta or mask), its
 * canonical float32 delta and mask flags on them (reduce.ts), and, for sparse parameters,
 * two values per element read and worked out at prepare time: the pristine weight, and the
 * weight with this adapter alone applied there (float32(p + d), p where d is 0, 0 where it
 * masks). The sparse fast path then never reads the weights: a cache-missing gather is most
 * of the cost of a fuse, and those values cannot change while only the patcher writes.
 */
import type { AdapterMeta } from './types.js';
import type { ParamEdit } from './reduce.js';

/** One parameter of a prepared adapter. Every array is owned by it and never written after preparing. */
export interface PreparedParam {
  readonly name: string;
  /** The patcher's weight buffer for this parameter. */
  readonly weight: Float32Array;
  /** Sorted touched elements (delta or mask), or null for every element (a dense delta, e.g. low-rank). */
  readonly idx: Int32Array | null;
  /** The adapter's float32 delta at each touched element (0 where it only masks); null when it only masks. */
  readonly delta: Float32Array | null;
  /** 1 where the adapter's mask clears the element, aligned like `delta`; null when it has no mask here. */
  readonly cleared: Uint8Array | null;
  /** Sparse only: the pristine weight at each touched element. */
  readonly pristine: Float32Array | null;
  /** Sparse only: each touched element's value when only this adapter touches it; null = all 0 (a mask alone). */
  readonly fused: Float32Array | null;
}

/**
 * An adapter made ready to fuse on one WeightPatcher (see `WeightPatcher.prepare`): already
 * validated against the base shapes, fingerprint-checked and reduced, with the pristine
 * values it needs saved. Pass it to `apply` as often as needed; it is never modified.
 */
export interface PreparedAdapter {
  /** The adapter's metadata (method, kind, base...). */
  readonly meta: AdapterMeta;
  /** Elements touched (delta or mask) over all parameters; a dense parameter counts all its elements. */
  readonly elements: number;
  /** Bytes of typed arrays the prepared form holds (about 16 per touched element of a sparse parameter). */
  readonly bytes: number;
}

/** The concrete prepared adapter; only the patcher that made it may apply it. */
export class PreparedForm implements PreparedAdapter {
  readonly elements: number;
  readonly bytes: number;
  constructor(
    readonly owner: object,
    readonly meta: AdapterMeta,
    readonly params: readonly PreparedParam[],
  ) {
    let elements = 0;
    let bytes = 0;
    for (const p of params) {
      elements += p.idx ? p.idx.length : p.weight.length;
      for (const a of [p.idx, p.delta, p.cleared, p.pristine, p.fused]) bytes += a?.byteLength ?? 0;
    }
    this.elements = elements;
    this.bytes = bytes;
  }
}

/** What a prepared parameter is built from: the touched elements and aligned delta/flags (no pristine values yet). */
export interface TouchedForm {
  idx: Int32Array | null;
  delta: Float32Array | null;
  cleared: Uint8Array | null;
}

/**
 * Align one canonical edit on the elements it touches: the union of its delta's and its
 * mask's elements, the delta there (0 where only the mask is) and a 1 where the mask clears.
 * Shares the edit's arrays where no union is needed (reduce.ts hands out fresh copies).
 */
export function touchedForm(edit: ParamEdit, numel: number): TouchedForm {
  const { idx, delta, cleared } = edit;
  if (delta !== null && idx === null) {
    // Dense delta: flags per element.
    let flags: Uint8Array | null = null;
    if (cleared !== null) {
      flags = new Uint8Array(numel);
      for (let k = 0; k < cleared.length; k++) flags[cleared[k]] = 1;
    }
    return { idx: null, delta, cleared: flags };
  }
  if (cleared === null) return { idx: idx ?? new Int32Array(0), delta, cleared: null };
  if (delta === null) return { idx: cleared, delta: null, cleared: new Uint8Array(cleared.length).fill(1) };
  const a = idx!;
  const out = new Int32Array(a.length + cleared.length);
  const d = new Float32Array(out.length);
  const f = new Uint8Array(out.length);
  let i = 0, j = 0, k = 0;
  while (i < a.length && j < cleared.length) {
    const x = a[i], y = cleared[j];
    if (x < y) { out[k] = x; d[k] = delta[i++]; }
    else if (y < x) { out[k] = y; f[k] = 1; j++; }
    else { out[k] = x; d[k] = delta[i++]; f[k] = 1; j++; }
    k++;
  }
  for (; i < a.length; k++) { out[k] = a[i]; d[k] = delta[i++]; }
  for (; j < cleared.length; k++, j++) { out[k] = cleared[j]; f[k] = 1; }
  return { idx: out.slice(0, k), delta: d.slice(0, k), cleared: f.slice(0, k) };
}

/**
 * The value of each touched element when only this edit touches it: 0 where it masks, the
 * pristine bits where its delta is 0 (p + 0 would turn -0 into +0), else float32(p + d).
 * Null for a mask alone (every value is 0).
 */
export function fusedValues(t: TouchedForm, pristine: Float32Array): Float32Array | null {
  const { delta, cleared } = t;
  if (delta === null) return null;
  const n = pristine.length;
  const out = new Float32Array(n);
  for (let k = 0; k < n; k++) {
    const d = delta[k];
    out[k] = cleared !== null && cleared[k] === 1 ? 0 : d === 0 ? pristine[k] : pristine[k] + d;
  }
  return out;
}
