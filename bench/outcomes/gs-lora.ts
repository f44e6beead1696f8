/**
 * GS-LoRA's claim (Zhao et al. 2024, continual forgetting): forgetting one set while keeping
 * the rest, with the group lasso confining the edit to a few blocks, so that the rest of the
 * model keeps its behaviour. At our scale: on each real checkpoint, forget the TinyStories
 * paragraphs that mention a dog (bounded loss ReLU(BND − CE), BND = base CE + 3 nats) and
 * retain the others (plain CE), with GS-LoRA's defaults (lasso in the loss through AdamW,
 * alpha 0.1 after 20% warm-up) against the same objective with alpha = 0 (a dense LoRA on
 * every block). lr picked on the validation objective at seed 0; then 3 seeds.
 *
 *   node --import tsx bench/outcomes/gs-lora.ts     (OUTCOMES_QUICK=1 for a smoke run)
 */
import { cyclingBatchSource, GsLoraMethod, recipe } from '../../src/adapters/gs-lora.js';
import { recipeTrainerConfig } from '../../src/train/recipe.js';
import { evaluateLoss } from '../../src/train/evaluation.js';
import { table, writeResults } from '../util.js';
import type { CausalLM } from '../../src/models/causal-lm.js';
import { CHECKPOINTS, QUICK, SEEDS, fmt, gridThenSeeds, loadCheckpoint, meanStd, readLines, since, splitLines, trainAndEval, type Splits } from './_harness.js';

const STEPS = QUICK ? 30 : 100;
const SEQ = 64;
const KEYWORD = /\bdogs?\b/i;
// 1e-1 added after the first run picked 3e-2, the grid's top, on both checkpoints.
const LRS = [3e-3, 1e-2, 3e-2, 1e-1];
const ALPHAS = QUICK ? [1] : [0.3, 1, 3];

/** The sweep's sentence: the weakest alpha that confines the edit and still reaches the forget bound. */
function localized(sweep: { alpha: number; blocks: number[]; forget: { mean: number }; retain: { mean: number }; reached: boolean }[], total: number, base: { retain: number }): string {
  const ok = sweep.find((x) => Math.max(...x.blocks) < total && x.reached);
  if (!ok) return `No alpha in {${sweep.map((x) => x.alpha).join(', ')}} both confined the edit and reached the bound.`;
  return `With alpha ${ok.alpha} the edit is confined to ${ok.blocks.join('/')} of ${total} blocks and the forget loss still reaches the bound (retain ${ok.retain.mean - base.retain >= 0 ? '+' : ''}${(ok.retain.mean - base.retain).toFixed(3)} nats).`;
}

const t0 = performance.now();

/** One GS-LoRA run (lassoWeight undefined: the default) with held-out losses, the validation objective and the surviving blocks. */
async function trainGs(name: string, model: CausalLM, forget: Splits, retain: Splits, arm: string, lassoWeight: number | undefined, lr: number, seed: number) {
  const m = new GsLoraMethod(model, { seed, ...(lassoWeight === undefined ? {} : { lassoWeight }) });
  m.setForgetSource(cyclingBatchSource(forget.train, 8, { seed }));
  const cfg = { ...recipeTrainerConfig(recipe), steps: STEPS, seed, optimizer: { ...recipeTrainerConfig(recipe).optimizer, lr } };
  const r = await trainAndEval(model, m, cfg, retain.train, { retainVal: retain.val, forgetVal: forget.val, retain: retain.test, forget: forget.test });
  const bound = m.forgetBound!;
  const alive = m.groupReport().filter((g) => g.alive).length;
  // The training objective on validation: retain CE plus the unmet part of the forget bound.
  const objective = r.losses.retainVal + Math.max(0, bound - r.losses.forgetVal);
  console.error(`[${since(t0)} s] ${name} ${arm} lr ${lr} seed ${seed}: retain ${r.losses.retain.toFixed(3)} forget ${r.losses.forget.toFixed(3)} (bound ${bound.toFixed(2)}) blocks ${alive}/${m.groups.length} (${r.seconds.toFixed(0)} s)`);
  return { retain: r.losses.retain, forget: r.losses.forget, objective, bound, alive, total: m.groups.length };
}

const paragraphs = readLines('tinystories/tinystoriesV2_valid_first10k_lines.txt').filter((l) => l.length > 40);
const forgetLines = paragraphs.filter((l) => KEYWORD.test(l));
const retainLines = paragraphs.filter((l) => !KEYWORD.test(l)).slice(0, 2000);
const rows: Record<string, unknown>[] = [];
const tableRows: (string | number)[][] = [];
const verdicts: string[] = [];

