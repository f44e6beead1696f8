/**
 * Replaying a zeroth-order run from its artifacts: the trajectory file plus the base model on
 * disk give back the fine-tuned weights bit for bit, with no data and no forward pass.
 */
import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { z } from 'zod';
import { SparsetuneError } from '../errors.js';
import { ADAPTER_JSON } from '../merge/adapter.js';
import type { HostTensor } from '../tensor.js';
import { BaseWeightsOnDisk } from './base-weights.js';
import { replayTrajectory } from './mezo.js';
import { loadTrajectory } from './trajectory.js';

const zoRunSchema = z.object({
  trainable: z.enum(['base', 'adapter']),
  tensors: z.array(z.string().min(1)).min(1),
  adapterMethod: z.string().optional(),
});
/** Base runs record the run as the adapter's config; adapter runs under config.zerothOrder. */
const zoAdapterConfigSchema = z.object({
  config: z.union([z.object({ zerothOrder: zoRunSchema }).transform((c) => c.zerothOrder), zoRunSchema]),
});

/** The trained tensor names recorded in the adapter.json written beside a trajectory. */
async function tensorsFromAdapterJson(file: string): Promise<string[]> {
  let json: unknown;
  try {
    json = JSON.parse(await fsp.readFile(file, 'utf8'));
  } catch (err) {
    throw new SparsetuneError(
      'NOT_FOUND',
      `cannot read ${file} (${(err as Error).message}), which names the tensors the trajectory trained; keep the trajectory beside its adapter.json or pass opts.tensors`,
    );
  }
  const parsed = zoAdapterConfigSchema.safeParse(json);
  if (!parsed.success) {
    throw new SparsetuneError('BAD_ADAPTER', `${file} was not written by a zeroth-order run (config.trainable / config.tensors missing); pass opts.tensors`);
  }
  const cfg = parsed.data.config;
  if (cfg.trainable === 'adapter') {
    throw new SparsetuneError(
      'BAD_ARGUMENT',
      `${file}: this run trained the params of a ${cfg.adapterMethod ?? 'adapter'} method, not base weights; ` +
        'replay it with replayTrajectory on a fresh method instance built with the same config (its initial params are the start point)',
    );
  }
  return cfg.tensors;
}

/**
 * Rebuild the weights a base-weight MeZO / Sparse-MeZO run trained: read the original tensors
 * from the HF model directory `modelDir`, replay `trajectoryPath` on them, and return them
 * (HF name -> tensor, in the run's order). The tensor list comes from `opts.tensors` or from
 * the adapter.json next to the trajectory.
 */
export async function replayOnBase(
  modelDir: string,
  trajectoryPath: string,
  opts: { tensors?: string[] } = {},
): Promise<Map<string, HostTensor<'f32'>>> {
  const trajectory = await loadTrajectory(trajectoryPath);
  const names = opts.tensors ?? (await tensorsFromAdapterJson(path.join(path.dirname(trajectoryPath), ADAPTER_JSON)));
  const disk = await BaseWeightsOnDisk.open(modelDir);
  const weights = new Map<string, HostTensor<'f32'>>();
  for (const name of names) weights.set(name, await disk.read(name));
  replayTrajectory(
    names.map((name) => ({ name, data: weights.get(name)!.data })),
    trajectory.config,
    trajectory.steps,
  );
  return weights;
}
