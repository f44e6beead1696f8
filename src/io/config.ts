/**
 * Hugging Face `config.json` -> a normalized, validated ModelConfig.
 *
 * One registry maps `model_type` to a parser (llama, mistral and qwen2 share the Llama
 * architecture; SmolLM ships as model_type "llama"). HF defaults are applied here so the
 * model builders never look at raw keys.
 */
import { z } from 'zod';
import { SparsetuneError } from '../errors.js';

export type RopeScaling =
  | null
  | { type: 'linear'; factor: number }
  | { type: 'llama3'; factor: number; lowFreqFactor: number; highFreqFactor: number; originalMaxPositionEmbeddings: number };

/** Llama-family decoder (Llama, Mistral, Qwen2, SmolLM). */
export interface LlamaConfig {
  arch: 'llama';
  /** The config's model_type: llama | mistral | qwen2. */
  modelType: string;
  vocabSize: number;
  hiddenSize: number;
  intermediateSize: number;
  numLayers: number;
  numHeads: number;
  numKvHeads: number;
  headDim: number;
  rmsNormEps: number;
  ropeTheta: number;
  ropeScaling: RopeScaling;
  tieWordEmbeddings: boolean;
  /** Bias on q/k/v projections (true for Qwen2). */
  attentionBias: boolean;
  mlpBias: boolean;
  maxPositionEmbeddings: number;
  bosTokenId?: number;
  eosTokenId?: number | number[];
  hiddenAct: 'silu';
  raw: Record<string, unknown>;
}

/** GPT-2 decoder. */
export interface Gpt2Config {
  arch: 'gpt2';
  modelType: 'gpt2';
  vocabSize: number;
  /** n_embd */
  hiddenSize: number;
  /** n_inner, default 4 * n_embd */
  intermediateSize: number;
  numLayers: number;
  numHeads: number;
  /** n_positions */
  maxPositionEmbeddings: number;
  layerNormEps: number;
  activation: 'gelu_new' | 'gelu' | 'relu';
  bosTokenId?: number;
  eosTokenId?: number | number[];
  tieWordEmbeddings: true;
  raw: Record<string, unknown>;
}

export type ModelConfig = LlamaConfig | Gpt2Config;

const posInt = z.number().int().positive();

/**
 * Upper bounds on config sizes, far above any published decoder model, so a corrupt or
 * hostile config.json fails at parse time instead of driving a huge allocation.
 */
export const CONFIG_LIMITS = Object.freeze({
  vocabSize: 1 << 24,
  hiddenSize: 1 << 17,
  intermediateSize: 1 << 20,
  numLayers: 1024,
  numHeads: 1024,
  headDim: 4096,
  maxPositionEmbeddings: 1 << 24,
});

/** A positive integer at most `max`; the message says why the bound exists. */
function bounded(max: number) {
  return posInt.max(max, { message: `must be at most ${max} (larger than any supported model; the config is corrupt or not a decoder LLM config)` });
}
const tokenId = z.number().int().nonnegative();
const eosId = z.union([tokenId, z.array(tokenId).min(1)]);

const ropeScalingSchema = z
  .object({
    rope_type: z.string().optional(),
    type: z.string().optional(),
    factor: z.number().positive().optional(),
    low_freq_factor: z.number().positive().optional(),
    high_freq_factor: z.number().positive().optional(),
    original_max_position_embeddings: posInt.optional(),
  })
  .nullable()
  .optional();

const llamaSchema = z
  .object({
    model_type: z.string(),
    vocab_size: bounded(CONFIG_LIMITS.vocabSize),
    hidden_size: bounded(CONFIG_LIMITS.hiddenSize),
    intermediate_size: bounded(CONFIG_LIMITS.intermediateSize),
    num_hidden_layers: bounded(CONFIG_LIMITS.numLayers),
    num_attention_heads: bounded(CONFIG_LIMITS.numHeads),
    num_key_value_heads: bounded(CONFIG_LIMITS.numHeads).nullable().optional(),
    head_dim: bounded(CONFIG_LIMITS.headDim).nullable().optional(),
    rms_norm_eps: z.number().positive().default(1e-6),
    rope_theta: z.number().positive().default(10000),
    rope_scaling: ropeScalingSchema,
    tie_word_embeddings: z.boolean().default(false),
    attention_bias: z.boolean().default(false),
    mlp_bias: z.boolean().default(false),
    max_position_embeddings: bounded(CONFIG_LIMITS.maxPositionEmbeddings).default(2048),
    bos_token_id: tokenId.nullable().optional(),
    eos_token_id: eosId.nullable().optional(),
    hidden_act: z.string().default('silu'),
  });

