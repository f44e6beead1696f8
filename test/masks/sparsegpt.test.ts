import { describe, expect, it } from 'vitest';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { CausalLM } from '../../src/models/causal-lm.js';
import type { LinearSite } from '../../src/models/hooks.js';
import { WeightPatcher } from '../../src/merge/apply.js';
import { sparseGptNM } from '../../src/masks/sparsegpt.js';
import { inputActivationNorms, inputGramMatrices, isExactlyNM, toRowView } from '../../src/masks/priors.js';
import { oneShotAdapter, oneShotMasks } from '../../src/masks/oneshot.js';
import { xorshift32 } from '../../src/util/random.js';
import { randomTokenExamples, snapshotWeights } from '../helpers.js';

const FIX = join(import.meta.dirname, '..', 'fixtures');

describe('SparseGPT N:M masks', () => {
  it('match the PyTorch reference (scripts/sparsegpt_reference.py): mask only and with the OBS weight update', () => {
    const ref = JSON.parse(readFileSync(join(FIX, 'sparsegpt-reference.json'), 'utf8'));
    const site: LinearSite = { name: 'x', kind: 'x', layer: 0, inFeatures: ref.cols, outFeatures: ref.rows, weightName: 'x.weight', layout: 'out_in' };
    const w = Float32Array.from(ref.weight as number[]);
    const h = Float64Array.from(ref.hessian as number[]);
    const only = sparseGptNM(w, site, h, ref.n, ref.m);
    expect([...only.mask]).toEqual(ref.mask_only.mask);
    expect(only.weights).toBeUndefined();
    const upd = sparseGptNM(w, site, h, ref.n, ref.m, { updateWeights: true });
    expect([...upd.mask]).toEqual(ref.update.mask);
    upd.weights!.forEach((v, i) => expect(Math.abs(v - ref.update.weights[i])).toBeLessThan(1e-5));
    expect(isExactlyNM(upd.mask, 2, 4)).toBe(true);
    // The weight update changes which entries survive: the two masks must differ somewhere.
    expect(ref.update.mask).not.toEqual(ref.mask_only.mask);
  });

  it('input Gram matrices are symmetric, batch-invariant, with the squared input norms on the diagonal; the one-shot adapter fuses to the compensated 2:4 weights', async () => {
    const model = await CausalLM.load(join(FIX, 'models', 'llama-gqa'));
    const examples = randomTokenExamples(xorshift32(5), 5, { length: [9, 4, 7], hi: model.vocabSize });
    const site = model.sites().find((s) => s.kind === 'q_proj')!;
    const [batched, single] = await Promise.all([inputGramMatrices(model, [site], examples, { batchSize: 5 }), inputGramMatrices(model, [site], examples, { batchSize: 1 })]);
    const a = batched.get(site.name)!;
    const b = single.get(site.name)!;
    for (let i = 0; i < a.length; i++) expect(Math.abs(a[i] - b[i])).toBeLessThan(1e-4 * Math.max(1, Math.abs(b[i])));
    const I = site.inFeatures;
    for (let i = 0; i < I; i++) for (let j = 0; j < I; j++) expect(a[i * I + j]).toBeCloseTo(a[j * I + i], 4); // symmetric
    // Its diagonal is the squared input norms (checked against a direct computation in maskllm.test.ts).
    const norms = (await inputActivationNorms(model, [site], examples)).get(site.name)!;
    for (let i = 0; i < I; i++) expect(Math.sqrt(a[i * I + i])).toBeCloseTo(norms[i], 3);

    const before = snapshotWeights(model);
    const adapter = await oneShotAdapter(model, { kind: 'sparsegpt', calibration: examples, updateWeights: true });
    const tensors = await oneShotMasks(model, { kind: 'sparsegpt', calibration: examples, updateWeights: true });
    const patcher = new WeightPatcher(model.weights);
    patcher.apply(adapter);
    for (const t of tensors) {
      const fused = model.weights.get(t.site.weightName)!.data;
      const view = Uint8Array.from(toRowView(Float32Array.from(fused, (v) => (v !== 0 ? 1 : 0)), t.site));
      expect(isExactlyNM(view, 2, 4), t.site.name).toBe(true);
      fused.forEach((v, i) => expect(Math.abs(v - t.weights![i])).toBeLessThan(1e-6 * Math.max(1, Math.abs(t.weights![i]))));
    }
    patcher.revertAll();
    for (const [k, v] of before) expect(model.weights.get(k)!.data).toEqual(v);
  });
});
