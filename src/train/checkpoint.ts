/**
 * Training checkpoints: a directory per saved step holding `checkpoint.json` (positions,
 * configs, method state, small extras) and `state.safetensors` (trainable tensors,
 * optimizer moments, and any typed arrays found in the method state). Directories are
 * written atomically, so a crash mid-save leaves the previous checkpoint intact.
 */
import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { createHash } from 'node:crypto';
import { z } from 'zod';
import { SparsetuneError } from '../errors.js';
import { readSafetensors, writeSafetensors } from '../io/safetensors.js';
import type { TokenizedExample } from '../io/datasets.js';
import { removeDirAtomic, settleDir, sweepDir, writeDirAtomic } from '../io/atomic.js';
import { crashPoint } from '../io/crash-point.js';
import type { HostTensor } from '../tensor.js';
import { trainerConfigSchema, type TrainerState } from './trainer.js';

export const CHECKPOINT_FORMAT = 'sparsetune.checkpoint/2';
/**
 * The format before per-param optimizer step counts. Still read: each param's count is the
 * global step count, the bias correction those runs used (so a run whose params never
 * skipped a step resumes exactly; MoSA modules and dead GS-LoRA groups continue with the
 * per-param rule from there).
 */
export const CHECKPOINT_FORMAT_V1 = 'sparsetune.checkpoint/1';
export const CHECKPOINT_JSON = 'checkpoint.json';
export const CHECKPOINT_TENSORS = 'state.safetensors';

/** What a checkpoint records besides the trainer state, to refuse resuming a different run. */
export interface CheckpointMeta {
  method: string;
  methodConfig: Record<string, unknown>;
  /** Fingerprint of the pristine base weights. */
  baseFingerprint: string;
  /** Hash of the training examples (see hashExamples). */
  dataHash: string;
  /** JSON state of callbacks (early stopping...) keyed by owner. */
  extra: Record<string, unknown>;
}

export interface Checkpoint {
  dir: string;
  state: TrainerState;
  meta: CheckpointMeta;
}

const evalSchema = z.object({ loss: z.number(), ppl: z.number(), tokens: z.number() });
const checkpointJsonSchema = z.object({
  format: z.enum([CHECKPOINT_FORMAT, CHECKPOINT_FORMAT_V1]),
  created: z.string(),
  step: z.number().int().nonnegative(),
  phase: z.number().int().nonnegative(),
  stepsBefore: z.number().int().nonnegative(),
  epoch: z.number().int().nonnegative(),
  batchInEpoch: z.number().int().nonnegative(),
  trainer: trainerConfigSchema,
  params: z.array(z.object({ name: z.string(), shape: z.array(z.number().int().nonnegative()) })),
  optimizer: z
    .object({
      t: z.number().int().nonnegative(),
      slots: z.number().int().nonnegative(),
      moments: z.number().int().min(0).max(2),
      /** Updates per slot (format 2). */
      steps: z.array(z.number().int().nonnegative()).optional(),
    })
    .nullable(),
  methodState: z.unknown().optional(),
  initialEval: evalSchema.optional(),
  meta: z.object({
    method: z.string(),
    methodConfig: z.record(z.string(), z.unknown()),
    baseFingerprint: z.string(),
    dataHash: z.string(),
    extra: z.record(z.string(), z.unknown()),
  }),
});

/** Marker left in checkpoint.json where a typed array of the method state was moved to the tensor file. */
interface TensorRef {
  $tensor: string;
}

type Typed = Float32Array | Float64Array | Int32Array | Uint8Array | BigInt64Array;
const TYPED_DTYPE: [new (n: number) => Typed, HostTensor['dtype']][] = [
  [Float32Array, 'f32'],
  [Float64Array, 'f64'],
  [Int32Array, 'i32'],
  [Uint8Array, 'u8'],
  [BigInt64Array, 'i64'],
];

function dtypeOf(v: unknown): HostTensor['dtype'] | null {
  for (const [ctor, dt] of TYPED_DTYPE) if (v instanceof ctor) return dt;
  return null;
}

