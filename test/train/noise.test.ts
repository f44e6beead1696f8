import { describe, expect, it } from 'vitest';
import { Graph } from '../../src/engine/ir.js';
import { seededDropout } from '../../src/engine/noise.js';
import { defaultRuntime } from '../../src/engine/runtime.js';
import { reshape } from '../../src/engine/ops/index.js';
import { noiseFeeds, noiseSeed, noiseSpecs } from '../../src/train/noise-feeds.js';
import type { HostTensor } from '../../src/tensor.js';

describe('seeded dropout noise', () => {
  it('declares one noise input per use, sized from the other feeds; drops about p and rescales by 1/(1-p)', async () => {
    const g = new Graph('noise');
    const x = g.input('x', 'f32', ['batch', 'seq', 16]);
    g.output('y1', seededDropout(x, 0.25, 'site'));
    g.output('y2', seededDropout(reshape(x, ['batch*seq', 16]), 0.25, 'site')); // same key: its own input
    expect(seededDropout(x, 0, 'off')).toBe(x);
    const compiled = await defaultRuntime().compile(g);
    const specs = noiseSpecs(compiled.inputs);
    expect(specs.map((s) => s.name).sort()).toEqual(['noise:site', 'noise:site#1']);

    const feeds: Record<string, HostTensor> = { x: { dtype: 'f32', shape: [3, 50, 16], data: new Float32Array(2400).fill(1) } };
    const run = async (seed: number) => compiled.run({ ...feeds, ...noiseFeeds(specs, compiled.inputs, feeds, seed) });
    const a = await run(noiseSeed(0, 5, 0));
    const b = await run(noiseSeed(0, 5, 0));
    const c = await run(noiseSeed(0, 5, 1));
    const y1 = a.y1.data as Float32Array;
    expect(Array.from(y1)).toEqual(Array.from(b.y1.data as Float32Array));
    expect(Array.from(y1)).not.toEqual(Array.from(c.y1.data as Float32Array));
    expect(Array.from(y1)).not.toEqual(Array.from(a.y2.data as Float32Array));
    expect(new Set(y1)).toEqual(new Set([0, Math.fround(1 / 0.75)]));
    const dropped = y1.filter((v) => v === 0).length / y1.length;
    expect(Math.abs(dropped - 0.25)).toBeLessThan(0.03);
  });

  it('names the symbolic dim it cannot size', () => {
    const specs = [{ name: 'noise:k', shape: ['batch', 4] }];
    expect(() => noiseFeeds(specs, specs, {}, 1)).toThrow(/symbolic dim 'batch'/);
  });
});
