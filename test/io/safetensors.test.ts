import { promises as fsp } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { SparsetuneError } from '../../src/errors.js';
import { readSafetensors, readSafetensorsHeader, writeSafetensors } from '../../src/io/safetensors.js';
import { readShardedSafetensors, readShardedSafetensorsHeader } from '../../src/io/safetensors-index.js';
import { decodeF16, encodeF16 } from '../../src/io/half.js';
import type { HostTensor } from '../../src/tensor.js';
import { mulberry32 } from '../../src/util/random.js';

const MODEL = path.resolve('models/stories260K/model.safetensors');
let tmp: string;

beforeAll(async () => {
  tmp = await fsp.mkdtemp(path.join(os.tmpdir(), 'st-test-'));
});
afterAll(async () => {
  await fsp.rm(tmp, { recursive: true, force: true });
});

/** Build a safetensors file by hand: header object + raw data bytes. */
function craft(header: unknown, data: Uint8Array = new Uint8Array(0), headerLenOverride?: bigint): Uint8Array {
  const json = new TextEncoder().encode(typeof header === 'string' ? header : JSON.stringify(header));
  const out = new Uint8Array(8 + json.length + data.length);
  new DataView(out.buffer).setBigUint64(0, headerLenOverride ?? BigInt(json.length), true);
  out.set(json, 8);
  out.set(data, 8 + json.length);
  return out;
}

async function expectBad(file: string, pattern: RegExp): Promise<void> {
  const err = await readSafetensors(file).then(() => null, (e: unknown) => e);
  expect(err).toBeInstanceOf(SparsetuneError);
  expect((err as SparsetuneError).code).toBe('BAD_SAFETENSORS');
  expect((err as SparsetuneError).message).toContain(file);
  expect((err as SparsetuneError).message).toMatch(pattern);
}

describe('reading the bundled stories260K checkpoint', () => {
  it('lists 47 tensors with 260,032 parameters and absolute offsets', async () => {
    const { entries, metadata } = await readSafetensorsHeader(MODEL);
    expect(metadata).toEqual({ format: 'pt' });
    expect(entries).toHaveLength(47);
    expect(entries.reduce((n, e) => n + e.shape.reduce((a, b) => a * b, 1), 0)).toBe(260032);
    const emb = entries.find((e) => e.name === 'model.embed_tokens.weight')!;
    expect(emb).toMatchObject({ dtype: 'F32', shape: [512, 64], byteLength: 512 * 64 * 4 });
    expect(emb.offset).toBeGreaterThanOrEqual(8 + 4856);
  });

  it('reads values that match numpy', async () => {
    const { tensors } = await readSafetensors(MODEL, { names: ['model.embed_tokens.weight', 'model.norm.weight'] });
    expect([...tensors.keys()].sort()).toEqual(['model.embed_tokens.weight', 'model.norm.weight']);
    const emb = tensors.get('model.embed_tokens.weight')!;
    expect(emb.dtype).toBe('f32');
    expect(emb.data[0]).toBeCloseTo(-0.29474878311157227, 7);
    expect(emb.data[2]).toBeCloseTo(0.1754225343465805, 7);
    let sum = 0;
    for (const v of emb.data as Float32Array) sum += v;
    expect(sum).toBeCloseTo(-752.3677446640068, 3);
    expect(tensors.get('model.norm.weight')!.data[1]).toBeCloseTo(1.3673226833343506, 7);
  });

  it('asks for a missing tensor -> NOT_FOUND', async () => {
    await expect(readSafetensors(MODEL, { names: ['nope'] })).rejects.toMatchObject({ code: 'NOT_FOUND' });
    await expect(readSafetensors(path.join(tmp, 'absent.safetensors'))).rejects.toMatchObject({ code: 'NOT_FOUND' });
  });
});

