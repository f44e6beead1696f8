/**
 * MaskLLM's graph pieces and host-side mask math: the Gumbel-softmax soft mask used in
 * training, the arg-max hard mask used for evaluation and export, and the Gumbel noise.
 *
 * Logits live in the row view ([out, in], see priors.ts): logits [groups, C] with groups =
 * out · in / M, group k covering inputs (k mod (in/M))·M .. +M-1 of row floor(k / (in/M)).
 */
import type { Graph, Value } from '../engine/ir.js';
import { add, constTensor, div, gather, matmul, mul, reshape, softmax, topk, transpose } from '../engine/ops/index.js';
import type { LinearSite } from '../models/hooks.js';

/** The [C, M] candidate table as a graph constant (one per graph and N:M). */
export function candidateTable(g: Graph, table: Uint8Array, m: number): Value {
  const key = `maskllm:candidates:${m}:${table.join('')}`;
  let v = g.memo.get(key);
  if (!v) {
    v = constTensor(g, { dtype: 'f32', shape: [table.length / m, m], data: Float32Array.from(table) }, 'nm_candidates');
    g.memo.set(key, v);
  }
  return v;
}

/** [groups, M] per-group masks -> the weight's own layout ([out, in], or [in, out] for Conv1D). */
function toWeightLayout(groupMasks: Value, site: LinearSite): Value {
  const rowView = reshape(groupMasks, [site.outFeatures, site.inFeatures]);
  return site.layout === 'out_in' ? rowView : transpose(rowView, [1, 0]);
}

/**
 * Soft mask of training: y = softmax((kappa·logits + gumbel) / tau) per group, M_soft = y · S.
 * `kappa` and `tau` are scalar graph inputs so one compiled graph serves every step.
 */
export function softMask(logits: Value, gumbel: Value, kappa: Value, tau: Value, table: Value, site: LinearSite): Value {
  const y = softmax(div(add(mul(logits, kappa), gumbel), tau), -1);
  return toWeightLayout(matmul(y, table), site);
}

/** Hard mask: the arg-max candidate of every group (ties pick the lower candidate index). */
export function hardMask(logits: Value, table: Value, site: LinearSite): Value {
  const [, best] = topk(logits, 1); // [groups, 1]
  const picked = gather(table, best); // [groups, 1, M]
  const m = table.shape[1] as number;
  return toWeightLayout(reshape(picked, [logits.shape[0], m]), site);
}

/** Index of the largest logit of each group (first one on ties, like the graph's TopK). */
export function argmaxCandidates(logits: Float32Array, candidates: number): Uint32Array {
  const groups = logits.length / candidates;
  const out = new Uint32Array(groups);
  for (let k = 0; k < groups; k++) {
    const base = k * candidates;
    let best = 0;
    for (let c = 1; c < candidates; c++) if (logits[base + c] > logits[base + best]) best = c;
    out[k] = best;
  }
  return out;
}

/** The hard 0/1 mask in the row view, from the winning candidate of every group. */
export function hardRowMask(winners: Uint32Array, table: Uint8Array, m: number): Uint8Array {
  const out = new Uint8Array(winners.length * m);
  for (let k = 0; k < winners.length; k++) out.set(table.subarray(winners[k] * m, winners[k] * m + m), k * m);
  return out;
}

/** Fill `out` with standard Gumbel noise -log(-log U), U uniform in (0, 1). */
export function fillGumbel(out: Float32Array, rand: () => number): void {
  for (let i = 0; i < out.length; i++) {
    // Clamp away from 0 and 1 so both logs stay finite.
    const u = Math.min(Math.max(rand(), 1e-12), 1 - 1e-12);
    out[i] = -Math.log(-Math.log(u));
  }
}

/** Linear interpolation from `start` to `end` at progress p in [0, 1]. */
export function lerp(start: number, end: number, p: number): number {
  return start + (end - start) * Math.min(1, Math.max(0, p));
}
