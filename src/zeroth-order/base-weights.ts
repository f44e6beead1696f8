/**
 * The base model's original tensors, read back from its safetensors file(s) on disk in
 * chunks through one small reused buffer. Zeroth-order training changes base weights in place and keeps no copy of
 * them (memory stays at inference level), so whatever needs the originals — the exported
 * delta, a rollback, `restoreBase`, a replay — re-reads them here.
 */
import { existsSync, promises as fsp, statSync } from 'node:fs';
import * as path from 'node:path';
import { SparsetuneError } from '../errors.js';
import { readSafetensors, readSafetensorsHeader, type SafetensorsEntry } from '../io/safetensors.js';
import { readShardedSafetensorsHeader } from '../io/safetensors-index.js';
import type { CausalLM } from '../models/causal-lm.js';
import type { HostTensor } from '../tensor.js';

interface Location {
  /** The safetensors file (a shard for sharded checkpoints). */
  file: string;
  entry: SafetensorsEntry;
}

/** Elements per read when scanning an F32 tensor (a reused buffer of at most 1 MiB). */
const SCAN_CHUNK = 1 << 18;

/** Where each in-memory parameter name lives on disk, and chunked access to it (one scan at a time). */
export class BaseWeightsOnDisk {
  private scratch: Float32Array | null = null;

  private constructor(
    readonly dir: string,
    private readonly locations: Map<string, Location>,
  ) {}

  /**
   * Index the weights of HF model directory `dir` (model.safetensors or a sharded index).
   * Throws NOT_FOUND with the fix when `dir` holds no safetensors weights.
   */
  static async open(dir: string): Promise<BaseWeightsOnDisk> {
    const single = path.join(dir, 'model.safetensors');
    const index = path.join(dir, 'model.safetensors.index.json');
    const locations = new Map<string, Location>();
    const isDir = existsSync(dir) && statSync(dir).isDirectory();
    if (isDir && existsSync(single)) {
      for (const entry of (await readSafetensorsHeader(single)).entries) locations.set(entry.name, { file: single, entry });
    } else if (isDir && existsSync(index)) {
      for (const e of (await readShardedSafetensorsHeader(index)).entries) locations.set(e.name, { file: e.file, entry: e });
    } else {
      throw new SparsetuneError(
        'NOT_FOUND',
        `"${dir}" is not a model directory with safetensors weights, so the original weights cannot be re-read from disk. ` +
          'Zeroth-order training keeps no in-memory copy of them: save the model with writeModelDir and load it from that directory, or pass baseDir.',
      );
    }
    return new BaseWeightsOnDisk(dir, locations);
  }

  /**
   * The stored entry for an in-memory name (architectures may strip a `transformer.` prefix on
   * load, and a tied Llama matrix stored only as `lm_head.weight` is loaded as the embedding).
   */
  private locate(name: string): Location {
    const hit =
      this.locations.get(name) ??
      this.locations.get(name.replace(/^transformer\./, '')) ??
      (name === 'model.embed_tokens.weight' ? this.locations.get('lm_head.weight') : undefined);
    if (!hit) throw new SparsetuneError('NOT_FOUND', `${this.dir}: the weights on disk have no tensor "${name}"; is this the directory the model was loaded from?`);
    return hit;
  }

  /** Read one original tensor as a fresh f32 tensor (F16/BF16 are widened exactly as at load). */
  async read(name: string): Promise<HostTensor<'f32'>> {
    const { file, entry } = this.locate(name);
    const { tensors } = await readSafetensors(file, { names: [entry.name] });
    const t = tensors.get(entry.name)!;
    if (t.dtype !== 'f32') throw new SparsetuneError('BAD_SAFETENSORS', `${file}: tensor "${entry.name}" is ${t.dtype}, a trainable weight must be a float tensor`);
    return t as HostTensor<'f32'>;
  }

