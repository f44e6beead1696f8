/**
 * Masks, unfused. Fusing a set clears every element any of its masks clears, after the
 * set's deltas (merge/types.ts). Unfused, a mask is the additive delta that brings those
 * elements to zero: at each cleared element e of a Linear site's weight, the row adds
 * -(w(e) + the row's other unfused deltas at e) · x, where w is the weight as the model
 * run reads it (the base, or the base with the fused set F). The values depend on the set
 * and on F, so these tables are built per (set, F) and rebuilt when F changes.
 *
 * The rule for running a mask unfused: its cost is one sparse entry per cleared element
 * and token, so masks that clear a small share of a weight (R-AMT, LT-SFT-style) run
 * unfused and dense masks (a 2:4 MaskLLM mask clears half of every weight) make their set
 * must-fuse (see cost.ts).
 */
import { clearedIndices } from '../../merge/bits.js';
import type { Adapter } from '../../merge/types.js';
import type { HostTensor } from '../../tensor.js';
import type { Arena } from './arena.js';
import { deltaAt } from './deltas.js';
import type { ModelLayout } from './layout.js';
import { COST, groupedLayout, splitIndices, type SiteEntry } from './tables.js';

/** A member of an adapter set with its request scale. */
export interface ScaledAdapter {
  adapter: Adapter;
  scale: number;
}

/** Sorted union of the elements any mask of `members` clears, per masked parameter. */
export function clearedBySet(members: readonly ScaledAdapter[]): Map<string, Int32Array> {
  const out = new Map<string, Int32Array>();
  for (const { adapter } of members) {
    for (const [name, m] of adapter.masks) {
      const c = clearedIndices(m.bits, m.numel);
      const prev = out.get(name);
      out.set(name, prev ? union(prev, c) : c);
    }
  }
  return out;
}

function union(a: Int32Array, b: Int32Array): Int32Array {
  const out = new Int32Array(a.length + b.length);
  let i = 0, j = 0, k = 0;
  while (i < a.length || j < b.length) {
    if (j >= b.length || (i < a.length && a[i] < b[j])) out[k++] = a[i++];
    else if (i >= a.length || b[j] < a[i]) out[k++] = b[j++];
    else {
      out[k++] = a[i++];
      j++;
    }
  }
  return out.slice(0, k);
}

/** Cleared elements per token of a set (all sites), for the cost rule. */
export function maskEntries(cleared: Map<string, Int32Array>, layout: ModelLayout): number {
  let n = 0;
  for (const [name, c] of cleared) n += c.length * (layout.weightSites.get(name)?.length ?? 0);
  return n;
}

export interface MaskTables {
  sites: Map<string, SiteEntry[]>;
  /** Token-embedding elements cleared, by row: the embedding output gets -w there. */
  embedRows: Map<number, Int32Array>;
  costNs: number;
  release(): void;
}

/**
 * Mask tables of a set for a model run whose weights hold `weights`: `plus` are the
 * members run unfused with +scale, `minus` the fused members this set lacks (run with
 * -scale). Call only while the weights cannot change (inside the weight gate).
 */
export function buildMaskTables(
  arena: Arena,
  cleared: Map<string, Int32Array>,
  plus: readonly ScaledAdapter[],
  minus: readonly ScaledAdapter[],
  weights: Map<string, HostTensor<'f32'>>,
  layout: ModelLayout,
): MaskTables {
  const sites = new Map<string, SiteEntry[]>();
  const blocks: number[] = [];
  const embedRows = new Map<number, Int32Array>();
  let costNs = 0;
  for (const [name, idx] of cleared) {
    const w = weights.get(name)!.data;
    const shape = layout.shapes.get(name)!;
    const vals = new Float32Array(idx.length);
    for (let q = 0; q < idx.length; q++) vals[q] = -w[idx[q]];
    const adjust = (list: readonly ScaledAdapter[], sign: number) => {
      for (const m of list) {
        const d = deltaAt(m.adapter, name, shape, idx, m.scale);
        for (let q = 0; q < idx.length; q++) if (!Number.isNaN(d[q])) vals[q] -= sign * d[q];
      }
    };
    adjust(plus, 1);
    adjust(minus, -1);
    if (layout.embed?.name === name) {
      const width = shape[1];
      for (let a = 0; a < idx.length; ) {
        const row = Math.floor(idx[a] / width);
        let b = a;
        while (b < idx.length && Math.floor(idx[b] / width) === row) b++;
        embedRows.set(row, idx.slice(a, b));
        a = b;
      }
    }
    for (const site of layout.weightSites.get(name) ?? []) {
      const [outIdx, inIdx] = splitIndices(idx, site);
      const g = groupedLayout(outIdx, inIdx, vals, site.outFeatures);
      const parts = [g.groups, g.rowIds, g.cols, g.vals];
      const offs = parts.map((p) => {
        const off = arena.alloc(p.byteLength);
        new Uint8Array(arena.memory.buffer, off, p.byteLength).set(new Uint8Array(p.buffer, p.byteOffset, p.byteLength));
        blocks.push(off);
        return off;
      });
      const entry: SiteEntry = { kind: 'sparse', groups: offs[0], nGroups: g.groups.length / 3, rowIds: offs[1], cols: offs[2], vals: offs[3], nnz: g.vals.length };
      sites.set(site.name, [...(sites.get(site.name) ?? []), entry]);
      costNs += g.vals.length * COST.sparseEntryNs + COST.perSiteRowNs;
    }
  }
  let released = false;
  return {
    sites,
    embedRows,
    costNs,
    release() {
      if (released) return;
      released = true;
      for (const b of blocks) arena.release(b);
    },
  };
}
