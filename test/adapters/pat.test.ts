import { afterAll, describe, expect, it } from 'vitest';
import { join } from 'node:path';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { CausalLM } from '../../src/models/causal-lm.js';
import { bundledModelPath, writeModelDir } from '../../src/io/model-dir.js';
import { loadDataset, splitHoldout } from '../../src/io/datasets.js';
import { Trainer } from '../../src/train/trainer.js';
import { grad } from '../../src/engine/autodiff.js';
import { saveAdapter, loadAdapter } from '../../src/merge/adapter.js';
import { exportPrunedModel, PAT_EXTRA } from '../../src/merge/prune-export.js';
import { PatMethod, configSchema, createMethod, recipe } from '../../src/adapters/pat.js';
import { hardMask, maskSchedule } from '../../src/adapters/pat-schedule.js';
import { SCHEDULE_INPUTS } from '../../src/adapters/pat-hsm.js';
import type { LlamaConfig } from '../../src/io/config.js';
import type { StepContext } from '../../src/train/method.js';
import type { HostTensor } from '../../src/tensor.js';
import { paramFeeds } from '../../src/train/param-feeds.js';
import { recipeTrainerConfig } from '../../src/train/recipe.js';
import { parseModelConfig } from '../../src/io/config.js';
import { modelCost } from '../../src/models/cost.js';
import { sharedModelDir } from '../helpers.js';

const DATA = join(import.meta.dirname, '..', '..', '..', 'shared', 'data');
const FIXTURES = join(import.meta.dirname, '..', 'fixtures', 'models');
const IDS = [[1, 40, 7, 33, 12, 5, 60, 21], [2, 9, 14, 50, 3, 31, 8, 44]];
const tmp = mkdtempSync(join(tmpdir(), 'pat-test-'));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

function maxDiff(a: HostTensor, b: HostTensor): number {
  expect(a.shape).toEqual(b.shape);
  let worst = 0;
  for (let i = 0; i < a.data.length; i++) worst = Math.max(worst, Math.abs(Number(a.data[i]) - Number(b.data[i])));
  return worst;
}

function ctxAt(model: CausalLM, step: number, totalSteps: number): StepContext {
  return { model, step, totalSteps, lr: 0, seed: 0 };
}

function feeds(pat: PatMethod, extra: Record<string, HostTensor> = {}): Record<string, HostTensor> {
  return { ...paramFeeds(pat.params()), ...extra };
}

/** The logits of the PAT model with the hard inference mask (what the export must reproduce). */
function hardMasked(model: CausalLM, pat: PatMethod, ids = IDS): Promise<HostTensor<'f32'>> {
  return model.logits(ids, { hooks: pat.hooks('eval'), extraFeeds: feeds(pat) });
}

function paramCount(w: Map<string, HostTensor>): number {
  let n = 0;
  for (const t of w.values()) n += t.data.length;
  return n;
}

/** Expected shape of every tensor of a pruned Llama model. */
function expectedShapes(cfg: LlamaConfig, dk: number): Map<string, number[]> {
  const m = new Map<string, number[]>([
    ['model.embed_tokens.weight', [cfg.vocabSize, dk]],
    ['model.norm.weight', [dk]],
  ]);
  if (!cfg.tieWordEmbeddings) m.set('lm_head.weight', [cfg.vocabSize, dk]);
  const H = cfg.numHeads * cfg.headDim;
  const KV = cfg.numKvHeads * cfg.headDim;
  for (let l = 0; l < cfg.numLayers; l++) {
    const p = `model.layers.${l}`;
    m.set(`${p}.input_layernorm.weight`, [dk]);
    m.set(`${p}.post_attention_layernorm.weight`, [dk]);
    m.set(`${p}.self_attn.q_proj.weight`, [H, dk]);
    m.set(`${p}.self_attn.k_proj.weight`, [KV, dk]);
    m.set(`${p}.self_attn.v_proj.weight`, [KV, dk]);
    m.set(`${p}.self_attn.o_proj.weight`, [dk, H]);
    m.set(`${p}.mlp.gate_proj.weight`, [cfg.intermediateSize, dk]);
    m.set(`${p}.mlp.up_proj.weight`, [cfg.intermediateSize, dk]);
    m.set(`${p}.mlp.down_proj.weight`, [dk, cfg.intermediateSize]);
    if (cfg.attentionBias) for (const [k, n] of [['q', H], ['k', KV], ['v', KV]] as const) m.set(`${p}.self_attn.${k}_proj.bias`, [n]);
  }
  return m;
}

