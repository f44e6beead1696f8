/**
 * Outcome: R-AMT (gradient dropout toward the frozen model) forgets less than AMT at the same
 * task progress (Zheng et al., ICCV 2023: "regularized" mask tuning keeps zero-shot knowledge).
 *
 * Both real checkpoints learn a shifted domain (UD PUD English news) with binary masks on
 * q, k, v, o; "drift" is the rise of held-out TinyStories loss (their general knowledge). Both
 * runs are evaluated every EVAL steps, and drift is compared at EQUAL TASK LOSS: the drift each
 * method has when its task loss first reaches the level both runs reach (linear interpolation
 * between evaluations). The recipe (Adam, cosine to 0, no clipping) with a small lr grid (the
 * reference 8e-5 and larger), 3 seeds each.
 *
 * Run: node --import tsx bench/outcomes/ramt.ts   (OUTCOMES_STEPS, OUTCOMES_MODELS, OUTCOMES_SEEDS, OUTCOMES_LRS)
 */
import { join } from 'node:path';
import { loadDataset, splitHoldout, type TokenizedExample } from '../../src/io/datasets.js';
import { RamtMethod, recipe } from '../../src/masks/ramt.js';
import { CausalLM } from '../../src/models/causal-lm.js';
import { recipeTrainerConfig } from '../../src/train/recipe.js';
import { Trainer } from '../../src/train/trainer.js';
import { table, writeResults } from '../util.js';
import { DATA, MODELS, runNote, lrs, models, pm, seeds, verdict } from './_stats.js';

const STEPS = Number(process.env.OUTCOMES_STEPS ?? 200);
const EVAL = Math.max(1, Math.round(STEPS / 10));
const LRS = lrs([recipe.lr, 3e-4]);

interface Curve {
  task: number[];
  drift: number[];
  masked: number;
}

/** Drift at task loss `level` (first crossing, linear between evaluations); null if never reached. */
function driftAt(c: Curve, level: number): number | null {
  for (let i = 1; i < c.task.length; i++) {
    if (c.task[i] <= level) {
      const a = c.task[i - 1];
      const f = a === c.task[i] ? 1 : (a - level) / (a - c.task[i]);
      return c.drift[i - 1] + f * (c.drift[i] - c.drift[i - 1]);
    }
  }
  return null;
}

async function main(): Promise<void> {
  const t0 = performance.now();
  const md: string[] = ['## R-AMT vs AMT: forgetting at equal task loss', ''];
  md.push(
    `Masks on q, k, v, o of both checkpoints, trained on UD PUD English (seq 64), ${STEPS} steps of batch ${recipe.batchSize} with the recipe ` +
      `(Adam, cosine to 0, no clipping), evaluated every ${EVAL} steps. Drift = held-out TinyStories loss − its value before training. ` +
      'Compared at equal task loss: the lowest task loss both runs of a seed reach.',
    '',
  );
  const json: Record<string, unknown> = {};
  for (const name of models()) {
    const model = await CausalLM.load(MODELS[name]);
    const task = await loadDataset(join(DATA, 'ud-pud', 'pud_en.txt'), model.tokenizer!, { seqLen: 64 });
    const { train, eval: taskHeld } = splitHoldout(task, 0.1, 1);
    const general = (await loadDataset(join(DATA, 'tinystories', 'tinystories_valid_head.txt'), model.tokenizer!, { seqLen: 64 })).slice(0, 64);
    const taskEval = taskHeld.slice(0, 64);
    const run = async (dropout: boolean, lr: number, seed: number): Promise<Curve> => {
      const method = new RamtMethod(model, { gradientDropout: dropout, seed });
      const cfg = recipeTrainerConfig(recipe);
      const c: Curve = { task: [], drift: [], masked: 0 };
      let g0 = 0;
      const trainer: Trainer = new Trainer(model, method, { ...cfg, steps: STEPS, seed, evalEvery: EVAL, optimizer: { ...cfg.optimizer, lr } }, {
        onEval: async (_step, r) => {
          c.task.push(r.loss);
          const g = (await trainer.evaluate(general)).loss;
          if (c.drift.length === 0) g0 = g;
          c.drift.push(g - g0);
        },
      });
      await trainer.train(train as TokenizedExample[], taskEval);
      c.masked = method.export(model).meta.metrics.maskedFractionOfTargets as number;
      return c;
    };
    const rows: (string | number)[][] = [];
    const perLr: Record<string, unknown> = {};
    for (const lr of LRS) {
      const amtD: number[] = [];
      const ramtD: number[] = [];
      const levels: number[] = [];
      const finals: { amt: number[]; ramt: number[]; mAmt: number[]; mRamt: number[] } = { amt: [], ramt: [], mAmt: [], mRamt: [] };
      for (const seed of seeds()) {
        const amt = await run(false, lr, seed);
        const ramt = await run(true, lr, seed);
        const level = Math.max(Math.min(...amt.task), Math.min(...ramt.task));
        const a = driftAt(amt, level);
        const r = driftAt(ramt, level);
        console.log(`${name} lr ${lr} seed ${seed}: task level ${level.toFixed(4)}, drift AMT ${a?.toFixed(4)} R-AMT ${r?.toFixed(4)}`);
        if (a === null || r === null) continue;
        amtD.push(a);
        ramtD.push(r);
        levels.push(amt.task[0] - level);
        finals.amt.push(amt.task[amt.task.length - 1]);
        finals.ramt.push(ramt.task[ramt.task.length - 1]);
        finals.mAmt.push(amt.masked);
        finals.mRamt.push(ramt.masked);
      }
      const v = amtD.length > 1 ? verdict(ramtD, amtD) : null;
      rows.push([
        lr,
        pm(levels, 3),
        pm(amtD, 4),
        pm(ramtD, 4),
        v ? `${v.diff.toFixed(4)} ± ${v.se.toFixed(4)}` : 'n/a',
        `${pm(finals.amt, 3)} / ${pm(finals.ramt, 3)}`,
        `${pm(finals.mAmt.map((x) => 100 * x), 2)} / ${pm(finals.mRamt.map((x) => 100 * x), 2)}`,
      ]);
      perLr[lr] = { amtD, ramtD, levels, finals, verdict: v };
    }
    md.push(
      `### ${name}`,
      '',
      table(['lr', 'task loss drop at the compared level', 'drift AMT', 'drift R-AMT', 'R-AMT − AMT (paired s.e.)', 'final task loss AMT / R-AMT', 'masked % AMT / R-AMT'], rows),
      '',
    );
    for (const lr of LRS) {
      const v = (perLr[lr] as { verdict: ReturnType<typeof verdict> | null }).verdict;
      const moved = ((perLr[lr] as { levels: number[] }).levels.reduce((a, b) => a + b, 0) / Math.max(1, (perLr[lr] as { levels: number[] }).levels.length)).toFixed(3);
      md.push(
        `**lr ${lr}: claim ${v && v.real && v.better ? 'held' : 'not shown'} on ${name}** (task loss fell ${moved} nats at the compared level; ` +
          (v ? (v.real ? (v.better ? 'R-AMT drifts less beyond the seed noise' : 'AMT drifts less beyond the seed noise') : 'the drift difference is within the seed noise') : 'too few comparable runs') +
          ').',
        '',
      );
    }
    json[name] = perLr;
  }
  md.push(...runNote());
  md.push(`Runtime ${((performance.now() - t0) / 1000).toFixed(0)} s on a shared 2-core machine (the lead reruns the final numbers on a quiet one).`);
  writeResults('outcomes-ramt', { steps: STEPS, lrs: LRS, results: json }, md.join('\n'));
}

await main();
