import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { CausalLM } from '../../src/models/causal-lm.js';
import { bundledModelPath } from '../../src/io/model-dir.js';
import { collate, loadDataset } from '../../src/io/datasets.js';

const DATA = join(import.meta.dirname, '..', '..', '..', 'shared', 'data');

describe('stories260K on TinyStories', () => {
  it('has held-out perplexity about 4.5 with 256-token windows', async () => {
    const model = await CausalLM.load(bundledModelPath());
    const windows = (await loadDataset(join(DATA, 'tinystories', 'tinystories_valid_head.txt'), model.tokenizer!, { seqLen: 256 })).slice(0, 48);
    let sum = 0;
    let tokens = 0;
    for (let i = 0; i < windows.length; i += 8) {
      const r = await model.loss(collate(windows.slice(i, i + 8), model.tokenizer!.padId));
      sum += r.loss * r.tokens;
      tokens += r.tokens;
    }
    const ppl = Math.exp(sum / tokens);
    expect(tokens).toBeGreaterThan(10_000);
    expect(ppl).toBeGreaterThan(3.5);
    expect(ppl).toBeLessThan(5.5);
  });

  it('KV-cache decode equals full recomputation', async () => {
    const model = await CausalLM.load(bundledModelPath());
    const ids = [1, 403, 407, 261, 378, 30, 500, 12, 77];
    const full = await model.logits([ids]);
    let cache = model.emptyCache(1);
    const att: number[] = [];
    const V = model.vocabSize;
    let worst = 0;
    for (let t = 0; t < ids.length; t++) {
      att.push(1);
      const r = await model.step([[ids[t]]], [att], cache);
      cache = r.cache;
      for (let v = 0; v < V; v++) worst = Math.max(worst, Math.abs(r.logits.data[v] - full.data[t * V + v]));
    }
    expect(worst).toBeLessThan(1e-4);
  });
});
