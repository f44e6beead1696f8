import { describe, expect, it } from 'vitest';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Graph } from '../../src/engine/ir.js';
import { grad } from '../../src/engine/autodiff.js';
import { CausalLM } from '../../src/models/causal-lm.js';
import { bundledModelPath } from '../../src/io/model-dir.js';
import { collate, loadDataset, splitHoldout } from '../../src/io/datasets.js';
import { Trainer } from '../../src/train/trainer.js';
import { WeightPatcher } from '../../src/merge/apply.js';
import { loadAdapter, saveAdapter } from '../../src/merge/adapter.js';
import { packBits, paddingIsClear, unpackBits } from '../../src/merge/bits.js';
import type { HostTensor } from '../../src/tensor.js';
import { RamtMethod, configSchema } from '../../src/masks/ramt.js';
import { gradientDropout, keepProbability } from '../../src/masks/ramt-dropout.js';
import { paramFeeds } from '../../src/train/param-feeds.js';
import { mulberry32 } from '../../src/util/random.js';
import { expectWeightsEqual, randomTokenExamples, sameBits, snapshotWeights } from '../helpers.js';

const FIXTURES = join(import.meta.dirname, '..', 'fixtures', 'models');
const DATA = join(import.meta.dirname, '..', '..', '..', 'shared', 'data');

describe('R-AMT gradient dropout (synthetic gradients)', () => {
  it('keeps same-sign gradients always, opposite-sign ones at |a|/(|a|+|b|), and never mixes g_b into the update', () => {
    const n = 200_000;
    const r = mulberry32(11);
    const ga = new Float32Array(n);
    const gb = new Float32Array(n);
    for (let i = 0; i < n; i++) {
      ga[i] = (r() < 0.5 ? -1 : 1) * (0.01 + r());
      gb[i] = (r() < 0.5 ? -1 : 1) * (0.01 + 2 * r());
    }
    const out = ga.slice();
    const stats = gradientDropout(out, gb, 1, mulberry32(99));
    expect(stats.kept + stats.dropped).toBe(n);
    let opposite = 0;
    let keptOpp = 0;
    let expected = 0;
    let variance = 0;
    let notAOrZero = 0;
    let sameSignDropped = 0;
    let worstP = 0;
    for (let i = 0; i < n; i++) {
      // Only g_a or 0: bit-exact, no trace of g_b.
      if (!(out[i] === ga[i] || out[i] === 0)) notAOrZero++;
      if (Math.sign(ga[i]) === Math.sign(gb[i])) {
        if (out[i] !== ga[i]) sameSignDropped++;
      } else {
        const p = Math.abs(ga[i]) / (Math.abs(ga[i]) + Math.abs(gb[i]));
        worstP = Math.max(worstP, Math.abs(keepProbability(ga[i], gb[i]) - p));
        opposite++;
        expected += p;
        variance += p * (1 - p);
        if (out[i] !== 0) keptOpp++;
      }
    }
    expect(notAOrZero).toBe(0);
    expect(sameSignDropped).toBe(0);
    expect(worstP).toBeLessThan(1e-6);
    expect(opposite).toBeGreaterThan(n / 3);
    // Sum of independent Bernoulli(p_i): within 4.5 standard deviations.
    expect(Math.abs(keptOpp - expected)).toBeLessThan(4.5 * Math.sqrt(variance));

    // A fixed ratio: |a| = 1, |b| = 3 with opposite signs is kept with probability 1/4.
    const m = 40_000;
    const a1 = new Float32Array(m).fill(1);
    const b3 = new Float32Array(m).fill(-3);
    gradientDropout(a1, b3, 1, mulberry32(5));
    const kept = a1.reduce((s, v) => s + v, 0);
    const sd = Math.sqrt(m * 0.25 * 0.75);
    expect(Math.abs(kept - m / 4)).toBeLessThan(4.5 * sd);

    // lambda = 0 is AMT (no change); lambda = 0.5 halves a dropped gradient.
    const g0 = ga.slice(0, 1000);
    gradientDropout(g0, gb.slice(0, 1000), 0, mulberry32(1));
    expect(sameBits(g0, ga.slice(0, 1000))).toBe(true);
    const gh = ga.slice(0, 1000);
    gradientDropout(gh, gb.slice(0, 1000), 0.5, mulberry32(1));
    let halved = 0;
    for (let i = 0; i < 1000; i++) {
      expect(gh[i] === ga[i] || gh[i] === Math.fround(0.5 * ga[i])).toBe(true);
      if (gh[i] !== ga[i]) halved++;
    }
    expect(halved).toBeGreaterThan(0);
  });

  it('adjustGradients draws fresh seeded uniforms per step and leaves AMT untouched', async () => {
    const model = await CausalLM.load(join(FIXTURES, 'llama-gqa'));
    const method = new RamtMethod(model);
    const mk = (seed: number) => {
      const r = mulberry32(seed);
      return new Map(method.params().map((p) => [p.name, Float32Array.from({ length: p.data.length }, () => r() - 0.5)]));
    };
    const ga = mk(1);
    const gb = mk(2);
    const run = (step: number) => {
      const g = new Map([...ga].map(([k, v]) => [k, v.slice()]));
      method.adjustGradients(g, { knowledge: gb }, { model, step, totalSteps: 10, lr: 1e-4, seed: 1234 + step });
      return g;
    };
    const s0 = run(0);
    const s0again = run(0);
    const s1 = run(1);
    const name = method.params()[0].name;
    expect(sameBits(s0.get(name)!, s0again.get(name)!)).toBe(true);
    expect(sameBits(s0.get(name)!, s1.get(name)!)).toBe(false);
    expect(method.lastDropout.dropped).toBeGreaterThan(0);
    const amt = new RamtMethod(model, { gradientDropout: false });
    const g = new Map([...ga].map(([k, v]) => [k, v.slice()]));
    amt.adjustGradients(g, {}, { model, step: 0, totalSteps: 10, lr: 1e-4, seed: 1 });
    expect(sameBits(g.get(name)!, ga.get(name)!)).toBe(true);
    expect(() => method.adjustGradients(new Map(ga), {}, { model, step: 0, totalSteps: 1, lr: 1, seed: 1 })).toThrow(/knowledge/);
  });
});

