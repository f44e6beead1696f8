/**
 * Hugging Face PEFT directories written by scripts/make_peft_fixtures.py (PEFT's on-disk layout,
 * logits from PEFT's unfused LoRA forward in PyTorch float64): loaded by loadAdapter, fused, and
 * compared with the reference; written back by exportPeft; and their adapter_config.json used
 * as a LoRA method config, which must pick the same modules, ranks and scales.
 */
import { promises as fsp } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { LoraMethod } from '../../src/adapters/lora.js';
import { readSafetensors } from '../../src/io/safetensors.js';
import { loadAdapter } from '../../src/merge/adapter.js';
import { WeightPatcher } from '../../src/merge/apply.js';
import { exportPeft, importPeft } from '../../src/merge/peft.js';
import { CausalLM } from '../../src/models/causal-lm.js';
import { selectTargetNames } from '../../src/models/targets.js';
import { paramFeeds } from '../../src/train/param-feeds.js';
import { formatTrainableParameters, trainableParameters } from '../../src/train/trainable.js';
import { expectWeightsEqual, snapshotWeights } from '../helpers.js';

const FIXTURES = path.resolve('test/fixtures/peft');
interface Fixture {
  dir: string;
  model: string;
  targets: string[];
  saved?: string[];
  input_ids: number[][];
  logits: number[][][];
}
let refs: Record<string, Fixture>;
let tmp: string;

beforeAll(async () => {
  refs = JSON.parse(await fsp.readFile(path.join(FIXTURES, 'reference.json'), 'utf8'));
  tmp = await fsp.mkdtemp(path.join(os.tmpdir(), 'sparsetune-peftfix-'));
});
afterAll(async () => {
  await fsp.rm(tmp, { recursive: true, force: true });
});

async function peftConfig(name: string): Promise<Record<string, unknown>> {
  return JSON.parse(await fsp.readFile(path.join(FIXTURES, name, 'adapter_config.json'), 'utf8'));
}

/** Largest |logit - reference| over every row and position. */
async function worstLogitError(model: CausalLM, ref: Fixture): Promise<number> {
  const out = await model.logits(ref.input_ids);
  const [B, T, V] = out.shape;
  let worst = 0;
  for (let b = 0; b < B; b++) for (let t = 0; t < T; t++) for (let v = 0; v < V; v++) worst = Math.max(worst, Math.abs(out.data[(b * T + t) * V + v] - ref.logits[b][t][v]));
  return worst;
}

describe.each(['stories260K-lora', 'gpt2-lora', 'llama-saved'])('PEFT fixture %s', (name) => {
  it('loads through loadAdapter, fuses to the logits of PEFT\'s forward, and reverts exactly', async () => {
    const ref = refs[name];
    const model = await CausalLM.load(path.resolve(ref.model));
    const shapes = new Map([...model.weights].map(([k, v]) => [k, v.shape]));
    const before = snapshotWeights(model);
    const base = await worstLogitError(model, ref);
    const adapter = await loadAdapter(path.join(FIXTURES, name), { shapes, base: model.weights });
    expect(adapter.meta.method).toBe('peft-lora');
    expect([...adapter.lowrank.keys()].sort()).toEqual(ref.targets.map((m) => `${m}.weight`).sort());
    expect([...adapter.additive.keys()].sort()).toEqual([...(ref.saved ?? [])].sort());
    const patcher = new WeightPatcher(model.weights);
    const h = patcher.apply(adapter);
    const worst = await worstLogitError(model, ref);
    expect(worst).toBeLessThan(1e-4);
    expect(base).toBeGreaterThan(100 * worst); // the adapter moves the logits far more than the error
    patcher.revert(h);
    expectWeightsEqual(model, before);
  });

  it('writes back as PEFT: the same tensors, and a directory that imports to the same adapter', async () => {
    const ref = refs[name];
    const model = await CausalLM.load(path.resolve(ref.model));
    const src = path.join(FIXTURES, name);
    const adapter = await importPeft(src, { base: model.weights });
    const out = path.join(tmp, name);
    await exportPeft(adapter, out, { base: model.weights });
    const mine = await fsp.readFile(path.join(out, 'adapter_model.safetensors'));
    const theirs = await fsp.readFile(path.join(src, 'adapter_model.safetensors'));
    if (!ref.saved) {
      // LoRA factors only: byte for byte what PEFT's save_pretrained wrote (header, order, data).
      expect(mine.equals(theirs)).toBe(true);
    } else {
      // Saved modules go through base + float32(saved - base): the same tensors, values within one rounding.
      const [a, b] = [(await readSafetensors(path.join(out, 'adapter_model.safetensors'))).tensors, (await readSafetensors(path.join(src, 'adapter_model.safetensors'))).tensors];
      expect([...a.keys()]).toEqual([...b.keys()]);
      for (const [k, t] of b) {
        const got = a.get(k)!.data as Float32Array;
        (t.data as Float32Array).forEach((x, i) => expect(Math.abs(got[i] - x), k).toBeLessThanOrEqual(Math.abs(x) * 2 ** -23));
      }
    }
    const cfg = JSON.parse(await fsp.readFile(path.join(out, 'adapter_config.json'), 'utf8'));
    const theirsCfg = await peftConfig(name);
    for (const k of ['peft_type', 'task_type', 'r', 'lora_alpha', 'use_rslora', 'fan_in_fan_out', 'bias', 'use_dora']) expect(cfg[k], k).toEqual(theirsCfg[k]);
    expect(Object.keys(cfg)).toEqual([...Object.keys(cfg)].sort()); // sort_keys, as PEFT writes it
    const again = await importPeft(out, { base: model.weights });
    expect([...again.lowrank.keys()].sort()).toEqual([...adapter.lowrank.keys()].sort());
    for (const [k, p] of adapter.lowrank) {
      expect(again.lowrank.get(k)!.A).toEqual(p.A);
      expect(again.lowrank.get(k)!.B).toEqual(p.B);
      expect(again.lowrank.get(k)!.scale).toBe(p.scale);
    }
  });

  it('its adapter_config.json, as a LoRA method config, selects the same modules, ranks and scales', async () => {
    const ref = refs[name];
    const model = await CausalLM.load(path.resolve(ref.model), {});
    const config = await peftConfig(name);
    const lora = new LoraMethod(model, config as never);
    expect(lora.pairs.map((p) => p.site.name)).toEqual(ref.targets);
    const fromFile = await importPeft(path.join(FIXTURES, name), { base: model.weights });
    for (const p of lora.pairs) {
      const want = fromFile.lowrank.get(p.site.weightName)!;
      expect(p.scale, p.site.name).toBe(want.scale);
      // Our pair's A is [r, in] in PEFT's orientation; the imported GPT-2 pair is stored transposed.
      expect(p.A.shape[0], p.site.name).toBe(config.fan_in_fan_out ? want.B.shape[1] : want.A.shape[0]);
    }
    expect(lora.saved.paramNames).toEqual([...(ref.saved ?? [])].sort());
    const linear = model.sites().map((s) => s.name);
    expect(selectTargetNames(linear, { targetModules: config.target_modules as string[], excludeModules: config.exclude_modules as string[] | null, layersToTransform: config.layers_to_transform as number[] | null, layersPattern: config.layers_pattern as string | null, modulesToSave: config.modules_to_save as string[] | null }, 'lm_head')).toEqual(ref.targets);
    // PEFT's print_trainable_parameters: the pairs and saved copies, over base + those.
    const s = trainableParameters(model, lora);
    const pairs = lora.pairs.reduce((n, p) => n + p.A.data.length + p.B.data.length, 0);
    const saved = lora.saved.params.reduce((n, p) => n + p.data.length, 0);
    const base = [...model.weights.values()].reduce((n, t) => n + t.data.length, 0);
    expect(s).toEqual({ trainable: pairs + saved, total: base + pairs + saved, percent: (100 * (pairs + saved)) / (base + pairs + saved) });
    expect(formatTrainableParameters(s)).toMatch(/^trainable params: [\d,]+ \|\| all params: [\d,]+ \|\| trainable%: \d+\.\d{4}$/);
  });
});

