/** What an architecture builder receives and returns; shared by llama.ts and gpt2.ts. */
import type { Graph, Value } from '../engine/ir.js';
import { gather, reshape } from '../engine/ops/index.js';
import { mulDims } from '../engine/shapes.js';
import type { ModelConfig } from '../io/config.js';
import type { LinearSite, ModelHooks } from './hooks.js';

export interface ForwardInputs {
  /** Token ids, int64 [batch, seq]. */
  ids: Value;
  /** Absolute positions, int64 [batch, seq]. */
  positions: Value;
  /** Additive attention mask [batch or 1, 1, seq, total] (0 = attend, -1e9 = blocked). */
  mask: Value;
  /** Cached keys/values per layer, [batch, kvHeads, past, headDim]; absent for training graphs. */
  past?: { k: Value; v: Value }[];
  /**
   * Attention through a preallocated KV cache (decode sessions). Given, it replaces the
   * mask/past path: it receives a layer's projections q [batch, seq, heads*headDim] and
   * k, v [batch, seq, kvHeads*headDim] before rotary (`rotary`: the architecture uses RoPE)
   * and returns the attention output [batch, seq, heads*headDim]; `present` is then empty.
   */
  attend?: (layer: number, q: Value, k: Value, v: Value, rotary: boolean) => Value;
  /** Int64 [n] rows of the flattened [batch*seq] positions to compute logits for (default: every position). */
  logitRows?: Value;
}

export interface ForwardResult {
  /** [batch, seq, vocab], or [n, vocab] for the positions in `logitRows`. */
  logits: Value;
  /** Keys/values including this step's, per layer (for the next decode step). */
  present: { k: Value; v: Value }[];
  /** Final hidden states before the LM head [batch, seq, hidden]. */
  hidden: Value;
}

export interface BuildContext {
  g: Graph;
  hooks: ModelHooks;
  /** The graph value of a base parameter (declared as an input on first use, hooks applied). */
  param(name: string): Value;
  /** Apply a linear site (with hooks) to x. */
  site(site: LinearSite, x: Value): Value;
}

export interface Architecture<C extends ModelConfig = ModelConfig> {
  /** Every Linear of the model, in a stable order. */
  sites(cfg: C): LinearSite[];
  /** Parameter names the forward pass reads (checked against the weights at load time). */
  paramNames(cfg: C): string[];
  forward(ctx: BuildContext, cfg: C, inputs: ForwardInputs): ForwardResult;
  /** KV cache geometry per layer. */
  kvShape(cfg: C): { layers: number; kvHeads: number; headDim: number; heads: number };
  /** RoPE inverse frequencies (architectures with rotary embeddings only). */
  ropeInvFreq?(cfg: C): Float32Array;
  /** Fix up checkpoint naming variants (e.g. GPT-2 without the `transformer.` prefix). */
  normalizeWeights?(weights: Map<string, unknown>, cfg: C): void;
}

/** The final hidden states [batch, seq, E] reduced to the rows the logits are wanted for. */
export function logitInput(hidden: Value, rows: Value | undefined): Value {
  if (!rows) return hidden;
  const [B, S, E] = hidden.shape;
  return gather(reshape(hidden, [mulDims([B, S]), E]), rows);
}
