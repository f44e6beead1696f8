import { promises as fsp } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { SparsetuneError } from '../../src/errors.js';
import { decodeBF16, encodeBF16 } from '../../src/io/half.js';
import { readSafetensors, writeSafetensors } from '../../src/io/safetensors.js';
import { WeightPatcher } from '../../src/merge/apply.js';
import { exportPeft, importPeft } from '../../src/merge/peft.js';
import { newAdapter, type Adapter, type LowRankPair } from '../../src/merge/types.js';
import type { HostTensor } from '../../src/tensor.js';
import { randomWeights, rng } from './helpers.js';

const Q = 'model.layers.0.self_attn.q_proj.weight';
const O = 'model.layers.1.self_attn.o_proj.weight';

let root: string;
beforeAll(async () => {
  root = await fsp.mkdtemp(path.join(os.tmpdir(), 'sparsetune-peft-'));
});
afterAll(async () => {
  await fsp.rm(root, { recursive: true, force: true });
});
let counter = 0;
const fresh = (): string => path.join(root, `p${counter++}`);

const t32 = (shape: number[], r: () => number): HostTensor<'f32'> => ({
  dtype: 'f32',
  shape,
  data: Float32Array.from({ length: shape[0] * shape[1] }, () => Math.fround(r() - 0.5)),
});

function lora(r: () => number, out: number, inDim: number, rank: number, scale: number, bias = false): LowRankPair {
  const p: LowRankPair = { A: t32([rank, inDim], r), B: t32([out, rank], r), scale };
  if (bias) p.biasDelta = Float32Array.from({ length: out }, () => r());
  return p;
}

/**
 * Identical factor tensors; scales equal, except where alpha / r cannot reach the float64
 * scale at all (0.7 at r = 3): then within one ulp.
 */
function expectSamePairs(actual: Adapter, expected: Adapter): void {
  expect([...actual.lowrank.keys()].sort()).toEqual([...expected.lowrank.keys()].sort());
  for (const [name, want] of expected.lowrank) {
    const got = actual.lowrank.get(name)!;
    expect(got.A).toEqual(want.A);
    expect(got.B).toEqual(want.B);
    expect(got.biasDelta).toEqual(want.biasDelta);
    const rank = want.A.shape[0];
    const denom = expected.meta.config.use_rslora ? Math.sqrt(rank) : rank;
    const reachable = [-2, -1, 0, 1, 2].some((k) => (want.scale * denom * (1 + k * Number.EPSILON)) / denom === want.scale);
    if (reachable) expect(got.scale, name).toBe(want.scale);
    else expect(Math.abs(got.scale - want.scale), name).toBeLessThanOrEqual(want.scale * Number.EPSILON);
  }
}

async function expectRejected(p: Promise<unknown>, pattern: RegExp, code = 'BAD_ADAPTER'): Promise<void> {
  const err = await p.then(() => null, (e: unknown) => e);
  expect(err).toBeInstanceOf(SparsetuneError);
  expect((err as SparsetuneError).code).toBe(code);
  expect((err as Error).message).toMatch(pattern);
}

/** A directory laid out the way PEFT's save_pretrained writes a LoRA adapter. */
async function writePeftDir(dir: string, config: Record<string, unknown>, tensors: Record<string, HostTensor>, dtypes?: Record<string, 'BF16' | 'F16'>): Promise<void> {
  await fsp.mkdir(dir, { recursive: true });
  await fsp.writeFile(path.join(dir, 'adapter_config.json'), JSON.stringify({ peft_type: 'LORA', task_type: 'CAUSAL_LM', ...config }));
  await writeSafetensors(path.join(dir, 'adapter_model.safetensors'), tensors, { metadata: { format: 'pt' }, dtypes });
}

