/**
 * Which base tensors LT-SFT may change, and the sparse difference it exports.
 *
 * Maskable: the weight matrices of the selected linear sites (attention q/k/v/o and MLP
 * gate/up/down; GPT-2's c_attn/c_proj/c_fc) and the input token embedding. Never norms,
 * biases or position embeddings. With tied embeddings the LM head IS the embedding matrix,
 * so it is one maskable tensor (changes act on both uses). An untied LM head is frozen.
 */
import { SparsetuneError } from '../errors.js';
import type { AdditiveDelta } from '../merge/types.js';
import type { CausalLM } from '../models/causal-lm.js';
import { selectSites } from '../adapters/common.js';

/** Input token embedding names of the supported architectures (Llama family, GPT-2). */
const EMBEDDING_NAMES = ['model.embed_tokens.weight', 'transformer.wte.weight'];

/** Linear kinds that are maskable by default, across architectures. */
export const DEFAULT_LT_SFT_TARGETS = ['q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj', 'down_proj', 'c_attn', 'c_proj', 'c_fc'];

/** A maskable base tensor; `data` is the model's own weight buffer (trained in place). */
export interface MaskableTensor {
  name: string;
  shape: number[];
  data: Float32Array;
}

/**
 * The maskable tensors of `model`, in a stable order (sites in model order, then the
 * embedding). Duplicate weight names (a tied head) appear once.
 */
export function maskableTensors(model: CausalLM, targets: string[] | string, includeEmbedding: boolean): MaskableTensor[] {
  const names: string[] = [];
  for (const site of selectSites(model, targets)) if (!names.includes(site.weightName)) names.push(site.weightName);
  if (includeEmbedding) {
    const emb = EMBEDDING_NAMES.find((n) => model.weights.has(n));
    if (!emb) {
      throw new SparsetuneError('UNSUPPORTED_MODEL', `lt-sft: no input embedding (${EMBEDDING_NAMES.join(' or ')}) in this ${model.config.modelType} model; set includeEmbeddings: false`);
    }
    if (!names.includes(emb)) names.push(emb);
  }
  return names.map((name) => {
    const w = model.weights.get(name)!;
    return { name, shape: [...w.shape], data: w.data };
  });
}

/**
 * The LM head when it is a tensor of its own (untied) and not already maskable: the
 * "non-maskable head" that the official code fine-tunes densely (task SFTs). Null when the
 * head is tied to the embedding (then it is the maskable embedding itself).
 */
export function untiedHead(model: CausalLM, maskable: readonly MaskableTensor[]): MaskableTensor | null {
  const site = model.sites().find((s) => s.kind === 'lm_head');
  if (!site || EMBEDDING_NAMES.includes(site.weightName) || maskable.some((t) => t.name === site.weightName)) return null;
  const w = model.weights.get(site.weightName);
  if (!w || maskable.some((t) => t.data.buffer === w.data.buffer && t.data.byteOffset === w.data.byteOffset)) return null;
  return { name: site.weightName, shape: [...w.shape], data: w.data };
}

/** Total number of values in the model's weights, each buffer counted once (tied tensors once). */
export function parameterCount(model: CausalLM): number {
  const seen = new Set<Float32Array>();
  let n = 0;
  for (const w of model.weights.values()) {
    if (seen.has(w.data)) continue;
    seen.add(w.data);
    n += w.data.length;
  }
  return n;
}

/**
 * phi = current − reference on the masked entries, dropping |phi| <= eps (after rounding
 * to float32, the stored value). Returns null when nothing survives.
 */
export function sparseDifference(current: Float32Array, reference: Float32Array, mask: Uint8Array, eps: number): AdditiveDelta | null {
  let upper = 0;
  for (let i = 0; i < mask.length; i++) upper += mask[i];
  const indices = new Int32Array(upper);
  const values = new Float32Array(upper);
  let n = 0;
  for (let i = 0; i < mask.length; i++) {
    if (!mask[i]) continue;
    const d = Math.fround(current[i] - reference[i]);
    if (Math.abs(d) <= eps) continue;
    indices[n] = i;
    values[n] = d;
    n++;
  }
  return n === 0 ? null : { indices: indices.slice(0, n), values: values.slice(0, n) };
}
