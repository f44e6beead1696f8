/**
 * onnxruntime contrib ops (domain com.microsoft) that the CPU provider has kernels for.
 * They are inference-only: no gradient rules, so a training graph that reaches one fails
 * at `grad()` time with a message naming the op.
 */
import { SparsetuneError } from '../../errors.js';
import { defineOp, type Value } from '../ir.js';

export const CONTRIB_DOMAIN = 'com.microsoft';

export interface GqaOptions {
  numHeads: number;
  kvNumHeads: number;
  /** Softmax scale (default 1/sqrt(headDim)). */
  scale?: number;
  /** Rotary tables [maxPositions, headDim/2] (HF rotate_half convention); absent = no rotary. */
  rotary?: { cos: Value; sin: Value };
}

/**
 * Causal grouped-query attention over a KV cache that lives in one buffer per layer:
 * `q` [B, S, H*hd], `k`/`v` [B, S, KV*hd] (this step's projections, before rotary),
 * `pastK`/`pastV` [B, KV, capacity, hd], `seqlensK` int32 [B] = (row's total length - 1),
 * `totalLength` int32 scalar = the longest row's total length. Row b's S new keys and values
 * are written at positions [total_b - S, total_b) of its cache rows; when `present` outputs
 * are bound to the `past` buffers (a preallocated fetch) nothing else is copied. Rotary
 * positions are the cache positions (a row's first token is position 0), so prompts must be
 * right-padded. Returns [output [B, S, H*hd], presentK, presentV].
 */
export function groupQueryAttention(
  q: Value,
  k: Value,
  v: Value,
  pastK: Value,
  pastV: Value,
  seqlensK: Value,
  totalLength: Value,
  opts: GqaOptions,
): [Value, Value, Value] {
  const inputs = [q, k, v, pastK, pastV, seqlensK, totalLength];
  if (opts.rotary) inputs.push(opts.rotary.cos, opts.rotary.sin);
  const attrs: Record<string, number | { float: number }> = { num_heads: opts.numHeads, kv_num_heads: opts.kvNumHeads };
  if (opts.scale !== undefined) attrs.scale = { float: opts.scale };
  if (opts.rotary) {
    attrs.do_rotary = 1;
    attrs.rotary_interleaved = 0;
  }
  const [out, pk, pv] = q.graph.add('GroupQueryAttention', inputs, attrs, 3);
  return [out, pk, pv];
}

defineOp('GroupQueryAttention', {
  domain: CONTRIB_DOMAIN,
  infer: (inputs, attrs) => {
    const [q, k, v, pk, pv, seqlens, total] = inputs;
    const H = attrs.num_heads as number;
    const KV = attrs.kv_num_heads as number;
    const bad = (msg: string): never => {
      throw new SparsetuneError('SHAPE_MISMATCH', `GroupQueryAttention: ${msg}; inputs ${inputs.map(String).join(', ')}`);
    };
    if (q.dtype !== 'f32' || k.dtype !== 'f32' || v.dtype !== 'f32' || pk.dtype !== 'f32' || pv.dtype !== 'f32') bad('q, k, v and the caches must be f32');
    if (seqlens.dtype !== 'i32' || total.dtype !== 'i32' || total.rank !== 0) bad('seqlens_k must be int32 [B] and total_sequence_length an int32 scalar');
    if (q.rank !== 3 || k.rank !== 3 || v.rank !== 3 || pk.rank !== 4 || pv.rank !== 4) bad('q/k/v must be [B, S, heads*hd] and the caches [B, KV, capacity, hd]');
    if (H % KV) bad(`num_heads ${H} is not a multiple of kv_num_heads ${KV}`);
    const hd = pk.shape[3];
    if (typeof hd !== 'number' || hd % 8) bad('head size must be static and a multiple of 8 (the CPU kernel requires it)');
    if (q.shape[2] !== H * (hd as number) || k.shape[2] !== KV * (hd as number)) bad('q/k widths do not match heads x head size');
    return [
      { dtype: 'f32', shape: [...q.shape] },
      { dtype: 'f32', shape: [...pk.shape] },
      { dtype: 'f32', shape: [...pv.shape] },
    ];
  },
});

/** x @ w^T for x [..., in] and w [out, in] in one kernel (no reshapes, weight read in place). Inference only. */
export function matmulTransB(x: Value, w: Value): Value {
  return x.graph.add('FusedMatMul', [x, w], { transB: 1 })[0];
}

defineOp('FusedMatMul', {
  domain: CONTRIB_DOMAIN,
  infer: (inputs) => {
    const [x, w] = inputs;
    if (x.dtype !== 'f32' || w.dtype !== 'f32' || w.rank !== 2 || x.shape[x.rank - 1] !== w.shape[1]) {
      throw new SparsetuneError('SHAPE_MISMATCH', `FusedMatMul: need f32 x [..., in] and w [out, in]; got ${x}, ${w}`);
    }
    return [{ dtype: 'f32', shape: [...x.shape.slice(0, -1), w.shape[0]] }];
  },
});

/** RMSNorm over the last axis in one kernel (onnxruntime's SimplifiedLayerNormalization). Inference only. */
export function simplifiedLayerNorm(x: Value, w: Value, eps: number): Value {
  return x.graph.add('SimplifiedLayerNormalization', [x, w], { axis: -1, epsilon: { float: eps } })[0];
}

defineOp('SimplifiedLayerNormalization', {
  infer: (inputs) => {
    const [x, w] = inputs;
    if (x.dtype !== 'f32' || w.dtype !== 'f32') throw new SparsetuneError('DTYPE_MISMATCH', `SimplifiedLayerNormalization: f32 only; got ${x}, ${w}`);
    return [{ dtype: 'f32', shape: [...x.shape] }];
  },
});
