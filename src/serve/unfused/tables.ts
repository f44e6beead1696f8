/**
 * An adapter in unfused form: per Linear site, the tables the kernels (kernels.ts) read,
 * packed into one arena block. Built once per resident adapter and shared by every request
 * and every per-request scale (the scale is a kernel argument).
 *
 * - additive deltas -> sparse tables (grouped layout, u16 column ids, so a site's input
 *   width must be at most 65,536);
 * - structured sub-blocks -> dense V with its row and column ids;
 * - low-rank pairs -> A [r, in] and Bᵀ [r, out] (any rank; nothing is padded);
 * - deltas on a site's bias (additive, or a low-rank pair's bias) -> a dense vector.
 * GPT-2's Conv1D weights ([in, out]) are transposed into the [out, in] view here.
 * Token-embedding rows and masks are not tables: see embed.ts and masks.ts.
 */
import { SparsetuneError } from '../../errors.js';
import { biasParamOf, type Adapter } from '../../merge/types.js';
import type { LinearSite } from '../../models/hooks.js';
import type { Arena } from './arena.js';
import type { ModelLayout } from './layout.js';

export interface SparseEntry { kind: 'sparse'; groups: number; nGroups: number; rowIds: number; cols: number; vals: number; nnz: number }
export interface LowRankEntry { kind: 'lowrank'; A: number; BT: number; r: number; scale: number }
export interface StructuredEntry { kind: 'structured'; V: number; nr: number; nc: number; rows: number; cols: number }
export interface BiasEntry { kind: 'bias'; v: number; scale: number }
export type SiteEntry = SparseEntry | LowRankEntry | StructuredEntry | BiasEntry;

/** Kernel cost model (ns), measured on the 2-core dev machine; see docs/serving.md. */
export const COST = {
  /** One sparse entry (table streamed from memory). */
  sparseEntryNs: 1.2,
  /** One multiply-add of a low-rank or structured product (tables streamed from memory). */
  denseMacNs: 0.3,
  /** Fixed work per row and site touched (copies, call overhead). */
  perSiteRowNs: 150,
};

export interface AdapterTables {
  /** Site name -> the entries to run there. */
  sites: Map<string, SiteEntry[]>;
  /** True when the adapter changes token-embedding rows (added per step from the payload). */
  touchesEmbedding: boolean;
  /** Bytes in the arena. */
  bytes: number;
  /** Estimated kernel time per token (ns) at scale != 0. */
  costNs: number;
  /** Kernel work per token: sparse entries plus low-rank and structured multiply-adds. */
  work: number;
  /** Free the arena block (the tables must not be used afterwards). */
  release(): void;
}

/**
 * Why `adapter` cannot run unfused on this model (so it must be fused), or null. Masks are
 * judged per adapter set (masks.ts), since their cost depends on what they clear.
 */
export function mustFuseReason(adapter: Adapter, layout: ModelLayout): string | null {
  const params = new Set([...adapter.additive.keys(), ...adapter.structured.keys(), ...adapter.lowrank.keys()]);
  for (const [w, p] of adapter.lowrank) if (p.biasDelta) params.add(biasParamOf(w));
  for (const name of params) {
    const sites = layout.weightSites.get(name);
    const isEmbed = layout.embed?.name === name;
    if (!sites && !isEmbed && !layout.biasSite.has(name)) return `it changes "${name}", which is not a Linear site's weight or bias nor the token embedding`;
    if (layout.biasSite.has(name) && adapter.structured.has(name)) return `it has a structured delta on the bias "${name}"`;
    if (sites && adapter.additive.has(name) && sites.some((s) => s.inFeatures > 65536)) return `"${name}" has more than 65,536 inputs`;
  }
  for (const name of adapter.masks.keys()) {
    if (!layout.weightSites.has(name) && layout.embed?.name !== name) return `it masks "${name}", which is not a Linear site's weight`;
  }
  return null;
}

/** Collects typed arrays, then copies them into one arena block. */
class Packer {
  private parts: { off: number; data: Float32Array | Uint32Array | Uint16Array | Int32Array }[] = [];
  private size = 0;

  /** Queue `data`; returns its offset relative to the block. */
  add(data: Float32Array | Uint32Array | Uint16Array | Int32Array): number {
    const off = this.size;
    this.parts.push({ off, data });
    this.size += Math.ceil(data.byteLength / 16) * 16;
    return off;
  }

  commit(arena: Arena): { base: number; bytes: number } {
    const base = arena.alloc(Math.max(16, this.size));
    const bytes = new Uint8Array(arena.memory.buffer);
    for (const p of this.parts) bytes.set(new Uint8Array(p.data.buffer, p.data.byteOffset, p.data.byteLength), base + p.off);
    return { base, bytes: this.size };
  }
}

