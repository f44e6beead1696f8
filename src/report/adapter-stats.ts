/**
 * Statistics of an adapter for the report, one section per payload kind: how sparse each
 * additive delta is, which rows/columns a structured (S²FT) delta touches, how large each
 * low-rank update is and which blocks it leaves untouched (GS-LoRA), which hidden channels
 * a pruned (PAT) adapter keeps. Masks are in mask-stats.ts. Everything is computed from the
 * adapter's own tensors; the base model only adds totals (numel, blocks, hidden width).
 */
import type { Adapter, StructuredDelta } from '../merge/types.js';
import type { BaseInfo } from './base-info.js';
import { maskStats, type MaskStat } from './mask-stats.js';
import { compareParams, locateParam, type ParamLocation } from './params.js';

export { compareParams, locateParam, type ParamLocation } from './params.js';

function numelOf(shape: number[] | undefined): number | undefined {
  return shape ? shape.reduce((a, b) => a * b, 1) : undefined;
}

export interface AdditiveStat extends ParamLocation {
  name: string;
  /** Stored entries of the sparse delta. */
  nnz: number;
  /** Elements of the whole parameter (when the base shape is known). */
  numel?: number;
  /** nnz / numel. */
  density?: number;
  meanAbs: number;
  maxAbs: number;
}

export interface StructuredStat extends ParamLocation {
  name: string;
  shape?: [number, number];
  /** Selected row / column indices; null means "all of them". */
  rows: Int32Array | null;
  cols: Int32Array | null;
  /** Elements the dense block covers. */
  entries: number;
  density?: number;
  meanAbs: number;
}

export interface LowRankStat extends ParamLocation {
  name: string;
  rank: number;
  scale: number;
  /** ||scale · B · A||_F: the size of the update this pair adds to the weight. */
  deltaNorm: number;
}

/** One transformer block as GS-LoRA sees it: alive when any of its pairs changes a weight. */
export interface BlockStat {
  layer: number;
  pairs: number;
  /** Frobenius norm over all the block's low-rank updates together. */
  deltaNorm: number;
  alive: boolean;
}

export interface PrunedStat {
  keptChannels: Int32Array;
  kept: number;
  /** Hidden width of the base model (when known). */
  total?: number;
  /** hidden_size written into the pruned model's config.json. */
  configHiddenSize?: number;
}

/** An auxiliary tensor carried with the adapter (MoSA's unfused branch, PAT's LoRA and HSM parts). */
export interface ExtraStat extends ParamLocation {
  name: string;
  shape: number[];
  /** Frobenius norm (f32 tensors; 0 for other dtypes). */
  norm: number;
}

export interface AdapterStats {
  method: string;
  kind: string;
  additive: AdditiveStat[];
  structured: StructuredStat[];
  masks: MaskStat[];
  lowrank: LowRankStat[];
  /** Per-block view of the low-rank pairs (empty without low-rank pairs). */
  blocks: BlockStat[];
  pruned?: PrunedStat;
  extra: ExtraStat[];
  /** Sums over every additive/structured payload. */
  totals: { deltaEntries: number; deltaNumel?: number };
  /** Things the report could not compute and why (no base model, unknown layout...). */
  notes: string[];
}

function absStats(values: Float32Array): { meanAbs: number; maxAbs: number } {
  let sum = 0;
  let max = 0;
  for (let i = 0; i < values.length; i++) {
    const a = Math.abs(values[i]);
    sum += a;
    if (a > max) max = a;
  }
  return { meanAbs: values.length ? sum / values.length : 0, maxAbs: max };
}

function structuredStat(name: string, st: StructuredDelta, base?: BaseInfo): StructuredStat {
  const baseShape = base?.shapes.get(name);
  const shape = st.shape ?? (baseShape && baseShape.length === 2 ? ([baseShape[0], baseShape[1]] as [number, number]) : undefined);
  const numel = shape ? shape[0] * shape[1] : undefined;
  return {
    name,
    ...locateParam(name),
    shape,
    rows: st.rows ?? null,
    cols: st.cols ?? null,
    entries: st.values.length,
    density: numel ? st.values.length / numel : undefined,
    meanAbs: absStats(st.values).meanAbs,
  };
}

/**
 * ||B·A||_F computed as sqrt(sum_ij (BᵀB)_ij (AAᵀ)_ij) in float64: r×r work per pair
 * instead of forming the out×in product.
 */
export function lowRankNorm(A: Float32Array, B: Float32Array, r: number, inDim: number, outDim: number): number {
  const gram = (m: Float32Array, rows: number, cols: number, byRow: boolean): Float64Array => {
    // byRow: rows of m ([r, cols]) dotted together; else columns of m ([rows, r]).
    const g = new Float64Array(r * r);
    for (let i = 0; i < r; i++) {
      for (let j = i; j < r; j++) {
        let s = 0;
        if (byRow) for (let k = 0; k < cols; k++) s += m[i * cols + k] * m[j * cols + k];
        else for (let k = 0; k < rows; k++) s += m[k * r + i] * m[k * r + j];
        g[i * r + j] = s;
        g[j * r + i] = s;
      }
    }
    return g;
  };
  const aat = gram(A, r, inDim, true);
  const btb = gram(B, outDim, r, false);
  let sq = 0;
  for (let i = 0; i < r * r; i++) sq += aat[i] * btb[i];
  return Math.sqrt(Math.max(0, sq));
}

