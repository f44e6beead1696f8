import { promises as fsp } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { SparsetuneError } from '../../src/errors.js';
import { readSafetensors, writeSafetensors } from '../../src/io/safetensors.js';
import { decodeF16, encodeF16 } from '../../src/io/half.js';
import { loadAdapter, saveAdapter, newAdapter, type Adapter } from '../../src/merge/adapter.js';
import { WeightPatcher } from '../../src/merge/apply.js';
import { packBits } from '../../src/merge/bits.js';
import type { HostTensor } from '../../src/tensor.js';
import { cloneWeights, firstDifference, randomAdapter, randomWeights, rng, shapesMap } from './helpers.js';

const Q = 'model.layers.0.self_attn.q_proj.weight';
const QB = 'model.layers.0.self_attn.q_proj.bias';
const O = 'model.layers.1.self_attn.o_proj.weight';
const E = 'model.embed_tokens.weight';

let root: string;
beforeAll(async () => {
  root = await fsp.mkdtemp(path.join(os.tmpdir(), 'sparsetune-adapter-'));
});
afterAll(async () => {
  await fsp.rm(root, { recursive: true, force: true });
});
let counter = 0;
const fresh = (): string => path.join(root, `a${counter++}`);

const f32 = (shape: number[], fill: (i: number) => number): HostTensor<'f32'> => ({
  dtype: 'f32',
  shape,
  data: Float32Array.from({ length: shape.reduce((a, b) => a * b, 1) }, (_, i) => fill(i)),
});

/** One adapter with every non-pruned payload kind, bias and extra tensors included. */
function everyKind(): Adapter {
  const a = newAdapter({ method: 'mixed-test', kind: 'additive', base: { model: 'tiny', fingerprint: 'sha256:abc' }, config: { lr: 1e-3 }, metrics: { loss: 1.25 } });
  a.additive.set(Q, { indices: Int32Array.from([0, 5, 34]), values: Float32Array.from([0.5, -2, 1e-7]) });
  a.structured.set(O, { rows: Int32Array.from([1, 3]), values: Float32Array.from({ length: 12 }, (_, i) => i / 7), shape: [4, 6] });
  a.structured.set(E, { cols: Int32Array.from([0, 7]), values: Float32Array.from({ length: 6 }, (_, i) => -i), shape: [3, 8] });
  a.masks.set(O, { bits: packBits(Array.from({ length: 24 }, (_, i) => i % 3)), numel: 24 });
  a.masks.set(QB, { bits: packBits([1, 0, 1, 1, 0]), numel: 5 });
  a.lowrank.set(Q, { A: f32([2, 7], (i) => i / 10), B: f32([5, 2], (i) => 1 - i / 4), scale: 0.75, biasDelta: Float32Array.from([1, 2, 3, 4, 5]) });
  a.extra = new Map<string, HostTensor>([['head_scale', f32([2], (i) => i + 1)], ['ids', { dtype: 'i32', shape: [3], data: Int32Array.from([4, 5, 6]) }]]);
  return a;
}

async function expectRejected(p: Promise<unknown>, pattern: RegExp, code = 'BAD_ADAPTER'): Promise<void> {
  const err = await p.then(() => null, (e: unknown) => e);
  expect(err, 'expected a rejection').toBeInstanceOf(SparsetuneError);
  expect((err as SparsetuneError).code).toBe(code);
  expect((err as Error).message).toMatch(pattern);
}

/** Write an adapter directory by hand (no checksum), to test the loader's own checks. */
async function writeRaw(dir: string, tensors: Record<string, HostTensor>, json: Record<string, unknown> = {}, metadata?: Record<string, string>): Promise<void> {
  await fsp.mkdir(dir, { recursive: true });
  const meta = { format: 'sparsetune.adapter/1', method: 'raw', kind: 'additive', base: { model: 'tiny', fingerprint: '' }, config: {}, created: '2024-01-01T00:00:00Z', metrics: {}, ...json };
  await writeSafetensors(path.join(dir, 'adapter.safetensors'), tensors, { metadata: metadata ?? { format: 'sparsetune.adapter/1', method: String(meta.method) } });
  await fsp.writeFile(path.join(dir, 'adapter.json'), JSON.stringify(meta));
}
const i32 = (xs: number[]): HostTensor => ({ dtype: 'i32', shape: [xs.length], data: Int32Array.from(xs) });
const vals = (xs: number[]): HostTensor => ({ dtype: 'f32', shape: [xs.length], data: Float32Array.from(xs) });

