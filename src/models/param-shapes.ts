/**
 * What a config implies about its weights: the name and shape of every parameter the
 * architecture reads, each dimension labelled with the config field it comes from, and
 * the checks that hold a checkpoint's tensors (from safetensors headers, before any data is
 * read) to it. A contradiction names the tensor, both shapes and the config field to fix.
 */
import { SparsetuneError } from '../errors.js';
import type { Gpt2Config, LlamaConfig, ModelConfig } from '../io/config.js';
import { architectureOf } from './registry.js';

/** One dimension of an expected shape and the config field(s) it comes from. */
export interface ParamDim {
  size: number;
  /** e.g. "intermediate_size" or "num_attention_heads × head_dim". */
  from: string;
}

/** A parameter the architecture reads, with the shape the config implies. */
export interface ExpectedParam {
  name: string;
  dims: ParamDim[];
}

function* llamaParams(cfg: LlamaConfig): Generator<ExpectedParam> {
  const V: ParamDim = { size: cfg.vocabSize, from: 'vocab_size' };
  const E: ParamDim = { size: cfg.hiddenSize, from: 'hidden_size' };
  const I: ParamDim = { size: cfg.intermediateSize, from: 'intermediate_size' };
  const H: ParamDim = { size: cfg.numHeads * cfg.headDim, from: 'num_attention_heads × head_dim' };
  const KV: ParamDim = { size: cfg.numKvHeads * cfg.headDim, from: 'num_key_value_heads × head_dim' };
  yield { name: 'model.embed_tokens.weight', dims: [V, E] };
  for (let l = 0; l < cfg.numLayers; l++) {
    const p = `model.layers.${l}`;
    yield { name: `${p}.input_layernorm.weight`, dims: [E] };
    for (const [kind, out] of [['q_proj', H], ['k_proj', KV], ['v_proj', KV]] as const) {
      yield { name: `${p}.self_attn.${kind}.weight`, dims: [out, E] };
      if (cfg.attentionBias) yield { name: `${p}.self_attn.${kind}.bias`, dims: [out] };
    }
    yield { name: `${p}.self_attn.o_proj.weight`, dims: [E, H] };
    yield { name: `${p}.post_attention_layernorm.weight`, dims: [E] };
    for (const [kind, out, inp] of [['gate_proj', I, E], ['up_proj', I, E], ['down_proj', E, I]] as const) {
      yield { name: `${p}.mlp.${kind}.weight`, dims: [out, inp] };
      if (cfg.mlpBias) yield { name: `${p}.mlp.${kind}.bias`, dims: [out] };
    }
  }
  yield { name: 'model.norm.weight', dims: [E] };
  if (!cfg.tieWordEmbeddings) yield { name: 'lm_head.weight', dims: [V, E] };
}

function* gpt2Params(cfg: Gpt2Config): Generator<ExpectedParam> {
  const V: ParamDim = { size: cfg.vocabSize, from: 'vocab_size' };
  const E: ParamDim = { size: cfg.hiddenSize, from: 'n_embd' };
  const E3: ParamDim = { size: 3 * cfg.hiddenSize, from: '3 × n_embd' };
  const I: ParamDim = { size: cfg.intermediateSize, from: 'n_inner (default 4 × n_embd)' };
  const P: ParamDim = { size: cfg.maxPositionEmbeddings, from: 'n_positions' };
  yield { name: 'transformer.wte.weight', dims: [V, E] };
  yield { name: 'transformer.wpe.weight', dims: [P, E] };
  for (let l = 0; l < cfg.numLayers; l++) {
    const p = `transformer.h.${l}`;
    for (const ln of ['ln_1', 'ln_2']) for (const t of ['weight', 'bias']) yield { name: `${p}.${ln}.${t}`, dims: [E] };
    // Conv1D stores [in, out].
    for (const [mod, inp, out] of [['attn.c_attn', E, E3], ['attn.c_proj', E, E], ['mlp.c_fc', E, I], ['mlp.c_proj', I, E]] as const) {
      yield { name: `${p}.${mod}.weight`, dims: [inp, out] };
      yield { name: `${p}.${mod}.bias`, dims: [out] };
    }
  }
  yield { name: 'transformer.ln_f.weight', dims: [E] };
  yield { name: 'transformer.ln_f.bias', dims: [E] };
}

/**
 * Every parameter the architecture of `cfg` reads, in a stable order, with the shape the
 * config implies. A generator, so a check can stop at the first problem without listing
 * the parameters of a config that claims a billion layers.
 */
