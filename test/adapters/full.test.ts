import { describe, expect, it } from 'vitest';
import { join } from 'node:path';
import { CausalLM } from '../../src/models/causal-lm.js';
import { bundledModelPath } from '../../src/io/model-dir.js';
import { loadDataset, splitHoldout } from '../../src/io/datasets.js';
import { FullFinetuneMethod, configSchema, createMethod } from '../../src/adapters/full.js';
import { methodModule } from '../../src/train/registry.js';
import { Trainer } from '../../src/train/trainer.js';
import { WeightPatcher } from '../../src/merge/apply.js';
import { fingerprintWeights } from '../../src/merge/fingerprint.js';

const DATA = join(import.meta.dirname, '..', '..', '..', 'shared', 'data');
const FIXTURES = join(import.meta.dirname, '..', 'fixtures', 'models');

describe('full fine-tuning', () => {
  it('lowers held-out loss, and its additive export on a fresh base reproduces the trained logits', async () => {
    const model = await CausalLM.load(bundledModelPath());
    const pristineFingerprint = fingerprintWeights(model.weights, { cache: false });
    const all = await loadDataset(join(DATA, 'ud-pud', 'pud_en.txt'), model.tokenizer!, { seqLen: 64 });
    const { train, eval: held } = splitHoldout(all, 0.1, 1);
    const full = new FullFinetuneMethod(model);
    // Every parameter is trained, and each trainable IS the model's buffer (updated in place).
    expect(full.params().map((p) => p.name).sort()).toEqual([...model.weights.keys()].sort());
    for (const p of full.params()) expect(p.data).toBe(model.weights.get(p.name)!.data);
    expect(full.params().find((p) => p.name.endsWith('input_layernorm.weight'))!.decay).toBe(false);
    expect(full.params().find((p) => p.name.endsWith('q_proj.weight'))!.decay).toBe(true);

    const trainer = new Trainer(model, full, { steps: 12, batchSize: 8, optimizer: { lr: 2e-3 }, evalBatches: 4 });
    const res = await trainer.train(train, held);
    expect(res.finalEval!.loss).toBeLessThan(res.initialEval!.loss - 0.05);

    const ids = [[1, 403, 407, 261, 378, 300, 20, 7]];
    const trained = await model.logits(ids);
    const adapter = full.export(model);
    expect(adapter.meta.kind).toBe('additive');
    expect(adapter.meta.base.fingerprint).toBe(pristineFingerprint); // the original's, not the trained weights'
    expect(adapter.additive.size).toBe(model.weights.size);

    const fresh = await CausalLM.load(bundledModelPath());
    const baseLogits = await fresh.logits(ids);
    new WeightPatcher(fresh.weights).apply(adapter);
    const fused = await fresh.logits(ids);
    let worst = 0;
    let moved = 0;
    for (let i = 0; i < fused.data.length; i++) {
      worst = Math.max(worst, Math.abs(fused.data[i] - trained.data[i]));
      moved = Math.max(moved, Math.abs(baseLogits.data[i] - trained.data[i]));
    }
    expect(moved).toBeGreaterThan(1e-2); // training changed the logits, so the match below means something
    expect(worst).toBeLessThan(1e-4);

    full.restoreBase();
    expect(fingerprintWeights(model.weights, { cache: false })).toBe(pristineFingerprint);
  });

  it('restricts training to targetModules (weights and biases) and validates its config', async () => {
    const model = await CausalLM.load(join(FIXTURES, 'qwen2'));
    const m = new FullFinetuneMethod(model, { targetModules: ['q_proj', 'lm_head'] });
    const names = m.params().map((p) => p.name);
    const layers = model.sites().filter((s) => s.kind === 'q_proj').length;
    expect(names.filter((n) => n.endsWith('q_proj.weight'))).toHaveLength(layers);
    expect(names.filter((n) => n.endsWith('q_proj.bias'))).toHaveLength(layers);
    expect(names.some((n) => /k_proj|norm/.test(n))).toBe(false);
    expect(names).toContain(model.sites().find((s) => s.kind === 'lm_head')!.weightName);
    expect(m.params().find((p) => p.name.endsWith('q_proj.bias'))!.decay).toBe(false);
    // Nothing trained yet: the delta is empty.
    expect(m.export(model).additive.size).toBe(0);
    expect(() => new FullFinetuneMethod(model, { targetModules: ['nope_proj'] })).toThrow(/match no layer/);
    expect(() => createMethod(model, { targetModules: [] })).toThrow(/full config/);
    expect(configSchema.parse({})).toEqual({});
    expect((await methodModule('full')).summary).toMatch(/Full fine-tuning/);
  });
});
