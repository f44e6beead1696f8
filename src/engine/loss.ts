/**
 * Chunked LM head + cross-entropy: mean CE of logits = h W^T against int64 targets,
 * computed chunk by chunk of rows inside one ONNX Scan, so the [tokens x vocab] logits and
 * their gradient never exist whole (a chunk's [rows x vocab] buffers are reused per
 * iteration). The gradient is produced in the same pass: d(mean loss)/d(logits) of a chunk
 * is softmax - onehot, known as soon as its logits are, so the chunk's dh and its dW
 * contribution are computed right there (3 GEMMs, like the unchunked graph, no recompute);
 * the backward pass only scales them by the incoming scalar gradient. Graphs that never
 * ask for a gradient lower to the loss-only Scan (1 GEMM per chunk).
 */
import onnxProto from 'onnx-proto';
import { SparsetuneError } from '../errors.js';
import { Graph, defineOp, type LowerContext, type Node, type Value } from './ir.js';
import { add, cast, equal, exp, gatherElements, gemm, logSoftmax, maximum, mul, not, reciprocal, reduceSum, scatterElements, sub, unsqueeze, where } from './ops/index.js';
import { onnxElemType, tensorProto } from './onnx.js';

const { onnx } = onnxProto;

export interface ChunkedCeOptions {
  /** Rows per chunk (default: about 4M logits per chunk, 32..1024 rows). */
  chunk?: number;
  ignoreIndex?: number;
}

/** Rows per chunk so that a chunk's logits hold about 4M values. */
export function defaultChunkRows(vocab: number): number {
  return Math.max(32, Math.min(1024, 8 * Math.round((4 << 20) / vocab / 8)));
}

/**
 * Mean cross-entropy of `h` [N, E] @ `w` [V, E]^T against `targets` [N] (int64, entries
 * equal to ignoreIndex count zero), without materializing the [N, V] logits. Same value
 * and gradients as `crossEntropy(linear(h, w), targets)`.
 */
export function chunkedLinearCrossEntropy(h: Value, w: Value, targets: Value, opts: ChunkedCeOptions = {}): Value {
  if (h.rank !== 2 || w.rank !== 2 || targets.rank !== 1) {
    throw new SparsetuneError('SHAPE_MISMATCH', `chunkedLinearCrossEntropy: need h [N, E], w [V, E], targets [N]; got ${h}, ${w}, ${targets}`);
  }
  if (targets.dtype !== 'i64') throw new SparsetuneError('DTYPE_MISMATCH', `chunkedLinearCrossEntropy: targets must be int64, got ${targets}`);
  const V = w.shape[0];
  if (typeof V !== 'number') throw new SparsetuneError('SHAPE_MISMATCH', `chunkedLinearCrossEntropy: vocabulary size of ${w} must be static`);
  const ignore = opts.ignoreIndex ?? -100;
  const chunk = opts.chunk ?? defaultChunkRows(V);
  const valid = cast(not(equal(targets, ignore)), h.dtype);
  const invCount = reciprocal(maximum(reduceSum(valid, [0], false), 1));
  return h.graph.add('LinearCrossEntropyScan', [h, w, targets, invCount], { _chunk: chunk, _ignore: ignore }, 3)[0];
}

/** Whether v is the constant 1 that autodiff seeds the loss gradient with. */
function isSeedOne(v: Value): boolean {
  const p = v.producer;
  if (!p || p.op !== 'ConstantOfShape') return false;
  const t = p.attrs.value as { data: ArrayLike<number> };
  return t.data.length === 1 && Number(t.data[0]) === 1;
}

