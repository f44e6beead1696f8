/**
 * What the report needs to know about the base model, read without loading any weights:
 * the shape of every parameter (safetensors headers), the storage layout of every Linear
 * (GPT-2's Conv1D stores [in, out]), the number of blocks and the hidden width. Densities,
 * N:M groups, GS-LoRA's dead blocks and PAT's pruned fraction all need it; without a base
 * the report still shows counts, just not fractions of the whole.
 */
import { existsSync, promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { parseModelConfig } from '../io/config.js';
import { resolveModelDir } from '../io/hub.js';
import { readSafetensorsHeader } from '../io/safetensors.js';
import { readShardedSafetensorsHeader } from '../io/safetensors-index.js';
import { SparsetuneError } from '../errors.js';
import { architectureOf } from '../models/registry.js';

export interface BaseInfo {
  dir: string;
  /** HF parameter name -> shape. */
  shapes: Map<string, number[]>;
  /** Weight name -> storage layout of its Linear (only Linear weights are listed). */
  layouts: Map<string, 'out_in' | 'in_out'>;
  numLayers: number;
  hiddenSize: number;
}

/**
 * Read a base model's geometry from a local directory or a cached hub id (never
 * downloads: a report must not touch the network).
 */
export async function readBaseInfo(ref: string): Promise<BaseInfo> {
  const dir = await resolveModelDir(ref, { download: false });
  const configFile = path.join(dir, 'config.json');
  let configJson: unknown;
  try {
    configJson = JSON.parse(await fsp.readFile(configFile, 'utf8'));
  } catch (err) {
    throw new SparsetuneError('NOT_FOUND', `${configFile}: cannot read it as JSON (${(err as Error).message}); pass --model with a Hugging Face model directory`);
  }
  const cfg = parseModelConfig(configJson, configFile);
  const shapes = new Map<string, number[]>();
  const single = path.join(dir, 'model.safetensors');
  const index = path.join(dir, 'model.safetensors.index.json');
  if (existsSync(single)) {
    for (const e of (await readSafetensorsHeader(single)).entries) shapes.set(e.name, [...e.shape]);
  } else if (existsSync(index)) {
    for (const e of (await readShardedSafetensorsHeader(index)).entries) shapes.set(e.name, [...e.shape]);
  }
  const layouts = new Map<string, 'out_in' | 'in_out'>();
  for (const s of architectureOf(cfg).sites(cfg)) {
    layouts.set(s.weightName, s.layout);
    // Tied heads have no tensor of their own in the file; the site still tells the shape.
    if (!shapes.has(s.weightName)) shapes.set(s.weightName, s.layout === 'out_in' ? [s.outFeatures, s.inFeatures] : [s.inFeatures, s.outFeatures]);
  }
  return { dir, shapes, layouts, numLayers: cfg.numLayers, hiddenSize: cfg.hiddenSize };
}
