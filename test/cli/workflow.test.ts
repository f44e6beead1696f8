import { beforeAll, describe, expect, it } from 'vitest';
import { cpSync, existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { loadAdapter } from '../../src/merge/adapter.js';
import { fingerprintWeights } from '../../src/merge/fingerprint.js';
import { loadModel, bundledModelPath } from '../../src/io/model-dir.js';
import { CausalLM } from '../../src/models/causal-lm.js';
import { WeightPatcher } from '../../src/merge/apply.js';
import { readMetrics } from '../../src/train/metrics.js';
import { cli, json, SHARED_DATA, type CliResult } from './helpers.js';

// Spanish sentences: far from the bundled model's English stories, so a few LoRA steps
// change its predictions visibly.
const lines = readFileSync(join(SHARED_DATA, 'ud-pud', 'pud_es.txt'), 'utf8').split('\n').filter(Boolean);

let tmp: string;
let trainFile: string;
let evalFile: string;
let out: string;
let trained: CliResult;
let adaptedLogits: number[][];

interface Logits {
  ids: number[];
  shape: [number, number];
  logits: number[][];
}

const IDS = '1,403,407,261,378';
const TRAIN_ARGS = () => ['train', '--method', 'lora', '--data', trainFile, '--eval', evalFile, '--steps', '6', '--lr', '2e-2', '--batch-size', '4', '--seq-len', '32', '--checkpoint-every', '3', '--eval-every', '3'];

beforeAll(async () => {
  tmp = mkdtempSync(join(tmpdir(), 'sparsetune-cli-flow-'));
  trainFile = join(tmp, 'train.txt');
  evalFile = join(tmp, 'eval.jsonl');
  writeFileSync(trainFile, lines.slice(0, 40).join('\n'));
  writeFileSync(evalFile, lines.slice(900, 910).map((text) => JSON.stringify({ text })).join('\n'));
  out = join(tmp, 'lora');
  trained = await cli([...TRAIN_ARGS(), '--out', out, '--config', writeConfig()]);
});

function writeConfig(): string {
  const file = join(tmp, 'lora.json');
  writeFileSync(file, JSON.stringify({ r: 4, alpha: 8, targetModules: ['q_proj', 'v_proj', 'down_proj'] }));
  return file;
}

describe('sparsetune train', () => {
  it('trains LoRA, prints loss before/after, and writes a loadable adapter, metrics and checkpoints', async () => {
    expect(trained.code, trained.stderr).toBe(0);
    const before = Number(/eval loss before: ([\d.]+)/.exec(trained.stdout)![1]);
    const after = Number(/eval loss after: +([\d.]+)/.exec(trained.stdout)![1]);
    expect(after).toBeLessThan(before);
    expect(trained.stderr).toMatch(/step 6\/6 loss/);

    const adapter = await loadAdapter(out);
    expect(adapter.meta.method).toBe('lora');
    expect(adapter.meta.kind).toBe('lowrank');
    expect(adapter.meta.config).toMatchObject({ r: 4, alpha: 8 });
    expect([...adapter.lowrank.keys()]).toContain('model.layers.0.mlp.down_proj.weight');
    const base = await loadModel(bundledModelPath());
    expect(adapter.meta.base.fingerprint).toBe(fingerprintWeights(base.weights));
    expect(adapter.meta.metrics.evalLossAfter).toBeCloseTo(after, 4);

    const metrics = await readMetrics(join(out, 'metrics.jsonl'));
    expect(metrics.filter((m) => m.type === 'train').map((m) => m.step)).toEqual([1, 2, 3, 4, 5, 6]);
    expect(metrics.filter((m) => m.type === 'eval').map((m) => m.step)).toEqual([0, 3, 6]);
    expect(existsSync(join(out, 'checkpoints', 'step-00000003', 'checkpoint.json'))).toBe(true);
    expect(existsSync(join(out, 'checkpoints', 'step-00000006', 'state.safetensors'))).toBe(true);
  });

  it('refuses to overwrite a run, and --resume continues it to the same adapter bit for bit', async () => {
    const again = await cli([...TRAIN_ARGS(), '--out', out, '--config', join(tmp, 'lora.json')]);
    expect(again.code).toBe(2);
    expect(again.stderr).toMatch(/already holds a training run.*--resume.*--overwrite/);

    // Pretend the run died after step 3: drop the later checkpoint, resume, compare.
    const copy = join(tmp, 'resumed');
    cpSync(out, copy, { recursive: true });
    rmSync(join(copy, 'checkpoints', 'step-00000006'), { recursive: true });
    const resumed = await cli([...TRAIN_ARGS(), '--out', copy, '--config', join(tmp, 'lora.json'), '--resume']);
    expect(resumed.code, resumed.stderr).toBe(0);
    expect(resumed.stdout).toContain('resumed from step 3');
    const [a, b] = await Promise.all([loadAdapter(out), loadAdapter(copy)]);
    for (const [name, pair] of a.lowrank) {
      expect(Buffer.from(b.lowrank.get(name)!.A.data.buffer).equals(Buffer.from(pair.A.data.buffer))).toBe(true);
      expect(Buffer.from(b.lowrank.get(name)!.B.data.buffer).equals(Buffer.from(pair.B.data.buffer))).toBe(true);
    }
    const steps = (await readMetrics(join(copy, 'metrics.jsonl'))).filter((m) => m.type === 'train');
    const ref = (await readMetrics(join(out, 'metrics.jsonl'))).filter((m) => m.type === 'train');
    expect(steps.map((m) => m.loss)).toEqual(ref.map((m) => m.loss));
  });
});

describe('inference commands with and without the adapter', () => {
  it('eval, logits and generate change with the adapter; logits JSON has one row per position', async () => {
    const adapterArgs = ['--adapter', out];
    const evalArgs = ['eval', '--data', evalFile, '--seq-len', '32'];
    const logitsArgs = ['logits', '--ids', IDS];
    const genArgs = ['generate', '--prompt', 'Once upon a time', '--max-tokens', '24'];
    const [evalBase, evalAdapted, logitsBase, logitsAdapted, genBase, genAdapted] = await Promise.all([
      cli(evalArgs),
      cli([...evalArgs, ...adapterArgs]),
      cli(logitsArgs),
      cli([...logitsArgs, ...adapterArgs]),
      cli(genArgs),
      cli([...genArgs, ...adapterArgs]),
    ]);
    const eb = json<{ loss: number; ppl: number; tokens: number }>(evalBase);
    const ea = json<{ loss: number; ppl: number; tokens: number }>(evalAdapted);
    expect(eb.tokens).toBe(ea.tokens);
    expect(eb.ppl).toBeCloseTo(Math.exp(eb.loss), 6);
    expect(ea.loss).toBeLessThan(eb.loss);

    const lb = json<Logits>(logitsBase);
    const la = json<Logits>(logitsAdapted);
    expect(lb.shape).toEqual([5, 512]);
    expect(lb.logits).toHaveLength(5);
    expect(lb.logits.every((row) => row.length === 512)).toBe(true);
    expect(la.logits).not.toEqual(lb.logits);
    adaptedLogits = la.logits;

    expect(genBase.code).toBe(0);
    expect(genAdapted.code).toBe(0);
    expect(genBase.stdout.trim().length).toBeGreaterThan(0);
    expect(genAdapted.stdout).not.toBe(genBase.stdout);
    expect(genBase.stderr).toMatch(/\[24 tokens, finish: length\]|finish: eos/);
  });

  it('merge writes a model whose logits equal base + adapter; compose equals applying both', async () => {
    const merged = join(tmp, 'merged');
    const composed = join(tmp, 'composed');
    const [m, c] = await Promise.all([cli(['merge', '--adapter', out, '--out', merged]), cli(['compose', '--adapter', out, '--adapter', out, '--out', composed])]);
    expect(m.code, m.stderr).toBe(0);
    expect(c.code, c.stderr).toBe(0);
    expect(existsSync(join(merged, 'config.json')) && existsSync(join(merged, 'tokenizer.json'))).toBe(true);
    // The adapter was trained on the bundled base, not on the merged weights: refused unless forced.
    const [refused, forced] = await Promise.all([
      cli(['logits', '--ids', IDS, '--model', merged, '--adapter', out]),
      cli(['logits', '--ids', IDS, '--model', merged, '--adapter', out, '--force']),
    ]);
    expect(refused.code).toBe(1);
    expect(refused.stderr).toMatch(/adapter "lora" was trained on base model .* with fingerprint .*--force/);
    expect(forced.code).toBe(0);
    expect(forced.stderr).toMatch(/warning: .* was trained on other base weights/);

    // The merged directory is a plain HF model: it loads, and computes what the CLI computed with --adapter.
    const ids = [IDS.split(',').map(Number)];
    const rows = (t: { shape: number[]; data: Float32Array }) => Array.from({ length: t.shape[1] }, (_, p) => Array.from(t.data.subarray(p * t.shape[2], (p + 1) * t.shape[2])));
    const fused = await CausalLM.load(merged);
    expect(rows(await fused.logits(ids))).toEqual(adaptedLogits);

    // The composed adapter applies to the same bits as its two inputs applied together.
    const base = await CausalLM.load(bundledModelPath());
    const patcher = new WeightPatcher(base.weights);
    const one = patcher.apply(await loadAdapter(composed));
    const viaComposed = rows(await base.logits(ids));
    patcher.revert(one);
    const input = await loadAdapter(out);
    patcher.apply(input);
    patcher.apply(input);
    expect(viaComposed).toEqual(rows(await base.logits(ids)));
    expect(viaComposed).not.toEqual(adaptedLogits);
  });
});
