/** Randomly initialised models from a HF config (benchmarks and tests at sizes we do not ship). */
import { parseModelConfig } from '../io/config.js';
import type { HostTensor } from '../tensor.js';
import { defaultRuntime, type Runtime } from '../engine/runtime.js';
import { CausalLM } from './causal-lm.js';
import { architectureOf } from './registry.js';
import { expectedParamShapes } from './param-shapes.js';
import { xorshift32 } from '../util/random.js';

/**
 * A model with N(0, std) weights (norm weights 1, biases 0) for the given HF config JSON.
 * Deterministic for a seed.
 */
export function randomModel(configJson: Record<string, unknown>, opts: { seed?: number; std?: number; runtime?: Runtime } = {}): CausalLM {
  const cfg = parseModelConfig(configJson, 'random config');
  const arch = architectureOf(cfg);
  const names = arch.paramNames(cfg);
  const shapes = expectedParamShapes(cfg);
  const rand = xorshift32((opts.seed ?? 0) ^ 0x1234567);
  const std = opts.std ?? 0.02;
  const weights = new Map<string, HostTensor<'f32'>>();
  for (const n of names) {
    const shape = shapes.get(n)!;
    const size = shape.reduce((a, b) => a * b, 1);
    const data = new Float32Array(size);
    const isNorm = /norm|ln_/.test(n);
    if (isNorm) data.fill(n.endsWith('.bias') ? 0 : 1);
    else if (!n.endsWith('.bias')) for (let i = 0; i < size; i++) data[i] = (rand() + rand() + rand() - 1.5) * 2 * std; // ~N(0, std)
    weights.set(n, { dtype: 'f32', shape, data });
  }
  return new CausalLM(cfg, weights, null, {}, `random:${cfg.modelType}`, opts.runtime ?? defaultRuntime());
}

/** The ~30M-parameter Llama config used by the benchmarks (hidden 384, 8 layers, 6 heads, vocab 32000). */
export const LLAMA_30M = {
  model_type: 'llama',
  vocab_size: 32000,
  hidden_size: 384,
  intermediate_size: 1024,
  num_hidden_layers: 8,
  num_attention_heads: 6,
  num_key_value_heads: 6,
  max_position_embeddings: 1024,
  rms_norm_eps: 1e-5,
  tie_word_embeddings: true,
};

/** A ~135M-parameter Llama config (SmolLM-135M geometry). */
export const LLAMA_135M = {
  model_type: 'llama',
  vocab_size: 49152,
  hidden_size: 576,
  intermediate_size: 1536,
  num_hidden_layers: 30,
  num_attention_heads: 9,
  num_key_value_heads: 3,
  max_position_embeddings: 2048,
  rms_norm_eps: 1e-5,
  tie_word_embeddings: true,
};

/** `LLAMA_30M` with an untied lm_head: 38.7M parameters (the engine issue's training and decode shapes). */
export const LLAMA_38M = { ...LLAMA_30M, tie_word_embeddings: false };

/** Qwen2.5-0.5B geometry (GQA 14/2 heads, q/k/v biases, tied embeddings, vocab 151936): ~494M parameters. */
export const QWEN_05B = {
  model_type: 'qwen2',
  vocab_size: 151936,
  hidden_size: 896,
  intermediate_size: 4864,
  num_hidden_layers: 24,
  num_attention_heads: 14,
  num_key_value_heads: 2,
  max_position_embeddings: 32768,
  rms_norm_eps: 1e-6,
  rope_theta: 1000000,
  tie_word_embeddings: true,
};
