/**
 * Shape and indexing ops. Attributes whose names start with `_` are build-time only
 * (shape hints); the ONNX writer drops them.
 */
import { SparsetuneError } from '../../errors.js';
import type { DType, HostTensor } from '../../tensor.js';
import { defineOp, type Dim, type Shape, type Value, type AttrValue } from '../ir.js';
import { isStatic, mulDims, normAxis } from '../shapes.js';
import { dimsTensor, i64Vector, scalar, shapeOf, sumToShape } from './helpers.js';
import { add, cast, where } from './elementwise.js';
import { reduceSum } from './reduce.js';

const BIG = 2 ** 62;

function fail(op: string, msg: string, inputs: Value[]): never {
  throw new SparsetuneError('SHAPE_MISMATCH', `${op}: ${msg}; inputs ${inputs.map(String).join(', ')}`);
}

// ---- builders ----

/**
 * Reshape to `dims` (static ints, symbols, products like `batch*seq`, or one -1).
 * Symbolic dims are resolved at run time from the graph input that declared them.
 */
export function reshape(x: Value, dims: Dim[]): Value {
  const g = x.graph;
  let shape = [...dims];
  const neg = shape.indexOf(-1);
  if (neg >= 0) {
    const known = mulDims(shape.filter((_, i) => i !== neg));
    const total = mulDims(x.shape);
    shape[neg] = divideDims(total, known, x, dims);
  }
  if (mulDims(shape) !== mulDims(x.shape)) {
    fail('Reshape', `cannot reshape ${x} to [${dims.join(', ')}] (element counts ${mulDims(x.shape)} vs ${mulDims(shape)})`, [x]);
  }
  if (shape.length === x.shape.length && shape.every((d, i) => d === x.shape[i])) return x;
  return g.add('Reshape', [x, dimsTensor(g, shape)], { _shape: shape as AttrValue })[0];
}

function divideDims(total: Dim, known: Dim, x: Value, dims: Dim[]): Dim {
  if (typeof total === 'number' && typeof known === 'number') return total / known;
  const tf = String(total).split('*');
  for (const f of String(known).split('*')) {
    const i = tf.indexOf(f);
    if (i >= 0) tf.splice(i, 1);
    else if (/^\d+$/.test(f)) {
      const j = tf.findIndex((t) => /^\d+$/.test(t) && Number(t) % Number(f) === 0);
      if (j < 0) fail('Reshape', `cannot infer -1 in [${dims.join(', ')}]`, [x]);
      tf[j] = String(Number(tf[j]) / Number(f));
    } else if (f !== '1') fail('Reshape', `cannot infer -1 in [${dims.join(', ')}]`, [x]);
  }
  return mulDims(tf.map((t) => (/^\d+$/.test(t) ? Number(t) : t)));
}

export function transpose(x: Value, perm: number[]): Value {
  return x.graph.add('Transpose', [x], { perm })[0];
}

/** Swap the last two axes. */
export function transposeLast2(x: Value): Value {
  const perm = x.shape.map((_, i) => i);
  const r = perm.length;
  [perm[r - 2], perm[r - 1]] = [perm[r - 1], perm[r - 2]];
  return transpose(x, perm);
}

export function unsqueeze(x: Value, axes: number[]): Value {
  return x.graph.add('Unsqueeze', [x, i64Vector(x.graph, axes)], { _axes: axes })[0];
}

export function squeeze(x: Value, axes: number[]): Value {
  return x.graph.add('Squeeze', [x, i64Vector(x.graph, axes)], { _axes: axes })[0];
}

/** Broadcast x to `dims` (NumPy rules). */
export function expand(x: Value, dims: Dim[]): Value {
  return x.graph.add('Expand', [x, dimsTensor(x.graph, dims)], { _shape: dims as AttrValue })[0];
}

/** Concatenate along `axis`; `outDim` names the result's axis size when it is symbolic. */
export function concat(xs: Value[], axis: number, outDim?: Dim): Value {
  return xs[0].graph.add('Concat', xs, outDim === undefined ? { axis } : { axis, _dim: outDim as AttrValue })[0];
}

