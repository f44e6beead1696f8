/**
 * One model run for a batch whose rows use different adapter sets. The weights hold one
 * fused set F (often the base); each row adds, unfused, what its own set S differs by:
 * the members of S not in F at +scale, the members of F not in S at -scale, and S's masks
 * (masks.ts). The base GEMMs run once for the batch; the per-row extras run in the
 * WebAssembly kernels between the segments of the cut graph (segmented.ts). A batch with
 * no unfused work runs the ordinary one-piece graph.
 */
import type { Adapter } from '../../merge/types.js';
import type { CausalLM } from '../../models/causal-lm.js';
import { DenseDecoder, type SlotRun } from '../slots.js';
import type { LinearSite } from '../../models/hooks.js';
import type { HostTensor } from '../../tensor.js';
import type { Arena } from './arena.js';
import { deltaAt, rowIndices, setDelta } from './deltas.js';
import type { ModelLayout } from './layout.js';
import type { MaskTables } from './masks.js';
import { SegmentedModel } from './segmented.js';
import type { AdapterTables, SiteEntry } from './tables.js';

/** One adapter a row runs unfused, with its signed scale (negative: cancels a fused member). */
export interface RowTerm {
  tables: AdapterTables;
  /** The payload (read for token-embedding rows). */
  adapter: Adapter;
  scale: number;
}

/** What one batch row adds to the model run. */
export interface RowPlan {
  terms: readonly RowTerm[];
  masks: MaskTables | null;
}

export const EMPTY_PLAN: RowPlan = { terms: [], masks: null };

function planIsEmpty(p: RowPlan): boolean {
  return p.terms.length === 0 && p.masks === null;
}

/**
 * Where the mixed batch's model time goes (cumulative; read by benchmarks and profiles):
 * one-piece runs (no unfused work), cut-graph runs, and the unfused kernels inside them.
 * Token counts are batch rows x new tokens.
 */
export interface ExecutorStats {
  denseRuns: number;
  denseTokens: number;
  denseNs: number;
  cutRuns: number;
  cutTokens: number;
  /** Wall time of cut-graph runs, kernels included. */
  cutNs: number;
  /** Time in the unfused kernels (and the embedding deltas) of cut-graph runs. */
  kernelNs: number;
}

export class UnfusedExecutor {
  private segmented: Promise<SegmentedModel> | null = null;
  readonly stats: ExecutorStats = { denseRuns: 0, denseTokens: 0, denseNs: 0, cutRuns: 0, cutTokens: 0, cutNs: 0, kernelNs: 0 };
  private tmp = { off: 0, size: 0 };
  /** The plain decode graph, for runs with no unfused work. */
  readonly dense: DenseDecoder;

  constructor(
    readonly model: CausalLM,
    readonly layout: ModelLayout,
    readonly arena: Arena,
  ) {
    this.dense = new DenseDecoder(model);
  }

  /** The cut graph, compiled on first use. */
  segments(): Promise<SegmentedModel> {
    this.segmented ??= SegmentedModel.create(this.model, this.arena);
    return this.segmented;
  }

  /**
   * Run the decode-graph step `run` (slots.ts) for rows with plans (`plans[b]` for row b):
   * the plain graph when no row has unfused work, else the cut graph with each row's
   * contributions. Must run while the weights hold exactly the fused set the plans were made
   * against. Returns each row's last-position logits [rows, vocab], valid until the next run.
   */
  async step(run: SlotRun, plans: readonly RowPlan[]): Promise<{ logits: HostTensor<'f32'>; unfused: boolean }> {
    const st = this.stats;
    const t0 = performance.now();
    if (plans.every(planIsEmpty)) {
      const logits = await this.dense.run(run);
      st.denseRuns++;
      st.denseTokens += run.rows * run.seq;
      st.denseNs += (performance.now() - t0) * 1e6;
      return { logits, unfused: false };
    }
    const seg = await this.segments();
    const t1 = performance.now();
    const embedDelta = this.embedDelta(run.ids, plans);
    let kernelMs = performance.now() - t1;
    const onSite = (site: LinearSite, x: number, y: number, rows: number) => {
      const t = performance.now();
      this.runSite(site, x, y, rows, plans);
      kernelMs += performance.now() - t;
    };
    const logits = await seg.step(run, { onSite, embedDelta: embedDelta ?? undefined });
    st.cutRuns++;
    st.cutTokens += run.rows * run.seq;
    st.cutNs += (performance.now() - t1) * 1e6;
    st.kernelNs += kernelMs * 1e6;
    return { logits, unfused: true };
  }