describe('PEFT LoRA interop', () => {
  it('export then import gives identical tensors and scales (mixed ranks, scales and biases)', async () => {
    const r = rng(21);
    const a = newAdapter({ method: 'lora', kind: 'lowrank', base: { model: 'tiny-llama', fingerprint: 'sha256:1234' } });
    a.lowrank.set(Q, lora(r, 5, 7, 4, 2, true));
    a.lowrank.set(O, lora(r, 4, 6, 3, 0.7)); // 0.7 * 3 / 3 !== 0.7: lora_alpha must be nudged
    a.lowrank.set('model.embed_tokens.weight', lora(r, 3, 8, 4, 1 / 3));
    const dir = fresh();
    await exportPeft(a, dir);
    const cfg = JSON.parse(await fsp.readFile(path.join(dir, 'adapter_config.json'), 'utf8'));
    expect(cfg).toMatchObject({ peft_type: 'LORA', task_type: 'CAUSAL_LM', r: 4, base_model_name_or_path: 'tiny-llama', use_rslora: false, lora_bias: true });
    expect(cfg.target_modules).toEqual(['model.embed_tokens', 'model.layers.0.self_attn.q_proj', 'model.layers.1.self_attn.o_proj']);
    expect(cfg.rank_pattern).toEqual({ 'model.layers.1.self_attn.o_proj': 3 });
    const { tensors } = await readSafetensors(path.join(dir, 'adapter_model.safetensors'));
    expect(tensors.get('base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight')!.shape).toEqual([4, 7]);
    expect(tensors.get('base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight')!.shape).toEqual([5, 4]);

    const b = await importPeft(dir);
    expect(b.meta).toMatchObject({ method: 'peft-lora', kind: 'lowrank', base: { model: 'tiny-llama', fingerprint: '' } });
    expectSamePairs(b, a);
    // And again through the imported adapter: the config it carries is reused faithfully.
    const dir2 = fresh();
    await exportPeft(b, dir2);
    expectSamePairs(await importPeft(dir2), a);
  });

  it('round-trips rsLoRA scales (alpha / sqrt(r)) exactly', async () => {
    const r = rng(5);
    const a = newAdapter({ method: 'lora', kind: 'lowrank', base: { model: '', fingerprint: '' }, config: { use_rslora: true } });
    a.lowrank.set(Q, lora(r, 5, 7, 3, 0.7));
    a.lowrank.set(O, lora(r, 4, 6, 6, 0.991706225557772)); // needs a nudged alpha under rsLoRA
    const dir = fresh();
    await exportPeft(a, dir);
    const cfg = JSON.parse(await fsp.readFile(path.join(dir, 'adapter_config.json'), 'utf8'));
    expect(cfg.use_rslora).toBe(true);
    expect(cfg.base_model_name_or_path).toBeNull();
    expectSamePairs(await importPeft(dir), a);
  });

  it('imports a PEFT directory (BF16 factors, alpha_pattern) and fuses W + alpha/r · B·A', async () => {
    const r = rng(9);
    const A = t32([4, 7], r);
    const B = t32([5, 4], r);
    const A2 = t32([4, 6], r);
    const B2 = t32([4, 4], r);
    const dir = fresh();
    await writePeftDir(
      dir,
      { r: 4, lora_alpha: 8, target_modules: ['q_proj', 'o_proj'], alpha_pattern: { o_proj: 2 }, base_model_name_or_path: 'tiny-llama', lora_dropout: 0.05, bias: 'none' },
      {
        'base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight': A,
        'base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight': B,
        'base_model.model.model.layers.1.self_attn.o_proj.lora_A.weight': A2,
        'base_model.model.model.layers.1.self_attn.o_proj.lora_B.weight': B2,
      },
      { 'base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight': 'BF16' },
    );
    const adapter = await importPeft(dir);
    expect(adapter.lowrank.get(Q)!.scale).toBe(2);
    expect(adapter.lowrank.get(O)!.scale).toBe(0.5);
    const Abf = decodeBF16(encodeBF16(A.data));
    expect(adapter.lowrank.get(Q)!.A.data).toEqual(Abf);

    const w = randomWeights(rng(1));
    const before = w.get(Q)!.data.slice();
    new WeightPatcher(w, { fingerprint: 'x' }).apply(adapter);
    for (let o = 0; o < 5; o++) {
      for (let i = 0; i < 7; i++) {
        let dot = 0;
        for (let k = 0; k < 4; k++) dot += B.data[o * 4 + k] * Abf[k * 7 + i];
        expect(w.get(Q)!.data[o * 7 + i]).toBe(Math.fround(before[o * 7 + i] + Math.fround(2 * dot)));
      }
    }
  });

  it('refuses what is not a plain LoRA, and what PEFT cannot hold', async () => {
    const r = rng(2);
    const pairTensors = {
      'base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight': t32([2, 7], r),
      'base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight': t32([5, 2], r),
    };
    let dir = fresh();
    await writePeftDir(dir, { r: 2, lora_alpha: 4, use_dora: true }, pairTensors);
    await expectRejected(importPeft(dir), /DoRA/);
    dir = fresh();
    await writePeftDir(dir, { r: 2, lora_alpha: 4, modules_to_save: ['lm_head'] }, { ...pairTensors, 'base_model.model.lm_head.weight': t32([3, 4], r) });
    await expectRejected(importPeft(dir), /saves whole modules/, 'BAD_ARGUMENT');
    await expectRejected(importPeft(dir, { base: new Map() }), /"lm_head.weight" is not a parameter of the base model/);
    dir = fresh();
    await writePeftDir(dir, { r: 3, lora_alpha: 4 }, pairTensors);
    await expectRejected(importPeft(dir), /rank 2 but adapter_config\.json gives it r = 3/);
    dir = fresh();
    await writePeftDir(dir, { r: 2, lora_alpha: 4, peft_type: 'IA3' }, pairTensors);
    await expectRejected(importPeft(dir), /peft_type "IA3"/);
    dir = fresh();
    await writePeftDir(dir, { r: 2, lora_alpha: 4 }, { ...pairTensors, 'base_model.model.model.embed_tokens.lora_embedding_A': t32([2, 3], r) });
    await expectRejected(importPeft(dir), /unsupported tensor/);
    dir = fresh();
    await writePeftDir(dir, { r: 2, lora_alpha: 4 }, { 'base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight': t32([2, 7], r) });
    await expectRejected(importPeft(dir), /no matching lora_B/);
    dir = fresh();
    await writePeftDir(dir, { r: 'two', lora_alpha: 4 }, pairTensors);
    await expectRejected(importPeft(dir), /not a LoRA adapter config/);
    await expectRejected(importPeft(fresh()), /adapter_config\.json is missing/, 'NOT_FOUND');

    const mixed: Adapter = newAdapter({ method: 'x', kind: 'additive', base: { model: '', fingerprint: '' } });
    mixed.lowrank.set(Q, lora(r, 5, 7, 2, 1));
    mixed.additive.set(O, { indices: Int32Array.from([1]), values: Float32Array.from([1]) });
    await expectRejected(exportPeft(mixed, fresh()), /only hold as modules_to_save \(pass the base weights/, 'BAD_ARGUMENT');
    const masked = newAdapter({ method: 'm', kind: 'mask', base: { model: '', fingerprint: '' } });
    masked.lowrank.set(Q, lora(r, 5, 7, 2, 1));
    masked.masks.set(O, { bits: new Uint8Array(3), numel: 24 });
    await expectRejected(exportPeft(masked, fresh()), /cannot hold/, 'BAD_ARGUMENT');
    await expectRejected(exportPeft(newAdapter({ method: 'e', kind: 'lowrank', base: { model: '', fingerprint: '' } }), fresh()), /no low-rank/, 'BAD_ARGUMENT');
  });
});
