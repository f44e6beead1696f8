/**
 * S²FT co-permutation: reorder coupled structures so each trainable slice is one contiguous
 * dense block, without changing the function the model computes.
 *
 * - FFN: channels in the order only-up, up∩down, only-down, rest, applied to the rows of
 *   gate_proj and up_proj and the columns of down_proj together.
 * - Attention: whole KV groups (a KV head with all the query heads that share it) in the
 *   order only-v, v∩o, only-o, rest, applied to q/k/v rows and o_proj columns. Moving whole
 *   groups keeps grouped-query attention correct (each query head keeps its KV head).
 *
 * Orders are "new position -> old index". The inverse restores the original order exactly
 * (a permutation moves values, it never rounds them).
 */
import { SparsetuneError } from '../errors.js';
import type { LlamaConfig } from '../io/config.js';
import type { StructuredDelta } from '../merge/types.js';
import type { HostTensor } from '../tensor.js';
import type { S2ftSelection } from './s2ft-select.js';

/** A per-layer reordering: FFN channels and KV groups, both new position -> old index. */
export interface LayerPermutation {
  ffn: Int32Array;
  kvGroups: Int32Array;
}

/** Where the selected units of a layer sit after co-permutation: half-open ranges in unit positions. */
export interface PermutedRanges {
  /** up_proj rows [start, end) (only-up then up∩down). */
  up: [number, number];
  /** down_proj columns [start, end) (up∩down then only-down). */
  down: [number, number];
  /** v_proj KV heads [start, end) (only-v then v∩o). */
  vGroups: [number, number];
  /** KV groups holding o-selected heads [start, end) (v∩o then only-o). */
  oGroups: [number, number];
}

/** Four-way split of two index sets: only-a, a∩b, only-b, rest (each ascending). */
function fourWay(a: number[], b: number[], n: number): { order: number[]; onlyA: number; both: number; onlyB: number } {
  const inA = new Set(a);
  const inB = new Set(b);
  const onlyA: number[] = [];
  const both: number[] = [];
  const onlyB: number[] = [];
  const rest: number[] = [];
  for (let i = 0; i < n; i++) {
    if (inA.has(i) && inB.has(i)) both.push(i);
    else if (inA.has(i)) onlyA.push(i);
    else if (inB.has(i)) onlyB.push(i);
    else rest.push(i);
  }
  return { order: [...onlyA, ...both, ...onlyB, ...rest], onlyA: onlyA.length, both: both.length, onlyB: onlyB.length };
}

/** The co-permutation of one layer for a selection, and where the selected units land. */
export function layerPermutation(cfg: LlamaConfig, sel: S2ftSelection, layer: number): { perm: LayerPermutation; ranges: PermutedRanges } {
  const ffn = fourWay(sel.up[layer], sel.down[layer], cfg.intermediateSize);
  const G = cfg.numHeads / cfg.numKvHeads;
  const oGroups = [...new Set(sel.o[layer].map((h) => Math.floor(h / G)))];
  const heads = fourWay(sel.v[layer], oGroups, cfg.numKvHeads);
  return {
    perm: { ffn: Int32Array.from(ffn.order), kvGroups: Int32Array.from(heads.order) },
    ranges: {
      up: [0, ffn.onlyA + ffn.both],
      down: [ffn.onlyA, ffn.onlyA + ffn.both + ffn.onlyB],
      vGroups: [0, heads.onlyA + heads.both],
      oGroups: [heads.onlyA, heads.onlyA + heads.both + heads.onlyB],
    },
  };
}

/** The co-permutations of every layer. */
export function modelPermutation(cfg: LlamaConfig, sel: S2ftSelection): LayerPermutation[] {
  return Array.from({ length: cfg.numLayers }, (_, l) => layerPermutation(cfg, sel, l).perm);
}

/** inverse[order[i]] = i. */
export function invertPermutation(order: Int32Array): Int32Array {
  const inv = new Int32Array(order.length).fill(-1);
  order.forEach((old, i) => {
    if (old < 0 || old >= order.length || inv[old] !== -1) throw new SparsetuneError('BAD_ARGUMENT', `not a permutation: index ${old} at position ${i}`);
    inv[old] = i;
  });
  return inv;
}

/** Unit order (new -> old) for units of `width` consecutive entries, expanded to entries. */
function expand(order: Int32Array, width: number): Int32Array {
  const out = new Int32Array(order.length * width);
  order.forEach((old, i) => {
    for (let j = 0; j < width; j++) out[i * width + j] = old * width + j;
  });
  return out;
}

/** Query-head entry order (rows of q / columns of o) for a KV-group order. */
function queryOrder(cfg: LlamaConfig, kvGroups: Int32Array): Int32Array {
  const G = cfg.numHeads / cfg.numKvHeads;
  return expand(expand(kvGroups, G), cfg.headDim);
}

