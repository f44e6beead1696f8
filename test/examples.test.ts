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
const TESTED = ['compose-deltas', 'export-merged-model', 'finetune-lora'];
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

  it('export-merged-model writes a HF model directory that reloads with the adapted logits', async () => {
    const r = await runExample('export-merged-model');
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/merged model vs adapted model: \d/);
    const config = JSON.parse(await fsp.readFile(join(out, 'export-merged-model', 'config.json'), 'utf8')) as { model_type: string };
    expect(config.model_type).toBe('llama');
  });
});
