/**
 * Lower-precision base weights (models/low-precision.ts, engine/quant.ts): the quantized
 * layout against onnxruntime's own MatMulNBits kernel, the logit error of f16 / int8 / int4
 * against f32 on both real checkpoints, decode on lowered weights, LoRA adapters kept in f32
 * beside them, f32 still exact against PyTorch, and the refusals (training, export, serving,
 * lowering twice).
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { Graph } from '../../src/engine/ir.js';
import { defaultRuntime } from '../../src/engine/runtime.js';
import { dequantizeBlockwise, matmulNBits, quantizeBlockwise } from '../../src/engine/quant.js';
import { bundledModelPath } from '../../src/io/model-dir.js';
import { CausalLM } from '../../src/models/causal-lm.js';
import { DecodeSession } from '../../src/models/decode.js';
import { parseWeightsDtype, type WeightsDtype } from '../../src/models/low-precision.js';
import { lowRankHooks, runsUnfusedLowRank } from '../../src/merge/unfused-lowrank.js';
import { WeightPatcher } from '../../src/merge/apply.js';
import { newAdapter } from '../../src/merge/types.js';
import { buildExportGraph } from '../../src/merge/onnx-export.js';
import { createServer } from '../../src/serve/server.js';
import { Trainer } from '../../src/train/trainer.js';
import { mulberry32 } from '../../src/util/random.js';
import { sharedModelDir } from '../helpers.js';
import { cli, json, worst } from '../cli/helpers.js';

const FIX = join(import.meta.dirname, '..', 'fixtures');

/** Max |a - b| and the share of rows whose argmax agrees. */
function compare(a: Float32Array, b: Float32Array, V: number): { maxErr: number; top1: number } {
  let maxErr = 0;
  let same = 0;
  const rows = a.length / V;
  for (let r = 0; r < rows; r++) {
    let ia = 0;
    let ib = 0;
    for (let v = 0; v < V; v++) {
      const i = r * V + v;
      maxErr = Math.max(maxErr, Math.abs(a[i] - b[i]));
      if (a[i] > a[r * V + ia]) ia = v;
      if (b[i] > b[r * V + ib]) ib = v;
    }
    if (ia === ib) same++;
  }
  return { maxErr, top1: same / rows };
}

function randomIds(seed: number, rows: number, T: number, V: number): number[][] {
  const r = mulberry32(seed);
  return Array.from({ length: rows }, () => Array.from({ length: T }, () => 3 + Math.floor(r() * (V - 3))));
}

describe('block quantization (MatMulNBits layout)', () => {
  it('dequantizes within a step, and onnxruntime computes x W^T of the dequantized weight', async () => {
    const r = mulberry32(7);
    const N = 24;
    const K = 80; // not a whole number of 32-blocks: the last block is padded
    const w = Float32Array.from({ length: N * K }, () => (r() - 0.5) * 2);
    const x = Float32Array.from({ length: 3 * K }, () => r() - 0.5);
    for (const [bits, asym] of [[8, false], [4, false], [4, true]] as const) {
      const q = quantizeBlockwise(w, N, K, bits, 32, false, asym);
      const dq = dequantizeBlockwise(q);
      const blocks = Math.ceil(K / 32);
      for (let n = 0; n < N; n++) {
        for (let k = 0; k < K; k++) {
          // Within half a step, or one step where the scale search chose to clip the block's extreme.
          const step = Math.abs(q.scales[n * blocks + Math.floor(k / 32)]);
          expect(Math.abs(dq[n * K + k] - w[n * K + k])).toBeLessThanOrEqual(step + 1e-6);
        }
      }
      // accuracy level 0: onnxruntime dequantizes in f32, so it must agree with our dequantization.
      const g = new Graph('nbits');
      g.output('y', matmulNBits(g.input('x', 'f32', [3, K]), q, 0));
      const compiled = await defaultRuntime().compile(g);
      const y = (await compiled.run({ x: { dtype: 'f32', shape: [3, K], data: x } })).y.data as Float32Array;
      let worst = 0;
      for (let i = 0; i < 3; i++) {
        for (let n = 0; n < N; n++) {
          let s = 0;
          for (let k = 0; k < K; k++) s += x[i * K + k] * dq[n * K + k];
          worst = Math.max(worst, Math.abs(y[i * N + n] - s));
        }
      }
      expect(worst, `${bits} bits${asym ? ', zero points' : ''}`).toBeLessThan(1e-4);
    }
  });
});

