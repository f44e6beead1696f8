/**
 * Unfused adapters in one batch: every row of a mixed batch (different adapter sets, scales,
 * compositions, the base) must give the logits of the same prompt run alone with its set
 * fused (WeightPatcher), within 1e-4, at prefill and at every decode step — also when the
 * weights hold a fused set F that some rows lack (they cancel it with negative terms).
 */
import { beforeAll, describe, expect, it } from 'vitest';
import { WeightPatcher } from '../../src/merge/apply.js';
import { scaleAdapter } from '../../src/merge/scale.js';
import type { Adapter } from '../../src/merge/types.js';
import { CausalLM } from '../../src/models/causal-lm.js';
import { SlotCache } from '../../src/serve/slots.js';
import { randomModel } from '../../src/models/random.js';
import { Arena } from '../../src/serve/unfused/arena.js';
import { EMPTY_PLAN, UnfusedExecutor, type RowPlan } from '../../src/serve/unfused/executor.js';
import { modelLayout } from '../../src/serve/unfused/layout.js';
import { buildMaskTables, clearedBySet, type ScaledAdapter } from '../../src/serve/unfused/masks.js';
import { buildTables, mustFuseReason, type AdapterTables } from '../../src/serve/unfused/tables.js';
import { sharedModelDir } from '../helpers.js';
import { changedWeights, snapshot } from './helpers.js';
import { gsLora, lora, sparse, sparseMask, structured } from './zoo.js';
import { bundledModelPath } from '../../src/io/model-dir.js';

type RowSet = ScaledAdapter[];

/** Greedy trajectory of one prompt alone with `set` fused: logits at prefill and each decode step. */
async function fusedTrajectory(model: CausalLM, set: RowSet, prompt: number[], steps: number): Promise<{ logits: Float32Array[]; tokens: number[] }> {
  const patcher = new WeightPatcher(model.weights);
  for (const m of set) patcher.apply(scaleAdapter(m.adapter, m.scale), { force: true });
  try {
    const V = model.vocabSize;
    const logits: Float32Array[] = [];
    const tokens: number[] = [];
    let att = prompt.map(() => 1);
    let out = await model.step([prompt], [att], model.emptyCache(1));
    for (let s = 0; ; s++) {
      const last = out.logits.data.slice((out.logits.shape[1] - 1) * V, out.logits.shape[1] * V);
      logits.push(last);
      if (s === steps) break;
      const t = last.indexOf(Math.max(...last));
      tokens.push(t);
      att = [...att, 1];
      out = await model.step([[t]], [att], out.cache);
    }
    return { logits, tokens };
  } finally {
    patcher.revertAll();
  }
}

function maxDiff(a: Float32Array, b: Float32Array): number {
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i] - b[i]));
  return m;
}

class Harness {
  readonly layout;
  readonly arena = new Arena();
  readonly exec;
  private tables = new Map<Adapter, AdapterTables>();
  constructor(readonly model: CausalLM) {
    this.layout = modelLayout(model);
    this.exec = new UnfusedExecutor(model, this.layout, this.arena);
  }
  tablesOf(a: Adapter): AdapterTables {
    let t = this.tables.get(a);
    if (!t) {
      expect(mustFuseReason(a, this.layout)).toBeNull();
      t = buildTables(this.arena, a, this.layout);
      this.tables.set(a, t);
    }
    return t;
  }
  /** The plan of a row with set `set` while the weights hold `fused`. */
  plan(set: RowSet, fused: RowSet): RowPlan {
    const same = (x: ScaledAdapter, y: ScaledAdapter) => x.adapter === y.adapter && x.scale === y.scale;
    const plus = set.filter((m) => !fused.some((f) => same(f, m)));
    const minus = fused.filter((f) => !set.some((m) => same(f, m)));
    const terms = [...plus.map((m) => ({ adapter: m.adapter, scale: m.scale })), ...minus.map((m) => ({ adapter: m.adapter, scale: -m.scale }))]
      .filter((t) => t.adapter.additive.size + t.adapter.structured.size + t.adapter.lowrank.size > 0)
      .map((t) => ({ ...t, tables: this.tablesOf(t.adapter) }));
    const cleared = clearedBySet(set);
    const masks = cleared.size ? buildMaskTables(this.arena, cleared, plus, minus, this.model.weights, this.layout) : null;
    return terms.length || masks ? { terms, masks } : EMPTY_PLAN;
  }

