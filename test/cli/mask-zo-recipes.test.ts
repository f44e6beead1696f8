/** `train --method X --help` prints each method's reference recipe (masks, zeroth-order) and its source. */
import { describe, expect, it } from 'vitest';
import { cli } from './helpers.js';

describe('method recipes in --help', () => {
  it('ramt, maskllm and lt-sft print their reference settings and where they come from', async () => {
    const [ramt, maskllm, ltsft, bad] = await Promise.all([
      cli(['train', '--method', 'ramt', '--help']),
      cli(['train', '--method', 'maskllm', '--help']),
      cli(['train', '--method', 'lt-sft', '--help']),
      cli(['train', '--method', 'lt-sft', '--data', 'x.txt', '--out', 'y', '--phase-steps', '100,x']),
    ]);
    expect(ramt.stdout).toMatch(/--lr 0\.00008 .*--clip-norm 0/);
    expect(ramt.stdout).toMatch(/source: R-AMT .*wuw2019\/R-AMT/);
    expect(maskllm.stdout).toMatch(/--lr 0\.0005 .*--schedule cosine/);
    expect(maskllm.stdout).toContain('beta2 0.95, weight decay 0.1');
    expect(maskllm.stdout).toMatch(/source: MaskLLM .*NVlabs\/MaskLLM/);
    expect(maskllm.stdout).toMatch(/prior\s+.*default "sparsegpt"/);
    expect(ltsft.stdout).toMatch(/--phase-steps 100,100 .*--schedule linear/);
    expect(ltsft.stdout).toContain('steps per phase: full 100, sparse 100');
    expect(ltsft.stdout).toMatch(/source: LT-SFT .*cambridgeltl\/composable-sft/);
    expect(bad.code).toBe(2);
    expect(bad.stderr).toMatch(/--phase-steps 100,x: give positive integers separated by commas/);
  });

  it('mezo and sparse-mezo print their own defaults (Sparse-MeZO: larger lr, sparsity 0.8) and sources', async () => {
    const [mezo, sparse, phases] = await Promise.all([
      cli(['train', '--method', 'mezo', '--help']),
      cli(['train', '--method', 'sparse-mezo', '--help']),
      cli(['train', '--method', 'mezo', '--data', 'x.txt', '--out', 'y', '--phase-steps', '10,10']),
    ]);
    expect(mezo.stdout).toMatch(/--lr 0\.0001 .*eps 0\.001/);
    expect(mezo.stdout).toMatch(/source: MeZO .*princeton-nlp\/MeZO/);
    expect(mezo.stdout).toMatch(/include\s+.*"embeddings" \| "norms" \| "head"/);
    expect(sparse.stdout).toMatch(/--lr 0\.0005 .*sparsity 0\.8  thresholds per-step/);
    expect(sparse.stdout).toMatch(/source: Sparse-MeZO .*NUS-HPC-AI-Lab\/SparseMeZO/);
    expect(phases.code).toBe(2);
    expect(phases.stderr).toMatch(/--phase-steps applies to multi-phase methods/);
  });
});
