/**
 * Property fuzz of the files adapters travel in: safetensors headers built at random,
 * sparsetune adapter directories (adapter.json + adapter.safetensors) and PEFT LoRA
 * directories, each corrupted at random (seeded). Every input either loads into something
 * valid (and, for adapters, fuses and unfuses to the exact base bits) or is refused with a
 * SparsetuneError that says what is wrong; never a crash, a hang, or an allocation larger
 * than the file justifies.
 */
import { promises as fsp } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { readSafetensors, writeSafetensors } from '../../src/io/safetensors.js';
import { loadAdapter, saveAdapter, type Adapter } from '../../src/merge/adapter.js';
import { fileSha256 } from '../../src/io/atomic.js';
import { WeightPatcher } from '../../src/merge/apply.js';
import { exportPeft, importPeft } from '../../src/merge/peft.js';
import type { HostTensor } from '../../src/tensor.js';
import { mulberry32, type Rng } from '../../src/util/random.js';
import { HOSTILE_VALUES, mutateBytes, mutateJsonTimes, okOrSparsetuneError, pick } from '../fuzz.js';
import { bits, cloneWeights, randomAdapter, randomWeights, shapesMap } from './helpers.js';

let root: string;
let counter = 0;
beforeAll(async () => {
  root = await fsp.mkdtemp(path.join(os.tmpdir(), 'fuzz-files-'));
});
afterAll(async () => {
  await fsp.rm(root, { recursive: true, force: true });
});
const fresh = (): string => path.join(root, `f${counter++}`);

const DTYPES = ['F64', 'F32', 'F16', 'BF16', 'I64', 'I32', 'I16', 'U16', 'I8', 'U8', 'BOOL', 'F8_E4M3', 'Q4', '', 'f32'];
const DTYPE_BYTES: Record<string, number> = { F64: 8, F32: 4, F16: 2, BF16: 2, I64: 8, I32: 4, I16: 2, U16: 2, I8: 1, U8: 1, BOOL: 1 };

/** A random safetensors header (often valid, often subtly not) and a data section. */
function randomSafetensors(rand: Rng): Uint8Array {
  const header: Record<string, unknown> = {};
  let cursor = 0;
  const count = Math.floor(rand() * 5);
  for (let k = 0; k < count; k++) {
    const dtype = rand() < 0.8 ? pick(rand, DTYPES.slice(0, 11)) : pick(rand, DTYPES);
    const shape = Array.from({ length: Math.floor(rand() * 4) }, () => (rand() < 0.9 ? Math.floor(rand() * 6) : pick(rand, [2 ** 31, 2 ** 40, -1, 1.5, 1e300])));
    const n = shape.reduce((a, b) => a * b, 1);
    const bytes = n * (DTYPE_BYTES[dtype] ?? 1);
    let offsets: unknown = [cursor, cursor + bytes];
    if (rand() < 0.15) offsets = [Math.floor(rand() * 64), Math.floor(rand() * 64)];
    if (rand() < 0.05) offsets = pick(rand, HOSTILE_VALUES);
    header[rand() < 0.05 ? '__metadata__' : `t${k}`] = rand() < 0.95 ? { dtype, shape, data_offsets: offsets } : pick(rand, HOSTILE_VALUES);
    if (Number.isSafeInteger(bytes) && bytes >= 0 && bytes < 4096) cursor += bytes;
  }
  if (rand() < 0.3) header.__metadata__ = rand() < 0.7 ? { format: 'pt' } : pick(rand, HOSTILE_VALUES);
  const json = new TextEncoder().encode(JSON.stringify(header));
  const dataLen = rand() < 0.8 ? cursor : Math.floor(rand() * (cursor + 16));
  const out = new Uint8Array(8 + json.length + dataLen);
  new DataView(out.buffer).setBigUint64(0, BigInt(json.length), true);
  out.set(json, 8);
  for (let i = 8 + json.length; i < out.length; i++) out[i] = Math.floor(rand() * 256);
  return out;
}