describe('writing', () => {
  const tensors: Record<string, HostTensor> = {
    'b.f32': { dtype: 'f32', shape: [2, 3], data: new Float32Array([1, -2, 3.5, 0, 1e-3, -7]) },
    'a.f64': { dtype: 'f64', shape: [2], data: new Float64Array([Math.PI, -1e300]) },
    'c.i32': { dtype: 'i32', shape: [3], data: new Int32Array([-1, 0, 2147483647]) },
    'd.i64': { dtype: 'i64', shape: [2], data: new BigInt64Array([-5n, 9007199254740993n]) },
    'e.u8': { dtype: 'u8', shape: [1, 3], data: new Uint8Array([0, 128, 255]) },
    'f.bool': { dtype: 'bool', shape: [2], data: new Uint8Array([1, 0]) },
    'g.scalar': { dtype: 'f32', shape: [], data: new Float32Array([42]) },
    'h.empty': { dtype: 'f32', shape: [0, 4], data: new Float32Array(0) },
  };

  it('round-trips every dtype with metadata, sorted and 8-byte aligned', async () => {
    const file = path.join(tmp, 'all.safetensors');
    await writeSafetensors(file, tensors, { metadata: { format: 'pt', note: 'x' } });
    const bytes = await fsp.readFile(file);
    const headerLen = Number(bytes.readBigUInt64LE(0));
    expect((8 + headerLen) % 8).toBe(0);
    const headerText = bytes.subarray(8, 8 + headerLen).toString('utf8');
    expect(/^ *$/.test(headerText.slice(headerText.lastIndexOf('}') + 1))).toBe(true);
    const { entries, metadata } = await readSafetensorsHeader(file);
    expect(metadata).toEqual({ format: 'pt', note: 'x' });
    const byOffset = [...entries].sort((a, b) => a.offset - b.offset).map((e) => e.name);
    expect(byOffset).toEqual(Object.keys(tensors).sort());
    const { tensors: back } = await readSafetensors(file);
    for (const [name, t] of Object.entries(tensors)) {
      const r = back.get(name)!;
      expect(r.shape).toEqual(t.shape);
      expect(r.dtype).toBe(t.dtype === 'bool' ? 'u8' : t.dtype);
      expect(Array.from(r.data as ArrayLike<unknown>)).toEqual(Array.from(t.data as ArrayLike<unknown>));
    }
    expect(entries.find((e) => e.name === 'f.bool')!.dtype).toBe('BOOL');
  });

  it('is deterministic and leaves no temp files', async () => {
    const f1 = path.join(tmp, 'det1.safetensors');
    const f2 = path.join(tmp, 'det2.safetensors');
    await writeSafetensors(f1, new Map(Object.entries(tensors)));
    await writeSafetensors(f2, Object.fromEntries(Object.entries(tensors).reverse()));
    expect(Buffer.compare(await fsp.readFile(f1), await fsp.readFile(f2))).toBe(0);
    expect((await fsp.readdir(tmp)).filter((n) => n.includes('.tmp-'))).toEqual([]);
  });

  it('stores chosen f32 tensors as F16/BF16', async () => {
    const file = path.join(tmp, 'half.safetensors');
    const data = new Float32Array([0.1, -3.3, 65504, 1e-7]);
    await writeSafetensors(file, { x: { dtype: 'f32', shape: [4], data }, y: { dtype: 'f32', shape: [4], data } }, { dtypes: { x: 'F16', y: 'BF16' } });
    const { entries } = await readSafetensorsHeader(file);
    expect(entries.map((e) => [e.name, e.dtype, e.byteLength])).toEqual([['x', 'F16', 8], ['y', 'BF16', 8]]);
    const { tensors: back } = await readSafetensors(file);
    expect(Array.from(back.get('x')!.data as Float32Array)).toEqual(Array.from(decodeF16(encodeF16(data))));
    const y = back.get('y')!.data as Float32Array;
    y.forEach((v, i) => expect(Math.abs(v - data[i]) / Math.abs(data[i])).toBeLessThan(1 / 128));
  });

  it('rejects bad input without leaving a file', async () => {
    const file = path.join(tmp, 'bad-write.safetensors');
    await expect(writeSafetensors(file, { x: { dtype: 'f32', shape: [3], data: new Float32Array(2) } })).rejects.toMatchObject({ code: 'SHAPE_MISMATCH' });
    await expect(writeSafetensors(file, { x: { dtype: 'i32', shape: [1], data: new Int32Array(1) } }, { dtypes: { x: 'F16' } })).rejects.toMatchObject({ code: 'DTYPE_MISMATCH' });
    await expect(fsp.access(file)).rejects.toThrow();
  });
});

