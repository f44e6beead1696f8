/**
 * Sharded safetensors checkpoints: `model.safetensors.index.json` maps every tensor name
 * to the shard file that holds it (`weight_map`). Shards sit next to the index.
 */
import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { z } from 'zod';
import { SparsetuneError } from '../errors.js';
import type { HostTensor } from '../tensor.js';
import { readSafetensors, readSafetensorsHeader, type SafetensorsEntry } from './safetensors.js';

const indexSchema = z.object({
  metadata: z.record(z.string(), z.unknown()).optional(),
  weight_map: z.record(z.string(), z.string()),
});

/** Parsed index: tensor name -> absolute shard path. */
export interface SafetensorsIndex {
  weightMap: Map<string, string>;
  metadata: Record<string, unknown>;
}

/** Read and validate a `*.safetensors.index.json` file. */
export async function readSafetensorsIndex(indexPath: string): Promise<SafetensorsIndex> {
  let text: string;
  try {
    text = await fsp.readFile(indexPath, 'utf8');
  } catch (err) {
    throw new SparsetuneError('NOT_FOUND', `${indexPath}: cannot read sharded index (${(err as NodeJS.ErrnoException).code})`);
  }
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (err) {
    throw new SparsetuneError('BAD_SAFETENSORS', `${indexPath}: not valid JSON (${(err as Error).message})`);
  }
  const parsed = indexSchema.safeParse(json);
  if (!parsed.success) {
    throw new SparsetuneError('BAD_SAFETENSORS', `${indexPath}: expected {"weight_map": {tensor name: shard file}}`);
  }
  const dir = path.dirname(indexPath);
  const weightMap = new Map<string, string>();
  for (const [name, shard] of Object.entries(parsed.data.weight_map)) {
    // A shard path escaping the model directory is corrupt or hostile.
    if (path.isAbsolute(shard) || shard.split(/[\\/]/).includes('..')) {
      throw new SparsetuneError('BAD_SAFETENSORS', `${indexPath}: shard "${shard}" for "${name}" must be a file inside the model directory`);
    }
    weightMap.set(name, path.join(dir, shard));
  }
  return { weightMap, metadata: parsed.data.metadata ?? {} };
}

/** Group tensor names by shard so every shard file is opened once. */
function byShard(index: SafetensorsIndex, names: Iterable<string>, indexPath: string): Map<string, string[]> {
  const groups = new Map<string, string[]>();
  for (const name of names) {
    const shard = index.weightMap.get(name);
    if (!shard) throw new SparsetuneError('NOT_FOUND', `${indexPath}: no tensor named "${name}" in weight_map`);
    const list = groups.get(shard) ?? [];
    list.push(name);
    groups.set(shard, list);
  }
  return groups;
}

/** Headers of every tensor listed in a sharded index (validates each shard). */
export async function readShardedSafetensorsHeader(indexPath: string): Promise<{ entries: (SafetensorsEntry & { file: string })[] }> {
  const index = await readSafetensorsIndex(indexPath);
  const entries: (SafetensorsEntry & { file: string })[] = [];
  for (const [shard, names] of byShard(index, index.weightMap.keys(), indexPath)) {
    const header = await readSafetensorsHeader(shard);
    const inShard = new Map(header.entries.map((e) => [e.name, e]));
    for (const name of names) {
      const e = inShard.get(name);
      if (!e) throw new SparsetuneError('BAD_SAFETENSORS', `${indexPath}: weight_map puts "${name}" in ${shard}, which does not contain it`);
      entries.push({ ...e, file: shard });
    }
  }
  return { entries };
}

/**
 * Read tensors of a sharded checkpoint (all, or `names`). Metadata of the shards is merged.
 * A tensor that the index lists but its shard lacks is a BAD_SAFETENSORS error.
 */
export async function readShardedSafetensors(
  indexPath: string,
  opts: { names?: string[] } = {},
): Promise<{ tensors: Map<string, HostTensor>; metadata: Record<string, string> }> {
  const index = await readSafetensorsIndex(indexPath);
  const tensors = new Map<string, HostTensor>();
  const metadata: Record<string, string> = {};
  for (const [shard, names] of byShard(index, opts.names ?? index.weightMap.keys(), indexPath)) {
    const header = await readSafetensorsHeader(shard);
    const present = new Set(header.entries.map((e) => e.name));
    const missing = names.find((n) => !present.has(n));
    if (missing) throw new SparsetuneError('BAD_SAFETENSORS', `${indexPath}: weight_map puts "${missing}" in ${shard}, which does not contain it`);
    const part = await readSafetensors(shard, { names });
    for (const [k, v] of part.tensors) tensors.set(k, v);
    Object.assign(metadata, part.metadata);
  }
  return { tensors, metadata };
}
