import { describe, expect, it } from 'vitest';
import { join } from 'node:path';
import { CausalLM } from '../../src/models/causal-lm.js';
import { bundledModelPath } from '../../src/io/model-dir.js';
import { loadDataset, splitHoldout, type TokenizedExample } from '../../src/io/datasets.js';
import { Trainer } from '../../src/train/trainer.js';
import { defaultObjective } from '../../src/train/method.js';
import { grad } from '../../src/engine/autodiff.js';
import { WeightPatcher } from '../../src/merge/apply.js';
import { S2ftMethod, configSchema, createMethod, recipe } from '../../src/adapters/s2ft.js';
import { recipeTrainerConfig } from '../../src/train/recipe.js';
import { selectUnits, poolGeometry, weightNormScores, type S2ftSelection } from '../../src/adapters/s2ft-select.js';
import {
  invertPermutations, layerPermutation, modelPermutation, permuteStructuredDelta, permuteWeights,
} from '../../src/adapters/s2ft-permute.js';
import type { HostTensor } from '../../src/tensor.js';
import type { LlamaConfig } from '../../src/io/config.js';
import { paramFeeds } from '../../src/train/param-feeds.js';
import { sameBits, sharedModelDir } from '../helpers.js';

const DATA = join(import.meta.dirname, '..', '..', '..', 'shared', 'data');
const FIXTURES = join(import.meta.dirname, '..', 'fixtures', 'models');
const IDS = [[1, 40, 7, 33, 12, 5, 60, 21]];

function maxDiff(a: HostTensor, b: HostTensor): number {
  let worst = 0;
  for (let i = 0; i < a.data.length; i++) worst = Math.max(worst, Math.abs(Number(a.data[i]) - Number(b.data[i])));
  return worst;
}

/** Deterministic nonzero delta values (to test equivalences without a training run). */
function fillDeltas(m: S2ftMethod, seed: number): void {
  let s = seed;
  for (const p of m.params()) for (let i = 0; i < p.data.length; i++) p.data[i] = (((s = (s * 1103515245 + 12345) >>> 0) / 2 ** 32) - 0.5) * 0.2;
}

/**
 * Every weight outside the adapter's selected rows/cols is bit-identical to `before`; inside the
 * selected slices, nearly every entry moved (so the check fails if training did nothing).
 */
function expectOnlySlicesChanged(model: CausalLM, before: Map<string, Float32Array>, adapter: ReturnType<S2ftMethod['export']>): void {
  for (const [name, w] of model.weights) {
    const orig = before.get(name)!;
    const d = adapter.structured.get(name);
    if (!d) {
      expect(sameBits(w.data, orig), name).toBe(true);
      continue;
    }
    const [rows, cols] = w.shape;
    const inRows = new Set(d.rows ?? []);
    const inCols = new Set(d.cols ?? []);
    let changed = 0;
    let inside = 0;
    for (let r = 0; r < rows; r++) {
      for (let c = 0; c < cols; c++) {
        const sel = (d.rows ? inRows.has(r) : true) && (d.cols ? inCols.has(c) : true);
        const i = r * cols + c;
        if (!sel) expect(Object.is(w.data[i], orig[i]), name).toBe(true);
        else {
          inside++;
          if (w.data[i] !== orig[i]) changed++;
        }
      }
    }
    expect(inside, name).toBeGreaterThan(0);
    expect(changed, name).toBeGreaterThan(0.9 * inside);
  }
}

/**
 * The trained model's logits equal the base with the exported (structured) adapter fused, only the
 * selected slices changed, and reverting restores every weight bit for bit.
 */
