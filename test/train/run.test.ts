import { describe, expect, it } from 'vitest';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { CausalLM } from '../../src/models/causal-lm.js';
import { LoraMethod } from '../../src/adapters/lora.js';
import type { TokenizedExample } from '../../src/io/datasets.js';
import { runTraining } from '../../src/train/run.js';
import { readMetrics } from '../../src/train/metrics.js';
import { loadCheckpoint, saveCheckpoint } from '../../src/train/checkpoint.js';
import { trainerConfigSchema, type TrainerState } from '../../src/train/trainer.js';

const FIXTURE = join(import.meta.dirname, '..', 'fixtures', 'models', 'llama-gqa');

function data(n: number, vocab: number): TokenizedExample[] {
  return Array.from({ length: n }, (_, i) => {
    const ids = Array.from({ length: 10 }, (_, t) => 3 + ((i * 7 + t * 13) % (vocab - 3)));
    return { inputIds: ids, labels: [...ids] };
  });
}

describe('runTraining', () => {
  it('early-stops when held-out loss stalls, logging every step and evaluation', async () => {
    const model = await CausalLM.load(FIXTURE);
    const out = mkdtempSync(join(tmpdir(), 'sparsetune-es-'));
    // A learning rate this small cannot move the loss by minDelta, so patience runs out.
    const res = await runTraining({
      model,
      method: new LoraMethod(model, { r: 2 }),
      trainer: { steps: 20, batchSize: 4, optimizer: { lr: 1e-9 }, evalEvery: 1 },
      train: data(12, model.vocabSize),
      holdout: 0.25,
      outDir: out,
      earlyStopping: { patience: 2, minDelta: 0.1 },
    });
    expect(res.stoppedEarly).toMatch(/^early stopping: eval loss did not improve/);
    expect(res.history).toHaveLength(2);
    expect(res.evalSet).toHaveLength(3);
    const lines = await readMetrics(join(out, 'metrics.jsonl'));
    expect(lines.map((l) => `${l.type}:${l.step}`)).toEqual(['eval:0', 'train:1', 'eval:1', 'train:2', 'eval:2', 'eval:2']);
    // The stop is checkpointed, with the early-stopping state, so a resume would stop alike.
    const ck = await loadCheckpoint(res.lastCheckpoint!);
    expect(ck.state.step).toBe(2);
    expect(ck.meta.extra.earlyStopping).toMatchObject({ bad: 2, bestStep: 0 });
  });

  it('needs periodic evaluations for early stopping', async () => {
    const model = await CausalLM.load(FIXTURE);
    await expect(
      runTraining({ model, method: new LoraMethod(model, {}), trainer: { steps: 2 }, train: data(4, model.vocabSize), earlyStopping: { patience: 1 } }),
    ).rejects.toThrow(/--eval-every/);
  });
});

describe('checkpoint files', () => {
  it('round-trip method state with typed arrays, optimizer moments and positions exactly', async () => {
    const dir = join(mkdtempSync(join(tmpdir(), 'sparsetune-ckpt-')), 'step-00000007');
    const state: TrainerState = {
      step: 3,
      phase: 1,
      stepsBefore: 4,
      epoch: 2,
      batchInEpoch: 5,
      config: trainerConfigSchema.parse({ steps: 9, seed: 4 }),
      params: [{ name: 'm.a', shape: [2, 2], data: new Float32Array([1, -0, 3.5, NaN]) }],
      optimizer: { t: 7, steps: [5], m: [new Float32Array([0.1, 0.2, 0.3, 0.4])], v: [new Float32Array([1e-8, 2, 3, 4])] },
      methodState: { kept: new Uint8Array([1, 0, 1]), nested: { scores: new Float32Array([0.5, 0.25]), ids: new Int32Array([9, 8]) }, list: [1, 'two'], phaseName: 'sparse' },
      initialEval: { loss: 2, ppl: Math.exp(2), tokens: 30 },
    };
    const meta = { method: 'lt-sft', methodConfig: { k: 3 }, baseFingerprint: 'sha256:x', dataHash: 'sha256:y', extra: { earlyStopping: { best: 1, bestStep: 2, bad: 0 } } };
    await saveCheckpoint(dir, state, meta);
    const back = await loadCheckpoint(dir);
    expect(back.meta).toEqual(meta);
    expect(back.state).toEqual(state);
    expect(Object.is(back.state.params[0].data[1], -0)).toBe(true);
    expect((back.state.methodState!.nested as { ids: Int32Array }).ids).toBeInstanceOf(Int32Array);
  });
});
