import { describe, expect, it } from 'vitest';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { cli } from './helpers.js';
import { readMetrics } from '../../src/train/metrics.js';
import { methodModule } from '../../src/train/registry.js';
import { resolveRecipe } from '../../src/train/recipe.js';
import { scheduledLr, scheduleSchema } from '../../src/train/optim.js';

const METHODS = ['lora', 'gs-lora', 'mosa', 's2ft', 'pat', 'full'];
const PAPER = { lora: 'LoRA', 'gs-lora': 'GS-LoRA', mosa: 'MoSA', s2ft: 'S2FT', pat: 'PAT', full: 'S2FT' } as Record<string, string>;

describe('method recipes', () => {
  it('train --method X --help prints the recipe with its source for every first-order adapter method', async () => {
    const helps = await Promise.all(METHODS.map((m) => cli(['train', '--method', m, '--help'])));
    for (const [k, m] of METHODS.entries()) {
      const r = resolveRecipe((await methodModule(m)).recipe);
      const out = helps[k].stdout;
      expect(helps[k].code, m).toBe(0);
      expect(out, m).toContain('Recipe (the defaults of `train` for this method; any flag overrides):');
      expect(out, m).toContain(`--lr ${r.lr}  --steps ${r.steps}  --batch-size ${r.batchSize}  --schedule ${r.schedule.type}  --warmup ${r.schedule.warmupSteps}  --clip-norm ${r.clipNorm}`);
      expect(out, m).toContain(`weight decay ${r.optimizer.weightDecay}`);
      expect(out, m).toMatch(new RegExp(`source: ${PAPER[m]} \\(`));
      expect(r.source, m).toMatch(/github|\//);
    }
  });

  it('a run without tuning flags trains with the recipe: its steps, its warmup and decay, its peak lr', async () => {
    const tmp = mkdtempSync(join(tmpdir(), 'sparsetune-recipe-'));
    const data = join(tmp, 'd.txt');
    writeFileSync(data, 'Once upon a time there was a cat.\nThe cat sat on the mat and slept.\n');
    const r = await cli(['train', '--method', 'lora', '--data', data, '--out', join(tmp, 'run'), '--holdout', '0', '--seq-len', '16', '--quiet']);
    expect(r.code, r.stderr).toBe(0);
    const rec = resolveRecipe((await methodModule('lora')).recipe);
    const steps = (await readMetrics(join(tmp, 'run', 'metrics.jsonl'))).filter((l) => l.type === 'train') as { step: number; lr: number }[];
    expect(steps).toHaveLength(rec.steps);
    const sched = scheduleSchema.parse(rec.schedule);
    for (const k of [0, 1, rec.schedule.warmupSteps!, Math.floor(rec.steps / 2), rec.steps - 1]) {
      expect(steps[k].lr, `step ${k + 1}`).toBeCloseTo(scheduledLr(rec.lr, k, rec.steps, sched), 12);
    }
    expect(Math.max(...steps.map((s) => s.lr))).toBe(rec.lr);
  }, 60_000);
});
