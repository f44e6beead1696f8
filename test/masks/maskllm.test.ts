import { describe, expect, it } from 'vitest';
import { join } from 'node:path';
import { Graph } from '../../src/engine/ir.js';
import { CausalLM } from '../../src/models/causal-lm.js';
import { bundledModelPath } from '../../src/io/model-dir.js';
import { collate, loadDataset, splitHoldout } from '../../src/io/datasets.js';
import { Trainer } from '../../src/train/trainer.js';
import { WeightPatcher } from '../../src/merge/apply.js';
import { packBits, unpackBits } from '../../src/merge/bits.js';
import { newAdapter } from '../../src/merge/types.js';
import { fingerprintWeights } from '../../src/merge/fingerprint.js';
import { SparsetuneError } from '../../src/errors.js';
import type { HostTensor } from '../../src/tensor.js';
import { MASKLLM_FEEDS, MaskllmMethod, configSchema, createMethod, maskllmNoiseName } from '../../src/masks/maskllm.js';
import {
  activationScores, binomial, fromRowView, inputActivationNorms, isExactlyNM, magnitudeScores, nmCandidates, oneShotNM, toRowView,
} from '../../src/masks/priors.js';
import { paramFeeds } from '../../src/train/param-feeds.js';
import { xorshift32 } from '../../src/util/random.js';
import { expectWeightsEqual, randomTokenExamples, snapshotWeights } from '../helpers.js';

const FIXTURES = join(import.meta.dirname, '..', 'fixtures', 'models');
const DATA = join(import.meta.dirname, '..', '..', '..', 'shared', 'data');

function maxAbsDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let worst = 0;
  for (let i = 0; i < a.length; i++) worst = Math.max(worst, Math.abs(a[i] - b[i]));
  return worst;
}

describe('N:M helpers', () => {
  it('candidate tables hold every C(M, N) pattern once, each with exactly N ones', () => {
    for (const [n, m] of [[2, 4], [1, 4], [3, 4], [4, 8], [3, 8]]) {
      const t = nmCandidates(n, m);
      expect(t.length / m).toBe(binomial(m, n));
      const rows = new Set<string>();
      for (let c = 0; c < t.length / m; c++) {
        const row = t.subarray(c * m, c * m + m);
        expect(row.reduce((a, b) => a + b, 0)).toBe(n);
        rows.add(row.join(''));
      }
      expect(rows.size).toBe(binomial(m, n));
    }
    expect(binomial(4, 2)).toBe(6);
    expect(() => nmCandidates(4, 4)).toThrow(SparsetuneError);
  });

  it('one-shot N:M keeps the N largest scores of every group', () => {
    const scores = Float32Array.from([0.1, 0.9, 0.5, 0.2, 3, 1, 2, 4]);
    expect([...oneShotNM(scores, 2, 4)]).toEqual([0, 1, 1, 0, 1, 0, 0, 1]);
    expect(isExactlyNM(oneShotNM(scores, 2, 4), 2, 4)).toBe(true);
    expect(isExactlyNM(Uint8Array.from([1, 1, 1, 0]), 2, 4)).toBe(false);
  });
});

