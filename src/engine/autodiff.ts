/**
 * Reverse-mode autodiff on the IR. Gradients are built only on paths from `wrt` to the
 * loss, so frozen weights get no weight-gradient nodes at all (the partial backprop that
 * LoRA and S2FT rely on). Fan-out is accumulated with Add.
 */
import { SparsetuneError } from '../errors.js';
import { opDef, type Node, type Value } from './ir.js';
import { add } from './ops/elementwise.js';
import { fullLike } from './ops/shape.js';

/**
 * Gradients of the scalar `loss` with respect to each value in `wrt`. A value that does
 * not influence the loss gets a zero tensor of its shape.
 */
export function grad(loss: Value, wrt: Value[]): Value[] {
  if (loss.rank !== 0) throw new SparsetuneError('BAD_GRAPH', `grad: loss must be a scalar, got ${loss}`);
  if (loss.dtype !== 'f32' && loss.dtype !== 'f64') throw new SparsetuneError('BAD_GRAPH', `grad: loss must be float, got ${loss}`);
  const g = loss.graph;
  g.root.differentiated = true;
  const nodes = g.nodes.slice(); // snapshot: grad rules append new nodes

  // Values that depend on some `wrt` (forward reachability).
  const fromWrt = new Set<number>(wrt.map((v) => v.id));
  for (const n of nodes) {
    if (n.inputs.some((v) => fromWrt.has(v.id)) && !opDef(n.op).noGrad && n.op !== 'StopGradient') {
      for (const o of n.outputs) fromWrt.add(o.id);
    }
  }
  // Values the loss depends on (backward reachability), restricted to the ones above.
  const toLoss = new Set<number>([loss.id]);
  for (let k = nodes.length - 1; k >= 0; k--) {
    const n = nodes[k];
    if (n.outputs.some((o) => toLoss.has(o.id))) for (const v of n.inputs) toLoss.add(v.id);
  }
  const active = (v: Value) => fromWrt.has(v.id) && toLoss.has(v.id);

  const grads = new Map<number, Value>();
  grads.set(loss.id, fullLike(loss, 1));
  const accumulate = (v: Value, gv: Value) => {
    const prev = grads.get(v.id);
    grads.set(v.id, prev ? add(prev, gv) : gv);
  };

  for (let k = nodes.length - 1; k >= 0; k--) {
    const n: Node = nodes[k];
    const dOut = n.outputs.map((o) => grads.get(o.id) ?? null);
    if (dOut.every((d) => d === null)) continue;
    if (!n.inputs.some(active)) continue;
    const def = opDef(n.op);
    if (def.noGrad) continue;
    if (!def.grad) throw new SparsetuneError('BAD_GRAPH', `grad: op ${n.op} has no gradient rule, but a gradient must flow through it`);
    const filled = dOut.map((d, i) => (d === null && dOut.length > 1 ? null : d));
    const ins = def.grad({ node: n, inputs: n.inputs, outputs: n.outputs, dOut: filled, needs: (i) => active(n.inputs[i]) });
    ins.forEach((gi, i) => {
      if (gi && active(n.inputs[i])) accumulate(n.inputs[i], gi);
    });
  }
  return wrt.map((v) => grads.get(v.id) ?? fullLike(v, 0));
}
