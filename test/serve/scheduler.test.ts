/**
 * The scheduler, swapper and KV-cache surgery without HTTP: rows keep their data when
 * caches are stacked and trimmed, a waiting adapter set is not starved by a busy one,
 * shutdown cancels what is left, and a swap never lands while a model run reads the weights.
 */
import { beforeAll, describe, expect, it } from 'vitest';
import { bundledModelPath } from '../../src/io/model-dir.js';
import type { Adapter } from '../../src/merge/types.js';
import { CausalLM, type KvCache } from '../../src/models/causal-lm.js';
import { generateIds } from '../../src/models/generate.js';
import { WeightGate } from '../../src/serve/gate.js';
import { concatRows, selectRows } from '../../src/serve/kv.js';
import { ServerMetrics } from '../../src/serve/metrics.js';
import { Scheduler } from '../../src/serve/scheduler.js';
import type { Sequence, SequenceSink, SequenceSpec } from '../../src/serve/sequence.js';
import { Swapper, type SwapMember, type SwapReport } from '../../src/serve/swapper.js';
import { ServeSet, SetMember } from '../../src/serve/adapter-set.js';
import { changedWeights, randomSparseAdapter, snapshot } from './helpers.js';

/** A KV cache whose entry (row r, head h, position t, dim d) encodes those four numbers. */
function codedCache(rows: number, heads: number, T: number, D: number, tag: number): KvCache {
  const t = () => {
    const data = new Float32Array(rows * heads * T * D);
    for (let r = 0; r < rows; r++) for (let h = 0; h < heads; h++) for (let p = 0; p < T; p++) for (let d = 0; d < D; d++) {
      data[((r * heads + h) * T + p) * D + d] = tag * 10000 + r * 1000 + h * 100 + p * 10 + d;
    }
    return { dtype: 'f32' as const, shape: [rows, heads, T, D], data };
  };
  return { k: [t()], v: [t()], length: T };
}

describe('KV cache surgery', () => {
  it('left-pads and stacks rows, then drops rows and unused leading columns', () => {
    const a = { cache: codedCache(1, 2, 3, 2, 1), attention: [[1, 1, 1]] };
    const b = { cache: codedCache(2, 2, 5, 2, 2), attention: [[0, 1, 1, 1, 1], [1, 1, 1, 1, 1]] };
    const ab = concatRows(a, b);
    expect(ab.cache.length).toBe(5);
    expect(ab.cache.k[0].shape).toEqual([3, 2, 5, 2]);
    expect(ab.attention).toEqual([[0, 0, 1, 1, 1], [0, 1, 1, 1, 1], [1, 1, 1, 1, 1]]);
    const at = (c: KvCache, r: number, h: number, p: number, d: number) => c.k[0].data[((r * 2 + h) * c.length + p) * 2 + d];
    expect(at(ab.cache, 0, 1, 2, 1)).toBe(10000 + 0 + 100 + 0 + 1); // a's position 0 now sits at column 2
    expect(at(ab.cache, 0, 0, 0, 0)).toBe(0); // padding
    expect(at(ab.cache, 2, 1, 4, 0)).toBe(20000 + 1000 + 100 + 40);
    // Keep a's row and b's first row: column 0 is padding in both, so it goes.
    const kept = selectRows(ab, [0, 1]);
    expect(kept.cache.length).toBe(4);
    expect(kept.attention).toEqual([[0, 1, 1, 1], [1, 1, 1, 1]]);
    expect(at(kept.cache, 0, 1, 1, 1)).toBe(10101);
    expect(at(kept.cache, 1, 0, 3, 1)).toBe(20000 + 0 + 0 + 40 + 1);
    expect(kept.cache.v[0].data).toEqual(kept.cache.k[0].data);
  });
});

