/** Random sparse adapters for the benchmarks (merge, serve). */
import { newAdapter, type Adapter } from '../src/merge/types.js';
import type { HostTensor } from '../src/tensor.js';
import { xorshift32 } from '../src/util/random.js';

/**
 * A sparse additive adapter on a `density` fraction of every 2-D weight: indices with
 * geometric gaps (so building it is O(nnz)), values uniform in ±0.01.
 */
export function sparseAdapter(weights: Map<string, HostTensor<'f32'>>, density: number, seed: number, fingerprint: string): Adapter {
  const r = xorshift32(seed);
  const a = newAdapter({ method: 'bench-random', kind: 'additive', base: { model: 'bench', fingerprint } });
  const logq = Math.log(1 - density);
  for (const [name, t] of weights) {
    if (t.shape.length !== 2) continue;
    const idx: number[] = [];
    for (let i = Math.floor(Math.log(1 - r()) / logq); i < t.data.length; i += 1 + Math.floor(Math.log(1 - r()) / logq)) idx.push(i);
    if (!idx.length) continue;
    a.additive.set(name, { indices: Int32Array.from(idx), values: Float32Array.from(idx, () => (r() - 0.5) * 0.02) });
  }
  return a;
}

/** Number of elements an adapter's additive deltas touch. */
export function additiveElements(a: Adapter): number {
  let n = 0;
  for (const d of a.additive.values()) n += d.indices.length;
  return n;
}
