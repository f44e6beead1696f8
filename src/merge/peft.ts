/**
 * Hugging Face PEFT LoRA directories: `adapter_config.json` + `adapter_model.safetensors`
 * (the layout of PEFT's `save_pretrained`), read and written exactly:
 * - `base_model.model.<module>.lora_A.weight` [r, in] and `.lora_B.weight` [out, r] (and
 *   `.lora_B.bias` with lora_bias): W += scale · B·A, scale = alpha / r (rsLoRA: alpha /
 *   sqrt(r)), with rank_pattern / alpha_pattern per module (models/targets.ts).
 *   `fan_in_fan_out` (GPT-2's Conv1D, weights stored [in, out]): PEFT adds (B·A)ᵀ; the pair
 *   is stored here transposed-equivalently (A' = Bᵀ, B' = Aᵀ) and written back the same way.
 * - `base_model.model.<param>` (modules_to_save, and biases with `bias: "all"`): the whole
 *   trained tensor. It becomes an additive delta float32(saved − base) against the base
 *   weights, so importing one needs them (`base`); fusing then gives the saved values to
 *   within one float32 rounding.
 * DoRA and embedding LoRA are not low-rank deltas of a Linear and are refused.
 */
import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { z } from 'zod';
import { SparsetuneError } from '../errors.js';
import { readSafetensors, writeSafetensors } from '../io/safetensors.js';
import { patternValue } from '../models/targets.js';
import type { HostTensor } from '../tensor.js';
import { WeightPatcher } from './apply.js';
import { writeDirAtomic } from '../io/atomic.js';
import { PEFT_PREFIX } from './codec.js';
import { biasParamOf, moduleOfWeight, newAdapter, type Adapter, type LowRankPair } from './types.js';
import { validateAdapter } from './validate.js';

export const PEFT_CONFIG = 'adapter_config.json';
export const PEFT_WEIGHTS = 'adapter_model.safetensors';

const stringOrList = z.union([z.array(z.string()), z.string(), z.null()]);
const peftConfigSchema = z.looseObject({
  peft_type: z.string(),
  r: z.number().int().positive(),
  lora_alpha: z.number(),
  target_modules: stringOrList.optional(),
  base_model_name_or_path: z.string().nullable().optional(),
  task_type: z.string().nullable().optional(),
  use_rslora: z.boolean().optional(),
  use_dora: z.boolean().optional(),
  fan_in_fan_out: z.boolean().optional(),
  lora_bias: z.boolean().optional(),
  alpha_pattern: z.record(z.string(), z.number()).nullable().optional(),
  rank_pattern: z.record(z.string(), z.number().int().positive()).nullable().optional(),
  modules_to_save: z.array(z.string()).nullable().optional(),
});

/** Where importPeft gets what a PEFT directory does not carry. */
export interface ImportPeftOptions {
  /** Base parameter shapes: every target and range is checked against them. */
  shapes?: Map<string, number[]>;
  /** Pristine base weights: needed for whole saved tensors (modules_to_save), turned into deltas. */
  base?: Map<string, HostTensor<'f32'>>;
}