describe('fuzz: safetensors headers built at random', () => {
  it('500 files: valid ones read with no more memory than the file justifies, the rest are BAD_SAFETENSORS', async () => {
    const rand = mulberry32(2024);
    const file = path.join(root, 'random.safetensors');
    let ok = 0;
    for (let trial = 0; trial < 500; trial++) {
      const bytes = randomSafetensors(rand);
      await fsp.writeFile(file, bytes);
      const r = await okOrSparsetuneError(`trial ${trial}`, () => readSafetensors(file));
      if (!r.ok) {
        expect(['BAD_SAFETENSORS', 'NOT_FOUND']).toContain(r.error.code);
        continue;
      }
      ok++;
      // Halves decode to f32 and 16-bit ints widen to i32: at most twice the stored bytes.
      let held = 0;
      for (const t of r.value.tensors.values()) held += t.data.byteLength;
      expect(held).toBeLessThanOrEqual(2 * bytes.length);
    }
    expect(ok).toBeGreaterThan(50);
  });

  it('random valid tensors round-trip exactly through write and read', async () => {
    const rand = mulberry32(7);
    for (let trial = 0; trial < 40; trial++) {
      const tensors = new Map<string, HostTensor>();
      for (let k = 0; k < 1 + Math.floor(rand() * 4); k++) {
        const shape = Array.from({ length: Math.floor(rand() * 3) }, () => Math.floor(rand() * 5));
        const n = shape.reduce((a, b) => a * b, 1);
        const kind = pick(rand, ['f32', 'i32', 'i64', 'u8', 'f64'] as const);
        const data =
          kind === 'f32' ? Float32Array.from({ length: n }, () => (rand() - 0.5) * 1e6)
          : kind === 'f64' ? Float64Array.from({ length: n }, () => rand())
          : kind === 'i32' ? Int32Array.from({ length: n }, () => Math.floor((rand() - 0.5) * 2 ** 31))
          : kind === 'i64' ? BigInt64Array.from({ length: n }, () => BigInt(Math.floor((rand() - 0.5) * 2 ** 50)))
          : Uint8Array.from({ length: n }, () => Math.floor(rand() * 256));
        tensors.set(`t.${trial}.${k}`, { dtype: kind, shape, data } as HostTensor);
      }
      const file = fresh();
      await writeSafetensors(file, tensors, { metadata: { trial: String(trial) } });
      const back = await readSafetensors(file);
      expect(back.metadata).toEqual({ trial: String(trial) });
      for (const [name, t] of tensors) {
        const b = back.tensors.get(name)!;
        expect(b.dtype).toBe(t.dtype);
        expect(b.shape).toEqual(t.shape);
        expect(Buffer.from(b.data.buffer, b.data.byteOffset, b.data.byteLength).equals(Buffer.from(t.data.buffer, t.data.byteOffset, t.data.byteLength))).toBe(true);
      }
    }
  });
});

/** Re-point adapter.json's checksum at the (corrupted) tensor file, so the loader's own checks must catch it. */
async function refreshChecksum(dir: string): Promise<void> {
  const jsonFile = path.join(dir, 'adapter.json');
  const json = JSON.parse(await fsp.readFile(jsonFile, 'utf8')) as Record<string, unknown>;
  json.checksum = await fileSha256(path.join(dir, 'adapter.safetensors'));
  await fsp.writeFile(jsonFile, JSON.stringify(json));
}

/** A structural edit of one tensor of an adapter file: wrong dtype, shape, range, order, NaN, missing or stray. */
function editTensors(rand: Rng, tensors: Map<string, HostTensor>): void {
  const names = [...tensors.keys()];
  const name = pick(rand, names);
  const t = tensors.get(name)!;
  const op = Math.floor(rand() * 8);
  if (op === 0) tensors.delete(name);
  else if (op === 1) tensors.set(`${name}.stray`, t);
  else if (op === 2) tensors.set(name, { dtype: 'f32', shape: [t.data.length], data: Float32Array.from(t.data as ArrayLike<number>, Number) });
  else if (op === 3) tensors.set(name, { dtype: 'i32', shape: [t.data.length], data: Int32Array.from(t.data as ArrayLike<number>, (v) => Number(v) | 0) });
  else if (op === 4) tensors.set(name, { ...t, shape: pick(rand, [[t.data.length], [1, t.data.length], [...t.shape].reverse()]), data: t.data } as HostTensor);
  else if (op === 5 && t.data.length > 0) {
    const data = t.data.slice() as Float32Array | Int32Array;
    data[Math.floor(rand() * data.length)] = pick(rand, [NaN, Infinity, -1, 2 ** 31 - 1, 1e9, 0]);
    tensors.set(name, { ...t, data } as HostTensor);
  } else if (op === 6 && t.data.length > 1) {
    const data = t.data.slice().reverse() as Float32Array;
    tensors.set(name, { ...t, data } as HostTensor);
  } else tensors.set(name, { ...t, shape: [], data: t.data.slice(0, 1) } as HostTensor);
}

/**
 * A copy of the two-file directory `src` (a JSON manifest and a safetensors file) with one
 * random corruption: an edited manifest, corrupted bytes, a structural tensor edit, or a
 * file missing. With `checksum`, adapter.json's checksum is re-pointed at corrupted tensors
 * so the loader's own checks must catch them.
 */
