/**
 * Export a model (base weights, with any adapters fused or run as hooks) as an ONNX model
 * directory that Hugging Face transformers.js (`@huggingface/transformers`) loads with
 * `pipeline('text-generation', dir)` / `AutoModelForCausalLM.from_pretrained(dir)`, in the
 * browser or in Node. The contract, as transformers.js's decoder code reads it:
 *
 *   dir/config.json, generation_config.json, tokenizer.json, tokenizer_config.json, ...
 *   dir/onnx/model.onnx           (fp32; the weights as initializers, inside the file or in
 *   dir/onnx/model.onnx_data       external data beside it, flagged in config.json as
 *                                  "transformers.js_config": {"use_external_data_format": true})
 *
 * Inputs: input_ids, attention_mask (int64 [batch_size, total], 1 = token,
 * 0 = padding), position_ids (int64 [batch_size, sequence_length]) and, per layer l,
 * past_key_values.l.key / .value (float32 [batch_size, kv_heads, past_sequence_length,
 * head_dim]; transformers.js starts from empty ones by giving every symbolic dim but
 * batch_size the size 0). Outputs: logits [batch_size, sequence_length, vocab] and
 * present.l.key / .value (the past with this step's keys/values appended). The causal and
 * padding mask is computed inside the graph from attention_mask.
 */
import { existsSync, promises as fsp } from 'node:fs';
import * as path from 'node:path';
import onnxProto from 'onnx-proto';
import { SparsetuneError } from '../errors.js';
import { Graph, type AttrValue, type Value } from '../engine/ir.js';
import { toOnnx } from '../engine/onnx.js';
import { add, cast, equal, maximum, mul, sub, unsqueeze } from '../engine/ops/index.js';
import { dimsTensor } from '../engine/ops/helpers.js';
import { writeDirAtomic } from '../io/atomic.js';
import { TOKENIZER_FILES } from '../io/model-dir.js';
import type { CausalLM } from '../models/causal-lm.js';
import type { ModelHooks } from '../models/hooks.js';
import { MASKED } from '../models/masks.js';
import type { HostTensor } from '../tensor.js';

const { onnx } = onnxProto;

export const ONNX_SUBDIR = 'onnx';
export const ONNX_FILE = 'model.onnx';
export const ONNX_DATA_FILE = 'model.onnx_data';
/** Above this many weight bytes the weights go to external data ('auto'): protobuf files stop at 2 GiB. */
export const EXTERNAL_DATA_THRESHOLD = 1 << 30;

export interface OnnxExportOptions {
  /** Hooks to build into the graph (adapters that run unfused); their tensors come from `feeds`. */
  hooks?: ModelHooks;
  /** Values of graph inputs that are not base weights (the hooks' tensors). */
  feeds?: Record<string, HostTensor>;
  /** Weights in `model.onnx_data` beside the graph: true, false, or 'auto' (default: above 1 GiB). */
  externalData?: boolean | 'auto';
  /** Replace a non-empty `dir` (exportOnnxModel). */
  overwrite?: boolean;
}

/** What was written. */
export interface OnnxExportResult {
  dir: string;
  files: string[];
  externalData: boolean;
  weightBytes: number;
}

/** Build the transformers.js-shaped inference graph (weights still graph inputs). */
export function buildExportGraph(model: CausalLM, hooks: ModelHooks = {}): { graph: Graph; dataInputs: Set<string> } {
  model.requireF32('ONNX export (the file holds fp32 weights)');
  const g = new Graph(`${model.config.modelType}-transformersjs`);
  const ids = g.input('input_ids', 'i64', ['batch_size', 'sequence_length']);
  const attention = g.input('attention_mask', 'i64', ['batch_size', 'total']);
  const positions = g.input('position_ids', 'i64', ['batch_size', 'sequence_length']);
  const { layers, kvHeads, headDim } = model.arch.kvShape(model.config);
  const past = Array.from({ length: layers }, (_, l) => ({
    k: g.input(`past_key_values.${l}.key`, 'f32', ['batch_size', kvHeads, 'past_sequence_length', headDim]),
    v: g.input(`past_key_values.${l}.value`, 'f32', ['batch_size', kvHeads, 'past_sequence_length', headDim]),
  }));
  const result = model.forward(g, { ids, positions, mask: additiveMask(g, attention), past }, hooks);
  g.output('logits', result.logits);
  result.present.forEach((kv, l) => {
    g.output(`present.${l}.key`, kv.k);
    g.output(`present.${l}.value`, kv.v);
  });
  const dataInputs = new Set(['input_ids', 'attention_mask', 'position_ids', ...past.flatMap((_, l) => [`past_key_values.${l}.key`, `past_key_values.${l}.value`])]);
  return { graph: g, dataInputs };
}

