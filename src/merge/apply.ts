/**
 * Fuse adapters into base weights in place, and unfuse them exactly.
 *
 * Reverting never subtracts: the pristine value of every touched element is kept (by the
 * applied edits that touch it, see pristine.ts) and touched elements are recomputed from
 * those values plus the adapters still applied. So after any sequence of apply/revert the
 * weights equal a from-scratch application of the applied set, and reverting everything
 * gives back the original bits. The value rule (see types.ts): w = float32(w0 + D) with D
 * the canonical sum of the adapters' float32 deltas, then 0 wherever an applied mask clears.
 *
 * Hot swaps: `prepare` does the per-adapter work once (validation, fingerprint, reduction,
 * reading the pristine values, working out the fused values). Applying a prepared adapter
 * then writes its precomputed values where no other applied adapter touches, and reverting
 * writes the pristine values back: scatters at memory speed, no reads of the weights. Only
 * elements several applied adapters share, and dense (low-rank) parameters, are recomputed.
 */
import { SparsetuneError } from '../errors.js';
import { numel, type HostTensor } from '../tensor.js';
import { checkFingerprint, fingerprintWeights, hashTensors } from './fingerprint.js';
import { PreparedForm, fusedValues, touchedForm, type PreparedAdapter, type PreparedParam } from './prepared.js';
import { pristineValues, scatter } from './pristine.js';
import { reduceAdapter } from './reduce.js';
import { rewriteDense, rewriteSparse } from './rewrite.js';
import type { Adapter, AdapterMeta } from './types.js';
import { validateAdapter } from './validate.js';

export type { PreparedAdapter } from './prepared.js';

/** A fused adapter; pass it to `WeightPatcher.revert` to take the adapter out again. */
export interface AppliedHandle {
  readonly id: number;
  /** The applied adapter's metadata (method, kind, base...). */
  readonly meta: AdapterMeta;
}

interface ParamState {
  weight: Float32Array;
  /** Applied edits of this parameter, in application order (an adapter applied twice is here twice). */
  edits: PreparedParam[];
  /** Pristine copy of the whole parameter while dense edits are applied (`denseCount` of them). */
  dense: Float32Array | null;
  denseCount: number;
}

export interface ApplyOptions {
  /** Apply even if the adapter's base fingerprint differs from the weights'. */
  force?: boolean;
  /** Fingerprint of the pristine weights, if already known (skips hashing them). */
  fingerprint?: string;
}

/**
 * Applies and reverts adapters on one set of base weights (mutated in place). While it has
 * adapters applied or prepared, only the patcher may change the weights.
 */
