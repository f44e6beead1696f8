/**
 * Hugging Face PEFT LoRA directories: `adapter_config.json` + `adapter_model.safetensors`
 * with `base_model.model.<module>.lora_A.weight` [r, in] and `.lora_B.weight` [out, r]
 * (and `.lora_B.bias` with lora_bias). Scale per module = alpha / r, or alpha / sqrt(r)
 * with use_rslora; alpha_pattern/rank_pattern override per module. Our base weights are
 * [out, in] everywhere (GPT-2's Conv1D weights included), so fan_in_fan_out needs no
 * transpose here; it is kept in the config for the round trip. DoRA, embedding LoRA and
 * modules_to_save are not low-rank deltas and are refused.
 */
import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { z } from 'zod';
import { SparsetuneError } from '../errors.js';
import { readSafetensors, writeSafetensors } from '../io/safetensors.js';
import type { HostTensor } from '../tensor.js';
import { writeDirAtomic } from './atomic-dir.js';
import { PEFT_PREFIX } from './codec.js';
import { ADAPTER_FORMAT, moduleOfWeight, type Adapter, type LowRankPair } from './types.js';
import { validateAdapter } from './validate.js';

export const PEFT_CONFIG = 'adapter_config.json';
export const PEFT_WEIGHTS = 'adapter_model.safetensors';

const peftConfigSchema = z.looseObject({
  peft_type: z.string(),
  r: z.number().int().positive(),
  lora_alpha: z.number(),
  target_modules: z.union([z.array(z.string()), z.string(), z.null()]).optional(),
  base_model_name_or_path: z.string().nullable().optional(),
  task_type: z.string().nullable().optional(),
  use_rslora: z.boolean().optional(),
  use_dora: z.boolean().optional(),
  fan_in_fan_out: z.boolean().optional(),
  lora_bias: z.boolean().optional(),
  alpha_pattern: z.record(z.string(), z.number()).optional(),
  rank_pattern: z.record(z.string(), z.number().int().positive()).optional(),
  modules_to_save: z.array(z.string()).nullable().optional(),
});