describe('PAT', () => {
  it('equals the base model at step 0 (train and eval graphs), and the schedule matches the spec', async () => {
    const model = await CausalLM.load(bundledModelPath());
    const pat = new PatMethod(model, { keepRatio: 0.75, r: 4, dropout: 0 });
    const base = await model.logits(IDS);
    const step0 = await model.logits(IDS, { hooks: pat.hooks('train'), extraFeeds: feeds(pat, pat.stepFeeds(ctxAt(model, 0, 100))) });
    expect(maxDiff(step0, base)).toBe(0);
    expect(maxDiff(await hardMasked(model, pat), base)).toBe(0);
    expect(pat.keptChannels().length).toBe(64); // m = 0 counts as kept (hard mask 1[m >= 0])
    expect(Array.from(hardMask(Float32Array.of(-1e-7, 0, 1e-7)))).toEqual([0, 1, 1]);

    const s0 = maskSchedule(0, 100, 0.8);
    expect(s0.bias).toBe(0.5);
    expect(s0.temperature).toBeCloseTo(1, 5);
    expect(maskSchedule(25, 100, 0.8).bias).toBe(0.25);
    expect(maskSchedule(60, 100, 0.8).bias).toBe(0);
    expect(maskSchedule(79, 100, 0.8).frozen).toBe(false);
    const frozen = maskSchedule(80, 100, 0.8);
    expect(frozen.frozen).toBe(true);
    expect(maskSchedule(99, 100, 0.8).temperature).toBe(frozen.temperature); // held at T(0.8·T_end)
    expect(frozen.temperature).toBeCloseTo(1 / (1 - Math.log(80) / Math.log(100) + 1e-6), 9);
  });

  it('stops the LM gradient into the mask logits after the freeze point', async () => {
    const model = await CausalLM.load(join(FIXTURES, 'llama-gqa'));
    const pat = new PatMethod(model, { dKeep: 36, r: 2, dropout: 0 });
    for (const h of pat.hsms) h.U.data.fill(0.01);
    pat.mask.data.forEach((_, i) => (pat.mask.data[i] = ((i % 7) - 3) * 0.1));
    const built = model.build('train', pat.hooks('train'));
    const m = built.graph.inputs.find((v) => v.name === pat.mask.name)!;
    built.graph.output('dm', grad(built.loss!, [m])[0]);
    const compiled = await model.runtime.compile(built.graph);
    const ids = [[1, 5, 9, 22, 40, 7, 3, 11]];
    const data = CausalLM.trainFeeds({ inputIds: BigInt64Array.from(ids[0], BigInt), labels: BigInt64Array.from(ids[0], BigInt), attentionMask: new BigInt64Array(8).fill(1n), batchSize: 1, seqLen: 8 });
    const run = async (step: number) => {
      const out = await compiled.run(model.feeds(compiled, { ...feeds(pat, pat.stepFeeds(ctxAt(model, step, 10))), ...data }));
      return Array.from(out.dm.data as Float32Array);
    };
    const live = await run(3);
    expect(live.some((v) => Math.abs(v) > 1e-6)).toBe(true);
    expect((await run(8)).every((v) => v === 0)).toBe(true);
    expect(pat.stepFeeds(ctxAt(model, 8, 10))[SCHEDULE_INPUTS.live].data[0]).toBe(0);
  });

  it('trains: kept channels converge to d_keep; exports a smaller plain HF model equal to the hard-masked one', async () => {
    const model = await CausalLM.load(bundledModelPath());
    const all = await loadDataset(join(DATA, 'ud-pud', 'pud_en.txt'), model.tokenizer!, { seqLen: 64 });
    const { train, eval: held } = splitHoldout(all, 0.1, 1);
    const pat = new PatMethod(model, { keepRatio: 0.75, r: 4, alpha: 8, dropout: 0, targetModules: ['q_proj', 'v_proj', 'o_proj', 'down_proj'] });
    expect(pat.dKeep).toBe(48);
    const kept: number[] = [];
    const trainer = new Trainer(model, pat, { steps: 40, batchSize: 8, optimizer: { lr: 3e-3 }, evalBatches: 4 }, { onStep: (l) => void kept.push(l.metrics.kept_channels) });
    const res = await trainer.train(train, held);
    expect(kept[0]).toBe(64);
    expect(pat.keptChannels().length).toBe(48);
    expect(kept.slice(-5)).toEqual([48, 48, 48, 48, 48]);
    // Pruning-aware tuning beats pruning the same channels from the untuned base.
    const naive = new PatMethod(model, { keepRatio: 0.75, r: 4, targetModules: ['q_proj'] });
    naive.mask.data.set(pat.mask.data);
    const naiveEval = await new Trainer(model, naive, { batchSize: 8, evalBatches: 4 }).evaluate(held);
    expect(res.finalEval!.loss).toBeLessThan(naiveEval.loss - 0.1);

    // Through the adapter file and back, then the export.
    await saveAdapter(join(tmp, 'adapter'), pat.export(model));
    const adapter = await loadAdapter(join(tmp, 'adapter'));
    expect(adapter.meta.kind).toBe('pruned');
    const { configJson, weights } = exportPrunedModel(model, adapter);
    expect(configJson.hidden_size).toBe(48);
    const want = expectedShapes(model.config as LlamaConfig, 48);
    expect(configJson.tie_word_embeddings).toBe(true);
    expect(new Set(weights.keys())).toEqual(new Set(want.keys()));
    for (const [name, t] of weights) expect(t.shape, name).toEqual(want.get(name));
    expect(paramCount(weights)).toBeLessThan(paramCount(model.weights));

    await writeModelDir(join(tmp, 'pruned'), { configJson, weights, tokenizerFrom: model.source });
    const pruned = await CausalLM.load(join(tmp, 'pruned'));
    expect(pruned.config.hiddenSize).toBe(48);
    expect(pruned.tokenizer).not.toBeNull();
    const ids = [pruned.tokenizer!.encode('The cat sat on the mat.').slice(0, 12)];
    expect(maxDiff(await pruned.logits(ids), await hardMasked(model, pat, ids))).toBeLessThan(1e-4);
    expect(maxDiff(await pruned.logits(IDS), await hardMasked(model, pat))).toBeLessThan(1e-4);
  }, 60_000);

  it('folds nonzero HSMs, scales and LoRA exactly (untied GQA fixture, Qwen2 with biases, tied stories260K)', async () => {
    for (const fixture of ['llama-gqa', 'qwen2', 'stories260K']) {
      const model = await CausalLM.load(fixture === 'stories260K' ? bundledModelPath() : join(FIXTURES, fixture));
      const cfg = model.config as LlamaConfig;
      const pat = new PatMethod(model, { keepRatio: 0.75, r: 3, dropout: 0, hsmRank: 8, seed: 4 });
      let s = 17;
      const rnd = () => ((s = (s * 1103515245 + 12345) >>> 0) / 2 ** 32) - 0.5;
      for (const h of pat.hsms) {
        h.U.data.forEach((_, i) => (h.U.data[i] = rnd() * 0.2));
        h.s.data.forEach((_, i) => (h.s.data[i] = 1 + rnd() * 0.5));
      }
      for (const p of pat.lora) p.B.data.forEach((_, i) => (p.B.data[i] = rnd() * 0.1));
      pat.mask.data.forEach((_, i) => (pat.mask.data[i] = rnd()));
      const dk = pat.keptChannels().length;
      expect(dk).toBeGreaterThan(0);
      expect(dk).toBeLessThan(cfg.hiddenSize);
      const { configJson, weights } = exportPrunedModel(model, pat.export(model));
      expect(configJson.hidden_size).toBe(dk);
      expect(configJson.tie_word_embeddings).toBe(cfg.tieWordEmbeddings);
      const want = expectedShapes(cfg, dk);
      for (const [name, t] of weights) expect(t.shape, `${fixture} ${name}`).toEqual(want.get(name));
      await writeModelDir(join(tmp, `pruned-${fixture}`), { configJson, weights });
      const pruned = await CausalLM.load(join(tmp, `pruned-${fixture}`));
      const ids = IDS.map((r) => r.map((t) => t % cfg.vocabSize));
      const ref = await hardMasked(model, pat, ids);
      expect(maxDiff(await pruned.logits(ids), ref)).toBeLessThan(1e-4);
      // The comparison is sensitive: without the sqrt(d/d_keep) norm rescale the logits differ.
      const r = Math.sqrt(cfg.hiddenSize / dk);
      const noRescale = new Map([...weights].map(([n, t]) => [n, n.endsWith('norm.weight') ? { ...t, data: t.data.map((v) => v / r) } : t]));
      const bad = new CausalLM(pruned.config, noRescale, null, {}, 'no-rescale');
      expect(maxDiff(await bad.logits(ids), ref)).toBeGreaterThan(1e-2);
    }
  });

  it('with its defaults on both real checkpoints: the exported model keeps its tie, is smaller and costs fewer MACs per token', async () => {
    for (const name of ['stories260K', 'tinystories-656K'] as const) {
      const model = await CausalLM.load(sharedModelDir(name));
      const cfg = model.config as LlamaConfig;
      expect(cfg.tieWordEmbeddings).toBe(true);
      const data = (await loadDataset(join(DATA, 'tinystories', 'tinystories_valid_head.txt'), model.tokenizer!, { seqLen: 32 })).slice(0, 96);
      const pat = new PatMethod(model, {});
      // The recipe's optimizer and schedule; a short run (the mask schedule's T_end follows the steps).
      await new Trainer(model, pat, { ...recipeTrainerConfig(recipe), steps: 40, batchSize: 4 }).train(data);
      const dk = pat.keptChannels().length;
      expect(dk, name).toBe(pat.dKeep);
      const { configJson, weights } = exportPrunedModel(model, pat.export(model));
      expect(configJson.tie_word_embeddings).toBe(true);
      expect(weights.has('lm_head.weight')).toBe(false);
      for (const [n, t] of weights) expect(t.shape, `${name} ${n}`).toEqual(expectedShapes(cfg, dk).get(n));
      const pruned = new CausalLM(parseModelConfig(configJson, 'pruned'), weights, model.tokenizer, model.generation, 'pruned');
      const ids = IDS.map((r) => r.map((t) => t % cfg.vocabSize));
      expect(maxDiff(await pruned.logits(ids), await hardMasked(model, pat, ids))).toBeLessThan(1e-4);
      // Smaller, and cheaper per token at any context: every linear layer loses the pruned width.
      const base = modelCost(model, 128);
      const small = modelCost(pruned, 128);
      expect(small.parameters).toBe(paramCount(weights));
      expect(small.parameters).toBeLessThan(base.parameters);
      expect(small.linearMacs).toBeLessThan(base.linearMacs);
      expect(small.macsPerToken).toBeLessThan(base.macsPerToken);
      expect(small.linearMacs / base.linearMacs).toBeLessThan(0.85);
    }
  }, 90_000);

  it('rejects GPT-2 and malformed adapters with clear errors', async () => {
    const gpt2 = await CausalLM.load(join(FIXTURES, 'gpt2'));
    expect(() => new PatMethod(gpt2, {})).toThrow(/Llama-family/);
    const model = await CausalLM.load(join(FIXTURES, 'llama-gqa'));
    expect(() => new PatMethod(model, { dKeep: 48 })).toThrow(/below hidden_size/);
    expect(configSchema.parse({})).toMatchObject({ keepRatio: 0.75, hsmRank: 200, countLossWeight: 10, freezeFraction: 0.8 });
    const pat = createMethod(model, { dKeep: 40 });
    expect(pat.kind).toBe('pruned');
    const a = pat.export(model);
    a.extra!.delete(PAT_EXTRA.hsm('layers.1.mlp', 'U'));
    expect(() => exportPrunedModel(model, a)).toThrow(/layers\.1\.mlp\.U/);
    expect(() => exportPrunedModel(model, { ...a, meta: { ...a.meta, kind: 'structured' }, pruned: undefined })).toThrow(/not a pruned/);
  });
});
