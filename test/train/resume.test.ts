import { describe, expect, it } from 'vitest';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { CausalLM } from '../../src/models/causal-lm.js';
import { LoraMethod } from '../../src/adapters/lora.js';
import { MosaMethod } from '../../src/adapters/mosa.js';
import type { TokenizedExample } from '../../src/io/datasets.js';
import { Trainer, type TrainerConfigInput } from '../../src/train/trainer.js';
import { runTraining } from '../../src/train/run.js';
import { readMetrics } from '../../src/train/metrics.js';
import { CheckpointManager, loadCheckpoint } from '../../src/train/checkpoint.js';
import { ANSI_C_LCG, lcg32 } from '../../src/util/random.js';
import { randomTokenExamples } from '../helpers.js';

const FIXTURE = join(import.meta.dirname, '..', 'fixtures', 'models', 'llama-gqa');

/** Seeded token sequences of varied length (so batches need padding and epochs wrap). */
function syntheticData(n: number, vocab: number, seed: number): TokenizedExample[] {
  return randomTokenExamples(lcg32(seed, ANSI_C_LCG), n, { length: [8, 9, 10, 11, 12], hi: vocab });
}

const LORA = { r: 4, alpha: 8, targetModules: ['q_proj', 'v_proj', 'down_proj'], seed: 3 };
const CFG: TrainerConfigInput = {
  steps: 6,
  batchSize: 2,
  gradAccum: 2,
  optimizer: { lr: 1e-2, weightDecay: 0.01 },
  schedule: { type: 'cosine', warmupSteps: 1 },
  evalEvery: 2,
  seed: 5,
};

describe('checkpoints and exact resume', () => {
  it('an interrupted then resumed run reproduces the uninterrupted losses and params bit for bit', async () => {
    const model = await CausalLM.load(FIXTURE);
    const data = syntheticData(7, model.vocabSize, 11);
    const evalSet = syntheticData(3, model.vocabSize, 99);

    const full = new LoraMethod(model, LORA);
    const reference = await new Trainer(model, full, CFG).train(data, evalSet);
    expect(reference.history).toHaveLength(6);

    const out = mkdtempSync(join(tmpdir(), 'sparsetune-resume-'));
    const stop = new AbortController();
    const first = await runTraining({
      model,
      method: new LoraMethod(model, LORA),
      trainer: CFG,
      train: data,
      eval: evalSet,
      outDir: out,
      checkpointEvery: 4,
      signal: stop.signal,
      callbacks: { onStep: (log) => void (log.globalStep === 3 && stop.abort()) },
    });
    expect(first.stoppedEarly).toBe('interrupted');
    expect(first.history.map((h) => h.loss)).toEqual(reference.history.slice(0, 3).map((h) => h.loss));
    expect((await new CheckpointManager(join(out, 'checkpoints')).list()).map((c) => c.step)).toEqual([3]);

    const resumedMethod = new LoraMethod(model, LORA);
    const second = await runTraining({ model, method: resumedMethod, trainer: CFG, train: data, eval: evalSet, outDir: out, checkpointEvery: 4, resume: true });
    expect(second.resumedFrom).toBe(3);
    expect(second.history.map((h) => h.globalStep)).toEqual([4, 5, 6]);
    second.history.forEach((h, k) => expect(Object.is(h.loss, reference.history[3 + k].loss)).toBe(true));
    expect(second.finalEval!.loss).toBe(reference.finalEval!.loss);
    const want = full.params();
    resumedMethod.params().forEach((p, k) => expect(Buffer.from(p.data.buffer).equals(Buffer.from(want[k].data.buffer))).toBe(true));

    // metrics.jsonl reads like one run: every step once, in order, the same losses.
    const lines = await readMetrics(join(out, 'metrics.jsonl'));
    const trainLines = lines.filter((l) => l.type === 'train');
    expect(trainLines.map((l) => l.step)).toEqual([1, 2, 3, 4, 5, 6]);
    expect(trainLines.map((l) => l.loss)).toEqual(reference.history.map((h) => h.loss));
    expect(lines.filter((l) => l.type === 'eval').map((l) => l.step)).toEqual([0, 2, 4, 6]);

    // The final checkpoint holds the optimizer moments the trainer ended with.
    const last = await loadCheckpoint(second.lastCheckpoint!);
    expect(last.state.step).toBe(6);
    expect(last.state.optimizer!.t).toBe(6);
    expect((await new CheckpointManager(join(out, 'checkpoints')).list()).map((c) => c.step)).toEqual([4, 6]);
  });

  it('refuses to resume with different trainer settings or data, naming what differs', async () => {
    const model = await CausalLM.load(FIXTURE);
    const data = syntheticData(6, model.vocabSize, 1);
    const out = mkdtempSync(join(tmpdir(), 'sparsetune-resume-bad-'));
    await runTraining({ model, method: new LoraMethod(model, LORA), trainer: { ...CFG, steps: 2 }, train: data, holdout: 0, outDir: out });
    await expect(
      runTraining({ model, method: new LoraMethod(model, LORA), trainer: { ...CFG, steps: 2, batchSize: 3 }, train: data, holdout: 0, outDir: out, resume: true }),
    ).rejects.toThrow(/batchSize: checkpoint 2, now 3/);
    await expect(
      runTraining({ model, method: new LoraMethod(model, LORA), trainer: { ...CFG, steps: 2 }, train: data.slice(1), holdout: 0, outDir: out, resume: true }),
    ).rejects.toThrow(/training data/);
    await expect(
      runTraining({ model, method: new LoraMethod(model, { ...LORA, r: 2 }), trainer: { ...CFG, steps: 2 }, train: data, holdout: 0, outDir: out, resume: true }),
    ).rejects.toThrow(/method config differs/);
    const empty = mkdtempSync(join(tmpdir(), 'sparsetune-resume-none-'));
    await expect(runTraining({ model, method: new LoraMethod(model, LORA), trainer: CFG, train: data, outDir: empty, resume: true })).rejects.toThrow(/no checkpoint/);
  });
});