async function corruptedCopy(rand: Rng, src: string, manifest: string, weights: string, checksum: boolean): Promise<string> {
  const dir = fresh();
  await fsp.mkdir(dir);
  for (const f of [manifest, weights]) await fsp.copyFile(path.join(src, f), path.join(dir, f));
  const what = Math.floor(rand() * 4);
  if (what === 0) {
    const json = JSON.parse(await fsp.readFile(path.join(dir, manifest), 'utf8')) as unknown;
    await fsp.writeFile(path.join(dir, manifest), JSON.stringify(mutateJsonTimes(rand, json, 1 + Math.floor(rand() * 2))));
  } else if (what === 1) {
    const bytes = await fsp.readFile(path.join(dir, weights));
    await fsp.writeFile(path.join(dir, weights), mutateBytes(rand, bytes, 8 + Number(bytes.readBigUInt64LE(0))));
    if (checksum) await refreshChecksum(dir);
  } else if (what === 2) {
    const { tensors, metadata } = await readSafetensors(path.join(dir, weights));
    editTensors(rand, tensors);
    await writeSafetensors(path.join(dir, weights), tensors, { metadata });
    if (checksum) await refreshChecksum(dir);
  } else {
    await fsp.rm(path.join(dir, pick(rand, [manifest, weights])));
  }
  return dir;
}

describe('fuzz: adapter directories', () => {
  it('300 corrupted adapters: each loads into one that fuses and unfuses exactly, or is refused clearly', async () => {
    const rand = mulberry32(99);
    const base = randomWeights(mulberry32(1));
    const shapes = shapesMap();
    const sources: string[] = [];
    for (let k = 0; k < 6; k++) {
      const dir = fresh();
      await saveAdapter(dir, randomAdapter(mulberry32(100 + k), `src${k}`));
      sources.push(dir);
    }
    const stats = { ok: 0, refused: 0 };
    for (let trial = 0; trial < 300; trial++) {
      const dir = await corruptedCopy(rand, pick(rand, sources), 'adapter.json', 'adapter.safetensors', rand() < 0.8);
      const r = await okOrSparsetuneError(`adapter trial ${trial}`, () => loadAdapter(dir, { shapes }));
      if (!r.ok) {
        stats.refused++;
        continue;
      }
      stats.ok++;
      await expectExactRoundTrip(base, r.value, `adapter trial ${trial}`);
    }
    expect(stats.refused).toBeGreaterThan(150);
    expect(stats.ok).toBeGreaterThan(20);
  });
});

/** Fusing then unfusing a loaded adapter restores every base bit (and fusing does not throw anything unclear). */
async function expectExactRoundTrip(base: Map<string, HostTensor<'f32'>>, a: Adapter, label: string): Promise<void> {
  const w = cloneWeights(base);
  const patcher = new WeightPatcher(w);
  const applied = await okOrSparsetuneError(label, async () => patcher.apply(a, { force: true }));
  if (!applied.ok) return;
  patcher.revert(applied.value);
  for (const [name, t] of base) expect(bits(w.get(name)!.data), `${label}: ${name}`).toEqual(bits(t.data));
}

describe('fuzz: PEFT LoRA directories', () => {
  it('200 corrupted PEFT dirs: each imports as a valid low-rank adapter or is refused clearly', async () => {
    const rand = mulberry32(5);
    const base = randomWeights(mulberry32(1));
    const sources: string[] = [];
    for (let k = 0; k < 4; k++) {
      const a = randomAdapter(mulberry32(300 + k), `peft${k}`);
      a.additive.clear();
      a.structured.clear();
      a.masks.clear();
      a.extra = undefined;
      if (a.lowrank.size === 0) continue;
      a.meta.kind = 'lowrank';
      const dir = fresh();
      await exportPeft(a, dir);
      sources.push(dir);
    }
    expect(sources.length).toBeGreaterThan(1);
    const stats = { ok: 0, refused: 0 };
    for (let trial = 0; trial < 200; trial++) {
      const dir = await corruptedCopy(rand, pick(rand, sources), 'adapter_config.json', 'adapter_model.safetensors', false);
      const r = await okOrSparsetuneError(`peft trial ${trial}`, () => importPeft(dir));
      if (!r.ok) {
        stats.refused++;
        continue;
      }
      stats.ok++;
      expect(r.value.meta.kind).toBe('lowrank');
      await expectExactRoundTrip(base, r.value, `peft trial ${trial}`);
    }
    expect(stats.refused).toBeGreaterThan(60);
    expect(stats.ok).toBeGreaterThan(20);
  });
});
