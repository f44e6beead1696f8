/** Matrix products: batched MatMul (broadcasting) and 2-D Gemm with transposes and bias. */
import { SparsetuneError } from '../../errors.js';
import { defineOp, type Shape, type Value } from '../ir.js';
import { broadcastShapes } from '../shapes.js';
import { sumToShape } from './helpers.js';
import { transposeLast2 } from './shape.js';

function fail(op: string, msg: string, inputs: Value[]): never {
  throw new SparsetuneError('SHAPE_MISMATCH', `${op}: ${msg}; inputs ${inputs.map(String).join(', ')}`);
}

/** a @ b with NumPy batch broadcasting (both inputs rank >= 2). */
export function matmul(a: Value, b: Value): Value {
  return a.graph.add('MatMul', [a, b])[0];
}

/**
 * 2-D general matrix product: op(a) @ op(b) (+ c), op = transpose when flagged.
 * `linear` layers use gemm(x, W, transB) so the [out, in] weight is read in place.
 */
export function gemm(a: Value, b: Value, opts: { transA?: boolean; transB?: boolean; c?: Value } = {}): Value {
  const inputs = opts.c ? [a, b, opts.c] : [a, b];
  return a.graph.add('Gemm', inputs, { transA: opts.transA ? 1 : 0, transB: opts.transB ? 1 : 0 })[0];
}

defineOp('MatMul', {
  infer: (i) => {
    const [a, b] = i;
    if (a.dtype !== b.dtype) fail('MatMul', 'dtypes differ', i);
    if (a.rank < 2 || b.rank < 2) fail('MatMul', 'both inputs need rank >= 2', i);
    const [m, k1] = a.shape.slice(-2);
    const [k2, n] = b.shape.slice(-2);
    if (k1 !== k2) fail('MatMul', `inner dims differ (${k1} vs ${k2})`, i);
    let batch: Shape;
    try {
      batch = broadcastShapes(a.shape.slice(0, -2), b.shape.slice(0, -2));
    } catch (e) {
      return fail('MatMul', (e as Error).message, i);
    }
    return [{ dtype: a.dtype, shape: [...batch, m, n] }];
  },
  grad: ({ node, dOut, needs }) => {
    const [a, b] = node.inputs;
    const g = dOut[0]!;
    return [
      needs(0) ? sumToShape(matmul(g, transposeLast2(b)), a.shape) : null,
      needs(1) ? sumToShape(matmul(transposeLast2(a), g), b.shape) : null,
    ];
  },
});

defineOp('Gemm', {
  infer: (i, attrs) => {
    const [a, b, c] = i;
    if (a.rank !== 2 || b.rank !== 2) fail('Gemm', 'inputs must be 2-D', i);
    if (a.dtype !== b.dtype) fail('Gemm', 'dtypes differ', i);
    const [m, k1] = attrs.transA ? [a.shape[1], a.shape[0]] : a.shape;
    const [k2, n] = attrs.transB ? [b.shape[1], b.shape[0]] : b.shape;
    if (k1 !== k2) fail('Gemm', `inner dims differ (${k1} vs ${k2})`, i);
    if (c) {
      try {
        const s = broadcastShapes([m, n], c.shape);
        if (s.length !== 2 || s[0] !== m || s[1] !== n) throw new Error('bias does not broadcast to the output');
      } catch (e) {
        fail('Gemm', (e as Error).message, i);
      }
    }
    return [{ dtype: a.dtype, shape: [m, n] }];
  },
  grad: ({ node, dOut, needs }) => {
    const [a, b, c] = node.inputs;
    const g = dOut[0]!;
    const tA = node.attrs.transA === 1;
    const tB = node.attrs.transB === 1;
    let ga: Value | null = null;
    let gb: Value | null = null;
    if (needs(0)) {
      // Y = op(A) op(B): dop(A) = G op(B)^T, then undo op on A.
      ga = !tA ? gemm(g, b, { transB: !tB }) : gemm(b, g, { transA: tB, transB: true });
    }
    if (needs(1)) {
      gb = !tB ? gemm(a, g, { transA: !tA }) : gemm(g, a, { transA: true, transB: tA });
    }
    const gc = c && needs(2) ? sumToShape(g, c.shape) : null;
    return c ? [ga, gb, gc] : [ga, gb];
  },
});