  /** The kernels' scratch vector, big enough for every site. */
  private scratch(): number {
    let size = 0;
    for (const s of this.layout.sites) size = Math.max(size, s.inFeatures, s.outFeatures);
    if (this.tmp.size < size) {
      if (this.tmp.size) this.arena.release(this.tmp.off);
      this.tmp = { off: this.arena.alloc(size * 4), size };
    }
    return this.tmp.off;
  }

  /** Add every row's contributions at `site`: x, y are the arena offsets of the site's input and output. */
  private runSite(site: LinearSite, x: number, y: number, rows: number, plans: readonly RowPlan[]): void {
    const S = rows / plans.length; // kernel rows per batch row: new tokens, or 1 at the LM head
    const nIn = site.inFeatures;
    const nOut = site.outFeatures;
    const k = this.arena.k;
    let tmp = -1;
    plans.forEach((p, b) => {
      const lists: (readonly SiteEntry[] | undefined)[] = p.terms.map((t) => t.tables.sites.get(site.name));
      const masks = p.masks?.sites.get(site.name);
      if (!masks && lists.every((l) => l === undefined)) return;
      if (tmp < 0) tmp = this.scratch();
      for (let t = 0; t < S; t++) {
        const row = b * S + t;
        const X = x + row * nIn * 4;
        const Y = y + row * nOut * 4;
        const run = (e: SiteEntry, scale: number) => {
          switch (e.kind) {
            case 'sparse':
              k.sparse(e.groups, e.nGroups, e.rowIds, e.cols, e.vals, X, Y, scale);
              break;
            case 'lowrank':
              k.lowrank(e.A, e.BT, e.r, nIn, nOut, X, Y, scale * e.scale, tmp);
              break;
            case 'structured':
              k.structured(e.V, e.nr, e.nc, e.rows, e.cols, X, Y, scale, tmp);
              break;
            case 'bias':
              k.axpy(scale * e.scale, e.v, nOut, Y);
              break;
          }
        };
        p.terms.forEach((term, i) => {
          for (const e of lists[i] ?? []) run(e, term.scale);
        });
        for (const e of masks ?? []) run(e, 1);
      }
    });
  }

  /** Per-token additions to the embedding output, or null when no row has any. */
  private embedDelta(ids: readonly (readonly number[])[], plans: readonly RowPlan[]): Float32Array | null {
    const emb = this.layout.embed;
    if (!emb) return null;
    const E = emb.hidden;
    const shape = this.layout.shapes.get(emb.name)!;
    const S = ids[0].length;
    let out: Float32Array | null = null;
    const w = this.model.weights.get(emb.name)!.data;
    plans.forEach((p, b) => {
      const terms = p.terms.filter((t) => t.tables.touchesEmbedding);
      const masked = p.masks?.embedRows;
      if (terms.length === 0 && !masked?.size) return;
      out ??= new Float32Array(ids.length * S * E);
      for (let t = 0; t < S; t++) {
        const tok = ids[b][t];
        const at = (b * S + t) * E;
        if (terms.length) {
          const idx = rowIndices(tok, E);
          const signed = terms.map((m) => deltaAt(m.adapter, emb.name, shape, idx, m.scale));
          if (terms.every((m) => m.scale >= 0)) {
            // Only added members: the set delta exactly as fusing them gives it.
            const d = setDelta(signed, E);
            for (let i = 0; i < E; i++) if (!Number.isNaN(d[i])) out[at + i] = d[i];
          } else {
            for (let i = 0; i < E; i++) {
              let s = 0;
              for (const d of signed) if (!Number.isNaN(d[i])) s += d[i];
              out[at + i] = s;
            }
          }
        }
        // Cleared elements: exactly minus the weight the run reads, so the sum is 0.
        for (const e of masked?.get(tok) ?? []) out[at + (e - tok * E)] = -w[e];
      }
    });
    return out;
  }
}
