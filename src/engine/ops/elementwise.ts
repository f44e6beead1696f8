/**
 * Element-wise ops: each op's shape rule and gradient rule side by side. Binary ops
 * broadcast NumPy-style; their gradients are summed back to each input's shape.
 */
import { SparsetuneError } from '../../errors.js';
import type { DType } from '../../tensor.js';
import { defineOp, type Value, type Shape } from '../ir.js';
import { broadcastShapes } from '../shapes.js';
import { scalar, sumToShape } from './helpers.js';
import { reduceSum } from './reduce.js';

const FLOAT: DType[] = ['f32', 'f64'];

function sameDtype(op: string, inputs: Value[]): DType {
  const d = inputs[0].dtype;
  for (const v of inputs) {
    if (v.dtype !== d) {
      throw new SparsetuneError('DTYPE_MISMATCH', `${op}: dtypes differ: ${inputs.map(String).join(', ')}; insert a cast()`);
    }
  }
  return d;
}

function unaryInfer(op: string, floatOnly = true) {
  return (inputs: Value[]) => {
    const d = inputs[0].dtype;
    if (floatOnly && !FLOAT.includes(d)) throw new SparsetuneError('DTYPE_MISMATCH', `${op}: needs a float input, got ${inputs[0]}`);
    return [{ dtype: d, shape: [...inputs[0].shape] }];
  };
}

function binaryInfer(op: string, resultDtype?: DType) {
  return (inputs: Value[]) => {
    const d = sameDtype(op, inputs);
    let shape: Shape;
    try {
      shape = broadcastShapes(inputs[0].shape, inputs[1].shape);
    } catch (e) {
      throw new SparsetuneError('SHAPE_MISMATCH', `${op}: ${(e as Error).message}; inputs ${inputs[0]} and ${inputs[1]}`);
    }
    return [{ dtype: resultDtype ?? d, shape }];
  };
}

const un = (op: string, x: Value): Value => x.graph.add(op, [x])[0];
const bin = (op: string, a: Value, b: Value): Value => a.graph.add(op, [a, b])[0];

/** Lift a JS number to a scalar constant of `like`'s dtype. */
function lift(v: Value | number, like: Value): Value {
  return typeof v === 'number' ? scalar(like.graph, v, like.dtype) : v;
}

export const add = (a: Value, b: Value | number): Value => bin('Add', a, lift(b, a));
export const sub = (a: Value, b: Value | number): Value => bin('Sub', a, lift(b, a));
export const mul = (a: Value, b: Value | number): Value => bin('Mul', a, lift(b, a));
export const div = (a: Value, b: Value | number): Value => bin('Div', a, lift(b, a));
export const pow = (a: Value, b: Value | number): Value => bin('Pow', a, lift(b, a));
export const maximum = (a: Value, b: Value | number): Value => bin('Max', a, lift(b, a));
export const minimum = (a: Value, b: Value | number): Value => bin('Min', a, lift(b, a));
export const neg = (x: Value): Value => un('Neg', x);
export const sqrt = (x: Value): Value => un('Sqrt', x);
export const reciprocal = (x: Value): Value => un('Reciprocal', x);
export const exp = (x: Value): Value => un('Exp', x);
export const log = (x: Value): Value => un('Log', x);
export const tanh = (x: Value): Value => un('Tanh', x);
export const sigmoid = (x: Value): Value => un('Sigmoid', x);
export const erf = (x: Value): Value => un('Erf', x);
export const cos = (x: Value): Value => un('Cos', x);
export const sin = (x: Value): Value => un('Sin', x);
export const relu = (x: Value): Value => un('Relu', x);
export const abs = (x: Value): Value => un('Abs', x);
export const sign = (x: Value): Value => un('Sign', x);
export const equal = (a: Value, b: Value | number): Value => bin('Equal', a, lift(b, a));
export const less = (a: Value, b: Value | number): Value => bin('Less', a, lift(b, a));
export const greater = (a: Value, b: Value | number): Value => bin('Greater', a, lift(b, a));
export const greaterOrEqual = (a: Value, b: Value | number): Value => bin('GreaterOrEqual', a, lift(b, a));
export const lessOrEqual = (a: Value, b: Value | number): Value => bin('LessOrEqual', a, lift(b, a));
export const not = (x: Value): Value => x.graph.add('Not', [x])[0];
export const and = (a: Value, b: Value): Value => bin('And', a, b);

