import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { existsSync, promises as fsp } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { bundledModelPath } from '../../src/io/model-dir.js';
import { saveAdapter } from '../../src/merge/adapter.js';
import { packBits } from '../../src/merge/bits.js';
import { newAdapter, type Adapter, type AdapterKind } from '../../src/merge/types.js';
import { writeRunReport } from '../../src/report/run-report.js';
import { runReport } from '../../src/cli/report.js';

let root: string;
const model = bundledModelPath();

function adapter(method: string, kind: AdapterKind, config: Record<string, unknown> = {}): Adapter {
  return newAdapter({ method, kind, base: { model, fingerprint: '' }, config });
}

async function runDir(name: string, a: Adapter | null, metrics: object[] | null): Promise<string> {
  const dir = join(root, name);
  await fsp.mkdir(dir, { recursive: true });
  if (metrics) await fsp.writeFile(join(dir, 'metrics.jsonl'), metrics.map((m) => JSON.stringify(m)).join('\n') + '\n');
  if (a) await saveAdapter(dir, a);
  return dir;
}

/** `haystack` contains `needle` (a short failure message instead of a page of SVG). */
function contains(haystack: string, needle: string): void {
  expect(haystack.includes(needle), `expected the output to contain ${JSON.stringify(needle)}`).toBe(true);
}

const svgCount = (html: string) => (html.match(/<svg[\s>]/g) ?? []).length;
const figureIds = (html: string) => [...html.matchAll(/<figure id="chart-([^"]+)"/g)].map((m) => m[1]);

beforeAll(async () => {
  root = await fsp.mkdtemp(join(tmpdir(), 'sparsetune-report-'));
});
afterAll(async () => {
  await fsp.rm(root, { recursive: true, force: true });
});