const gpt2Schema = z
  .object({
    model_type: z.literal('gpt2'),
    vocab_size: bounded(CONFIG_LIMITS.vocabSize).default(50257),
    n_embd: bounded(CONFIG_LIMITS.hiddenSize).default(768),
    n_inner: bounded(CONFIG_LIMITS.intermediateSize).nullable().optional(),
    n_layer: bounded(CONFIG_LIMITS.numLayers).default(12),
    n_head: bounded(CONFIG_LIMITS.numHeads).default(12),
    n_positions: bounded(CONFIG_LIMITS.maxPositionEmbeddings).default(1024),
    layer_norm_epsilon: z.number().positive().default(1e-5),
    activation_function: z.string().default('gelu_new'),
    bos_token_id: tokenId.nullable().default(50256),
    eos_token_id: eosId.nullable().default(50256),
  });

function badConfig(source: string, problem: string): SparsetuneError {
  return new SparsetuneError('BAD_CONFIG', `${source}: ${problem}. Fix config.json (it should be a Hugging Face transformers config).`);
}

function parseWith<T extends z.ZodType>(schema: T, json: unknown, source: string): z.output<T> {
  const r = schema.safeParse(json);
  if (!r.success) {
    const issues = r.error.issues.map((i) => `${i.path.join('.') || '(root)'}: ${i.message}`).join('; ');
    throw badConfig(source, issues);
  }
  return r.data;
}

function parseRopeScaling(raw: z.output<typeof ropeScalingSchema>, source: string): RopeScaling {
  if (!raw) return null;
  const kind = raw.rope_type ?? raw.type ?? 'default';
  if (kind === 'default') return null;
  const need = (v: number | undefined, key: string): number => {
    if (v === undefined) throw badConfig(source, `rope_scaling type "${kind}" needs "${key}"`);
    return v;
  };
  if (kind === 'linear') return { type: 'linear', factor: need(raw.factor, 'factor') };
  if (kind === 'llama3') {
    return {
      type: 'llama3',
      factor: need(raw.factor, 'factor'),
      lowFreqFactor: need(raw.low_freq_factor, 'low_freq_factor'),
      highFreqFactor: need(raw.high_freq_factor, 'high_freq_factor'),
      originalMaxPositionEmbeddings: need(raw.original_max_position_embeddings, 'original_max_position_embeddings'),
    };
  }
  throw new SparsetuneError('UNSUPPORTED_MODEL', `${source}: rope_scaling type "${kind}" is not supported (supported: linear, llama3)`);
}