/** Elementwise select: cond ? a : b (broadcasting). */
export function where(cond: Value, a: Value | number, b: Value | number): Value {
  const like = typeof a === 'number' ? (b as Value) : a;
  return cond.graph.add('Where', [cond, lift(a, like), lift(b, like)])[0];
}

export function cast(x: Value, to: DType): Value {
  if (x.dtype === to) return x;
  return x.graph.add('Cast', [x], { to: to as unknown as string })[0];
}

/** The value itself in the forward pass; no gradient flows through it. */
export const stopGradient = (x: Value): Value => x.graph.add('StopGradient', [x])[0];

/**
 * Forward = `hard`, gradient = as if the output were `soft`. Used by straight-through
 * estimators (binary masks, N:M masks): the forward value is exactly `hard`, bit for bit.
 */
export function straightThrough(hard: Value, soft: Value): Value {
  return hard.graph.add('StraightThrough', [hard, soft])[0];
}

// ---- shape rules and gradient rules ----

const grad2 = (
  f: (g: Value, a: Value, b: Value, y: Value) => [Value | null, Value | null],
) => ({ node, dOut, needs }: { node: { inputs: Value[]; outputs: Value[] }; dOut: (Value | null)[]; needs: (i: number) => boolean }) => {
  const g = dOut[0]!;
  const [a, b] = node.inputs;
  const [ga, gb] = f(g, a, b, node.outputs[0]);
  return [needs(0) && ga ? sumToShape(ga, a.shape) : null, needs(1) && gb ? sumToShape(gb, b.shape) : null];
};

defineOp('Add', { infer: binaryInfer('Add'), grad: grad2((g) => [g, g]) });
defineOp('Sub', { infer: binaryInfer('Sub'), grad: grad2((g) => [g, neg(g)]) });
defineOp('Mul', { infer: binaryInfer('Mul'), grad: grad2((g, a, b) => [mul(g, b), mul(g, a)]) });
defineOp('Div', {
  infer: binaryInfer('Div'),
  // d(a/b)/db = -a/b^2 = -y/b
  grad: grad2((g, _a, b, y) => [div(g, b), neg(div(mul(g, y), b))]),
});
defineOp('Pow', {
  infer: binaryInfer('Pow'),
  grad: grad2((g, a, b, y) => [mul(g, mul(b, pow(a, sub(b, 1)))), mul(g, mul(y, log(a)))]),
});
defineOp('Max', {
  infer: binaryInfer('Max'),
  grad: grad2((g, a, b) => {
    const takeA = greaterOrEqual(a, b);
    return [where(takeA, g, 0), where(takeA, 0, g)];
  }),
});
defineOp('Min', {
  infer: binaryInfer('Min'),
  grad: grad2((g, a, b) => {
    const takeA = lessOrEqual(a, b);
    return [where(takeA, g, 0), where(takeA, 0, g)];
  }),
});

const grad1 = (f: (g: Value, x: Value, y: Value) => Value) => ({ node, dOut }: { node: { inputs: Value[]; outputs: Value[] }; dOut: (Value | null)[] }) => [
  f(dOut[0]!, node.inputs[0], node.outputs[0]),
];

defineOp('Neg', { infer: unaryInfer('Neg', false), grad: grad1((g) => neg(g)) });
defineOp('Sqrt', { infer: unaryInfer('Sqrt'), grad: grad1((g, _x, y) => div(mul(g, 0.5), y)) });
defineOp('Reciprocal', { infer: unaryInfer('Reciprocal'), grad: grad1((g, _x, y) => neg(mul(g, mul(y, y)))) });
defineOp('Exp', { infer: unaryInfer('Exp'), grad: grad1((g, _x, y) => mul(g, y)) });
defineOp('Log', { infer: unaryInfer('Log'), grad: grad1((g, x) => div(g, x)) });
defineOp('Tanh', { infer: unaryInfer('Tanh'), grad: grad1((g, _x, y) => mul(g, sub(scalar(y.graph, 1, y.dtype), mul(y, y)))) });
defineOp('Sigmoid', { infer: unaryInfer('Sigmoid'), grad: grad1((g, _x, y) => mul(g, mul(y, sub(scalar(y.graph, 1, y.dtype), y)))) });
defineOp('Erf', {
  infer: unaryInfer('Erf'),
  grad: grad1((g, x) => mul(g, mul(exp(neg(mul(x, x))), 2 / Math.sqrt(Math.PI)))),
});
defineOp('Cos', { infer: unaryInfer('Cos'), grad: grad1((g, x) => neg(mul(g, sin(x)))) });
defineOp('Sin', { infer: unaryInfer('Sin'), grad: grad1((g, x) => mul(g, cos(x))) });
defineOp('Relu', { infer: unaryInfer('Relu'), grad: grad1((g, x) => where(greater(x, 0), g, 0)) });
defineOp('Abs', { infer: unaryInfer('Abs', false), grad: grad1((g, x) => mul(g, sign(x))) });
defineOp('Sign', { infer: unaryInfer('Sign', false), noGrad: true });

