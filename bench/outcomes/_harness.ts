/**
 * Shared pieces of the outcome benchmarks (files starting with `_` are not parts): both real
 * checkpoints, line-level train/val/test splits (split before packing, so no window straddles
 * two splits), training runs that report held-out losses, lr selection on the validation
 * split, and mean ± std over seeds.
 */
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { CausalLM } from '../../src/models/causal-lm.js';
import { loadDataset, type TokenizedExample } from '../../src/io/datasets.js';
import type { Method } from '../../src/train/method.js';
import { Trainer, type TrainerConfigInput } from '../../src/train/trainer.js';
import { shuffled } from '../../src/io/datasets.js';

export const SHARED = join(import.meta.dirname, '..', '..', '..', 'shared');
export const DATA = join(SHARED, 'data');
const ALL_CHECKPOINTS = ['stories260K', 'tinystories-656K'] as const;
export type Checkpoint = (typeof ALL_CHECKPOINTS)[number];
/** Both real checkpoints (`OUTCOMES_MODELS=stories260K` limits a run to the named ones). */
export const CHECKPOINTS: readonly Checkpoint[] = ALL_CHECKPOINTS.filter((c) => !process.env.OUTCOMES_MODELS || process.env.OUTCOMES_MODELS.split(',').includes(c));

/** `OUTCOMES_QUICK=1`: fewer steps and one seed (a smoke run, not a result). */
export const QUICK = process.env.OUTCOMES_QUICK === '1';
export const SEEDS = QUICK ? [0] : [0, 1, 2];

export function loadCheckpoint(name: Checkpoint): Promise<CausalLM> {
  return CausalLM.load(join(SHARED, 'models', name));
}

const tmp = mkdtempSync(join(tmpdir(), 'sparsetune-outcomes-'));

/** Tokenize text lines as one packed text file (each line a document). */
export async function linesToExamples(model: CausalLM, lines: string[], seqLen: number, tag: string): Promise<TokenizedExample[]> {
  const file = join(tmp, `${tag}-${model.config.vocabSize}-${seqLen}.txt`);
  writeFileSync(file, `${lines.join('\n\n')}\n`);
  return loadDataset(file, model.tokenizer!, { seqLen });
}

/** Non-empty lines of a data file under ../shared/data. */
export function readLines(rel: string): string[] {
  return readFileSync(join(DATA, rel), 'utf8').split('\n').map((l) => l.trim()).filter(Boolean);
}

export interface Splits {
  train: TokenizedExample[];
  val: TokenizedExample[];
  test: TokenizedExample[];
}

/** Seeded line-level split (fractions for val and test), then packing into seqLen windows. */
export async function splitLines(model: CausalLM, lines: string[], seqLen: number, tag: string, opts: { val?: number; test?: number; seed?: number } = {}): Promise<Splits> {
  const order = shuffled(lines, opts.seed ?? 7);
  const nVal = Math.round(order.length * (opts.val ?? 0.1));
  const nTest = Math.round(order.length * (opts.test ?? 0.1));
  return {
    val: await linesToExamples(model, order.slice(0, nVal), seqLen, `${tag}-val`),
    test: await linesToExamples(model, order.slice(nVal, nVal + nTest), seqLen, `${tag}-test`),
    train: await linesToExamples(model, order.slice(nVal + nTest), seqLen, `${tag}-train`),
  };
}

/** Train `method` and report held-out losses on the named sets (evaluated with the method's eval hooks). */
export async function trainAndEval(
  model: CausalLM,
  method: Method,
  cfg: TrainerConfigInput,
  train: TokenizedExample[],
  evalSets: Record<string, TokenizedExample[]>,
): Promise<{ losses: Record<string, number>; seconds: number; trainer: Trainer }> {
  const trainer = new Trainer(model, method, cfg);
  const t0 = performance.now();
  await trainer.train(train);
  const seconds = (performance.now() - t0) / 1000;
  const losses: Record<string, number> = {};
  for (const [name, set] of Object.entries(evalSets)) losses[name] = (await trainer.evaluate(set)).loss;
  return { losses, seconds, trainer };
}

export interface MeanStd {
  mean: number;
  std: number;
  n: number;
}

/** Mean and sample standard deviation. */
export function meanStd(xs: number[]): MeanStd {
  const n = xs.length;
  const mean = xs.reduce((a, b) => a + b, 0) / n;
  const std = n > 1 ? Math.sqrt(xs.reduce((a, b) => a + (b - mean) ** 2, 0) / (n - 1)) : 0;
  return { mean, std, n };
}

export function fmt(m: MeanStd, digits = 3): string {
  return m.n > 1 ? `${m.mean.toFixed(digits)} ± ${m.std.toFixed(digits)}` : m.mean.toFixed(digits);
}

/** Whether a is lower than b by more than both spreads together (a conservative "held"). */
export function clearlyLower(a: MeanStd, b: MeanStd): boolean {
  return a.mean + a.std < b.mean - b.std;
}

/**
 * Pick the lr with the lowest validation score at seed 0, then run every seed at that lr.
 * `run(lr, seed)` returns the run's scores; `score` reads the selection value from them.
 */
export async function gridThenSeeds<T extends object>(lrs: number[], run: (lr: number, seed: number) => Promise<T>, score: (r: T) => number): Promise<{ lr: number; grid: { lr: number; score: number }[]; runs: T[] }> {
  const first = new Map<number, T>();
  const grid: { lr: number; score: number }[] = [];
  for (const lr of lrs) {
    const r = await run(lr, SEEDS[0]);
    first.set(lr, r);
    grid.push({ lr, score: score(r) });
  }
  const best = grid.reduce((a, b) => (b.score < a.score ? b : a)).lr;
  const runs = [first.get(best)!];
  for (const seed of SEEDS.slice(1)) runs.push(await run(best, seed));
  return { lr: best, grid, runs };
}

/** Seconds since `t0` (performance.now()), for progress lines. */
export function since(t0: number): string {
  return ((performance.now() - t0) / 1000).toFixed(0);
}
