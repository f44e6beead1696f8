/**
 * Outcome: a language SFT and a task SFT compose by addition (Ansell et al., ACL 2022): the
 * composed model does the task in the new language better than either SFT alone.
 *
 * Setup (both real checkpoints): language SFTs by LM on raw UD PUD text (Spanish, and English
 * as the source language); a task SFT on SIB-200 English topic classification (7 labels,
 * prompt "<text>\nTopic:" -> " <label>", loss on the label), trained with the English SFT fused
 * (as the paper). Evaluated by label log-likelihood on SIB-200 Spanish test (zero-shot
 * transfer) for base / task alone / Spanish SFT alone / Spanish + task composed; and, to show
 * where a tiny model can show composition, the two abilities separately: held-out Spanish LM
 * loss (the language SFT's effect) and the English test (the task SFT's effect) for each model.
 * The recipe (AdamW, linear decay, clip 1, fresh optimizer per phase) with PHASE steps per
 * phase; the lr is tuned on seed 0 over a small grid by the task SFT's English dev label NLL.
 *
 * Run: node --import tsx bench/outcomes/lt-sft.ts   (OUTCOMES_STEPS = steps per phase, OUTCOMES_MODELS, OUTCOMES_SEEDS, OUTCOMES_LRS)
 */
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { collate, loadDataset, splitHoldout, type TokenizedExample } from '../../src/io/datasets.js';
import { LtSftMethod, recipe, type LtSftConfigInput } from '../../src/masks/lt-sft.js';
import { WeightPatcher } from '../../src/merge/apply.js';
import type { Adapter } from '../../src/merge/types.js';
import { CausalLM } from '../../src/models/causal-lm.js';
import { classificationAccuracy, type ClassificationExample } from '../../src/train/classify.js';
import { recipeTrainerConfig } from '../../src/train/recipe.js';
import { Trainer } from '../../src/train/trainer.js';
import { table, writeResults } from '../util.js';
import { DATA, MODELS, runNote, lrs, models, pm, seeds, verdict } from './_stats.js';

const PHASE = Number(process.env.OUTCOMES_STEPS ?? 60);
const LRS = lrs([1e-3, 3e-3]);

function readSib(lang: string, split: 'train' | 'dev' | 'test'): { category: string; text: string }[] {
  const [header, ...lines] = readFileSync(join(DATA, 'sib200', lang, `${split}.tsv`), 'utf8').trim().split('\n');
  const cols = header.split('\t');
  const ci = cols.indexOf('category');
  const ti = cols.indexOf('text');
  return lines.map((l) => {
    const c = l.split('\t');
    return { category: c[ci], text: c[ti] };
  });
}
const prompt = (text: string) => `${text}\nTopic:`;

function labelNll(scores: number[][], gold: number[]): number {
  let s = 0;
  scores.forEach((row, i) => {
    const m = Math.max(...row);
    s += m + Math.log(row.reduce((a, v) => a + Math.exp(v - m), 0)) - row[gold[i]];
  });
  return s / scores.length;
}

