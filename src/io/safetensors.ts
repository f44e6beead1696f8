/**
 * Safetensors reader and writer.
 *
 * File layout: 8-byte little-endian header length N, N bytes of JSON header, then the data
 * section. Header entries give `data_offsets` relative to the data section; we report
 * absolute file offsets. Tensors are read one at a time by file offset, so files larger
 * than 2 GiB (or than a Node Buffer) work; the whole file is never held as one buffer.
 */
import { promises as fsp } from 'node:fs';
import { z } from 'zod';
import { SparsetuneError } from '../errors.js';
import { numel, type HostTensor } from '../tensor.js';
import { writeFileAtomic } from './atomic.js';
import { crashPoint } from './crash-point.js';
import { decodeBF16, decodeF16, encodeBF16, encodeF16 } from './half.js';

export { decodeF16, decodeBF16, encodeF16, encodeBF16 } from './half.js';

export type SafetensorsDType = 'F64' | 'F32' | 'F16' | 'BF16' | 'I64' | 'I32' | 'I16' | 'U16' | 'I8' | 'U8' | 'BOOL';

/** One tensor in a safetensors file; `offset` is the absolute byte offset in the file. */
export interface SafetensorsEntry {
  name: string;
  dtype: SafetensorsDType;
  shape: number[];
  offset: number;
  byteLength: number;
}

const DTYPE_BYTES: Record<SafetensorsDType, number> = {
  F64: 8, F32: 4, F16: 2, BF16: 2, I64: 8, I32: 4, I16: 2, U16: 2, I8: 1, U8: 1, BOOL: 1,
};

/** Headers beyond this are certainly corrupt (real ones are a few MB at most). */
const MAX_HEADER_BYTES = 100_000_000;
/** One read() call moves at most this much: the OS caps single reads near 2 GiB. */
const READ_CHUNK = 1 << 30;

const entrySchema = z.object({
  dtype: z.string(),
  shape: z.array(z.number().int().nonnegative()),
  data_offsets: z.tuple([z.number().int().nonnegative(), z.number().int().nonnegative()]),
});
const metadataSchema = z.record(z.string(), z.string());

function bad(file: string, problem: string): SparsetuneError {
  return new SparsetuneError(
    'BAD_SAFETENSORS',
    `${file}: ${problem}. The file is not a valid safetensors file; re-download or re-export it.`,
  );
}

async function openForRead(file: string): Promise<fsp.FileHandle> {
  try {
    return await fsp.open(file, 'r');
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') throw new SparsetuneError('NOT_FOUND', `${file}: no such safetensors file`);
    throw new SparsetuneError('BAD_SAFETENSORS', `${file}: cannot open (${code ?? String(err)})`, { cause: err });
  }
}

/** Fill `dst` from `fh` starting at `position`, looping because read() may return short. */
async function readFully(fh: fsp.FileHandle, dst: Uint8Array, position: number, file: string): Promise<void> {
  let done = 0;
  while (done < dst.length) {
    const want = Math.min(dst.length - done, READ_CHUNK);
    const { bytesRead } = await fh.read(dst, done, want, position + done);
    if (bytesRead === 0) throw bad(file, `unexpected end of file at byte ${position + done}`);
    done += bytesRead;
  }
}

/** Append all of `src`, in chunks and looping on short writes. */
async function writeFully(fh: fsp.FileHandle, src: Uint8Array): Promise<void> {
  let done = 0;
  while (done < src.length) {
    const { bytesWritten } = await fh.write(src, done, Math.min(src.length - done, READ_CHUNK));
    done += bytesWritten;
  }
}

interface ParsedHeader {
  entries: SafetensorsEntry[];
  metadata: Record<string, string>;
}

