/**
 * Composite layers built from primitive ops; their gradients come from the primitives'
 * rules. RMSNorm and SwiGLU are single fused nodes with hand-written gradients
 * (`fused.ts`). Each layer has its own finite-difference check in the tests.
 */
import { SparsetuneError } from '../errors.js';
import type { Dim, Value } from './ir.js';
import { mulDims } from './shapes.js';
import {
  add, cast, concat, div, equal, erf, exp, gatherElements, gemm, logSoftmax, matmul, maximum, mul, neg, not,
  reduceMean, reduceSum, reshape, sigmoid, softmax, split, sqrt, squeeze, sub, tanh, transposeLast2, unsqueeze, where, scalar,
  matmulTransB,
} from './ops/index.js';
import { rmsNormFused } from './fused.js';
export { swiglu } from './fused.js';

/** y = x W^T (+ b) for x [..., in], W [out, in] (HF layout), read in place via Gemm transB. */
export function linear(x: Value, w: Value, b?: Value): Value {
  const inDim = x.shape[x.rank - 1];
  if (w.rank !== 2 || w.shape[1] !== inDim) {
    throw new SparsetuneError('SHAPE_MISMATCH', `linear: weight ${w} does not match input ${x} (expected [out, ${inDim}])`);
  }
  if (x.graph.inference && x.dtype === 'f32' && x.rank > 2) {
    const y = matmulTransB(x, w);
    return b ? add(y, b) : y;
  }
  const lead = x.shape.slice(0, -1);
  const x2 = x.rank === 2 ? x : reshape(x, [mulDims(lead), inDim]);
  const y2 = gemm(x2, w, { transB: true, c: b });
  return x.rank === 2 ? y2 : reshape(y2, [...lead, w.shape[0]]);
}

/** RMSNorm over the last axis: x / sqrt(mean(x^2) + eps) * w. */
export function rmsNorm(x: Value, w: Value, eps: number): Value {
  return rmsNormFused(x, w, eps);
}

/** RMSNorm from primitive ops (the reference form the fused one is checked against). */
export function rmsNormPrimitive(x: Value, w: Value, eps: number): Value {
  const ms = reduceMean(mul(x, x), [-1], true);
  return mul(div(x, sqrt(add(ms, eps))), w);
}

/** LayerNorm over the last axis with weight and bias. */
export function layerNorm(x: Value, w: Value, b: Value, eps: number): Value {
  const mu = reduceMean(x, [-1], true);
  const xc = sub(x, mu);
  const v = reduceMean(mul(xc, xc), [-1], true);
  return add(mul(div(xc, sqrt(add(v, eps))), w), b);
}

export const silu = (x: Value): Value => mul(x, sigmoid(x));

/** GELU, tanh approximation (HF `gelu_new`, `gelu_pytorch_tanh`). */
export function geluTanh(x: Value): Value {
  const inner = mul(add(x, mul(mul(mul(x, x), x), 0.044715)), Math.sqrt(2 / Math.PI));
  return mul(mul(x, 0.5), add(tanh(inner), 1));
}

/** GELU, exact erf form (HF `gelu`). */
export function geluErf(x: Value): Value {
  return mul(mul(x, 0.5), add(erf(mul(x, Math.SQRT1_2)), 1));
}

/** Rotary embedding, HF rotate_half convention: x*cos + rotate_half(x)*sin. cos/sin broadcast to x. */
export function rotary(x: Value, cos: Value, sin: Value): Value {
  const hd = x.shape[x.rank - 1];
  if (typeof hd !== 'number' || hd % 2) throw new SparsetuneError('SHAPE_MISMATCH', `rotary: head dim of ${x} must be even and static`);
  const [x1, x2] = split(x, [hd / 2, hd / 2], -1);
  return add(mul(x, cos), mul(concat([neg(x2), x1], -1), sin));
}

/**
 * Causal grouped-query attention. q [B, H, T, hd], k and v [B, KV, S, hd], additive mask
 * broadcastable to [B, 1, T, S] (0 = attend, large negative = blocked). H must be a
 * multiple of KV; the KV heads are shared by broadcasting, never copied.
 */
export function attention(q: Value, k: Value, v: Value, mask: Value, scale: number): Value {
  const [B, H, T, hd] = q.shape;
  const KV = k.shape[1];
  if (typeof H !== 'number' || typeof KV !== 'number' || H % KV) {
    throw new SparsetuneError('SHAPE_MISMATCH', `attention: heads ${H} must be a static multiple of kv heads ${KV}`);
  }
  const G = H / KV;
  const q5 = reshape(q, [B, KV, G, T, hd]);
  const k5 = unsqueeze(k, [2]);
  const v5 = unsqueeze(v, [2]);
  const scores = add(mul(matmul(q5, transposeLast2(k5)), scale), unsqueeze(mask, [1]));
  const out = matmul(softmax(scores, -1), v5);
  return reshape(out, [B, H, T, hd] as Dim[]);
}

export interface CrossEntropyOptions {
  /** Per-token weights (same shape as targets), multiplied with the ignore mask. */
  weights?: Value;
  ignoreIndex?: number;
  /** 'mean' over counted tokens (default) or 'sum'. */
  reduction?: 'mean' | 'sum';
}

/**
 * Cross-entropy of logits [..., V] against int64 targets [...] (already aligned: the
 * caller shifts for causal LM). Targets equal to ignoreIndex (-100) count zero.
 */
export function crossEntropy(logits: Value, targets: Value, opts: CrossEntropyOptions = {}): Value {
  if (targets.dtype !== 'i64') throw new SparsetuneError('DTYPE_MISMATCH', `crossEntropy: targets must be int64, got ${targets}`);
  const ignore = opts.ignoreIndex ?? -100;
  const lsm = logSoftmax(logits, -1);
  const valid = not(equal(targets, ignore));
  const safe = where(valid, targets, 0);
  const picked = squeeze(gatherElements(lsm, unsqueeze(safe, [-1]), -1), [-1]);
  let w = cast(valid, logits.dtype);
  if (opts.weights) w = mul(w, opts.weights);
  const total = neg(reduceSum(mul(picked, w), picked.shape.map((_, i) => i)));
  if (opts.reduction === 'sum') return total;
  const count = maximum(reduceSum(w, w.shape.map((_, i) => i)), 1);
  return div(total, count);
}

/**
 * KL(p || q) between the distributions softmax(pLogits) and softmax(qLogits) over the last
 * axis, summed over the vocabulary and averaged over positions with weight 1 in `mask`
 * (all positions when omitted).
 */
export function klDivergence(pLogits: Value, qLogits: Value, mask?: Value): Value {
  const lp = logSoftmax(pLogits, -1);
  const lq = logSoftmax(qLogits, -1);
  const perPos = reduceSum(mul(exp(lp), sub(lp, lq)), [-1]);
  const axes = perPos.shape.map((_, i) => i);
  if (!mask) return reduceMean(perPos, axes);
  const m = cast(mask, pLogits.dtype);
  return div(reduceSum(mul(perPos, m), axes), maximum(reduceSum(m, axes), 1));
}