function blockStats(lowrank: LowRankStat[], numLayers: number | undefined): BlockStat[] {
  if (!lowrank.length) return [];
  const seen = lowrank.map((p) => p.layer).filter((l): l is number => l !== null);
  const count = Math.max(numLayers ?? 0, seen.length ? Math.max(...seen) + 1 : 0);
  const blocks: BlockStat[] = Array.from({ length: count }, (_, layer) => ({ layer, pairs: 0, deltaNorm: 0, alive: false }));
  for (const p of lowrank) {
    if (p.layer === null || p.layer >= count) continue;
    const b = blocks[p.layer];
    b.pairs++;
    b.deltaNorm = Math.hypot(b.deltaNorm, p.deltaNorm);
  }
  for (const b of blocks) b.alive = b.deltaNorm > 0;
  return blocks;
}

/** How many blocks the adapter's method saw, when its metadata says so (GS-LoRA writes totalGroups). */
function layersFromMeta(a: Adapter): number | undefined {
  const m = a.meta.metrics;
  const groupBy = m.groupBy ?? a.meta.config.groupBy;
  return groupBy === 'block' && typeof m.totalGroups === 'number' ? m.totalGroups : undefined;
}

/** Compute every statistic the report shows for `a`; `base` (optional) supplies totals. */
export function adapterStats(a: Adapter, base?: BaseInfo): AdapterStats {
  const notes: string[] = [];
  const additive: AdditiveStat[] = [...a.additive.entries()]
    .sort(([x], [y]) => compareParams(x, y))
    .map(([name, d]) => {
      const numel = numelOf(base?.shapes.get(name));
      return { name, ...locateParam(name), nnz: d.indices.length, numel, density: numel ? d.indices.length / numel : undefined, ...absStats(d.values) };
    });
  const structured = [...a.structured.entries()].sort(([x], [y]) => compareParams(x, y)).map(([name, st]) => structuredStat(name, st, base));
  const lowrank: LowRankStat[] = [...a.lowrank.entries()]
    .sort(([x], [y]) => compareParams(x, y))
    .map(([name, p]) => {
      const r = p.A.shape[0];
      const norm = lowRankNorm(p.A.data, p.B.data, r, p.A.shape[1], p.B.shape[0]);
      return { name, ...locateParam(name), rank: r, scale: p.scale, deltaNorm: Math.abs(p.scale) * norm };
    });
  const numLayers = base?.numLayers ?? layersFromMeta(a);
  if (lowrank.length && numLayers === undefined) notes.push('the number of blocks is unknown (pass --model): blocks after the last one with a low-rank pair are not shown');
  const masks = maskStats(a, base, notes);

  let pruned: PrunedStat | undefined;
  if (a.pruned) {
    const h = a.pruned.configJson.hidden_size ?? a.pruned.configJson.n_embd;
    // PAT records the base width in its metrics; the base model says it too.
    const recorded = a.meta.metrics.hiddenSize;
    const total = base?.hiddenSize ?? (typeof recorded === 'number' ? recorded : undefined);
    pruned = { keptChannels: a.pruned.keptChannels, kept: a.pruned.keptChannels.length, total, configHiddenSize: typeof h === 'number' ? h : undefined };
    if (total === undefined) notes.push('the base hidden width is unknown (pass --model): the pruned fraction cannot be shown');
  }

  const withNumel = [...additive.map((s) => s.numel), ...structured.map((s) => (s.shape ? s.shape[0] * s.shape[1] : undefined))];
  const deltaEntries = additive.reduce((n, s) => n + s.nnz, 0) + structured.reduce((n, s) => n + s.entries, 0);
  const deltaNumel = withNumel.length && withNumel.every((n) => n !== undefined) ? withNumel.reduce((x, y) => x! + y!, 0) : undefined;
  if (additive.some((s) => s.numel === undefined)) notes.push('parameter sizes are unknown (pass --model): densities of additive deltas are not shown');

  return {
    method: a.meta.method,
    kind: a.meta.kind,
    additive,
    structured,
    masks,
    lowrank,
    blocks: blockStats(lowrank, numLayers),
    pruned,
    extra: [...(a.extra ?? [])]
      .sort(([x], [y]) => compareParams(x, y))
      .map(([name, t]) => {
        let sq = 0;
        if (t.dtype === 'f32') for (const v of t.data as Float32Array) sq += v * v;
        return { name, ...locateParam(name), shape: [...t.shape], norm: Math.sqrt(sq) };
      }),
    totals: { deltaEntries, deltaNumel },
    notes,
  };
}
