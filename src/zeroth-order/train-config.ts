/** Settings of a zeroth-order training run (validated with zod; they also come from --config JSON). */
import { z } from 'zod';
import { SparsetuneError } from '../errors.js';
import { scheduleSchema } from '../train/optim.js';
import { ZO_THRESHOLD_MODES, type ZoThresholdMode } from './config.js';

/** Sparse-MeZO's default fraction of each tensor left unperturbed (the spec's best value). */
export const DEFAULT_SPARSITY = 0.8;

/** Extra base tensors MeZO can train besides the block linears (the official code trains every parameter). */
export const ZO_EXTRA_PARAMS = ['embeddings', 'norms', 'head'] as const;
export type ZoExtraParams = (typeof ZO_EXTRA_PARAMS)[number];

/**
 * The reference settings of a zeroth-order method: the defaults of `train --method mezo|sparse-mezo`
 * (any flag or --config field overrides them), with the source they follow.
 */
export interface ZoRecipe {
  source: string;
  lr: number;
  eps: number;
  steps: number;
  batchSize: number;
  /** Sparse-MeZO: fraction of each tensor not perturbed. */
  sparsity?: number;
  notes: string;
}

export const ZO_RECIPES: Record<'mezo' | 'sparse-mezo', ZoRecipe> = {
  mezo: {
    source:
      'MeZO (Malladi et al., NeurIPS 2023), official code princeton-nlp/MeZO: large_models/mezo.sh + trainer.py (zo_step/zo_update: ' +
      'SPSA with one perturbation, eps 1e-3, batch 16, constant lr, no momentum; lr 1e-5..1e-7 full-parameter for OPT-1.3B..13B, 20k steps)',
    lr: 1e-4,
    eps: 1e-3,
    steps: 500,
    batchSize: 16,
    notes:
      'the lr that works shrinks with the parameter count: of {5e-5, 1e-4, 2e-4} over 300 steps, 1e-4 is best on stories260K and 2e-4 (the top of the grid) on tinystories-656K (bench/results/outcomes-sparse-mezo.md); ~1e-6 on billions',
  },
  'sparse-mezo': {
    source:
      'Sparse-MeZO (Liu et al., 2024; code NUS-HPC-AI-Lab/SparseMeZO): MeZO\'s setup, perturbing and updating only the (1 - sparsity) smallest-magnitude ' +
      'weights of each layer, sparsity 0.8 best, with a larger lr than MeZO',
    lr: 5e-4,
    eps: 1e-3,
    steps: 500,
    batchSize: 16,
    sparsity: DEFAULT_SPARSITY,
    notes:
      'Sparse-MeZO trains 5x fewer weights and takes a larger lr; of {2e-4, 5e-4, 1e-3} over 300 steps, 5e-4 is best on stories260K and 1e-3 (the top of the grid) on tinystories-656K (bench/results/outcomes-sparse-mezo.md)',
  },
};

/** Settings of a zeroth-order run (JSON-friendly; unknown keys are rejected). */
export const zoTrainConfigSchema = z
  .object({
    method: z.enum(['mezo', 'sparse-mezo']).default('sparse-mezo'),
    /** Optimizer steps (default: the method's recipe). */
    steps: z.number().int().positive().optional(),
    /** Peak learning rate (default: the method's recipe; Sparse-MeZO's is larger than MeZO's). */
    lr: z.number().positive().optional(),
    /** Perturbation scale (default: the method's recipe). */
    eps: z.number().positive().optional(),
    /** Sparse-MeZO only: fraction of each tensor NOT perturbed (default 0.8). */
    sparsity: z.number().min(0).lt(1).optional(),
    /** Sparse-MeZO only: thresholds recomputed every step (default) or fixed at the start. */
    thresholds: z.enum(ZO_THRESHOLD_MODES as [ZoThresholdMode, ...ZoThresholdMode[]]).optional(),
    /** Perturbations averaged per step (each costs two forward passes). */
    samples: z.number().int().min(1).max(1024).default(1),
    seed: z.number().int().min(0).max(0xffffffff).default(0),
    /** Examples per step (default: the method's recipe). */
    batchSize: z.number().int().positive().optional(),
    weightDecay: z.number().min(0).default(0),
    schedule: scheduleSchema.default(scheduleSchema.parse({ type: 'constant' })),
    /** Target modules of the base weights to train (PEFT style); default every block linear. Ignored with an adapter. */
    targets: z.union([z.array(z.string().min(1)).min(1), z.string().min(1)]).optional(),
    /** Also train these base tensors: the token (and position) embeddings, the norms, the LM head (tied: the embedding). */
    include: z.array(z.enum(ZO_EXTRA_PARAMS)).default([]),
    /** Evaluate every N steps (0 = only before and after training). */
    evalEvery: z.number().int().nonnegative().default(0),
    /** At most this many eval batches per evaluation (0 = all). */
    evalBatches: z.number().int().nonnegative().default(0),
    /** Exact perturb/restore via a side table (costs memory; results differ from the default in rounding). */
    exactRestore: z.boolean().default(false),
  })
  .strict();
export type ZoTrainConfigInput = z.input<typeof zoTrainConfigSchema>;
/** A resolved run config: every default filled in from the schema and the method's recipe. */
export type ZoTrainConfig = Omit<z.infer<typeof zoTrainConfigSchema>, 'steps' | 'lr' | 'eps' | 'batchSize'> & { steps: number; lr: number; eps: number; batchSize: number };

/** Validate run settings and fill in defaults (the method's recipe for lr, eps, steps, batch); BAD_ARGUMENT names every bad field. */
export function resolveZoTrainConfig(input: ZoTrainConfigInput): ZoTrainConfig {
  const parsed = zoTrainConfigSchema.safeParse(input);
  if (!parsed.success) {
    const problems = parsed.error.issues.map((i) => `${i.path.join('.') || '(config)'}: ${i.message}`).join('; ');
    throw new SparsetuneError('BAD_ARGUMENT', `zeroth-order training config: ${problems}. lr and eps must be positive finite numbers, steps and batchSize positive integers, sparsity in [0, 1).`);
  }
  const cfg = parsed.data;
  for (const field of ['sparsity', 'thresholds'] as const) {
    if (cfg.method === 'mezo' && cfg[field] !== undefined) {
      throw new SparsetuneError('BAD_ARGUMENT', `${field} (${cfg[field]}) applies to method "sparse-mezo" only; drop it or use --method sparse-mezo`);
    }
  }
  const r = ZO_RECIPES[cfg.method];
  return { ...cfg, steps: cfg.steps ?? r.steps, lr: cfg.lr ?? r.lr, eps: cfg.eps ?? r.eps, batchSize: cfg.batchSize ?? r.batchSize };
}

/** The recipe as help text lines (for `train --method mezo|sparse-mezo --help`). */
export function zoRecipeHelp(method: 'mezo' | 'sparse-mezo'): string[] {
  const r = ZO_RECIPES[method];
  return [
    'Recipe (the defaults of `train` for this method; any flag or --config field overrides):',
    `  --lr ${r.lr}  --steps ${r.steps}  --batch-size ${r.batchSize}  --schedule constant  eps ${r.eps}${r.sparsity !== undefined ? `  sparsity ${r.sparsity}  thresholds per-step` : ''}`,
    '  optimizer: SGD on the two-point (SPSA) estimate, no momentum, weight decay 0 (never on norms or biases)',
    `  source: ${r.source}`,
    `  note: ${r.notes}`,
  ];
}
