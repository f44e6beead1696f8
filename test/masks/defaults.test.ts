/**
 * The mask methods' defining properties with their DEFAULTS (config defaults and the recipe
 * `train --method X` uses), on both real checkpoints. Only the step counts are cut down.
 */
import { describe, expect, it } from 'vitest';
import { join } from 'node:path';
import { CausalLM } from '../../src/models/causal-lm.js';
import { loadDataset, type TokenizedExample } from '../../src/io/datasets.js';
import { Trainer } from '../../src/train/trainer.js';
import { recipeTrainerConfig } from '../../src/train/recipe.js';
import { unpackBits } from '../../src/merge/bits.js';
import { WeightPatcher } from '../../src/merge/apply.js';
import { composeAdapters } from '../../src/merge/compose.js';
import * as ramt from '../../src/masks/ramt.js';
import * as maskllm from '../../src/masks/maskllm.js';
import * as ltSft from '../../src/masks/lt-sft.js';
import { isExactlyNM, toRowView } from '../../src/masks/priors.js';
import { SHARED_DIR, expectWeightsEqual, sharedModelDir, snapshotWeights } from '../helpers.js';

const MODELS = [sharedModelDir('stories260K'), sharedModelDir('tinystories-656K')];
const DATA = join(SHARED_DIR, 'data');

async function text(model: CausalLM, file: string, n: number, seqLen = 48): Promise<TokenizedExample[]> {
  return (await loadDataset(join(DATA, file), model.tokenizer!, { seqLen })).slice(0, n);
}

describe('R-AMT defaults', () => {
  it('the reference lr (8e-5) flips no mask in the first 10 steps of a run; the old CLI lr 1e-3 does', async () => {
    for (const dir of MODELS) {
      const model = await CausalLM.load(dir);
      const data = await text(model, 'ud-pud/pud_en.txt', 16, 32);
      const flipsAfter = async (lr?: number) => {
        const method = ramt.createMethod(model, {});
        const cfg = recipeTrainerConfig(ramt.recipe);
        // The recipe's run (its steps and schedule), stopped after its first 10 steps.
        const trainer: Trainer = new Trainer(model, method, { ...cfg, batchSize: 4, optimizer: { ...cfg.optimizer, ...(lr ? { lr } : {}) } }, {
          onStep: (log) => void (log.step === 10 && trainer.requestStop('first steps only')),
        });
        expect((await trainer.train(data)).steps).toBe(10);
        return method.tensors.reduce((s, t) => s + method.maskOf(t).reduce((a, v) => a + (1 - v), 0), 0);
      };
      expect(ramt.recipe.lr).toBe(8e-5);
      expect(await flipsAfter(), dir).toBe(0);
      expect(await flipsAfter(1e-3), dir).toBeGreaterThan(0);
    }
  });
});

describe('MaskLLM defaults', () => {
  it('train with the recipe (AdamW beta2 0.95, weight decay 0.1) and the SparseGPT prior: the export is exactly 2:4 in every group', async () => {
    for (const dir of MODELS) {
      const model = await CausalLM.load(dir);
      const before = snapshotWeights(model);
      const data = await text(model, 'tinystories/tinystories_valid_head.txt', 12, 32);
      const method = await maskllm.createMethod(model, {});
      expect(method.config.prior).toBe('sparsegpt');
      const trainer = new Trainer(model, method, { ...recipeTrainerConfig(maskllm.recipe), steps: 2, batchSize: 4 });
      expect(trainer.cfg.optimizer).toMatchObject({ lr: 5e-4, beta2: 0.95, eps: 1e-5, weightDecay: 0.1 });
      expect(method.params().every((p) => p.decay)).toBe(true); // the 0.1 decay reaches the logits
      await trainer.train(data);
      expectWeightsEqual(model, before);
      const adapter = method.export(model);
      expect(adapter.masks.size).toBe(method.tensors.length);
      for (const t of method.tensors) {
        const p = adapter.masks.get(t.site.weightName)!;
        const mask = unpackBits(p.bits, p.numel);
        expect(isExactlyNM(Uint8Array.from(toRowView(Float32Array.from(mask), t.site)), 2, 4), t.site.name).toBe(true);
      }
    }
  });
});

describe('LT-SFT defaults', () => {
  it('deltas touch exactly the selected entries (K, plus exact ties), and a language and a task delta compose by addition', async () => {
    for (const dir of MODELS) {
      const model = await CausalLM.load(dir);
      const original = snapshotWeights(model);
      const cfg = { ...recipeTrainerConfig(ltSft.recipe), phaseSteps: [4, 3], batchSize: 4 };
      const train = async (purpose: 'language' | 'task', data: TokenizedExample[]) => {
        const method = await ltSft.createMethod(model, { purpose });
        const res = await new Trainer(model, method, cfg).train(data);
        expect(res.steps).toBe(7);
        const masks = new Map(method.tensors.map((t) => [t.name, method.mask(t.name).slice()]));
        const sel = method.selections[0];
        const adapter = method.export(model);
        // Exactly the masked entries, and the mask is K plus ties at the threshold.
        let nnz = 0;
        for (const [name, mask] of masks) {
          const d = adapter.additive.get(name);
          const want: number[] = [];
          mask.forEach((v, i) => v && want.push(i));
          expect([...(d?.indices ?? [])], name).toEqual(want);
          nnz += want.length;
        }
        expect(adapter.additive.size).toBe([...masks.values()].filter((m) => m.some((v) => v)).length);
        expect(nnz).toBe(method.selectedEntries);
        expect(nnz).toBeGreaterThanOrEqual(method.budget);
        expect(nnz - method.budget).toBeLessThanOrEqual(sel.tiesPicked);
        expectWeightsEqual(model, original);
        return adapter;
      };
      const lang = await train('language', await text(model, 'ud-pud/pud_es.txt', 24));
      const task = await train('task', await text(model, 'sentiment-labelled-sentences/yelp_labelled.txt', 24));
      // Composition is addition: fused weights = f32(w0 + f32(phi_lang + phi_task)), in any order.
      const patcher = new WeightPatcher(model.weights);
      patcher.apply(composeAdapters([task, lang]));
      const sum = new Map<string, Float64Array>();
      for (const a of [lang, task]) {
        for (const [name, d] of a.additive) {
          const acc = sum.get(name) ?? new Float64Array(model.weights.get(name)!.data.length);
          d.indices.forEach((i, k) => (acc[i] += d.values[k]));
          sum.set(name, acc);
        }
      }
      for (const [name, acc] of sum) {
        const w = model.weights.get(name)!.data;
        const w0 = original.get(name)!;
        let wrong = 0;
        for (let i = 0; i < w.length; i++) if (w[i] !== Math.fround(w0[i] + Math.fround(acc[i]))) wrong++;
        expect(wrong, name).toBe(0);
      }
      patcher.revertAll();
      expectWeightsEqual(model, original);
    }
  });
});
