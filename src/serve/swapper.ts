/**
 * The swapper moves the one shared copy of the base weights from one adapter set to
 * another by fusing and unfusing sparse deltas in place (WeightPatcher: reverting restores
 * the exact original bits). Only the difference between the sets is touched: going from
 * {sw, ner} to {sw} reverts ner and leaves sw applied.
 *
 * Each payload is prepared once (WeightPatcher.prepare: checks, reduction, pristine and
 * fused values saved), on its first swap or when `prepare` is called at load; swaps then
 * only scatter values into the weights. The prepared form lives as long as the payload
 * object (it is keyed by it, weakly), so an evicted payload takes it along.
 */
import type { Adapter } from '../merge/types.js';
import { WeightPatcher, type AppliedHandle, type PreparedAdapter } from '../merge/apply.js';
import type { HostTensor } from '../tensor.js';
import type { WeightGate } from './gate.js';

/** One adapter of a set, as the registry hands it out (pinned, so its payload is in memory). */
export interface SwapMember {
  /** Unique per load: an id unloaded and loaded again gets a new uid. */
  readonly uid: number;
  readonly id: string;
  /** The adapter payload; the registry guarantees it is resident while the member is pinned. */
  payload(): Adapter;
}

/** What one swap did, reported to metrics. */
export interface SwapReport {
  seconds: number;
  applied: string[];
  reverted: string[];
  /** Weight elements the deltas applied and reverted touch (masks not counted). */
  elements: number;
}

/** Weight elements fusing `a`'s deltas rewrites (masks not counted). */
export function touchedElements(a: Adapter): number {
  let n = 0;
  for (const d of a.additive.values()) n += d.indices.length;
  for (const d of a.structured.values()) n += d.values.length;
  for (const p of a.lowrank.values()) n += p.B.shape[0] * p.A.shape[1] + (p.biasDelta?.length ?? 0);
  return n;
}

export class Swapper {
  private readonly patcher: WeightPatcher;
  /** uid -> handle of each adapter fused into the weights now. */
  private readonly active = new Map<number, { id: string; handle: AppliedHandle; elements: number }>();
  /** Prepared forms of the payloads swapped in so far (or prepared at load). */
  private readonly prepared = new WeakMap<Adapter, PreparedAdapter>();

  constructor(
    weights: Map<string, HostTensor<'f32'>>,
    private readonly gate: WeightGate,
    opts: {
      fingerprint: string;
      onSwap?: (r: SwapReport) => void;
      /** Called after a payload was prepared (its `bytes` are now held). */
      onPrepare?: (p: PreparedAdapter) => void;
    },
  ) {
    this.patcher = new WeightPatcher(weights, { fingerprint: opts.fingerprint });
    this.onSwap = opts.onSwap;
    this.onPrepare = opts.onPrepare;
  }

  private readonly onSwap?: (r: SwapReport) => void;
  private readonly onPrepare?: (p: PreparedAdapter) => void;

  /** Ids of the adapters fused into the weights now (sorted). */
  get activeIds(): string[] {
    return [...this.active.values()].map((a) => a.id).sort();
  }

  /**
   * Run `fn` (a model step) with exactly `set` fused into the weights. The gate is held
   * for the swap and for `fn`, so nothing else patches the weights while `fn` reads them.
   */
  runWith<T>(set: readonly SwapMember[], fn: () => Promise<T>): Promise<T> {
    return this.gate.run(async () => {
      this.switchTo(set);
      return fn();
    });
  }

  /**
   * Prepare a member's payload for fast swaps now rather than on its first swap (call it
   * when the adapter is loaded). Returns the prepared form; its `bytes` is the memory it
   * holds besides the payload (about 16 bytes per touched element of a sparse delta).
   * Never changes the weights; it may run while a step holds the gate.
   */
  prepare(m: SwapMember): PreparedAdapter {
    const payload = m.payload();
    let p = this.prepared.get(payload);
    if (!p) {
      // Fingerprints were checked when the registry loaded the adapter.
      p = this.patcher.prepare(payload, { force: true });
      this.prepared.set(payload, p);
      this.onPrepare?.(p);
    }
    return p;
  }

  /** True when `m`'s payload (at its scale) is prepared, so swapping it in is a scatter. */
  isPrepared(m: SwapMember): boolean {
    return this.prepared.has(m.payload());
  }

  /** Bytes the prepared forms of `payloads` hold (0 for those not prepared). */
  preparedBytes(payloads: readonly Adapter[]): number {
    let n = 0;
    for (const a of payloads) n += this.prepared.get(a)?.bytes ?? 0;
    return n;
  }

  /**
   * Forget the prepared forms of `payloads` (their adapter is being evicted). A form that is
   * fused now stays with its handle until reverted; the next swap of the payload prepares it again.
   */
  forget(payloads: readonly Adapter[]): void {
    for (const a of payloads) this.prepared.delete(a);
  }

  /** Revert every adapter: the weights hold the original bits again. */
  reset(): Promise<void> {
    return this.gate.run(() => this.switchTo([]));
  }

  /** Apply/revert the difference between the active set and `set` (caller holds the gate). */
  private switchTo(set: readonly SwapMember[]): void {
    const wanted = new Map(set.map((m) => [m.uid, m]));
    const toRevert = [...this.active.keys()].filter((uid) => !wanted.has(uid));
    const toApply = set.filter((m) => !this.active.has(m.uid));
    if (toRevert.length === 0 && toApply.length === 0) return;
    const t0 = performance.now();
    const reverted: string[] = [];
    const applied: string[] = [];
    let elements = 0;
    try {
      for (const uid of toRevert) {
        const a = this.active.get(uid)!;
        this.patcher.revert(a.handle);
        this.active.delete(uid);
        reverted.push(a.id);
        elements += a.elements;
      }
      for (const m of toApply) {
        const handle = this.patcher.apply(this.prepare(m));
        const n = touchedElements(m.payload());
        this.active.set(m.uid, { id: m.id, handle, elements: n });
        applied.push(m.id);
        elements += n;
      }
    } catch (err) {
      // Leave the weights in a known state (the pristine base) before reporting the failure.
      this.patcher.revertAll();
      this.active.clear();
      throw err;
    }
    this.onSwap?.({ seconds: (performance.now() - t0) / 1000, applied, reverted, elements });
  }
}