/** x[start:end] along each given axis (step 1). Ends beyond the size clamp, like NumPy. */
export function slice(x: Value, starts: number[], ends: number[], axes: number[]): Value {
  const g = x.graph;
  return g.add('Slice', [x, i64Vector(g, starts), i64Vector(g, ends), i64Vector(g, axes), i64Vector(g, axes.map(() => 1))])[0];
}

/** Split along `axis` into pieces of the given static sizes. */
export function split(x: Value, sizes: number[], axis: number): Value[] {
  return x.graph.add('Split', [x, i64Vector(x.graph, sizes)], { axis }, sizes.length);
}

/** Constant-pad with `value`; pads = [begin_0, ..., begin_n, end_0, ..., end_n] (ONNX order). */
export function pad(x: Value, pads: number[], value = 0): Value {
  return x.graph.add('Pad', [x, i64Vector(x.graph, pads), scalar(x.graph, value, x.dtype)], { mode: 'constant' })[0];
}

/** A tensor of x's run-time shape filled with `value`. */
export function fullLike(x: Value, value: number, dtype: DType = x.dtype): Value {
  const t = tensorOf(dtype, value);
  return x.graph.add('ConstantOfShape', [shapeOf(x)], { value: t, _shape: x.shape as AttrValue })[0];
}

function tensorOf(dtype: DType, v: number): HostTensor {
  const shape = [1];
  switch (dtype) {
    case 'f32':
      return { dtype, shape, data: Float32Array.of(v) };
    case 'f64':
      return { dtype, shape, data: Float64Array.of(v) };
    case 'i32':
      return { dtype, shape, data: Int32Array.of(v) };
    case 'i64':
      return { dtype, shape, data: BigInt64Array.of(BigInt(v)) };
    default:
      return { dtype, shape, data: Uint8Array.of(v) };
  }
}

/** Rows of `data` picked by integer `indices` along `axis` (embedding lookup for axis 0). */
export function gather(data: Value, indices: Value, axis = 0): Value {
  return data.graph.add('Gather', [data, indices], { axis })[0];
}

export function gatherElements(data: Value, indices: Value, axis: number): Value {
  return data.graph.add('GatherElements', [data, indices], { axis })[0];
}

export function scatterElements(data: Value, indices: Value, updates: Value, axis: number, reduction: 'none' | 'add' = 'none'): Value {
  return data.graph.add('ScatterElements', [data, indices, updates], { axis, reduction })[0];
}

export function scatterND(data: Value, indices: Value, updates: Value, reduction: 'none' | 'add' = 'none'): Value {
  return data.graph.add('ScatterND', [data, indices, updates], { reduction })[0];
}

/** Upper (`upper`=true) or lower triangle of the last two axes, diagonal offset k. */
export function trilu(x: Value, upper: boolean, k = 0): Value {
  return x.graph.add('Trilu', [x, i64Vector(x.graph, [k])], { upper: upper ? 1 : 0 })[0];
}

/** Largest k along the last axis: [values, int64 indices]. Not differentiable. */
export function topk(x: Value, k: number): [Value, Value] {
  const [v, i] = x.graph.add('TopK', [x, i64Vector(x.graph, [k])], { axis: -1, largest: 1, sorted: 1, _k: k }, 2);
  return [v, i];
}

// ---- shape rules and gradient rules ----

const same = (x: Value, shape: Shape, dtype: DType = x.dtype) => [{ dtype, shape }];

defineOp('Shape', { infer: (i) => [{ dtype: 'i64', shape: [i[0].rank] }], noGrad: true });

defineOp('Reshape', {
  infer: (i, a) => same(i[0], [...(a._shape as Dim[])]),
  grad: ({ node, dOut }) => [reshapeTo(dOut[0]!, node.inputs[0]), null],
});

/** Reshape `g` back to `like`'s shape (uses like's run-time shape, so symbols need no lookup). */
function reshapeTo(g: Value, like: Value): Value {
  return g.graph.add('Reshape', [g, shapeOf(like)], { _shape: like.shape as AttrValue })[0];
}