/** Read a PEFT LoRA directory as an adapter (`lowrank`, plus additive deltas for saved modules; base fingerprint unknown: ''). */
export async function importPeft(dir: string, opts: ImportPeftOptions = {}): Promise<Adapter> {
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

  let tensors: Map<string, HostTensor>;
  try {
    ({ tensors } = await readSafetensors(stPath));
  } catch (err) {
    const hint = (err as { code?: string }).code === 'NOT_FOUND' ? ' (a PEFT adapter_model.bin must be converted to safetensors first)' : '';
    fail(stPath, `cannot read the LoRA weights: ${(err as Error).message}${hint}`, err);
  }

  const adapter = newAdapter({ method: 'peft-lora', kind: 'lowrank', base: { model: cfg.base_model_name_or_path ?? '', fingerprint: '' }, config: raw as Record<string, unknown> });
  const seen = new Set<string>();
  for (const [name, A] of tensors!) {
    const m = /^base_model\.model\.(.+)\.lora_A\.weight$/.exec(name);
    if (!m) continue;
    const module = m[1];
    const bName = `${PEFT_PREFIX}${module}.lora_B.weight`;
    const B = tensors!.get(bName);
    if (!B) fail(stPath, `"${name}" has no matching lora_B.weight`);
    if (A.dtype !== 'f32' || B.dtype !== 'f32' || A.shape.length !== 2 || B.shape.length !== 2) fail(stPath, `LoRA factors of "${module}" must be 2-D float tensors`);
    const rank = A.shape[0];
    const cfgRank = patternValue(cfg.rank_pattern, module) ?? cfg.r;
    if (cfgRank !== rank) fail(stPath, `lora_A of "${module}" has rank ${rank} but ${PEFT_CONFIG} gives it r = ${cfgRank} (rank_pattern / r); the files do not belong together`);
    const alpha = patternValue(cfg.alpha_pattern, module) ?? cfg.lora_alpha;
    const scale = cfg.use_rslora ? alpha / Math.sqrt(rank) : alpha / rank;
    const pair: LowRankPair = cfg.fan_in_fan_out
      ? { A: transpose2d(B as HostTensor<'f32'>), B: transpose2d(A as HostTensor<'f32'>), scale }
      : { A: A as HostTensor<'f32'>, B: B as HostTensor<'f32'>, scale };
    const bias = tensors!.get(`${PEFT_PREFIX}${module}.lora_B.bias`);
    if (bias) {
      if (bias.dtype !== 'f32') fail(stPath, `"${module}.lora_B.bias" must be a float tensor`);
      if (cfg.fan_in_fan_out) fail(stPath, `"${module}.lora_B.bias" with fan_in_fan_out is not supported`);
      pair.biasDelta = bias.data as Float32Array;
      seen.add(`${PEFT_PREFIX}${module}.lora_B.bias`);
    }
    adapter.lowrank.set(`${module}.weight`, pair);
    seen.add(name).add(bName);
  }
  for (const [name, t] of tensors!) {
    if (seen.has(name)) continue;
    if (/\.lora_(embedding_)?[AB]\b|\.lora_magnitude_vector\b/.test(name) || !name.startsWith(PEFT_PREFIX)) {
      fail(stPath, `unsupported tensor "${name}" (only lora_A/lora_B of Linear layers and saved modules are supported: no embedding LoRA or DoRA)`);
    }
    addSavedTensor(adapter, name.slice(PEFT_PREFIX.length), t, opts.base, (what) => fail(stPath, what));
  }
  if (adapter.lowrank.size === 0 && adapter.additive.size === 0) fail(stPath, 'no LoRA tensors found');
  if (adapter.additive.size > 0 && adapter.lowrank.size > 0) adapter.meta.kind = 'additive';
  validateAdapter(adapter, { shapes: opts.shapes, source: stPath, fix: 're-save the adapter with PEFT, or check that it belongs to this base model' });
  return adapter;
}

/** A whole saved parameter (modules_to_save, saved bias) as float32(saved − base) at the elements that differ. */
function addSavedTensor(adapter: Adapter, param: string, t: HostTensor, base: ImportPeftOptions['base'], fail: (what: string) => never): void {
  if (!base) {
    throw new SparsetuneError(
      'BAD_ARGUMENT',
      `this PEFT adapter saves whole modules (tensor "${param}", from modules_to_save or bias: "all"); they replace base weights, so reading it needs the pristine base weights (importPeft / loadAdapter with { base }); the CLI commands pass them, and \`sparsetune compose --model M --adapter DIR --out OUT\` converts it into an adapter that needs no base`,
    );
  }
  const w = base.get(param);
  if (!w) {
    const tied = param === 'lm_head.weight' ? ' (this model ties lm_head to its input embedding, so it has no separate lm_head weight)' : '';
    fail(`saved tensor "${param}" is not a parameter of the base model${tied}`);
  }
  if (t.dtype !== 'f32' || t.data.length !== w.data.length || t.shape.join(',') !== w.shape.join(',')) fail(`saved tensor "${param}" has shape [${t.shape}] (${t.dtype}); the base parameter is [${w.shape}] f32`);
  const saved = t.data as Float32Array;
  const idx: number[] = [];
  for (let i = 0; i < saved.length; i++) if (saved[i] !== w.data[i]) idx.push(i);
  if (idx.length) adapter.additive.set(param, { indices: Int32Array.from(idx), values: Float32Array.from(idx, (i) => saved[i] - w.data[i]) });
}