/**
 * The grouped sparse layout of entries (out[k], in[k], val[k]) of a site with `nOut`
 * outputs: rows with equal entry counts together (ascending count, then row id), four rows
 * per SIMD block with entries j-major, the group's remaining rows one by one.
 */
export function groupedLayout(outIdx: Int32Array, inIdx: Int32Array, vals: Float32Array, nOut: number) {
  const n = vals.length;
  const count = new Uint32Array(nOut);
  for (let k = 0; k < n; k++) count[outIdx[k]]++;
  const start = new Uint32Array(nOut + 1);
  for (let o = 0; o < nOut; o++) start[o + 1] = start[o] + count[o];
  const fill = start.slice(0, nOut);
  const byRow = new Uint32Array(n);
  for (let k = 0; k < n; k++) byRow[fill[outIdx[k]]++] = k;
  // Rows ordered by (count, row): a counting sort on count, stable in row order.
  let maxCount = 0;
  for (let o = 0; o < nOut; o++) maxCount = Math.max(maxCount, count[o]);
  const perCount = new Uint32Array(maxCount + 2);
  for (let o = 0; o < nOut; o++) if (count[o]) perCount[count[o] + 1]++;
  for (let c = 1; c <= maxCount + 1; c++) perCount[c] += perCount[c - 1];
  const nonEmpty = perCount[maxCount + 1];
  const order = new Uint32Array(nonEmpty);
  const at = perCount.slice();
  for (let o = 0; o < nOut; o++) if (count[o]) order[at[count[o]]++] = o;

  const groups: number[] = [];
  const rowIds = new Uint32Array(nonEmpty);
  const cols = new Uint16Array(n);
  const out = new Float32Array(n);
  let r = 0;
  let e = 0;
  for (let a = 0; a < nonEmpty; ) {
    const c = count[order[a]];
    let b = a;
    while (b < nonEmpty && count[order[b]] === c) b++;
    const blocks = Math.floor((b - a) / 4);
    groups.push(c, blocks, b - a - 4 * blocks);
    for (let q = a; q < a + 4 * blocks; q += 4) {
      for (let j = 0; j < c; j++) {
        for (let l = 0; l < 4; l++) {
          const k = byRow[start[order[q + l]] + j];
          cols[e] = inIdx[k];
          out[e++] = vals[k];
        }
      }
      for (let l = 0; l < 4; l++) rowIds[r++] = order[q + l];
    }
    for (let q = a + 4 * blocks; q < b; q++) {
      const o = order[q];
      for (let j = 0; j < c; j++) {
        const k = byRow[start[o] + j];
        cols[e] = inIdx[k];
        out[e++] = vals[k];
      }
      rowIds[r++] = o;
    }
    a = b;
  }
  return { groups: Uint32Array.from(groups), rowIds, cols, vals: out };
}

/** Output and input index of each flat index of a site's weight. */
export function splitIndices(flat: Int32Array, site: LinearSite): [Int32Array, Int32Array] {
  const n = flat.length;
  const hi = new Int32Array(n);
  const lo = new Int32Array(n);
  const inner = site.layout === 'out_in' ? site.inFeatures : site.outFeatures;
  for (let k = 0; k < n; k++) {
    const h = (flat[k] / inner) | 0;
    hi[k] = h;
    lo[k] = flat[k] - h * inner;
  }
  return site.layout === 'out_in' ? [hi, lo] : [lo, hi];
}

function transpose(v: Float32Array, rows: number, cols: number): Float32Array {
  const out = new Float32Array(v.length);
  for (let i = 0; i < rows; i++) for (let j = 0; j < cols; j++) out[j * rows + i] = v[i * cols + j];
  return out;
}

/** Kernel cost and work per token of `adapter`'s tables, from the payload alone (no tables built). */
export function tablesEstimate(adapter: Adapter, layout: ModelLayout): { costNs: number; work: number } {
  let costNs = 0;
  let work = 0;
  const touched = new Set<string>();
  const sitesOf = (param: string) => layout.weightSites.get(param) ?? [];
  for (const [name, d] of adapter.additive) {
    for (const site of sitesOf(name)) {
      costNs += d.indices.length * COST.sparseEntryNs;
      work += d.indices.length;
      touched.add(site.name);
    }
    const bias = layout.biasSite.get(name);
    if (bias) touched.add(bias.name);
  }
  for (const [name, d] of adapter.structured) {
    for (const site of sitesOf(name)) {
      costNs += d.values.length * COST.denseMacNs;
      work += d.values.length;
      touched.add(site.name);
    }
  }
  for (const [name, p] of adapter.lowrank) {
    for (const site of sitesOf(name)) {
      const w = p.A.shape[0] * (site.inFeatures + site.outFeatures);
      costNs += w * COST.denseMacNs;
      work += w;
      touched.add(site.name);
    }
    if (p.biasDelta) {
      const site = layout.biasSite.get(biasParamOf(name));
      if (site) touched.add(site.name);
    }
  }
  return { costNs: costNs + touched.size * COST.perSiteRowNs, work };
}

