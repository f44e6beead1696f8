/**
 * Adapter directories: `adapter.json` (metadata, validated with zod) + `adapter.safetensors`
 * (payloads; names in codec.ts). Saving is atomic; loading checks everything (schema,
 * checksum, tensor names and dtypes, sorted in-range indices, finite values) and reports
 * any problem as BAD_ADAPTER naming the file and the fix. Loading also reads Hugging Face
 * PEFT LoRA directories (detected by adapter_config.json), so every `--adapter` takes both.
 */
import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { SparsetuneError } from '../errors.js';
import { readSafetensors, writeSafetensors } from '../io/safetensors.js';
import type { HostTensor } from '../tensor.js';
import { fileSha256, settleDir, writeDirAtomic } from '../io/atomic.js';
import { adapterJsonSchema, decodeAdapter, encodeAdapter, type AdapterJson } from './codec.js';
import { importPeft, PEFT_CONFIG } from './peft.js';
import { ADAPTER_FORMAT, type Adapter } from './types.js';
import { validateAdapter } from './validate.js';

export * from './types.js';

export const ADAPTER_JSON = 'adapter.json';
export const ADAPTER_SAFETENSORS = 'adapter.safetensors';

/**
 * Save `a` as an adapter directory, atomically (`writeDirAtomic` in merge mode, manifest
 * last): a reader, or a crash at any instant, sees the old adapter or the new one, never a
 * mix; other files in the directory (a training run's metrics, checkpoints) stay. Holds the
 * directory's lock, so a second process saving to the same directory fails fast. `valueDtype`
 * stores delta values and low-rank factors as F16/BF16 (halves the file; rounds them).
 */
export async function saveAdapter(dir: string, a: Adapter, opts: { valueDtype?: 'F32' | 'F16' | 'BF16' } = {}): Promise<void> {
  validateAdapter(a, { source: `saveAdapter(${dir})`, fix: 'fix the adapter before saving it' });
  const { tensors, dtypes, json } = encodeAdapter(a, opts.valueDtype ?? 'F32');
  await writeDirAtomic(dir, async (tmp) => {
    const file = path.join(tmp, ADAPTER_SAFETENSORS);
    await writeSafetensors(file, tensors, {
      metadata: { format: ADAPTER_FORMAT, method: a.meta.method, kind: a.meta.kind },
      dtypes,
    });
    const withSum: AdapterJson = { ...json, checksum: await fileSha256(file) };
    await fsp.writeFile(path.join(tmp, ADAPTER_JSON), `${JSON.stringify(withSum, null, 2)}\n`);
  }, { mode: 'merge', order: [ADAPTER_SAFETENSORS, ADAPTER_JSON] });
}

/** The two adapter directory layouts: sparsetune's (adapter.json) and Hugging Face PEFT's (adapter_config.json). */
export type AdapterLayout = 'sparsetune' | 'peft';

/**
 * Which layout `dir` holds and its manifest file (adapter.json, else adapter_config.json),
 * or null when it is neither.
 */
export async function adapterManifest(dir: string): Promise<{ layout: AdapterLayout; file: string } | null> {
  for (const [layout, name] of [['sparsetune', ADAPTER_JSON], ['peft', PEFT_CONFIG]] as const) {
    const file = path.join(dir, name);
    const st = await fsp.stat(file).catch(() => null);
    if (st?.isFile()) return { layout, file };
  }
  return null;
}

/** Options of loadAdapter. */
export interface LoadAdapterOptions {
  /** Base parameter shapes: every target name and index range is checked against them. */
  shapes?: Map<string, number[]>;
  /** Pristine base weights, for PEFT directories that save whole modules (modules_to_save). */
  base?: Map<string, HostTensor<'f32'>>;
}

/**
 * Load and validate an adapter directory: sparsetune's (adapter.json + adapter.safetensors)
 * or a Hugging Face PEFT LoRA directory (adapter_config.json + adapter_model.safetensors,
 * read by importPeft). With `shapes` (the base parameter shapes) every target name and
 * index range is checked too.
 */
export async function loadAdapter(dir: string, opts: LoadAdapterOptions = {}): Promise<Adapter> {
  // A save in progress is waited for, and one a crash interrupted after its commit is
  // finished first (settleDir); a read that raced a writer is retried once.
  await settleDir(dir);
  try {
    return await readAdapterDir(dir, opts);
  } catch (err) {
    if (!(err instanceof SparsetuneError && err.cause === CHECKSUM_MISMATCH)) throw err;
    await settleDir(dir);
    return readAdapterDir(dir, opts);
  }
}

/** Cause of the error when adapter.safetensors does not match adapter.json's checksum. */
const CHECKSUM_MISMATCH = 'checksum mismatch';

async function readAdapterDir(dir: string, opts: LoadAdapterOptions): Promise<Adapter> {
  const jsonPath = path.join(dir, ADAPTER_JSON);
  const stPath = path.join(dir, ADAPTER_SAFETENSORS);
  const fix = 're-export the adapter, or restore the directory from a good copy';
  const fail: (file: string, what: string, cause?: unknown) => never = (file, what, cause) => {
    throw new SparsetuneError('BAD_ADAPTER', `${file}: ${what}; ${fix}.`, { cause });
  };

  let text: string;
  try {
    text = await fsp.readFile(jsonPath, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') {
      if ((await adapterManifest(dir))?.layout === 'peft') return importPeft(dir, opts);
      throw new SparsetuneError('NOT_FOUND', `${dir} is not an adapter directory: it has neither ${ADAPTER_JSON} (sparsetune) nor ${PEFT_CONFIG} (Hugging Face PEFT)`);
    }
    throw err;
  }
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (err) {
    fail(jsonPath, `not valid JSON (${(err as Error).message})`, err);
  }
  const parsed = adapterJsonSchema.safeParse(raw);
  if (!parsed.success) {
    const issues = parsed.error.issues.map((i) => `${i.path.join('.') || '(root)'}: ${i.message}`).join('; ');
    fail(jsonPath, `invalid adapter.json (${issues})`);
  }
  const json = parsed.data;

  if (json.checksum) {
    const actual = await fileSha256(stPath).catch((err: NodeJS.ErrnoException) => fail(stPath, `cannot read it (${err.code ?? err.message})`, err));
    if (actual !== json.checksum) fail(stPath, `contents do not match the checksum in ${ADAPTER_JSON} (the file was modified, truncated or belongs to another export)`, CHECKSUM_MISMATCH);
  }
  let tensors: Map<string, HostTensor>;
  let metadata: Record<string, string>;
  try {
    ({ tensors, metadata } = await readSafetensors(stPath));
  } catch (err) {
    if (err instanceof SparsetuneError && err.code === 'NOT_FOUND') fail(stPath, 'missing', err);
    fail(stPath, `unreadable (${(err as Error).message})`, err);
  }
  if (metadata!.format !== ADAPTER_FORMAT || metadata!.method !== json.method) {
    fail(stPath, `metadata says format "${metadata!.format}", method "${metadata!.method}" but ${ADAPTER_JSON} says "${ADAPTER_FORMAT}", "${json.method}" (files from different exports?)`);
  }
  const adapter = decodeAdapter(json, tensors!, opts.shapes, (what) => fail(stPath, what));
  validateAdapter(adapter, { shapes: opts.shapes, source: stPath, fix });
  return adapter;
}