function transpose2d(t: HostTensor<'f32'>): HostTensor<'f32'> {
  const [rows, cols] = t.shape;
  const out = new Float32Array(rows * cols);
  for (let i = 0; i < rows; i++) for (let j = 0; j < cols; j++) out[j * rows + i] = t.data[i * cols + j];
  return { dtype: 'f32', shape: [cols, rows], data: out };
}

/** Options of exportPeft. */
export interface ExportPeftOptions {
  /** Store the factors (and saved tensors) as F16/BF16. */
  dtype?: 'F32' | 'F16' | 'BF16';
  /**
   * The base weights the adapter applies to: with them, additive and structured payloads
   * are written as PEFT `modules_to_save` (each touched module's whole tensors, as fused).
   */
  base?: Map<string, HostTensor<'f32'>>;
  /** Write pairs in PEFT's Conv1D orientation (GPT-2). Default: the adapter config's `fan_in_fan_out`. */
  fanInFanOut?: boolean;
  /** Dropout recorded as lora_dropout (default: the adapter config's `dropout` / `lora_dropout`, else 0). */
  loraDropout?: number;
}

/**
 * Write `adapter` as a PEFT LoRA directory (atomic), as PEFT's save_pretrained lays it out.
 * Low-rank pairs become LoRA; with `opts.base`, additive/structured payloads become
 * modules_to_save. Masks and pruned payloads are refused: PEFT cannot express them.
 */
export async function exportPeft(adapter: Adapter, dir: string, opts: ExportPeftOptions = {}): Promise<void> {
  const dense = adapter.additive.size + adapter.structured.size;
  if (adapter.masks.size > 0 || adapter.pruned || (dense > 0 && !opts.base)) {
    const why = adapter.masks.size > 0 || adapter.pruned ? 'mask or pruned payloads, which a PEFT LoRA file cannot hold' : 'additive or structured payloads, which PEFT can only hold as modules_to_save (pass the base weights: exportPeft(adapter, dir, { base }))';
    throw new SparsetuneError('BAD_ARGUMENT', `exportPeft: adapter "${adapter.meta.method}" has ${why}; or save it with saveAdapter instead`);
  }
  if (adapter.lowrank.size === 0) throw new SparsetuneError('BAD_ARGUMENT', `exportPeft: adapter "${adapter.meta.method}" has no low-rank pairs to export (a PEFT LoRA adapter needs target modules)`);
  validateAdapter(adapter, { source: `exportPeft(${dir})`, fix: 'fix the adapter before exporting it', shapes: opts.base ? new Map([...opts.base].map(([k, v]) => [k, v.shape])) : undefined });

  const config = adapter.meta.config;
  const rslora = config.use_rslora === true || config.useRslora === true;
  const fanInFanOut = opts.fanInFanOut ?? config.fan_in_fan_out === true;
  const modules: { module: string; rank: number; alpha: number; pair: LowRankPair }[] = [];
  for (const [name, pair] of adapter.lowrank) {
    const rank = pair.A.shape[0];
    modules.push({ module: moduleOfWeight(name)!, rank, alpha: alphaFor(pair.scale, rank, rslora), pair });
  }
  modules.sort((a, b) => (a.module < b.module ? -1 : a.module > b.module ? 1 : 0));
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
    if (fanInFanOut && m.pair.biasDelta) throw new SparsetuneError('BAD_ARGUMENT', `exportPeft: "${m.module}" has a bias delta, which PEFT cannot hold with fan_in_fan_out`);
    put(`${PEFT_PREFIX}${m.module}.lora_A.weight`, fanInFanOut ? transpose2d(m.pair.B) : m.pair.A);
    put(`${PEFT_PREFIX}${m.module}.lora_B.weight`, fanInFanOut ? transpose2d(m.pair.A) : m.pair.B);
    if (m.pair.biasDelta) put(`${PEFT_PREFIX}${m.module}.lora_B.bias`, { dtype: 'f32', shape: [m.pair.biasDelta.length], data: m.pair.biasDelta });
  }
  const saved = dense > 0 ? savedModules(adapter, opts.base!) : new Map<string, Map<string, HostTensor<'f32'>>>();
  for (const params of saved.values()) for (const [p, t] of params) put(`${PEFT_PREFIX}${p}`, t);
  const dropout = opts.loraDropout ?? (typeof config.dropout === 'number' ? config.dropout : typeof config.lora_dropout === 'number' ? config.lora_dropout : 0);
  const peftConfig: Record<string, unknown> = {
    alpha_pattern: alphaPattern,
    base_model_name_or_path: adapter.meta.base.model || null,
    bias: 'none',
    fan_in_fan_out: fanInFanOut,
    inference_mode: true,
    init_lora_weights: true,
    layers_pattern: null,
    layers_to_transform: null,
    lora_alpha: loraAlpha,
    lora_bias: modules.some((m) => m.pair.biasDelta !== undefined),
    lora_dropout: dropout,
    modules_to_save: saved.size ? [...saved.keys()] : null,
    peft_type: 'LORA',
    r,
    rank_pattern: rankPattern,
    revision: null,
    target_modules: modules.map((m) => m.module),
    task_type: 'CAUSAL_LM',
    use_dora: false,
    use_rslora: rslora,
  };
  await writeDirAtomic(dir, async (tmp) => {
    await writeSafetensors(path.join(tmp, PEFT_WEIGHTS), sortedByName(tensors), { metadata: { format: 'pt' }, dtypes });
    // PEFT writes json.dumps(indent=2, sort_keys=True); the keys above are in that order.
    await fsp.writeFile(path.join(tmp, PEFT_CONFIG), JSON.stringify(peftConfig, null, 2));
  }, { mode: 'merge', order: [PEFT_WEIGHTS, PEFT_CONFIG] });
}

