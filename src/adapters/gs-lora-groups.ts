/**
 * Parameter groups of GS-LoRA and the group-lasso arithmetic on them: one Frobenius norm
 * per group (over all its tensors together), the exact proximal step of alpha·sum_g ||theta_g||,
 * and the post-hoc threshold that decides which groups survive export.
 */
import type { Graph, Value } from '../engine/ir.js';
import { add, mul, reduceSum, sqrt } from '../engine/ops/index.js';
import type { TrainableParam } from '../train/method.js';
import type { LoraPair } from './lora.js';
import { paramValue } from './common.js';

export type GroupBy = 'block' | 'module' | 'matrix';

/** One lasso group: whole trainable tensors (a group never splits a tensor). */
export interface ParamGroup {
  /** `layer.3`, `model.layers.3.mlp.up_proj`, or `model.layers.3.mlp.up_proj.lora_A`. */
  key: string;
  /** Block index of every tensor in the group. */
  layer: number;
  params: TrainableParam[];
}

/** Partition the pairs' tensors into groups: per block, per module (A and B), or per matrix. */
export function buildGroups(pairs: LoraPair[], by: GroupBy): ParamGroup[] {
  if (by === 'module') return pairs.map((p) => ({ key: p.site.name, layer: p.site.layer ?? -1, params: [p.A, p.B] }));
  if (by === 'matrix') {
    return pairs.flatMap((p) => [
      { key: `${p.site.name}.lora_A`, layer: p.site.layer ?? -1, params: [p.A] },
      { key: `${p.site.name}.lora_B`, layer: p.site.layer ?? -1, params: [p.B] },
    ]);
  }
  const byLayer = new Map<number, ParamGroup>();
  for (const p of pairs) {
    const layer = p.site.layer ?? -1;
    let grp = byLayer.get(layer);
    if (!grp) {
      grp = { key: `layer.${layer}`, layer, params: [] };
      byLayer.set(layer, grp);
    }
    grp.params.push(p.A, p.B);
  }
  return [...byLayer.values()];
}

/** ||theta_g||_F over all tensors of the group, accumulated in float64. */
export function groupNorm(group: ParamGroup, values: (p: TrainableParam) => Float32Array = (p) => p.data): number {
  let sq = 0;
  for (const p of group.params) {
    const d = values(p);
    for (let i = 0; i < d.length; i++) sq += d[i] * d[i];
  }
  return Math.sqrt(sq);
}

/** Whether every element of the group is exactly zero. */
export function isZeroGroup(group: ParamGroup): boolean {
  return group.params.every((p) => p.data.every((v) => v === 0));
}

/**
 * Exact proximal operator of t·||theta_g|| applied in place to every group:
 * theta_g <- max(0, 1 - t/||theta_g||)·theta_g. Groups at or below t become exactly 0.
 * Returns how many groups are zero afterwards.
 */
export function proxGroupLasso(groups: ParamGroup[], t: number): number {
  let zeroed = 0;
  for (const grp of groups) {
    const n = groupNorm(grp);
    if (n <= t) {
      for (const p of grp.params) p.data.fill(0);
      zeroed++;
    } else if (t > 0) {
      const f = 1 - t / n;
      for (const p of grp.params) for (let i = 0; i < p.data.length; i++) p.data[i] *= f;
    }
  }
  return zeroed;
}

/**
 * Groups that survive the post-hoc threshold ||theta_g|| >= tau·ref with
 * ref = max(max_g ||theta_g||, floor): `floor` (the largest group norm at initialisation)
 * keeps the rule meaningful when every group has shrunk to nothing. A zero group never survives.
 */
export function survivingGroups(groups: ParamGroup[], tau: number, floor = 0): Set<ParamGroup> {
  const norms = groups.map((g) => groupNorm(g));
  const ref = Math.max(floor, ...norms);
  return new Set(groups.filter((_, k) => norms[k] > 0 && norms[k] >= tau * ref));
}

/** Set every group outside `alive` to exactly zero; returns how many groups that touched. */
export function zeroGroups(groups: ParamGroup[], alive: Set<ParamGroup>): number {
  let n = 0;
  for (const g of groups) {
    if (alive.has(g) || isZeroGroup(g)) continue;
    for (const p of g.params) p.data.fill(0);
    n++;
  }
  return n;
}

/** The pairs whose A and B both belong to surviving groups (a pair with a dead factor is zero). */
export function survivingPairs(pairs: LoraPair[], groups: ParamGroup[], alive: Set<ParamGroup>): LoraPair[] {
  const owner = new Map<TrainableParam, ParamGroup>();
  for (const g of groups) for (const p of g.params) owner.set(p, g);
  return pairs.filter((p) => alive.has(owner.get(p.A)!) && alive.has(owner.get(p.B)!));
}

/**
 * sum_g ||theta_g||_F in the graph (unsquared, one norm per group). A tiny epsilon under the
 * square root keeps the gradient finite (zero) at an exactly-zero group.
 */
export function groupNormSum(g: Graph, groups: ParamGroup[]): Value {
  let total: Value | null = null;
  for (const grp of groups) {
    let sq: Value | null = null;
    for (const p of grp.params) {
      const v = paramValue(g, p);
      const s = reduceSum(mul(v, v), v.shape.map((_, i) => i), false);
      sq = sq ? add(sq, s) : s;
    }
    const n = sqrt(add(sq!, 1e-12));
    total = total ? add(total, n) : n;
  }
  return total!;
}