  /**
   * Rows with `sets` (and equal-length prompts) in one batch with `fused` in the weights:
   * compare with each row alone, fused. After the first decode step, row 1 leaves the batch
   * (the last row moves into its slot), so compaction is checked too.
   */
  async check(sets: RowSet[], fused: RowSet, prompts: number[][], steps: number): Promise<number> {
    const refs: { logits: Float32Array[]; tokens: number[] }[] = [];
    for (let b = 0; b < sets.length; b++) refs.push(await fusedTrajectory(this.model, sets[b], prompts[b], steps));
    const before = snapshot(this.model.weights);
    const patcher = new WeightPatcher(this.model.weights);
    for (const m of fused) patcher.apply(scaleAdapter(m.adapter, m.scale), { force: true });
    let worst = 0;
    try {
      let plans = sets.map((s) => this.plan(s, fused));
      const allPlans = plans;
      let order = sets.map((_, b) => b); // row i of the batch is request order[i]
      const V = this.model.vocabSize;
      const cache = new SlotCache(this.model, 2, 4); // small, so the cache grows while running
      const run0 = cache.prefillRun(prompts);
      let out = await this.exec.step(run0, plans);
      cache.commitPrefill(run0);
      for (let s = 0; ; s++) {
        order.forEach((b, i) => {
          const got = out.logits.data.slice(i * V, (i + 1) * V);
          const d = maxDiff(got, refs[b].logits[s]);
          worst = Math.max(worst, d);
          expect(d, `request ${b} step ${s}`).toBeLessThan(1e-4);
          expect(got.indexOf(Math.max(...got)), `request ${b} step ${s} greedy token`).toBe(refs[b].logits[s].indexOf(Math.max(...refs[b].logits[s])));
        });
        if (s === steps) break;
        if (s === 1 && order.length > 2) {
          cache.remove(1);
          order = [order[0], order[order.length - 1], ...order.slice(2, -1)];
          plans = order.map((b) => allPlans[b]);
        }
        const run = cache.decodeRun(order.map((b) => refs[b].tokens[s]));
        out = await this.exec.step(run, plans);
        cache.commitDecode();
      }
      for (const p of allPlans) p.masks?.release();
    } finally {
      patcher.revertAll();
    }
    expect(changedWeights(this.model.weights, before)).toEqual([]);
    return worst;
  }
}

const prompts = (n: number, len: number, vocab: number) => Array.from({ length: n }, (_, i) => Array.from({ length: len }, (_, j) => 3 + ((i * 37 + j * 11) % (vocab - 3))));