async function parseHeader(fh: fsp.FileHandle, file: string): Promise<ParsedHeader> {
  const { size } = await fh.stat();
  if (size < 8) throw bad(file, `file is ${size} bytes, shorter than the 8-byte header length`);
  const lenBytes = new Uint8Array(8);
  await readFully(fh, lenBytes, 0, file);
  const headerLen = Number(new DataView(lenBytes.buffer).getBigUint64(0, true));
  if (headerLen > MAX_HEADER_BYTES) throw bad(file, `header length ${headerLen} is absurd (limit ${MAX_HEADER_BYTES})`);
  if (headerLen < 2) throw bad(file, `header length ${headerLen} is too small for a JSON object`);
  if (8 + headerLen > size) throw bad(file, `header length ${headerLen} runs past the end of the ${size}-byte file`);
  const headerBytes = new Uint8Array(headerLen);
  await readFully(fh, headerBytes, 8, file);

  let json: unknown;
  try {
    json = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(headerBytes));
  } catch (err) {
    throw bad(file, `header is not valid UTF-8 JSON (${(err as Error).message})`);
  }
  if (json === null || typeof json !== 'object' || Array.isArray(json)) throw bad(file, 'header is not a JSON object');

  const dataStart = 8 + headerLen;
  const dataSize = size - dataStart;
  let metadata: Record<string, string> = {};
  const entries: SafetensorsEntry[] = [];
  for (const [name, raw] of Object.entries(json as Record<string, unknown>)) {
    if (name === '__metadata__') {
      const m = metadataSchema.safeParse(raw);
      if (!m.success) throw bad(file, '__metadata__ must be an object of string values');
      metadata = m.data;
      continue;
    }
    const e = entrySchema.safeParse(raw);
    if (!e.success) throw bad(file, `tensor "${name}" needs {dtype, shape: int[], data_offsets: [begin, end]}`);
    const { dtype, shape, data_offsets: [begin, end] } = e.data;
    if (!(dtype in DTYPE_BYTES)) {
      throw bad(file, `tensor "${name}" has unknown dtype "${dtype}" (known: ${Object.keys(DTYPE_BYTES).join(', ')})`);
    }
    const dt = dtype as SafetensorsDType;
    if (begin > end || end > dataSize) {
      throw bad(file, `tensor "${name}" data_offsets [${begin}, ${end}] lie outside the ${dataSize}-byte data section`);
    }
    const count = numel(shape);
    const expected = count * DTYPE_BYTES[dt];
    if (!Number.isSafeInteger(expected) || expected !== end - begin) {
      throw bad(file, `tensor "${name}" shape [${shape}] x ${dt} needs ${expected} bytes but data_offsets span ${end - begin}`);
    }
    entries.push({ name, dtype: dt, shape, offset: dataStart + begin, byteLength: end - begin });
  }
  const byOffset = [...entries].sort((a, b) => a.offset - b.offset || a.byteLength - b.byteLength);
  for (let i = 1; i < byOffset.length; i++) {
    const prev = byOffset[i - 1];
    if (byOffset[i].offset < prev.offset + prev.byteLength) {
      throw bad(file, `tensors "${prev.name}" and "${byOffset[i].name}" overlap`);
    }
  }
  return { entries, metadata };
}

/** Read and validate only the header: tensor names, dtypes, shapes and absolute offsets. */
export async function readSafetensorsHeader(file: string): Promise<{ entries: SafetensorsEntry[]; metadata: Record<string, string> }> {
  const fh = await openForRead(file);
  try {
    return await parseHeader(fh, file);
  } finally {
    await fh.close();
  }
}

/** Read one entry's bytes into a fresh (hence aligned) buffer and convert to a HostTensor. */
async function readEntry(fh: fsp.FileHandle, e: SafetensorsEntry, file: string): Promise<HostTensor> {
  const n = numel(e.shape);
  const shape = [...e.shape];
  const into = async <T extends ArrayBufferView>(arr: T): Promise<T> => {
    await readFully(fh, new Uint8Array(arr.buffer, arr.byteOffset, arr.byteLength), e.offset, file);
    return arr;
  };
  switch (e.dtype) {
    case 'F32':
      return { dtype: 'f32', shape, data: await into(new Float32Array(n)) };
    case 'F16':
      return { dtype: 'f32', shape, data: decodeF16(await into(new Uint16Array(n))) };
    case 'BF16':
      return { dtype: 'f32', shape, data: decodeBF16(await into(new Uint16Array(n))) };
    case 'F64':
      return { dtype: 'f64', shape, data: await into(new Float64Array(n)) };
    case 'I64':
      return { dtype: 'i64', shape, data: await into(new BigInt64Array(n)) };
    case 'I32':
      return { dtype: 'i32', shape, data: await into(new Int32Array(n)) };
    case 'I16':
      return { dtype: 'i32', shape, data: Int32Array.from(await into(new Int16Array(n))) };
    case 'U16':
      return { dtype: 'i32', shape, data: Int32Array.from(await into(new Uint16Array(n))) };
    case 'I8':
    case 'U8':
    case 'BOOL':
      return { dtype: 'u8', shape, data: await into(new Uint8Array(n)) };
  }
}

/**
 * Read tensors from a safetensors file. F32/F16/BF16 become f32, F64 f64, I64 i64,
 * I32/I16/U16 i32, U8/I8/BOOL u8 (raw bytes). `names` restricts what is read; a name
 * missing from the file is a NOT_FOUND error.
 */