/**
 * Bounds on max |logit - f32 logit| over 2 x 48 random tokens, and on the share of positions
 * whose top token agrees. Measured (max |f32 logit| 16 / 18): stories260K f16 0.012, int8
 * 0.32 (rms 0.075), int4 5.2 (rms 0.76); tinystories-656K f16 0 (its weights are
 * f16-exact), int8 0.39 (rms 0.06), int4 4.8 (rms 0.56). These 64- and 128-wide models
 * are the worst case for 32-input blocks: int4 is for larger models.
 */
const BOUNDS: Record<Exclude<WeightsDtype, 'f32'>, { maxErr: number; top1: number }> = {
  f16: { maxErr: 0.05, top1: 0.97 },
  int8: { maxErr: 0.8, top1: 0.9 },
  int4: { maxErr: 8, top1: 0.5 },
};

describe.each([
  ['stories260K', sharedModelDir('stories260K')],
  ['tinystories-656K', sharedModelDir('tinystories-656K')],
])('lowered weights on %s', (name, dir) => {
  it('f16 / int8 / int4 logits stay within the stated error of f32, in less memory; decode agrees with the full forward', async () => {
    const f32 = await CausalLM.load(dir);
    const V = f32.vocabSize;
    const ids = randomIds(11, 2, 48, V);
    const want = (await f32.logits(ids)).data;
    // f32 bytes of the lowered linear weights (a tied head is the embedding table: f16 leaves it, int8/int4 copy it).
    const tied = f32.config.tieWordEmbeddings;
    const linBytes = f32.sites().reduce((n, s) => n + (tied && s.kind === 'lm_head' ? 0 : s.outFeatures * s.inFeatures * 4), 0);
    const headBytes = tied ? f32.vocabSize * f32.config.hiddenSize * 4 : 0;
    for (const dtype of ['f16', 'int8', 'int4'] as const) {
      const model = await CausalLM.load(dir, { weightsDtype: dtype });
      expect(model.weightsDtype).toBe(dtype);
      const got = (await model.logits(ids)).data;
      const { maxErr, top1 } = compare(got, want, V);
      console.log(`${name} ${dtype}: max |logit error| ${maxErr.toFixed(4)}, top-1 agreement ${(top1 * 100).toFixed(1)}%`);
      expect(maxErr, dtype).toBeLessThan(BOUNDS[dtype].maxErr);
      if (dtype !== 'f16') expect(maxErr, `${dtype} changes the logits`).toBeGreaterThan(0);
      expect(top1, dtype).toBeGreaterThanOrEqual(BOUNDS[dtype].top1);
      // The lowered weights take half (f16) or under 0.3x / 0.2x (int8 / int4, with scales and zero points) of their f32 bytes.
      if (dtype === 'f16') expect(model.weightBytes).toBe(f32.weightBytes - linBytes / 2);
      else expect((model.weightBytes - f32.weightBytes + linBytes) / (linBytes + headBytes), dtype).toBeLessThan(dtype === 'int8' ? 0.3 : 0.2);
      // Decode (in-place KV cache) on the lowered weights: as close to f32 as the full forward
      // (not bit-equal to it: with int8 activations MatMulNBits rounds differently per shape).
      const s = await DecodeSession.open(model, 1);
      const last = await s.prefill([ids[0].slice(0, 40)]);
      expect(compare(last.data, want.subarray(39 * V, 40 * V), V).maxErr, `${dtype} prefill`).toBeLessThan(BOUNDS[dtype].maxErr);
      const step = await s.next([ids[0][40]]);
      expect(compare(step.data, want.subarray(40 * V, 41 * V), V).maxErr, `${dtype} decode step`).toBeLessThan(BOUNDS[dtype].maxErr);
    }
  });
});