/** Parser for the Llama family; `qkvBias` fixes the bias on q/k/v (Qwen2 always has it). */
function llamaParser(opts: { qkvBias?: boolean }) {
  return (json: Record<string, unknown>, source: string): LlamaConfig => {
    const c = parseWith(llamaSchema, json, source);
    if (c.hidden_act !== 'silu' && c.hidden_act !== 'swish') {
      throw new SparsetuneError('UNSUPPORTED_MODEL', `${source}: hidden_act "${c.hidden_act}" is not supported (only silu)`);
    }
    const numKvHeads = c.num_key_value_heads ?? c.num_attention_heads;
    if (c.num_attention_heads % numKvHeads !== 0) {
      throw badConfig(source, `num_attention_heads ${c.num_attention_heads} is not a multiple of num_key_value_heads ${numKvHeads}`);
    }
    if (c.head_dim == null && c.hidden_size % c.num_attention_heads !== 0) {
      throw badConfig(source, `hidden_size ${c.hidden_size} is not divisible by num_attention_heads ${c.num_attention_heads}`);
    }
    const headDim = c.head_dim ?? c.hidden_size / c.num_attention_heads;
    if (headDim % 2 !== 0) throw badConfig(source, `head_dim ${headDim} is odd; rotary embeddings rotate pairs of channels, so it must be even`);
    return {
      arch: 'llama',
      modelType: c.model_type,
      vocabSize: c.vocab_size,
      hiddenSize: c.hidden_size,
      intermediateSize: c.intermediate_size,
      numLayers: c.num_hidden_layers,
      numHeads: c.num_attention_heads,
      numKvHeads,
      headDim,
      rmsNormEps: c.rms_norm_eps,
      ropeTheta: c.rope_theta,
      ropeScaling: parseRopeScaling(c.rope_scaling, source),
      tieWordEmbeddings: c.tie_word_embeddings,
      attentionBias: opts.qkvBias ?? c.attention_bias,
      mlpBias: c.mlp_bias,
      maxPositionEmbeddings: c.max_position_embeddings,
      ...(c.bos_token_id != null ? { bosTokenId: c.bos_token_id } : {}),
      ...(c.eos_token_id != null ? { eosTokenId: c.eos_token_id } : {}),
      hiddenAct: 'silu',
      raw: json,
    };
  };
}

function parseGpt2(json: Record<string, unknown>, source: string): Gpt2Config {
  const c = parseWith(gpt2Schema, json, source);
  const act = c.activation_function;
  if (act !== 'gelu_new' && act !== 'gelu' && act !== 'relu') {
    throw new SparsetuneError('UNSUPPORTED_MODEL', `${source}: activation_function "${act}" is not supported (gelu_new, gelu, relu)`);
  }
  if (c.n_embd % c.n_head !== 0) throw badConfig(source, `n_embd ${c.n_embd} is not divisible by n_head ${c.n_head}`);
  return {
    arch: 'gpt2',
    modelType: 'gpt2',
    vocabSize: c.vocab_size,
    hiddenSize: c.n_embd,
    intermediateSize: c.n_inner ?? 4 * c.n_embd,
    numLayers: c.n_layer,
    numHeads: c.n_head,
    maxPositionEmbeddings: c.n_positions,
    layerNormEps: c.layer_norm_epsilon,
    activation: act,
    ...(c.bos_token_id != null ? { bosTokenId: c.bos_token_id } : {}),
    ...(c.eos_token_id != null ? { eosTokenId: c.eos_token_id } : {}),
    tieWordEmbeddings: true,
    raw: json,
  };
}

/** The one place that says which model_type is built how. */
const PARSERS: Record<string, (json: Record<string, unknown>, source: string) => ModelConfig> = {
  llama: llamaParser({}),
  mistral: llamaParser({ qkvBias: false }),
  qwen2: llamaParser({ qkvBias: true }),
  gpt2: parseGpt2,
};

export const SUPPORTED_MODEL_TYPES: readonly string[] = Object.freeze(Object.keys(PARSERS));

/**
 * Validate a parsed `config.json` and normalize it. `source` (usually the file path)
 * prefixes error messages. Unknown model types raise UNSUPPORTED_MODEL.
 */
export function parseModelConfig(json: unknown, source = 'config.json'): ModelConfig {
  if (json === null || typeof json !== 'object' || Array.isArray(json)) throw badConfig(source, 'expected a JSON object');
  const raw = json as Record<string, unknown>;
  const type = raw.model_type;
  if (typeof type !== 'string') throw badConfig(source, `missing "model_type" (supported: ${SUPPORTED_MODEL_TYPES.join(', ')})`);
  const parser = Object.hasOwn(PARSERS, type) ? PARSERS[type] : undefined;
  if (!parser) {
    throw new SparsetuneError(
      'UNSUPPORTED_MODEL',
      `${source}: model_type "${type}" is not supported; supported model types: ${SUPPORTED_MODEL_TYPES.join(', ')}`,
    );
  }
  return parser(raw, source);
}
