/**
 * Everything the server keeps for unfused serving: the arena, the executor, each adapter's
 * tables (built on first use, shared by every request and scale, evicted least recently
 * used past a byte budget once no running row holds them), and per-set analysis (can the
 * set run unfused, and at what cost per token) and mask tables.
 */
import type { Adapter } from '../../merge/types.js';
import type { CausalLM } from '../../models/causal-lm.js';
import type { ServeSet, SetMember } from '../adapter-set.js';
import { Arena } from './arena.js';
import { EMPTY_PLAN, UnfusedExecutor, type RowPlan, type RowTerm } from './executor.js';
import { modelLayout, type ModelLayout } from './layout.js';
import { buildMaskTables, clearedBySet, maskEntries, type MaskTables } from './masks.js';
import { buildTables, COST, mustFuseReason, tablesEstimate, type AdapterTables } from './tables.js';

export interface StoreOptions {
  /**
   * Most arena bytes for tables of adapters no running row uses; past it they are evicted
   * (LRU). The arena never shrinks, so this caps the tables' share of the process's memory;
   * the registry's budget, which counts tables too, usually evicts first.
   */
  budgetBytes: number;
  /**
   * The density rule: a set runs unfused only while its kernel work per token (sparse and
   * mask entries, low-rank and structured multiply-adds) is at most this fraction of the
   * model's dense multiply-adds per token; denser sets (a 2:4 mask clears half of every
   * weight) are fused.
   */
  maxUnfusedDensity: number;
  /** Called (on a later microtask) after tables were built, so the owner can re-check its budget. */
  onGrow?: () => void;
}

/** What the server knows about one set. */
export interface SetAnalysis {
  /** Null when the set can run unfused; else why it must be fused. */
  mustFuse: string | null;
  /** True when the set has no masks (so it may be the fused set other rows cancel). */
  deltaOnly: boolean;
  /** Unfused cost per token of each member (ns), by member uid. */
  memberNs: Map<number, number>;
  /** Unfused cost per token of the set's masks (ns). */
  maskNs: number;
}

interface TableSlot {
  /** Built on first use inside a model run (never while onnxruntime reads the arena). */
  tables: AdapterTables | null;
  estimate: { costNs: number; work: number };
  refs: number;
  lastUsed: number;
}

interface SetState {
  set: ServeSet;
  refs: number;
  analysis: SetAnalysis;
  masks: { fusedKey: string; tables: MaskTables } | null;
}

export class UnfusedStore {
  readonly layout: ModelLayout;
  readonly arena = new Arena();
  readonly executor: UnfusedExecutor;
  private readonly slots = new Map<number, TableSlot>();
  private readonly sets = new Map<string, SetState>();
  /** Recent sets found to need fusing (keys hold load uids, so they never go stale). */
  private readonly mustFuseSets = new Map<string, SetAnalysis>();
  private clock = 0;

  constructor(readonly model: CausalLM, readonly opts: StoreOptions) {
    this.layout = modelLayout(model);
    this.executor = new UnfusedExecutor(model, this.layout, this.arena);
  }

  /** Bytes of tables in the arena. */
  get residentBytes(): number {
    let n = 0;
    for (const s of this.slots.values()) n += s.tables?.bytes ?? 0;
    return n;
  }

  /** Adapters with resident tables. */
  get residentAdapters(): number {
    let n = 0;
    for (const s of this.slots.values()) if (s.tables) n++;
    return n;
  }

  /** Bytes of the tables of the adapter with load uid `uid`. */
  tableBytesOf(uid: number): number {
    return this.slots.get(uid)?.tables?.bytes ?? 0;
  }

  /** True while a set that a sequence holds uses the adapter with load uid `uid`. */
  inUse(uid: number): boolean {
    return (this.slots.get(uid)?.refs ?? 0) > 0;
  }

  /** Free the tables of the adapter with load uid `uid` unless a set in use holds them. */
  drop(uid: number): void {
    const slot = this.slots.get(uid);
    if (!slot || slot.refs > 0) return;
    slot.tables?.release();
    this.slots.delete(uid);
  }

  /**
   * Why `adapter` alone, at scale 1, must be fused rather than run unfused (the density
   * rule, or a parameter unfused serving cannot reach), or null.
   */
  mustFuseAlone(adapter: Adapter): string | null {
    const why = mustFuseReason(adapter, this.layout);
    if (why) return why;
    const work = maskEntries(clearedBySet([{ adapter, scale: 1 }]), this.layout) + tablesEstimate(adapter, this.layout).work;
    return this.densityReason(work, 'it');
  }

  private densityReason(work: number, what: string): string | null {
    const density = work / this.layout.denseMacsPerToken;
    return density > this.opts.maxUnfusedDensity
      ? `${what} would do ${(100 * density).toFixed(1)}% of the model's dense work per token unfused (limit ${(100 * this.opts.maxUnfusedDensity).toFixed(0)}%), so it is fused`
      : null;
  }