defineOp('Transpose', {
  infer: (i, a) => {
    const perm = a.perm as number[];
    if (perm.length !== i[0].rank || [...perm].sort().some((p, k) => p !== k)) fail('Transpose', `perm [${perm}] is not a permutation of rank ${i[0].rank}`, i);
    return same(i[0], perm.map((p) => i[0].shape[p]));
  },
  grad: ({ node, dOut }) => {
    const perm = node.attrs.perm as number[];
    const inv = perm.map((_, k) => perm.indexOf(k));
    return [transpose(dOut[0]!, inv)];
  },
});

defineOp('Unsqueeze', {
  infer: (i, a) => {
    const axes = a._axes as number[];
    const rank = i[0].rank + axes.length;
    const norm = axes.map((ax) => normAxis(ax, rank)).sort((x, y) => x - y);
    const out: Shape = [];
    let k = 0;
    for (let d = 0; d < rank; d++) out.push(norm.includes(d) ? 1 : i[0].shape[k++]);
    return same(i[0], out);
  },
  grad: ({ node, dOut }) => [squeeze(dOut[0]!, node.attrs._axes as number[]), null],
});

defineOp('Squeeze', {
  infer: (i, a) => {
    const axes = (a._axes as number[]).map((ax) => normAxis(ax, i[0].rank));
    for (const ax of axes) if (i[0].shape[ax] !== 1) fail('Squeeze', `axis ${ax} has size ${i[0].shape[ax]}, not 1`, i);
    return same(i[0], i[0].shape.filter((_, d) => !axes.includes(d)));
  },
  grad: ({ node, dOut }) => [unsqueeze(dOut[0]!, node.attrs._axes as number[]), null],
});

defineOp('Expand', {
  infer: (i, a) => {
    const dims = a._shape as Dim[];
    const x = i[0].shape;
    if (dims.length < x.length) fail('Expand', `target [${dims}] has lower rank`, i);
    const lead = dims.length - x.length;
    const out = dims.map((d, k) => {
      const xd = k < lead ? 1 : x[k - lead];
      if (xd === d || d === 1) return xd === 1 ? d : xd;
      if (xd === 1) return d;
      return fail('Expand', `cannot expand [${x}] to [${dims}]`, i);
    });
    return same(i[0], out);
  },
  grad: ({ node, dOut }) => [sumToShape(dOut[0]!, node.inputs[0].shape), null],
});

defineOp('Concat', {
  infer: (inputs, a) => {
    const rank = inputs[0].rank;
    const axis = normAxis(a.axis as number, rank);
    let total: Dim = 0;
    for (const v of inputs) {
      if (v.rank !== rank || v.dtype !== inputs[0].dtype) fail('Concat', 'inputs differ in rank or dtype', inputs);
      v.shape.forEach((d, k) => {
        if (k !== axis && d !== inputs[0].shape[k]) fail('Concat', `axis ${k} differs (${d} vs ${inputs[0].shape[k]})`, inputs);
      });
      const d = v.shape[axis];
      total = typeof total === 'number' && typeof d === 'number' ? total + d : `${total}+${d}`;
    }
    const out = [...inputs[0].shape];
    out[axis] = a._dim !== undefined ? (a._dim as Dim) : total;
    return same(inputs[0], out);
  },
  grad: ({ node, dOut, needs }) => {
    const axis = normAxis(node.attrs.axis as number, node.inputs[0].rank);
    const sizes = node.inputs.map((v) => v.shape[axis]);
    if (!sizes.every((s) => typeof s === 'number')) {
      // Symbolic pieces: slice each from its run-time offset.
      let offset: Value | null = null;
      const g = dOut[0]!;
      return node.inputs.map((v, k) => {
        const len = g.graph.add('Slice', [shapeOf(v), i64Vector(g.graph, [axis]), i64Vector(g.graph, [axis + 1]), i64Vector(g.graph, [0]), i64Vector(g.graph, [1])], { _shape: [1] })[0];
        const start = offset ?? i64Vector(g.graph, [0]);
        const end = add(start, len);
        offset = end;
        if (!needs(k)) return null;
        return g.graph.add('Slice', [g, start, end, i64Vector(g.graph, [axis]), i64Vector(g.graph, [1])], { _shape: v.shape as AttrValue })[0];
      });
    }
    const parts = split(dOut[0]!, sizes as number[], axis);
    return parts.map((p, k) => (needs(k) ? p : null));
  },
});