for (const op of ['Equal', 'Less', 'Greater', 'GreaterOrEqual', 'LessOrEqual']) {
  defineOp(op, { infer: binaryInfer(op, 'bool'), noGrad: true });
}
defineOp('Not', { infer: (i) => [{ dtype: 'bool', shape: [...i[0].shape] }], noGrad: true });
defineOp('And', { infer: binaryInfer('And', 'bool'), noGrad: true });

defineOp('Where', {
  infer: (inputs) => {
    const [c, a, b] = inputs;
    if (c.dtype !== 'bool') throw new SparsetuneError('DTYPE_MISMATCH', `Where: condition must be bool, got ${c}`);
    const d = sameDtype('Where', [a, b]);
    let shape: Shape;
    try {
      shape = broadcastShapes(broadcastShapes(c.shape, a.shape), b.shape);
    } catch (e) {
      throw new SparsetuneError('SHAPE_MISMATCH', `Where: ${(e as Error).message}; inputs ${c}, ${a}, ${b}`);
    }
    return [{ dtype: d, shape }];
  },
  grad: ({ node, dOut, needs }) => {
    const g = dOut[0]!;
    const [c, a, b] = node.inputs;
    return [
      null,
      needs(1) ? sumToShape(where(c, g, 0), a.shape) : null,
      needs(2) ? sumToShape(where(c, 0, g), b.shape) : null,
    ];
  },
});

defineOp('Cast', {
  infer: (inputs, attrs) => [{ dtype: attrs.to as unknown as DType, shape: [...inputs[0].shape] }],
  grad: ({ node, dOut }) => {
    const src = node.inputs[0].dtype;
    return [src === 'f32' || src === 'f64' ? cast(dOut[0]!, src) : null];
  },
});

defineOp('StopGradient', { onnxOp: 'Identity', infer: (i) => [{ dtype: i[0].dtype, shape: [...i[0].shape] }], noGrad: true });
defineOp('Identity', { infer: (i) => [{ dtype: i[0].dtype, shape: [...i[0].shape] }], grad: ({ dOut }) => [dOut[0]] });
defineOp('StraightThrough', {
  onnxOp: 'Identity',
  infer: (inputs) => {
    const [h, s] = inputs;
    sameDtype('StraightThrough', [h, s]);
    if (h.shape.join() !== s.shape.join()) {
      throw new SparsetuneError('SHAPE_MISMATCH', `StraightThrough: hard ${h} and soft ${s} must have the same shape`);
    }
    return [{ dtype: h.dtype, shape: [...h.shape] }];
  },
  grad: ({ dOut }) => [null, dOut[0]],
});

/** Uniform [0, 1) noise shaped like x, drawn by onnxruntime on every run (dropout). */
export const randomUniformLike = (x: Value): Value => x.graph.add('RandomUniformLike', [x])[0];
defineOp('RandomUniformLike', { infer: (i) => [{ dtype: i[0].dtype, shape: [...i[0].shape] }], noGrad: true });

/**
 * Inverted dropout with keep probability 1 - p (identity when p = 0), with onnxruntime's own
 * unseeded noise: runs are not reproducible. Training code uses `seededDropout`
 * (src/engine/noise.ts), whose noise the trainer feeds from the run's seed.
 */
export function dropout(x: Value, p: number): Value {
  if (p <= 0) return x;
  const keep = cast(less(randomUniformLike(x), 1 - p), x.dtype);
  return mul(x, mul(keep, 1 / (1 - p)));
}

/** Sum of all elements (a scalar). */
export function sumAll(x: Value): Value {
  return reduceSum(x, x.shape.map((_, i) => i), false);
}
