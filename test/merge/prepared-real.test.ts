/**
 * Hot swaps with prepared adapters on real checkpoints (the bundled stories260K and
 * ../shared tinystories-656K): overlapping sparse deltas at 0.1%, 1% and 10% of every 2-D
 * weight, an S2FT block, sparse and 2:4 masks, a LoRA and a composition, swapped in random
 * orders; every step is checked bit for bit against the dense oracle, and reverting
 * everything gives back the original bits and fingerprint.
 */
import * as path from 'node:path';
import { describe, expect, it } from 'vitest';
import { readSafetensors } from '../../src/io/safetensors.js';
import { WeightPatcher, type AppliedHandle, type PreparedAdapter } from '../../src/merge/apply.js';
import { packBits } from '../../src/merge/bits.js';
import { composeAdapters } from '../../src/merge/compose.js';
import { fingerprintWeights } from '../../src/merge/fingerprint.js';
import { newAdapter, type Adapter } from '../../src/merge/types.js';
import type { HostTensor } from '../../src/tensor.js';
import { sharedModelDir } from '../helpers.js';
import { cloneWeights, denseReference, expectedWeights, firstDifference, randInt, rng, type DenseAdapter } from './helpers.js';

type Weights = Map<string, HostTensor<'f32'>>;

/** A sorted random subset of 0..n-1 with about `density` of the elements (geometric gaps). */
function sparseIndices(r: () => number, n: number, density: number): Int32Array {
  const out: number[] = [];
  const logq = Math.log(1 - density);
  for (let i = Math.floor(Math.log(1 - r()) / logq); i < n; i += 1 + Math.floor(Math.log(1 - r()) / logq)) out.push(i);
  return Int32Array.from(out);
}

function pool(weights: Weights, r: () => number): Adapter[] {
  const base = { model: 'real', fingerprint: '' };
  const matrices = [...weights].filter(([, t]) => t.shape.length === 2);
  const sparse = (label: string, density: number): Adapter => {
    const a = newAdapter({ method: label, kind: 'additive', base });
    for (const [name, t] of matrices) {
      const indices = sparseIndices(r, t.data.length, density);
      if (indices.length) a.additive.set(name, { indices, values: Float32Array.from(indices, () => (r() - 0.5) * 0.02) });
    }
    return a;
  };
  const projections = matrices.filter(([name]) => /_proj\.weight$/.test(name));
  const [qName, q] = projections.find(([name]) => name.includes('q_proj'))!;
  const [upName, up] = projections.find(([name]) => name.includes('up_proj'))!;

  const s2ft = newAdapter({ method: 's2ft', kind: 'structured', base });
  s2ft.structured.set(qName, { cols: Int32Array.from([1, 5, 6, 20]), values: Float32Array.from({ length: q.shape[0] * 4 }, () => r() - 0.5), shape: [q.shape[0], q.shape[1]] });
  s2ft.structured.set(upName, { rows: Int32Array.from([0, 3, 40]), values: Float32Array.from({ length: 3 * up.shape[1] }, () => r() - 0.5), shape: [up.shape[0], up.shape[1]] });

  const masks = newAdapter({ method: 'masks', kind: 'mask', base });
  const [gateName, gate] = projections.find(([name]) => name.includes('gate_proj'))!;
  const twoFour = Array.from({ length: gate.data.length }, (_, i) => (((i % 4) + Math.floor(i / gate.shape[1])) % 4 < 2 ? 1 : 0));
  masks.masks.set(gateName, { bits: packBits(twoFour), numel: twoFour.length });
  for (const [name, t] of projections.slice(0, 6)) {
    const cleared = new Set(sparseIndices(r, t.data.length, 0.05));
    masks.masks.set(name, { bits: packBits(Array.from({ length: t.data.length }, (_, i) => (cleared.has(i) ? 0 : 1))), numel: t.data.length });
  }

  const lora = newAdapter({ method: 'lora', kind: 'lowrank', base });
  for (const [name, t] of projections.filter(([n]) => /layers\.[01]\.self_attn\.(q|v)_proj/.test(n))) {
    const [out, inDim] = t.shape;
    lora.lowrank.set(name, {
      A: { dtype: 'f32', shape: [4, inDim], data: Float32Array.from({ length: 4 * inDim }, () => (r() - 0.5) * 0.1) },
      B: { dtype: 'f32', shape: [out, 4], data: Float32Array.from({ length: out * 4 }, () => (r() - 0.5) * 0.1) },
      scale: 2,
    });
  }

  const one = sparse('sparse-1%', 0.01);
  const shapes = new Map([...weights].map(([k, t]) => [k, t.shape]));
  return [sparse('sparse-0.1%', 0.001), one, sparse('sparse-10%', 0.1), sparse('sparse-1%-b', 0.01), s2ft, masks, lora, composeAdapters([one, s2ft], { shapes, method: 'composed' })];
}

async function swapSequence(file: string, seed: number): Promise<void> {
  const { tensors } = await readSafetensors(file);
  const weights = tensors as Weights;
  const pristine = cloneWeights(weights);
  const fp = fingerprintWeights(weights);
  const shapes = Object.fromEntries([...weights].map(([k, t]) => [k, t.shape]));
  const r = rng(seed);
  const adapters = pool(weights, r);
  const refs: DenseAdapter[] = adapters.map((a) => denseReference(a, shapes));
  const patcher = new WeightPatcher(weights, { fingerprint: fp });
  const prepared: PreparedAdapter[] = adapters.map((a) => patcher.prepare(a));
  const applied: { h: AppliedHandle; k: number }[] = [];
  for (let op = 0; op < 24; op++) {
    if (applied.length === 0 || r() < 0.55) {
      const k = randInt(r, adapters.length);
      applied.push({ h: patcher.apply(r() < 0.8 ? prepared[k] : adapters[k]), k });
    } else {
      patcher.revert(applied.splice(randInt(r, applied.length), 1)[0].h);
    }
    const diff = firstDifference(weights, expectedWeights(pristine, applied.map((x) => refs[x.k])));
    if (diff) throw new Error(`${path.basename(path.dirname(file))} op ${op} (${applied.map((x) => adapters[x.k].meta.method).join(', ')}): ${diff}`);
  }
  patcher.revertAll();
  expect(firstDifference(weights, new Map([...pristine].map(([k, t]) => [k, t.data])))).toBeNull();
  expect(fingerprintWeights(weights)).toBe(fp);
}

describe('prepared hot swaps on real checkpoints', () => {
  it('stories260K: every step equals the oracle, and reverting all restores the original bits', async () => {
    await swapSequence(path.resolve('models/stories260K/model.safetensors'), 260);
  });

  it('tinystories-656K: every step equals the oracle, and reverting all restores the original bits', async () => {
    await swapSequence(path.join(sharedModelDir('tinystories-656K'), 'model.safetensors'), 656);
  });
});