describe('validation of bad files', () => {
  const f32x2 = new Uint8Array(new Float32Array([1, 2]).buffer);
  const cases: [string, Uint8Array, RegExp][] = [
    ['empty', new Uint8Array(0), /shorter than the 8-byte/],
    ['absurd header length', craft({}, new Uint8Array(0), 2n ** 62n), /absurd/],
    ['header past end', craft({}, new Uint8Array(0), 1000n), /runs past the end/],
    ['not json', craft('{"a": [}'), /not valid UTF-8 JSON/],
    ['json array', craft('[1,2]'), /not a JSON object/],
    ['unknown dtype', craft({ a: { dtype: 'F8', shape: [2], data_offsets: [0, 2] } }, new Uint8Array(2)), /unknown dtype "F8"/],
    ['offsets outside', craft({ a: { dtype: 'F32', shape: [2], data_offsets: [0, 8] } }, new Uint8Array(4)), /outside/],
    ['begin after end', craft({ a: { dtype: 'F32', shape: [0], data_offsets: [8, 0] } }, f32x2), /outside/],
    ['size mismatch', craft({ a: { dtype: 'F32', shape: [3], data_offsets: [0, 8] } }, f32x2), /needs 12 bytes/],
    ['overlap', craft({ a: { dtype: 'F32', shape: [2], data_offsets: [0, 8] }, b: { dtype: 'F32', shape: [1], data_offsets: [4, 8] } }, f32x2), /overlap/],
    ['negative shape', craft({ a: { dtype: 'F32', shape: [-2], data_offsets: [0, 8] } }, f32x2), /tensor "a" needs/],
    ['metadata not strings', craft({ __metadata__: { a: 1 } }), /__metadata__/],
    ['missing offsets', craft({ a: { dtype: 'F32', shape: [2] } }, f32x2), /tensor "a" needs/],
    ['bad utf8', craftRaw([0x7b, 0xff, 0x7d]), /UTF-8 JSON/],
  ];
  for (const [label, bytes, pattern] of cases) {
    it(label, async () => {
      const file = path.join(tmp, `bad-${label.replace(/\W+/g, '-')}.safetensors`);
      await fsp.writeFile(file, bytes);
      await expectBad(file, pattern);
    });
  }

  /** A header made of raw bytes (e.g. invalid UTF-8). */
  function craftRaw(headerBytes: number[]): Uint8Array {
    const out = new Uint8Array(8 + headerBytes.length);
    new DataView(out.buffer).setBigUint64(0, BigInt(headerBytes.length), true);
    out.set(headerBytes, 8);
    return out;
  }

  it('fuzz: every truncation and random corruption gives data or BAD_SAFETENSORS', async () => {
    const src = path.join(tmp, 'fuzz-src.safetensors');
    await writeSafetensors(src, {
      w: { dtype: 'f32', shape: [4, 4], data: new Float32Array(16).map((_, i) => i) },
      b: { dtype: 'i64', shape: [3], data: new BigInt64Array([1n, 2n, 3n]) },
    }, { metadata: { k: 'v' } });
    const good = await fsp.readFile(src);
    const file = path.join(tmp, 'fuzz.safetensors');
    const outcomes = { ok: 0, bad: 0 };
    const attempt = async (bytes: Uint8Array) => {
      await fsp.writeFile(file, bytes);
      try {
        await readSafetensors(file);
        outcomes.ok++;
      } catch (err) {
        if (!(err instanceof SparsetuneError) || err.code !== 'BAD_SAFETENSORS') throw err;
        outcomes.bad++;
      }
    };
    for (let len = 0; len < good.length; len++) await attempt(good.subarray(0, len));
    expect(outcomes.ok).toBe(0); // every strict truncation loses bytes that some tensor needs
    const rand = mulberry32(1234);
    for (let trial = 0; trial < 400; trial++) {
      const bytes = Uint8Array.from(good);
      const flips = 1 + Math.floor(rand() * 4);
      // Corrupt mostly the header, where the parser has to cope.
      const span = trial % 4 === 0 ? bytes.length : Math.min(bytes.length, 8 + Number(good.readBigUInt64LE(0)));
      for (let k = 0; k < flips; k++) bytes[Math.floor(rand() * span)] = Math.floor(rand() * 256);
      await attempt(bytes);
    }
    expect(outcomes.bad).toBeGreaterThan(good.length);
  });

  it('reads by absolute offset past 2 GiB (sparse file)', async () => {
    const file = path.join(tmp, 'huge.safetensors');
    const big = 2 ** 31 + 16;
    const headerJson = JSON.stringify({
      big: { dtype: 'U8', shape: [big], data_offsets: [0, big] },
      tail: { dtype: 'F32', shape: [2], data_offsets: [big, big + 8] },
    });
    const header = craft(headerJson);
    const fh = await fsp.open(file, 'w');
    try {
      await fh.write(header, 0, header.length, 0);
      await fh.write(new Uint8Array(new Float32Array([3.5, -1]).buffer), 0, 8, header.length + big);
    } finally {
      await fh.close();
    }
    const { entries } = await readSafetensorsHeader(file);
    expect(entries.find((e) => e.name === 'tail')!.offset).toBe(header.length + big);
    const { tensors } = await readSafetensors(file, { names: ['tail'] });
    expect(Array.from(tensors.get('tail')!.data as Float32Array)).toEqual([3.5, -1]);
    await fsp.rm(file);
  });
});

