/**
 * Fuse adapters into base weights in place, and unfuse them exactly.
 *
 * Reverting never subtracts: the patcher keeps the pristine value of every touched element
 * (reference counted across applied adapters) and recomputes touched elements from those
 * values plus the adapters still applied. So after any sequence of apply/revert the weights
 * equal a from-scratch application of the applied set, and reverting everything gives back
 * the original bits. The value rule (see types.ts): w = float32(w0 + D) with D the
 * canonical sum of the adapters' float32 deltas, then 0 wherever an applied mask clears.
 *
 * Hot swaps touch only what they must. An element exactly one applied adapter touches is
 * worked out from that adapter alone (float32(p + d), no merging or sorting), which is every
 * element when a single mask-free sparse delta is applied; reverting writes back the saved
 * pristine value of every element no remaining adapter touches, and recomputes the rest.
 */
import { SparsetuneError } from '../errors.js';
import { numel, type HostTensor } from '../tensor.js';
import { checkFingerprint, fingerprintWeights, hashTensors } from './fingerprint.js';
import { PristineStore, gather, lowerBound, scatter } from './pristine.js';
import { canonicalSum, reduceAdapter, unionSorted, type ParamEdit } from './reduce.js';
import type { Adapter, AdapterMeta } from './types.js';
import { validateAdapter } from './validate.js';

/** A fused adapter; pass it to `WeightPatcher.revert` to take the adapter out again. */
export interface AppliedHandle {
  readonly id: number;
  /** The applied adapter's metadata (method, kind, base...). */
  readonly meta: AdapterMeta;
}

interface AppliedRecord {
  handle: AppliedHandle;
  /** Per parameter: this adapter's canonical edit and the elements it touches. */
  params: Map<string, RecordParam>;
}

interface RecordParam {
  edit: ParamEdit;
  /** Sorted elements the edit touches (delta and mask), or null for all of them. */
  touched: Int32Array | null;
}

interface ParamState {
  weight: Float32Array;
  store: PristineStore;
  /** Applied records touching this parameter, in application order... */
  records: AppliedRecord[];
  /** ...and their edits of it (same positions), so recomputing needs no Map lookups. */
  edits: ParamEdit[];
}

export interface ApplyOptions {
  /** Apply even if the adapter's base fingerprint differs from the weights'. */
  force?: boolean;
  /** Fingerprint of the pristine weights, if already known (skips hashing them). */
  fingerprint?: string;
}

/** Applies and reverts adapters on one set of base weights (mutated in place). */
export class WeightPatcher {
  private readonly shapes = new Map<string, number[]>();
  private readonly states = new Map<string, ParamState>();
  private readonly records = new Map<AppliedHandle, AppliedRecord>();
  private nextId = 1;
  private baseFingerprint: string | undefined;

  /** `opts.fingerprint`: the pristine weights' fingerprint, if known. */
  constructor(private readonly weights: Map<string, HostTensor<'f32'>>, opts: { fingerprint?: string } = {}) {
    for (const [name, t] of weights) {
      if (t.dtype !== 'f32' || !(t.data instanceof Float32Array) || t.data.length !== numel(t.shape)) {
        throw new SparsetuneError('BAD_ARGUMENT', `WeightPatcher: base weight "${name}" must be an f32 tensor whose data matches shape [${t.shape}]`);
      }
      this.shapes.set(name, t.shape);
    }
    this.baseFingerprint = opts.fingerprint;
  }

  /** Handles of the applied adapters, in application order. */
  get applied(): AppliedHandle[] {
    return [...this.records.keys()];
  }

  /** Fingerprint of the pristine base (computed once, with any applied adapters taken out of the hash). */
  get fingerprint(): string {
    if (this.baseFingerprint === undefined) {
      if (this.records.size === 0) {
        this.baseFingerprint = fingerprintWeights(this.weights);
      } else {
        const pristine = new Map<string, HostTensor>(this.weights);
        for (const [name, st] of this.states) {
          const copy = st.weight.slice();
          st.store.restoreInto(copy);
          pristine.set(name, { ...this.weights.get(name)!, data: copy });
        }
        this.baseFingerprint = hashTensors(pristine);
      }
    }
    return this.baseFingerprint;
  }

