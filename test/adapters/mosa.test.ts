import { describe, expect, it } from 'vitest';
import { promises as fsp } from 'node:fs';
import os from 'node:os';
import { join } from 'node:path';
import { CausalLM } from '../../src/models/causal-lm.js';
import { bundledModelPath } from '../../src/io/model-dir.js';
import { loadDataset, splitHoldout } from '../../src/io/datasets.js';
import { MosaMethod, recipe } from '../../src/adapters/mosa.js';
import { recipeTrainerConfig } from '../../src/train/recipe.js';
import { adapterBranch, type BranchTensors } from '../../src/adapters/mosa-branch.js';
import { moduleMask, partitionEntries } from '../../src/adapters/mosa-split.js';
import { initRng } from '../../src/adapters/common.js';
import { Graph } from '../../src/engine/ir.js';
import { Trainer } from '../../src/train/trainer.js';
import { loadAdapter, saveAdapter } from '../../src/merge/adapter.js';
import { numel } from '../../src/tensor.js';
import { randomTokenExamples, sameBits, sharedModelDir } from '../helpers.js';

const DATA = join(import.meta.dirname, '..', '..', '..', 'shared', 'data');
const FIXTURES = join(import.meta.dirname, '..', 'fixtures', 'models');

describe('MoSA split', () => {
  it('partitions entries into K disjoint masks that cover the tensor, each of density 1/K ± 1%', async () => {
    const K = 4;
    const owner = partitionEntries(100_000, K, initRng(7));
    const split = { name: 't', shape: [owner.length], owner, modules: [] };
    const masks = Array.from({ length: K }, (_, k) => moduleMask(split, k));
    let notOnce = 0;
    for (let i = 0; i < owner.length; i++) if (masks[0][i] + masks[1][i] + masks[2][i] + masks[3][i] !== 1) notOnce++;
    expect(notOnce).toBe(0);
    for (const m of masks) expect(Math.abs(m.reduce((s, v) => s + v, 0) / owner.length - 1 / K)).toBeLessThan(0.01);

    // The method's own split tensors (stories260K, every block) obey the same rules.
    const model = await CausalLM.load(bundledModelPath());
    const mosa = new MosaMethod(model, { bottleneck: 64, modules: K, share: 'none' });
    let total = 0;
    const counts = new Array<number>(K).fill(0);
    for (const { split: s } of mosa.splitTensors()) {
      const ms = Array.from({ length: K }, (_, k) => moduleMask(s, k));
      let bad = 0;
      for (let i = 0; i < s.owner.length; i++) if (ms[0][i] + ms[1][i] + ms[2][i] + ms[3][i] !== 1) bad++;
      expect(bad).toBe(0);
      ms.forEach((m, k) => (counts[k] += m.reduce((a, v) => a + v, 0)));
      total += s.owner.length;
      // Every copy starts identical.
      for (const mod of s.modules) expect(sameBits(mod.data, s.modules[0].data)).toBe(true);
    }
    for (const c of counts) expect(Math.abs(c / total - 1 / K)).toBeLessThan(0.01);
  });
});

