/** Reductions and (log-)softmax over one axis. */
import { SparsetuneError } from '../../errors.js';
import { defineOp, type AttrValue, type Shape, type Value } from '../ir.js';
import { normAxis } from '../shapes.js';
import { i64Vector, shapeOf } from './helpers.js';
import { div, equal, exp, mul, sub, where, cast } from './elementwise.js';

function reduceInfer(op: string) {
  return (inputs: Value[], attrs: Record<string, unknown>) => {
    const x = inputs[0];
    const axes = (attrs._axes as number[]).map((a) => normAxis(a, x.rank));
    const keep = attrs.keepdims === 1;
    const shape: Shape = [];
    x.shape.forEach((d, k) => {
      if (!axes.includes(k)) shape.push(d);
      else if (keep) shape.push(1);
    });
    if (!['f32', 'f64', 'i64', 'i32'].includes(x.dtype)) throw new SparsetuneError('DTYPE_MISMATCH', `${op}: unsupported dtype ${x.dtype}`);
    return [{ dtype: x.dtype, shape }];
  };
}

function reduce(op: string, x: Value, axes: number[], keepdims: boolean): Value {
  const norm = axes.map((a) => normAxis(a, x.rank));
  return x.graph.add(op, [x, i64Vector(x.graph, norm)], { keepdims: keepdims ? 1 : 0, _axes: norm })[0];
}

export const reduceSum = (x: Value, axes: number[], keepdims = false): Value => reduce('ReduceSum', x, axes, keepdims);
export const reduceMean = (x: Value, axes: number[], keepdims = false): Value => reduce('ReduceMean', x, axes, keepdims);
export const reduceMax = (x: Value, axes: number[], keepdims = false): Value => reduce('ReduceMax', x, axes, keepdims);

/** Broadcast a reduced gradient back over the reduced axes of x. */
function expandBack(g: Value, node: { inputs: Value[]; attrs: Record<string, unknown> }): Value {
  const x = node.inputs[0];
  let gk = g;
  if (node.attrs.keepdims !== 1) {
    const axes = node.attrs._axes as number[];
    gk = g.graph.add('Unsqueeze', [g, i64Vector(g.graph, axes)], { _axes: axes })[0];
  }
  return g.graph.add('Expand', [gk, shapeOf(x)], { _shape: x.shape as AttrValue })[0];
}

function reducedCount(x: Value, axes: number[]): Value {
  // Element count over the reduced axes, computed at run time (axes may be symbolic).
  const g = x.graph;
  const sizes = g.add('Gather', [shapeOf(x), i64Vector(g, axes)], { axis: 0 })[0];
  const n = g.add('ReduceProd', [sizes, i64Vector(g, [0])], { keepdims: 0, _axes: [0] })[0];
  return cast(n, x.dtype);
}

defineOp('ReduceSum', { infer: reduceInfer('ReduceSum'), grad: ({ node, dOut }) => [expandBack(dOut[0]!, node), null] });
defineOp('ReduceMean', {
  infer: reduceInfer('ReduceMean'),
  grad: ({ node, dOut }) => [div(expandBack(dOut[0]!, node), reducedCount(node.inputs[0], node.attrs._axes as number[])), null],
});
defineOp('ReduceProd', { infer: reduceInfer('ReduceProd'), noGrad: true });
defineOp('ReduceMax', {
  infer: reduceInfer('ReduceMax'),
  // The gradient goes to the arg-max positions, split evenly between ties.
  grad: ({ node, dOut }) => {
    const x = node.inputs[0];
    const y = expandBack(node.outputs[0], node);
    const hit = cast(equal(x, y), x.dtype);
    const axes = node.attrs._axes as number[];
    const count = x.graph.add('ReduceSum', [hit, i64Vector(x.graph, axes)], { keepdims: 1, _axes: axes })[0];
    const gk = node.attrs.keepdims === 1 ? dOut[0]! : x.graph.add('Unsqueeze', [dOut[0]!, i64Vector(x.graph, axes)], { _axes: axes })[0];
    return [mul(div(hit, count), gk), null];
  },
});

export function softmax(x: Value, axis = -1): Value {
  return x.graph.add('Softmax', [x], { axis: normAxis(axis, x.rank) })[0];
}

export function logSoftmax(x: Value, axis = -1): Value {
  return x.graph.add('LogSoftmax', [x], { axis: normAxis(axis, x.rank) })[0];
}

defineOp('Softmax', {
  infer: (i) => [{ dtype: i[0].dtype, shape: [...i[0].shape] }],
  grad: ({ node, dOut }) => {
    const y = node.outputs[0];
    const g = dOut[0]!;
    const axis = node.attrs.axis as number;
    return [mul(y, sub(g, reduceSum(mul(g, y), [axis], true)))];
  },
});

defineOp('LogSoftmax', {
  infer: (i) => [{ dtype: i[0].dtype, shape: [...i[0].shape] }],
  grad: ({ node, dOut }) => {
    const y = node.outputs[0];
    const g = dOut[0]!;
    const axis = node.attrs.axis as number;
    return [sub(g, mul(exp(y), reduceSum(g, [axis], true)))];
  },
});

export { where };