/**
 * [batch, 1, seq, total] additive mask from a [batch, total] 0/1 mask: query i (the new token
 * at absolute index past + i, past = total - seq) may see key j when j <= past + i and
 * attention[j] = 1. The causal part is an upper triangle (Trilu with k = past + 1).
 */
function additiveMask(g: Graph, attention: Value): Value {
  const ones = g.add('ConstantOfShape', [dimsTensor(g, ['sequence_length', 'total'])], {
    value: { dtype: 'f32', shape: [1], data: Float32Array.of(1) },
    _shape: ['sequence_length', 'total'] as unknown as AttrValue,
  })[0];
  const k = add(sub(dimsTensor(g, ['total']), dimsTensor(g, ['sequence_length'])), 1);
  const future = g.add('Trilu', [ones, k], { upper: 1 })[0];
  const padding = cast(equal(attention, 0), 'f32');
  const blocked = maximum(unsqueeze(future, [0, 1]), unsqueeze(padding, [1, 2]));
  return mul(blocked, MASKED);
}

/**
 * The ONNX file (and external data) of `model` in `onnxDir`: the export graph with every
 * weight (and hook tensor) turned into an initializer. Writes into `onnxDir` directly; use
 * exportOnnxModel for a whole, atomically written model directory.
 */
export async function writeOnnxFiles(model: CausalLM, onnxDir: string, opts: OnnxExportOptions = {}): Promise<{ files: string[]; externalData: boolean; weightBytes: number }> {
  const { graph, dataInputs } = buildExportGraph(model, opts.hooks);
  const proto = onnx.ModelProto.decode(toOnnx(graph));
  const g = proto.graph!;
  const weights: { name: string; t: HostTensor }[] = [];
  for (const input of g.input ?? []) {
    const name = input.name!;
    if (dataInputs.has(name)) continue;
    const t = opts.feeds?.[name] ?? model.weights.get(name);
    if (!t) throw new SparsetuneError('BAD_ARGUMENT', `exportOnnx: no value for graph input "${name}" (an adapter run as hooks needs its tensors in feeds)`);
    if (t.dtype !== 'f32') throw new SparsetuneError('BAD_ARGUMENT', `exportOnnx: "${name}" is ${t.dtype}; only f32 weights are exported`);
    weights.push({ name, t });
  }
  const weightBytes = weights.reduce((n, w) => n + w.t.data.byteLength, 0);
  const external = opts.externalData === 'auto' || opts.externalData === undefined ? weightBytes > EXTERNAL_DATA_THRESHOLD : opts.externalData;
  g.input = (g.input ?? []).filter((v) => dataInputs.has(v.name!));
  const files = [ONNX_FILE];
  await fsp.mkdir(onnxDir, { recursive: true });
  if (external) {
    files.push(ONNX_DATA_FILE);
    const out = await fsp.open(path.join(onnxDir, ONNX_DATA_FILE), 'w');
    let offset = 0;
    try {
    for (const { name, t } of weights) {
      const pad = (64 - (offset % 64)) % 64; // aligned offsets, as ORT likes them for mapping
      if (pad) await out.write(new Uint8Array(pad));
      offset += pad;
      const bytes = new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength);
      await out.write(bytes);
      g.initializer!.push({
        name,
        dims: t.shape,
        dataType: onnx.TensorProto.DataType.FLOAT,
        dataLocation: onnx.TensorProto.DataLocation.EXTERNAL,
        externalData: [
          { key: 'location', value: ONNX_DATA_FILE },
          { key: 'offset', value: String(offset) },
          { key: 'length', value: String(bytes.byteLength) },
        ],
      });
      offset += bytes.byteLength;
    }
    } finally {
      await out.close();
    }
  } else {
    if (weightBytes > 2 ** 31 - 2 ** 26) throw new SparsetuneError('BAD_ARGUMENT', `exportOnnx: ${weightBytes} bytes of weights do not fit in one ONNX file (2 GiB protobuf limit); use external data`);
    for (const { name, t } of weights) {
      g.initializer!.push({ name, dims: t.shape, dataType: onnx.TensorProto.DataType.FLOAT, rawData: new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength) });
    }
  }
  proto.producerName = 'sparsetune';
  await fsp.writeFile(path.join(onnxDir, ONNX_FILE), onnx.ModelProto.encode(proto).finish());
  return { files: files.map((f) => path.join(ONNX_SUBDIR, f)), externalData: external, weightBytes };
}

