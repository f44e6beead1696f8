/**
 * Export a PAT `pruned` adapter as a smaller, plain Hugging Face Llama model.
 *
 * 1. Merge LoRA: W += scale · B · A.
 * 2. Fold each HSM into the weight that writes the stream (embedding rows, o_proj and
 *    down_proj output rows and their biases): W' = diag(s ⊙ mask)(I + U D) W.
 * 3. Drop the pruned channels from every tensor touching the hidden width: embedding and
 *    lm_head columns, q/k/v/gate/up input columns, o/down output rows, RMSNorm weights.
 *
 * Why this is exact for the hard-masked model: every write into the residual stream goes
 * through an HSM whose hard mask zeroes the pruned channels, so those channels are exactly
 * 0 in the stream. An RMSNorm over d channels then sees sum(x²)/d, the pruned model sees
 * sum(x²)/d_keep: kept norm weights are multiplied by sqrt(d/d_keep), and rms_norm_eps by
 * d/d_keep so that even the epsilon term matches. head_dim is written explicitly (heads are
 * not pruned). A tied embedding stays tied: PAT gives a tied model's embedding the mask but
 * no HSM, so E[:, kept] serves both ends and the pruned model never grows. (Adapters whose
 * config says `tie_word_embeddings: false`, written for a tied base before that, still get a
 * folded embedding and a separate head of E's kept columns, as they were trained.)
 */
import { SparsetuneError } from '../errors.js';
import type { LlamaConfig } from '../io/config.js';
import { writeModelDir } from '../io/model-dir.js';
import type { CausalLM } from '../models/causal-lm.js';
import type { HostTensor } from '../tensor.js';
import type { Adapter } from './types.js';

/** Names of the tensors a PAT adapter carries in `extra`. */
export const PAT_EXTRA = {
  loraA: (module: string) => `lora.${module}.lora_A`,
  loraB: (module: string) => `lora.${module}.lora_B`,
  loraScale: (module: string) => `lora.${module}.scale`,
  hsm: (key: string, part: 'D' | 'U' | 's') => `hsm.${key}.${part}`,
  maskLogits: 'hsm.mask_logits',
} as const;

/** config.json of the pruned model: the base config with the new width (see the file comment). */
export function prunedConfigJson(cfg: LlamaConfig, dKeep: number): Record<string, unknown> {
  return {
    ...cfg.raw,
    hidden_size: dKeep,
    head_dim: cfg.headDim,
    rms_norm_eps: (cfg.rmsNormEps * cfg.hiddenSize) / dKeep,
    tie_word_embeddings: cfg.tieWordEmbeddings,
  };
}

function fail(msg: string): never {
  throw new SparsetuneError('BAD_ADAPTER', `pruned export: ${msg}`);
}

function extraF32(adapter: Adapter, name: string, shape: number[]): Float32Array {
  const t = adapter.extra?.get(name);
  if (!t) fail(`the adapter lacks the tensor "${name}"; re-export it from a PAT run on this base model`);
  if (t.dtype !== 'f32' || t.shape.join() !== shape.join()) fail(`"${name}" is ${t.dtype}[${t.shape}], expected f32[${shape}]`);
  return t.data as Float32Array;
}

/** W [out, in] += scale · B [out, r] · A [r, in], accumulated in float64 per element. */
function mergeLora(w: HostTensor<'f32'>, A: Float32Array, B: Float32Array, r: number, scale: number): Float32Array {
  const [out, inF] = w.shape;
  const res = new Float32Array(w.data.length);
  const row = new Float64Array(inF);
  for (let o = 0; o < out; o++) {
    row.fill(0);
    for (let j = 0; j < r; j++) {
      const b = B[o * r + j];
      if (b === 0) continue;
      for (let i = 0; i < inF; i++) row[i] += b * A[j * inF + i];
    }
    for (let i = 0; i < inF; i++) res[o * inF + i] = w.data[o * inF + i] + scale * row[i];
  }
  return res;
}

interface HsmFold {
  D: Float32Array;
  U: Float32Array;
  s: Float32Array;
  k: number;
}

/**
 * Rows `kept` of diag(s)(I + U D) W for W [d, n] (the stream-writing weight, stream on rows).
 * Float64 accumulation; returns [kept.length, n].
 */
