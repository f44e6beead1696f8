import { describe, expect, it } from 'vitest';
import { formatDuration, ProgressBar } from '../../src/train/progress.js';
import { EarlyStopping } from '../../src/train/early-stopping.js';
import type { StepLog } from '../../src/train/trainer.js';

function sink(isTTY: boolean) {
  const chunks: string[] = [];
  return { chunks, stream: { isTTY, columns: 120, write: (c: string) => chunks.push(c) } };
}
const log = (step: number, loss = 2.5): StepLog => ({ step, loss, lr: 1e-3, gradNorm: 1, tokens: 100, tokensPerSecond: 2500, metrics: {} });

describe('ProgressBar', () => {
  it('on a terminal rewrites one line with bar, step/total, loss, tokens/s and ETA', () => {
    let now = 0;
    const { chunks, stream } = sink(true);
    const bar = new ProgressBar({ stream, now: () => now });
    bar.start(10);
    now = 2000;
    bar.update(log(1, 3.14159));
    now = 4000;
    bar.update(log(2));
    bar.message('eval @ step 2: loss 2.0');
    bar.finish();
    expect(chunks[0]).toMatch(/^\r\[##-{18}\] step 1\/10 loss 3\.1416 lr 1\.00e-3 2\.5k tok\/s ETA 18s/);
    expect(chunks[1]).toMatch(/^\r\[####-{16}\] step 2\/10 .*ETA 16s/);
    expect(chunks.slice(2)).toEqual(['\n', 'eval @ step 2: loss 2.0\n']);
    expect(chunks.join('')).not.toMatch(/step 1\/10[^\r]*\n/);
  });

  it('without a terminal prints plain lines every N steps (and the first and last)', () => {
    const { chunks, stream } = sink(false);
    const bar = new ProgressBar({ stream, every: 4, now: () => 0 });
    bar.start(10);
    for (let s = 1; s <= 10; s++) bar.update(log(s));
    bar.finish();
    expect(chunks.map((c) => /step (\d+)\//.exec(c)![1])).toEqual(['1', '4', '8', '10']);
    expect(chunks.every((c) => c.endsWith('\n') && !c.includes('\r'))).toBe(true);
  });

  it('counts ETA from the resumed step', () => {
    let now = 0;
    const bar = new ProgressBar({ stream: sink(false).stream, now: () => now });
    bar.start(100, 50);
    now = 10_000;
    expect(bar.line(log(60))).toMatch(/ETA 40s$/);
    expect([formatDuration(59.4), formatDuration(61), formatDuration(3723), formatDuration(NaN)]).toEqual(['59s', '1:01', '1:02:03', '?']);
  });
});

describe('EarlyStopping', () => {
  it('stops after `patience` evaluations without an improvement larger than minDelta, and its state round-trips', () => {
    const es = new EarlyStopping({ patience: 2, minDelta: 0.01 });
    expect(es.update(0, 3)).toBeNull();
    expect(es.update(1, 2.995)).toBeNull(); // within minDelta: bad 1
    expect(es.update(2, 2.5)).toBeNull(); // improvement resets
    expect(es.update(3, 2.6)).toBeNull();
    const copy = new EarlyStopping({ patience: 2, minDelta: 0.01 });
    copy.loadState(es.state());
    expect(copy.update(4, 2.5)).toMatch(/did not improve on 2\.5000 \(step 2\) for 2 evaluation/);
    expect(es.bestLoss).toBe(2.5);
    expect(() => new EarlyStopping({ patience: 0 })).toThrow(/patience/);
  });
});