/** config.json of the export: the model's, with transformers.js's flag for external data. */
export async function exportConfigJson(model: CausalLM, externalData: boolean): Promise<Record<string, unknown>> {
  const file = path.join(model.source, 'config.json');
  const config = existsSync(file) ? (JSON.parse(await fsp.readFile(file, 'utf8')) as Record<string, unknown>) : {};
  const tjs = { ...((config['transformers.js_config'] as Record<string, unknown> | undefined) ?? {}) };
  if (externalData) tjs.use_external_data_format = true;
  else delete tjs.use_external_data_format;
  const out = { ...config };
  if (Object.keys(tjs).length) out['transformers.js_config'] = tjs;
  else delete out['transformers.js_config'];
  return out;
}

/** generation_config.json: the model's, else one from its BOS/EOS ids. */
async function generationConfig(model: CausalLM): Promise<string> {
  const file = path.join(model.source, 'generation_config.json');
  if (existsSync(file)) return fsp.readFile(file, 'utf8');
  const g: Record<string, unknown> = {};
  if (model.generation.bosTokenId !== undefined) g.bos_token_id = model.generation.bosTokenId;
  const eos = model.eosIds;
  if (eos.length) g.eos_token_id = eos.length === 1 ? eos[0] : eos;
  return `${JSON.stringify(g, null, 2)}\n`;
}

/**
 * Write `dir` as a transformers.js model directory (config, generation config, tokenizer
 * files, onnx/model.onnx [+ model.onnx_data]), atomically. The weights are the model's as they
 * are now (fuse adapters first to export an adapted model).
 */
export async function exportOnnxModel(model: CausalLM, dir: string, opts: OnnxExportOptions = {}): Promise<OnnxExportResult> {
  const target = path.resolve(dir);
  const existing = await fsp.readdir(target).catch(() => [] as string[]);
  if (existing.length && !opts.overwrite) throw new SparsetuneError('BAD_ARGUMENT', `${target} is not empty; choose another output directory or pass overwrite`);
  if (!model.tokenizer) throw new SparsetuneError('BAD_ARGUMENT', `${model.source} has no tokenizer.json; transformers.js needs one beside the model`);
  let result: OnnxExportResult | undefined;
  await writeDirAtomic(target, async (tmp) => {
    const onnxFiles = await writeOnnxFiles(model, path.join(tmp, ONNX_SUBDIR), opts);
    await fsp.writeFile(path.join(tmp, 'config.json'), `${JSON.stringify(await exportConfigJson(model, onnxFiles.externalData), null, 2)}\n`);
    await fsp.writeFile(path.join(tmp, 'generation_config.json'), await generationConfig(model));
    const files = ['config.json', 'generation_config.json', ...onnxFiles.files];
    for (const f of TOKENIZER_FILES) {
      const src = path.join(model.source, f);
      if (f !== 'generation_config.json' && existsSync(src)) {
        await fsp.copyFile(src, path.join(tmp, f));
        files.push(f);
      }
    }
    result = { dir: target, files: files.sort(), externalData: onnxFiles.externalData, weightBytes: onnxFiles.weightBytes };
  });
  return result!;
}

/**
 * Add `onnx/` to an existing model directory written from `model` (as `sparsetune merge
 * --onnx` does), so one directory serves sparsetune, transformers (Python) and transformers.js.
 */
export async function addOnnxToModelDir(model: CausalLM, dir: string, opts: OnnxExportOptions = {}): Promise<{ files: string[]; externalData: boolean }> {
  let res: { files: string[]; externalData: boolean } | undefined;
  await writeDirAtomic(path.join(dir, ONNX_SUBDIR), async (tmp) => {
    const r = await writeOnnxFiles(model, tmp, opts);
    res = { files: r.files, externalData: r.externalData };
  });
  const configFile = path.join(dir, 'config.json');
  const config = JSON.parse(await fsp.readFile(configFile, 'utf8')) as Record<string, unknown>;
  if (res!.externalData) {
    config['transformers.js_config'] = { ...((config['transformers.js_config'] as object | undefined) ?? {}), use_external_data_format: true };
    await fsp.writeFile(configFile, `${JSON.stringify(config, null, 2)}\n`);
  }
  return res!;
}