/**
 * The modules touched by additive/structured payloads, each with all its direct parameters
 * as fused (base + delta, exactly what WeightPatcher gives), keyed by module name.
 */
function savedModules(adapter: Adapter, base: Map<string, HostTensor<'f32'>>): Map<string, Map<string, HostTensor<'f32'>>> {
  const touched = [...new Set([...adapter.additive.keys(), ...adapter.structured.keys()])];
  const lowrankParams = new Set<string>();
  for (const [w, p] of adapter.lowrank) {
    lowrankParams.add(w);
    if (p.biasDelta) lowrankParams.add(biasParamOf(w));
  }
  const byModule = new Map<string, Map<string, HostTensor<'f32'>>>();
  for (const param of touched) {
    const module = param.slice(0, param.lastIndexOf('.'));
    if (byModule.has(module)) continue;
    const params = new Map<string, HostTensor<'f32'>>();
    for (const [name, t] of base) {
      if (name.startsWith(`${module}.`) && !name.slice(module.length + 1).includes('.')) params.set(name, { dtype: 'f32', shape: [...t.shape], data: t.data.slice() });
    }
    for (const p of params.keys()) {
      if (lowrankParams.has(p)) throw new SparsetuneError('BAD_ARGUMENT', `exportPeft: module "${module}" has both a low-rank pair and a dense delta; PEFT never adapts a saved module, so this adapter cannot be written as PEFT`);
    }
    byModule.set(module, params);
  }
  const dense = newAdapter({ method: adapter.meta.method, kind: 'additive', base: { model: '', fingerprint: '' } });
  for (const [k, v] of adapter.additive) dense.additive.set(k, v);
  for (const [k, v] of adapter.structured) dense.structured.set(k, v);
  const work = new Map<string, HostTensor<'f32'>>();
  for (const params of byModule.values()) for (const [k, t] of params) work.set(k, t);
  new WeightPatcher(work, { fingerprint: '' }).apply(dense, { force: true });
  return byModule;
}

function sortedByName(tensors: Map<string, HostTensor>): Map<string, HostTensor> {
  return new Map([...tensors].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)));
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