/** Read a PEFT LoRA directory as a `lowrank` adapter (base fingerprint unknown: ''). */
export async function importPeft(dir: string): Promise<Adapter> {
  const cfgPath = path.join(dir, PEFT_CONFIG);
  const stPath = path.join(dir, PEFT_WEIGHTS);
  const fail: (file: string, what: string, cause?: unknown) => never = (file, what, cause) => {
    throw new SparsetuneError('BAD_ADAPTER', `${file}: ${what}`, { cause });
  };
  let raw: unknown;
  try {
    raw = JSON.parse(await fsp.readFile(cfgPath, 'utf8'));
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') throw new SparsetuneError('NOT_FOUND', `${dir} is not a PEFT adapter directory: ${PEFT_CONFIG} is missing`);
    fail(cfgPath, `not valid JSON (${(err as Error).message}); re-save the adapter with PEFT`, err);
  }
  const parsed = peftConfigSchema.safeParse(raw);
  if (!parsed.success) {
    fail(cfgPath, `not a LoRA adapter config (${parsed.error.issues.map((i) => `${i.path.join('.')}: ${i.message}`).join('; ')})`);
  }
  const cfg = parsed.data!;
  if (cfg.peft_type !== 'LORA') fail(cfgPath, `peft_type "${cfg.peft_type}" is not supported; only LoRA adapters can be imported`);
  if (cfg.use_dora) fail(cfgPath, 'DoRA adapters (use_dora: true) are not plain low-rank deltas; merge them with PEFT first');
  if (cfg.modules_to_save && cfg.modules_to_save.length > 0) fail(cfgPath, 'modules_to_save (fully trained modules) is not supported; merge them with PEFT first');

  let tensors: Map<string, HostTensor>;
  try {
    ({ tensors } = await readSafetensors(stPath));
  } catch (err) {
    const hint = (err as { code?: string }).code === 'NOT_FOUND' ? ' (a PEFT adapter_model.bin must be converted to safetensors first)' : '';
    fail(stPath, `cannot read the LoRA weights: ${(err as Error).message}${hint}`, err);
  }

  const adapter: Adapter = {
    meta: {
      format: ADAPTER_FORMAT,
      method: 'peft-lora',
      kind: 'lowrank',
      base: { model: cfg.base_model_name_or_path ?? '', fingerprint: '' },
      config: raw as Record<string, unknown>,
      created: new Date().toISOString(),
      metrics: {},
    },
    additive: new Map(),
    structured: new Map(),
    masks: new Map(),
    lowrank: new Map(),
  };
  const seen = new Set<string>();
  for (const name of tensors!.keys()) {
    const m = /^base_model\.model\.(.+)\.lora_A\.weight$/.exec(name);
    if (!m) continue;
    const module = m[1];
    const A = tensors!.get(name)!;
    const B = tensors!.get(`${PEFT_PREFIX}${module}.lora_B.weight`);
    if (!B) fail(stPath, `"${name}" has no matching lora_B.weight`);
    if (A.dtype !== 'f32' || B.dtype !== 'f32' || A.shape.length !== 2 || B.shape.length !== 2) fail(stPath, `LoRA factors of "${module}" must be 2-D float tensors`);
    const rank = A.shape[0];
    const alpha = patternValue(cfg.alpha_pattern, module) ?? cfg.lora_alpha;
    const pair: LowRankPair = { A: A as HostTensor<'f32'>, B: B as HostTensor<'f32'>, scale: cfg.use_rslora ? alpha / Math.sqrt(rank) : alpha / rank };
    const bias = tensors!.get(`${PEFT_PREFIX}${module}.lora_B.bias`);
    if (bias) {
      if (bias.dtype !== 'f32') fail(stPath, `"${module}.lora_B.bias" must be a float tensor`);
      pair.biasDelta = bias.data as Float32Array;
      seen.add(`${PEFT_PREFIX}${module}.lora_B.bias`);
    }
    adapter.lowrank.set(`${module}.weight`, pair);
    seen.add(name).add(`${PEFT_PREFIX}${module}.lora_B.weight`);
  }
  for (const name of tensors!.keys()) {
    if (!seen.has(name)) fail(stPath, `unsupported tensor "${name}" (only lora_A/lora_B of Linear layers are supported: no embedding LoRA, DoRA or saved modules)`);
  }
  if (adapter.lowrank.size === 0) fail(stPath, 'no LoRA tensors found');
  validateAdapter(adapter, { source: stPath, fix: 're-save the adapter with PEFT' });
  return adapter;
}

/**
 * Write the low-rank pairs of `adapter` as a PEFT LoRA directory (atomic). Every other
 * payload kind is refused: PEFT cannot express it. `dtype` stores the factors as F16/BF16.
 */