function permuteRows(t: HostTensor<'f32'>, order: Int32Array): HostTensor<'f32'> {
  const cols = t.shape.length === 2 ? t.shape[1] : 1;
  if (t.shape[0] !== order.length) throw new SparsetuneError('SHAPE_MISMATCH', `permute rows: tensor [${t.shape}] vs order of ${order.length}`);
  const data = new Float32Array(t.data.length);
  order.forEach((old, i) => data.set(t.data.subarray(old * cols, old * cols + cols), i * cols));
  return { dtype: 'f32', shape: [...t.shape], data };
}

function permuteCols(t: HostTensor<'f32'>, order: Int32Array): HostTensor<'f32'> {
  const [rows, cols] = t.shape;
  if (cols !== order.length) throw new SparsetuneError('SHAPE_MISMATCH', `permute cols: tensor [${t.shape}] vs order of ${order.length}`);
  const data = new Float32Array(t.data.length);
  for (let r = 0; r < rows; r++) for (let c = 0; c < cols; c++) data[r * cols + c] = t.data[r * cols + order[c]];
  return { dtype: 'f32', shape: [...t.shape], data };
}

/** For each touched parameter: which axis moves and by which entry order. */
function parameterOrders(cfg: LlamaConfig, perms: LayerPermutation[]): Map<string, { axis: 'rows' | 'cols'; order: Int32Array }> {
  const out = new Map<string, { axis: 'rows' | 'cols'; order: Int32Array }>();
  perms.forEach((p, l) => {
    const a = `model.layers.${l}.self_attn`;
    const m = `model.layers.${l}.mlp`;
    const q = queryOrder(cfg, p.kvGroups);
    const kv = expand(p.kvGroups, cfg.headDim);
    for (const s of ['weight', 'bias']) {
      out.set(`${a}.q_proj.${s}`, { axis: 'rows', order: q });
      out.set(`${a}.k_proj.${s}`, { axis: 'rows', order: kv });
      out.set(`${a}.v_proj.${s}`, { axis: 'rows', order: kv });
      out.set(`${m}.gate_proj.${s}`, { axis: 'rows', order: p.ffn });
      out.set(`${m}.up_proj.${s}`, { axis: 'rows', order: p.ffn });
    }
    out.set(`${a}.o_proj.weight`, { axis: 'cols', order: q });
    out.set(`${m}.down_proj.weight`, { axis: 'cols', order: p.ffn });
  });
  return out;
}

/**
 * The co-permuted weights (new tensors for the touched parameters, the same objects for
 * the rest). The permuted model computes the same function as the original.
 */
export function permuteWeights(weights: Map<string, HostTensor<'f32'>>, cfg: LlamaConfig, perms: LayerPermutation[]): Map<string, HostTensor<'f32'>> {
  const orders = parameterOrders(cfg, perms);
  const out = new Map<string, HostTensor<'f32'>>();
  for (const [name, t] of weights) {
    const o = orders.get(name);
    out.set(name, !o ? t : o.axis === 'rows' ? permuteRows(t, o.order) : permuteCols(t, o.order));
  }
  return out;
}

/** The inverse co-permutations (apply them with permuteWeights to restore the original order). */
export function invertPermutations(perms: LayerPermutation[]): LayerPermutation[] {
  return perms.map((p) => ({ ffn: invertPermutation(p.ffn), kvGroups: invertPermutation(p.kvGroups) }));
}

/**
 * Map a structured delta given in ORIGINAL coordinates to the co-permuted model's
 * coordinates (rows/cols re-sorted, values reordered to match).
 */
export function permuteStructuredDelta(name: string, d: StructuredDelta, cfg: LlamaConfig, perms: LayerPermutation[]): StructuredDelta {
  const o = parameterOrders(cfg, perms).get(name);
  if (!o) return d;
  const inv = invertPermutation(o.order);
  const idx = o.axis === 'rows' ? d.rows : d.cols;
  if (!idx) throw new SparsetuneError('BAD_ARGUMENT', `permuteStructuredDelta: "${name}" moves along ${o.axis}, but the delta covers all of them`);
  const moved = Array.from(idx, (old, k) => ({ pos: inv[old], k })).sort((x, y) => x.pos - y.pos);
  const newIdx = Int32Array.from(moved.map((m) => m.pos));
  const R = d.rows?.length ?? d.shape![0];
  const C = d.cols?.length ?? d.shape![1];
  const values = new Float32Array(d.values.length);
  moved.forEach((m, j) => {
    if (o.axis === 'rows') values.set(d.values.subarray(m.k * C, m.k * C + C), j * C);
    else for (let r = 0; r < R; r++) values[r * C + j] = d.values[r * C + m.k];
  });
  return { ...d, values, ...(o.axis === 'rows' ? { rows: newIdx } : { cols: newIdx }) };
}