export async function readSafetensors(
  file: string,
  opts: { names?: string[] } = {},
): Promise<{ tensors: Map<string, HostTensor>; metadata: Record<string, string> }> {
  if (new Uint8Array(new Uint16Array([1]).buffer)[0] !== 1) {
    throw new SparsetuneError('RUNTIME', 'safetensors I/O assumes a little-endian host');
  }
  const fh = await openForRead(file);
  try {
    const { entries, metadata } = await parseHeader(fh, file);
    let wanted = entries;
    if (opts.names) {
      const byName = new Map(entries.map((e) => [e.name, e]));
      wanted = opts.names.map((name) => {
        const e = byName.get(name);
        if (!e) throw new SparsetuneError('NOT_FOUND', `${file}: no tensor named "${name}"`);
        return e;
      });
    }
    const tensors = new Map<string, HostTensor>();
    // File order keeps the reads sequential on disk.
    for (const e of [...wanted].sort((a, b) => a.offset - b.offset)) tensors.set(e.name, await readEntry(fh, e, file));
    return { tensors, metadata };
  } finally {
    await fh.close();
  }
}

function storedDType(name: string, t: HostTensor, requested: 'F32' | 'F16' | 'BF16' | undefined): SafetensorsDType {
  if (requested && t.dtype !== 'f32') {
    throw new SparsetuneError('DTYPE_MISMATCH', `writeSafetensors: "${name}" is ${t.dtype}; dtypes.${name}=${requested} applies to f32 tensors only`);
  }
  switch (t.dtype) {
    case 'f32': return requested ?? 'F32';
    case 'f64': return 'F64';
    case 'i32': return 'I32';
    case 'i64': return 'I64';
    case 'u8': return 'U8';
    case 'bool': return 'BOOL';
    case 'f16': return 'F16';
  }
}

function payloadBytes(t: HostTensor, dtype: SafetensorsDType): Uint8Array {
  let view: ArrayBufferView = t.data;
  if (dtype === 'F16' && t.dtype !== 'f16') view = encodeF16(t.data as Float32Array);
  else if (dtype === 'BF16') view = encodeBF16(t.data as Float32Array);
  return new Uint8Array(view.buffer, view.byteOffset, view.byteLength);
}

/**
 * Write tensors to a safetensors file atomically (`writeFileAtomic`: temp file in the same
 * directory, fsync, rename). Tensors are stored in sorted-name order; the header is padded with spaces so
 * the data section starts 8-byte aligned. `dtypes` stores chosen f32 tensors as F16/BF16.
 */
export async function writeSafetensors(
  file: string,
  tensors: Map<string, HostTensor> | Record<string, HostTensor>,
  opts: { metadata?: Record<string, string>; dtypes?: Record<string, 'F32' | 'F16' | 'BF16'> } = {},
): Promise<void> {
  const map = tensors instanceof Map ? tensors : new Map(Object.entries(tensors));
  const names = [...map.keys()].sort();
  const header: Record<string, unknown> = {};
  if (opts.metadata && Object.keys(opts.metadata).length > 0) {
    const m = metadataSchema.safeParse(opts.metadata);
    if (!m.success) throw new SparsetuneError('BAD_ARGUMENT', 'writeSafetensors: metadata values must be strings');
    header.__metadata__ = m.data;
  }
  const plan: { name: string; tensor: HostTensor; dtype: SafetensorsDType }[] = [];
  let cursor = 0;
  for (const name of names) {
    if (name === '__metadata__' || name.length === 0) throw new SparsetuneError('BAD_ARGUMENT', `writeSafetensors: invalid tensor name "${name}"`);
    const t = map.get(name)!;
    if (numel(t.shape) !== t.data.length) {
      throw new SparsetuneError('SHAPE_MISMATCH', `writeSafetensors: "${name}" has shape [${t.shape}] but ${t.data.length} values`);
    }
    const dtype = storedDType(name, t, opts.dtypes?.[name]);
    const bytes = t.data.length * DTYPE_BYTES[dtype];
    header[name] = { dtype, shape: t.shape, data_offsets: [cursor, cursor + bytes] };
    plan.push({ name, tensor: t, dtype });
    cursor += bytes;
  }
  const json = new TextEncoder().encode(JSON.stringify(header));
  const padded = Math.ceil(json.length / 8) * 8;
  const head = new Uint8Array(8 + padded).fill(0x20);
  new DataView(head.buffer).setBigUint64(0, BigInt(padded), true);
  head.set(json, 8);

  await writeFileAtomic(file, async (fh) => {
    await writeFully(fh, head);
    crashPoint('safetensors:header', file);
    for (const p of plan) await writeFully(fh, payloadBytes(p.tensor, p.dtype));
  });
}