describe('seeded dropout and skipped steps resume exactly', () => {
  for (const [name, make] of [
    ['LoRA with dropout 0.2', (m: CausalLM) => new LoraMethod(m, { ...LORA, dropout: 0.2 })],
    ['MoSA (dropout 0.1; unused modules skip steps)', (m: CausalLM) => new MosaMethod(m, { bottleneck: 8, modules: 4, dropout: 0.1, seed: 2 })],
  ] as const) {
    it(`${name}: same seed, same run bit for bit; an interrupted run resumes onto it; another seed differs`, async () => {
      const model = await CausalLM.load(FIXTURE);
      const data = syntheticData(7, model.vocabSize, 12);
      const cfg = { ...CFG, evalEvery: 0 };
      const a = await new Trainer(model, make(model), cfg).train(data);
      const b = await new Trainer(model, make(model), cfg).train(data);
      a.history.forEach((h, k) => expect(Object.is(h.loss, b.history[k].loss)).toBe(true));
      const other = await new Trainer(model, make(model), { ...cfg, seed: 6 }).train(data);
      expect(other.history.map((h) => h.loss)).not.toEqual(a.history.map((h) => h.loss));

      const ref = make(model);
      const reference = await new Trainer(model, ref, cfg).train(data);
      const out = mkdtempSync(join(tmpdir(), 'sparsetune-resume-noise-'));
      const stop = new AbortController();
      await runTraining({ model, method: make(model), trainer: cfg, train: data, holdout: 0, outDir: out, signal: stop.signal, callbacks: { onStep: (l) => void (l.globalStep === 4 && stop.abort()) } });
      const resumed = make(model);
      const second = await runTraining({ model, method: resumed, trainer: cfg, train: data, holdout: 0, outDir: out, resume: true });
      second.history.forEach((h, k) => expect(Object.is(h.loss, reference.history[4 + k].loss)).toBe(true));
      const want = ref.params();
      resumed.params().forEach((p, k) => expect(Buffer.from(p.data.buffer).equals(Buffer.from(want[k].data.buffer)), p.name).toBe(true));
    });
  }
});
