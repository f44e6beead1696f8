/** Configuration of the zeroth-order optimizers, validated with zod (it also comes from JSON files). */
import { z } from 'zod';
import { SparsetuneError } from '../errors.js';
import { DEFAULT_NOISE_GENERATOR, NOISE_GENERATORS, type NoiseGenerator } from './rng.js';

/** When Sparse-MeZO's per-tensor thresholds are computed (see ZoConfig.thresholds). */
export type ZoThresholdMode = 'per-step' | 'fixed';
export const ZO_THRESHOLD_MODES: readonly ZoThresholdMode[] = ['per-step', 'fixed'];

/** MeZO / Sparse-MeZO settings. */
export interface ZoConfig {
  /** Learning rate (constant; a per-step override can be passed to `step`). */
  lr: number;
  /** Perturbation scale: weights move by ±eps·z for the two loss evaluations. */
  eps: number;
  /** Decoupled weight decay applied with the update (default 0). */
  weightDecay?: number;
  /** n: perturbation samples averaged per step (default 1; each costs two loss evaluations). */
  samples?: number;
  /** Base seed; the seed of every (step, sample) is derived from it. */
  seed: number;
  /** Sparse-MeZO: fraction of each tensor NOT perturbed (e.g. 0.8). Undefined = plain MeZO. */
  sparsity?: number;
  /**
   * Sparse-MeZO: when the per-tensor thresholds are set. 'per-step' (default): at the start of
   * every step, from the weights as they are then, so every step trains the fraction
   * 1 − sparsity of smallest-magnitude entries of each tensor (members that grew past the
   * threshold drop out and the next-smallest come in). 'fixed': once, from the weights before
   * the first step (members that grow out never come back, so the trained set only shrinks;
   * trajectories written before this field existed replay this way).
   */
  thresholds?: ZoThresholdMode;
  /** Elements per pass chunk (scratch of ~30 bytes per element; never changes results). Default 16384. */
  chunk?: number;
  /**
   * Keep the start value of every element whose perturb/restore cycle is not bit-exact in a
   * per-sample side table, so restore is exact (costs ~8 bytes per such element). Default false:
   * memory stays at inference level and restore is within about one float32 ulp.
   */
  exactRestore?: boolean;
  /**
   * Generator of the noise z: 'hash' (default; integer hash + quantile table, several times
   * faster) or 'philox' (Philox4x32-10 + Box-Muller, the only one before this field existed;
   * format-1 trajectories replay with it). Part of the run's definition, like the seed.
   */
  generator?: NoiseGenerator;
}

/** A config with every default filled in. */
export type ResolvedZoConfig = Required<Omit<ZoConfig, 'sparsity'>> & { sparsity: number | undefined };

/** Elements per pass chunk: the per-chunk scratch (~0.5 MB) and the chunk's weights stay in L2. */
export const DEFAULT_CHUNK = 16384;

/** Schema of a ZoConfig (unknown keys rejected so typos are caught; zod numbers are finite). */
export const zoConfigSchema = z
  .object({
    lr: z.number().positive(),
    eps: z.number().positive(),
    weightDecay: z.number().min(0).optional(),
    samples: z.number().int().min(1).max(1024).optional(),
    seed: z.number().int().min(0).max(Number.MAX_SAFE_INTEGER),
    sparsity: z.number().min(0).lt(1).optional(),
    thresholds: z.enum(['per-step', 'fixed']).optional(),
    chunk: z.number().int().min(1).max(1 << 26).optional(),
    exactRestore: z.boolean().optional(),
    generator: z.enum(NOISE_GENERATORS as [NoiseGenerator, ...NoiseGenerator[]]).optional(),
  })
  .strict();

/** Validates a config and fills in defaults; throws SparsetuneError('BAD_ARGUMENT') naming each bad field. */
export function resolveZoConfig(cfg: unknown): ResolvedZoConfig {
  const parsed = zoConfigSchema.safeParse(cfg);
  if (!parsed.success) {
    const problems = parsed.error.issues.map((issue) => `${issue.path.join('.') || '(config)'}: ${issue.message}`).join('; ');
    throw new SparsetuneError(
      'BAD_ARGUMENT',
      `Invalid zeroth-order config: ${problems}. Expected lr > 0, eps > 0 (finite), integer seed >= 0, samples >= 1, sparsity in [0, 1), generator one of ${NOISE_GENERATORS.join(', ')}.`,
    );
  }
  const c = parsed.data;
  return {
    lr: c.lr,
    eps: c.eps,
    weightDecay: c.weightDecay ?? 0,
    samples: c.samples ?? 1,
    seed: c.seed,
    sparsity: c.sparsity,
    thresholds: c.thresholds ?? 'per-step',
    chunk: c.chunk ?? DEFAULT_CHUNK,
    exactRestore: c.exactRestore ?? false,
    generator: c.generator ?? DEFAULT_NOISE_GENERATOR,
  };
}