  /**
   * Visit an original tensor in order, chunk by chunk: `visit(start, values)` gets elements
   * [start, start + values.length). F32 tensors stream through one reused buffer of at most
   * 1 MiB (no garbage, so peak memory stays put); other dtypes are read whole and widened.
   */
  async scan(name: string, visit: (start: number, values: Float32Array) => void): Promise<void> {
    const { file, entry } = this.locate(name);
    if (entry.dtype !== 'F32') {
      visit(0, (await this.read(name)).data);
      return;
    }
    const count = entry.byteLength / 4;
    // Sized to the largest tensor seen, capped at SCAN_CHUNK: small models need only a few KB.
    if (!this.scratch || this.scratch.length < Math.min(SCAN_CHUNK, count)) this.scratch = new Float32Array(Math.min(SCAN_CHUNK, count));
    const buf = this.scratch;
    const fh = await fsp.open(file, 'r');
    try {
      for (let start = 0; start < count; start += SCAN_CHUNK) {
        const n = Math.min(SCAN_CHUNK, count - start);
        const bytes = new Uint8Array(buf.buffer, 0, n * 4);
        await readExactly(fh, bytes, entry.offset + start * 4, file);
        visit(start, buf.subarray(0, n));
      }
    } finally {
      await fh.close();
    }
  }

  /** Overwrite `target` with the original values of `name` (same element count). */
  async readInto(name: string, target: Float32Array): Promise<void> {
    const { entry } = this.locate(name);
    const count = entry.shape.reduce((a, b) => a * b, 1);
    if (count !== target.length) {
      throw new SparsetuneError('SHAPE_MISMATCH', `"${name}" has ${count} values in ${this.dir} but ${target.length} in memory; wrong base directory?`);
    }
    await this.scan(name, (start, values) => target.set(values, start));
  }
}

async function readExactly(fh: fsp.FileHandle, dst: Uint8Array, position: number, file: string): Promise<void> {
  let done = 0;
  while (done < dst.length) {
    const { bytesRead } = await fh.read(dst, done, dst.length - done, position + done);
    if (bytesRead === 0) throw new SparsetuneError('BAD_SAFETENSORS', `${file}: unexpected end of file at byte ${position + done}; the model file changed or is truncated`);
    done += bytesRead;
  }
}

function sameBits(a: Float32Array, b: Float32Array): boolean {
  if (a.length !== b.length) return false;
  const x = new Uint32Array(a.buffer, a.byteOffset, a.length);
  const y = new Uint32Array(b.buffer, b.byteOffset, b.length);
  for (let i = 0; i < x.length; i++) if (x[i] !== y[i]) return false;
  return true;
}

/**
 * Check that the model's in-memory tensors `names` equal the ones on disk, bit for bit (one
 * tensor in memory at a time). A delta computed against the disk copy is only right if training
 * started from it; an adapter fused in memory beforehand would otherwise be silently baked in.
 */
export async function verifyBaseMatchesDisk(model: CausalLM, disk: BaseWeightsOnDisk, names: readonly string[]): Promise<void> {
  for (const name of names) {
    const mine = model.weights.get(name);
    if (!mine) throw new SparsetuneError('BAD_ARGUMENT', `model has no weight "${name}"`);
    let same = true;
    let seen = 0;
    await disk.scan(name, (start, values) => {
      seen += values.length;
      if (same && start + values.length <= mine.data.length) same = sameBits(mine.data.subarray(start, start + values.length), values);
    });
    if (!same || seen !== mine.data.length) {
      throw new SparsetuneError(
        'BAD_ARGUMENT',
        `weight "${name}" in memory differs from ${disk.dir} (an adapter fused in, or weights changed after loading). ` +
          'Zeroth-order export needs the original base on disk: reload the model (or call restoreBase) before training, or pass the matching baseDir.',
      );
    }
  }
}

/**
 * Put the original base weights back into `model.weights` in place, re-reading them from
 * `opts.baseDir` (default: the directory the model was loaded from), one tensor at a time.
 * `opts.names` limits it to some parameters (default: every weight of the model).
 */
export async function restoreBase(model: CausalLM, opts: { names?: readonly string[]; baseDir?: string } = {}): Promise<void> {
  const disk = await BaseWeightsOnDisk.open(opts.baseDir ?? model.source);
  for (const name of opts.names ?? [...model.weights.keys()]) {
    const target = model.weights.get(name);
    if (!target) throw new SparsetuneError('BAD_ARGUMENT', `restoreBase: the model has no weight "${name}"`);
    await disk.readInto(name, target.data);
  }
}
