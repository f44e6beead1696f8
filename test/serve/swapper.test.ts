/**
 * The swapper's prepared fast path on the real stories260K weights: payloads prepared at
 * load (or on first swap) are reused, every set it switches to gives the bits of a fresh
 * plain application of that set, and reset gives back the original bits.
 */
import * as path from 'node:path';
import { describe, expect, it } from 'vitest';
import { readSafetensors } from '../../src/io/safetensors.js';
import { WeightPatcher } from '../../src/merge/apply.js';
import { newAdapter, type Adapter } from '../../src/merge/types.js';
import { WeightGate } from '../../src/serve/gate.js';
import { Swapper, type SwapMember } from '../../src/serve/swapper.js';
import type { HostTensor } from '../../src/tensor.js';
import { sameBits } from '../helpers.js';
import { cloneWeights, rng } from '../merge/helpers.js';

type Weights = Map<string, HostTensor<'f32'>>;

function sparseAdapter(weights: Weights, r: () => number, label: string, density: number): Adapter {
  const a = newAdapter({ method: label, kind: 'additive', base: { model: 'stories260K', fingerprint: '' } });
  for (const [name, t] of weights) {
    if (t.shape.length !== 2) continue;
    const idx: number[] = [];
    for (let i = 0; i < t.data.length; i++) if (r() < density) idx.push(i);
    a.additive.set(name, { indices: Int32Array.from(idx), values: Float32Array.from(idx, () => (r() - 0.5) * 0.02) });
  }
  return a;
}

function same(a: Weights, b: Weights): boolean {
  return [...a].every(([k, t]) => sameBits(t.data, b.get(k)!.data));
}

describe('Swapper with prepared payloads', () => {
  it('reuses the prepared form, switches to exactly the bits of each set, and resets to the original bits', async () => {
    const { tensors } = await readSafetensors(path.resolve('models/stories260K/model.safetensors'));
    const weights = tensors as Weights;
    const pristine = cloneWeights(weights);
    const r = rng(11);
    const payloads = [sparseAdapter(weights, r, 'a', 0.01), sparseAdapter(weights, r, 'b', 0.1), sparseAdapter(weights, r, 'c', 0.01)];
    const members: SwapMember[] = payloads.map((p, k) => ({ uid: 100 + k, id: `ad${k}`, payload: () => p }));
    const swapper = new Swapper(weights, new WeightGate(), { fingerprint: '' });
    const prepared = swapper.prepare(members[0]);
    expect(swapper.prepare(members[0])).toBe(prepared);
    expect(prepared.bytes).toBeGreaterThan(0);
    for (const set of [[0], [1], [0, 1], [1, 2], [2], [0, 1, 2], [1]]) {
      await swapper.runWith(set.map((k) => members[k]), async () => {});
      const want = cloneWeights(pristine);
      const fresh = new WeightPatcher(want, { fingerprint: '' });
      for (const k of set) fresh.apply(payloads[k]);
      expect(same(weights, want), `set ${set}`).toBe(true);
    }
    await swapper.reset();
    expect(same(weights, pristine)).toBe(true);
  });
});
