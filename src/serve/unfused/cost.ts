/**
 * The cost rule: which adapter set F the shared weights should hold for the next model run
 * of the mixed batch. Rows whose set is F run at base speed; every other row pays, per
 * token, the unfused cost of the members it has and F lacks plus those F has and it lacks
 * (cancelled with a negative scale), plus its masks. Switching F costs a swap (apply and
 * revert of the touched weights), spread over the steps the new F is expected to serve
 * (the median number of tokens its rows have left). Candidates: the set the weights hold
 * now, the base, and the set most rows use. Nothing here can starve a row: every row of
 * the mixed batch advances at every step whatever F is.
 *
 * A set is only swapped in once its members are prepared for fast swaps (swapper.ts): when
 * the cheapest candidate is not, the run keeps the cheapest prepared one and the decision
 * names the wanted set, which the scheduler prepares before the next run. So preparation
 * (memory and time) is spent only on sets the rule would actually fuse, and no swap pays it.
 */
import type { ServeSet, SetMember } from '../adapter-set.js';
import { touchedElements } from '../swapper.js';
import type { UnfusedStore } from './store.js';

/** One row of a model run: its set, the tokens it feeds now, the tokens it may still produce. */
export interface RunRow {
  set: ServeSet;
  tokens: number;
  remaining: number;
}

export interface FuseDecision {
  fused: ServeSet;
  /** Estimated cost of the run (ns), unfused work plus the amortized swap. */
  estimateNs: number;
  /** Whether any row will run unfused work. */
  unfused: boolean;
  /** A cheaper set that was not taken because its members are not prepared yet: prepare it. */
  wanted?: ServeSet;
}

export class FusePolicy {
  /** Swap cost per touched element (ns), updated from observed swaps. */
  nsPerElement = 30;
  private readonly touched = new Map<number, number>();

  constructor(
    private readonly store: UnfusedStore,
    /** Fixed cost of a run through the cut graph instead of the one-piece graph (ns). */
    readonly segmentedOverheadNs: number,
  ) {}

  /** Feed an observed swap: `elements` touched in `seconds`. */
  observeSwap(seconds: number, elements: number): void {
    if (elements < 10_000 || !(seconds > 0)) return; // small swaps are all overhead
    const ns = (seconds * 1e9) / elements;
    this.nsPerElement = 0.8 * this.nsPerElement + 0.2 * ns;
  }

  /** Elements a swap from `a` to `b` touches. */
  swapElements(a: ServeSet, b: ServeSet): number {
    const inA = new Set(a.members.map((m) => m.uid));
    const inB = new Set(b.members.map((m) => m.uid));
    let n = 0;
    for (const m of a.members) if (!inB.has(m.uid)) n += this.touchedBy(m);
    for (const m of b.members) if (!inA.has(m.uid)) n += this.touchedBy(m);
    return n;
  }

  private touchedBy(m: SetMember): number {
    let n = this.touched.get(m.uid);
    if (n === undefined) {
      n = touchedElements(m.raw());
      this.touched.set(m.uid, n);
    }
    return n;
  }

  /** Per-token unfused cost (ns) of a row with `set` while the weights hold `fused`. */
  rowNs(set: ServeSet, fused: ServeSet): number {
    if (set.key === fused.key) return 0;
    const a = this.store.analysisOf(set);
    const f = this.store.analysisOf(fused);
    const inF = new Set(fused.members.map((m) => m.uid));
    const inS = new Set(set.members.map((m) => m.uid));
    let ns = a?.maskNs ?? 0;
    for (const m of set.members) if (!inF.has(m.uid)) ns += a?.memberNs.get(m.uid) ?? 0;
    for (const m of fused.members) if (!inS.has(m.uid)) ns += f?.memberNs.get(m.uid) ?? 0;
    return ns;
  }

  /**
   * Pick the fused set for a run of `rows`, the weights holding `current` now, among sets
   * `ready` says can be swapped in now (the current set and the base always can).
   */
  choose(rows: readonly RunRow[], current: ServeSet, base: ServeSet, ready: (s: ServeSet) => boolean = () => true): FuseDecision {
    const candidates = new Map<string, ServeSet>([[base.key, base]]);
    const usable = (s: ServeSet) => s.isBase || this.store.analysisOf(s)?.deltaOnly === true;
    if (usable(current)) candidates.set(current.key, current);
    const counts = new Map<string, { set: ServeSet; n: number }>();
    for (const r of rows) {
      const c = counts.get(r.set.key);
      if (c) c.n += r.tokens;
      else counts.set(r.set.key, { set: r.set, n: r.tokens });
    }
    const top = [...counts.values()].filter((c) => usable(c.set)).sort((x, y) => y.n - x.n)[0];
    if (top) candidates.set(top.set.key, top.set);

    let best: FuseDecision | null = null;
    let bestReady: FuseDecision | null = null;
    for (const f of candidates.values()) {
      let ns = 0;
      let unfused = false;
      for (const r of rows) {
        const c = this.rowNs(r.set, f);
        if (r.set.key !== f.key) unfused = true;
        ns += r.tokens * c;
      }
      if (unfused) ns += this.segmentedOverheadNs;
      if (f.key !== current.key) {
        const left = rows.filter((r) => r.set.key === f.key).map((r) => r.remaining).sort((x, y) => x - y);
        const horizon = Math.max(1, left.length ? left[Math.floor(left.length / 2)] : 1);
        ns += (this.swapElements(current, f) * this.nsPerElement) / horizon;
      }
      const d = { fused: f, estimateNs: ns, unfused };
      if (!best || ns < best.estimateNs) best = d;
      if ((f === base || f.key === current.key || ready(f)) && (!bestReady || ns < bestReady.estimateNs)) bestReady = d;
    }
    return best === bestReady ? best! : { ...bestReady!, wanted: best!.fused };
  }
}