async function expectFusedMatchesTrained(model: CausalLM, s2: S2ftMethod): Promise<void> {
  const trained = await model.logits(IDS, { hooks: s2.hooks(), extraFeeds: paramFeeds(s2.params()) });
  const before = new Map([...model.weights].map(([k, v]) => [k, v.data.slice()]));
  const adapter = s2.export(model);
  expect(adapter.meta.kind).toBe('structured');
  const patcher = new WeightPatcher(model.weights);
  const h = patcher.apply(adapter);
  const fused = await model.logits(IDS);
  // 1e-5 relative to the logit scale (|logits| reach ~15 here, where one f32 ulp is ~1e-6);
  // the absolute 1e-5 check runs on the small-logit fixture in the co-permutation test.
  const scale = Math.max(1, ...Array.from(fused.data, (v) => Math.abs(Number(v))));
  expect(maxDiff(fused, trained)).toBeLessThan(1e-5 * scale);
  expectOnlySlicesChanged(model, before, adapter);
  patcher.revert(h);
  for (const [k, v] of model.weights) expect(sameBits(v.data, before.get(k)!)).toBe(true);
}

describe('S2FT', () => {
  it('lowers held-out loss; fused == trained; only the selected slices change; revert is exact', async () => {
    const model = await CausalLM.load(bundledModelPath());
    const all = await loadDataset(join(DATA, 'ud-pud', 'pud_en.txt'), model.tokenizer!, { seqLen: 64 });
    const { train, eval: held } = splitHoldout(all, 0.1, 1);
    const s2 = new S2ftMethod(model, { oRatio: 0.25, dRatio: 0.1, seed: 3 });
    // Global random pool: budgets are global, so per-layer counts differ.
    const perLayerO = s2.selection.o.map((h) => h.length);
    expect(perLayerO.reduce((a, b) => a + b, 0)).toBe(10); // floor(5 layers * 8 heads * 0.25)
    expect(s2.selection.down.flat().length).toBe(86); // floor(5 * 172 * 0.1)
    expect(s2.params().every((p) => p.name.startsWith('s2ft.') && !model.weights.has(p.name))).toBe(true);

    const trainer = new Trainer(model, s2, { steps: 30, batchSize: 8, optimizer: { lr: 3e-3 }, evalBatches: 4 });
    const res = await trainer.train(train, held);
    expect(res.finalEval!.loss).toBeLessThan(res.initialEval!.loss - 0.05);

    await expectFusedMatchesTrained(model, s2);
  });

  it('with its defaults and recipe on tinystories-656K: fused == trained and only the selected rows/cols change', async () => {
    const model = await CausalLM.load(sharedModelDir('tinystories-656K'));
    const data = (await loadDataset(join(DATA, 'ud-pud', 'pud_en.txt'), model.tokenizer!, { seqLen: 32 })).slice(0, 64);
    const s2 = new S2ftMethod(model, {});
    expect(s2.selection.o.flat().length + s2.selection.down.flat().length).toBeGreaterThan(0);
    // The recipe's optimizer and schedule; a short run for CI time.
    await new Trainer(model, s2, { ...recipeTrainerConfig(recipe), steps: 10, batchSize: 4 }).train(data);
    await expectFusedMatchesTrained(model, s2);
  }, 60_000);

  it('forms no gradient for any base weight in the training graph (only the deltas are differentiated)', async () => {
    const model = await CausalLM.load(join(FIXTURES, 'llama-gqa'));
    const s2 = new S2ftMethod(model, { oRatio: 0.25, dRatio: 0.05, vRatio: 0.25, uRatio: 0.05, seed: 1 });
    const baseShapes = new Set([...model.weights.values()].filter((w) => w.shape.length === 2).map((w) => w.shape.join('x')));
    // The check below tells gradients apart by shape: make sure no delta looks like a base weight.
    expect(s2.params().some((p) => baseShapes.has(p.shape.join('x')))).toBe(false);

    const staticWeightGrads = (wrtNames: string[]): string[] => {
      const obj = defaultObjective(s2, model, s2.hooks());
      const g = obj.graph;
      const wrt = wrtNames.map((n) => g.inputs.find((v) => v.name === n)!);
      const mark = g.nodes.length;
      grad(obj.loss, wrt);
      const found: string[] = [];
      for (const n of g.nodes.slice(mark)) {
        for (const o of n.outputs) {
          if (o.shape.length === 2 && o.shape.every((d) => typeof d === 'number') && baseShapes.has(o.shape.join('x'))) found.push(`${n.op}:${o.shape}`);
        }
      }
      return found;
    };
    const wrt = s2.params().map((p) => p.name);
    expect(wrt.every((n) => n.startsWith('s2ft.'))).toBe(true);
    expect(staticWeightGrads(wrt)).toEqual([]);
    // The same probe does see a weight gradient when a base weight is differentiated.
    expect(staticWeightGrads([...wrt, 'model.layers.0.self_attn.o_proj.weight']).length).toBeGreaterThan(0);
  });

  it('co-permutation keeps the function (GQA), contiguous slices, and the un-permuted fused export equals the trained model', async () => {
    const model = await CausalLM.load(join(FIXTURES, 'llama-gqa'));
    const cfg = model.config as LlamaConfig;
    const s2 = new S2ftMethod(model, { oRatio: 0.5, vRatio: 0.5, dRatio: 0.2, uRatio: 0.2, seed: 7 });
    const perms = modelPermutation(cfg, s2.selection);
    const permuted = permuteWeights(model.weights, cfg, perms);
    expect(permuted.get('model.layers.0.mlp.down_proj.weight')).not.toBe(model.weights.get('model.layers.0.mlp.down_proj.weight'));
    const base = await model.logits(IDS);
    const pm = new CausalLM(cfg, permuted, null, {}, 'permuted');
    expect(maxDiff(await pm.logits(IDS), base)).toBeLessThan(1e-5);
    // The inverse restores every parameter bit for bit.
    const restored = permuteWeights(permuted, cfg, invertPermutations(perms));
    for (const [k, v] of model.weights) expect(sameBits(restored.get(k)!.data, v.data), k).toBe(true);

    fillDeltas(s2, 11);
    const adapter = s2.export(model);
    const gatherForm = await model.logits(IDS, { hooks: s2.hooks(), extraFeeds: paramFeeds(s2.params()) });
    // Deltas moved into the permuted coordinates: FFN slices become contiguous blocks.
    const permutedAdapter = { ...adapter, structured: new Map([...adapter.structured].map(([n, d]) => [n, permuteStructuredDelta(n, d, cfg, perms)])) };
    for (let l = 0; l < cfg.numLayers; l++) {
      const { ranges } = layerPermutation(cfg, s2.selection, l);
      const down = permutedAdapter.structured.get(`model.layers.${l}.mlp.down_proj.weight`);
      if (down) expect(Array.from(down.cols!)).toEqual(Array.from({ length: ranges.down[1] - ranges.down[0] }, (_, i) => ranges.down[0] + i));
      const up = permutedAdapter.structured.get(`model.layers.${l}.mlp.up_proj.weight`);
      if (up) expect(Array.from(up.rows!)).toEqual(Array.from({ length: ranges.up[1] - ranges.up[0] }, (_, i) => ranges.up[0] + i));
      const v = permutedAdapter.structured.get(`model.layers.${l}.self_attn.v_proj.weight`);
      if (v) expect(v.rows![0]).toBe(ranges.vGroups[0] * cfg.headDim);
      if (v) expect(v.rows![v.rows!.length - 1]).toBe(ranges.vGroups[1] * cfg.headDim - 1);
    }
    new WeightPatcher(pm.weights).apply(permutedAdapter, { force: true });
    expect(maxDiff(await pm.logits(IDS), gatherForm)).toBeLessThan(1e-5);
    // Un-permuting the fused permuted model gives exactly the fused original.
    const unpermuted = permuteWeights(pm.weights, cfg, invertPermutations(perms));
    new WeightPatcher(model.weights).apply(adapter);
    for (const [k, v] of model.weights) expect(sameBits(unpermuted.get(k)!.data, v.data), k).toBe(true);
    expect(maxDiff(await model.logits(IDS), gatherForm)).toBeLessThan(1e-5);
  });

  it('selects from the global pool: seeded random, weight norm, activation and gradient norm', async () => {
    const model = await CausalLM.load(join(FIXTURES, 'llama-gqa'));
    const cfg = model.config as LlamaConfig;
    const geo = poolGeometry(cfg);
    const ratios = { o: 0.25, v: 0, down: 0.1, up: 0 };
    const a = selectUnits(geo, ratios, { strategy: 'random', order: 'largest', seed: 5 });
    expect(selectUnits(geo, ratios, { strategy: 'random', order: 'largest', seed: 5 })).toEqual(a);
    expect(selectUnits(geo, ratios, { strategy: 'random', order: 'largest', seed: 6 })).not.toEqual(a);
    expect(a.o.flat().length).toBe(2);
    expect(a.down.flat().length).toBe(19);

    // Weight norm: the chosen down_proj columns are exactly the largest column norms over all layers.
    const wn = new S2ftMethod(model, { oRatio: 0, dRatio: 0.1, strategy: 'weight-norm' });
    const norms: { l: number; c: number; n: number }[] = [];
    for (let l = 0; l < cfg.numLayers; l++) {
      const w = model.weights.get(`model.layers.${l}.mlp.down_proj.weight`)!;
      const [R, C] = w.shape;
      for (let c = 0; c < C; c++) {
        let s = 0;
        for (let r = 0; r < R; r++) s += w.data[r * C + c] ** 2;
        norms.push({ l, c, n: s });
      }
    }
    norms.sort((x, y) => y.n - x.n);
    const expected = norms.slice(0, 19).map((e) => `${e.l}:${e.c}`).sort();
    expect(wn.selection.down.flatMap((cs, l) => cs.map((c) => `${l}:${c}`)).sort()).toEqual(expected);
    const smallest = new S2ftMethod(model, { oRatio: 0, dRatio: 0.1, strategy: 'weight-norm', order: 'smallest' });
    expect(smallest.selection.down.flatMap((cs, l) => cs.map((c) => `${l}:${c}`)).some((k) => expected.includes(k))).toBe(false);
    expect(weightNormScores(model, geo, ['o']).o!.length).toBe(cfg.numLayers * cfg.numHeads);

    // Data-driven strategies on a small calibration set (random token windows).
    let s = 9;
    const calib: TokenizedExample[] = Array.from({ length: 4 }, () => {
      const ids = Array.from({ length: 12 }, () => ((s = (s * 1103515245 + 12345) >>> 0) % (cfg.vocabSize - 3)) + 3);
      return { inputIds: ids, labels: ids };
    });
    const act = await S2ftMethod.create(model, { oRatio: 0.25, dRatio: 0.1, strategy: 'activation-norm' }, calib);
    const gr = await S2ftMethod.create(model, { oRatio: 0.25, dRatio: 0.1, strategy: 'gradient-norm' }, calib);
    for (const m of [act, gr]) {
      expect(m.selection.o.flat().length).toBe(2);
      expect(m.selection.down.flat().length).toBe(19);
    }
    expect(act.selection).not.toEqual(gr.selection);
    expect(() => new S2ftMethod(model, { strategy: 'activation-norm' })).toThrow(/calibration/);
  });

  it('validates config and model family with clear errors', async () => {
    const gpt2 = await CausalLM.load(join(FIXTURES, 'gpt2'));
    expect(() => new S2ftMethod(gpt2, {})).toThrow(/Llama family/);
    const model = await CausalLM.load(join(FIXTURES, 'llama-gqa'));
    expect(() => new S2ftMethod(model, { oRatio: 0, dRatio: 0 })).toThrow(/select nothing/);
    expect(() => new S2ftMethod(model, { oRatio: 2 })).toThrow(/oRatio/);
    expect(configSchema.parse({})).toMatchObject({ oRatio: 0.05, dRatio: 0.02, vRatio: 0, uRatio: 0, strategy: 'random' });
    const viaRegistry = await createMethod(model, { oRatio: 0.5 });
    expect(viaRegistry.kind).toBe('structured');
    const sel: S2ftSelection = viaRegistry.selection;
    expect(() => viaRegistry.loadState({ selection: { ...sel, o: sel.o.map(() => []) } })).toThrow(/different head/);
  });
});