describe('MaskLLM on tiny fixtures', () => {
  it('rejects bad configs with clear errors', async () => {
    const model = await CausalLM.load(join(FIXTURES, 'llama-gqa'));
    expect(() => new MaskllmMethod(model, { n: 4, m: 4 })).toThrow(/n must be smaller than m/);
    // 48 inputs do not split into groups of 5 (m <= 8 is allowed, 48 % 5 != 0).
    expect(() => new MaskllmMethod(model, { n: 2, m: 5 })).toThrow(/not a multiple of M=5/);
    expect(configSchema.parse({})).toMatchObject({ n: 2, m: 4, priorStrength: 3, kappaStart: 100, kappaEnd: 500, tauStart: 4, tauEnd: 0.05, initStd: 0.01 });
  });

  it('exports exactly N:M masks along the input dim, fused == hard-mask hooks, base weights untouched', async () => {
    for (const [fixture, n, m] of [['llama-gqa', 2, 4], ['llama-gqa', 1, 4], ['llama-gqa', 3, 8], ['gpt2', 2, 4]] as const) {
      const model = await CausalLM.load(join(FIXTURES, fixture));
      const before = snapshotWeights(model);
      const method = new MaskllmMethod(model, { n, m, prior: 'none' });
      const trainer = new Trainer(model, method, { steps: 3, batchSize: 4, optimizer: { lr: 5e-2 } });
      await trainer.train(randomTokenExamples(xorshift32(7), 8, { length: [12, 9], hi: model.vocabSize }));
      expectWeightsEqual(model, before);
      expect(method.tensors.length).toBe(fixture === 'gpt2' ? 8 : 14);

      const adapter = method.export(model);
      expect(adapter.meta.kind).toBe('mask');
      expect(adapter.meta.metrics.sparsity).toBeCloseTo(1 - n / m, 10);
      for (const t of method.tensors) {
        const payload = adapter.masks.get(t.site.weightName)!;
        const bits = unpackBits(payload.bits, payload.numel);
        // Bring the tensor-layout mask into the [out, in] row view: groups run along `in`.
        const view = Uint8Array.from(toRowView(Float32Array.from(bits), t.site));
        expect(isExactlyNM(view, n, m), `${fixture} ${n}:${m} ${t.site.name}`).toBe(true);
      }

      const ids = [[1, 5, 9, 3, 17, 4, 8]];
      const hooked = await model.logits(ids, { hooks: method.hooks('eval'), extraFeeds: paramFeeds(method.params()) });
      const patcher = new WeightPatcher(model.weights);
      const handle = patcher.apply(adapter);
      const fused = await model.logits(ids);
      expect(maxAbsDiff(fused.data, hooked.data), `${fixture} ${n}:${m}`).toBeLessThan(1e-5);
      patcher.revert(handle);
      expectWeightsEqual(model, before);
    }
  });

  it('the soft mask converges to the hard mask as tau -> 0; the Gumbel noise is fresh each step and seeded', async () => {
    const model = await CausalLM.load(join(FIXTURES, 'gpt2'));
    const method = new MaskllmMethod(model, { prior: 'none' });
    const t = method.tensors[0];
    const shape = model.weights.get(t.site.weightName)!.shape;
    const ones: HostTensor = { dtype: 'f32', shape, data: new Float32Array(shape[0] * shape[1]).fill(1) };
    const build = (mode: 'train' | 'eval') => {
      const g = new Graph(`mask-${mode}`);
      g.output('mask', method.hooks(mode).param!(t.site.weightName, g.input(t.site.weightName, 'f32', shape), g));
      return model.runtime.compile(g);
    };
    const [soft, hard] = await Promise.all([build('train'), build('eval')]);
    const feeds = { [t.site.weightName]: ones, [t.logits.name]: { dtype: 'f32' as const, shape: t.logits.shape, data: t.logits.data } };
    const hardMask = (await hard.run(feeds)).mask.data as Float32Array;
    expect([...hardMask]).toEqual([...method.hardMaskOf(t)]);
    const zeros: HostTensor = { dtype: 'f32', shape: t.logits.shape, data: new Float32Array(t.logits.data.length) };
    const scalar = (v: number): HostTensor => ({ dtype: 'f32', shape: [], data: Float32Array.of(v) });
    // Mean deviation falls monotonically; at tiny tau even the worst element matches.
    const meanDev: number[] = [];
    let lastMax = Infinity;
    for (const tau of [4, 0.5, 0.05, 5e-3, 1e-5]) {
      const out = (await soft.run({ ...feeds, [maskllmNoiseName(t.site)]: zeros, [MASKLLM_FEEDS.kappa]: scalar(500), [MASKLLM_FEEDS.tau]: scalar(tau) })).mask.data as Float32Array;
      let sum = 0;
      for (let i = 0; i < out.length; i++) sum += Math.abs(out[i] - hardMask[i]);
      meanDev.push(sum / out.length);
      lastMax = maxAbsDiff(out, hardMask);
    }
    for (let k = 1; k < meanDev.length; k++) expect(meanDev[k]).toBeLessThan(meanDev[k - 1]);
    expect(meanDev[0]).toBeGreaterThan(0.1);
    expect(lastMax).toBeLessThan(1e-5);

    const ctx = (step: number) => ({ model, step, totalSteps: 10, lr: 1e-3, seed: 1000 + step });
    const noise = (step: number) => (method.stepFeeds(ctx(step))[maskllmNoiseName(t.site)].data as Float32Array).slice();
    const n0 = noise(0);
    expect(maxAbsDiff(n0, noise(1))).toBeGreaterThan(1);
    expect([...noise(0)]).toEqual([...n0]);
    let mean = 0;
    for (const v of n0) mean += v / n0.length;
    expect(mean).toBeGreaterThan(0.4); // Gumbel mean: Euler's constant 0.577
    expect(mean).toBeLessThan(0.75);
    const f0 = method.stepFeeds(ctx(0));
    const f9 = method.stepFeeds(ctx(9));
    expect([f0[MASKLLM_FEEDS.kappa].data[0], f9[MASKLLM_FEEDS.kappa].data[0]]).toEqual([100, 500]);
    expect(f0[MASKLLM_FEEDS.tau].data[0]).toBe(4);
    expect(f9[MASKLLM_FEEDS.tau].data[0]).toBeCloseTo(0.05, 6);
    expect(f0[MASKLLM_FEEDS.regCoef].data[0]).toBeCloseTo(1e-5, 12);
  });

  it('a strong prior makes the initial hard mask equal the one-shot prior; strength 3 mostly agrees', async () => {
    for (const fixture of ['llama-gqa', 'gpt2']) {
      const model = await CausalLM.load(join(FIXTURES, fixture));
      const agreement = (strength: number) => {
        const method = new MaskllmMethod(model, { prior: 'magnitude', priorStrength: strength });
        let same = 0;
        let total = 0;
        for (const t of method.tensors) {
          const prior = fromRowView(oneShotNM(magnitudeScores(model.weights.get(t.site.weightName)!.data, t.site), 2, 4), t.site);
          const mask = method.hardMaskOf(t);
          // Count whole groups that match (in the row view).
          const a = toRowView(Float32Array.from(prior), t.site);
          const b = toRowView(Float32Array.from(mask), t.site);
          for (let k = 0; k < a.length; k += 4) {
            total++;
            if (a[k] === b[k] && a[k + 1] === b[k + 1] && a[k + 2] === b[k + 2] && a[k + 3] === b[k + 3]) same++;
          }
        }
        return same / total;
      };
      expect(agreement(1e4)).toBe(1);
      const at3 = agreement(3);
      expect(at3).toBeGreaterThan(0.85);
      expect(at3).toBeLessThan(1);
      expect(agreement(0)).toBeLessThan(0.3);
    }
  });

  it('activation-aware prior: input norms ignore padding, match a direct computation, and set the mask', async () => {
    const model = await CausalLM.load(join(FIXTURES, 'llama-gqa'));
    const examples = randomTokenExamples(xorshift32(3), 6, { length: [10, 4, 7], hi: model.vocabSize });
    const method = new MaskllmMethod(model, { prior: 'activation', priorStrength: 1e4 });
    await expect(method.beforeTraining()).rejects.toThrow(/calibration/);
    const sites = method.tensors.map((t) => t.site);
    const batched = await inputActivationNorms(model, sites, examples, { batchSize: 6 });
    const single = await inputActivationNorms(model, sites, examples, { batchSize: 1 });
    for (const s of sites) expect(maxAbsDiff(batched.get(s.name)!, single.get(s.name)!)).toBeLessThan(1e-4);

    // Layer 0 q_proj sees RMSNorm(embedding): compute its input norms in plain JS.
    const E = model.config.hiddenSize;
    const emb = model.weights.get('model.embed_tokens.weight')!.data;
    const lnw = model.weights.get('model.layers.0.input_layernorm.weight')!.data;
    const ref = new Float64Array(E);
    for (const ex of examples) {
      for (const id of ex.inputIds) {
        let ms = 0;
        for (let j = 0; j < E; j++) ms += emb[id * E + j] ** 2 / E;
        const r = 1 / Math.sqrt(ms + 1e-5);
        for (let j = 0; j < E; j++) ref[j] += (emb[id * E + j] * r * lnw[j]) ** 2;
      }
    }
    const q0 = batched.get('model.layers.0.self_attn.q_proj')!;
    for (let j = 0; j < E; j++) expect(q0[j]).toBeCloseTo(Math.sqrt(ref[j]), 3);

    await method.calibrate(examples, { batchSize: 6 });
    await expect(method.beforeTraining()).resolves.toBeUndefined();
    let differsFromMagnitude = 0;
    for (const t of method.tensors) {
      const w = model.weights.get(t.site.weightName)!.data;
      const wanda = fromRowView(oneShotNM(activationScores(w, t.site, batched.get(t.site.name)!), 2, 4), t.site);
      expect([...method.hardMaskOf(t)]).toEqual([...wanda]);
      const mag = fromRowView(oneShotNM(magnitudeScores(w, t.site), 2, 4), t.site);
      for (let i = 0; i < mag.length; i++) differsFromMagnitude += mag[i] !== wanda[i] ? 1 : 0;
    }
    expect(differsFromMagnitude).toBeGreaterThan(0);
  });
});

