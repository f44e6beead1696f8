/**
 * Weight-only quantization for frozen linear weights, in the layout of onnxruntime's
 * `MatMulNBits` (com.microsoft; the CPU provider has kernels for 4 and 8 bits): each output
 * row of W [N, K] is cut into blocks of `blockSize` inputs, every block stores one f32 scale,
 * `blockSize` unsigned codes of `bits` bits and a zero point (implicit 2^(bits-1), or stored
 * per block), so w ≈ scale * (code - zero). The codes are packed little end first (4 bits: element 2j in
 * the low nibble of byte j). K is padded with zeros to whole blocks.
 *
 * The quantized buffers become external constants of the graphs that use them, so
 * onnxruntime prepacks them once per session (its fast kernels need constant weights);
 * with `accuracyLevel` 4 the kernel quantizes activations per block to int8 and runs
 * integer dot products (AVX-512 VNNI / AVX2), which is what makes decode faster than f32.
 */
import { SparsetuneError } from '../errors.js';
import { defineOp, type Value } from './ir.js';
import { CONTRIB_DOMAIN } from './ops/contrib.js';

/** A weight in MatMulNBits form: codes [N, blocks, blockSize*bits/8] and scales [N*blocks]. */
export interface BlockQuantized {
  bits: 4 | 8;
  blockSize: number;
  /** N: output features. */
  rows: number;
  /** K: input features (before padding to whole blocks). */
  cols: number;
  codes: Uint8Array;
  scales: Float32Array;
  /** Per-block zero points (asymmetric blocks), packed like the codes: [N, ceil(blocks*bits/8)]; absent: 2^(bits-1). */
  zeros?: Uint8Array;
  /** Unique name of this buffer as an external constant. */
  location: string;
}

let nextLocation = 1;

/**
 * Quantize W [rows, cols] (row-major; `transposed`: the buffer holds W^T, i.e. [cols, rows],
 * as GPT-2's Conv1D stores it). Symmetric blocks (zero point 2^(bits-1)): the scale with the
 * smallest squared error among amax / (2^(bits-1) - 1 + t/8), t = 0..7 (no clipping to a
 * little clipping) and the signed extreme / -2^(bits-1) (the full code range, as llama.cpp's
 * Q4_0). `asymmetric`: each block also gets a zero point, with the scale searched likewise
 * over its [min, max] range (better for 4 bits: one code level more for skewed blocks).
 */
export function quantizeBlockwise(w: Float32Array, rows: number, cols: number, bits: 4 | 8, blockSize = 32, transposed = false, asymmetric = false): BlockQuantized {
  if (bits !== 4 && bits !== 8) throw new SparsetuneError('BAD_ARGUMENT', `quantize: bits must be 4 or 8, got ${bits}`);
  if (blockSize < 16 || (blockSize & (blockSize - 1)) !== 0) throw new SparsetuneError('BAD_ARGUMENT', `quantize: block size must be a power of two >= 16, got ${blockSize}`);
  if (w.length !== rows * cols) throw new SparsetuneError('SHAPE_MISMATCH', `quantize: ${w.length} values for a [${rows}, ${cols}] weight`);
  const blocks = Math.ceil(cols / blockSize);
  const blob = (blockSize * bits) / 8;
  const codes = new Uint8Array(rows * blocks * blob);
  const scales = new Float32Array(rows * blocks);
  const zero = 1 << (bits - 1);
  const qmax = (1 << bits) - 1;
  const zbytes = Math.ceil((blocks * bits) / 8);
  const zeros = asymmetric ? new Uint8Array(rows * zbytes) : undefined;
  const vals = new Float32Array(blockSize);
  const q = new Uint8Array(blockSize);
  for (let n = 0; n < rows; n++) {
    for (let b = 0; b < blocks; b++) {
      const k0 = b * blockSize;
      const len = Math.min(blockSize, cols - k0);
      let amax = 0;
      let extreme = 0;
      for (let j = 0; j < blockSize; j++) {
        const v = j < len ? (transposed ? w[(k0 + j) * rows + n] : w[n * cols + k0 + j]) : 0;
        vals[j] = v;
        if (Math.abs(v) > amax) {
          amax = Math.abs(v);
          extreme = v;
        }
      }
      let best = 0;
      let bestZero = zero;
      if (asymmetric) {
        let lo = 0;
        let hi = 0;
        for (let j = 0; j < blockSize; j++) {
          lo = Math.min(lo, vals[j]);
          hi = Math.max(hi, vals[j]);
        }
        let bestErr = Infinity;
        for (let t = 0; t <= 8 && hi > lo; t++) {
          const d = (hi - lo) / (qmax - 1 + t / 8);
          const z = Math.min(qmax, Math.max(0, Math.round(-lo / d)));
          let err = 0;
          for (let j = 0; j < blockSize; j++) {
            const c = Math.min(qmax, Math.max(0, Math.round(vals[j] / d) + z));
            const e = vals[j] - d * (c - z);
            err += e * e;
          }
          if (err < bestErr) {
            bestErr = err;
            best = d;
            bestZero = z;
          }
        }
        if (zeros) {
          if (bits === 8) zeros[n * zbytes + b] = bestZero;
          else zeros[n * zbytes + (b >> 1)] |= bestZero << ((b & 1) * 4);
        }
      } else if (amax > 0) {
        let bestErr = Infinity;
        for (let t = 0; t <= 8; t++) {
          const d = t === 8 ? extreme / -zero : amax / (zero - 1 + t / 8);
          let err = 0;
          for (let j = 0; j < blockSize; j++) {
            const c = Math.min(qmax, Math.max(0, Math.round(vals[j] / d) + zero));
            const e = vals[j] - d * (c - zero);
            err += e * e;
          }
          if (err < bestErr) {
            bestErr = err;
            best = d;
          }
        }
      }
      scales[n * blocks + b] = best;
      for (let j = 0; j < blockSize; j++) q[j] = best === 0 ? bestZero : Math.min(qmax, Math.max(0, Math.round(vals[j] / Math.fround(best)) + bestZero));
      const base = (n * blocks + b) * blob;
      if (bits === 8) codes.set(q, base);
      else for (let j = 0; j < blockSize; j += 2) codes[base + j / 2] = q[j] | (q[j + 1] << 4);
    }
  }
  return { bits, blockSize, rows, cols, codes, scales, zeros, location: `quant${nextLocation++}_${rows}x${cols}_q${bits}b${blockSize}` };
}