describe('lower precision keeps f32 exact where it matters', () => {
  it("weightsDtype 'f32' still matches the PyTorch logits within 1e-4", async () => {
    const ref = JSON.parse(readFileSync(join(FIX, 'stories260K-reference.json'), 'utf8')) as { input_ids: number[]; logits: number[][] };
    const model = await CausalLM.load(bundledModelPath(), { weightsDtype: 'f32' });
    const out = await model.logits([ref.input_ids]);
    let worst = 0;
    ref.logits.forEach((row, t) => row.forEach((v, i) => (worst = Math.max(worst, Math.abs(out.data[t * 512 + i] - v)))));
    expect(worst).toBeLessThan(1e-4);
  });

  it('GPT-2 (Conv1D layout, tied head) and a Llama with a tied head lower too', async () => {
    for (const fixture of ['gpt2', 'llama-mha-tied']) {
      const dir = join(FIX, 'models', fixture);
      const ref = JSON.parse(readFileSync(join(dir, 'reference.json'), 'utf8')) as { input_ids: number[][] };
      const want = (await (await CausalLM.load(dir)).logits(ref.input_ids)).data;
      for (const dtype of ['f16', 'int8'] as const) {
        const model = await CausalLM.load(dir, { weightsDtype: dtype });
        const { maxErr } = compare((await model.logits(ref.input_ids)).data, want, model.vocabSize);
        expect(maxErr, `${fixture} ${dtype}`).toBeLessThan(BOUNDS[dtype].maxErr);
      }
    }
  });

  it('a LoRA adapter runs unfused in f32 beside f16 weights: its effect matches the f32 fused one', async () => {
    const dir = sharedModelDir('stories260K');
    const r = mulberry32(5);
    const base = await CausalLM.load(dir);
    const lora = newAdapter({ method: 'lora', kind: 'lowrank', base: { model: 'stories260K', fingerprint: '' } });
    for (const s of base.sites().filter((x) => /q_proj|v_proj/.test(x.name))) {
      lora.lowrank.set(s.weightName, {
        A: { dtype: 'f32', shape: [4, s.inFeatures], data: Float32Array.from({ length: 4 * s.inFeatures }, () => (r() - 0.5) * 0.4) },
        B: { dtype: 'f32', shape: [s.outFeatures, 4], data: Float32Array.from({ length: s.outFeatures * 4 }, () => (r() - 0.5) * 0.4) },
        scale: 2,
      });
    }
    const ids = randomIds(3, 1, 32, base.vocabSize);
    const baseLogits = (await base.logits(ids)).data.slice();
    new WeightPatcher(base.weights).apply(lora, { force: true });
    const fused = (await base.logits(ids)).data;
    const model = await CausalLM.load(dir, { weightsDtype: 'f16' });
    expect(runsUnfusedLowRank(model, lora)).toBe(true);
    const { hooks, feeds } = lowRankHooks(model, lora, 'adapter0');
    const got = (await model.logits(ids, { hooks, extraFeeds: feeds })).data;
    const plain = (await model.logits(ids)).data;
    // The adapter moves the logits by much more than f16 does; with it, f16 stays within f16's bound.
    expect(compare(fused, baseLogits, base.vocabSize).maxErr).toBeGreaterThan(1);
    expect(compare(got, fused, base.vocabSize).maxErr).toBeLessThan(BOUNDS.f16.maxErr);
    expect(compare(got, plain, base.vocabSize).maxErr).toBeGreaterThan(1);
  });

  it('training, ONNX export, serving and lowering twice refuse a lowered model with a clear error', async () => {
    const model = await CausalLM.load(bundledModelPath(), { weightsDtype: 'int4' });
    const lora = (await import('../../src/adapters/lora.js')).LoraMethod;
    expect(() => new Trainer(model, new lora(model, { r: 4 }))).toThrow(/training needs the f32 weights.*int4.*weightsDtype 'f32'/);
    expect(() => buildExportGraph(model)).toThrow(/ONNX export .*needs the f32 weights/);
    await expect(createServer({ model, adaptersDir: FIX })).rejects.toThrow(/serving .*needs the f32 weights/);
    expect(() => model.setWeightsDtype('int8')).toThrow(/already stored as int4; load the model again/);
    expect(() => parseWeightsDtype('bf16')).toThrow(/--weights-dtype bf16: choose one of f32, f16, int8, int4/);
  });

  it('the CLI: logits --weights-dtype int8 near the f32 logits; a bad value is a usage error', async () => {
    const ids = '1,403,407,261,378,100,42,7';
    const [f32, int8, bad] = await Promise.all([
      cli(['logits', '--ids', ids]),
      cli(['logits', '--ids', ids, '--weights-dtype', 'int8']),
      cli(['logits', '--ids', ids, '--weights-dtype', 'bf16']),
    ]);
    const d = worst(json<{ logits: number[][] }>(int8).logits, json<{ logits: number[][] }>(f32).logits);
    expect(d).toBeGreaterThan(0);
    expect(d).toBeLessThan(BOUNDS.int8.maxErr);
    expect(int8.stderr).toContain('linear weights stored as int8');
    expect(bad.code).toBe(2);
    expect(bad.stderr).toMatch(/--weights-dtype must be one of f32, f16, int8, int4, got 'bf16'/);
  });
});