/** Build `adapter`'s tables (call mustFuseReason first: this throws on what it reports). */
export function buildTables(arena: Arena, adapter: Adapter, layout: ModelLayout): AdapterTables {
  const why = mustFuseReason(adapter, layout);
  if (why) throw new SparsetuneError('BAD_ADAPTER', `adapter "${adapter.meta.method}" cannot run unfused: ${why}`);
  const packer = new Packer();
  type Pending = { site: LinearSite; make: (base: number) => SiteEntry };
  const pending: Pending[] = [];
  const sitesOf = (param: string) => layout.weightSites.get(param) ?? [];

  for (const [name, d] of adapter.additive) {
    const bias = layout.biasSite.get(name);
    if (bias) {
      const v = new Float32Array(bias.outFeatures);
      d.indices.forEach((e, k) => (v[e] = d.values[k]));
      const off = packer.add(v);
      pending.push({ site: bias, make: (b) => ({ kind: 'bias', v: b + off, scale: 1 }) });
      continue;
    }
    for (const site of sitesOf(name)) {
      const [outIdx, inIdx] = splitIndices(d.indices, site);
      const g = groupedLayout(outIdx, inIdx, d.values, site.outFeatures);
      const offs = [packer.add(g.groups), packer.add(g.rowIds), packer.add(g.cols), packer.add(g.vals)];
      const nGroups = g.groups.length / 3;
      pending.push({ site, make: (b) => ({ kind: 'sparse', groups: b + offs[0], nGroups, rowIds: b + offs[1], cols: b + offs[2], vals: b + offs[3], nnz: g.vals.length }) });

    }
  }

  for (const [name, d] of adapter.structured) {
    for (const site of sitesOf(name)) {
      const [outDim, inDim] = site.layout === 'out_in' ? [site.outFeatures, site.inFeatures] : [site.inFeatures, site.outFeatures];
      const nr = d.rows?.length ?? outDim;
      const nc = d.cols?.length ?? inDim;
      // In the [out, in] view: rows are outputs, cols inputs (Conv1D swaps them).
      const [V, rows, cols, r, c] = site.layout === 'out_in' ? [d.values, d.rows, d.cols, nr, nc] : [transpose(d.values, nr, nc), d.cols, d.rows, nc, nr];
      const offV = packer.add(V);
      const offR = rows ? packer.add(rows) : -1;
      const offC = cols ? packer.add(cols) : -1;
      pending.push({ site, make: (b) => ({ kind: 'structured', V: b + offV, nr: r, nc: c, rows: offR < 0 ? 0 : b + offR, cols: offC < 0 ? 0 : b + offC }) });

    }
  }

  for (const [name, p] of adapter.lowrank) {
    for (const site of sitesOf(name)) {
      const rank = p.A.shape[0];
      // [out, in] view: ΔW = scale·B·A; Conv1D stores ΔWᵀ = scale·B·A, so the roles swap.
      const [A, BT] = site.layout === 'out_in' ? [p.A.data, transpose(p.B.data, p.B.shape[0], rank)] : [transpose(p.B.data, p.B.shape[0], rank), p.A.data];
      const offA = packer.add(A);
      const offB = packer.add(BT);
      pending.push({ site, make: (b) => ({ kind: 'lowrank', A: b + offA, BT: b + offB, r: rank, scale: p.scale }) });

    }
    if (p.biasDelta) {
      const site = layout.biasSite.get(biasParamOf(name))!;
      const off = packer.add(p.biasDelta);
      pending.push({ site, make: (b) => ({ kind: 'bias', v: b + off, scale: p.scale }) });
    }
  }
  const { costNs, work } = tablesEstimate(adapter, layout);

  const { base, bytes } = packer.commit(arena);
  const sites = new Map<string, SiteEntry[]>();
  for (const p of pending) sites.set(p.site.name, [...(sites.get(p.site.name) ?? []), p.make(base)]);
  const emb = layout.embed?.name;
  const touchesEmbedding = emb !== undefined && (adapter.additive.has(emb) || adapter.structured.has(emb) || adapter.lowrank.has(emb));
  let released = false;
  return {
    sites,
    touchesEmbedding,
    bytes,
    costNs,
    work,
    release() {
      if (released) return;
      released = true;
      arena.release(base);
    },
  };
}
