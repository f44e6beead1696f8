/**
 * MeZO / Sparse-MeZO with their defaults on both real checkpoints: the recipes, Sparse-MeZO's
 * trainable set (the smallest 20% of each tensor at every step, so it is not shrink-only), and
 * MeZO training embeddings, norms and the head when asked.
 */
import { describe, expect, it } from 'vitest';
import { batches } from '../../src/io/datasets.js';
import { CausalLM } from '../../src/models/causal-lm.js';
import { xorshift32 } from '../../src/util/random.js';
import { restoreBase } from '../../src/zeroth-order/base-weights.js';
import { replayTrajectory } from '../../src/zeroth-order/mezo.js';
import { sparseMezoThreshold } from '../../src/zeroth-order/thresholds.js';
import { resolveZoTrainConfig, ZerothOrderTrainer, ZO_RECIPES } from '../../src/zeroth-order/train.js';
import { randomTokenExamples, sameBits, sharedModelDir, snapshotWeights } from '../helpers.js';

const MODELS = [sharedModelDir('stories260K'), sharedModelDir('tinystories-656K')];

function fixedBatch(model: CausalLM, size: number) {
  const data = randomTokenExamples(xorshift32(9), size, { length: 32, hi: model.vocabSize });
  return [...batches(data, size, { seed: 0, epoch: 0, padId: 0 })][0];
}

describe('zeroth-order recipes', () => {
  it('Sparse-MeZO has its own defaults (a larger lr than MeZO, sparsity 0.8, per-step thresholds), each with its source', () => {
    const mezo = resolveZoTrainConfig({ method: 'mezo' });
    const sparse = resolveZoTrainConfig({ method: 'sparse-mezo' });
    expect(sparse.lr).toBeGreaterThan(mezo.lr);
    expect([mezo.lr, sparse.lr]).toEqual([ZO_RECIPES.mezo.lr, ZO_RECIPES['sparse-mezo'].lr]);
    expect(ZO_RECIPES['sparse-mezo'].sparsity).toBe(0.8);
    expect(ZO_RECIPES.mezo.source).toMatch(/princeton-nlp\/MeZO/);
    expect(ZO_RECIPES['sparse-mezo'].source).toMatch(/SparseMeZO/);
    expect(resolveZoTrainConfig({ method: 'sparse-mezo', lr: 1e-5 }).lr).toBe(1e-5);
    expect(() => resolveZoTrainConfig({ method: 'mezo', thresholds: 'fixed' })).toThrow(/"sparse-mezo" only/);
  });
});

describe('Sparse-MeZO trainable set (defaults)', () => {
  it('every step perturbs and updates exactly the smallest 20% of each tensor at that step (plus exact ties), so weights outside the first set join it', async () => {
    for (const dir of MODELS) {
      const model = await CausalLM.load(dir);
      const batch = fixedBatch(model, 16);
      const run = async (thresholds?: 'fixed') => {
        const trainer = await ZerothOrderTrainer.create(model, { method: 'sparse-mezo', ...(thresholds ? { thresholds } : {}) });
        const start = trainer.tensors.map((t) => t.data.slice());
        const h0 = trainer.tensors.map((t) => sparseMezoThreshold(t.data, 0.8));
        let joined = 0;
        for (let s = 0; s < 8; s++) {
          const before = trainer.tensors.map((t) => t.data.slice());
          await trainer.optimizer.step(async () => (await model.loss(batch)).loss);
          const h = trainer.optimizer.thresholds!;
          trainer.tensors.forEach((t, k) => {
            const keep = Math.round(0.2 * t.data.length);
            if (!thresholds) expect(h[k]).toBe(sparseMezoThreshold(before[k], 0.8)); // from this step's start weights
            let members = 0;
            let below = 0;
            let movedOutside = 0;
            const now = t.data;
            const prev = before[k];
            for (let i = 0; i < now.length; i++) {
              if (Math.abs(prev[i]) < h[k]) below++;
              if (Math.abs(prev[i]) <= h[k]) members++;
              else if (now[i] !== prev[i]) movedOutside++;
              if (now[i] !== prev[i] && Math.abs(start[k][i]) > h0[k]) joined++;
            }
            expect(movedOutside, t.name).toBe(0);
            // Exactly the `keep` smallest (more only through exact ties at h).
            if (!thresholds) {
              expect(below, t.name).toBeLessThan(keep);
              expect(members, t.name).toBeGreaterThanOrEqual(keep);
            }
          });
        }
        await restoreBase(model);
        return joined;
      };
      expect(await run(), dir).toBeGreaterThan(0);
      // With thresholds fixed at the start (the old behaviour) the set can only shrink.
      expect(await run('fixed'), dir).toBe(0);
    }
  }, 60_000);
});

describe('MeZO extra parameters', () => {
  it('with include, trains the embeddings, the norms (without weight decay) and the head, and replays them', async () => {
    for (const dir of MODELS) {
      const model = await CausalLM.load(dir);
      const original = snapshotWeights(model);
      const batch = fixedBatch(model, 8);
      const trainer = await ZerothOrderTrainer.create(model, { method: 'mezo', include: ['embeddings', 'norms', 'head'], weightDecay: 0.1 });
      const names = trainer.tensors.map((t) => t.name);
      expect(names).toContain('model.embed_tokens.weight'); // tied: also the head, listed once
      expect(names.filter((n) => n === 'model.embed_tokens.weight')).toHaveLength(1);
      const norms = names.filter((n) => n.includes('norm'));
      expect(norms).toContain('model.norm.weight');
      expect(norms.length).toBe(1 + 2 * model.config.numLayers);
      expect(trainer.tensors.filter((t) => norms.includes(t.name)).every((t) => t.decay === false)).toBe(true);
      expect(trainer.tensors.find((t) => t.name === 'model.embed_tokens.weight')!.decay).toBe(true);
      for (let s = 0; s < 2; s++) await trainer.optimizer.step(async () => (await model.loss(batch)).loss);
      for (const n of names) expect(sameBits(model.weights.get(n)!.data, original.get(n)!), n).toBe(false);
      const trained = trainer.tensors.map((t) => t.data.slice());
      const fresh = trainer.tensors.map((t) => ({ name: t.name, data: original.get(t.name)!.slice(), decay: t.decay }));
      replayTrajectory(fresh, trainer.zoConfig, trainer.trajectory);
      fresh.forEach((t, k) => expect(sameBits(t.data, trained[k]), t.name).toBe(true));
      await restoreBase(model);
      for (const [n, w] of original) expect(sameBits(model.weights.get(n)!.data, w), n).toBe(true);
    }
  }, 60_000);
});