  /**
   * Fuse `adapter` into the weights. Everything (names, shapes, index ranges, finite
   * values, fingerprint) is checked before any weight changes, so a bad adapter leaves the
   * base untouched.
   */
  apply(adapter: Adapter, opts: ApplyOptions = {}): AppliedHandle {
    if (adapter.pruned) {
      throw new SparsetuneError(
        'BAD_ARGUMENT',
        `adapter "${adapter.meta.method}" is a pruned (structural) adapter: it changes parameter shapes and cannot be fused in place; export the pruned model with \`sparsetune merge\` instead`,
      );
    }
    const fusable = adapter.additive.size + adapter.structured.size + adapter.masks.size + adapter.lowrank.size;
    if (fusable === 0 && (adapter.extra?.size ?? 0) > 0) {
      throw new SparsetuneError(
        'BAD_ARGUMENT',
        `adapter "${adapter.meta.method}" has no weight delta to fuse (its tensors form a separate branch that runs unfused); use the method's adapterHooks (the CLI does this) instead of fusing it`,
      );
    }
    if (!opts.force && adapter.meta.base.fingerprint !== '') {
      checkFingerprint(adapter, opts.fingerprint ?? this.fingerprint, opts);
    }
    validateAdapter(adapter, { shapes: this.shapes });
    const edits = reduceAdapter(adapter, (name) => this.shapes.get(name));

    const handle: AppliedHandle = Object.freeze({ id: this.nextId++, meta: adapter.meta });
    const record: AppliedRecord = { handle, params: new Map() };
    for (const [name, edit] of edits) {
      const touched = touchedBy(edit);
      record.params.set(name, { edit, touched });
      let st = this.states.get(name);
      if (!st) {
        const weight = this.weights.get(name)!.data;
        st = { weight, store: new PristineStore(weight.length), records: [], edits: [] };
        this.states.set(name, st);
      }
      st.records.push(record);
      st.edits.push(edit);
      fuseEdit(st, edit, touched);
    }
    this.records.set(handle, record);
    return handle;
  }

  /** Take one applied adapter out; the others stay applied, in any order of reverts. */
  revert(h: AppliedHandle): void {
    const record = this.records.get(h);
    if (!record) {
      throw new SparsetuneError('BAD_ARGUMENT', `revert: handle ${h?.id} is not applied on this patcher (already reverted, or from another patcher)`);
    }
    for (const [name, { touched }] of record.params) {
      const st = this.states.get(name)!;
      const at = st.records.indexOf(record);
      st.records.splice(at, 1);
      st.edits.splice(at, 1);
      if (st.records.length === 0) {
        // Nothing else touches this parameter: every held element goes back to its pristine value.
        st.store.restoreInto(st.weight);
        this.states.delete(name);
        continue;
      }
      // Elements no other adapter touches get their pristine value back; the rest are recomputed.
      const still = st.store.release(touched, st.weight);
      if (still.length > 0) recompute(st, touched === null ? still : pick(touched, still));
    }
    this.records.delete(h);
  }

  /** Revert every applied adapter (newest first); the weights are then the original bits. */
  revertAll(): void {
    for (const h of this.applied.reverse()) this.revert(h);
  }
}

/** Elements an edit touches (sorted), or null for all of them. Shares the edit's own arrays when it can. */
function touchedBy(edit: ParamEdit): Int32Array | null {
  if (edit.delta !== null && edit.idx === null) return null;
  if (edit.cleared === null) return edit.idx ?? new Int32Array(0);
  if (edit.delta === null) return edit.cleared;
  return unionSorted(edit.idx!, edit.cleared);
}

/** Fuse `edit`, just added as the last of `st.edits`, touching `touched`. */
function fuseEdit(st: ParamState, edit: ParamEdit, touched: Int32Array | null): void {
  if (edit.cleared === null && edit.delta !== null) {
    if (st.store.empty) {
      fuseAlone(st.weight, st.store, edit);
      return;
    }
    if (edit.idx !== null) {
      fuseBeside(st, edit);
      return;
    }
  }
  st.store.acquire(st.weight, touched);
  recompute(st, touched);
}

/**
 * Fuse a mask-free sparse edit onto a parameter other adapters already patch. Elements only
 * this edit touches take the one-adapter fast path (float32(p + d), p = the current weight,
 * which is pristine there); only the elements it shares with others are recomputed.
 */