describe('R-AMT on a tiny fixture', () => {
  it('starts exactly at the base model; masks are strictly 0/1 on the weights', async () => {
    const model = await CausalLM.load(join(FIXTURES, 'llama-gqa'));
    expect(configSchema.parse({})).toMatchObject({ scoreInit: 1e-2, threshold: 5e-3, scoreNormWeight: 1e-4, gradientDropout: true, dropoutStrength: 1 });
    expect(() => new RamtMethod(model, { scoreInit: 1e-3 })).toThrow(/scoreInit must exceed threshold/);
    const method = new RamtMethod(model);
    expect(method.tensors.map((t) => t.site.kind)).toEqual(['q_proj', 'k_proj', 'v_proj', 'o_proj', 'q_proj', 'k_proj', 'v_proj', 'o_proj']);
    const ids = [[1, 7, 22, 5, 13, 9]];
    const base = await model.logits(ids);
    for (const mode of ['train', 'eval'] as const) {
      const out = await model.logits(ids, { hooks: method.hooks(mode), extraFeeds: paramFeeds(method.params()) });
      expect(sameBits(out.data as Float32Array, base.data as Float32Array), mode).toBe(true);
    }

    // Scores scattered around the threshold: W_eff is W or 0, element by element.
    const r = mulberry32(3);
    for (const t of method.tensors) for (let i = 0; i < t.scores.data.length; i++) t.scores.data[i] = method.config.threshold + (r() - 0.5) * 1e-2;
    const t = method.tensors[2];
    const w = model.weights.get(t.site.weightName)!;
    const g = new Graph('weff');
    g.output('weff', method.hooks('train').param!(t.site.weightName, g.input(t.site.weightName, 'f32', w.shape), g));
    const compiled = await model.runtime.compile(g);
    const weff = (await compiled.run({ [t.site.weightName]: w, [t.scores.name]: { dtype: 'f32', shape: t.scores.shape, data: t.scores.data } })).weff.data as Float32Array;
    const mask = method.maskOf(t);
    let zeros = 0;
    for (let i = 0; i < weff.length; i++) {
      expect(mask[i]).toBe(t.scores.data[i] > method.config.threshold ? 1 : 0);
      // Kept: the weight's exact bits; masked: zero (-0 for negative weights, which equals 0).
      expect(weff[i] === (mask[i] ? w.data[i] : 0)).toBe(true);
      zeros += 1 - mask[i];
    }
    expect(zeros).toBeGreaterThan(weff.length / 4);
    expect(zeros).toBeLessThan((3 * weff.length) / 4);
  });

  it('the STE gradient equals dL/dW_eff ⊙ W', async () => {
    const model = await CausalLM.load(join(FIXTURES, 'llama-gqa'));
    const method = new RamtMethod(model, { scoreNormWeight: 0 });
    const r = mulberry32(8);
    for (const t of method.tensors) for (let i = 0; i < t.scores.data.length; i++) t.scores.data[i] = method.config.threshold + (r() - 0.5) * 1e-2;
    const batch = collate(randomTokenExamples(mulberry32(4), 2, { length: 9, hi: model.vocabSize }), 0);
    const data = CausalLM.trainFeeds(batch);

    // dL/dS through the method's STE hook.
    const ste = model.build('train', method.hooks('train'));
    const sInputs = method.tensors.map((t) => ste.graph.inputs.find((v) => v.name === t.scores.name)!);
    grad(ste.loss!, sInputs).forEach((gv, k) => ste.graph.output(`g${k}`, gv));
    const compiledSte = await model.runtime.compile(ste.graph);
    const steOut = await compiledSte.run(model.feeds(compiledSte, { ...data, ...paramFeeds(method.params()) }));

    // dL/dW_eff of the same loss with the masked weights fed directly.
    const plain = model.build('train', {});
    const wInputs = method.tensors.map((t) => model.paramInput(plain.graph, t.site.weightName));
    grad(plain.loss!, wInputs).forEach((gv, k) => plain.graph.output(`g${k}`, gv));
    const masked: Record<string, HostTensor> = {};
    for (const t of method.tensors) {
      const w = model.weights.get(t.site.weightName)!;
      const m = method.maskOf(t);
      masked[t.site.weightName] = { dtype: 'f32', shape: w.shape, data: Float32Array.from(w.data, (v, i) => (m[i] ? v : 0)) };
    }
    const compiledPlain = await model.runtime.compile(plain.graph);
    const plainOut = await compiledPlain.run(model.feeds(compiledPlain, { ...data, ...masked }));

    method.tensors.forEach((t, k) => {
      const gs = steOut[`g${k}`].data as Float32Array;
      const gw = plainOut[`g${k}`].data as Float32Array;
      const w = model.weights.get(t.site.weightName)!.data;
      let scale = 0;
      for (let i = 0; i < gs.length; i++) scale = Math.max(scale, Math.abs(gw[i] * w[i]));
      expect(scale).toBeGreaterThan(0);
      for (let i = 0; i < gs.length; i++) expect(Math.abs(gs[i] - gw[i] * w[i])).toBeLessThanOrEqual(1e-5 * scale);
    });
  });

  it('trains without touching base weights; export bits round-trip; fused == hooked; revert is exact', async () => {
    const model = await CausalLM.load(join(FIXTURES, 'llama-gqa'));
    const before = snapshotWeights(model);
    const method = new RamtMethod(model);
    const trainer = new Trainer(model, method, { steps: 12, batchSize: 4, optimizer: { lr: 2e-3 }, schedule: { type: 'constant' } });
    const res = await trainer.train(randomTokenExamples(mulberry32(2), 8, { length: 10, hi: model.vocabSize }));
    expect(res.history.at(-1)!.metrics.kl_to_base).toBeGreaterThan(0);
    expectWeightsEqual(model, before);

    const adapter = method.export(model);
    expect(adapter.meta.kind).toBe('mask');
    const maskedWeights = adapter.meta.metrics.maskedWeights as number;
    expect(maskedWeights).toBeGreaterThan(0);
    for (const t of method.tensors) {
      const p = adapter.masks.get(t.site.weightName)!;
      expect([...unpackBits(p.bits, p.numel)]).toEqual([...method.maskOf(t)]);
      expect(paddingIsClear(p.bits, p.numel)).toBe(true);
    }
    const dir = await mkdtemp(join(tmpdir(), 'ramt-'));
    try {
      await saveAdapter(dir, adapter);
      const loaded = await loadAdapter(dir);
      for (const [name, p] of adapter.masks) expect(Buffer.compare(Buffer.from(loaded.masks.get(name)!.bits), Buffer.from(p.bits))).toBe(0);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }

    const ids = [[1, 7, 22, 5, 13, 9]];
    const hooked = await model.logits(ids, { hooks: method.hooks('eval'), extraFeeds: paramFeeds(method.params()) });
    const patcher = new WeightPatcher(model.weights);
    const h = patcher.apply(adapter);
    const fused = await model.logits(ids);
    expect(sameBits(fused.data as Float32Array, hooked.data as Float32Array)).toBe(true);
    patcher.revert(h);
    expectWeightsEqual(model, before);
  });

  it('bit-packs MSB first and round-trips sizes not divisible by 8', () => {
    expect([...packBits([1, 0, 0, 0, 0, 0, 0, 1, 1])]).toEqual([0x81, 0x80]);
    const r = mulberry32(21);
    for (let n = 1; n <= 41; n++) {
      const scores = Float32Array.from({ length: n }, () => (r() < 0.5 ? 1e-2 : 0));
      const mask = Uint8Array.from(scores, (v) => (v > 5e-3 ? 1 : 0));
      const bits = packBits(mask);
      expect(bits.length).toBe(Math.ceil(n / 8));
      expect(paddingIsClear(bits, n)).toBe(true);
      expect([...unpackBits(bits, n)]).toEqual([...mask]);
    }
  });
});