/** Replace typed arrays inside a JSON-ish value by references to tensors (methods may keep masks as typed arrays). */
function extractTensors(value: unknown, pathKey: string, out: Map<string, HostTensor>): unknown {
  const dt = dtypeOf(value);
  if (dt) {
    const name = `method/${pathKey}`;
    const data = value as Typed;
    out.set(name, { dtype: dt, shape: [data.length], data } as HostTensor);
    return { $tensor: name } satisfies TensorRef;
  }
  if (Array.isArray(value)) return value.map((v, i) => extractTensors(v, `${pathKey}.${i}`, out));
  if (value && typeof value === 'object') {
    return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, extractTensors(v, pathKey ? `${pathKey}.${k}` : k, out)]));
  }
  return value;
}

function restoreTensors(value: unknown, tensors: Map<string, HostTensor>, file: string): unknown {
  if (Array.isArray(value)) return value.map((v) => restoreTensors(v, tensors, file));
  if (value && typeof value === 'object') {
    const ref = (value as Partial<TensorRef>).$tensor;
    if (typeof ref === 'string' && Object.keys(value).length === 1) {
      const t = tensors.get(ref);
      if (!t) throw new SparsetuneError('BAD_DATA', `${file}: method state refers to tensor '${ref}', which is missing; the checkpoint is damaged`);
      return t.data;
    }
    return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, restoreTensors(v, tensors, file)]));
  }
  return value;
}

/** sha256 over the token ids and labels of a dataset (detects resuming on different data). */
export function hashExamples(examples: readonly TokenizedExample[]): string {
  const h = createHash('sha256');
  for (const e of examples) {
    h.update(Int32Array.from(e.inputIds));
    h.update(Int32Array.from(e.labels));
    h.update('|');
  }
  return `sha256:${h.digest('hex')}`;
}

/** Write one checkpoint directory atomically. */
export async function saveCheckpoint(dir: string, state: TrainerState, meta: CheckpointMeta): Promise<void> {
  const tensors = new Map<string, HostTensor>();
  for (const p of state.params) tensors.set(`param/${p.name}`, { dtype: 'f32', shape: p.shape, data: p.data });
  let moments = 0;
  if (state.optimizer) {
    const { m, v } = state.optimizer;
    moments = v.length > 0 ? 2 : m.length > 0 ? 1 : 0;
    m.forEach((a, k) => tensors.set(`optim.m/${k}`, { dtype: 'f32', shape: [a.length], data: a }));
    v.forEach((a, k) => tensors.set(`optim.v/${k}`, { dtype: 'f32', shape: [a.length], data: a }));
  }
  const methodState = state.methodState === undefined ? undefined : extractTensors(state.methodState, '', tensors);
  const json: z.input<typeof checkpointJsonSchema> = {
    format: CHECKPOINT_FORMAT,
    created: new Date().toISOString(),
    step: state.step,
    phase: state.phase,
    stepsBefore: state.stepsBefore,
    epoch: state.epoch,
    batchInEpoch: state.batchInEpoch,
    trainer: state.config,
    params: state.params.map((p) => ({ name: p.name, shape: p.shape })),
    optimizer: state.optimizer ? { t: state.optimizer.t, slots: state.optimizer.m.length, moments, steps: state.optimizer.steps } : null,
    methodState,
    initialEval: state.initialEval,
    meta,
  };
  await writeDirAtomic(dir, async (tmp) => {
    await writeSafetensors(path.join(tmp, CHECKPOINT_TENSORS), tensors, { metadata: { format: CHECKPOINT_FORMAT } });
    await fsp.writeFile(path.join(tmp, CHECKPOINT_JSON), `${JSON.stringify(json)}\n`);
  });
}