async function main(): Promise<void> {
  const t0 = performance.now();
  const md: string[] = ['## LT-SFT: language + task composition vs each alone (SIB-200, zero-shot to Spanish)', ''];
  md.push(
    `Language SFTs: density 4%, L1 0.1, UD PUD raw text (es, en; seq 128). Task SFT: density 8%, SIB-200 English train (701 rows), with the English SFT ` +
      `fused. ${PHASE} + ${PHASE} steps (full, sparse) of batch ${recipe.batchSize} per SFT, recipe optimizer; lr tuned on seed 0 over ${JSON.stringify(LRS)} ` +
      'by the task SFT\'s English dev label NLL. Scoring: argmax over the 7 labels of log p(" <label>" | "<text>\\nTopic:"); label NLL = −log softmax over the 7 label scores.',
    '',
  );
  const json: Record<string, unknown> = {};
  for (const name of models()) {
    const model = await CausalLM.load(MODELS[name]);
    const tok = model.tokenizer!;
    const es = splitHoldout(await loadDataset(join(DATA, 'ud-pud', 'pud_es.txt'), tok, { seqLen: 128 }), 0.1, 0);
    const en = await loadDataset(join(DATA, 'ud-pud', 'pud_en.txt'), tok, { seqLen: 128 });
    const labels = readFileSync(join(DATA, 'sib200', 'eng_Latn', 'labels.txt'), 'utf8').trim().split('\n').map((l) => ` ${l.trim()}`);
    const tmp = mkdtempSync(join(tmpdir(), 'outcomes-lt-sft-'));
    let taskTrain: TokenizedExample[];
    try {
      const file = join(tmp, 'sib-eng-train.jsonl');
      writeFileSync(file, readSib('eng_Latn', 'train').map((r) => JSON.stringify({ prompt: prompt(r.text), completion: ` ${r.category}` })).join('\n'));
      taskTrain = await loadDataset(file, tok, { seqLen: 192, onWarning: () => undefined });
    } finally {
      rmSync(tmp, { recursive: true, force: true });
    }
    const asEx = (lang: string, split: 'dev' | 'test'): ClassificationExample[] => readSib(lang, split).map((r) => ({ prompt: prompt(r.text), label: ` ${r.category}` }));
    const spaTest = asEx('spa_Latn', 'test');
    const engTest = asEx('eng_Latn', 'test');
    const engDev = asEx('eng_Latn', 'dev');
    const patcher = new WeightPatcher(model.weights);
    const withAdapters = async <T>(adapters: Adapter[], fn: () => Promise<T>): Promise<T> => {
      const hs = adapters.map((a) => patcher.apply(a));
      try {
        return await fn();
      } finally {
        for (const h of hs.reverse()) patcher.revert(h);
      }
    };
    const score = (adapters: Adapter[], ex: ClassificationExample[]) =>
      withAdapters(adapters, async () => {
        const r = await classificationAccuracy(model, ex, labels);
        return { acc: 100 * r.accuracy, nll: labelNll(r.scores, ex.map((e) => labels.indexOf(e.label))) };
      });
    const esLoss = (adapters: Adapter[]) =>
      withAdapters(adapters, async () => {
        let sum = 0;
        let n = 0;
        for (let i = 0; i < es.eval.length; i += 16) {
          const r = await model.loss(collate(es.eval.slice(i, i + 16), tok.padId));
          sum += r.loss * r.tokens;
          n += r.tokens;
        }
        return sum / n;
      });
    const sft = async (config: LtSftConfigInput, data: TokenizedExample[], lr: number, seed: number, sources: Adapter[] = []) => {
      const method = new LtSftMethod(model, config, { sources });
      const cfg = recipeTrainerConfig(recipe);
      await new Trainer(model, method, { ...cfg, phaseSteps: [PHASE, PHASE], seed, optimizer: { ...cfg.optimizer, lr } }).train(data);
      return method.export(model);
    };
    const trio = async (lr: number, seed: number) => {
      const langEs = await sft({ purpose: 'language' }, es.train, lr, seed);
      const langEn = await sft({ purpose: 'language' }, en, lr, seed);
      const task = await sft({ purpose: 'task' }, taskTrain, lr, seed, [langEn]);
      return { langEs, langEn, task };
    };
    let bestLr = LRS[0];
    let bestNll = Infinity;
    const grid: string[] = [];
    // One lr given (OUTCOMES_LRS): nothing to tune, no seed-0 run.
    for (const lr of LRS.length > 1 ? LRS : []) {
      const t = await trio(lr, 0);
      const d = await score([t.langEn, t.task], engDev);
      grid.push(`${lr} -> ${d.nll.toFixed(3)} (${d.acc.toFixed(1)}%)`);
      console.log(`${name} lr ${lr}: English dev label NLL ${d.nll.toFixed(3)}, acc ${d.acc.toFixed(1)}%`);
      if (d.nll < bestNll) [bestNll, bestLr] = [d.nll, lr];
    }
    const cols = ['base', 'task alone', 'Spanish SFT alone', 'Spanish + task (composed)'] as const;
    const spa: Record<string, { acc: number[]; nll: number[] }> = Object.fromEntries(cols.map((c) => [c, { acc: [], nll: [] }]));
    const lm: Record<string, number[]> = Object.fromEntries(cols.map((c) => [c, []]));
    const eng: Record<string, { acc: number[]; nll: number[] }> = { base: { acc: [], nll: [] }, 'English SFT + task': { acc: [], nll: [] } };
    for (const seed of seeds()) {
      const t = await trio(bestLr, seed);
      const sets: Record<(typeof cols)[number], Adapter[]> = { base: [], 'task alone': [t.task], 'Spanish SFT alone': [t.langEs], 'Spanish + task (composed)': [t.langEs, t.task] };
      for (const c of cols) {
        const s = await score(sets[c], spaTest);
        spa[c].acc.push(s.acc);
        spa[c].nll.push(s.nll);
        lm[c].push(await esLoss(sets[c]));
      }
      for (const [k, a] of [['base', []], ['English SFT + task', [t.langEn, t.task]]] as const) {
        const s = await score([...a], engTest);
        eng[k].acc.push(s.acc);
        eng[k].nll.push(s.nll);
      }
      console.log(`${name} seed ${seed}: Spanish acc ${cols.map((c) => spa[c].acc.at(-1)!.toFixed(1)).join(' / ')}`);
    }
    const majority = (100 * Math.max(...labels.map((l) => spaTest.filter((e) => e.label === l).length))) / spaTest.length;
    md.push(`### ${name}`, '', `${grid.length ? `lr grid (seed 0, English dev label NLL): ${grid.join(', ')}; seeds` : 'No lr grid: all seeds'} at lr ${bestLr}. Spanish test ${spaTest.length} rows, majority class ${majority.toFixed(1)}%, chance 14.3%.`, '');
    md.push(
      table(
        ['model', 'Spanish test accuracy %', 'Spanish label NLL', 'Spanish held-out LM loss'],
        cols.map((c) => [c, pm(spa[c].acc, 1), pm(spa[c].nll, 3), pm(lm[c], 3)]),
      ),
      '',
      `In-language check (English test): base ${pm(eng.base.acc, 1)}% / NLL ${pm(eng.base.nll, 3)}; English SFT + task ${pm(eng['English SFT + task'].acc, 1)}% / NLL ${pm(eng['English SFT + task'].nll, 3)}.`,
      '',
    );
    const vt = verdict(spa['Spanish + task (composed)'].nll, spa['task alone'].nll);
    const vl = verdict(spa['Spanish + task (composed)'].nll, spa['Spanish SFT alone'].nll);
    const va = verdict(spa['Spanish + task (composed)'].acc, spa['task alone'].acc, false);
    const lmKeep = verdict(lm['Spanish + task (composed)'], lm['Spanish SFT alone']);
    const taskLearned = verdict(eng['English SFT + task'].nll, eng.base.nll);
    const held = vt.real && vt.better && vl.real && vl.better;
    md.push(
      `**Zero-shot transfer claim ${held ? 'held' : 'not shown'} on ${name}:** composed − task alone = ${vt.diff.toFixed(3)} ± ${vt.se.toFixed(3)} label NLL ` +
        `(accuracy ${va.diff.toFixed(1)} ± ${va.se.toFixed(1)} points), composed − Spanish SFT alone = ${vl.diff.toFixed(3)} ± ${vl.se.toFixed(3)} label NLL. ` +
        `The task SFT ${taskLearned.real && taskLearned.better ? 'does' : 'does not'} learn the task in English (label NLL ${taskLearned.diff.toFixed(3)} ± ${taskLearned.se.toFixed(3)} vs base); ` +
        `composing keeps the language SFT's Spanish LM gain (composed − Spanish alone: ${lmKeep.diff.toFixed(3)} ± ${lmKeep.se.toFixed(3)} nats).`,
      '',
    );
    json[name] = { bestLr, grid, spanish: spa, spanishLm: lm, english: eng, verdicts: { vt, vl, va, lmKeep, taskLearned } };
  }
  md.push(...runNote());
  md.push(`Runtime ${((performance.now() - t0) / 1000).toFixed(0)} s on a shared 2-core machine (the lead reruns the final numbers on a quiet one).`);
  writeResults('outcomes-lt-sft', { phaseSteps: PHASE, lrs: LRS, results: json }, md.join('\n'));
}

await main();
