import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { execFile } from 'node:child_process';
import { promises as fsp, readdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const ROOT = join(import.meta.dirname, '..');
let out: string;

/** Run an example as a user would (`node --import tsx examples/NAME.ts OUT`), with few steps. */
function runExample(name: string): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(
      process.execPath,
      ['--import', 'tsx', join('examples', `${name}.ts`), join(out, name)],
      { cwd: ROOT, env: { ...process.env, SPARSETUNE_EXAMPLE_STEPS: '5' }, timeout: 60_000 },
      (err, stdout, stderr) => resolve({ code: err ? (typeof err.code === 'number' ? err.code : 1) : 0, stdout, stderr }),
    );
  });
}

beforeAll(async () => {
  out = await fsp.mkdtemp(join(tmpdir(), 'sparsetune-examples-'));
});
afterAll(async () => {
  await fsp.rm(out, { recursive: true, force: true });
});

/** Example files this suite runs; helpers shared by the examples are not examples. */
const TESTED = ['compose-deltas', 'export-merged-model', 'finetune-lora', 'nm-mask', 'prune-pat', 'serve-adapters', 'sparse-mezo', 'transformersjs'];
const HELPERS = ['steps'];

describe('examples', () => {
  it('covers every example in examples/', () => {
    const names = readdirSync(join(ROOT, 'examples')).filter((f) => f.endsWith('.ts')).map((f) => f.slice(0, -3)).filter((n) => !HELPERS.includes(n));
    expect(names.sort(), 'add a test below for each new example (CI runs them all)').toEqual(TESTED);
  });

  it('finetune-lora trains, saves, reloads and fuses a LoRA adapter', async () => {
    const r = await runExample('finetune-lora');
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/held-out loss [\d.]+ -> [\d.]+/);
    expect(r.stdout).toContain('base weights restored bit for bit');
    await fsp.access(join(out, 'finetune-lora', 'adapter.safetensors'));
  });

  it('compose-deltas trains two sparse deltas and composes them', async () => {
    const r = await runExample('compose-deltas');
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toContain('+ spanish + sentiment');
    expect(r.stdout).toContain('composition = both deltas applied in either order');
    for (const d of ['spanish', 'sentiment', 'spanish+sentiment']) await fsp.access(join(out, 'compose-deltas', d, 'adapter.json'));
  });

  it('transformersjs exports a fine-tuned model that transformers.js runs to the same text', async () => {
    const r = await runExample('transformersjs');
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/held-out loss [\d.]+ -> [\d.]+/);
    expect(r.stdout).toContain('same text');
    await fsp.access(join(out, 'transformersjs', 'onnx', 'model.onnx'));
  });

  it('export-merged-model writes a HF model directory that reloads with the adapted logits', async () => {
    const r = await runExample('export-merged-model');
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/merged model vs adapted model: \d/);
    const config = JSON.parse(await fsp.readFile(join(out, 'export-merged-model', 'config.json'), 'utf8')) as { model_type: string };
    expect(config.model_type).toBe('llama');
  });

  it('serve-adapters serves the base, two trained adapters and their composition over the OpenAI API', async () => {
    const r = await runExample('serve-adapters');
    expect(r.code, r.stderr).toBe(0);
    for (const name of ['base', 'spanish', 'sentiment', 'spanish+sentiment']) expect(r.stdout).toMatch(new RegExp(`^${name.replace('+', '\\+')} +-> "`, 'm'));
    expect(r.stdout).toMatch(/^streamed chat \(spanish\) -> "/m);
    expect(r.stdout).toContain('every answer equals the locally fused model; base weights restored bit for bit');
    for (const d of ['spanish', 'sentiment']) await fsp.access(join(out, 'serve-adapters', d, 'adapter.json'));
  });

  it('sparse-mezo trains forward-only and replays its trajectory to the same bits', async () => {
    const r = await runExample('sparse-mezo');
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/held-out loss [\d.]+ -> [\d.]+ after 5 steps/);
    expect(r.stdout).toContain('replayed weights are bit-identical to the trained ones');
    for (const f of ['adapter.json', 'adapter.safetensors', 'trajectory.json']) await fsp.access(join(out, 'sparse-mezo', f));
  });

  it('nm-mask learns a 2:4 mask whose fused groups keep exactly 2 of 4 weights', async () => {
    const r = await runExample('nm-mask');
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/every one of [\d,]+ groups of 4 inputs keeps exactly 2 weights/);
    expect(r.stdout).toMatch(/magnitude 2:4 [\d.]+, learned 2:4 [\d.]+/);
    expect(r.stdout).toContain('dense weights restored bit for bit');
    await fsp.access(join(out, 'nm-mask', 'adapter.json'));
  });

  it('prune-pat exports a narrower model that reloads with the hard-masked logits', async () => {
    const r = await runExample('prune-pat');
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/pruned model vs hard-masked model: \d/);
    const config = JSON.parse(await fsp.readFile(join(out, 'prune-pat', 'config.json'), 'utf8')) as { hidden_size: number };
    expect(config.hidden_size).toBeLessThan(64);
    expect(r.stdout).toContain(`hidden size 64 -> ${config.hidden_size}`);
  });
});
