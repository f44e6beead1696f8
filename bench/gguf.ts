/**
 * A minimal GGUF (v3) writer for Llama-family models held by a CausalLM, so the
 * benchmarks can run the very same weights in llama.cpp (through node-llama-cpp). F32
 * tensors only. The vocabulary is a synthetic SentencePiece one of the model's size
 * (<unk>, <s>, </s>, 256 byte tokens, then placeholders): the benchmarks feed token ids.
 *
 * HF stores q/k projections for rotate-half RoPE; llama.cpp's `llama` architecture rotates
 * adjacent pairs, so q_proj/k_proj rows are permuted per head, as HF's converter does
 * (`qwen2` uses the rotate-half form in llama.cpp and needs no permutation).
 */
import { closeSync, openSync, renameSync, writeSync } from 'node:fs';
import type { CausalLM } from '../src/models/causal-lm.js';
import type { LlamaConfig } from '../src/io/config.js';

const ALIGN = 32;
const T = { u32: 4, i32: 5, f32: 6, bool: 7, string: 8, array: 9, u64: 10 } as const;

class Buf {
  private parts: Buffer[] = [];
  size = 0;
  push(b: Buffer): void {
    this.parts.push(b);
    this.size += b.length;
  }
  u32(v: number): void {
    const b = Buffer.alloc(4);
    b.writeUInt32LE(v);
    this.push(b);
  }
  i32(v: number): void {
    const b = Buffer.alloc(4);
    b.writeInt32LE(v);
    this.push(b);
  }
  u64(v: number): void {
    const b = Buffer.alloc(8);
    b.writeBigUInt64LE(BigInt(v));
    this.push(b);
  }
  f32(v: number): void {
    const b = Buffer.alloc(4);
    b.writeFloatLE(v);
    this.push(b);
  }
  str(s: string): void {
    const b = Buffer.from(s, 'utf8');
    this.u64(b.length);
    this.push(b);
  }
  concat(): Buffer {
    return Buffer.concat(this.parts);
  }
}

type Meta = [string, 'u32' | 'f32' | 'string', number | string] | [string, 'strings', string[]] | [string, 'f32s' | 'i32s', number[]];

function writeMeta(b: Buf, [key, type, value]: Meta): void {
  b.str(key);
  if (type === 'u32') {
    b.u32(T.u32);
    b.u32(value as number);
  } else if (type === 'f32') {
    b.u32(T.f32);
    b.f32(value as number);
  } else if (type === 'string') {
    b.u32(T.string);
    b.str(value as string);
  } else {
    const arr = value as (string | number)[];
    b.u32(T.array);
    b.u32(type === 'strings' ? T.string : type === 'f32s' ? T.f32 : T.i32);
    b.u64(arr.length);
    for (const v of arr) {
      if (type === 'strings') b.str(v as string);
      else if (type === 'f32s') b.f32(v as number);
      else b.i32(v as number);
    }
  }
}

/** Rows of a [heads*hd, in] projection reordered from rotate-half to adjacent-pair RoPE. */
function permuteRope(w: Float32Array, heads: number, rows: number, cols: number): Float32Array {
  const hd = rows / heads;
  const out = new Float32Array(w.length);
  for (let h = 0; h < heads; h++) {
    for (let j = 0; j < 2; j++) {
      for (let i = 0; i < hd / 2; i++) {
        const src = h * hd + j * (hd / 2) + i;
        const dst = h * hd + i * 2 + j;
        out.set(w.subarray(src * cols, (src + 1) * cols), dst * cols);
      }
    }
  }
  return out;
}