describe('adapter directories', () => {
  it('round-trips every payload kind exactly, with the documented tensor names', async () => {
    const dir = fresh();
    const a = everyKind();
    await saveAdapter(dir, a);
    const b = await loadAdapter(dir, { shapes: shapesMap() });
    expect(b).toEqual(a);

    const { tensors, metadata } = await readSafetensors(path.join(dir, 'adapter.safetensors'));
    expect(metadata).toMatchObject({ format: 'sparsetune.adapter/1', method: 'mixed-test' });
    expect([...tensors.keys()].sort()).toEqual([
      'base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight',
      'base_model.model.model.layers.0.self_attn.q_proj.lora_B.bias',
      'base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight',
      'extra.head_scale',
      'extra.ids',
      `${E}.cols`,
      `${E}.values`,
      `${QB}.mask`,
      `${O}.mask`,
      `${O}.rows`,
      `${O}.values`,
      `${Q}.indices`,
      `${Q}.values`,
    ].sort());
    expect(tensors.get(`${O}.values`)!.shape).toEqual([2, 6]);
    expect(tensors.get(`${Q}.indices`)!.dtype).toBe('i32');
    const json = JSON.parse(await fsp.readFile(path.join(dir, 'adapter.json'), 'utf8'));
    expect(json).toMatchObject({ format: 'sparsetune.adapter/1', method: 'mixed-test', kind: 'additive', base: { model: 'tiny', fingerprint: 'sha256:abc' }, config: { lr: 1e-3 }, metrics: { loss: 1.25 } });
    expect(json.checksum).toMatch(/^sha256:[0-9a-f]{64}$/);
  });

  it('round-trips random adapters, dense structured blocks and pruned adapters', async () => {
    const r = rng(31);
    for (let k = 0; k < 12; k++) {
      const a = randomAdapter(r, `rand${k}`);
      if (a.additive.size && a.structured.size && [...a.additive.keys()].some((n) => a.structured.has(n))) continue; // covered below
      const dir = fresh();
      await saveAdapter(dir, a);
      expect(await loadAdapter(dir, { shapes: shapesMap() })).toEqual(a);
    }
    const dense = newAdapter({ method: 'dense', kind: 'structured', base: { model: 'tiny', fingerprint: '' } });
    dense.structured.set(O, { values: Float32Array.from({ length: 24 }, (_, i) => i), shape: [4, 6] });
    dense.structured.set(E, { rows: Int32Array.from([0, 2]), cols: Int32Array.from([1, 2, 5]), values: Float32Array.from([1, 2, 3, 4, 5, 6]), shape: [3, 8] });
    let dir = fresh();
    await saveAdapter(dir, dense);
    expect(await loadAdapter(dir)).toEqual(dense); // shapes come from the file itself

    const pruned = newAdapter({ method: 'pat', kind: 'pruned', base: { model: 'tiny', fingerprint: '' } });
    pruned.pruned = { keptChannels: Int32Array.from([0, 3, 4, 7]), configJson: { hidden_size: 4, model_type: 'llama' } };
    pruned.extra = new Map<string, HostTensor>([['hsm.scale', f32([4], (i) => i / 3)]]);
    dir = fresh();
    await saveAdapter(dir, pruned);
    expect(await loadAdapter(dir)).toEqual(pruned);
  });

  it('saves additive + structured on one parameter as one additive delta that fuses to the same bits', async () => {
    const a = newAdapter({ method: 'both', kind: 'additive', base: { model: 'tiny', fingerprint: '' } });
    a.additive.set(O, { indices: Int32Array.from([0, 7, 13, 23]), values: Float32Array.from([2 ** 53, 1, -3, 0.25]) });
    a.structured.set(O, { rows: Int32Array.from([0, 2]), cols: Int32Array.from([0, 1]), values: Float32Array.from([-(2 ** 53), 5, 6, 7]), shape: [4, 6] });
    const dir = fresh();
    await saveAdapter(dir, a);
    const b = await loadAdapter(dir, { shapes: shapesMap() });
    expect(b.structured.size).toBe(0);
    expect(Array.from(b.additive.get(O)!.indices)).toEqual([0, 1, 7, 12, 13, 23]);
    const base = randomWeights(rng(2));
    const w1 = cloneWeights(base);
    const w2 = cloneWeights(base);
    new WeightPatcher(w1, { fingerprint: 'x' }).apply(a);
    new WeightPatcher(w2, { fingerprint: 'x' }).apply(b);
    expect(firstDifference(w1, new Map([...w2].map(([k, t]) => [k, t.data])))).toBeNull();
  });

  it('stores values as F16 on request (rounded like the file), and refuses values F16 cannot hold', async () => {
    const a = everyKind();
    const dir = fresh();
    await saveAdapter(dir, a, { valueDtype: 'F16' });
    const b = await loadAdapter(dir);
    const f16 = (x: Float32Array): Float32Array => decodeF16(encodeF16(x));
    expect(b.additive.get(Q)!.values).toEqual(f16(a.additive.get(Q)!.values));
    expect(b.lowrank.get(Q)!.A.data).toEqual(f16(a.lowrank.get(Q)!.A.data));
    expect(b.extra!.get('head_scale')).toEqual(a.extra!.get('head_scale')); // extra tensors keep their dtype
    const big = newAdapter({ method: 'big', kind: 'additive', base: { model: 'tiny', fingerprint: '' } });
    big.additive.set(Q, { indices: Int32Array.from([1]), values: Float32Array.from([1e6]) });
    await expectRejected(saveAdapter(fresh(), big, { valueDtype: 'F16' }), /overflows F16/, 'BAD_ARGUMENT');
  });

  it('detects tampered and truncated files', async () => {
    const dir = fresh();
    await saveAdapter(dir, everyKind());
    const file = path.join(dir, 'adapter.safetensors');
    const bytes = await fsp.readFile(file);
    const flipped = Buffer.from(bytes);
    flipped[flipped.length - 3] ^= 0x10;
    await fsp.writeFile(file, flipped);
    await expectRejected(loadAdapter(dir), /adapter\.safetensors.*checksum.*re-export/);

    await fsp.writeFile(file, bytes.subarray(0, bytes.length - 10));
    await expectRejected(loadAdapter(dir), /checksum/);
    // Without a checksum to compare, the safetensors reader itself must catch the truncation.
    const json = JSON.parse(await fsp.readFile(path.join(dir, 'adapter.json'), 'utf8'));
    delete json.checksum;
    await fsp.writeFile(path.join(dir, 'adapter.json'), JSON.stringify(json));
    await expectRejected(loadAdapter(dir), /adapter\.safetensors: unreadable.*re-export/);
    await fsp.writeFile(file, bytes.subarray(0, 5));
    await expectRejected(loadAdapter(dir), /unreadable/);
  });

  it('rejects bad payloads in hand-written files: ranges, order, NaN, dtypes, stray tensors', async () => {
    const shapes = shapesMap();
    let dir = fresh();
    await writeRaw(dir, { [`${Q}.indices`]: i32([0, 35]), [`${Q}.values`]: vals([1, 2]) });
    await expectRejected(loadAdapter(dir, { shapes }), /indices entry 35 is out of range \(size 35\)/);
    expect((await loadAdapter(dir)).additive.get(Q)!.indices.length).toBe(2); // no shapes: cannot know

    dir = fresh();
    await writeRaw(dir, { [`${Q}.indices`]: i32([4, 2]), [`${Q}.values`]: vals([1, 2]) });
    await expectRejected(loadAdapter(dir), /strictly increasing/);
    dir = fresh();
    await writeRaw(dir, { [`${Q}.indices`]: i32([-1, 2]), [`${Q}.values`]: vals([1, 2]) });
    await expectRejected(loadAdapter(dir), /strictly increasing and >= 0/);
    dir = fresh();
    await writeRaw(dir, { [`${Q}.indices`]: i32([1, 2]), [`${Q}.values`]: vals([1, NaN]) });
    await expectRejected(loadAdapter(dir), /entry 1 is NaN/);
    dir = fresh();
    await writeRaw(dir, { [`${Q}.indices`]: i32([1, 2]), [`${Q}.values`]: vals([1, Infinity]) });
    await expectRejected(loadAdapter(dir), /must be finite/);
    dir = fresh();
    await writeRaw(dir, { [`${Q}.indices`]: vals([1, 2]), [`${Q}.values`]: vals([1, 2]) });
    await expectRejected(loadAdapter(dir), /dtype f32, expected I32/);
    dir = fresh();
    await writeRaw(dir, { [`${Q}.indices`]: i32([1, 2]), [`${Q}.values`]: vals([1, 2, 3]) });
    await expectRejected(loadAdapter(dir), /2 indices but 3 values/);
    dir = fresh();
    await writeRaw(dir, { [`${Q}.indices`]: i32([1]), [`${Q}.values`]: vals([1]), 'something.else': vals([0]) });
    await expectRejected(loadAdapter(dir), /unexpected tensor "something.else"/);
    dir = fresh();
    await writeRaw(dir, { [`${O}.rows`]: i32([0, 9]), [`${O}.values`]: f32([2, 6], () => 1) });
    await expectRejected(loadAdapter(dir, { shapes }), /rows entry 9 is out of range/);
    dir = fresh();
    await writeRaw(dir, { [`${O}.cols`]: i32([0, 1, 2]), [`${O}.values`]: f32([4, 2], () => 1) });
    await expectRejected(loadAdapter(dir), /lists all rows and 3 cols/);
    dir = fresh();
    await writeRaw(dir, { [`${O}.mask`]: { dtype: 'u8', shape: [3], data: Uint8Array.from([255, 255, 255]) } }, { kind: 'mask', masks: { [O]: { numel: 24 } } });
    await expect(loadAdapter(dir, { shapes })).resolves.toBeDefined();
    dir = fresh();
    await writeRaw(dir, { [`${QB}.mask`]: { dtype: 'u8', shape: [1], data: Uint8Array.from([0xff]) } }, { kind: 'mask', masks: { [QB]: { numel: 5 } } });
    await expectRejected(loadAdapter(dir), /nonzero padding bits/);
    dir = fresh();
    await writeRaw(dir, { [`${QB}.mask`]: { dtype: 'u8', shape: [1], data: Uint8Array.from([0x80]) } }, { kind: 'mask' });
    await expectRejected(loadAdapter(dir), /no element count/);
    dir = fresh();
    await writeRaw(dir, { [`${Q}.indices`]: i32([1]), [`${Q}.values`]: vals([1]) }, {}, { format: 'sparsetune.adapter/1', method: 'other' });
    await expectRejected(loadAdapter(dir), /different exports/);
    dir = fresh();
    await writeRaw(dir, { 'base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight': f32([2, 7], () => 1) }, { lowrank: { [Q]: { scale: 1 } } });
    await expectRejected(loadAdapter(dir), /lora_B\.weight" is missing/);
  });

  it('validates adapter.json and reports missing directories', async () => {
    await expectRejected(loadAdapter(path.join(root, 'nope')), /neither adapter\.json \(sparsetune\) nor adapter_config\.json/, 'NOT_FOUND');
    let dir = fresh();
    await writeRaw(dir, { [`${Q}.indices`]: i32([1]), [`${Q}.values`]: vals([1]) }, { format: 'sparsetune.adapter/9' });
    await expectRejected(loadAdapter(dir), /adapter\.json: invalid adapter\.json \(format/);
    dir = fresh();
    await writeRaw(dir, { [`${Q}.indices`]: i32([1]), [`${Q}.values`]: vals([1]) }, { kind: 'sparse' });
    await expectRejected(loadAdapter(dir), /kind/);
    await fsp.writeFile(path.join(dir, 'adapter.json'), '{"format": ');
    await expectRejected(loadAdapter(dir), /not valid JSON/);
  });

  it('replaces an existing adapter without touching other files, and refuses to save a bad adapter', async () => {
    const dir = fresh();
    await saveAdapter(dir, everyKind());
    await fsp.writeFile(path.join(dir, 'train.log'), 'keep me');
    const second = randomAdapter(rng(5), 'second');
    await saveAdapter(dir, second);
    expect(await loadAdapter(dir)).toEqual(second);
    expect(await fsp.readFile(path.join(dir, 'train.log'), 'utf8')).toBe('keep me');
    expect((await fsp.readdir(root)).filter((n) => n.includes('.tmp-'))).toEqual([]);

    const bad = newAdapter({ method: 'bad', kind: 'additive', base: { model: 'tiny', fingerprint: '' } });
    bad.additive.set(Q, { indices: Int32Array.from([1]), values: Float32Array.from([NaN]) });
    const target = fresh();
    await expectRejected(saveAdapter(target, bad), /NaN/);
    await expect(fsp.stat(target)).rejects.toThrow();
  });
});
