/** Building blocks the ops share: constants, run-time shape tensors, un-broadcasting. */
import { SparsetuneError } from '../../errors.js';
import type { DType, HostTensor } from '../../tensor.js';
import type { Dim, Graph, Shape, Value } from '../ir.js';
import { reduceSum } from './reduce.js';
import { reshape, squeeze } from './shape.js';

function typed(dtype: DType, values: number[]): HostTensor {
  switch (dtype) {
    case 'f32':
      return { dtype, shape: [], data: Float32Array.from(values) };
    case 'f64':
      return { dtype, shape: [], data: Float64Array.from(values) };
    case 'i32':
      return { dtype, shape: [], data: Int32Array.from(values) };
    case 'i64':
      return { dtype, shape: [], data: BigInt64Array.from(values.map((v) => BigInt(v))) };
    case 'bool':
    case 'u8':
      return { dtype, shape: [], data: Uint8Array.from(values) };
    case 'f16':
      throw new SparsetuneError('DTYPE_MISMATCH', 'f16 constants are not supported (f16 is a weight storage type only)');
  }
}

/** A scalar constant (memoized per graph, dtype and value). */
export function scalar(g: Graph, v: number, dtype: DType): Value {
  const key = `scalar:${dtype}:${Object.is(v, -0) ? '-0' : v}`;
  let c = g.memo.get(key);
  if (!c) {
    c = g.constant(typed(dtype, [v]), `c_${dtype}`);
    g.memo.set(key, c);
  }
  return c;
}

/** A 1-D int64 constant (axes, static shapes, pads). */
export function i64Vector(g: Graph, values: number[]): Value {
  const key = `i64v:${values.join(',')}`;
  let c = g.memo.get(key);
  if (!c) {
    const t = typed('i64', values);
    t.shape = [values.length];
    c = g.constant(t, 'c_i64');
    g.memo.set(key, c);
  }
  return c;
}

/** A constant tensor of any shape (e.g. a table of inverse frequencies). */
export function constTensor(g: Graph, t: HostTensor, hint = 'table'): Value {
  return g.constant(t, hint);
}

/** The run-time shape of x as a 1-D int64 tensor. */
export function shapeOf(x: Value): Value {
  const key = `shape:${x.id}`;
  let s = x.graph.memo.get(key);
  if (!s) {
    s = x.graph.add('Shape', [x])[0];
    x.graph.memo.set(key, s);
  }
  return s;
}

/** The run-time size of one symbolic dimension, as a 1-element int64 tensor. */
function symbolTensor(g: Graph, sym: string): Value {
  const key = `sym:${sym}`;
  let v = g.memo.get(key);
  if (v) return v;
  if (sym.includes('*')) {
    const parts = sym.split('*');
    v = parts.map((p) => (/^\d+$/.test(p) ? i64Vector(g, [Number(p)]) : symbolTensor(g, p))).reduce((a, b) => a.graph.add('Mul', [a, b])[0]);
  } else {
    const src = g.symbols.get(sym);
    if (!src) throw new SparsetuneError('BAD_GRAPH', `symbolic dim '${sym}' does not appear on any graph input, so its size is unknown at run time`);
    v = g.add('Slice', [shapeOf(src.value), i64Vector(g, [src.axis]), i64Vector(g, [src.axis + 1]), i64Vector(g, [0]), i64Vector(g, [1])], {
      _shape: [1],
    })[0];
  }
  g.memo.set(key, v);
  return v;
}

/** A 1-D int64 tensor holding `dims` at run time (static parts are constants). */
export function dimsTensor(g: Graph, dims: Dim[]): Value {
  if (dims.every((d) => typeof d === 'number')) return i64Vector(g, dims as number[]);
  const key = `dims:${dims.join(',')}`;
  let v = g.memo.get(key);
  if (v) return v;
  // Group consecutive static dims into one constant to keep the Concat small.
  const parts: Value[] = [];
  let run: number[] = [];
  for (const d of dims) {
    if (typeof d === 'number') run.push(d);
    else {
      if (run.length) parts.push(i64Vector(g, run));
      run = [];
      parts.push(symbolTensor(g, d));
    }
  }
  if (run.length) parts.push(i64Vector(g, run));
  v = parts.length === 1 ? parts[0] : g.add('Concat', parts, { axis: 0 })[0];
  g.memo.set(key, v);
  return v;
}

/** Sum a broadcast gradient back down to `target` (the shape of the input it flows to). */
export function sumToShape(grad: Value, target: Shape): Value {
  const gs = grad.shape;
  if (gs.length === target.length && gs.every((d, i) => d === target[i])) return grad;
  const lead = gs.length - target.length;
  if (lead < 0) throw new SparsetuneError('BAD_GRAPH', `sumToShape: gradient [${gs}] has lower rank than target [${target}]`);
  let g = grad;
  if (lead > 0) g = reduceSum(g, Array.from({ length: lead }, (_, i) => i), false);
  const axes: number[] = [];
  target.forEach((d, i) => {
    if (d === 1 && g.shape[i] !== 1) axes.push(i);
    else if (d !== g.shape[i]) throw new SparsetuneError('BAD_GRAPH', `sumToShape: cannot reduce [${gs}] to [${target}]`);
  });
  if (axes.length) g = reduceSum(g, axes, true);
  return g;
}

export { reshape, squeeze };