for (const name of CHECKPOINTS) {
  const model = await loadCheckpoint(name);
  const forget = await splitLines(model, forgetLines, SEQ, `forget-${name}`, { val: 0.15, test: 0.15 });
  const retain = await splitLines(model, retainLines, SEQ, `retain-${name}`);
  const base = { forget: (await evaluateLoss(model, forget.test)).loss, retain: (await evaluateLoss(model, retain.test)).loss };
  const summary: Record<string, { forget: ReturnType<typeof meanStd>; retain: ReturnType<typeof meanStd>; blocks: number[]; total: number; lr: number }> = {};
  for (const [arm, lassoWeight] of [['GS-LoRA (defaults)', undefined], ['LoRA, same objective (alpha 0)', 0]] as const) {
    const run = (lr: number, seed: number) => trainGs(name, model, forget, retain, arm, lassoWeight, lr, seed);
    const g = await gridThenSeeds(LRS, run, (x) => x.objective);
    const res = { forget: meanStd(g.runs.map((x) => x.forget)), retain: meanStd(g.runs.map((x) => x.retain)), blocks: g.runs.map((x) => x.alive), total: g.runs[0].total, lr: g.lr };
    summary[arm] = res;
    rows.push({ model: name, method: arm, lr: g.lr, grid: g.grid, base, bound: g.runs.map((x) => x.bound), forget: res.forget, retain: res.retain, blocksEdited: res.blocks, blocks: res.total });
    tableRows.push([name, arm, String(g.lr), `${res.blocks.join(', ')} of ${res.total}`, fmt(res.forget), `${(res.forget.mean - base.forget).toFixed(2)}`, fmt(res.retain), `${(res.retain.mean - base.retain >= 0 ? '+' : '')}${(res.retain.mean - base.retain).toFixed(3)}`]);
  }
  // A lasso sweep at the lr chosen for the defaults: how strong must alpha be to confine the edit?
  const sweep: { alpha: number; blocks: number[]; forget: ReturnType<typeof meanStd>; retain: ReturnType<typeof meanStd>; reached: boolean }[] = [];
  for (const alpha of ALPHAS) {
    const runs: Awaited<ReturnType<typeof trainGs>>[] = [];
    for (const seed of SEEDS) runs.push(await trainGs(name, model, forget, retain, `GS-LoRA alpha ${alpha}`, alpha, summary['GS-LoRA (defaults)'].lr, seed));
    const f = meanStd(runs.map((x) => x.forget));
    const rt = meanStd(runs.map((x) => x.retain));
    const reached = runs.every((x) => x.forget >= x.bound - 0.5);
    sweep.push({ alpha, blocks: runs.map((x) => x.alive), forget: f, retain: rt, reached });
    const total = summary['GS-LoRA (defaults)'].total;
    rows.push({ model: name, method: `GS-LoRA alpha ${alpha}`, lr: summary['GS-LoRA (defaults)'].lr, forget: f, retain: rt, blocksEdited: runs.map((x) => x.alive), blocks: total });
    tableRows.push([name, `GS-LoRA, alpha ${alpha}`, String(summary['GS-LoRA (defaults)'].lr), `${runs.map((x) => x.alive).join(', ')} of ${total}`, fmt(f), `${(f.mean - base.forget).toFixed(2)}`, fmt(rt), `${(rt.mean - base.retain >= 0 ? '+' : '')}${(rt.mean - base.retain).toFixed(3)}`]);
  }
  const gs = summary['GS-LoRA (defaults)'];
  const dense = summary['LoRA, same objective (alpha 0)'];
  const fewer = Math.max(...gs.blocks) < dense.total;
  const forgot = gs.forget.mean - base.forget > 1;
  const kept = gs.retain.mean - base.retain;
  verdicts.push(
    `- ${name} (base: forget ${base.forget.toFixed(3)}, retain ${base.retain.toFixed(3)}): GS-LoRA edits ${gs.blocks.join('/')} of ${gs.total} blocks (the dense LoRA all ${dense.total}); ` +
      `forget loss +${(gs.forget.mean - base.forget).toFixed(2)} nats (dense +${(dense.forget.mean - base.forget).toFixed(2)}), retain loss ${kept >= 0 ? '+' : ''}${kept.toFixed(3)} (dense ${(dense.retain.mean - base.retain >= 0 ? '+' : '')}${(dense.retain.mean - base.retain).toFixed(3)}). ` +
      (fewer && forgot ? `Forgetting confined to a subset of blocks held${kept < 0.1 ? ', with the retain loss kept within 0.1 nats of the base' : `, but the retain loss rose by ${kept.toFixed(2)} nats`}.` : fewer ? 'Fewer blocks were edited, but the forget loss barely moved: the claim did not hold here.' : 'With the default alpha every block stayed in use: the lasso did not localize the edit.') +
      ` ${localized(sweep, gs.total, base)}`,
  );
}

const md = [
  '### GS-LoRA: forgetting confined to a few blocks',
  '',
  `Rows "alpha X" rerun GS-LoRA at the defaults' lr with a stronger lasso (all seeds). Forget set: TinyStories paragraphs mentioning a dog (${forgetLines.length}); retain set: 2000 other paragraphs; line-level splits, ${SEQ}-token windows. ${STEPS} steps of the official recipe (AdamW wd 0.05, cosine to 1e-3 x peak; lr from the grid, picked on the validation objective retain CE + max(0, BND − forget CE) at seed 0), forget bound BND = base forget CE + 3 nats, ${SEEDS.length} seed(s), mean ± std. "blocks edited": groups that survive the threshold (per seed); the other blocks' weights stay bit-identical when fused.`,
  '',
  table(['model', 'method', 'lr', 'blocks edited', 'forget loss', 'Δ forget', 'retain loss', 'Δ retain'], tableRows),
  '',
  ...verdicts,
  '',
  'Scale caveat: the paper forgets face identities / object classes in ViTs scored by accuracy; here "forgetting" is a rise of the LM loss on a topic, on 2- and 5-block models, so with 2 blocks (tinystories-656K) "a few blocks" can only mean one.',
].join('\n');
writeResults('outcomes-gs-lora', { steps: STEPS, seeds: SEEDS, seqLen: SEQ, keyword: String(KEYWORD), rows, seconds: Number(since(t0)) }, md);