describe('sparsetune report', () => {
  it('charts the training curves and an additive delta of a run', async () => {
    const metrics: object[] = [{ type: 'eval', step: 0, kind: 'initial', loss: 6, ppl: Math.exp(6), tokens: 500 }];
    for (let s = 1; s <= 12; s++) metrics.push({ type: 'train', step: s, phase: 0, loss: 6 - s / 6, lr: 1e-3 * Math.min(1, s / 4), gradNorm: 1 / s, tokens: 256, tokensPerSecond: 1000 + s, lm_loss: 6 - s / 6 });
    metrics.push({ type: 'eval', step: 12, kind: 'final', loss: 4.25, ppl: Math.exp(4.25), tokens: 500 });
    const a = adapter('lt-sft', 'additive');
    a.additive.set('model.layers.0.mlp.down_proj.weight', { indices: Int32Array.from({ length: 1101 }, (_, i) => i * 10), values: new Float32Array(1101).fill(0.01) });
    a.additive.set('model.layers.4.self_attn.q_proj.weight', { indices: Int32Array.from([1, 2, 3, 4]), values: Float32Array.from([1, 2, 3, 4]) });
    const dir = await runDir('additive', a, metrics);

    const r = await writeRunReport({ runDir: dir });
    expect(r.html).toBe(join(dir, 'report.html'));
    const html = await fsp.readFile(r.html, 'utf8');
    expect(figureIds(html)).toEqual(['loss', 'learning-rate', 'tokens-per-second', 'grad-norm', 'additive-density']);
    expect(svgCount(html)).toBe(5);
    // Chart titles are drawn inside the SVGs; axis titles too.
    for (const t of ['>Loss<', '>Learning rate<', '>Throughput<', '>Gradient norm<', '>Density of the sparse delta<', '>tokens / s<']) contains(html, t);
    // Self-contained: no scripts, no external references.
    expect(html).not.toMatch(/<script|<link|src="http|href="http/);
    // The base model was found through adapter.json, so densities are fractions of the real shapes.
    expect(r.stats!.additive[0]).toMatchObject({ nnz: 1101, numel: 64 * 172 });
    expect(r.stats!.additive[0].density).toBeCloseTo(1101 / (64 * 172), 12);
    contains(html, '1,105 of 15,104'); // delta entries of the touched tensors
    contains(html, '5.833 → 4'); // first → last train loss
    contains(html, 'loss 4.25 · ppl 70.11 (step 12)');
    expect(r.metrics!.summary.tokens).toBe(12 * 256);

    expect(r.charts.map((f) => f.slice(dir.length + 1))).toEqual(['loss', 'learning-rate', 'tokens-per-second', 'grad-norm', 'additive-density'].map((id) => `report-charts/${id}.svg`));
    for (const f of r.charts) {
      const svg = await fsp.readFile(f, 'utf8');
      expect(svg.startsWith('<?xml')).toBe(true);
      expect(svgCount(svg)).toBe(1);
    }
    // The heatmap shows both tensors' densities as labels.
    const heat = await fsp.readFile(join(dir, 'report-charts', 'additive-density.svg'), 'utf8');
    contains(heat, '>10.0%<');
    contains(heat, '>0.1%<');
  });

  it('charts masks with 2:4 patterns, S2FT selections, GS-LoRA blocks and PAT channels', async () => {
    const mask = new Uint8Array(64 * 64);
    for (let i = 0; i < mask.length; i += 4) mask[i + 1] = mask[i + 3] = 1; // all groups use 0101
    const m = adapter('maskllm', 'mask', { n: 2, m: 4 });
    m.masks.set('model.layers.1.self_attn.q_proj.weight', { bits: packBits(mask), numel: mask.length });
    const maskDir = await runDir('mask', m, null);

    const s = adapter('s2ft', 'structured');
    s.structured.set('model.layers.0.mlp.down_proj.weight', { cols: Int32Array.from([3, 50, 171]), values: new Float32Array(64 * 3).fill(1), shape: [64, 172] });
    s.structured.set('model.layers.2.self_attn.o_proj.weight', { cols: Int32Array.from([8, 9, 10, 11, 12, 13, 14, 15]), values: new Float32Array(64 * 8).fill(1), shape: [64, 64] });
    const s2ftDir = await runDir('s2ft', s, null);

    const g = adapter('gs-lora', 'lowrank', { groupBy: 'block' });
    for (const layer of [1, 3]) {
      g.lowrank.set(`model.layers.${layer}.mlp.gate_proj.weight`, { A: { dtype: 'f32', shape: [2, 64], data: new Float32Array(128).fill(0.1) }, B: { dtype: 'f32', shape: [172, 2], data: new Float32Array(344).fill(0.1) }, scale: 1 });
    }
    const gsDir = await runDir('gs-lora', g, null);

    const p = adapter('pat', 'pruned');
    p.pruned = { keptChannels: Int32Array.from({ length: 48 }, (_, i) => i), configJson: { hidden_size: 48 } };
    const patDir = await runDir('pat', p, null);

    const maskHtml = await fsp.readFile((await writeRunReport({ runDir: maskDir })).html, 'utf8');
    expect(figureIds(maskHtml)).toEqual(['mask-kept', 'nm-patterns']);
    contains(maskHtml, '>2:4 patterns used<');
    contains(maskHtml, '1 tensor, 50.0% kept');
    contains(maskHtml, 'training curves are not shown');

    const r2 = await writeRunReport({ runDir: s2ftDir });
    const s2ftHtml = await fsp.readFile(r2.html, 'utf8');
    expect(figureIds(s2ftHtml)).toEqual(['structured-selection']);
    for (const label of ['>L0 down_proj cols<', '>L2 o_proj cols<']) contains(s2ftHtml, label);

    const gs = await writeRunReport({ runDir: gsDir });
    const gsHtml = await fsp.readFile(gs.html, 'utf8');
    expect(figureIds(gsHtml)).toEqual(['lowrank-blocks']);
    contains(gsHtml, 'Low-rank update per block (2 of 5 blocks changed)');
    expect(gs.stats!.blocks.map((b) => b.alive)).toEqual([false, true, false, true, false]);

    const pat = await writeRunReport({ runDir: patDir });
    expect(figureIds(await fsp.readFile(pat.html, 'utf8'))).toEqual(['pruned-channels']);
    expect(await fsp.readFile(join(patDir, 'report-charts', 'pruned-channels.svg'), 'utf8')).toContain('Hidden channels kept: 48 of 64');
  });

  it('runs from the command line and rejects bad input with a clear error', async () => {
    const a = adapter('lt-sft', 'additive');
    a.additive.set('model.layers.0.mlp.up_proj.weight', { indices: Int32Array.from([7]), values: Float32Array.from([1]) });
    const dir = await runDir('cli', null, [{ type: 'train', step: 1, loss: 2, lr: 1e-3 }]);
    await saveAdapter(join(dir, 'adapter'), a); // the adapter in a subdirectory is found too
    const out = join(root, 'cli-out');

    const writes: string[] = [];
    const spy = vi.spyOn(process.stdout, 'write').mockImplementation((chunk: string | Uint8Array) => {
      writes.push(String(chunk));
      return true;
    });
    const err = vi.spyOn(process.stderr, 'write').mockImplementation(() => true);
    try {
      await runReport([dir, '--out', out, '--model', model, '--title', 'CLI <run>']);
    } finally {
      spy.mockRestore();
      err.mockRestore();
    }
    const printed = JSON.parse(writes.join('')) as { html: string; charts: string[] };
    expect(printed.html).toBe(join(out, 'report.html'));
    expect(printed.charts.length).toBe(3); // loss, learning rate, density
    const html = await fsp.readFile(printed.html, 'utf8');
    contains(html, '<title>CLI &lt;run&gt;</title>');
    expect(existsSync(join(dir, 'report.html'))).toBe(false);

    await expect(runReport([])).rejects.toThrow(/missing RUN_DIR/);
    await expect(runReport([dir, dir])).rejects.toThrow(/expected one RUN_DIR/);
    await expect(runReport([dir, '--modle', model])).rejects.toThrow(/did you mean --model/);
    await expect(runReport([join(root, 'nope')])).rejects.toThrow(/is not a directory/);
    const empty = await runDir('empty', null, null);
    await expect(runReport([empty])).rejects.toThrow(/neither metrics.jsonl nor an adapter/);
    // An explicit base that does not fit the adapter is refused.
    const gpt2 = join(import.meta.dirname, '..', 'fixtures', 'models', 'gpt2');
    await expect(runReport([dir, '--model', gpt2])).rejects.toThrow(/does not fit the adapter/);
  });
});
