import { describe, expect, it } from 'vitest';
import { join } from 'node:path';
import { CausalLM } from '../../src/models/causal-lm.js';
import { bundledModelPath } from '../../src/io/model-dir.js';
import { loadDataset, splitHoldout } from '../../src/io/datasets.js';
import { LoraMethod } from '../../src/adapters/lora.js';
import { Trainer } from '../../src/train/trainer.js';
import { WeightPatcher } from '../../src/merge/apply.js';
import { paramFeeds } from '../../src/train/param-feeds.js';

const DATA = join(import.meta.dirname, '..', '..', '..', 'shared', 'data');

describe('LoRA', () => {
  it('lowers held-out loss on a shifted domain and the fused model equals the adapted one', async () => {
    const model = await CausalLM.load(bundledModelPath());
    const all = await loadDataset(join(DATA, 'ud-pud', 'pud_en.txt'), model.tokenizer!, { seqLen: 64 });
    const { train, eval: held } = splitHoldout(all, 0.1, 1);
    const lora = new LoraMethod(model, { r: 4, alpha: 8, targetModules: ['q_proj', 'v_proj', 'o_proj', 'down_proj'] });
    const trainer = new Trainer(model, lora, { steps: 30, batchSize: 8, optimizer: { lr: 3e-3 }, evalBatches: 4 });
    const res = await trainer.train(train, held);
    expect(res.finalEval!.loss).toBeLessThan(res.initialEval!.loss - 0.05);

    const ids = [[1, 403, 407, 261, 378, 300]];
    const adapted = await model.logits(ids, { hooks: lora.hooks('eval'), extraFeeds: paramFeeds(lora.params()) });
    const before = new Map([...model.weights].map(([k, v]) => [k, v.data.slice()]));
    const patcher = new WeightPatcher(model.weights);
    const h = patcher.apply(lora.export(model));
    const fused = await model.logits(ids);
    let worst = 0;
    for (let i = 0; i < fused.data.length; i++) worst = Math.max(worst, Math.abs(fused.data[i] - adapted.data[i]));
    expect(worst).toBeLessThan(1e-4);
    patcher.revert(h);
    for (const [k, v] of model.weights) expect(Buffer.compare(Buffer.from(v.data.buffer), Buffer.from(before.get(k)!.buffer))).toBe(0);
  });
});
