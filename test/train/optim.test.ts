import { describe, expect, it } from 'vitest';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Optimizer, optimizerSchema } from '../../src/train/optim.js';
import type { TrainableParam } from '../../src/train/method.js';
import { CHECKPOINT_JSON, loadCheckpoint, saveCheckpoint } from '../../src/train/checkpoint.js';
import { trainerConfigSchema, type TrainerState } from '../../src/train/trainer.js';
import { mulberry32 } from '../../src/util/random.js';
import { randomTokenExamples, sameBits } from '../helpers.js';
import { CausalLM } from '../../src/models/causal-lm.js';
import { LoraMethod } from '../../src/adapters/lora.js';
import { Trainer } from '../../src/train/trainer.js';

const param = (name: string, n: number, seed: number): TrainableParam => {
  const r = mulberry32(seed);
  return { name, shape: [n], data: Float32Array.from({ length: n }, () => r() - 0.5), decay: true };
};
const grads = (n: number, seed: number) => {
  const r = mulberry32(seed);
  return Float32Array.from({ length: n }, () => (r() - 0.5) * 0.1);
};

describe('AdamW step counts per parameter', () => {
  it('a param that skips steps gets the bias correction of its own updates (as a fresh optimizer would)', () => {
    const cfg = optimizerSchema.parse({ lr: 1e-2, weightDecay: 0.05, beta2: 0.95 });
    const p = param('p', 16, 1);
    const q = param('q', 16, 2);
    const qAlone = { ...q, data: q.data.slice() };
    const both = new Optimizer([p, q], cfg);
    const alone = new Optimizer([qAlone], cfg);
    // q gets gradients in steps 1 and 3 only (an unused MoSA module, a dead GS-LoRA group in step 2).
    both.step([grads(16, 10), grads(16, 11)], 1e-2);
    alone.step([grads(16, 11)], 1e-2);
    const before = q.data.slice();
    both.step([grads(16, 12), null], 1e-2);
    expect(sameBits(q.data, before)).toBe(true); // no gradient: no update, no decay
    both.step([grads(16, 13), grads(16, 14)], 1e-2);
    alone.step([grads(16, 14)], 1e-2);
    expect(sameBits(q.data, qAlone.data)).toBe(true);
    expect(both.state().t).toBe(3);
    expect(both.state().steps).toEqual([3, 2]);

    // A global count (bias correction 1 - beta^3 for q's second update) would move q differently.
    const g = grads(16, 14);
    const m1 = grads(16, 11).map((x) => 0.1 * x);
    const v1 = grads(16, 11).map((x) => 0.05 * x * x);
    const ownStep = (t: number) => {
      const w = before.slice();
      for (let i = 0; i < w.length; i++) {
        const m = 0.9 * m1[i] + 0.1 * g[i];
        const v = 0.95 * v1[i] + 0.05 * g[i] * g[i];
        w[i] -= 1e-2 * (m / (1 - 0.9 ** t) / (Math.sqrt(v / (1 - 0.95 ** t)) + 1e-8) + 0.05 * w[i]);
      }
      return w;
    };
    const dist = (a: Float32Array, b: Float32Array) => Math.max(...a.map((x, i) => Math.abs(x - b[i])));
    expect(dist(q.data, ownStep(2))).toBeLessThan(1e-6);
    expect(dist(q.data, ownStep(3))).toBeGreaterThan(1e-4);
  });

  it('loadState restores the counts and refuses a state of another size', () => {
    const cfg = optimizerSchema.parse({});
    const a = new Optimizer([param('p', 4, 1), param('q', 4, 2)], cfg);
    a.step([grads(4, 1), null], 1e-3);
    const b = new Optimizer([param('p', 4, 1), param('q', 4, 2)], cfg);
    b.loadState(a.state());
    expect(b.state().steps).toEqual([1, 0]);
    const c = new Optimizer([param('p', 4, 1)], cfg);
    expect(() => c.loadState(a.state())).toThrow(/step counts for 2 params/);
  });
});

describe('checkpoint optimizer step counts', () => {
  const state = (): TrainerState => ({
    step: 3,
    phase: 0,
    stepsBefore: 0,
    epoch: 0,
    batchInEpoch: 3,
    config: trainerConfigSchema.parse({ steps: 9 }),
    params: [
      { name: 'a', shape: [2], data: new Float32Array([1, 2]) },
      { name: 'b', shape: [2], data: new Float32Array([3, 4]) },
    ],
    optimizer: { t: 3, steps: [3, 1], m: [new Float32Array(2), new Float32Array(2)], v: [new Float32Array(2), new Float32Array(2)] },
  });
  const meta = { method: 'lora', methodConfig: {}, baseFingerprint: 'sha256:x', dataHash: 'sha256:y', extra: {} };

  it('round-trips per-param counts; a format-1 checkpoint (global count) loads with every count = t', async () => {
    const dir = join(mkdtempSync(join(tmpdir(), 'sparsetune-optim-')), 'step-3');
    await saveCheckpoint(dir, state(), meta);
    expect((await loadCheckpoint(dir)).state.optimizer!.steps).toEqual([3, 1]);

    const file = join(dir, CHECKPOINT_JSON);
    const json = JSON.parse(readFileSync(file, 'utf8'));
    json.format = 'sparsetune.checkpoint/1';
    delete json.optimizer.steps;
    writeFileSync(file, JSON.stringify(json));
    expect((await loadCheckpoint(dir)).state.optimizer!.steps).toEqual([3, 3]);

    json.format = 'sparsetune.checkpoint/2';
    json.optimizer.steps = [1];
    writeFileSync(file, JSON.stringify(json));
    await expect(loadCheckpoint(dir)).rejects.toThrow(/2 slots but 1 step counts/);
  });
});

describe('per-phase step counts', () => {
  it('phaseSteps runs each phase its own number of steps, with its own schedule', async () => {
    const model = await CausalLM.load(join(import.meta.dirname, '..', 'fixtures', 'models', 'llama-gqa'));
    const lora = new LoraMethod(model, { r: 2 });
    let phases = 0;
    const twoPhase = Object.assign(Object.create(lora) as typeof lora, { nextPhase: () => ++phases < 2 });
    const data = randomTokenExamples(mulberry32(3), 6, { length: 8, hi: 90 });
    const res = await new Trainer(model, twoPhase, { steps: 9, phaseSteps: [2, 3], batchSize: 2, schedule: { type: 'linear', minRatio: 0 } }).train(data);
    expect(res.steps).toBe(5);
    expect(res.history.map((h) => [h.phase, h.step])).toEqual([[0, 1], [0, 2], [1, 1], [1, 2], [1, 3]]);
    // Linear decay over each phase's own length.
    [1e-3, 5e-4, 1e-3, 1e-3 * (2 / 3), 1e-3 / 3].forEach((lr, k) => expect(res.history[k].lr).toBeCloseTo(lr, 12));
  });
});
