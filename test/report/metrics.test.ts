import { describe, expect, it } from 'vitest';
import { parseMetrics, summarizeRun } from '../../src/report/metrics.js';

describe('parseMetrics', () => {
  it('reads the trainer format, variants of it, and skips what it cannot use', () => {
    const lines = [
      { type: 'eval', step: 0, kind: 'initial', loss: 3, ppl: Math.exp(3), tokens: 100 },
      { type: 'train', step: 1, phase: 0, loss: 2.5, lr: 1e-3, gradNorm: 0.5, tokens: 64, tokensPerSecond: 1000, time: 't', lm_loss: 2.4 },
      // The brief's shape: "step" type, nested method metrics.
      { type: 'step', step: 2, loss: 2.25, lr: 2e-3, gradNorm: 0.25, tokens: 64, tokensPerSecond: 3000, metrics: { penalty: 0.1 } },
      // snake_case keys, NaN written as null.
      { type: 'train', global_step: 3, loss: null, learning_rate: 3e-3, grad_norm: 0.125, tokens: 64, tokens_per_second: 2000 },
      { type: 'checkpoint', step: 3, path: '/x' },
      { type: 'train', step: -1, loss: 1 },
      { type: 'eval', step: 3, kind: 'final', loss: 2 },
    ].map((l) => JSON.stringify(l));
    lines.splice(3, 0, '');
    lines.push('{"type":"train","step":4,"lo'); // torn last line

    const m = parseMetrics(lines.join('\n'));
    expect(m.steps.map((s) => s.step)).toEqual([1, 2, 3]);
    expect(m.steps[0]).toMatchObject({ loss: 2.5, lr: 1e-3, gradNorm: 0.5, tokensPerSecond: 1000, phase: 0, extra: { lm_loss: 2.4 } });
    expect(m.steps[1].extra).toEqual({ penalty: 0.1 });
    expect(m.steps[2]).toMatchObject({ loss: undefined, lr: 3e-3, gradNorm: 0.125, tokensPerSecond: 2000 });
    expect(m.evals.map((e) => [e.step, e.kind, e.loss])).toEqual([[0, 'initial', 3], [3, 'final', 2]]);
    expect(m.evals[1].ppl).toBeCloseTo(Math.exp(2), 10); // derived from the loss when absent
    expect(m.unknownTypes).toBe(1);
    expect(m.badLines).toBe(2);
    expect(m.problems[0]).toMatch(/^line 7: step line: step/);
    expect(m.problems[1]).toMatch(/^line 9: not valid JSON/);

    const s = summarizeRun(m);
    expect(s).toMatchObject({ steps: 3, firstLoss: 2.5, lastLoss: 2.25, tokens: 192, meanTokensPerSecond: 2000, phases: 1 });
    expect(s.initialEval?.loss).toBe(3);
    expect(s.finalEval?.loss).toBe(2);
  });

  it('sorts a resumed run by step and counts phases', () => {
    const text = [
      { type: 'train', step: 3, phase: 1, loss: 1 },
      { type: 'train', step: 1, phase: 0, loss: 3 },
      { type: 'train', step: 2, phase: 0, loss: 2 },
    ].map((l) => JSON.stringify(l)).join('\n');
    const m = parseMetrics(text);
    expect(m.steps.map((s) => s.loss)).toEqual([3, 2, 1]);
    expect(summarizeRun(m).phases).toBe(2);
    expect(summarizeRun(m).finalEval).toBeUndefined();
  });
});