export function expectedParams(cfg: ModelConfig): Generator<ExpectedParam> {
  return cfg.arch === 'llama' ? llamaParams(cfg) : gpt2Params(cfg);
}

/** Expected shapes of every parameter (name -> shape). */
export function expectedParamShapes(cfg: ModelConfig): Map<string, number[]> {
  const out = new Map<string, number[]>();
  for (const p of expectedParams(cfg)) out.set(p.name, p.dims.map((d) => d.size));
  return out;
}

/** The config key holding the number of blocks, and the pattern of per-block tensor names. */
function layerNaming(cfg: ModelConfig): { key: string; index: RegExp } {
  return cfg.arch === 'llama'
    ? { key: 'num_hidden_layers', index: /^model\.layers\.(\d+)\./ }
    : { key: 'n_layer', index: /^transformer\.h\.(\d+)\./ };
}

/** A tensor as a checkpoint header describes it. */
export interface WeightEntry {
  /** Name in the file (before architecture-specific renaming). */
  name: string;
  dtype: string;
  shape: readonly number[];
}

/** Storage dtypes a float weight may have (converted to f32 on load). */
export const FLOAT_WEIGHT_DTYPES: readonly string[] = Object.freeze(['F32', 'F16', 'BF16', 'F64']);

function fmt(shape: readonly number[]): string {
  return `[${shape.join(', ')}]`;
}

/**
 * Hold a checkpoint's tensors to its config, before any tensor data is read or allocated:
 * every parameter the architecture reads must be present with a float dtype and exactly
 * the shape the config implies, and the file must not hold more blocks than the config
 * says. Returns the tensors to read, keyed by their (normalized) parameter names; tensors
 * the architecture does not read (e.g. rotary or causal-mask buffers) are left out.
 * `source` names the model (directory) and `file` the weights file in messages.
 */
export function planWeights<E extends WeightEntry>(cfg: ModelConfig, entries: readonly E[], source: string, file = 'model.safetensors'): Map<string, E> {
  const byName = new Map<string, E>();
  for (const e of entries) byName.set(e.name, e);
  architectureOf(cfg).normalizeWeights?.(byName as Map<string, unknown>, cfg);

  const { key, index } = layerNaming(cfg);
  let fileLayers = 0;
  for (const name of byName.keys()) {
    const m = index.exec(name);
    if (m) fileLayers = Math.max(fileLayers, Number(m[1]) + 1);
  }
  if (fileLayers !== cfg.numLayers) {
    throw new SparsetuneError(
      'BAD_CONFIG',
      `${source}: config.json says ${key} = ${cfg.numLayers} but ${file} holds tensors for ${fileLayers} block(s); fix ${key} in config.json (the weights say ${fileLayers}) or use the weights that belong to this config`,
    );
  }

  const plan = new Map<string, E>();
  for (const p of expectedParams(cfg)) {
    const e = byName.get(p.name);
    if (!e) {
      throw new SparsetuneError(
        'BAD_CONFIG',
        `${source}: ${file} has no tensor "${p.name}", which the ${cfg.modelType} architecture needs for this config.json (shape ${fmt(p.dims.map((d) => d.size))}); check that config.json matches the weights (e.g. tie_word_embeddings, attention_bias, mlp_bias)`,
      );
    }
    if (!FLOAT_WEIGHT_DTYPES.includes(e.dtype)) {
      throw new SparsetuneError(
        'BAD_CONFIG',
        `${source}: tensor "${e.name}" in ${file} is stored as ${e.dtype}, but model weights must be floats (${FLOAT_WEIGHT_DTYPES.join(', ')}); integer and quantized checkpoints are not supported: convert the checkpoint to float first`,
      );
    }
    const want = p.dims.map((d) => d.size);
    if (e.shape.length !== want.length || e.shape.some((s, k) => s !== want[k])) {
      const fixes = p.dims
        .map((d, k) => (e.shape.length === want.length && e.shape[k] !== d.size ? `${d.from} = ${d.size} but the weights have ${e.shape[k]}` : null))
        .filter((x): x is string => x !== null);
      const why = fixes.length ? ` (${fixes.join('; ')})` : ` (the shape should be ${p.dims.map((d) => d.from).join(' × ')})`;
      throw new SparsetuneError(
        'BAD_CONFIG',
        `${source}: tensor "${e.name}" in ${file} has shape ${fmt(e.shape)} but config.json implies ${fmt(want)}${why}; fix config.json so it describes these weights, or use the weights that belong to this config`,
      );
    }
    plan.set(p.name, e);
  }
  return plan;
}