describe('scheduler', () => {
  let model: CausalLM;
  let adapters: Adapter[];
  beforeAll(async () => {
    model = await CausalLM.load(bundledModelPath());
    adapters = [randomSparseAdapter(model.weights, { seed: 1, density: 0.03, scale: 0.3 }), randomSparseAdapter(model.weights, { seed: 2, density: 0.03, scale: 0.3 })];
  });

  const member = (uid: number, a: Adapter): SwapMember => ({ uid, id: `ad${uid}`, payload: () => a });
  const set = (...ms: SwapMember[]) => new ServeSet(ms.map((m) => new SetMember(m, 1)));
  const base = new ServeSet([]);
  const spec = (prompt: number[], maxTokens: number): SequenceSpec => ({ prompt, maxTokens, sampling: { temperature: 0 }, stop: [], eos: [] });

  function setup(opts: Partial<{ maxBatch: number; maxConsecutiveSteps: number; maxQueue: number }> = {}) {
    const gate = new WeightGate();
    const swaps: SwapReport[] = [];
    const swapper = new Swapper(model.weights, gate, { fingerprint: '', onSwap: (r) => swaps.push(r) });
    let scheduler: Scheduler;
    const metrics = new ServerMetrics({ queueDepth: () => scheduler.queueDepth, activeSequences: () => scheduler.activeSequences, adaptersLoaded: () => 0, adapterResidentBytes: () => 0 });
    scheduler = new Scheduler(model, swapper, metrics, { maxBatch: 4, maxQueue: 16, maxActive: 16, maxConsecutiveSteps: 2, ...opts });
    return { scheduler, swapper, swaps, metrics, gate };
  }

  /** A sink that logs every token event as [label, seq index] and resolves per sequence. */
  function recorder(log: string[], label: string) {
    const ended: Sequence[] = [];
    let resolveAll!: () => void;
    const all = new Promise<void>((r) => (resolveAll = r));
    let expected = Infinity;
    const sink: SequenceSink = {
      text: () => log.push(label),
      finish: (s) => {
        log.push(`${label}:end`);
        ended.push(s);
        if (ended.length === expected) resolveAll();
      },
    };
    return { sink, ended, done: (n: number) => ((expected = n), ended.length === n ? Promise.resolve() : all) };
  }

  it('joins sequences at step boundaries and gives each what it would get alone', async () => {
    const { scheduler, metrics } = setup({ maxBatch: 3 });
    const prompts = [[1, 403, 407, 261], [1, 30, 500], [1, 77, 12, 90, 300, 41]];
    const log: string[] = [];
    const rec = recorder(log, 'x');
    const first = scheduler.submit(base, [spec(prompts[0], 12)], rec.sink);
    await new Promise((r) => setTimeout(r, 15)); // the first is decoding when the others arrive
    const later = scheduler.submit(base, [spec(prompts[1], 9), spec(prompts[2], 7)], rec.sink);
    await rec.done(3);
    const seqs = [...first, ...later];
    for (let i = 0; i < 3; i++) {
      const [alone] = await generateIds(model, [prompts[i]], { maxNewTokens: seqs[i].spec.maxTokens, temperature: 0, eos: false });
      expect(seqs[i].generated).toEqual(alone.ids);
      expect(seqs[i].finishReason).toBe('length');
    }
    // Rows really shared decode steps: alone they would need 12 + 9 + 7 - 3 of them.
    expect(metrics.steps.get({ kind: 'decode' })).toBeLessThan(25);
  });

  it('prefills waiting prompts of equal length in one run, each row as it would be alone', async () => {
    const { scheduler, metrics } = setup({ maxBatch: 4 });
    const prompts = [[1, 403, 407, 261], [1, 30, 500, 12], [1, 77, 12, 90]];
    const rec = recorder([], 'p');
    const seqs = scheduler.submit(base, prompts.map((p) => spec(p, 6)), rec.sink);
    await rec.done(3);
    expect(metrics.steps.get({ kind: 'prefill' })).toBe(1);
    for (let i = 0; i < 3; i++) {
      const [alone] = await generateIds(model, [prompts[i]], { maxNewTokens: 6, temperature: 0, eos: false });
      expect(seqs[i].generated).toEqual(alone.ids);
    }
  });

  it('does not starve a waiting adapter set behind a busy one', async () => {
    const { scheduler, swaps } = setup({ maxConsecutiveSteps: 2 });
    const log: string[] = [];
    const recA = recorder(log, 'A');
    const recB = recorder(log, 'B');
    scheduler.submit(set(member(101, adapters[0])), [spec([1, 403, 407], 40)], recA.sink);
    await new Promise((r) => setTimeout(r, 10));
    log.push('B:submit');
    scheduler.submit(set(member(102, adapters[1])), [spec([1, 30, 500], 4)], recB.sink);
    await Promise.all([recA.done(1), recB.done(1)]);
    const bEnd = log.indexOf('B:end');
    const aEnd = log.indexOf('A:end');
    expect(bEnd).toBeLessThan(aEnd);
    // B needs 4 model runs; in turns of 2 runs, A runs at most a few turns in between.
    const aTokensWhileBWaits = log.slice(log.indexOf('B:submit'), bEnd).filter((e) => e === 'A').length;
    expect(aTokensWhileBWaits).toBeLessThanOrEqual(8);
    expect(swaps.length).toBeGreaterThanOrEqual(3);
    await scheduler.whenIdle();
  });

  it('cancels what is left on drain and refuses new work', async () => {
    const { scheduler, metrics, swapper } = setup();
    const log: string[] = [];
    const rec = recorder(log, 'L');
    const [seq] = scheduler.submit(set(member(201, adapters[0])), [spec([1, 2, 3], 200)], rec.sink);
    await new Promise((r) => setTimeout(r, 20));
    await scheduler.drain(30);
    expect(seq.finishReason).toBe('cancelled');
    expect(seq.generated.length).toBeLessThan(200);
    expect(metrics.cancelled.get()).toBe(1);
    expect(() => scheduler.submit(base, [spec([1], 2)], rec.sink)).toThrow(/shutting down/);
    await swapper.reset();
  });

  it('never patches the weights while a gated run reads them, and resets to the exact base', async () => {
    const original = snapshot(model.weights);
    const gate = new WeightGate();
    const swapper = new Swapper(model.weights, gate, { fingerprint: '' });
    const A = member(301, adapters[0]);
    const B = member(302, adapters[1]);
    const seen: string[] = [];
    const runA = swapper.runWith([A], async () => {
      const before = snapshot(model.weights);
      await new Promise((r) => setTimeout(r, 30)); // B's swap is requested meanwhile
      seen.push(`A changed during run: ${changedWeights(model.weights, before).length}`);
      return swapper.activeIds;
    });
    const runB = swapper.runWith([B], async () => swapper.activeIds);
    const runAB = swapper.runWith([A, B], async () => swapper.activeIds);
    expect(await runA).toEqual(['ad301']);
    expect(await runB).toEqual(['ad302']);
    expect(await runAB).toEqual(['ad301', 'ad302']);
    expect(seen).toEqual(['A changed during run: 0']);
    expect(changedWeights(model.weights, original).length).toBeGreaterThan(0);
    await swapper.reset();
    expect(changedWeights(model.weights, original)).toEqual([]);
  });
});