/** Read and validate a checkpoint directory. */
export async function loadCheckpoint(dir: string): Promise<Checkpoint> {
  await settleDir(dir);
  const jsonFile = path.join(dir, CHECKPOINT_JSON);
  let raw: unknown;
  try {
    raw = JSON.parse(await fsp.readFile(jsonFile, 'utf8'));
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') throw new SparsetuneError('NOT_FOUND', `${dir} is not a checkpoint directory (${CHECKPOINT_JSON} is missing)`);
    throw new SparsetuneError('BAD_DATA', `${jsonFile}: unreadable (${(err as Error).message}); delete this checkpoint to resume from an earlier one`);
  }
  const parsed = checkpointJsonSchema.safeParse(raw);
  if (!parsed.success) {
    const issues = parsed.error.issues.map((i) => `${i.path.join('.') || '(root)'}: ${i.message}`).join('; ');
    throw new SparsetuneError('BAD_DATA', `${jsonFile}: not a ${CHECKPOINT_FORMAT} checkpoint (${issues})`);
  }
  const j = parsed.data;
  if (j.optimizer?.steps && j.optimizer.steps.length !== j.optimizer.slots) {
    throw new SparsetuneError('BAD_DATA', `${jsonFile}: the optimizer has ${j.optimizer.slots} slots but ${j.optimizer.steps.length} step counts; the checkpoint is damaged`);
  }
  const tensorFile = path.join(dir, CHECKPOINT_TENSORS);
  const { tensors } = await readSafetensors(tensorFile);
  const f32 = (name: string): Float32Array => {
    const t = tensors.get(name);
    if (!t || t.dtype !== 'f32') throw new SparsetuneError('BAD_DATA', `${tensorFile}: tensor '${name}' is missing or not f32; the checkpoint is damaged`);
    return t.data as Float32Array;
  };
  const params = j.params.map((p) => ({ name: p.name, shape: p.shape, data: f32(`param/${p.name}`) }));
  const optimizer = j.optimizer
    ? {
        t: j.optimizer.t,
        steps: j.optimizer.steps ?? new Array<number>(j.optimizer.slots).fill(j.optimizer.t),
        m: j.optimizer.moments >= 1 ? Array.from({ length: j.optimizer.slots }, (_, k) => f32(`optim.m/${k}`)) : [],
        v: j.optimizer.moments >= 2 ? Array.from({ length: j.optimizer.slots }, (_, k) => f32(`optim.v/${k}`)) : [],
      }
    : null;
  const state: TrainerState = {
    step: j.step,
    phase: j.phase,
    stepsBefore: j.stepsBefore,
    epoch: j.epoch,
    batchInEpoch: j.batchInEpoch,
    config: j.trainer,
    params,
    optimizer,
    methodState: j.methodState === undefined ? undefined : (restoreTensors(j.methodState, tensors, tensorFile) as Record<string, unknown>),
    initialEval: j.initialEval,
  };
  return { dir, state, meta: j.meta };
}

const STEP_DIR = /^step-(\d+)$/;

/** Saves numbered checkpoints under one root (`<root>/step-00000042`) and keeps the newest few. */
export class CheckpointManager {
  constructor(
    readonly root: string,
    /** How many checkpoints to keep (older ones are deleted after a successful save). */
    readonly keep = 2,
  ) {
    if (!Number.isInteger(keep) || keep < 1) throw new SparsetuneError('BAD_ARGUMENT', `keep must be a positive integer, got ${keep}`);
  }

  /** Directory name for a global step. */
  dirFor(globalStep: number): string {
    return path.join(this.root, `step-${String(globalStep).padStart(8, '0')}`);
  }

  /** Saved checkpoints, oldest first. */
  async list(): Promise<{ step: number; dir: string }[]> {
    let names: string[];
    try {
      names = await fsp.readdir(this.root);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return [];
      throw err;
    }
    return names
      .map((n) => ({ m: STEP_DIR.exec(n), n }))
      .filter((x) => x.m)
      .map((x) => ({ step: Number(x.m![1]), dir: path.join(this.root, x.n) }))
      .sort((a, b) => a.step - b.step);
  }

  /** The newest checkpoint, or null when there is none. */
  async latest(): Promise<Checkpoint | null> {
    await sweepDir(this.root);
    const all = await this.list();
    return all.length ? loadCheckpoint(all[all.length - 1].dir) : null;
  }

  /**
   * Save the state as the checkpoint of its global step, then prune old ones. A crash at any
   * point leaves the previous checkpoints or the new one complete; leftovers of a crashed
   * save or prune are cleaned on the next save.
   */
  async save(state: TrainerState, meta: CheckpointMeta): Promise<string> {
    const dir = this.dirFor(state.stepsBefore + state.step);
    await sweepDir(this.root);
    await saveCheckpoint(dir, state, meta);
    crashPoint('checkpoint:pruning', dir);
    const all = await this.list();
    for (const old of all.slice(0, Math.max(0, all.length - this.keep))) await removeDirAtomic(old.dir);
    return dir;
  }
}
