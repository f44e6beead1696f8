/**
 * What a model costs, counted rather than timed: its parameters, and the multiply-accumulates
 * one decoded token needs (every linear layer, the LM head, and attention over the context).
 * Used to show that a pruned export (PAT) is smaller and cheaper per token; wall-clock speed
 * is measured in the benchmarks.
 */
import type { CausalLM } from './causal-lm.js';

export interface ModelCost {
  /** Distinct parameter values stored (a tied embedding/head counts once). */
  parameters: number;
  /** MACs of the linear layers and the LM head for one token. */
  linearMacs: number;
  /** MACs of attention scores and the weighted sum of values for one token at `context`. */
  attentionMacs: number;
  /** linearMacs + attentionMacs. */
  macsPerToken: number;
}

/**
 * Parameters and per-token MACs of `model` when decoding one token with `context` tokens in
 * the cache (itself included). Embedding lookups and norms are not MACs (a norm is O(d)).
 */
export function modelCost(model: CausalLM, context = 1): ModelCost {
  let parameters = 0;
  for (const t of model.weights.values()) parameters += t.data.length;
  let linearMacs = 0;
  for (const s of model.sites()) linearMacs += s.inFeatures * s.outFeatures;
  const cfg = model.config;
  const heads = cfg.numHeads;
  const headDim = cfg.arch === 'llama' ? cfg.headDim : cfg.hiddenSize / cfg.numHeads;
  const layers = model.arch.kvShape(cfg).layers;
  // Per layer: q·k over the context and the weighted sum of values, for every query head.
  const attentionMacs = layers * heads * headDim * context * 2;
  return { parameters, linearMacs, attentionMacs, macsPerToken: linearMacs + attentionMacs };
}
