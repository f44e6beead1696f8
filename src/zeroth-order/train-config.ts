/** Settings of a zeroth-order training run (validated with zod; they also come from --config JSON). */
import { z } from 'zod';
import { SparsetuneError } from '../errors.js';
import { scheduleSchema } from '../train/optim.js';

/** Sparse-MeZO's default fraction of each tensor left unperturbed (the spec's best value). */
export const DEFAULT_SPARSITY = 0.8;

/** Settings of a zeroth-order run (JSON-friendly; unknown keys are rejected). */
export const zoTrainConfigSchema = z
  .object({
    method: z.enum(['mezo', 'sparse-mezo']).default('sparse-mezo'),
    steps: z.number().int().positive().default(100),
    /** Peak learning rate. Full-parameter ZO needs a small one: on stories260K the best were 1e-4 (MeZO) and 5e-4 (Sparse-MeZO); ~1e-6 on 7B models. */
    lr: z.number().positive().default(1e-4),
    /** Perturbation scale. */
    eps: z.number().positive().default(1e-3),
    /** Sparse-MeZO only: fraction of each tensor NOT perturbed (default 0.8). */
    sparsity: z.number().min(0).lt(1).optional(),
    /** Perturbations averaged per step (each costs two forward passes). */
    samples: z.number().int().min(1).max(1024).default(1),
    seed: z.number().int().min(0).max(0xffffffff).default(0),
    batchSize: z.number().int().positive().default(8),
    weightDecay: z.number().min(0).default(0),
    schedule: scheduleSchema.default(scheduleSchema.parse({ type: 'constant' })),
    /** Target modules of the base weights to train (PEFT style); default every block linear. Ignored with an adapter. */
    targets: z.union([z.array(z.string().min(1)).min(1), z.string().min(1)]).optional(),
    /** Evaluate every N steps (0 = only before and after training). */
    evalEvery: z.number().int().nonnegative().default(0),
    /** At most this many eval batches per evaluation (0 = all). */
    evalBatches: z.number().int().nonnegative().default(0),
    /** Exact perturb/restore via a side table (costs memory; results differ from the default in rounding). */
    exactRestore: z.boolean().default(false),
  })
  .strict();
export type ZoTrainConfig = z.infer<typeof zoTrainConfigSchema>;
export type ZoTrainConfigInput = z.input<typeof zoTrainConfigSchema>;

/** Validate run settings and fill in defaults; BAD_ARGUMENT names every bad field. */
export function resolveZoTrainConfig(input: ZoTrainConfigInput): ZoTrainConfig {
  const parsed = zoTrainConfigSchema.safeParse(input);
  if (!parsed.success) {
    const problems = parsed.error.issues.map((i) => `${i.path.join('.') || '(config)'}: ${i.message}`).join('; ');
    throw new SparsetuneError('BAD_ARGUMENT', `zeroth-order training config: ${problems}. lr and eps must be positive finite numbers, steps and batchSize positive integers, sparsity in [0, 1).`);
  }
  const cfg = parsed.data;
  if (cfg.method === 'mezo' && cfg.sparsity !== undefined) {
    throw new SparsetuneError('BAD_ARGUMENT', `sparsity (${cfg.sparsity}) applies to method "sparse-mezo" only; drop it or use --method sparse-mezo`);
  }
  return cfg;
}
