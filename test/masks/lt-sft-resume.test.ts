import { describe, expect, it } from 'vitest';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { CausalLM } from '../../src/models/causal-lm.js';
import { LtSftMethod } from '../../src/masks/lt-sft.js';
import { Trainer, type TrainerConfigInput } from '../../src/train/trainer.js';
import { runTraining } from '../../src/train/run.js';
import { ANSI_C_LCG, lcg32 } from '../../src/util/random.js';
import { randomTokenExamples } from '../helpers.js';

const FIXTURE = join(import.meta.dirname, '..', 'fixtures', 'models', 'llama-gqa');
const CFG: TrainerConfigInput = { steps: 4, batchSize: 2, optimizer: { lr: 1e-2 }, schedule: { type: 'linear' }, seed: 2 };
const LT = { purpose: 'language' as const, density: 0.05 };

describe('LT-SFT checkpoints', () => {
  it('a run interrupted in its sparse phase resumes to the same adapter, bit for bit', async () => {
    const data = randomTokenExamples(lcg32(4, ANSI_C_LCG), 6, { length: [8, 10], hi: 90 });

    const refModel = await CausalLM.load(FIXTURE);
    const refMethod = new LtSftMethod(refModel, LT);
    const ref = await new Trainer(refModel, refMethod, CFG).train(data);
    const want = refMethod.export(refModel);

    const out = mkdtempSync(join(tmpdir(), 'sparsetune-ltsft-resume-'));
    const stop = new AbortController();
    const m1 = await CausalLM.load(FIXTURE);
    const first = await runTraining({
      model: m1,
      method: new LtSftMethod(m1, LT),
      trainer: CFG,
      train: data,
      holdout: 0,
      outDir: out,
      signal: stop.signal,
      callbacks: { onStep: (log) => void (log.globalStep === 6 && stop.abort()) },
    });
    expect(first.stoppedEarly).toBe('interrupted');

    const m2 = await CausalLM.load(FIXTURE); // a fresh process would load the pristine base
    const method = new LtSftMethod(m2, LT);
    const second = await runTraining({ model: m2, method, trainer: CFG, train: data, holdout: 0, outDir: out, resume: true });
    expect(second.resumedFrom).toBe(6);
    expect(second.history.map((h) => h.loss)).toEqual(ref.history.slice(6).map((h) => h.loss));
    const got = method.export(m2);
    expect([...got.additive.keys()]).toEqual([...want.additive.keys()]);
    for (const [name, d] of want.additive) {
      const g = got.additive.get(name)!;
      expect(Buffer.from(g.indices.buffer).equals(Buffer.from(d.indices.buffer))).toBe(true);
      expect(Buffer.from(g.values.buffer).equals(Buffer.from(d.values.buffer))).toBe(true);
    }
  });
});
