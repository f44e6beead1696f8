/**
 * Method recipes: the trainer settings a method's paper and official code use, so that
 * `sparsetune train --method X` with no tuning flags follows the reference. A flag given on
 * the command line always wins over the recipe; a method without a recipe gets GENERIC_RECIPE.
 */
import type { TrainerConfigInput } from './trainer.js';

export interface MethodRecipe {
  /** Where the numbers come from: paper and official code (file / script), one line. */
  source: string;
  /** Peak learning rate. */
  lr: number;
  /** Optimizer steps (of each phase, for multi-phase methods without `phaseSteps`). */
  steps?: number;
  /** Multi-phase methods (LT-SFT): steps of each phase, in order. */
  phaseSteps?: number[];
  /** Names of the phases in `phaseSteps` (for --help). */
  phaseNames?: string[];
  batchSize?: number;
  optimizer?: { type?: 'adamw' | 'sgd'; beta1?: number; beta2?: number; eps?: number; weightDecay?: number; momentum?: number };
  schedule?: { type?: 'constant' | 'linear' | 'cosine'; warmupSteps?: number; minRatio?: number };
  /** Global gradient-norm clip (0 = off). */
  clipNorm?: number;
  /** Anything the reader should know (what was scaled down for small models, and why). */
  notes?: string;
}

/** The settings a method without its own recipe trains with (the CLI's historical defaults). */
export const GENERIC_RECIPE: MethodRecipe = {
  source: 'generic defaults (no method-specific recipe)',
  lr: 1e-3,
  steps: 100,
  batchSize: 8,
  optimizer: { type: 'adamw', weightDecay: 0 },
  schedule: { type: 'cosine', warmupSteps: 0 },
  clipNorm: 1,
};

/** A recipe with every field the trainer needs filled in from GENERIC_RECIPE. */
export function resolveRecipe(recipe: MethodRecipe | undefined): Required<Omit<MethodRecipe, 'notes' | 'phaseSteps' | 'phaseNames'>> & { notes?: string; phaseSteps?: number[]; phaseNames?: string[] } {
  const r = recipe ?? GENERIC_RECIPE;
  return {
    source: r.source,
    lr: r.lr,
    steps: r.steps ?? GENERIC_RECIPE.steps!,
    ...(r.phaseSteps ? { phaseSteps: [...r.phaseSteps] } : {}),
    ...(r.phaseNames ? { phaseNames: [...r.phaseNames] } : {}),
    batchSize: r.batchSize ?? GENERIC_RECIPE.batchSize!,
    optimizer: { ...GENERIC_RECIPE.optimizer, ...r.optimizer },
    schedule: { ...GENERIC_RECIPE.schedule, ...r.schedule },
    clipNorm: r.clipNorm ?? GENERIC_RECIPE.clipNorm!,
    notes: r.notes,
  };
}

/** Trainer settings of a recipe (what `new Trainer(model, method, recipeTrainerConfig(r))` trains with). */
export function recipeTrainerConfig(recipe: MethodRecipe | undefined): TrainerConfigInput & { steps: number } {
  const r = resolveRecipe(recipe);
  return {
    steps: r.steps,
    ...(r.phaseSteps ? { phaseSteps: r.phaseSteps } : {}),
    batchSize: r.batchSize,
    optimizer: { ...r.optimizer, lr: r.lr },
    schedule: r.schedule,
    clipNorm: r.clipNorm,
  };
}

/** The recipe as help text lines (for `train --method X --help`). */
export function recipeHelp(recipe: MethodRecipe | undefined): string[] {
  const r = resolveRecipe(recipe);
  const o = r.optimizer;
  const s = r.schedule;
  const opt = o.type === 'sgd' ? `sgd (momentum ${o.momentum ?? 0.9})` : `adamw (beta1 ${o.beta1 ?? 0.9}, beta2 ${o.beta2 ?? 0.999}, weight decay ${o.weightDecay ?? 0})`;
  const sched = s.type === 'constant' ? 'constant' : `${s.type} to ${s.minRatio ?? 0.1} x peak`;
  const lines = [
    'Recipe (the defaults of `train` for this method; any flag overrides):',
    `  --lr ${r.lr}  ${r.phaseSteps ? `--phase-steps ${r.phaseSteps.join(',')}` : `--steps ${r.steps}`}  --batch-size ${r.batchSize}  --schedule ${s.type}  --warmup ${s.warmupSteps ?? 0}  --clip-norm ${r.clipNorm}`,
    `  optimizer ${opt}; schedule ${sched}`,
  ];
  if (r.phaseSteps) lines.push(`  steps per phase: ${r.phaseSteps.map((n, i) => `${r.phaseNames?.[i] ?? `phase ${i + 1}`} ${n}`).join(', ')} (--steps N instead runs N steps in every phase)`);
  lines.push(`  source: ${r.source}`);
  if (r.notes) lines.push(`  note: ${r.notes}`);
  return lines;
}