describe('PEFT saved modules', () => {
  it('need the base weights, and are refused where the base has no such tensor', async () => {
    await expect(importPeft(path.join(FIXTURES, 'llama-saved'))).rejects.toMatchObject({ code: 'BAD_ARGUMENT', message: expect.stringMatching(/saves whole modules.*base weights/) });
    // The stories260K base ties lm_head to the embedding: a saved lm_head has nowhere to go.
    const tied = await CausalLM.load(path.resolve('models/stories260K'));
    await expect(importPeft(path.join(FIXTURES, 'llama-saved'), { base: tied.weights })).rejects.toMatchObject({ code: 'BAD_ADAPTER' });
    expect(() => new LoraMethod(tied, { target_modules: ['q_proj'], modules_to_save: ['lm_head'] } as never)).toThrow(/tied embeddings/);
  });
});

describe('GPT-2 (Conv1D) LoRA to PEFT and back', () => {
  it('writes PEFT\'s orientation (A [r, in], B [out, r], fan_in_fan_out) and reads it back to the same adapter', async () => {
    const model = await CausalLM.load(path.resolve('test/fixtures/models/gpt2'));
    const lora = new LoraMethod(model, { r: 2, alpha: 4, targetModules: ['c_attn', 'mlp.c_proj'] });
    for (const p of lora.pairs) p.B.data.forEach((_, i, a) => (a[i] = Math.sin(i + 1) * 0.05));
    const unfused = await model.logits([[1, 5, 9, 2]], { hooks: lora.hooks('eval'), extraFeeds: paramFeeds(lora.params()) });
    const adapter = lora.export(model);
    expect(adapter.meta.config.fan_in_fan_out).toBe(true);
    const dir = path.join(tmp, 'gpt2-roundtrip');
    await exportPeft(adapter, dir);
    const { tensors } = await readSafetensors(path.join(dir, 'adapter_model.safetensors'));
    expect(tensors.get('base_model.model.transformer.h.0.attn.c_attn.lora_A.weight')!.shape).toEqual([2, 32]);
    expect(tensors.get('base_model.model.transformer.h.0.attn.c_attn.lora_B.weight')!.shape).toEqual([96, 2]);
    expect(JSON.parse(await fsp.readFile(path.join(dir, 'adapter_config.json'), 'utf8')).fan_in_fan_out).toBe(true);
    const back = await loadAdapter(dir, { shapes: new Map([...model.weights].map(([k, v]) => [k, v.shape])) });
    expect(back.lowrank).toEqual(adapter.lowrank);
    new WeightPatcher(model.weights).apply(back);
    const fused = await model.logits([[1, 5, 9, 2]]);
    let worst = 0;
    fused.data.forEach((x, i) => (worst = Math.max(worst, Math.abs(x - unfused.data[i]))));
    expect(worst).toBeLessThan(1e-4);
  });
});
