/**
 * Fused layers with hand-written gradients: one IR node each, lowered to onnxruntime's
 * fused CPU kernels in f32 (SimplifiedLayerNormalization, QuickGelu) and to primitive ops in
 * f64 (gradient checks). Their backward passes keep only what they need (RMSNorm: its input
 * and the per-row 1/rms; SwiGLU: the gate and up projections) and recompute the rest, so a
 * training step stores fewer tensors and runs fewer nodes than the autodiff of the
 * primitive forms would.
 */
import onnxProto from 'onnx-proto';
import { SparsetuneError } from '../errors.js';
import { defineOp, type LowerContext, type Node, type Value } from './ir.js';
import { add, mul, sigmoid, sub } from './ops/elementwise.js';
import { reduceMean } from './ops/reduce.js';
import { scalar, sumToShape } from './ops/helpers.js';
import { tensorProto } from './onnx.js';

const { onnx } = onnxProto;
const T = onnx.AttributeProto.AttributeType;

type NodeProto = onnxProto.onnx.INodeProto;
const proto = (opType: string, input: string[], output: string[], attribute: onnxProto.onnx.IAttributeProto[] = [], domain = ''): NodeProto => ({
  opType,
  domain,
  input,
  output,
  attribute,
  name: output.find(Boolean),
});
const scalarInit = (name: string, like: Value, v: number) =>
  like.dtype === 'f64' ? tensorProto(name, { dtype: 'f64', shape: [], data: Float64Array.of(v) }) : tensorProto(name, { dtype: 'f32', shape: [], data: Float32Array.of(v) });

/** RMSNorm over the last axis: x / sqrt(mean(x^2) + eps) * w (one node, custom gradient). */
export function rmsNormFused(x: Value, w: Value, eps: number): Value {
  if (x.dtype !== w.dtype) throw new SparsetuneError('DTYPE_MISMATCH', `rmsNorm: x ${x} and w ${w} differ in dtype`);
  return x.graph.add('RmsNorm', [x, w], { _eps: eps }, 2)[0];
}

defineOp('RmsNorm', {
  infer: (inputs) => {
    const [x, w] = inputs;
    if (w.rank !== 1 || w.shape[0] !== x.shape[x.rank - 1]) throw new SparsetuneError('SHAPE_MISMATCH', `RmsNorm: weight ${w} does not match ${x}`);
    return [
      { dtype: x.dtype, shape: [...x.shape] },
      { dtype: x.dtype, shape: [...x.shape.slice(0, -1), 1] }, // 1 / rms per row
    ];
  },
  grad: ({ node, dOut, needs }) => {
    const [x, w] = node.inputs;
    const rstd = node.outputs[1];
    const dy = dOut[0]!;
    const xhat = mul(x, rstd);
    const dw = needs(1) ? sumToShape(mul(dy, xhat), w.shape) : null;
    let dx: Value | null = null;
    if (needs(0)) {
      const dxhat = mul(dy, w);
      dx = mul(rstd, sub(dxhat, mul(xhat, reduceMean(mul(dxhat, xhat), [-1], true))));
    }
    return [dx, dw];
  },
  lower: (node: Node, ctx: LowerContext) => {
    const [x, w] = node.inputs;
    const [y, rstd] = node.outputs;
    const eps = node.attrs._eps as number;
    const rOut = ctx.live(1) ? rstd.name : '';
    if (x.dtype === 'f32') {
      const attrs = [
        { name: 'axis', type: T.INT, i: -1 },
        { name: 'epsilon', type: T.FLOAT, f: eps },
        { name: 'stash_type', type: T.INT, i: 1 },
      ];
      return { nodes: [proto('SimplifiedLayerNormalization', [x.name, w.name], rOut ? [y.name, rOut] : [y.name], attrs)] };
    }
    const p = `rms${node.id}`;
    const r = rOut || `${p}_rstd`;
    return {
      nodes: [
        proto('Mul', [x.name, x.name], [`${p}_sq`]),
        proto('ReduceMean', [`${p}_sq`, `${p}_axes`], [`${p}_ms`], [{ name: 'keepdims', type: T.INT, i: 1 }]),
        proto('Add', [`${p}_ms`, `${p}_eps`], [`${p}_mse`]),
        proto('Sqrt', [`${p}_mse`], [`${p}_rms`]),
        proto('Reciprocal', [`${p}_rms`], [r]),
        proto('Mul', [x.name, r], [`${p}_xhat`]),
        proto('Mul', [`${p}_xhat`, w.name], [y.name]),
      ],
      initializers: [scalarInit(`${p}_eps`, x, eps), tensorProto(`${p}_axes`, { dtype: 'i64', shape: [1], data: BigInt64Array.of(-1n) })],
    };
  },
});

/** silu(gate) * up, the SwiGLU MLP's activation (one node, custom gradient). */
export function swiglu(gate: Value, up: Value): Value {
  if (gate.dtype !== up.dtype || gate.shape.join() !== up.shape.join()) throw new SparsetuneError('SHAPE_MISMATCH', `swiglu: gate ${gate} and up ${up} must match`);
  return gate.graph.add('SwiGlu', [gate, up])[0];
}

defineOp('SwiGlu', {
  infer: (inputs) => [{ dtype: inputs[0].dtype, shape: [...inputs[0].shape] }],
  grad: ({ node, dOut, needs }) => {
    const [gate, up] = node.inputs;
    const dy = dOut[0]!;
    const s = sigmoid(gate);
    const dUp = needs(1) ? mul(dy, mul(gate, s)) : null;
    // d silu(x)/dx = s * (1 + x * (1 - s))
    const dGate = needs(0) ? mul(mul(dy, up), mul(s, add(mul(gate, sub(scalar(s.graph, 1, s.dtype), s)), 1))) : null;
    return [dGate, dUp];
  },
  lower: (node: Node) => {
    const [gate, up] = node.inputs;
    const p = `swiglu${node.id}`;
    const out = node.outputs[0].name;
    if (gate.dtype === 'f32') {
      return {
        nodes: [proto('QuickGelu', [gate.name], [`${p}_silu`], [{ name: 'alpha', type: T.FLOAT, f: 1 }], 'com.microsoft'), proto('Mul', [`${p}_silu`, up.name], [out])],
      };
    }
    return {
      nodes: [proto('Sigmoid', [gate.name], [`${p}_s`]), proto('Mul', [gate.name, `${p}_s`], [`${p}_silu`]), proto('Mul', [`${p}_silu`, up.name], [out])],
    };
  },
});
