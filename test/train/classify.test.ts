import { describe, expect, it } from 'vitest';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { CausalLM } from '../../src/models/causal-lm.js';
import { bundledModelPath } from '../../src/io/model-dir.js';
import { collate, loadDataset } from '../../src/io/datasets.js';
import { argmax, classificationAccuracy, scoreLabels } from '../../src/train/classify.js';

const LABELS = [' happy', ' sad', ' a big red ball'];

/** Sum of log p(token) over ids[start..] from an unpadded single-row forward pass. */
async function manualScore(model: CausalLM, ids: number[], start: number): Promise<number> {
  const out = await model.logits([ids]);
  const V = out.shape[2];
  let s = 0;
  for (let t = start; t < ids.length; t++) {
    const row = Array.from(out.data.subarray((t - 1) * V, t * V));
    const max = Math.max(...row);
    const lse = max + Math.log(row.reduce((a, v) => a + Math.exp(v - max), 0));
    s += row[ids[t]] - lse;
  }
  return s;
}

describe('classification by label log-likelihood', () => {
  it('scores each label (+EOS) like separate unpadded passes, and matches the prompt/completion training loss', async () => {
    const model = await CausalLM.load(bundledModelPath());
    const tok = model.tokenizer!;
    const prompt = 'Tom saw the dog and he was';
    const scores = await scoreLabels(model, prompt, LABELS);
    expect(scores).toHaveLength(3);
    for (let k = 0; k < LABELS.length; k++) {
      const ids = [...tok.encode(prompt + LABELS[k]), tok.eosId!];
      const start = tok.encode(prompt).length;
      expect(Math.abs(scores[k] - (await manualScore(model, ids, start)))).toBeLessThan(1e-3);
    }
    // A tiny story model finds an emotion word likelier than a long noun phrase.
    expect(scores[2]).toBeLessThan(Math.max(scores[0], scores[1]));

    // The same tokens are what a {"prompt","completion"} training row puts the loss on.
    const dir = await mkdtemp(join(tmpdir(), 'classify-'));
    try {
      const file = join(dir, 'rows.jsonl');
      await writeFile(file, `${JSON.stringify({ prompt, completion: LABELS[0] })}\n`);
      const [ex] = await loadDataset(file, tok, { seqLen: 64 });
      const r = await model.loss(collate([ex], tok.padId));
      expect(Math.abs(-r.loss * r.tokens - scores[0])).toBeLessThan(1e-3);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }

    const mean = await scoreLabels(model, prompt, LABELS, { reduction: 'mean' });
    const n = tok.encode(prompt + LABELS[2]).length + 1 - tok.encode(prompt).length;
    expect(mean[2]).toBeCloseTo(scores[2] / n, 4);
  });

  it('computes accuracy from batched argmax predictions and validates its input', async () => {
    const model = await CausalLM.load(bundledModelPath());
    const prompts = ['Lily was very', 'The sun was', 'Tom cried because he was', 'She smiled, she was'];
    const examples = prompts.map((p, i) => ({ prompt: p, label: LABELS[i % 2] }));
    const res = await classificationAccuracy(model, examples, LABELS, { examplesPerBatch: 3 });
    expect(res.total).toBe(4);
    for (let i = 0; i < prompts.length; i++) {
      // Batched with other prompts of other lengths, scores match the one-prompt path.
      const single = await scoreLabels(model, prompts[i], LABELS);
      for (let k = 0; k < LABELS.length; k++) expect(Math.abs(res.scores[i][k] - single[k])).toBeLessThan(1e-3);
      expect(res.predictions[i]).toBe(LABELS[argmax(single)]);
    }
    expect(res.correct).toBe(res.predictions.filter((p, i) => p === examples[i].label).length);
    expect(res.accuracy).toBe(res.correct / 4);
    await expect(classificationAccuracy(model, [{ prompt: 'x', label: ' nope' }], LABELS)).rejects.toThrow(/not among the candidate labels/);
    await expect(scoreLabels(model, 'x', [''], { appendEos: false })).rejects.toThrow(/adds no tokens/);
  });
});