export class WeightPatcher {
  private readonly shapes = new Map<string, number[]>();
  private readonly states = new Map<string, ParamState>();
  private readonly records = new Map<AppliedHandle, PreparedForm>();
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
          pristine.set(name, { ...this.weights.get(name)!, data: st.dense ?? pristineCopy(st) });
        }
        this.baseFingerprint = hashTensors(pristine);
      }
    }
    return this.baseFingerprint;
  }

  /**
   * Do the per-adapter work of `apply` once: check the adapter (names, shapes, index
   * ranges, finite values, fingerprint), reduce it to one float32 delta per element, and
   * save the pristine values and fused values of the elements it touches. Applying the
   * result is then a scatter per parameter. The weights are not changed.
   *
   * The prepared adapter belongs to this patcher and remembers pristine values: it stays
   * valid while only this patcher changes the weights (`apply` spot-checks it and refuses
   * one that no longer matches). It copies what it needs, so later changes to `adapter`
   * do not reach it. Memory: about 16 bytes per touched element of a sparse parameter
   * (its `bytes`), 4-5 per element of a dense one (a low-rank pair's B·A).
   */
  prepare(adapter: Adapter, opts: ApplyOptions = {}): PreparedAdapter {
    return this.prepareForm(adapter, opts, false);
  }

  /**
   * Check and prepare `adapter`; with `fuse`, also fuse each parameter as soon as it is
   * prepared (a plain apply: its pristine values are then still in the cache when the
   * fused values are written). Every check runs before the first parameter is fused.
   */
  private prepareForm(adapter: Adapter, opts: ApplyOptions, fuse: boolean): PreparedForm {
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
    const params: PreparedParam[] = [];
    for (const [name, edit] of reduceAdapter(adapter, (n) => this.shapes.get(n))) {
      const weight = this.weights.get(name)!.data;
      const t = touchedForm(edit, weight.length);
      let p: PreparedParam;
      if (t.idx === null) {
        p = { name, weight, idx: null, delta: t.delta, cleared: t.cleared, pristine: null, fused: null };
      } else {
        if (t.idx.length === 0) continue;
        const st = this.states.get(name);
        const pristine = pristineValues(weight, t.idx, st?.edits ?? [], st?.dense ?? null);
        p = { name, weight, idx: t.idx, delta: t.delta, cleared: t.cleared, pristine, fused: fusedValues(t, pristine) };
      }
      params.push(p);
      if (fuse) this.fuse(p);
    }
    return new PreparedForm(this, adapter.meta, params);
  }

  private fuse(p: PreparedParam): void {
    let st = this.states.get(p.name);
    if (!st) {
      st = { weight: p.weight, edits: [], dense: null, denseCount: 0 };
      this.states.set(p.name, st);
    }
    fuseParam(st, p);
  }

  /**
   * Fuse an adapter into the weights: a plain adapter (checked and prepared first, see
   * `prepare`) or one this patcher prepared (`opts` are then ignored: it was checked when
   * prepared). Everything is checked before any weight changes, so a bad adapter leaves
   * the base untouched.
   */
  apply(adapter: Adapter | PreparedAdapter, opts: ApplyOptions = {}): AppliedHandle {
    let prepared: PreparedForm;
    if (adapter instanceof PreparedForm) {
      prepared = adapter;
      this.checkPrepared(prepared);
      for (const p of prepared.params) this.fuse(p);
    } else {
      prepared = this.prepareForm(adapter as Adapter, opts, true);
    }
    const handle: AppliedHandle = Object.freeze({ id: this.nextId++, meta: prepared.meta });
    this.records.set(handle, prepared);
    return handle;
  }

  /** Take one applied adapter out; the others stay applied, in any order of reverts. */
  revert(h: AppliedHandle): void {
    const prepared = this.records.get(h);
    if (!prepared) {
      throw new SparsetuneError('BAD_ARGUMENT', `revert: handle ${h?.id} is not applied on this patcher (already reverted, or from another patcher)`);
    }
    for (const p of prepared.params) {
      const st = this.states.get(p.name)!;
      unfuseParam(st, p);
      if (st.edits.length === 0) this.states.delete(p.name);
    }
    this.records.delete(h);
  }

  /** Revert every applied adapter (newest first); the weights are then the original bits. */
  revertAll(): void {
    for (const h of this.applied.reverse()) this.revert(h);
  }

  /**
   * Refuse a prepared adapter from another patcher, or one whose saved pristine values no
   * longer match the weights (spot-checked where nothing is applied: the weights were
   * changed outside this patcher after it was prepared).
   */
  private checkPrepared(prepared: PreparedForm): void {
    const what = `prepared adapter "${prepared.meta.method}"`;
    if (prepared.owner !== this) {
      throw new SparsetuneError('BAD_ARGUMENT', `${what} was prepared by another WeightPatcher; prepare it with the patcher that applies it`);
    }
    for (const p of prepared.params) {
      if (p.idx === null || this.states.has(p.name)) continue;
      const last = p.idx.length - 1;
      const k = !samePristine(p, 0) ? 0 : !samePristine(p, last >> 1) ? last >> 1 : !samePristine(p, last) ? last : -1;
      if (k >= 0) {
        throw new SparsetuneError(
          'BAD_ARGUMENT',
          `${what} no longer matches the weights ("${p.name}"[${p.idx[k]}] changed since it was prepared, outside this WeightPatcher); prepare it again from the current weights`,
        );
      }
    }
  }
}

/** True when the weight at touched position `k` of `p` still holds the pristine value `p` saved (bit for bit). */
function samePristine(p: PreparedParam, k: number): boolean {
  return Object.is(p.weight[p.idx![k]], p.pristine![k]);
}

/** Fuse prepared edit `p` into its parameter. */
function fuseParam(st: ParamState, p: PreparedParam): void {
  const others = st.edits;
  if (p.idx === null) {
    if (st.dense === null) st.dense = pristineCopy(st);
    st.denseCount++;
    others.push(p);
    rewriteDense(st.weight, st.dense, others);
    return;
  }
  if (others.length === 0) {
    // Nothing else touches the parameter: write the precomputed values.
    if (p.fused === null) for (let k = 0; k < p.idx.length; k++) st.weight[p.idx[k]] = 0;
    else scatter(st.weight, p.idx, p.fused, 0, p.idx.length);
  } else {
    rewriteSparse(p, others, true);
  }
  others.push(p);
}

/** Take prepared edit `p` (applied) out of its parameter. */
function unfuseParam(st: ParamState, p: PreparedParam): void {
  st.edits.splice(st.edits.lastIndexOf(p), 1);
  if (p.idx === null) {
    if (st.edits.length === 0) st.weight.set(st.dense!);
    else rewriteDense(st.weight, st.dense!, st.edits);
    if (--st.denseCount === 0) st.dense = null;
  } else if (st.edits.length === 0) {
    // Nothing else touches the parameter: every element it touched gets its pristine value back.
    scatter(st.weight, p.idx, p.pristine!, 0, p.idx.length);
  } else {
    rewriteSparse(p, st.edits, false);
  }
}

/** The pristine values of a whole parameter whose applied edits are all sparse. */
function pristineCopy(st: ParamState): Float32Array {
  const copy = st.weight.slice();
  for (const e of st.edits) scatter(copy, e.idx!, e.pristine!, 0, e.idx!.length);
  return copy;
}