function foldRows(W: Float32Array, d: number, n: number, h: HsmFold, kept: Int32Array): Float32Array {
  const DW = new Float64Array(h.k * n);
  for (let j = 0; j < h.k; j++) {
    for (let i = 0; i < d; i++) {
      const dj = h.D[j * d + i];
      if (dj === 0) continue;
      for (let c = 0; c < n; c++) DW[j * n + c] += dj * W[i * n + c];
    }
  }
  const out = new Float32Array(kept.length * n);
  const acc = new Float64Array(n);
  kept.forEach((ch, r) => {
    for (let c = 0; c < n; c++) acc[c] = W[ch * n + c];
    for (let j = 0; j < h.k; j++) {
      const u = h.U[ch * h.k + j];
      if (u === 0) continue;
      for (let c = 0; c < n; c++) acc[c] += u * DW[j * n + c];
    }
    for (let c = 0; c < n; c++) out[r * n + c] = h.s[ch] * acc[c];
  });
  return out;
}

/** Columns `kept` of E (I + U D)ᵀ diag(s) for E [V, d] (the embedding, stream on columns). */
function foldEmbedding(E: Float32Array, V: number, d: number, h: HsmFold, kept: Int32Array): Float32Array {
  const out = new Float32Array(V * kept.length);
  const De = new Float64Array(h.k);
  for (let t = 0; t < V; t++) {
    De.fill(0);
    for (let j = 0; j < h.k; j++) {
      let acc = 0;
      for (let i = 0; i < d; i++) acc += h.D[j * d + i] * E[t * d + i];
      De[j] = acc;
    }
    kept.forEach((ch, c) => {
      let acc = E[t * d + ch];
      for (let j = 0; j < h.k; j++) acc += h.U[ch * h.k + j] * De[j];
      out[t * kept.length + c] = h.s[ch] * acc;
    });
  }
  return out;
}

function keepCols(t: HostTensor<'f32'>, kept: Int32Array): HostTensor<'f32'> {
  const [rows, cols] = t.shape;
  const data = new Float32Array(rows * kept.length);
  for (let r = 0; r < rows; r++) kept.forEach((c, j) => (data[r * kept.length + j] = t.data[r * cols + c]));
  return { dtype: 'f32', shape: [rows, kept.length], data };
}

/**
 * The pruned model of a PAT adapter: its config.json and its weights (new buffers; the
 * model's weights are not touched). Llama family only.
 */
