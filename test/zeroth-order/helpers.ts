/** Shared fixtures for the zeroth-order tests: deterministic data and a least-squares problem. */
import { fillNormal } from '../../src/zeroth-order/rng.js';
import type { TrainableTensor } from '../../src/zeroth-order/rng.js';

/** n normals with standard deviation `scale` (deterministic). */
export function randn(seed: number, n: number, scale = 1): Float32Array {
  const out = new Float32Array(n);
  fillNormal(out, seed, 9, 0);
  for (let i = 0; i < n; i++) out[i] *= scale;
  return out;
}

export function sameBits(a: Float32Array, b: Float32Array): boolean {
  return a.length === b.length && Buffer.from(a.buffer, a.byteOffset, a.byteLength).equals(Buffer.from(b.buffer, b.byteOffset, b.byteLength));
}

export function cloneTensors(tensors: readonly TrainableTensor[]): TrainableTensor[] {
  return tensors.map((t) => ({ name: t.name, data: t.data.slice() }));
}

/** float32 unit in the last place of |v| (for drift bounds). */
export function ulp32(v: number): number {
  const a = Math.max(Math.abs(v), 2 ** -126);
  return 2 ** (Math.floor(Math.log2(a)) - 23);
}

/**
 * L(θ) = ‖Aθ − b‖² / (2m) with θ the concatenation of the tensors, A m×P with N(0, 1/P)
 * entries and b = A·θ* for a random θ*, so the minimum is 0.
 */
export function leastSquares(tensors: readonly TrainableTensor[], rows = 64, seed = 5): () => Promise<number> {
  const sizes = tensors.map((t) => t.data.length);
  const p = sizes.reduce((a, b) => a + b, 0);
  const a = randn(seed, rows * p, 1 / Math.sqrt(p));
  const target = randn(seed + 1, p, 1);
  const b = new Float64Array(rows);
  for (let r = 0; r < rows; r++) {
    let s = 0;
    for (let c = 0; c < p; c++) s += a[r * p + c] * target[c];
    b[r] = s;
  }
  return async () => {
    let total = 0;
    for (let r = 0; r < rows; r++) {
      let v = -b[r];
      let c = r * p;
      for (const t of tensors) {
        const data = t.data;
        for (let i = 0; i < data.length; i++) v += a[c++] * data[i];
      }
      total += v * v;
    }
    return total / (2 * rows);
  };
}
