/**
 * The bounded session cache: native sessions stay within the limit however many graphs are
 * compiled, evicted ones are released (and never while a run uses them), and an evicted
 * graph compiles again on its next run with the same results, on small graphs and on a
 * real model run with many adapter hook sets.
 */
import * as path from 'node:path';
import { describe, expect, it } from 'vitest';
import { Graph } from '../../src/engine/ir.js';
import { add, constTensor, mul } from '../../src/engine/ops/index.js';
import { Runtime } from '../../src/engine/runtime.js';
import { SessionCache } from '../../src/engine/session-cache.js';
import { CausalLM } from '../../src/models/causal-lm.js';
import type { ModelHooks } from '../../src/models/hooks.js';
import { sameBits } from '../helpers.js';

/** y = x * k + k, a distinct graph (and session) per k. */
function scaleGraph(k: number): Graph {
  const g = new Graph(`scale-${k}`);
  const x = g.input('x', 'f32', ['n']);
  const c = constTensor(g, { dtype: 'f32', shape: [1], data: Float32Array.of(k) }, 'k');
  g.output('y', add(mul(x, c), c));
  return g;
}
const X = { dtype: 'f32' as const, shape: [4], data: Float32Array.of(1, -2, 0.5, 3) };

describe('SessionCache (fake native sessions)', () => {
  it('keeps at most maxSessions, evicts the least recently used idle one, and never one in use', async () => {
    const released: string[] = [];
    let live = 0;
    let gate: () => void = () => {};
    const native = (name: string) => {
      live++;
      return {
        inputNames: ['x'],
        outputNames: ['y'],
        run: (async () => {
          if (name === 'slow') await new Promise<void>((r) => (gate = r));
          return { name };
        }) as never,
        release: async () => {
          live--;
          released.push(name);
        },
        endProfiling: (async () => undefined) as never,
      };
    };
    const cache = new SessionCache({ maxSessions: 2 });
    const mk = (name: string) => cache.add(native(name), 10, async () => native(name));
    const slow = mk('slow');
    const running = slow.run({});
    await Promise.resolve();
    const a = mk('a');
    const b = mk('b'); // over the limit, but 'slow' is in use: 'a' goes
    await new Promise((r) => setTimeout(r, 0));
    expect(released).toEqual(['a']);
    expect(cache.stats.resident).toBe(2);
    gate();
    expect(await running).toEqual({ name: 'slow' });
    expect(await a.run({})).toEqual({ name: 'a' }); // rebuilt; now 'slow' is the oldest idle one
    await new Promise((r) => setTimeout(r, 0));
    expect(released).toEqual(['a', 'slow']);
    expect(live).toBe(2);
    expect(cache.stats).toMatchObject({ resident: 2, created: 4, evicted: 2 });
    void b;
    await cache.dispose();
    expect(live).toBe(0);
  });
});

describe('Runtime session cache (onnxruntime)', () => {
  it('stays bounded over 12 graphs; evicted graphs recompile and give the same bits', async () => {
    const rt = new Runtime({ maxSessions: 3, threads: 1 });
    const compiled = await Promise.all(Array.from({ length: 12 }, (_, k) => rt.compile(scaleGraph(k + 1))));
    const first: Float32Array[] = [];
    for (const c of compiled) {
      first.push((await c.run({ x: X })).y.data as Float32Array);
      expect(rt.cachedSessions).toBeLessThanOrEqual(3);
    }
    expect(rt.sessionStats.evicted).toBeGreaterThanOrEqual(9);
    // Concurrent runs of every graph, with room for 3 sessions: each run keeps its own alive.
    const again = await Promise.all(compiled.map((c) => c.run({ x: X })));
    again.forEach((r, k) => expect(sameBits(r.y.data as Float32Array, first[k])).toBe(true));
    expect(Array.from(first[1])).toEqual([4, -2, 3, 8]); // x*2+2
    expect(rt.cachedSessions).toBeLessThanOrEqual(3);
    expect(rt.sessionStats.created).toBeGreaterThan(12);
    await rt.dispose();
    expect(rt.cachedSessions).toBe(0);
  });

  it('a model served with many hook sets (one graph each) keeps 2 sessions and the same logits', async () => {
    const rt = new Runtime({ maxSessions: 2, threads: 1 });
    const model = await CausalLM.load(path.join(import.meta.dirname, '..', 'fixtures', 'models', 'llama-gqa'), { runtime: rt });
    // Each hook set scales the MLP output by its own constant: a different graph per set.
    const hookSets: ModelHooks[] = Array.from({ length: 6 }, (_, k) => ({
      mlp: (_l, _h, m, g) => mul(m, constTensor(g, { dtype: 'f32', shape: [1], data: Float32Array.of(1 + k / 10) }, 'mlp_scale')),
    }));
    const ids = [[1, 5, 9, 3]];
    const before = [];
    for (const hooks of hookSets) before.push((await model.logits(ids, { hooks })).data as Float32Array);
    expect(rt.cachedSessions).toBeLessThanOrEqual(2);
    expect(sameBits(before[0], before[1])).toBe(false);
    for (let k = hookSets.length - 1; k >= 0; k--) {
      expect(sameBits((await model.logits(ids, { hooks: hookSets[k] })).data as Float32Array, before[k])).toBe(true);
      expect(rt.cachedSessions).toBeLessThanOrEqual(2);
    }
    expect(rt.sessionStats.evicted).toBeGreaterThanOrEqual(8);
    await rt.dispose();
  });
});