export function exportPrunedModel(model: CausalLM, adapter: Adapter): { configJson: Record<string, unknown>; weights: Map<string, HostTensor<'f32'>> } {
  if (adapter.meta.kind !== 'pruned' || !adapter.pruned) fail(`adapter "${adapter.meta.method}" is a ${adapter.meta.kind} adapter, not a pruned one`);
  if (model.config.arch !== 'llama') throw new SparsetuneError('UNSUPPORTED_MODEL', `pruned export supports the Llama family only; this model is ${model.config.modelType}`);
  const cfg = model.config;
  const d = cfg.hiddenSize;
  const kept = adapter.pruned.keptChannels;
  const dk = kept.length;
  if (dk === 0 || kept[dk - 1] >= d || kept[0] < 0) fail(`kept channels must lie in [0, ${d}) and be non-empty`);
  for (let i = 1; i < dk; i++) if (kept[i] <= kept[i - 1]) fail('kept channels must be strictly increasing');
  const configJson = { ...prunedConfigJson(cfg, dk), ...(adapter.pruned.configJson ?? {}) };
  if (configJson.hidden_size !== dk) fail(`the adapter's config says hidden_size ${String(configJson.hidden_size)} but it keeps ${dk} channels`);

  // 1. Base weights with LoRA merged (copies; the model keeps its own).
  const merged = new Map<string, HostTensor<'f32'>>();
  for (const [name, t] of model.weights) merged.set(name, { dtype: 'f32', shape: [...t.shape], data: t.data.slice() });
  for (const site of model.sites()) {
    const a = adapter.extra?.get(PAT_EXTRA.loraA(site.name));
    if (!a) continue;
    const r = a.shape[0];
    const A = extraF32(adapter, PAT_EXTRA.loraA(site.name), [r, site.inFeatures]);
    const B = extraF32(adapter, PAT_EXTRA.loraB(site.name), [site.outFeatures, r]);
    const scale = extraF32(adapter, PAT_EXTRA.loraScale(site.name), [1])[0];
    const w = merged.get(site.weightName)!;
    w.data = mergeLora(w, A, B, r, scale);
  }

  const hsmOf = (key: string): HsmFold => {
    const D = adapter.extra?.get(PAT_EXTRA.hsm(key, 'D'));
    if (!D) fail(`the adapter lacks the HSM tensors for ${key}`);
    const k = D.shape[0];
    return { D: extraF32(adapter, PAT_EXTRA.hsm(key, 'D'), [k, d]), U: extraF32(adapter, PAT_EXTRA.hsm(key, 'U'), [d, k]), s: extraF32(adapter, PAT_EXTRA.hsm(key, 's'), [d]), k };
  };

  // 2 + 3. Fold the HSMs into the stream writers and keep only the surviving channels.
  const out = new Map<string, HostTensor<'f32'>>();
  const emb = merged.get('model.embed_tokens.weight')!;
  const V = emb.shape[0];
  const embedHsm = adapter.extra?.has(PAT_EXTRA.hsm('embed', 'D'));
  if (configJson.tie_word_embeddings) {
    // Tied stays tied: one matrix, E[:, kept], for the embedding and the head.
    if (!cfg.tieWordEmbeddings) fail('the adapter asks for tied embeddings but the base model has a separate lm_head');
    if (embedHsm) fail('a tied model cannot fold an embedding HSM (it would change the head too); re-export it from a PAT run of this version');
    out.set('model.embed_tokens.weight', keepCols(emb, kept));
  } else {
    out.set('model.embed_tokens.weight', { dtype: 'f32', shape: [V, dk], data: embedHsm ? foldEmbedding(emb.data, V, d, hsmOf('embed'), kept) : keepCols(emb, kept).data });
    out.set('lm_head.weight', keepCols(merged.get(cfg.tieWordEmbeddings ? 'model.embed_tokens.weight' : 'lm_head.weight')!, kept));
  }
  const normScale = Math.sqrt(d / dk);
  const keepNorm = (name: string) => out.set(name, { dtype: 'f32', shape: [dk], data: Float32Array.from(kept, (c) => merged.get(name)!.data[c] * normScale) });
  keepNorm('model.norm.weight');
  for (let l = 0; l < cfg.numLayers; l++) {
    const p = `model.layers.${l}`;
    keepNorm(`${p}.input_layernorm.weight`);
    keepNorm(`${p}.post_attention_layernorm.weight`);
    for (const [mod, key] of [['self_attn.o_proj', `layers.${l}.attn`], ['mlp.down_proj', `layers.${l}.mlp`]] as const) {
      const h = hsmOf(key);
      const w = merged.get(`${p}.${mod}.weight`)!;
      out.set(`${p}.${mod}.weight`, { dtype: 'f32', shape: [dk, w.shape[1]], data: foldRows(w.data, d, w.shape[1], h, kept) });
      const b = merged.get(`${p}.${mod}.bias`);
      if (b) out.set(`${p}.${mod}.bias`, { dtype: 'f32', shape: [dk], data: foldRows(b.data, d, 1, h, kept) });
    }
    for (const mod of ['self_attn.q_proj', 'self_attn.k_proj', 'self_attn.v_proj', 'mlp.gate_proj', 'mlp.up_proj']) {
      out.set(`${p}.${mod}.weight`, keepCols(merged.get(`${p}.${mod}.weight`)!, kept));
      const b = merged.get(`${p}.${mod}.bias`);
      if (b) out.set(`${p}.${mod}.bias`, b);
    }
  }
  return { configJson, weights: out };
}

/** Export the pruned model and write it as a standard HF model directory (tokenizer files copied from the base). */
export async function savePrunedModel(outDir: string, model: CausalLM, adapter: Adapter, opts: { overwrite?: boolean } = {}): Promise<void> {
  const { configJson, weights } = exportPrunedModel(model, adapter);
  await writeModelDir(outDir, { configJson, weights, tokenizerFrom: model.source }, opts);
}