defineOp('LinearCrossEntropyScan', {
  infer: (inputs) => {
    const [h, w, t] = inputs;
    if (h.dtype !== w.dtype) throw new SparsetuneError('DTYPE_MISMATCH', `LinearCrossEntropyScan: h ${h} and w ${w} differ in dtype`);
    if (h.shape[1] !== w.shape[1]) throw new SparsetuneError('SHAPE_MISMATCH', `LinearCrossEntropyScan: h ${h} and w ${w} differ in width`);
    if (inputs[3].rank !== 0) throw new SparsetuneError('SHAPE_MISMATCH', `LinearCrossEntropyScan: the 1/count input must be a scalar, got ${inputs[3]}`);
    if (h.shape[0] !== t.shape[0]) throw new SparsetuneError('SHAPE_MISMATCH', `LinearCrossEntropyScan: h ${h} and targets ${t} differ in rows`);
    return [
      { dtype: h.dtype, shape: [] }, // mean token loss
      { dtype: h.dtype, shape: [...h.shape] }, // d(mean)/dh
      { dtype: w.dtype, shape: [...w.shape] }, // d(mean)/dw
    ];
  },
  grad: ({ node, dOut, needs }) => {
    const g = dOut[0]!;
    const [, dh, dw] = node.outputs;
    const scale = (d: Value) => (isSeedOne(g) ? d : mul(d, g)); // the usual case: the loss itself is differentiated
    return [needs(0) ? scale(dh) : null, needs(1) ? scale(dw) : null, null, null];
  },
  lower: lowerScan,
});

/** The Scan body for one chunk: the mean loss, and (when wanted) dh rows and the dW accumulation. */
function body(node: Node, withDh: boolean, withDw: boolean): Graph {
  const [h, w, , invCount] = node.inputs;
  const dt = h.dtype;
  const E = h.shape[1];
  const ignore = node.attrs._ignore as number;
  const b = new Graph(`ce_body_${node.id}`, h.graph);
  const accLoss = b.input(`ce${node.id}_acc_loss`, dt, []);
  const accDw = withDw ? b.input(`ce${node.id}_acc_dw`, dt, [...w.shape]) : null;
  const hc = b.input(`ce${node.id}_h`, dt, ['chunk', E]);
  const tc = b.input(`ce${node.id}_t`, 'i64', ['chunk']);
  const wo = b.outer(w);
  const inv = b.outer(invCount);
  const logits = gemm(hc, wo, { transB: true }); // [chunk, V]
  const lsm = logSoftmax(logits, -1);
  const valid = not(equal(tc, ignore));
  const idx = unsqueeze(where(valid, tc, 0), [-1]);
  const rowW = mul(unsqueeze(cast(valid, dt), [-1]), inv); // [chunk, 1]: 1/count, 0 for ignored targets
  const picked = gatherElements(lsm, idx, -1); // [chunk, 1]
  b.output(`ce${node.id}_acc_loss_out`, sub(accLoss, reduceSum(mul(picked, rowW), [0, 1], false)));
  if (withDh || withDw) {
    // (softmax - onehot) / count, rows of ignored targets zeroed
    const p = mul(exp(lsm), rowW);
    const atTarget = gatherElements(p, idx, -1);
    const dl = scatterElements(p, idx, sub(atTarget, rowW), -1);
    if (accDw) b.output(`ce${node.id}_acc_dw_out`, add(accDw, gemm(dl, hc, { transA: true })));
    if (withDh) b.output(`ce${node.id}_dh`, gemm(dl, wo));
  }
  return b;
}

/**
 * ONNX form: pad the rows to a multiple of the chunk (targets padded with ignoreIndex),
 * reshape to [chunks, chunk, ...], Scan, then reshape dh back and drop the padding rows.
 */