/** Write `model` (Llama / Qwen2 architecture) as an F32 GGUF file at `path` (temp file + rename). */
export function writeGguf(model: CausalLM, path: string): void {
  if (model.config.arch !== 'llama') throw new Error(`writeGguf: only the Llama family is supported, not ${model.config.modelType}`);
  const cfg = model.config as LlamaConfig;
  const arch = cfg.modelType === 'qwen2' ? 'qwen2' : 'llama';
  const V = cfg.vocabSize;
  const tokens: string[] = ['<unk>', '<s>', '</s>'];
  const types: number[] = [2, 3, 3];
  for (let i = 0; i < 256 && tokens.length < V; i++) {
    tokens.push(`<0x${i.toString(16).toUpperCase().padStart(2, '0')}>`);
    types.push(6);
  }
  while (tokens.length < V) {
    tokens.push(`\u2581t${tokens.length}`);
    types.push(1);
  }
  const scores = tokens.map((_, i) => -i);
  const meta: Meta[] = [
    ['general.architecture', 'string', arch],
    ['general.name', 'string', `sparsetune-${cfg.modelType}`],
    ['general.file_type', 'u32', 0],
    [`${arch}.context_length`, 'u32', cfg.maxPositionEmbeddings],
    [`${arch}.embedding_length`, 'u32', cfg.hiddenSize],
    [`${arch}.block_count`, 'u32', cfg.numLayers],
    [`${arch}.feed_forward_length`, 'u32', cfg.intermediateSize],
    [`${arch}.attention.head_count`, 'u32', cfg.numHeads],
    [`${arch}.attention.head_count_kv`, 'u32', cfg.numKvHeads],
    [`${arch}.attention.key_length`, 'u32', cfg.headDim],
    [`${arch}.attention.value_length`, 'u32', cfg.headDim],
    [`${arch}.rope.dimension_count`, 'u32', cfg.headDim],
    [`${arch}.rope.freq_base`, 'f32', cfg.ropeTheta],
    [`${arch}.attention.layer_norm_rms_epsilon`, 'f32', cfg.rmsNormEps],
    [`${arch}.vocab_size`, 'u32', V],
    ['tokenizer.ggml.model', 'string', 'llama'],
    ['tokenizer.ggml.tokens', 'strings', tokens],
    ['tokenizer.ggml.scores', 'f32s', scores],
    ['tokenizer.ggml.token_type', 'i32s', types],
    ['tokenizer.ggml.unknown_token_id', 'u32', 0],
    ['tokenizer.ggml.bos_token_id', 'u32', 1],
    ['tokenizer.ggml.eos_token_id', 'u32', 2],
  ];
  if (cfg.ropeScaling) throw new Error('writeGguf: RoPE scaling is not written; use a config without rope_scaling');

  const tensors: { name: string; shape: number[]; data: Float32Array }[] = [];
  const w = (name: string) => model.weights.get(name)!;
  const add = (name: string, hf: string, permuteHeads?: number) => {
    const t = w(hf);
    const data = permuteHeads && arch === 'llama' ? permuteRope(t.data, permuteHeads, t.shape[0], t.shape[1]) : t.data;
    tensors.push({ name, shape: t.shape, data });
  };
  add('token_embd.weight', 'model.embed_tokens.weight');
  add('output_norm.weight', 'model.norm.weight');
  if (!cfg.tieWordEmbeddings) add('output.weight', 'lm_head.weight');
  for (let l = 0; l < cfg.numLayers; l++) {
    const p = `model.layers.${l}`;
    add(`blk.${l}.attn_norm.weight`, `${p}.input_layernorm.weight`);
    add(`blk.${l}.attn_q.weight`, `${p}.self_attn.q_proj.weight`, cfg.numHeads);
    add(`blk.${l}.attn_k.weight`, `${p}.self_attn.k_proj.weight`, cfg.numKvHeads);
    add(`blk.${l}.attn_v.weight`, `${p}.self_attn.v_proj.weight`);
    if (cfg.attentionBias) {
      for (const [g, hf] of [['q', 'q_proj'], ['k', 'k_proj'], ['v', 'v_proj']] as const) {
        const b = w(`${p}.self_attn.${hf}.bias`);
        if (arch === 'llama' && g !== 'v') throw new Error('writeGguf: q/k biases need the qwen2 architecture');
        tensors.push({ name: `blk.${l}.attn_${g}.bias`, shape: b.shape, data: b.data });
      }
    }
    add(`blk.${l}.attn_output.weight`, `${p}.self_attn.o_proj.weight`);
    add(`blk.${l}.ffn_norm.weight`, `${p}.post_attention_layernorm.weight`);
    add(`blk.${l}.ffn_gate.weight`, `${p}.mlp.gate_proj.weight`);
    add(`blk.${l}.ffn_up.weight`, `${p}.mlp.up_proj.weight`);
    add(`blk.${l}.ffn_down.weight`, `${p}.mlp.down_proj.weight`);
  }

  const head = new Buf();
  head.push(Buffer.from('GGUF', 'ascii'));
  head.u32(3);
  head.u64(tensors.length);
  head.u64(meta.length);
  for (const m of meta) writeMeta(head, m);
  let offset = 0;
  const offsets: number[] = [];
  for (const t of tensors) {
    head.str(t.name);
    head.u32(t.shape.length);
    for (const d of [...t.shape].reverse()) head.u64(d); // ggml order: fastest dimension first
    head.u32(0); // GGML_TYPE_F32
    head.u64(offset);
    offsets.push(offset);
    offset += Math.ceil((t.data.byteLength) / ALIGN) * ALIGN;
  }
  const tmp = `${path}.tmp`;
  const fd = openSync(tmp, 'w');
  try {
    const h = head.concat();
    writeSync(fd, h);
    let pos = h.length;
    const pad = (n: number) => {
      if (n > 0) writeSync(fd, Buffer.alloc(n));
      pos += n;
    };
    pad((ALIGN - (pos % ALIGN)) % ALIGN);
    const base = pos;
    tensors.forEach((t, i) => {
      pad(base + offsets[i] - pos);
      writeSync(fd, Buffer.from(t.data.buffer, t.data.byteOffset, t.data.byteLength));
      pos += t.data.byteLength;
    });
  } finally {
    closeSync(fd);
  }
  renameSync(tmp, path);
}
