/**
 * Mask statistics: the fraction of each weight a mask keeps, and for N:M masks (MaskLLM's
 * 2:4 by default) how often each of the C(M, N) patterns occurs. Groups are M consecutive
 * INPUT weights of one output row, the unit N:M sparsity kernels work on; for GPT-2's
 * Conv1D ([in, out] storage) that is a strided run, so its layout must be known.
 */
import type { Adapter, MaskPayload } from '../merge/types.js';
import type { BaseInfo } from './base-info.js';
import { compareParams, locateParam, type ParamLocation } from './params.js';

export interface NmStat {
  n: number;
  m: number;
  groups: number;
  /** Every pattern with exactly n kept of m, as a 0/1 string (`1100` keeps positions 0 and 1), with its count. */
  patterns: { pattern: string; count: number }[];
  /** Groups that do not keep exactly n weights. */
  other: number;
}

export interface MaskStat extends ParamLocation {
  name: string;
  numel: number;
  kept: number;
  fractionKept: number;
  nm?: NmStat;
}

/** The C(m, n) patterns in lexicographic order of their kept positions. */
export function nmPatterns(n: number, m: number): string[] {
  const out: string[] = [];
  const pick = (start: number, chosen: number[]) => {
    if (chosen.length === n) {
      out.push(Array.from({ length: m }, (_, k) => (chosen.includes(k) ? '1' : '0')).join(''));
      return;
    }
    for (let k = start; k < m; k++) pick(k + 1, [...chosen, k]);
  };
  pick(0, []);
  return out;
}

const bitAt = (bits: Uint8Array, i: number): number => (bits[i >> 3] >>> (7 - (i & 7))) & 1;

function countKept(mask: MaskPayload): number {
  let kept = 0;
  for (let i = 0; i < mask.numel; i++) kept += bitAt(mask.bits, i);
  return kept;
}

/**
 * Count the N:M patterns of one mask. `rowView` gives, for output row o and input i, the
 * flat index of that element. Returns null when the input width does not split into groups of m.
 */
export function countNmPatterns(
  mask: MaskPayload,
  n: number,
  m: number,
  dims: { outDim: number; inDim: number; layout: 'out_in' | 'in_out' },
): NmStat | null {
  const { outDim, inDim, layout } = dims;
  if (inDim % m !== 0 || outDim * inDim !== mask.numel) return null;
  const names = nmPatterns(n, m);
  const indexOf = new Map<number, number>();
  names.forEach((p, k) => indexOf.set(parseInt(p, 2), k));
  const counts = new Array<number>(names.length).fill(0);
  let other = 0;
  const flat = layout === 'out_in' ? (o: number, i: number) => o * inDim + i : (o: number, i: number) => i * outDim + o;
  for (let o = 0; o < outDim; o++) {
    for (let g = 0; g < inDim; g += m) {
      let code = 0;
      for (let k = 0; k < m; k++) code = (code << 1) | bitAt(mask.bits, flat(o, g + k));
      const slot = indexOf.get(code);
      if (slot === undefined) other++;
      else counts[slot]++;
    }
  }
  return { n, m, groups: (outDim * inDim) / m, patterns: names.map((pattern, k) => ({ pattern, count: counts[k] })), other };
}

/** GPT-2 Conv1D weights are stored [in, out]; their layout matters for N:M grouping. */
const CONV1D = /\.(c_attn|c_proj|c_fc)\.weight$/;

/** The (n, m) an adapter's masks follow, from its config (MaskLLM records n and m). */
function nmOf(a: Adapter): { n: number; m: number } | null {
  const { n, m } = a.meta.config;
  if (typeof n === 'number' && typeof m === 'number' && Number.isInteger(n) && Number.isInteger(m) && n > 0 && n < m && m <= 8) return { n, m };
  if (a.meta.method === 'maskllm') return { n: 2, m: 4 };
  return null;
}

/**
 * Statistics of every mask of `a`. N:M patterns are counted when the config names n and m,
 * or (for other methods) when every group of every mask happens to be exactly 2:4.
 */
export function maskStats(a: Adapter, base: BaseInfo | undefined, notes: string[]): MaskStat[] {
  const entries = [...a.masks.entries()].sort(([x], [y]) => compareParams(x, y));
  const configured = nmOf(a);
  const nm = configured ?? { n: 2, m: 4 };
  let skipped = 0;
  const stats: MaskStat[] = entries.map(([name, mask]) => {
    const kept = countKept(mask);
    const stat: MaskStat = { name, ...locateParam(name), numel: mask.numel, kept, fractionKept: mask.numel ? kept / mask.numel : 0 };
    const shape = base?.shapes.get(name);
    const layout = base?.layouts.get(name) ?? (CONV1D.test(name) ? undefined : 'out_in');
    let dims: { outDim: number; inDim: number; layout: 'out_in' | 'in_out' } | undefined;
    if (layout && shape?.length === 2) dims = layout === 'out_in' ? { outDim: shape[0], inDim: shape[1], layout } : { outDim: shape[1], inDim: shape[0], layout };
    // Without the shape, a row-major [out, in] weight whose width splits into groups of m
    // groups the same way as the flat array cut into runs of m.
    else if (layout === 'out_in' && mask.numel % nm.m === 0) dims = { outDim: mask.numel / nm.m, inDim: nm.m, layout };
    const counted = dims ? countNmPatterns(mask, nm.n, nm.m, dims) : null;
    if (counted) stat.nm = counted;
    else if (configured) skipped++;
    return stat;
  });
  if (!configured && !stats.every((s) => s.nm && s.nm.other === 0)) for (const s of stats) delete s.nm;
  if (skipped) notes.push(`${skipped} mask(s) could not be split into ${nm.n}:${nm.m} groups (pass --model so their shapes and layouts are known)`);
  return stats;
}
