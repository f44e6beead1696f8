/**
 * Merge benchmark (`npm run bench -- merge`):
 * 1. hot-swap latency (bench/swap-latency.ts): apply, swap X -> Y and revert of sparse
 *    deltas at 0.1%, 1% and 10% of every 2-D weight on stories260K and a random ~30M Llama,
 *    plain adapters against prepared ones, side by side in alternating rounds;
 * 2. fuse and unfuse (exact restore) time against delta density on a ~135M-parameter
 *    random Llama, and adapter file size against a dense delta.
 */
import { mkdtempSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomModel, LLAMA_135M } from '../src/models/random.js';
import { WeightPatcher } from '../src/merge/apply.js';
import { saveAdapter } from '../src/merge/adapter.js';
import { fingerprintWeights } from '../src/merge/fingerprint.js';
import { newAdapter, type Adapter } from '../src/merge/types.js';
import { lcg32, NUMERICAL_RECIPES_LCG } from '../src/util/random.js';
import { swapLatency } from './swap-latency.js';
import { table, timeIt, writeResults } from './util.js';

const swap = await swapLatency();

const model = randomModel(LLAMA_135M, { seed: 1 });
const fp = fingerprintWeights(model.weights);
const targets = model.sites().filter((s) => s.kind !== 'lm_head');
const totalTargeted = targets.reduce((s, t) => s + t.inFeatures * t.outFeatures, 0);
const totalParams = [...model.weights.values()].reduce((s, w) => s + w.data.length, 0);

/** A random additive delta touching `density` of every targeted weight. */
function sparseDelta(density: number, seed: number): Adapter {
  const a = newAdapter({ method: 'bench', kind: 'additive', base: { model: 'random', fingerprint: fp } });
  const rand = lcg32(seed, NUMERICAL_RECIPES_LCG);
  for (const t of targets) {
    const n = t.inFeatures * t.outFeatures;
    const k = Math.max(1, Math.round(n * density));
    const stride = n / k;
    const indices = new Int32Array(k);
    for (let i = 0; i < k; i++) indices[i] = Math.min(n - 1, Math.floor(i * stride + rand() * stride));
    for (let i = 1; i < k; i++) if (indices[i] <= indices[i - 1]) indices[i] = indices[i - 1] + 1;
    const values = Float32Array.from({ length: k }, () => (rand() - 0.5) * 0.01);
    a.additive.set(t.weightName, { indices, values });
  }
  return a;
}

const dir = mkdtempSync(join(tmpdir(), 'sparsetune-merge-bench-'));
const rows: (string | number)[][] = [];
const results: unknown[] = [];
const denseBytes = totalTargeted * 4;
const patcher = new WeightPatcher(model.weights);
for (const density of [0.001, 0.01, 0.1]) {
  const a = sparseDelta(density, 7);
  const nnz = [...a.additive.values()].reduce((s, d) => s + d.indices.length, 0);
  const fuseMs = await timeIt(() => patcher.revert(patcher.apply(a)), 3, 1);
  const h = patcher.apply(a);
  const t0 = performance.now();
  patcher.revert(h);
  const unfuseMs = performance.now() - t0;
  const t1 = performance.now();
  const h2 = patcher.apply(a);
  const applyMs = performance.now() - t1;
  patcher.revert(h2);
  const out = join(dir, `d${density}`);
  await saveAdapter(out, a);
  const fileBytes = statSync(join(out, 'adapter.safetensors')).size;
  await saveAdapter(join(dir, `h${density}`), a, { valueDtype: 'BF16' });
  const bf16Bytes = statSync(join(dir, `h${density}`, 'adapter.safetensors')).size;
  results.push({ density, nnz, applyMs, unfuseMs, applyPlusRevertMs: fuseMs, fileBytes, bf16Bytes, denseDeltaBytes: denseBytes });
  rows.push([`${density * 100}%`, nnz, applyMs, unfuseMs, (fileBytes / 1e6).toFixed(2), (bf16Bytes / 1e6).toFixed(2), (fileBytes / denseBytes).toFixed(4)]);
}
rmSync(dir, { recursive: true, force: true });
const md = [
  swap.markdown,
  '',
  `## Merge: fuse/unfuse on a random Llama (${(totalParams / 1e6).toFixed(0)}M parameters, ${(totalTargeted / 1e6).toFixed(0)}M in the targeted linears)`,
  '',
  `Dense f32 delta of the targeted linears: ${(denseBytes / 1e6).toFixed(0)} MB. Unfuse restores the exact original bits.`,
  '',
  table(['density', 'nnz', 'fuse ms', 'unfuse ms', 'file MB (f32)', 'file MB (bf16)', 'file / dense delta'], rows),
].join('\n');
writeResults('merge', { swap: swap.rows, fuse: { totalParams, totalTargeted, results } }, md);