describe('sharded checkpoints', () => {
  it('loads tensors across shards through weight_map', async () => {
    const dir = path.join(tmp, 'sharded');
    await fsp.mkdir(dir);
    await writeSafetensors(path.join(dir, 'model-00001-of-00002.safetensors'), { a: { dtype: 'f32', shape: [2], data: new Float32Array([1, 2]) } });
    await writeSafetensors(path.join(dir, 'model-00002-of-00002.safetensors'), {
      b: { dtype: 'f32', shape: [1], data: new Float32Array([3]) },
      c: { dtype: 'i32', shape: [1], data: new Int32Array([4]) },
    });
    const index = path.join(dir, 'model.safetensors.index.json');
    await fsp.writeFile(index, JSON.stringify({
      metadata: { total_size: 16 },
      weight_map: { a: 'model-00001-of-00002.safetensors', b: 'model-00002-of-00002.safetensors', c: 'model-00002-of-00002.safetensors' },
    }));
    const { tensors } = await readShardedSafetensors(index);
    expect([...tensors.keys()].sort()).toEqual(['a', 'b', 'c']);
    expect(Array.from(tensors.get('a')!.data as Float32Array)).toEqual([1, 2]);
    expect((await readShardedSafetensors(index, { names: ['c'] })).tensors.get('c')!.data[0]).toBe(4);
    const { entries } = await readShardedSafetensorsHeader(index);
    expect(entries.find((e) => e.name === 'b')!.file).toBe(path.join(dir, 'model-00002-of-00002.safetensors'));

    await fsp.writeFile(index, JSON.stringify({ weight_map: { a: 'model-00002-of-00002.safetensors' } }));
    await expect(readShardedSafetensors(index)).rejects.toMatchObject({ code: 'BAD_SAFETENSORS', message: expect.stringMatching(/does not contain/) });
    await fsp.writeFile(index, JSON.stringify({ weight_map: { a: '../escape.safetensors' } }));
    await expect(readShardedSafetensors(index)).rejects.toMatchObject({ code: 'BAD_SAFETENSORS', message: expect.stringMatching(/inside the model directory/) });
    await fsp.writeFile(index, '{"weight_map": 3}');
    await expect(readShardedSafetensors(index)).rejects.toMatchObject({ code: 'BAD_SAFETENSORS' });
  });
});
