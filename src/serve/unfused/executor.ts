/**
 * One model run for a batch whose rows use different adapter sets. The weights hold one
 * fused set F (often the base); each row adds, unfused, what its own set S differs by:
 * the members of S not in F at +scale, the members of F not in S at -scale, and S's masks
 * (masks.ts). The base GEMMs run once for the batch; the per-row extras run in the
 * WebAssembly kernels between the segments of the cut graph (segmented.ts). A batch with
 * no unfused work runs the ordinary one-piece graph.
 */
import type { Adapter } from '../../merge/types.js';
import type { CausalLM, KvCache } from '../../models/causal-lm.js';
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

export class UnfusedExecutor {
  private segmented: Promise<SegmentedModel> | null = null;
  private scratch = { x: 0, y: 0, tmp: 0, size: 0 };

  constructor(
    readonly model: CausalLM,
    readonly layout: ModelLayout,
    readonly arena: Arena,
  ) {}

  /** The cut graph, compiled on first use. */
  segments(): Promise<SegmentedModel> {
    this.segmented ??= SegmentedModel.create(this.model);
    return this.segmented;
  }

  /**
   * `CausalLM.step` for rows with plans (`plans[b]` for row b). Must run while the weights
   * hold exactly the fused set the plans were made against.
   */
  async step(
    ids: readonly (readonly number[])[],
    attention: readonly (readonly number[])[],
    cache: KvCache,
    plans: readonly RowPlan[],
  ): Promise<{ logits: HostTensor<'f32'>; cache: KvCache; unfused: boolean }> {
    if (plans.every(planIsEmpty)) return { ...(await this.model.step(ids, attention, cache)), unfused: false };
    const seg = await this.segments();
    const S = ids[0].length;
    const embedDelta = this.embedDelta(ids, plans);
    const onSite = (site: LinearSite, x: Float32Array, y: Float32Array) => this.runSite(site, x, y, S, plans);
    return { ...(await seg.step(ids, attention, cache, { onSite, embedDelta: embedDelta ?? undefined })), unfused: true };
  }

  /** Scratch vectors big enough for every site (x, y, and the kernels' tmp). */
  private ensureScratch(): void {
    let maxIn = 0;
    let maxOut = 0;
    for (const s of this.layout.sites) {
      maxIn = Math.max(maxIn, s.inFeatures);
      maxOut = Math.max(maxOut, s.outFeatures);
    }
    const size = maxIn + maxOut + Math.max(maxIn, maxOut);
    if (this.scratch.size >= size) return;
    if (this.scratch.size) this.arena.release(this.scratch.x);
    const base = this.arena.alloc(size * 4);
    this.scratch = { x: base, y: base + maxIn * 4, tmp: base + (maxIn + maxOut) * 4, size };
  }

  private runSite(site: LinearSite, x: Float32Array, y: Float32Array, S: number, plans: readonly RowPlan[]): void {
    const work: { b: number; list: { e: SiteEntry; scale: number }[] }[] = [];
    plans.forEach((p, b) => {
      const list: { e: SiteEntry; scale: number }[] = [];
      for (const t of p.terms) for (const e of t.tables.sites.get(site.name) ?? []) list.push({ e, scale: t.scale });
      for (const e of p.masks?.sites.get(site.name) ?? []) list.push({ e, scale: 1 });
      if (list.length) work.push({ b, list });
    });
    if (work.length === 0) return;
    this.ensureScratch();
    const { x: X, y: Y, tmp } = this.scratch;
    const nIn = site.inFeatures;
    const nOut = site.outFeatures;
    const xs = this.arena.f32(X, nIn);
    const ys = this.arena.f32(Y, nOut);
    const k = this.arena.k;
    for (const { b, list } of work) {
      for (let t = 0; t < S; t++) {
        const row = b * S + t;
        xs.set(x.subarray(row * nIn, (row + 1) * nIn));
        const yRow = y.subarray(row * nOut, (row + 1) * nOut);
        ys.set(yRow);
        for (const { e, scale } of list) {
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
        }
        yRow.set(ys);
      }
    }
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