/** The f32 values a quantized weight stands for, [rows, cols] row-major. */
export function dequantizeBlockwise(q: BlockQuantized): Float32Array {
  const { rows, cols, blockSize, bits } = q;
  const blocks = Math.ceil(cols / blockSize);
  const blob = (blockSize * bits) / 8;
  const zero = 1 << (bits - 1);
  const out = new Float32Array(rows * cols);
  for (let n = 0; n < rows; n++) {
    for (let k = 0; k < cols; k++) {
      const b = Math.floor(k / blockSize);
      const j = k % blockSize;
      const base = (n * blocks + b) * blob;
      const code = bits === 8 ? q.codes[base + j] : (q.codes[base + (j >> 1)] >> ((j & 1) * 4)) & 15;
      const zb = Math.ceil((blocks * bits) / 8);
      const z = !q.zeros ? zero : bits === 8 ? q.zeros[n * zb + b] : (q.zeros[n * zb + (b >> 1)] >> ((b & 1) * 4)) & 15;
      out[n * cols + k] = q.scales[n * blocks + b] * (code - z);
    }
  }
  return out;
}

/** Bytes a quantized weight holds (codes and scales). */
export function quantizedBytes(q: BlockQuantized): number {
  return q.codes.byteLength + q.scales.byteLength + (q.zeros?.byteLength ?? 0);
}

/**
 * y = x W^T for x [..., K] and a block-quantized W [N, K] (onnxruntime's MatMulNBits; the
 * weight enters as external constants). `accuracyLevel` 4 (default): int8 activations and
 * integer dot products; 0: f32 compute on dequantized blocks. Inference only (no gradient).
 */
export function matmulNBits(x: Value, w: BlockQuantized, accuracyLevel: 0 | 4 = 4): Value {
  const g = x.graph;
  const blocks = Math.ceil(w.cols / w.blockSize);
  const codes = g.externalConstant({ dtype: 'u8', shape: [w.rows, blocks, (w.blockSize * w.bits) / 8], data: w.codes }, `${w.location}.codes`);
  const scales = g.externalConstant({ dtype: 'f32', shape: [w.rows * blocks], data: w.scales }, `${w.location}.scales`);
  const inputs = [x, codes, scales];
  if (w.zeros) inputs.push(g.externalConstant({ dtype: 'u8', shape: [w.zeros.length], data: w.zeros }, `${w.location}.zeros`));
  return g.add('MatMulNBits', inputs, { K: w.cols, N: w.rows, bits: w.bits, block_size: w.blockSize, accuracy_level: accuracyLevel })[0];
}

defineOp('MatMulNBits', {
  domain: CONTRIB_DOMAIN,
  infer: (inputs, attrs) => {
    const [x, codes, scales] = inputs;
    const K = attrs.K as number;
    const N = attrs.N as number;
    if (x.dtype !== 'f32' || x.shape[x.rank - 1] !== K) throw new SparsetuneError('SHAPE_MISMATCH', `MatMulNBits: input ${x} must be f32 [..., ${K}]`);
    if (codes.dtype !== 'u8' || codes.shape[0] !== N || scales.dtype !== 'f32') throw new SparsetuneError('SHAPE_MISMATCH', `MatMulNBits: codes ${codes} / scales ${scales} do not match N = ${N}`);
    return [{ dtype: 'f32', shape: [...x.shape.slice(0, -1), N] }];
  },
});
