import { readFileSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { CausalLM } from '../../src/models/causal-lm.js';
import { bundledModelPath } from '../../src/io/model-dir.js';

const FIX = join(import.meta.dirname, '..', 'fixtures');

interface Reference {
  input_ids: number[][];
  logits: number[][][];
  loss: number;
  padded: { input_ids: number[][]; attention_mask: number[][]; logits: (number[] | null)[][] };
}

function maxAbsDiff(got: Float32Array, offset: number, want: number[]): number {
  let m = 0;
  for (let i = 0; i < want.length; i++) m = Math.max(m, Math.abs(got[offset + i] - want[i]));
  return m;
}

describe('logits match an independent PyTorch implementation', () => {
  const names = readdirSync(join(FIX, 'models'));
  it('has the fixture models', () => expect(names.length).toBeGreaterThanOrEqual(7));
  for (const name of names) {
    it(`${name}: full batch, left-padded batch and loss`, async () => {
      const dir = join(FIX, 'models', name);
      const ref = JSON.parse(readFileSync(join(dir, 'reference.json'), 'utf8')) as Reference;
      const model = await CausalLM.load(dir);
      const V = model.vocabSize;
      const T = ref.input_ids[0].length;
      const out = await model.logits(ref.input_ids);
      expect(out.shape).toEqual([2, T, V]);
      let worst = 0;
      for (let b = 0; b < 2; b++) for (let t = 0; t < T; t++) worst = Math.max(worst, maxAbsDiff(out.data, (b * T + t) * V, ref.logits[b][t]));
      expect(worst).toBeLessThan(1e-4);

      const padded = await model.logits(ref.padded.input_ids, { attention: ref.padded.attention_mask });
      let worstPad = 0;
      ref.padded.logits.forEach((row, b) =>
        row.forEach((want, t) => {
          if (want) worstPad = Math.max(worstPad, maxAbsDiff(padded.data, (b * T + t) * V, want));
        }),
      );
      expect(worstPad).toBeLessThan(1e-4);

      const ids = BigInt64Array.from(ref.input_ids[0].map(BigInt));
      const { loss } = await model.loss({ inputIds: ids, labels: ids, attentionMask: ids.map(() => 1n), batchSize: 1, seqLen: T });
      expect(Math.abs(loss - ref.loss)).toBeLessThan(1e-4);
    });
  }
});

describe('the bundled stories260K model', () => {
  it('matches the PyTorch logits and greedy continuation', async () => {
    const ref = JSON.parse(readFileSync(join(FIX, 'stories260K-reference.json'), 'utf8'));
    const model = await CausalLM.load(bundledModelPath());
    const out = await model.logits([ref.input_ids]);
    let worst = 0;
    ref.logits.forEach((row: number[], t: number) => (worst = Math.max(worst, maxAbsDiff(out.data, t * 512, row))));
    expect(worst).toBeLessThan(1e-4);
  });
});
