/**
 * Trajectory files: the complete record of a zeroth-order run (config + one (step, seed, g, lr)
 * record per sample), a few dozen bytes per step, that `replayTrajectory` turns back into the
 * trained weights from the base weights.
 *
 * Format: { "format": "sparsetune.zo-trajectory/2", "config": ZoConfig, "steps": [...] }, the
 * config always naming its noise `generator`. Format 1 files (written before that field) are
 * read as generator 'philox', the only one there was, so they still replay bit for bit. Sparse
 * runs always record their `thresholds` mode; a file without it was written before per-step
 * thresholds existed and replays with 'fixed' ones, as it was trained.
 * JSON numbers round-trip float64 exactly, so a saved g replays to the same bits.
 */
import { readFile } from 'node:fs/promises';
import { z } from 'zod';
import { SparsetuneError } from '../errors.js';
import { writeFileAtomic } from '../io/atomic.js';
import { zoConfigSchema, type ZoConfig } from './config.js';
import type { ZoStepRecord } from './mezo.js';
import { DEFAULT_NOISE_GENERATOR } from './rng.js';

export const ZO_TRAJECTORY_FORMAT = 'sparsetune.zo-trajectory/2';
/** The format before the `generator` field: its runs used Philox noise. Read, never written. */
export const ZO_TRAJECTORY_FORMAT_V1 = 'sparsetune.zo-trajectory/1';

/** Contents of a trajectory file. */
export interface ZoTrajectoryFile {
  format: typeof ZO_TRAJECTORY_FORMAT;
  config: ZoConfig;
  steps: ZoStepRecord[];
}

const stepRecordSchema = z
  .object({
    step: z.number().int().min(0),
    seed: z.number().int().min(0).max(0xffffffff),
    projectedGrad: z.number(),
    lr: z.number().positive(),
  })
  .strict();

const currentFileSchema = z
  .object({
    format: z.literal(ZO_TRAJECTORY_FORMAT),
    config: zoConfigSchema.required({ generator: true }),
    steps: z.array(stepRecordSchema),
  })
  .strict()
  .transform((file) => ({ ...file, config: withThresholdMode(file.config, 'fixed') }));

/** A sparse config with its thresholds mode spelled out (`absent` where the field is missing). */
function withThresholdMode<C extends ZoConfig>(config: C, absent: 'per-step' | 'fixed'): C {
  return config.sparsity === undefined || config.thresholds !== undefined ? config : { ...config, thresholds: absent };
}

const formatOneFileSchema = z
  .object({
    format: z.literal(ZO_TRAJECTORY_FORMAT_V1),
    config: zoConfigSchema.omit({ generator: true }),
    steps: z.array(stepRecordSchema),
  })
  .strict()
  .transform((file) => ({ format: ZO_TRAJECTORY_FORMAT, config: withThresholdMode({ ...file.config, generator: 'philox' as const }, 'fixed'), steps: file.steps }));

/** Schema of a trajectory file (format 1 files come out as format 2 with generator 'philox'). */
export const zoTrajectoryFileSchema = z.union([currentFileSchema, formatOneFileSchema]);

/** Validates against the schema of the file's own format, so the issues name real fields. */
function parseTrajectoryFile(json: unknown) {
  const isFormatOne = typeof json === 'object' && json !== null && (json as { format?: unknown }).format === ZO_TRAJECTORY_FORMAT_V1;
  return isFormatOne ? formatOneFileSchema.safeParse(json) : currentFileSchema.safeParse(json);
}

/** Writes a trajectory file atomically (`writeFileAtomic`: temp file in the same directory, fsync, rename). */
export async function saveTrajectory(path: string, config: ZoConfig, steps: readonly ZoStepRecord[]): Promise<void> {
  const file: ZoTrajectoryFile = {
    format: ZO_TRAJECTORY_FORMAT,
    // The generator and the thresholds mode are part of the run's definition: written out even when defaults.
    config: withThresholdMode({ ...config, generator: config.generator ?? DEFAULT_NOISE_GENERATOR }, 'per-step'),
    steps: steps.map((s) => ({ step: s.step, seed: s.seed, projectedGrad: s.projectedGrad, lr: s.lr })),
  };
  // Refuse to write what could not be loaded back (e.g. a NaN gradient would become null).
  const checked = parseTrajectoryFile(file);
  if (!checked.success) {
    throw new SparsetuneError('BAD_ARGUMENT', `Refusing to save an invalid trajectory: ${formatIssues(checked.error)}.`);
  }
  try {
    await writeFileAtomic(path, JSON.stringify(file) + '\n');
  } catch (err) {
    throw new SparsetuneError('RUNTIME', `Could not write trajectory file ${path}: ${(err as Error).message}`, { cause: err });
  }
}

/** Reads and validates a trajectory file. */
export async function loadTrajectory(path: string): Promise<ZoTrajectoryFile> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code === 'ENOENT' ? 'NOT_FOUND' : 'RUNTIME';
    throw new SparsetuneError(code, `Could not read trajectory file ${path}: ${(err as Error).message}`, { cause: err });
  }
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (err) {
    throw new SparsetuneError('BAD_DATA', `Trajectory file ${path} is not valid JSON (${(err as Error).message}); it may be truncated or not a trajectory.`, { cause: err });
  }
  const parsed = parseTrajectoryFile(json);
  if (!parsed.success) {
    throw new SparsetuneError(
      'BAD_DATA',
      `Trajectory file ${path} is invalid: ${formatIssues(parsed.error)}. Expected format "${ZO_TRAJECTORY_FORMAT}" (or "${ZO_TRAJECTORY_FORMAT_V1}") with a valid config and steps.`,
    );
  }
  return parsed.data as ZoTrajectoryFile;
}

function formatIssues(error: z.ZodError): string {
  return error.issues
    .slice(0, 5)
    .map((issue) => `${issue.path.join('.') || '(root)'}: ${issue.message}`)
    .join('; ');
}
