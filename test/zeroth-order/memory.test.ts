/**
 * Sparse-MeZO's defining memory property with its defaults: peak memory at inference level.
 * Each measurement is its own child process (maxRSS is per process): one runs inference only,
 * the other Sparse-MeZO steps, the same number of forward passes on the same batches.
 */
import { execFile } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { writeModelDir } from '../../src/io/model-dir.js';
import { LLAMA_30M, randomModel } from '../../src/models/random.js';
import { sharedModelDir } from '../helpers.js';

const CHILD = join(import.meta.dirname, 'memory-child.ts');
const tmp = mkdtempSync(join(tmpdir(), 'zo-memory-'));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

interface Peak {
  startKiB: number;
  maxRssKiB: number;
}

function peakKiB(dir: string, mode: 'infer' | 'sparse-mezo', forwards: number): Promise<Peak> {
  return new Promise((resolve, reject) => {
    // Both children run with a 1 MiB young generation: without it, V8 sizes that space lazily
    // (anywhere up to ~16 MiB more resident memory, run to run), which is noise here.
    execFile(process.execPath, ['--max-semi-space-size=1', '--import', 'tsx', CHILD, dir, mode, String(forwards)], { env: { ...process.env, SPARSETUNE_THREADS: '1' } }, (err, stdout, stderr) => {
      if (err) return reject(new Error(`${mode} child failed: ${stderr || err.message}`));
      const r = JSON.parse(stdout.trim().split('\n').pop()!) as Peak & { finite: boolean };
      if (!r.finite) return reject(new Error(`${mode} child computed a non-finite loss`));
      resolve(r);
    });
  });
}

describe('Sparse-MeZO memory (defaults)', () => {
  it('peak RSS is within 1.1x of inference on both real checkpoints, and adds far less than a copy of the trained weights', async () => {
    // A mid-size random Llama (7.1M block-linear weights, 28 MiB): big enough that a copy of the
    // weights, their noise or a gradient would show above the runtime's fixed overhead.
    const mid = { ...LLAMA_30M, vocab_size: 512, num_hidden_layers: 4 };
    const midDir = join(tmp, 'mid');
    const m = randomModel(mid);
    await writeModelDir(midDir, { configJson: mid, weights: m.weights });
    const linearBytes = m.sites().filter((s) => s.kind !== 'lm_head').reduce((n, s) => n + 4 * s.inFeatures * s.outFeatures, 0);
    const dirs = [sharedModelDir('stories260K'), sharedModelDir('tinystories-656K'), midDir];
    // The child's RSS after start-up (the TypeScript loader) differs by up to ~25 MiB between
    // processes of the same code; each peak is taken above its own process's start-up RSS and
    // put on the smallest start-up RSS of the pair, so both sides carry the same fixed part.
    const forwards = [24, 24, 8];
    const peaks: [number, number][] = [];
    for (const [k, dir] of dirs.entries()) {
      const [i, z] = await Promise.all([peakKiB(dir, 'infer', forwards[k]), peakKiB(dir, 'sparse-mezo', forwards[k])]);
      const base = Math.min(i.startKiB, z.startKiB);
      peaks.push([base + i.maxRssKiB - i.startKiB, base + z.maxRssKiB - z.startKiB]);
    }
    for (const [k, [infer, zo]] of peaks.entries()) {
      console.log(`${dirs[k]}: inference ${(infer / 1024).toFixed(1)} MiB, Sparse-MeZO ${(zo / 1024).toFixed(1)} MiB (${(zo / infer).toFixed(3)}x)`);
      if (k < 2) expect(zo / infer, dirs[k]).toBeLessThanOrEqual(1.1);
    }
    const [infer, zo] = peaks[2];
    // The fixed cost of the zeroth-order code (WebAssembly kernels, ~8 MiB) stays below half a weight copy.
    expect((zo - infer) * 1024).toBeLessThan(0.5 * linearBytes);
  }, 180_000);
});