function lowerScan(node: Node, ctx: LowerContext) {
  const [h, w, t] = node.inputs;
  const [lossOut, dhOut, dwOut] = node.outputs;
  const withDh = ctx.live(1);
  const withDw = ctx.live(2);
  const chunk = node.attrs._chunk as number;
  const ignore = node.attrs._ignore as number;
  const E = h.shape[1] as number;
  const p = `ce${node.id}`;
  const elem = onnxElemType(h.dtype);
  const i64 = (name: string, vals: number[]) => tensorProto(name, { dtype: 'i64', shape: [vals.length], data: BigInt64Array.from(vals.map(BigInt)) });
  const scalarOf = (name: string, v: number) =>
    h.dtype === 'f64' ? tensorProto(name, { dtype: 'f64', shape: [], data: Float64Array.of(v) }) : tensorProto(name, { dtype: 'f32', shape: [], data: Float32Array.of(v) });
  const inits = [
    i64(`${p}_c0`, [0]),
    i64(`${p}_c1`, [1]),
    i64(`${p}_chunk`, [chunk]),
    i64(`${p}_shape3`, [-1, chunk, E]),
    i64(`${p}_shape2`, [-1, chunk]),
    i64(`${p}_flat`, [-1, E]),
    scalarOf(`${p}_zero`, 0),
    tensorProto(`${p}_ignore`, { dtype: 'i64', shape: [], data: BigInt64Array.of(BigInt(ignore)) }),
  ];
  const n = (opType: string, input: string[], output: string[], attribute: onnxProto.onnx.IAttributeProto[] = []) => ({ opType, input, output, attribute, name: `${p}_${output[0]}` });
  const T = onnx.AttributeProto.AttributeType;
  const nodes: onnxProto.onnx.INodeProto[] = [
    n('Shape', [h.name], [`${p}_hshape`]),
    n('Slice', [`${p}_hshape`, `${p}_c0`, `${p}_c1`], [`${p}_rows`]),
    n('Mod', [`${p}_rows`, `${p}_chunk`], [`${p}_rem`]),
    n('Sub', [`${p}_chunk`, `${p}_rem`], [`${p}_gap`]),
    n('Mod', [`${p}_gap`, `${p}_chunk`], [`${p}_pad`]),
    n('Concat', [`${p}_c0`, `${p}_c0`, `${p}_pad`, `${p}_c0`], [`${p}_hpads`], [{ name: 'axis', type: T.INT, i: 0 }]),
    n('Concat', [`${p}_c0`, `${p}_pad`], [`${p}_tpads`], [{ name: 'axis', type: T.INT, i: 0 }]),
    n('Pad', [h.name, `${p}_hpads`, `${p}_zero`], [`${p}_hp`]),
    n('Pad', [t.name, `${p}_tpads`, `${p}_ignore`], [`${p}_tp`]),
    n('Reshape', [`${p}_hp`, `${p}_shape3`], [`${p}_h3`]),
    n('Reshape', [`${p}_tp`, `${p}_shape2`], [`${p}_t3`]),
  ];
  const scanIn = [`${p}_zero`];
  const scanOut = [lossOut.name];
  if (withDw) {
    nodes.push(n('Shape', [w.name], [`${p}_wshape`]));
    nodes.push({ ...n('ConstantOfShape', [`${p}_wshape`], [`${p}_dw0`]), attribute: [{ name: 'value', type: T.TENSOR, t: { dims: [1], dataType: elem, rawData: new Uint8Array(h.dtype === 'f64' ? 8 : 4) } }] });
    scanIn.push(`${p}_dw0`);
    scanOut.push(dwOut.name);
  }
  scanIn.push(`${p}_h3`, `${p}_t3`);
  if (withDh) scanOut.push(`${p}_dh3`);
  nodes.push({
    ...n('Scan', scanIn, scanOut),
    attribute: [
      { name: 'body', type: T.GRAPH, g: ctx.subgraph(body(node, withDh, withDw)) },
      { name: 'num_scan_inputs', type: T.INT, i: 2 },
    ],
  });
  if (withDh) {
    nodes.push(n('Reshape', [`${p}_dh3`, `${p}_flat`], [`${p}_dhp`]));
    nodes.push(n('Slice', [`${p}_dhp`, `${p}_c0`, `${p}_rows`], [dhOut.name]));
  }
  return { nodes, initializers: inits };
}