function fuseBeside(st: ParamState, edit: ParamEdit): void {
  const weight = st.weight;
  const idx = edit.idx!;
  const delta = edit.delta!;
  const seen = new Float32Array(idx.length);
  gather(weight, idx, seen);
  const shared = st.store.acquire(weight, idx, seen);
  const nShared = shared.length;
  let s = 0;
  for (let k = 0; k < idx.length; k++) {
    if (s < nShared && shared[s] === k) {
      s++;
      continue;
    }
    const d = delta[k];
    if (d !== 0) weight[idx[k]] = seen[k] + d;
  }
  if (nShared > 0) recompute(st, pick(idx, shared));
}

/** The entries of `list` at `positions` (both sorted, so the result is sorted too). */
function pick(list: Int32Array, positions: Int32Array): Int32Array {
  const out = new Int32Array(positions.length);
  for (let k = 0; k < positions.length; k++) out[k] = list[positions[k]];
  return out;
}

/**
 * Fuse the only edit of a parameter that nothing else touches and that has no mask, saving
 * pristine values and patching in one pass: w = float32(p + d), the one-term canonical sum.
 * A zero delta leaves the pristine bits alone (p + 0 would turn -0 into +0).
 */
function fuseAlone(weight: Float32Array, store: PristineStore, edit: ParamEdit): void {
  const delta = edit.delta!;
  const idx = edit.idx;
  if (idx === null) {
    const saved = weight.slice();
    for (let e = 0; e < saved.length; e++) {
      const d = delta[e];
      if (d !== 0) weight[e] = saved[e] + d;
    }
    store.adopt(null, saved);
    return;
  }
  const n = idx.length;
  const saved = new Float32Array(n);
  // Reads first, writes in a second pass: the writes then never wait on a cache miss.
  gather(weight, idx, saved);
  for (let k = 0; k < n; k++) {
    const d = delta[k];
    if (d !== 0) weight[idx[k]] = saved[k] + d;
  }
  store.adopt(idx, saved);
}

/** Elements recomputed per batch: their new values are worked out first, then scattered. */
const BATCH = 4096;
const batchValues = new Float32Array(BATCH);

/**
 * Recompute `touched` elements (sorted; null = all) from pristine values and the applied
 * edits. Every list is sorted, so each is walked by a galloping cursor (no per-element
 * search). Values are computed in batches by sequential, branchy walks and then written in a
 * separate branch-free pass, so the scattered writes to the weight can overlap.
 */
function recompute(st: ParamState, touched: Int32Array | null): void {
  const weight = st.weight;
  const edits = st.edits;
  const R = edits.length;
  const pIdx = st.store.index;
  const pVals = st.store.values;
  const deltaPos = new Int32Array(R);
  const clearPos = new Int32Array(R);
  const buf = new Float64Array(R);
  const count = touched === null ? weight.length : touched.length;
  let pPos = 0;
  for (let start = 0; start < count; start += BATCH) {
    const end = Math.min(count, start + BATCH);
    for (let k = start; k < end; k++) {
      const e = touched === null ? k : touched[k];
      let p: number;
      if (pIdx === null) p = pVals[e];
      else {
        pPos = lowerBound(pIdx, pPos, e);
        p = pVals[pPos];
      }
      let masked = false;
      let n = 0;
      for (let r = 0; r < R; r++) {
        const edit = edits[r];
        const cleared = edit.cleared;
        if (cleared !== null && !masked) {
          const c = lowerBound(cleared, clearPos[r], e);
          clearPos[r] = c;
          if (c < cleared.length && cleared[c] === e) masked = true;
        }
        const delta = edit.delta;
        if (delta !== null) {
          const idx = edit.idx;
          if (idx === null) buf[n++] = delta[e];
          else {
            const c = lowerBound(idx, deltaPos[r], e);
            deltaPos[r] = c;
            if (c < idx.length && idx[c] === e) buf[n++] = delta[c];
          }
        }
      }
      let v: number;
      if (masked) v = 0;
      else if (n === 0) v = p;
      else {
        // One term is already a float32; two terms add the same in either order.
        const D = n === 1 ? buf[0] : Math.fround(n === 2 ? buf[0] + buf[1] : canonicalSum(buf, n));
        // A zero delta leaves the pristine bits alone (p + 0 would turn -0 into +0).
        v = D === 0 ? p : p + D;
      }
      batchValues[k - start] = v; // the float32 store rounds p + D once, as the weight would
    }
    if (touched === null) weight.set(batchValues.subarray(0, end - start), start);
    else scatter(weight, touched, batchValues, start, end);
  }
}
