/**
 * The adapter directory format (DESIGN.md §5): which safetensors names and adapter.json
 * fields carry each payload. Tensor names in adapter.safetensors:
 *   additive    `<param>.indices` (I32, flat, sorted) + `<param>.values` (F32/F16/BF16) [nnz]
 *   structured  `<param>.rows` / `<param>.cols` (I32, optional) + `<param>.values` [R, C]
 *   mask        `<param>.mask` (U8, bit-packed MSB first); numel in adapter.json `masks`
 *   low rank    `base_model.model.<module>.lora_A.weight` [r, in], `.lora_B.weight` [out, r],
 *               `.lora_B.bias` [out] (PEFT names); scale in adapter.json `lowrank`
 *   pruned      `pruned.kept_channels` (I32); the smaller model's config in adapter.json `pruned`
 *   extra       `extra.<name>` (any dtype)
 * A parameter with both an additive and a structured delta is saved as one additive delta
 * (their per-element sum, exactly what fusing adds).
 */
import { z } from 'zod';
import { SparsetuneError } from '../errors.js';
import type { HostTensor } from '../tensor.js';
import { mergeContributions, structuredIndices, structuredInDim } from './reduce.js';
import { ADAPTER_FORMAT, ADAPTER_KINDS, moduleOfWeight, type Adapter, type AdapterKind, type LowRankPair, type StructuredDelta } from './types.js';

export const PEFT_PREFIX = 'base_model.model.';
const KEPT_CHANNELS = 'pruned.kept_channels';
const EXTRA_PREFIX = 'extra.';

const jsonObject = z.record(z.string(), z.unknown());

/** Schema of adapter.json. */
export const adapterJsonSchema = z.object({
  format: z.literal(ADAPTER_FORMAT),
  method: z.string().min(1),
  kind: z.enum(ADAPTER_KINDS as [AdapterKind, ...AdapterKind[]]),
  base: z.object({ model: z.string(), fingerprint: z.string() }),
  config: jsonObject,
  created: z.string(),
  metrics: jsonObject,
  masks: z.record(z.string(), z.object({ numel: z.number().int().positive() })).optional(),
  lowrank: z.record(z.string(), z.object({ scale: z.number() })).optional(),
  structured: z.record(z.string(), z.object({ shape: z.tuple([z.number().int().positive(), z.number().int().positive()]) })).optional(),
  pruned: z.object({ config: jsonObject }).optional(),
  /** sha256 of adapter.safetensors' bytes. */
  checksum: z.string().regex(/^sha256:[0-9a-f]{64}$/).optional(),
});
export type AdapterJson = z.infer<typeof adapterJsonSchema>;

type ValueDtype = 'F32' | 'F16' | 'BF16';
const MAX_ABS: Record<ValueDtype, number> = { F32: Infinity, F16: 65504, BF16: 3.3895313892515355e38 };

