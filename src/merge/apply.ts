/**
 * Fuse adapters into base weights in place, and unfuse them exactly.
 *
 * Reverting never subtracts: the patcher keeps the pristine value of every touched element
 * (reference counted across applied adapters) and recomputes touched elements from those
 * values plus the adapters still applied. So after any sequence of apply/revert the weights
 * equal a from-scratch application of the applied set, and reverting everything gives back
 * the original bits. The value rule (see types.ts): w = float32(w0 + D) with D the
 * canonical sum of the adapters' float32 deltas, then 0 wherever an applied mask clears.
 */
import { SparsetuneError } from '../errors.js';
import { numel, type HostTensor } from '../tensor.js';
import { checkFingerprint, fingerprintWeights, hashTensors } from './fingerprint.js';
import { PristineStore, lowerBound } from './pristine.js';
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
  edits: Map<string, ParamEdit>;
}

interface ParamState {
  name: string;
  weight: Float32Array;
  store: PristineStore;
  /** Applied records touching this parameter, in application order. */
  records: AppliedRecord[];
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
    if (!opts.force && adapter.meta.base.fingerprint !== '') {
      checkFingerprint(adapter, opts.fingerprint ?? this.fingerprint, opts);
    }
    validateAdapter(adapter, { shapes: this.shapes });
    const edits = reduceAdapter(adapter, (name) => this.shapes.get(name));

    const handle: AppliedHandle = Object.freeze({ id: this.nextId++, meta: adapter.meta });
    const record: AppliedRecord = { handle, edits };
    for (const [name, edit] of edits) {
      let st = this.states.get(name);
      if (!st) {
        const weight = this.weights.get(name)!.data;
        st = { name, weight, store: new PristineStore(weight.length), records: [] };
        this.states.set(name, st);
      }
      const touched = touchedBy(edit);
      st.store.acquire(st.weight, touched);
      st.records.push(record);
      recompute(st, touched);
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
    for (const [name, edit] of record.edits) {
      const st = this.states.get(name)!;
      st.records.splice(st.records.indexOf(record), 1);
      const touched = touchedBy(edit);
      recompute(st, touched);
      st.store.release(touched);
      if (st.store.empty) this.states.delete(name);
    }
    this.records.delete(h);
  }

  /** Revert every applied adapter (newest first); the weights are then the original bits. */
  revertAll(): void {
    for (const h of this.applied.reverse()) this.revert(h);
  }
}

/** Elements an edit touches (sorted), or null for all of them. */
function touchedBy(edit: ParamEdit): Int32Array | null {
  if (edit.delta && edit.idx === null) return null;
  return unionSorted(edit.delta ? edit.idx! : new Int32Array(0), edit.cleared ?? new Int32Array(0));
}

/** Cursor over one sorted index list, for lookups in increasing element order. */
class SortedCursor {
  private pos = 0;
  constructor(private readonly idx: Int32Array) {}
  /** Position of `e` in the list, or -1. */
  find(e: number): number {
    this.pos = lowerBound(this.idx, this.pos, e);
    return this.pos < this.idx.length && this.idx[this.pos] === e ? this.pos : -1;
  }
}

/** Recompute `touched` elements (sorted; null = all) from pristine values and the applied records. */
function recompute(st: ParamState, touched: Int32Array | null): void {
  const pristine = st.store.reader();
  const list = st.records.map((r) => r.edits.get(st.name)!);
  const deltaCursors = list.map((e) => (e.delta && e.idx ? new SortedCursor(e.idx) : null));
  const clearCursors = list.map((e) => (e.cleared ? new SortedCursor(e.cleared) : null));
  const buf = new Float64Array(list.length);
  const count = touched ? touched.length : st.weight.length;
  for (let k = 0; k < count; k++) {
    const e = touched ? touched[k] : k;
    let masked = false;
    let n = 0;
    for (let r = 0; r < list.length; r++) {
      const edit = list[r];
      if (edit.delta) {
        if (edit.idx === null) buf[n++] = edit.delta[e];
        else {
          const pos = deltaCursors[r]!.find(e);
          if (pos >= 0) buf[n++] = edit.delta[pos];
        }
      }
      if (!masked && edit.cleared && clearCursors[r]!.find(e) >= 0) masked = true;
    }
    const p = pristine(e);
    if (masked) st.weight[e] = 0;
    else if (n === 0) st.weight[e] = p;
    else {
      const D = Math.fround(canonicalSum(buf, n));
      // A zero delta leaves the pristine bits alone (p + 0 would turn -0 into +0).
      st.weight[e] = D === 0 ? p : p + D;
    }
  }
}