describe('MaskLLM on stories260K', () => {
  it('createMethod calibrates the activation-aware prior from calibrationFile', async () => {
    const model = await CausalLM.load(bundledModelPath());
    const file = join(DATA, 'ud-pud', 'pud_en.txt');
    const method = await createMethod(model, { prior: 'activation', priorStrength: 1e4, calibrationFile: file, calibrationExamples: 8, calibrationSeqLen: 32 });
    await expect(method.beforeTraining()).resolves.toBeUndefined();
    const examples = (await loadDataset(file, model.tokenizer!, { seqLen: 32 })).slice(0, 8);
    const norms = await inputActivationNorms(model, method.tensors.map((t) => t.site), examples);
    for (const t of method.tensors) {
      const w = model.weights.get(t.site.weightName)!.data;
      expect([...method.hardMaskOf(t)], t.site.name).toEqual([...oneShotNM(activationScores(w, t.site, norms.get(t.site.name)!), 2, 4)]);
    }
  });

  it('the learned 2:4 mask has lower held-out perplexity than magnitude 2:4', async () => {
    const model = await CausalLM.load(bundledModelPath());
    const before = snapshotWeights(model);
    const all = await loadDataset(join(DATA, 'tinystories', 'tinystories_valid_head.txt'), model.tokenizer!, { seqLen: 64 });
    const { train, eval: heldAll } = splitHoldout(all, 0.05, 1);
    const held = heldAll.slice(0, 64);

    // Magnitude 2:4 baseline, built independently of MaskLLM and fused into the weights.
    const magnitude = newAdapter({ method: 'magnitude-2:4', kind: 'mask', base: { model: model.source, fingerprint: fingerprintWeights(model.weights) } });
    const probe = new MaskllmMethod(model, { prior: 'none' });
    for (const t of probe.tensors) {
      const mask = fromRowView(oneShotNM(magnitudeScores(model.weights.get(t.site.weightName)!.data, t.site), 2, 4), t.site);
      magnitude.masks.set(t.site.weightName, { bits: packBits(mask), numel: mask.length });
    }
    const heldLoss = async () => {
      let sum = 0;
      let tokens = 0;
      for (let i = 0; i < held.length; i += 8) {
        const r = await model.loss(collate(held.slice(i, i + 8), model.tokenizer!.padId ?? 0));
        sum += r.loss * r.tokens;
        tokens += r.tokens;
      }
      return sum / tokens;
    };
    const dense = await heldLoss();
    const patcher = new WeightPatcher(model.weights);
    let h = patcher.apply(magnitude);
    const magLoss = await heldLoss();
    patcher.revert(h);

    const method = await createMethod(model, { seed: 0 });
    const trainer = new Trainer(model, method, { steps: 40, batchSize: 8, optimizer: { lr: 5e-3, beta2: 0.95, eps: 1e-5 } });
    const res = await trainer.train(train, held);
    expectWeightsEqual(model, before);
    h = patcher.apply(method.export(model));
    const learnedLoss = await heldLoss();
    patcher.revert(h);
    expectWeightsEqual(model, before);

    console.log(
      `stories260K held-out ppl: dense ${Math.exp(dense).toFixed(2)}, magnitude 2:4 ${Math.exp(magLoss).toFixed(2)}, ` +
        `MaskLLM 2:4 at init ${res.initialEval!.ppl.toFixed(2)}, learned (40 steps) ${Math.exp(learnedLoss).toFixed(2)}`,
    );
    // The fused exported mask computes what the hard-mask hooks evaluated.
    expect(Math.abs(learnedLoss - res.finalEval!.loss)).toBeLessThan(1e-3);
    expect(magLoss).toBeGreaterThan(dense + 0.5);
    expect(learnedLoss).toBeLessThan(magLoss - 0.5);
  });
});