/** Split an adapter into safetensors tensors (+ their stored dtypes) and adapter.json. */
export function encodeAdapter(a: Adapter, valueDtype: ValueDtype = 'F32'): {
  tensors: Map<string, HostTensor>;
  dtypes: Record<string, ValueDtype>;
  json: AdapterJson;
} {
  const tensors = new Map<string, HostTensor>();
  const dtypes: Record<string, ValueDtype> = {};
  const put = (name: string, t: HostTensor, isValue = false): void => {
    if (tensors.has(name)) throw new SparsetuneError('BAD_ADAPTER', `saveAdapter: two payloads map to the tensor name "${name}"; rename the parameter or extra tensor`);
    if (isValue && valueDtype !== 'F32') {
      const data = t.data as Float32Array;
      for (let i = 0; i < data.length; i++) {
        if (Math.abs(data[i]) > MAX_ABS[valueDtype]) {
          throw new SparsetuneError('BAD_ARGUMENT', `saveAdapter: "${name}" holds ${data[i]}, which overflows ${valueDtype}; save with valueDtype "F32"`);
        }
      }
      dtypes[name] = valueDtype;
    }
    tensors.set(name, t);
  };
  const f32 = (shape: number[], data: Float32Array): HostTensor => ({ dtype: 'f32', shape, data });
  const i32 = (data: Int32Array): HostTensor => ({ dtype: 'i32', shape: [data.length], data });
  const json: AdapterJson = { ...a.meta };

  for (const [name, d] of a.additive) {
    let { indices, values } = d;
    const st = a.structured.get(name);
    if (st) {
      const inDim = structuredInDim(name, st, () => undefined);
      const merged = mergeContributions([{ idx: indices, vals: values }, { idx: structuredIndices(st, inDim), vals: st.values }]);
      indices = merged.idx!;
      values = merged.vals;
    }
    put(`${name}.indices`, i32(indices));
    put(`${name}.values`, f32([values.length], values), true);
  }
  for (const [name, st] of a.structured) {
    if (a.additive.has(name)) continue;
    const [rowCount, colCount] = blockDims(name, st);
    if (st.rows) put(`${name}.rows`, i32(st.rows));
    if (st.cols) put(`${name}.cols`, i32(st.cols));
    put(`${name}.values`, f32([rowCount, colCount], st.values), true);
    if (st.shape) (json.structured ??= {})[name] = { shape: [st.shape[0], st.shape[1]] };
  }
  for (const [name, m] of a.masks) {
    put(`${name}.mask`, { dtype: 'u8', shape: [m.bits.length], data: m.bits });
    (json.masks ??= {})[name] = { numel: m.numel };
  }
  for (const [name, p] of a.lowrank) {
    const prefix = `${PEFT_PREFIX}${moduleOfWeight(name)}`;
    put(`${prefix}.lora_A.weight`, p.A, true);
    put(`${prefix}.lora_B.weight`, p.B, true);
    if (p.biasDelta) put(`${prefix}.lora_B.bias`, f32([p.biasDelta.length], p.biasDelta), true);
    (json.lowrank ??= {})[name] = { scale: p.scale };
  }
  if (a.pruned) {
    put(KEPT_CHANNELS, i32(a.pruned.keptChannels));
    json.pruned = { config: a.pruned.configJson };
  }
  for (const [name, t] of a.extra ?? []) put(`${EXTRA_PREFIX}${name}`, t);
  return { tensors, dtypes, json };
}

/** [rows, cols] of a structured block as stored. */
function blockDims(name: string, st: StructuredDelta): [number, number] {
  const rowCount = st.rows?.length ?? st.shape?.[0] ?? (st.cols ? st.values.length / st.cols.length : undefined);
  const colCount = st.cols?.length ?? st.shape?.[1] ?? (st.rows ? st.values.length / st.rows.length : undefined);
  if (rowCount === undefined || colCount === undefined) {
    throw new SparsetuneError('BAD_ADAPTER', `saveAdapter: structured delta "${name}" has neither rows, cols nor shape; set StructuredDelta.shape`);
  }
  return [rowCount, colCount];
}

/**
 * Rebuild an adapter from adapter.json and the safetensors tensors. `fail` reports a
 * format problem (the caller names the file and the fix). Range checks happen later.
 */