  /**
   * Take a reference on `set` for a sequence that will run in the mixed batch (builds its
   * tables) and return its analysis. A set that must be fused takes no reference.
   */
  acquire(set: ServeSet): SetAnalysis {
    let st = this.sets.get(set.key);
    if (!st) {
      const known = this.mustFuseSets.get(set.key);
      if (known) return known;
      const analysis = this.analyse(set);
      if (analysis.mustFuse) {
        if (this.mustFuseSets.size >= 1024) this.mustFuseSets.delete(this.mustFuseSets.keys().next().value!);
        this.mustFuseSets.set(set.key, analysis);
        this.evict();
        return analysis;
      }
      st = { set, refs: 0, analysis, masks: null };
      this.sets.set(set.key, st);
      for (const m of set.members) this.slotOf(m).refs++;
      this.evict();
    }
    st.refs++;
    return st.analysis;
  }

  /** Drop a reference taken by `acquire`. */
  release(set: ServeSet): void {
    const st = this.sets.get(set.key);
    if (!st) return;
    if (--st.refs > 0) return;
    this.sets.delete(set.key);
    st.masks?.tables.release();
    for (const m of set.members) {
      const slot = this.slots.get(m.entry.uid);
      if (slot) {
        slot.refs--;
        slot.lastUsed = this.clock++;
      }
    }
    this.evict();
  }

  /** The analysis of a set that holds a reference. */
  analysisOf(set: ServeSet): SetAnalysis | undefined {
    return this.sets.get(set.key)?.analysis;
  }

  /**
   * The plan of a row with `set` (referenced) while the weights hold `fused` (referenced,
   * delta-only, or the base). Call inside the weight gate: mask tables read the weights.
   */
  plan(set: ServeSet, fused: ServeSet): RowPlan {
    if (set.key === fused.key) return EMPTY_PLAN;
    const st = set.isBase ? null : this.sets.get(set.key)!;
    const inFused = new Set(fused.members.map((m) => m.uid));
    const inSet = new Set(set.members.map((m) => m.uid));
    const plus = set.members.filter((m) => !inFused.has(m.uid));
    const minus = fused.members.filter((m) => !inSet.has(m.uid));
    const term = (m: SetMember, sign: number): RowTerm => ({ tables: this.tablesOf(m), adapter: m.raw(), scale: sign * m.scale });
    const terms = [...plus.map((m) => term(m, 1)), ...minus.map((m) => term(m, -1))].filter((t) => t.scale !== 0 && (t.tables.sites.size > 0 || t.tables.touchesEmbedding));
    let masks: MaskTables | null = null;
    if (st && !st.analysis.deltaOnly) {
      if (st.masks?.fusedKey !== fused.key) {
        st.masks?.tables.release();
        const scaled = (ms: SetMember[]) => ms.map((m) => ({ adapter: m.raw(), scale: m.scale }));
        const tables = buildMaskTables(this.arena, clearedBySet(scaled([...set.members])), scaled(plus), scaled(minus), this.model.weights, this.layout);
        st.masks = { fusedKey: fused.key, tables };
      }
      masks = st.masks.tables;
    }
    return terms.length || masks ? { terms, masks } : EMPTY_PLAN;
  }

  private analyse(set: ServeSet): SetAnalysis {
    const memberNs = new Map<number, number>();
    for (const m of set.members) {
      const why = mustFuseReason(m.raw(), this.layout);
      if (why) return { mustFuse: `adapter "${m.id}" must be fused: ${why}`, deltaOnly: false, memberNs, maskNs: 0 };
    }
    const cleared = clearedBySet(set.members.map((m) => ({ adapter: m.raw(), scale: m.scale })));
    const maskWork = maskEntries(cleared, this.layout);
    const maskNs = maskWork * COST.sparseEntryNs;
    let work = maskWork;
    for (const m of set.members) {
      const t = this.slotOf(m).estimate;
      memberNs.set(m.uid, m.scale === 0 ? 0 : t.costNs);
      work += t.work;
    }
    const mustFuse = this.densityReason(work, `set ${set.label}`);
    return { mustFuse, deltaOnly: cleared.size === 0, memberNs, maskNs };
  }

  private slotOf(m: SetMember): TableSlot {
    let slot = this.slots.get(m.entry.uid);
    if (!slot) {
      slot = { tables: null, estimate: tablesEstimate(m.raw(), this.layout), refs: 0, lastUsed: this.clock++ };
      this.slots.set(m.entry.uid, slot);
    }
    return slot;
  }

  /** A member's tables, built now if need be (call between model runs only). */
  private tablesOf(m: SetMember): AdapterTables {
    const slot = this.slotOf(m);
    if (!slot.tables) {
      slot.tables = buildTables(this.arena, m.raw(), this.layout);
      if (this.opts.onGrow) queueMicrotask(this.opts.onGrow);
    }
    return slot.tables;
  }

  /** Evict unreferenced tables, least recently used first, until the budget holds. */
  private evict(): void {
    let over = this.residentBytes - this.opts.budgetBytes;
    if (over <= 0) return;
    const idle = [...this.slots].filter(([, s]) => s.refs === 0).sort((a, b) => a[1].lastUsed - b[1].lastUsed);
    for (const [uid, s] of idle) {
      if (over <= 0) break;
      s.tables?.release();
      this.slots.delete(uid);
      over -= s.tables?.bytes ?? 0;
    }
  }
}
