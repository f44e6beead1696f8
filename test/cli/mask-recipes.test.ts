/** `train --method X --help` prints each mask method's reference recipe and its source. */
import { describe, expect, it } from 'vitest';
import { cli } from './helpers.js';

describe('mask method recipes in --help', () => {
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
});