describe('MoSA training step and merge (tiny fixture)', () => {
  it('masks each used module\'s gradient by its mask and drops unused modules\' gradients', async () => {
    const model = await CausalLM.load(join(FIXTURES, 'llama-gqa'));
    const mosa = new MosaMethod(model, { bottleneck: 8, modules: 4, share: 'none' });
    const ctx = { model, step: 0, totalSteps: 1, lr: 1e-3, seed: 12345 };
    mosa.stepFeeds(ctx);
    const grads = new Map(mosa.params().map((p) => [p.name, new Float32Array(p.data.length).fill(1)]));
    mosa.adjustGradients(grads, {}, ctx);
    for (const { layer, proj, split } of mosa.splitTensors()) {
      const picks = mosa.selection.get(`${proj}:${layer}`)!;
      expect(picks.length).toBe(2);
      split.modules.forEach((m, k) => {
        const g = grads.get(m.name);
        if (!picks.includes(k)) return expect(g).toBeUndefined();
        expect(Array.from(g!)).toEqual(Array.from(moduleMask(split, k)));
      });
    }
    for (const la of mosa.layers) expect(grads.get(la.norm.name)!.every((v) => v === 1)).toBe(true);
  });

  for (const share of ['down', 'none'] as const) {
    it(`share '${share}': one step changes only the chosen modules' own entries (plus dense params); merged output = mean of module outputs`, async () => {
      const model = await CausalLM.load(join(FIXTURES, 'llama-gqa'));
      const mosa = new MosaMethod(model, { bottleneck: 8, modules: 4, share, dropout: 0.1, seed: 3 });
      // Give Up a nonzero (still identical across copies) start so every tensor gets a gradient.
      const r = initRng(9);
      for (const { proj, split } of mosa.splitTensors()) {
        if (proj !== 'up') continue;
        const init = Float32Array.from(split.modules[0].data, () => (r() - 0.5) * 0.5);
        for (const m of split.modules) m.data.set(init);
      }
      const before = new Map(mosa.params().map((p) => [p.name, p.data.slice()]));
      await new Trainer(model, mosa, { steps: 1, batchSize: 4, optimizer: { lr: 1e-2, weightDecay: 0.1 } }).train(randomTokenExamples(initRng(1), 4, { length: 12, hi: 93 }));

      for (const { layer, proj, split } of mosa.splitTensors()) {
        const picks = new Set(mosa.selection.get(`${proj}:${layer}`)!);
        let changedInMask = 0;
        split.modules.forEach((m, k) => {
          const prev = before.get(m.name)!;
          if (!picks.has(k)) {
            expect(sameBits(m.data, prev)).toBe(true);
            return;
          }
          for (let i = 0; i < prev.length; i++) {
            if (split.owner[i] !== k) expect(m.data[i]).toBe(prev[i]);
            else if (m.data[i] !== prev[i]) changedInMask++;
          }
        });
        expect(changedInMask).toBeGreaterThan(0);
      }
      for (const la of mosa.layers) {
        for (const p of [la.norm, la.downB, la.upB, ...(la.downW ? [la.downW] : [])]) expect(sameBits(p.data, before.get(p.name)!)).toBe(false);
      }

      // Merged branch output vs the mean of the K module outputs, for every block.
      const d = mosa.hiddenSize;
      const K = mosa.config.modules;
      for (const la of mosa.layers) {
        const g = new Graph('branch');
        const x = g.input('x', 'f32', [2, 5, d]);
        const shared = { norm: g.input('norm', 'f32', la.norm.shape), downB: g.input('downB', 'f32', la.downB.shape), upB: g.input('upB', 'f32', la.upB.shape) };
        const ups = la.splits.up!;
        const downs = la.splits.down;
        const downShape = downs ? downs.shape : la.downW!.shape;
        const t = (suffix: string): BranchTensors => ({ ...shared, downW: g.input(`down${suffix}`, 'f32', downShape), upW: g.input(`up${suffix}`, 'f32', ups.shape) });
        const opts = { scale: mosa.config.scale, act: mosa.config.act, normEps: mosa.config.normEps, dropout: 0 };
        g.output('merged', adapterBranch(x, t('M'), opts));
        for (let k = 0; k < K; k++) g.output(`o${k}`, adapterBranch(x, t(`${k}`), opts));
        const compiled = await model.runtime.compile(g);
        const xr = initRng(la.layer + 20);
        const feeds: Record<string, { dtype: 'f32'; shape: number[]; data: Float32Array }> = {
          x: { dtype: 'f32', shape: [2, 5, d], data: Float32Array.from({ length: 10 * d }, () => xr() * 2 - 1) },
          norm: { dtype: 'f32', shape: la.norm.shape, data: la.norm.data },
          downB: { dtype: 'f32', shape: la.downB.shape, data: la.downB.data },
          upB: { dtype: 'f32', shape: la.upB.shape, data: la.upB.data },
        };
        const merged = mosa.inferenceFeeds();
        feeds.upM = merged[ups.name] as (typeof feeds)['x'];
        feeds.downM = (downs ? merged[downs.name] : { dtype: 'f32', shape: downShape, data: la.downW!.data }) as (typeof feeds)['x'];
        for (let k = 0; k < K; k++) {
          feeds[`up${k}`] = { dtype: 'f32', shape: ups.shape, data: ups.modules[k].data };
          feeds[`down${k}`] = { dtype: 'f32', shape: downShape, data: downs ? downs.modules[k].data : la.downW!.data };
        }
        const out = await compiled.run(feeds);
        const m = out.merged.data as Float32Array;
        let worst = 0;
        let spread = 0;
        for (let i = 0; i < m.length; i++) {
          let mean = 0;
          for (let k = 0; k < K; k++) mean += (out[`o${k}`].data as Float32Array)[i] / K;
          worst = Math.max(worst, Math.abs(m[i] - mean));
          spread = Math.max(spread, Math.abs((out.o0.data as Float32Array)[i] - (out.o1.data as Float32Array)[i]));
        }
        // The modules really differ, so the check is not vacuous.
        expect(spread).toBeGreaterThan(1e-4);
        // Exact with a shared Down (the branch is linear in Up); a split Down goes through the
        // nonlinearity, so the average of outputs is only approximately the merged output.
        if (share === 'down') expect(worst).toBeLessThan(1e-6);
        else expect(worst).toBeGreaterThan(0);
      }
    });
  }

  it('exports a dense adapter the size of a plain one that runs unfused after save/load', async () => {
    const model = await CausalLM.load(join(FIXTURES, 'llama-gqa'));
    const mosa = new MosaMethod(model, { bottleneck: 8, modules: 4 });
    await new Trainer(model, mosa, { steps: 3, batchSize: 4, optimizer: { lr: 1e-2 } }).train(randomTokenExamples(initRng(2), 8, { length: 12, hi: 93 }));
    const plain = new MosaMethod(model, { bottleneck: 8, modules: 1 });
    const count = (m: MosaMethod) => [...m.export(model).extra!.values()].reduce((s, t) => s + numel(t.shape), 0);
    const d = model.config.hiddenSize;
    const L = model.config.numLayers;
    expect(count(mosa)).toBe(count(plain));
    expect(count(mosa)).toBe(L * (d + 8 * d + 8 + d * 8 + d));
    expect(mosa.export(model).meta.metrics.parameters).toBe(count(mosa));

    const ids = [[1, 5, 9, 22, 40, 7]];
    const evalLogits = await model.logits(ids, { hooks: mosa.hooks('eval'), extraFeeds: mosa.inferenceFeeds() });
    const baseLogits = await model.logits(ids);
    const dir = await fsp.mkdtemp(join(os.tmpdir(), 'sparsetune-mosa-'));
    try {
      await saveAdapter(join(dir, 'a'), mosa.export(model));
      const loaded = await loadAdapter(join(dir, 'a'));
      expect(loaded.meta.kind).toBe('lowrank');
      const { hooks, feeds } = MosaMethod.fromAdapter(model, loaded);
      const again = await model.logits(ids, { hooks, extraFeeds: feeds });
      expect(sameBits(again.data, evalLogits.data)).toBe(true);
      expect(sameBits(again.data, baseLogits.data)).toBe(false);
    } finally {
      await fsp.rm(dir, { recursive: true, force: true });
    }
  });
});

