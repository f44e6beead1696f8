/**
 * MoSA's split of one adapter tensor into K sparse modules: a random partition of its
 * individual entries (entry i belongs to module floor(u_i·K), u_i ~ U(0,1)), K full-size
 * copies that start identical, gradient masking, and the merge (the average of the copies).
 */
import type { Graph, Value } from '../engine/ir.js';
import { add, mul, split } from '../engine/ops/index.js';
import type { GradMap, TrainableParam } from '../train/method.js';
import { paramValue } from './common.js';

export interface SplitTensor {
  /** Name of the merged tensor (graph input of eval/inference graphs, extra tensor on export). */
  name: string;
  shape: number[];
  /** owner[i] = the module that trains entry i. */
  owner: Uint8Array;
  /** K full-size copies, `<name>.m<k>`. */
  modules: TrainableParam[];
}

/** Assign every entry to one of K modules by the 1/K-quantile bin of a uniform draw. */
export function partitionEntries(n: number, K: number, rand: () => number): Uint8Array {
  const owner = new Uint8Array(n);
  for (let i = 0; i < n; i++) owner[i] = Math.min(K - 1, Math.floor(rand() * K));
  return owner;
}

/** Module k's 0/1 mask over the tensor's entries. */
export function moduleMask(s: SplitTensor, k: number): Uint8Array {
  return s.owner.map((o) => (o === k ? 1 : 0));
}

/** K copies of `init` (identical start: per-module random init would break the merge). */
export function createSplit(name: string, shape: number[], init: Float32Array, K: number, rand: () => number, decay: boolean): SplitTensor {
  if (K > 255) throw new RangeError('at most 255 modules');
  return {
    name,
    shape,
    owner: partitionEntries(init.length, K, rand),
    modules: Array.from({ length: K }, (_, k) => ({ name: `${name}.m${k}`, shape: [...shape], data: init.slice(), decay })),
  };
}

/** The merged tensor: (1/K)·sum_k W_k, summed in float64 and rounded once. */
export function mergeSplit(s: SplitTensor): Float32Array {
  const out = new Float32Array(s.owner.length);
  const K = s.modules.length;
  for (let i = 0; i < out.length; i++) {
    let acc = 0;
    for (let k = 0; k < K; k++) acc += s.modules[k].data[i];
    out[i] = acc / K;
  }
  return out;
}

/** In the graph: sum_k sel[k]·W_k for a one-hot selection input `sel` [K] (only the chosen copy gets a gradient). */
export function selectedModule(g: Graph, s: SplitTensor, sel: Value): Value {
  const K = s.modules.length;
  const parts = K === 1 ? [sel] : split(sel, new Array<number>(K).fill(1), 0);
  let acc = mul(paramValue(g, s.modules[0]), parts[0]);
  for (let k = 1; k < K; k++) acc = add(acc, mul(paramValue(g, s.modules[k]), parts[k]));
  return acc;
}

/**
 * Modules not used this step lose their gradient entirely (the optimizer then skips them:
 * no moment update, no weight decay); a used module's gradient is multiplied by its mask.
 */
export function maskGradients(s: SplitTensor, grads: GradMap, used: ReadonlySet<number>): void {
  s.modules.forEach((m, k) => {
    if (!used.has(k)) {
      grads.delete(m.name);
      return;
    }
    const gr = grads.get(m.name);
    if (!gr) return;
    for (let i = 0; i < gr.length; i++) if (s.owner[i] !== k) gr[i] = 0;
  });
}

/** Copies of the used modules before the optimizer step, to undo any move of their masked-out entries. */
export function snapshotUsed(s: SplitTensor, used: ReadonlySet<number>): Map<number, Float32Array> {
  return new Map([...used].map((k) => [k, s.modules[k].data.slice()]));
}

/** Put back the masked-out entries of the snapshotted modules (AdamW's decay must not move them). */
export function restoreMaskedOut(s: SplitTensor, snapshot: Map<number, Float32Array>): void {
  for (const [k, prev] of snapshot) {
    const w = s.modules[k].data;
    for (let i = 0; i < w.length; i++) if (s.owner[i] !== k) w[i] = prev[i];
  }
}