export function decodeAdapter(json: AdapterJson, tensors: Map<string, HostTensor>, shapes: Map<string, number[]> | undefined, fail: (what: string) => never): Adapter {
  const a: Adapter = {
    meta: { format: json.format, method: json.method, kind: json.kind, base: json.base, config: json.config, created: json.created, metrics: json.metrics },
    additive: new Map(),
    structured: new Map(),
    masks: new Map(),
    lowrank: new Map(),
  };
  const used = new Set<string>();
  const take = (name: string, dtype: HostTensor['dtype'], rank?: number): HostTensor => {
    const t = tensors.get(name);
    if (!t) fail(`tensor "${name}" is missing`);
    if (t.dtype !== dtype) fail(`tensor "${name}" has dtype ${t.dtype}, expected ${dtype === 'f32' ? 'F32/F16/BF16' : dtype === 'i32' ? 'I32' : 'U8'}`);
    if (rank !== undefined && t.shape.length !== rank) fail(`tensor "${name}" has shape [${t.shape}], expected ${rank} dimension(s)`);
    used.add(name);
    return t;
  };
  const ints = (name: string): Int32Array => take(name, 'i32', 1).data as Int32Array;

  for (const name of tensors.keys()) {
    if (name.startsWith(PEFT_PREFIX) || name.startsWith(EXTRA_PREFIX) || name === KEPT_CHANNELS) continue;
    if (name.endsWith('.indices')) {
      const param = name.slice(0, -'.indices'.length);
      const values = take(`${param}.values`, 'f32', 1).data as Float32Array;
      a.additive.set(param, { indices: ints(name), values });
    } else if (name.endsWith('.values')) {
      const param = name.slice(0, -'.values'.length);
      if (tensors.has(`${param}.indices`)) continue;
      const t = take(name, 'f32', 2);
      const st: StructuredDelta = { values: t.data as Float32Array };
      if (tensors.has(`${param}.rows`)) st.rows = ints(`${param}.rows`);
      if (tensors.has(`${param}.cols`)) st.cols = ints(`${param}.cols`);
      if ((st.rows && st.rows.length !== t.shape[0]) || (st.cols && st.cols.length !== t.shape[1])) {
        fail(`structured "${param}" values are [${t.shape}] but it lists ${st.rows?.length ?? 'all'} rows and ${st.cols?.length ?? 'all'} cols`);
      }
      const shape = json.structured?.[param]?.shape ?? shapes?.get(param);
      if (shape && shape.length === 2) st.shape = [shape[0], shape[1]];
      else if (!st.rows && !st.cols) st.shape = [t.shape[0], t.shape[1]];
      a.structured.set(param, st);
    } else if (name.endsWith('.mask')) {
      const param = name.slice(0, -'.mask'.length);
      const numel = json.masks?.[param]?.numel;
      if (numel === undefined) fail(`mask tensor "${name}" has no element count in adapter.json "masks"`);
      a.masks.set(param, { bits: take(name, 'u8', 1).data as Uint8Array, numel });
    }
  }
  for (const param of Object.keys(json.masks ?? {})) if (!a.masks.has(param)) fail(`adapter.json lists a mask for "${param}" but "${param}.mask" is missing`);

  for (const [param, { scale }] of Object.entries(json.lowrank ?? {})) {
    const module = moduleOfWeight(param);
    if (module === null) fail(`low-rank entry "${param}" must name a ".weight" parameter`);
    const prefix = `${PEFT_PREFIX}${module}`;
    const pair: LowRankPair = {
      A: take(`${prefix}.lora_A.weight`, 'f32', 2) as HostTensor<'f32'>,
      B: take(`${prefix}.lora_B.weight`, 'f32', 2) as HostTensor<'f32'>,
      scale,
    };
    if (tensors.has(`${prefix}.lora_B.bias`)) pair.biasDelta = take(`${prefix}.lora_B.bias`, 'f32', 1).data as Float32Array;
    a.lowrank.set(param, pair);
  }

  if (json.pruned) {
    a.pruned = { keptChannels: ints(KEPT_CHANNELS), configJson: json.pruned.config };
  }
  for (const [name, t] of tensors) {
    if (!name.startsWith(EXTRA_PREFIX)) continue;
    (a.extra ??= new Map()).set(name.slice(EXTRA_PREFIX.length), t);
    used.add(name);
  }
  for (const name of tensors.keys()) {
    if (!used.has(name)) fail(`unexpected tensor "${name}" (not part of any payload listed in adapter.json)`);
  }
  return a;
}