describe('MoSA on both real checkpoints: with dropout 0 the modules diverge only through the split', () => {
  it.each(['stories260K', 'tinystories-656K'] as const)('%s, K = 4: identical copies give two identical passes (KL exactly 0) until the split makes them differ; each module moves only its own entries. K = 1: the passes never differ', async (name) => {
    const model = await CausalLM.load(sharedModelDir(name));
    const data = (await loadDataset(join(DATA, 'ud-pud', 'pud_en.txt'), model.tokenizer!, { seqLen: 32 })).slice(0, 64);
    const run = async (modules: number) => {
      const mosa = new MosaMethod(model, { modules, dropout: 0 });
      const init = new Map(mosa.params().map((p) => [p.name, p.data.slice()]));
      const res = await new Trainer(model, mosa, { ...recipeTrainerConfig(recipe), steps: 6, batchSize: 4, schedule: { type: 'constant', warmupSteps: 0 } }).train(data);
      return { mosa, init, kl: res.history.map((h) => h.metrics.sym_kl) };
    };
    const split = await run(4);
    expect(split.kl[0]).toBe(0);
    expect(Math.max(...split.kl.slice(1))).toBeGreaterThan(1e-6);
    for (const { split: s } of split.mosa.splitTensors()) {
      const init = split.init.get(s.modules[0].name)!;
      let moved = 0;
      s.modules.forEach((m, k) => {
        let own = 0;
        for (let i = 0; i < init.length; i++) {
          if (s.owner[i] !== k) expect(m.data[i]).toBe(init[i]);
          else if (m.data[i] !== init[i]) own++;
        }
        if (own > 0) moved++;
      });
      // Several modules trained (on disjoint entries), so the copies now differ.
      expect(moved, s.name).toBeGreaterThanOrEqual(2);
    }
    const single = await run(1);
    expect(single.kl.every((v) => v === 0)).toBe(true);
  }, 60_000);
});

describe('MoSA on stories260K', () => {
  it('lowers held-out loss on a shifted domain', async () => {
    const model = await CausalLM.load(bundledModelPath());
    const all = await loadDataset(join(DATA, 'ud-pud', 'pud_en.txt'), model.tokenizer!, { seqLen: 64 });
    const { train, eval: held } = splitHoldout(all, 0.1, 1);
    const mosa = new MosaMethod(model, { bottleneck: 32, modules: 4 });
    const res = await new Trainer(model, mosa, { steps: 40, batchSize: 8, optimizer: { lr: 2e-2, weightDecay: 0.01 }, evalBatches: 4 }).train(train, held);
    expect(res.finalEval!.loss).toBeLessThan(res.initialEval!.loss - 0.3);
    // The consistency term is live: the two passes disagree once the modules diverge.
    expect(res.history.at(-1)!.metrics.sym_kl).toBeGreaterThan(0);
  });
});