describe('unfused adapters in a mixed batch', () => {
  for (const name of ['stories260K', 'tinystories-656K'] as const) {
    describe(name, () => {
      let h: Harness;
      let zoo: Record<string, Adapter>;
      beforeAll(async () => {
        const model = await CausalLM.load(name === 'stories260K' ? bundledModelPath() : sharedModelDir(name));
        h = new Harness(model);
        zoo = {
          sp1: sparse(model, 11),
          sp2: sparse(model, 12, 0.01),
          s2: structured(model, 13),
          r4: lora(model, 14, 4),
          r8: lora(model, 15, 8, 2, ['q_proj', 'v_proj']),
          mask: sparseMask(model, 16),
          gs: gsLora(model, 17),
        };
      });

      it('every kind, compositions, scales and the base in one batch match fused single-request runs', async () => {
        const z = zoo;
        const one = (a: Adapter, scale = 1): ScaledAdapter => ({ adapter: a, scale });
        const sets: RowSet[] = [
          [],
          [one(z.sp1)],
          [one(z.s2)],
          [one(z.r4)],
          [one(z.r8)],
          [one(z.mask)],
          [one(z.sp1), one(z.sp2)],
          [one(z.sp1, 0.5), one(z.r4, -1.5)],
          [one(z.mask), one(z.sp1), one(z.r8)],
          [one(z.s2, 2), one(z.sp2)],
          [one(z.gs)],
          [one(z.gs, -0.5), one(z.r8), one(z.sp2)],
        ];
        const worst = await h.check(sets, [], prompts(sets.length, 5, h.model.vocabSize), 3);
        expect(worst).toBeGreaterThan(0); // unfused arithmetic really ran (it rounds differently)
      });

      it('rows cancel a fused set they lack (negative terms) and add what F lacks', async () => {
        const z = zoo;
        const one = (a: Adapter, scale = 1): ScaledAdapter => ({ adapter: a, scale });
        const fused = [one(z.sp1), one(z.r4)];
        const sets: RowSet[] = [fused, [], [one(z.sp1)], [one(z.r4), one(z.s2)], [one(z.mask), one(z.sp1)], [one(z.sp1, 0.5), one(z.r4)]];
        await h.check(sets, fused, prompts(sets.length, 4, h.model.vocabSize), 2);
      });
    });
  }

  it('a segment whose arena views are detached before onnxruntime reads them runs again on fresh views', async () => {
    // onnxruntime-node converts a run's tensors on a later tick (setImmediate); if the arena's
    // memory is replaced in that gap, it sees zero-length views ("not enough space: expected
    // N, got 0"), as the serve bench once did under heavy load. The segment is rerun instead.
    const model = await CausalLM.load(bundledModelPath());
    const h = new Harness(model);
    const plans = [h.plan([{ adapter: sparse(model, 21), scale: 1 }], []), h.plan([{ adapter: lora(model, 22, 4), scale: 1 }], [])];
    const ps = prompts(2, 6, model.vocabSize);
    const ref = (await h.exec.step(new SlotCache(model, 2, 16).prefillRun(ps), plans)).logits.data.slice();
    const seg = await h.exec.segments();
    const retries = seg.viewRetries;
    const pending = h.exec.step(new SlotCache(model, 2, 16).prefillRun(ps), plans);
    // Queued before the run's own setImmediate: replaces the memory (detaching every view) in the gap.
    setImmediate(() => h.arena.memory.grow(1));
    const got = (await pending).logits.data;
    expect(seg.viewRetries).toBe(retries + 1);
    expect(Array.from(got)).toEqual(Array.from(ref));
  });

  it('GPT-2 Conv1D weights ([in, out]) and a Llama with biases take the same paths', async () => {
    const gpt2 = await CausalLM.load(new URL('../fixtures/models/gpt2', import.meta.url).pathname);
    const llamaBias = randomModel({ model_type: 'llama', vocab_size: 96, hidden_size: 32, intermediate_size: 64, num_hidden_layers: 2, num_attention_heads: 4, num_key_value_heads: 2, max_position_embeddings: 64, attention_bias: true, tie_word_embeddings: false }, { seed: 3, std: 0.1 });
    for (const model of [gpt2, llamaBias]) {
      const h = new Harness(model);
      const one = (a: Adapter, scale = 1): ScaledAdapter => ({ adapter: a, scale });
      const sets: RowSet[] = [[one(sparse(model, 1, 0.05))], [one(structured(model, 2))], [one(lora(model, 3, 4))], [one(sparseMask(model, 4, 0.05))], []];
      await h.check(sets, [], prompts(sets.length, 3, model.vocabSize), 2);
    }
  });
});