defineOp('Slice', {
  infer: (i, a) => {
    if (a._shape) return same(i[0], [...(a._shape as Dim[])]);
    const [x, st, en, ax] = i;
    const starts = constI64(st, 'Slice starts');
    const ends = constI64(en, 'Slice ends');
    const axes = constI64(ax, 'Slice axes');
    const out = [...x.shape];
    axes.forEach((axis, k) => {
      const d = normAxis(axis, x.rank);
      const size = x.shape[d];
      if (typeof size !== 'number') {
        if (starts[k] === 0 && ends[k] >= BIG / 2) return;
        fail('Slice', `cannot slice symbolic axis ${d} (${size}) with static bounds; pass a shape hint`, i);
      }
      const s = clampIdx(starts[k], size);
      const e = clampIdx(ends[k], size);
      out[d] = Math.max(0, e - s);
    });
    return same(x, out);
  },
  grad: ({ node, dOut }) => {
    const [x, st, en, ax] = node.inputs;
    if (!isStatic(x.shape) && node.attrs._shape) {
      // Scatter the gradient back into zeros of x's shape along the sliced positions.
      throw new SparsetuneError('BAD_GRAPH', 'Slice: gradient through a symbolic slice is not supported; slice static axes');
    }
    const starts = constI64(st, 'Slice starts');
    const ends = constI64(en, 'Slice ends');
    const axes = constI64(ax, 'Slice axes');
    const pads = new Array(2 * x.rank).fill(0);
    axes.forEach((axis, k) => {
      const d = normAxis(axis, x.rank);
      const size = x.shape[d];
      if (typeof size !== 'number') return; // full-range slice of a symbolic axis
      const s = clampIdx(starts[k], size);
      const e = clampIdx(ends[k], size);
      pads[d] = s;
      pads[x.rank + d] = size - Math.max(s, e);
    });
    return [pad(dOut[0]!, pads, 0), null, null, null, null];
  },
});

function clampIdx(v: number, size: number): number {
  const i = v < 0 ? v + size : v;
  return Math.min(Math.max(i, 0), size);
}

/** Read a small int64 constant back (for shape rules of ops whose ONNX form takes it as input). */
export function constI64(v: Value, what: string): number[] {
  const c = v.graph.constants.find((k) => k.value === v);
  if (!c) throw new SparsetuneError('BAD_GRAPH', `${what} must be a constant`);
  return Array.from(c.tensor.data as BigInt64Array, Number);
}

defineOp('Split', {
  infer: (i, a) => {
    const axis = normAxis(a.axis as number, i[0].rank);
    const sizes = constI64(i[1], 'Split sizes');
    const d = i[0].shape[axis];
    if (typeof d === 'number' && sizes.reduce((s, v) => s + v, 0) !== d) fail('Split', `sizes [${sizes}] do not sum to ${d}`, i);
    return sizes.map((s) => {
      const out = [...i[0].shape];
      out[axis] = s;
      return { dtype: i[0].dtype, shape: out };
    });
  },
  grad: ({ node, dOut }) => {
    const axis = node.attrs.axis as number;
    const parts = dOut.map((g, k) => g ?? fullLike(node.outputs[k], 0));
    return [concat(parts, axis), null];
  },
});

defineOp('Pad', {
  infer: (i) => {
    const pads = constI64(i[1], 'Pad pads');
    const r = i[0].rank;
    const out = i[0].shape.map((d, k) => {
      if (pads[k] === 0 && pads[r + k] === 0) return d;
      if (typeof d !== 'number') return fail('Pad', `cannot pad symbolic axis ${k}`, i);
      return d + pads[k] + pads[r + k];
    });
    return same(i[0], out);
  },
  grad: ({ node, dOut }) => {
    const pads = constI64(node.inputs[1], 'Pad pads');
    const r = node.inputs[0].rank;
    const axes: number[] = [];
    const starts: number[] = [];
    const ends: number[] = [];
    node.inputs[0].shape.forEach((d, k) => {
      if (pads[k] === 0 && pads[r + k] === 0) return;
      axes.push(k);
      starts.push(pads[k]);
      ends.push(pads[k] + (d as number));
    });
    return [axes.length ? slice(dOut[0]!, starts, ends, axes) : dOut[0], null, null];
  },
});

