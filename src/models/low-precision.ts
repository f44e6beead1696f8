/**
 * Lower-precision storage for a model's frozen linear weights (an inference option: generate,
 * eval, serve). Every Linear site (attention and MLP projections, and the LM head) is
 * stored as
 * - `f16`: IEEE half floats, fed to the graph as they are and cast to f32 on each run (half
 *   the memory; slower than f32 on CPUs without f16 matmul kernels, which onnxruntime's
 *   x86 provider lacks);
 * - `int8` / `int4`: block-quantized codes with an f32 scale per 32 inputs (int4 also a 4-bit
 *   zero point per block), multiplied by onnxruntime's MatMulNBits (int8 dot products):
 *   ~0.28x / ~0.17x of the f32 bytes, and faster than f32 where memory bandwidth bounds the
 *   run (decode).
 * Embeddings, norms and biases stay f32, and so does everything an adapter adds when it runs
 * unfused. The f32 values of the lowered weights are released, so what needs them exactly
 * (training, merge, fuse/unfuse, in-place adapter patching) refuses such a model; f32 is
 * the default everywhere.
 */
import { SparsetuneError } from '../errors.js';
import type { Graph, Value } from '../engine/ir.js';
import { linear } from '../engine/nn.js';
import { cast, gemm, reshape } from '../engine/ops/index.js';
import { matmulNBits, quantizeBlockwise, quantizedBytes, type BlockQuantized } from '../engine/quant.js';
import { mulDims } from '../engine/shapes.js';
import { encodeF16 } from '../io/half.js';
import type { HostTensor } from '../tensor.js';
import type { LinearSite } from './hooks.js';

/** Storage of the frozen linear weights: f32 (default, exact), f16, or int8 / int4 weight-only quantization. */
export type WeightsDtype = 'f32' | 'f16' | 'int8' | 'int4';
export const WEIGHTS_DTYPES: readonly WeightsDtype[] = ['f32', 'f16', 'int8', 'int4'];

/** One lowered linear weight. */
export type LowPrecisionWeight = { kind: 'f16'; input: string; tensor: HostTensor<'f16'> } | { kind: 'nbits'; q: BlockQuantized };

export interface LowPrecisionOptions {
  /** Inputs per quantization block (int8/int4; default 32, a power of two >= 16). */
  blockSize?: number;
  /**
   * MatMulNBits compute: 4 (default) quantizes activations to int8 per block and uses
   * integer dot products; 0 computes in f32 on dequantized blocks (slower, a little closer
   * to the dequantized weights).
   */
  accuracyLevel?: 0 | 4;
}

/** Check a `--weights-dtype` value. */
export function parseWeightsDtype(v: string | undefined, what = '--weights-dtype'): WeightsDtype {
  if (v === undefined) return 'f32';
  if (!(WEIGHTS_DTYPES as readonly string[]).includes(v)) throw new SparsetuneError('BAD_ARGUMENT', `${what} ${v}: choose one of ${WEIGHTS_DTYPES.join(', ')}`);
  return v as WeightsDtype;
}

/**
 * Lower the sites' weights. Returns the lowered weights by site name and the weight names
 * whose f32 values are no longer needed (a tied LM head shares the embedding, which stays
 * f32: int8/int4 give the head its own quantized copy; f16 leaves a tied head in f32).
 */
export function lowerWeights(
  sites: LinearSite[],
  weights: Map<string, HostTensor<'f32'>>,
  dtype: Exclude<WeightsDtype, 'f32'>,
  opts: LowPrecisionOptions & { tiedHead?: boolean } = {},
): { lowered: Map<string, LowPrecisionWeight>; released: string[] } {
  const users = new Map<string, number>();
  for (const s of sites) users.set(s.weightName, (users.get(s.weightName) ?? 0) + 1);
  const lowered = new Map<string, LowPrecisionWeight>();
  const released: string[] = [];
  for (const s of sites) {
    const w = weights.get(s.weightName);
    if (!w) throw new SparsetuneError('BAD_ARGUMENT', `${s.name}: weight ${s.weightName} is not held in f32 (already lowered?)`);
    // The weight is read elsewhere too (tied embeddings): only int8/int4 are worth a copy.
    const shared = s.kind === 'lm_head' && !!opts.tiedHead;
    if (shared && dtype === 'f16') continue;
    if (dtype === 'f16') {
      let maxAbs = 0;
      for (const v of w.data) maxAbs = Math.max(maxAbs, Math.abs(v));
      if (!(maxAbs <= 65504)) throw new SparsetuneError('BAD_ARGUMENT', `${s.weightName}: values up to ${maxAbs} do not fit in f16 (max 65504); use --weights-dtype int8`);
      lowered.set(s.name, { kind: 'f16', input: `f16:${s.weightName}`, tensor: { dtype: 'f16', shape: [...w.shape], data: encodeF16(w.data) } });
    } else {
      const bits = dtype === 'int8' ? 8 : 4;
      const q = quantizeBlockwise(w.data, s.outFeatures, s.inFeatures, bits, opts.blockSize ?? 32, s.layout === 'in_out', bits === 4);
      lowered.set(s.name, { kind: 'nbits', q });
    }
    if (!shared && users.get(s.weightName) === 1) released.push(s.weightName);
  }
  return { lowered, released };
}

/** x W^T (+ b) through a lowered weight, in the site's layout. */
export function lowPrecisionLinear(site: LinearSite, lw: LowPrecisionWeight, x: Value, bias: Value | undefined, g: Graph, inputs: Map<string, Value>, opts: LowPrecisionOptions = {}): Value {
  if (lw.kind === 'nbits') {
    const y = matmulNBits(x, lw.q, opts.accuracyLevel ?? 4);
    return bias ? g.add('Add', [y, bias])[0] : y;
  }
  let w16 = inputs.get(lw.input);
  if (!w16) {
    w16 = g.input(lw.input, 'f16', lw.tensor.shape);
    inputs.set(lw.input, w16);
  }
  const w = cast(w16, 'f32');
  if (site.layout === 'out_in') return linear(x, w, bias);
  const lead = x.shape.slice(0, -1);
  return reshape(gemm(reshape(x, [mulDims(lead), site.inFeatures]), w, { c: bias }), [...lead, site.outFeatures]);
}

/** Bytes of the lowered weights (codes + scales, or halves). */
export function loweredBytes(lowered: Map<string, LowPrecisionWeight>): number {
  let n = 0;
  for (const lw of lowered.values()) n += lw.kind === 'nbits' ? quantizedBytes(lw.q) : lw.tensor.data.byteLength;
  return n;
}