export async function exportPeft(adapter: Adapter, dir: string, opts: { dtype?: 'F32' | 'F16' | 'BF16' } = {}): Promise<void> {
  const others = adapter.additive.size + adapter.structured.size + adapter.masks.size;
  if (others > 0 || adapter.pruned) {
    throw new SparsetuneError('BAD_ARGUMENT', `exportPeft: adapter "${adapter.meta.method}" has additive, structured, mask or pruned payloads, which a PEFT LoRA file cannot hold; save it with saveAdapter instead`);
  }
  if (adapter.lowrank.size === 0) throw new SparsetuneError('BAD_ARGUMENT', `exportPeft: adapter "${adapter.meta.method}" has no low-rank pairs to export`);
  validateAdapter(adapter, { source: `exportPeft(${dir})`, fix: 'fix the adapter before exporting it' });

  const rslora = adapter.meta.config.use_rslora === true;
  const modules: { module: string; rank: number; alpha: number; pair: LowRankPair }[] = [];
  for (const [name, pair] of adapter.lowrank) {
    const rank = pair.A.shape[0];
    modules.push({ module: moduleOfWeight(name)!, rank, alpha: alphaFor(pair.scale, rank, rslora), pair });
  }
  const r = mostCommon(modules.map((m) => m.rank));
  const loraAlpha = mostCommon(modules.map((m) => m.alpha));
  const rankPattern: Record<string, number> = {};
  const alphaPattern: Record<string, number> = {};
  const tensors = new Map<string, HostTensor>();
  const dtypes: Record<string, 'F32' | 'F16' | 'BF16'> = {};
  const put = (name: string, t: HostTensor): void => {
    tensors.set(name, t);
    if (opts.dtype) dtypes[name] = opts.dtype;
  };
  for (const m of modules) {
    if (m.rank !== r) rankPattern[m.module] = m.rank;
    if (m.alpha !== loraAlpha) alphaPattern[m.module] = m.alpha;
    put(`${PEFT_PREFIX}${m.module}.lora_A.weight`, m.pair.A);
    put(`${PEFT_PREFIX}${m.module}.lora_B.weight`, m.pair.B);
    if (m.pair.biasDelta) put(`${PEFT_PREFIX}${m.module}.lora_B.bias`, { dtype: 'f32', shape: [m.pair.biasDelta.length], data: m.pair.biasDelta });
  }
  const config = {
    peft_type: 'LORA',
    task_type: 'CAUSAL_LM',
    base_model_name_or_path: adapter.meta.base.model || null,
    r,
    lora_alpha: loraAlpha,
    target_modules: modules.map((m) => m.module).sort(),
    rank_pattern: rankPattern,
    alpha_pattern: alphaPattern,
    use_rslora: rslora,
    lora_dropout: 0,
    bias: 'none',
    lora_bias: modules.some((m) => m.pair.biasDelta !== undefined),
    fan_in_fan_out: adapter.meta.config.fan_in_fan_out === true,
    use_dora: false,
    init_lora_weights: true,
    inference_mode: true,
    modules_to_save: null,
    layers_to_transform: null,
    layers_pattern: null,
    revision: null,
  };
  await writeDirAtomic(dir, [PEFT_WEIGHTS, PEFT_CONFIG], async (tmp) => {
    await writeSafetensors(path.join(tmp, PEFT_WEIGHTS), tensors, { metadata: { format: 'pt' }, dtypes });
    await fsp.writeFile(path.join(tmp, PEFT_CONFIG), `${JSON.stringify(config, null, 2)}\n`);
  });
}

/** PEFT's per-module pattern lookup: a key matches the module name or a dotted suffix of it (regex). */
function patternValue(pattern: Record<string, number> | undefined, module: string): number | undefined {
  for (const [key, value] of Object.entries(pattern ?? {})) {
    if (key === module) return value;
    try {
      if (new RegExp(`^(.*\\.)?(${key})$`).test(module)) return value;
    } catch {
      // Not a valid regex: only the exact match above applies.
    }
  }
  return undefined;
}

/**
 * The lora_alpha that importPeft turns back into `scale`: exactly when some float64 does
 * (search a few ulps around scale·r), else the nearest (alpha / r cannot reach every
 * float64, e.g. 0.7 at r = 3; the scale is then off by one ulp, ~1e-16 relative).
 */
function alphaFor(scale: number, rank: number, rslora: boolean): number {
  const denom = rslora ? Math.sqrt(rank) : rank;
  const start = scale * denom;
  if (start === 0 || !Number.isFinite(start)) return start;
  let best = start;
  const err = (alpha: number): number => Math.abs(alpha / denom - scale);
  for (const up of [true, false]) {
    let alpha = start;
    for (let step = 0; step < 4; step++) {
      alpha = nextToward(alpha, up);
      if (err(alpha) < err(best)) best = alpha;
    }
  }
  return best;
}

/** The adjacent float64 above (`up`) or below `x` (finite, nonzero). */
function nextToward(x: number, up: boolean): number {
  const view = new DataView(new ArrayBuffer(8));
  view.setFloat64(0, x);
  const bits = view.getBigUint64(0);
  // For positive x the bit pattern grows with the value; for negative x it shrinks.
  view.setBigUint64(0, up === x > 0 ? bits + 1n : bits - 1n);
  return view.getFloat64(0);
}

function mostCommon(xs: number[]): number {
  const counts = new Map<number, number>();
  for (const x of xs) counts.set(x, (counts.get(x) ?? 0) + 1);
  let best = xs[0];
  for (const [x, c] of counts) if (c > counts.get(best)! || (c === counts.get(best)! && x < best)) best = x;
  return best;
}