defineOp('ConstantOfShape', { infer: (_i, a) => [{ dtype: (a.value as HostTensor).dtype, shape: [...(a._shape as Dim[])] }], noGrad: true });

defineOp('Gather', {
  infer: (i, a) => {
    const [data, idx] = i;
    if (idx.dtype !== 'i64' && idx.dtype !== 'i32') fail('Gather', 'indices must be int32/int64', i);
    const axis = normAxis(a.axis as number, data.rank);
    return same(data, [...data.shape.slice(0, axis), ...idx.shape, ...data.shape.slice(axis + 1)]);
  },
  grad: ({ node, dOut, needs }) => {
    if (!needs(0)) return [null, null];
    const [data, idx] = node.inputs;
    if (normAxis(node.attrs.axis as number, data.rank) !== 0) throw new SparsetuneError('BAD_GRAPH', 'Gather: gradient supported for axis 0 only');
    const zeros = fullLike(data, 0);
    const idx64 = cast(idx, 'i64');
    return [scatterND(zeros, unsqueeze(idx64, [-1]), dOut[0]!, 'add'), null];
  },
});

defineOp('GatherElements', {
  infer: (i) => {
    if (i[0].rank !== i[1].rank) fail('GatherElements', 'data and indices must have the same rank', i);
    return same(i[0], [...i[1].shape]);
  },
  grad: ({ node, dOut, needs }) => {
    if (!needs(0)) return [null, null];
    const [data, idx] = node.inputs;
    return [scatterElements(fullLike(data, 0), idx, dOut[0]!, node.attrs.axis as number, 'add'), null];
  },
});

defineOp('ScatterElements', {
  infer: (i) => same(i[0], [...i[0].shape]),
  grad: ({ node, dOut, needs }) => {
    const [, idx, upd] = node.inputs;
    const g = dOut[0]!;
    const axis = node.attrs.axis as number;
    const reduction = node.attrs.reduction as string;
    const gData = needs(0) ? (reduction === 'add' ? g : scatterElements(g, idx, fullLike(upd, 0), axis)) : null;
    const gUpd = needs(2) ? gatherElements(g, idx, axis) : null;
    return [gData, null, gUpd];
  },
});

defineOp('ScatterND', {
  infer: (i) => same(i[0], [...i[0].shape]),
  grad: ({ node, dOut, needs }) => {
    const [, idx, upd] = node.inputs;
    const g = dOut[0]!;
    const reduction = node.attrs.reduction as string;
    const gData = needs(0) ? (reduction === 'add' ? g : scatterND(g, idx, fullLike(upd, 0))) : null;
    const gUpd = needs(2) ? g.graph.add('GatherND', [g, idx])[0] : null;
    return [gData, null, gUpd];
  },
});

defineOp('GatherND', {
  infer: (i) => {
    const [data, idx] = i;
    const k = idx.shape[idx.rank - 1];
    if (typeof k !== 'number') fail('GatherND', 'last index axis must be static', i);
    return same(data, [...idx.shape.slice(0, -1), ...data.shape.slice(k)]);
  },
  grad: ({ node, dOut, needs }) => (needs(0) ? [scatterND(fullLike(node.inputs[0], 0), node.inputs[1], dOut[0]!, 'add'), null] : [null, null]),
});

defineOp('Trilu', {
  infer: (i) => same(i[0], [...i[0].shape]),
  grad: ({ node, dOut }) => [trilu(dOut[0]!, node.attrs.upper === 1, constI64(node.inputs[1], 'Trilu k')[0]), null],
});

defineOp('TopK', {
  infer: (i, a) => {
    const out = [...i[0].shape];
    out[out.length - 1] = a._k as number;
    return [
      { dtype: i[0].dtype, shape: out },
      { dtype: 'i64', shape: [...out] },
    ];
  },
  noGrad: true,
});

export { reduceSum, where, scalar };
