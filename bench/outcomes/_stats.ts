/** Small helpers the outcome parts share: seed statistics, formatting, shared paths. */
import { join } from 'node:path';

export const SHARED = join(import.meta.dirname, '..', '..', '..', 'shared');
export const MODELS = { stories260K: join(SHARED, 'models', 'stories260K'), 'tinystories-656K': join(SHARED, 'models', 'tinystories-656K') } as const;
export type ModelName = keyof typeof MODELS;
export const DATA = join(SHARED, 'data');

/** Mean and sample standard deviation. */
export function meanStd(xs: readonly number[]): { mean: number; std: number } {
  const mean = xs.reduce((a, b) => a + b, 0) / xs.length;
  const std = xs.length > 1 ? Math.sqrt(xs.reduce((a, b) => a + (b - mean) ** 2, 0) / (xs.length - 1)) : 0;
  return { mean, std };
}

/** "m ± s" with `d` decimals. */
export function pm(xs: readonly number[], d = 3): string {
  const { mean, std } = meanStd(xs);
  return `${mean.toFixed(d)} ± ${std.toFixed(d)}`;
}

/** Seeds the outcome parts report over (OUTCOMES_SEEDS=1,2 to change). */
export function seeds(): number[] {
  const env = process.env.OUTCOMES_SEEDS;
  return env ? env.split(',').map(Number) : [1, 2, 3];
}

/** The lr grid of a part (OUTCOMES_LRS=3e-4 to run fewer points than the part's default grid). */
export function lrs(defaults: readonly number[]): number[] {
  const env = process.env.OUTCOMES_LRS;
  return env ? env.split(',').map(Number) : [...defaults];
}

/** Why a run used fewer steps/seeds/grid points than the part's defaults (OUTCOMES_NOTE), as a markdown line. */
export function runNote(): string[] {
  const n = process.env.OUTCOMES_NOTE;
  return n ? [`Run settings: ${n}`, ''] : [];
}

/** The models to run (OUTCOMES_MODELS=stories260K to run one). */
export function models(): ModelName[] {
  const env = process.env.OUTCOMES_MODELS;
  return env ? (env.split(',') as ModelName[]) : (Object.keys(MODELS) as ModelName[]);
}

/**
 * A difference is called real only when its mean exceeds twice its standard error over the
 * seeds (paired by seed); otherwise "within noise". One seed is never enough to call it real.
 */
export function verdict(a: readonly number[], b: readonly number[], lowerIsBetter = true): { diff: number; se: number; real: boolean; better: boolean } {
  const d = a.map((x, i) => x - b[i]);
  const { mean, std } = meanStd(d);
  const se = std / Math.sqrt(d.length);
  return { diff: mean, se, real: d.length > 1 && Math.abs(mean) > 2 * se && mean !== 0, better: lowerIsBetter ? mean < 0 : mean > 0 };
}