describe('R-AMT vs AMT on stories260K', () => {
  it('R-AMT drifts less on held-out TinyStories after training on a shifted domain', async () => {
    const model = await CausalLM.load(bundledModelPath());
    const before = snapshotWeights(model);
    const task = await loadDataset(join(DATA, 'ud-pud', 'pud_en.txt'), model.tokenizer!, { seqLen: 64 });
    const { train, eval: taskHeld } = splitHoldout(task, 0.1, 1);
    const general = (await loadDataset(join(DATA, 'tinystories', 'tinystories_valid_head.txt'), model.tokenizer!, { seqLen: 64 })).slice(0, 48);
    const run = async (dropout: boolean) => {
      const method = new RamtMethod(model, { gradientDropout: dropout });
      // 100 steps at 1e-4 move a score by up to ~1e-2, twice (init - tau): masks flip mid-run.
      const trainer = new Trainer(model, method, { steps: 100, batchSize: 8, optimizer: { lr: 1e-4 }, schedule: { type: 'constant' }, evalBatches: 6 });
      const g0 = await trainer.evaluate(general);
      const res = await trainer.train(train, taskHeld.slice(0, 48));
      const g1 = await trainer.evaluate(general);
      return { task0: res.initialEval!.loss, task1: res.finalEval!.loss, drift: g1.loss - g0.loss, masked: method.export(model).meta.metrics.maskedFractionOfTargets as number };
    };
    const amt = await run(false);
    const ramt = await run(true);
    expectWeightsEqual(model, before);
    const fmt = (r: typeof amt) => `task ${r.task0.toFixed(3)} -> ${r.task1.toFixed(3)}, TinyStories drift +${r.drift.toFixed(3)} nats, masked ${(100 * r.masked).toFixed(2)}% of q,k,v,o`;
    console.log(`AMT:   ${fmt(amt)}\nR-AMT: ${fmt(ramt)}`);
    expect(amt.task1).toBeLessThan(amt.task0 - 0.3);
    expect(ramt.task1).toBeLessThan(ramt.task0 - 0.3);
    expect(ramt.drift).toBeLessThan(amt.drift - 0.05);
  });
});
