/**
 * Hugging Face model directories: load (config, weights, tokenizer, generation defaults)
 * and write (config.json + model.safetensors + tokenizer files), plus the path of the
 * model bundled with the package.
 */
import { existsSync, promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { z } from 'zod';
import { SparsetuneError } from '../errors.js';
import type { HostTensor } from '../tensor.js';
import { writeDirAtomic } from './atomic.js';
import { parseModelConfig, type ModelConfig } from './config.js';
import { withDirLock } from './dir-lock.js';
import { resolveModelDir, type ResolveOptions } from './hub.js';
import { readSafetensors, readSafetensorsHeader, writeSafetensors, type SafetensorsEntry } from './safetensors.js';
import { readShardedSafetensors, readShardedSafetensorsHeader } from './safetensors-index.js';
import { Tokenizer } from './tokenizer.js';

/** Sampling defaults from generation_config.json (falling back to config.json ids). */
export interface GenerationDefaults {
  bosTokenId?: number;
  eosTokenId?: number[];
  maxNewTokens?: number;
  temperature?: number;
  topP?: number;
  topK?: number;
  repetitionPenalty?: number;
}

export interface LoadedModel {
  dir: string;
  config: ModelConfig;
  /** HF parameter names -> f32 tensors (empty when loaded with `weights: false`). */
  weights: Map<string, HostTensor<'f32'>>;
  tokenizer: Tokenizer | null;
  generation: GenerationDefaults;
}

const generationSchema = z.object({
  bos_token_id: z.number().int().nonnegative().nullable().optional(),
  eos_token_id: z.union([z.number().int().nonnegative(), z.array(z.number().int().nonnegative())]).nullable().optional(),
  max_new_tokens: z.number().int().positive().nullable().optional(),
  temperature: z.number().nonnegative().nullable().optional(),
  top_p: z.number().positive().max(1).nullable().optional(),
  top_k: z.number().int().nonnegative().nullable().optional(),
  repetition_penalty: z.number().positive().nullable().optional(),
});

/** Tokenizer-side files copied along with a model. */
export const TOKENIZER_FILES = [
  'tokenizer.json',
  'tokenizer_config.json',
  'special_tokens_map.json',
  'tokenizer.model',
  'chat_template.jinja',
  'generation_config.json',
];

async function readJsonFile(file: string): Promise<unknown | undefined> {
  let text: string;
  try {
    text = await fsp.readFile(file, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw new SparsetuneError('NOT_FOUND', `${file}: cannot read (${(err as NodeJS.ErrnoException).code ?? err})`);
  }
  try {
    return JSON.parse(text);
  } catch (err) {
    throw new SparsetuneError('BAD_CONFIG', `${file}: invalid JSON (${(err as Error).message})`);
  }
}

/** A header entry of the model's weights, with the file that holds it. */
export type WeightFileEntry = SafetensorsEntry & { file: string };

/**
 * Decides, from the config and the weights' headers alone (no tensor data read yet), which
 * tensors to load under which parameter names, or throws naming what does not fit.
 * `CausalLM.load` passes the architecture's check (`planWeights` in models/param-shapes).
 */
export type WeightPlanner = (config: ModelConfig, entries: WeightFileEntry[], source: string, file: string) => Map<string, WeightFileEntry>;

/** Storage dtypes that hold float weights. */
const FLOAT_DTYPES = new Set(['F32', 'F16', 'BF16', 'F64']);

/** Without an architecture's plan: every tensor, each of which must be a float. */
function everyFloatTensor(_config: ModelConfig, entries: WeightFileEntry[], source: string, file: string): Map<string, WeightFileEntry> {
  const plan = new Map<string, WeightFileEntry>();
  for (const e of entries) {
    if (!FLOAT_DTYPES.has(e.dtype)) {
      throw new SparsetuneError(
        'BAD_CONFIG',
        `${source}: tensor "${e.name}" in ${file} is stored as ${e.dtype}, but model weights must be floats (F32, F16, BF16, F64); integer and quantized checkpoints are not supported: convert the checkpoint to float first`,
      );
    }
    plan.set(e.name, e);
  }
  return plan;
}

function toF32(t: HostTensor, name: string): HostTensor<'f32'> {
  if (t.dtype === 'f32') return t as HostTensor<'f32'>;
  if (t.dtype !== 'f64') throw new SparsetuneError('BAD_CONFIG', `tensor "${name}" is ${t.dtype}, not a float weight`);
  return { dtype: 'f32', shape: t.shape, data: Float32Array.from(t.data as Float64Array) };
}

/**
 * Read the weights' headers, let `plan` check them against the config, then read only the
 * planned tensors: a config that contradicts the file fails before any tensor is allocated.
 */
async function loadWeights(dir: string, config: ModelConfig, plan: WeightPlanner): Promise<Map<string, HostTensor<'f32'>>> {
  const single = path.join(dir, 'model.safetensors');
  const index = path.join(dir, 'model.safetensors.index.json');
  let entries: WeightFileEntry[];
  let file: string;
  if (existsSync(single)) {
    file = 'model.safetensors';
    entries = (await readSafetensorsHeader(single)).entries.map((e) => ({ ...e, file: single }));
  } else if (existsSync(index)) {
    file = 'model.safetensors.index.json';
    entries = (await readShardedSafetensorsHeader(index)).entries;
  } else {
    throw new SparsetuneError('NOT_FOUND', `${dir}: no model.safetensors or model.safetensors.index.json (only safetensors weights are supported; convert .bin/.pt checkpoints first)`);
  }
  const wanted = plan(config, entries, dir, file);
  const fileNames = [...wanted.values()].map((e) => e.name);
  const tensors = file === 'model.safetensors' ? (await readSafetensors(single, { names: fileNames })).tensors : (await readShardedSafetensors(index, { names: fileNames })).tensors;
  const out = new Map<string, HostTensor<'f32'>>();
  for (const [name, e] of wanted) out.set(name, toF32(tensors.get(e.name)!, e.name));
  return out;
}

async function loadGeneration(dir: string, config: ModelConfig): Promise<GenerationDefaults> {
  const file = path.join(dir, 'generation_config.json');
  const json = await readJsonFile(file);
  const parsed = generationSchema.safeParse(json ?? {});
  if (!parsed.success) {
    throw new SparsetuneError('BAD_CONFIG', `${file}: ${parsed.error.issues.map((i) => `${i.path.join('.')}: ${i.message}`).join('; ')}`);
  }
  const g = parsed.data;
  const eos = g.eos_token_id ?? config.eosTokenId;
  const out: GenerationDefaults = {};
  const bos = g.bos_token_id ?? config.bosTokenId;
  if (bos != null) out.bosTokenId = bos;
  if (eos != null) out.eosTokenId = Array.isArray(eos) ? eos : [eos];
  if (g.max_new_tokens != null) out.maxNewTokens = g.max_new_tokens;
  if (g.temperature != null) out.temperature = g.temperature;
  if (g.top_p != null) out.topP = g.top_p;
  if (g.top_k != null) out.topK = g.top_k;
  if (g.repetition_penalty != null) out.repetitionPenalty = g.repetition_penalty;
  return out;
}

/**
 * Load a model from a directory or hub id: config.json (validated), weights as f32
 * (single or sharded safetensors; skip with `weights: false`), tokenizer (null when the
 * directory has no tokenizer.json) and generation defaults. `planWeights` checks the
 * weights' headers against the config before any tensor is read (default: every tensor,
 * floats only); `CausalLM.load` passes the architecture's full shape check.
 */
export async function loadModel(ref: string, opts: { weights?: boolean; planWeights?: WeightPlanner } & ResolveOptions = {}): Promise<LoadedModel> {
  const dir = await resolveModelDir(ref, opts);
  const configFile = path.join(dir, 'config.json');
  const configJson = await readJsonFile(configFile);
  if (configJson === undefined) throw new SparsetuneError('NOT_FOUND', `${dir}: no config.json; is this a Hugging Face model directory?`);
  const config = parseModelConfig(configJson, configFile);
  const weights = opts.weights === false ? new Map<string, HostTensor<'f32'>>() : await loadWeights(dir, config, opts.planWeights ?? everyFloatTensor);
  const tokenizer = existsSync(path.join(dir, 'tokenizer.json')) ? await Tokenizer.fromDir(dir) : null;
  const generation = await loadGeneration(dir, config);
  return { dir, config, weights, tokenizer, generation };
}

/**
 * Write a standard HF model directory atomically (`writeDirAtomic`, replace mode): `outDir`
 * is never half-written, and holds the old model or the new one whatever happens. A
 * non-empty `outDir` is only replaced with `overwrite: true`. Holds the directory's lock.
 */
export async function writeModelDir(
  outDir: string,
  m: { configJson: Record<string, unknown>; weights: Map<string, HostTensor<'f32'>>; tokenizerFrom?: string },
  opts: { overwrite?: boolean; dtypes?: Record<string, 'F32' | 'F16' | 'BF16'> } = {},
): Promise<void> {
  const target = path.resolve(outDir);
  await withDirLock(target, 'write model', async () => {
    let existing: string[] | undefined;
    try {
      existing = await fsp.readdir(target);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') {
        throw new SparsetuneError('BAD_ARGUMENT', `${target}: exists and is not a readable directory`);
      }
    }
    if (existing && existing.length > 0 && !opts.overwrite) {
      throw new SparsetuneError('BAD_ARGUMENT', `${target} is not empty; choose another output directory or pass overwrite`);
    }
    await writeDirAtomic(target, async (tmp) => {
      await fsp.writeFile(path.join(tmp, 'config.json'), `${JSON.stringify(m.configJson, null, 2)}\n`);
      await writeSafetensors(path.join(tmp, 'model.safetensors'), m.weights, { metadata: { format: 'pt' }, dtypes: opts.dtypes });
      if (m.tokenizerFrom) {
        for (const f of TOKENIZER_FILES) {
          const src = path.join(m.tokenizerFrom, f);
          if (existsSync(src)) await fsp.copyFile(src, path.join(tmp, f));
        }
      }
    });
  });
}

/** Directory of this module: ESM builds and tsx have import.meta.url, the CJS bundle __dirname. */
function moduleDir(): string {
  const url = typeof import.meta === 'object' ? import.meta.url : undefined;
  if (url) return path.dirname(fileURLToPath(url));
  return typeof __dirname === 'string' ? __dirname : process.cwd();
}

/**
 * Absolute path of a model shipped in the package (`<package root>/models/<name>`),
 * found by walking up from this module (src/io/ under tsx, dist/ when built).
 */
export function bundledModelPath(name: 'stories260K' = 'stories260K'): string {
  let dir = moduleDir();
  for (;;) {
    const candidate = path.join(dir, 'models', name);
    if (existsSync(path.join(dir, 'package.json')) && existsSync(path.join(candidate, 'config.json'))) return candidate;
    const parent = path.dirname(dir);
    if (parent === dir) break;
    dir = parent;
  }
  throw new SparsetuneError('NOT_FOUND', `bundled model "${name}" not found above ${moduleDir()}; the package install is incomplete`);
}
