/**
 * Decode sessions: batched incremental decoding with the KV cache in preallocated,
 * JS-owned buffers that onnxruntime's GroupQueryAttention (com.microsoft, CPU kernel)
 * updates in place: each token writes only its own keys and values, never copies the
 * cache, and only the last position of each row goes through the LM head. Outputs are bound
 * to preallocated tensors, so a decode step allocates nothing of the model's size.
 *
 * Where that kernel does not apply (head size not a multiple of 8, SPARSETUNE_DECODE=concat)
 * the session runs the same API over `CausalLM.step` and its `KvCache`.
 */
import { SparsetuneError } from '../errors.js';
import { Graph, type Value } from '../engine/ir.js';
import { rotary } from '../engine/nn.js';
import { concat, gather, groupQueryAttention, reshape, unsqueeze } from '../engine/ops/index.js';
import type { CompiledGraph } from '../engine/runtime.js';
import type { HostTensor } from '../tensor.js';
import type { CausalLM, KvCache } from './causal-lm.js';
import type { ModelHooks } from './hooks.js';

export interface DecodeSessionOptions {
  hooks?: ModelHooks;
  /** Extra graph feeds (adapter parameters), fed on every run. */
  extraFeeds?: Record<string, HostTensor>;
  /** Initial cache capacity in positions per row (default 256); the cache doubles when a row outgrows it. */
  capacity?: number;
  /** 'auto' (default): in-place cache where supported; 'concat': the `CausalLM.step` path. */
  mode?: 'auto' | 'shared' | 'concat';
}

/** Per model (and its weights' storage: `setWeightsDtype` changes the graph), per hook set. */
const compiledByModel = new WeakMap<CausalLM, { dtype: string; graphs: WeakMap<ModelHooks, Promise<CompiledGraph>> }>();
const NO_HOOKS: ModelHooks = {};

/** Whether the in-place (GroupQueryAttention) path serves this model. */
export function sharedCacheSupported(model: CausalLM): boolean {
  const { headDim, heads, kvHeads } = model.arch.kvShape(model.config);
  return headDim % 8 === 0 && heads % kvHeads === 0;
}

/** The decode graph: logits of `logit_rows` only, caches in and out through GroupQueryAttention. */
function decodeGraph(model: CausalLM, hooks: ModelHooks): Promise<CompiledGraph> {
  let perModel = compiledByModel.get(model);
  if (!perModel || perModel.dtype !== model.weightsDtype) compiledByModel.set(model, (perModel = { dtype: model.weightsDtype, graphs: new WeakMap() }));
  let p = perModel.graphs.get(hooks);
  if (p) return p;
  p = model.runtime.compile(buildDecodeGraph(model, hooks));
  perModel.graphs.set(hooks, p);
  return p;
}

/**
 * The decode graph, not compiled: inputs input_ids, position_ids, seqlens_k, total_length,
 * logit_rows, rope_cos/rope_sin (RoPE models), past_k_l/past_v_l [batch, kvHeads, capacity,
 * headDim]; outputs logits [rows, vocab] and present_k_l/present_v_l (bind them to the past
 * buffers: GroupQueryAttention updates the cache in place).
 */
export function buildDecodeGraph(model: CausalLM, hooks: ModelHooks = NO_HOOKS): Graph {
  const { layers, kvHeads, headDim, heads } = model.arch.kvShape(model.config);
  const g = new Graph(`${model.config.modelType}-decode`);
  g.inference = true;
  const ids = g.input('input_ids', 'i64', ['batch', 'seq']);
  const positions = g.input('position_ids', 'i64', ['batch', 'seq']);
  const mask = g.input('attention_mask', 'f32', ['batch', 1, 'seq', 'seq']); // unused by `attend`
  const seqlens = g.input('seqlens_k', 'i32', ['batch']);
  const total = g.input('total_length', 'i32', []);
  const rows = g.input('logit_rows', 'i64', ['batch']);
  const rope = model.arch.ropeInvFreq ? { cos: g.input('rope_cos', 'f32', ['capacity', headDim / 2]), sin: g.input('rope_sin', 'f32', ['capacity', headDim / 2]) } : undefined;
  const past = Array.from({ length: layers }, (_, l) => ({
    k: g.input(`past_k_${l}`, 'f32', ['batch', kvHeads, 'capacity', headDim]),
    v: g.input(`past_v_${l}`, 'f32', ['batch', kvHeads, 'capacity', headDim]),
  }));
  const present: { k: Value; v: Value }[] = [];
  // The kernel's own rotary needs head sizes that are multiples of 16; else rotate in the graph.
  const kernelRotary = headDim % 16 === 0;
  let tables: { cos: Value; sin: Value } | undefined;
  const rotate = (x: Value, n: number): Value => {
    tables ??= (() => {
      const half = (t: Value) => gather(t, positions); // [batch, seq, hd/2]
      const full = (t: Value) => unsqueeze(concat([half(t), half(t)], -1), [2]); // [batch, seq, 1, hd]
      return { cos: full(rope!.cos), sin: full(rope!.sin) };
    })();
    const [B, S] = x.shape;
    return reshape(rotary(reshape(x, [B, S, n, headDim]), tables.cos, tables.sin), [B, S, n * headDim]);
  };
  const attend = (l: number, q: Value, k: Value, v: Value, useRope: boolean): Value => {
    if (useRope && !rope) throw new SparsetuneError('BAD_GRAPH', `${model.config.modelType}: rotary attention without RoPE tables`);
    if (useRope && !kernelRotary) {
      q = rotate(q, heads);
      k = rotate(k, kvHeads);
    }
    const [o, pk, pv] = groupQueryAttention(q, k, v, past[l].k, past[l].v, seqlens, total, {
      numHeads: heads,
      kvNumHeads: kvHeads,
      scale: 1 / Math.sqrt(headDim),
      rotary: useRope && kernelRotary ? rope : undefined,
    });
    present[l] = { k: pk, v: pv };
    return o;
  };
  const res = model.forward(g, { ids, positions, mask, attend, logitRows: rows }, hooks);
  g.output('logits', res.logits);
  present.forEach(({ k, v }, l) => {
    g.output(`present_k_${l}`, k);
    g.output(`present_v_${l}`, v);
  });
  return g;
}

/** cos/sin of position x inverse frequency, [capacity, headDim/2], rounded like the f32 graph. */
export function ropeTables(inv: Float32Array, capacity: number): { cos: HostTensor<'f32'>; sin: HostTensor<'f32'> } {
  const half = inv.length;
  const cos = new Float32Array(capacity * half);
  const sin = new Float32Array(capacity * half);
  for (let p = 0; p < capacity; p++) {
    for (let i = 0; i < half; i++) {
      const a = Math.fround(p * inv[i]);
      cos[p * half + i] = Math.cos(a);
      sin[p * half + i] = Math.sin(a);
    }
  }
  return { cos: { dtype: 'f32', shape: [capacity, half], data: cos }, sin: { dtype: 'f32', shape: [capacity, half], data: sin } };
}

/**
 * Incremental decoding of `batch` rows. `prefill` runs each row's prompt (ragged lengths
 * allowed) from an empty cache; `next` appends one token per row. Both return the logits of
 * each row's newest position, [batch, vocab], in a buffer the session reuses: read it
 * before the next call.
 */
export class DecodeSession {
  /** Positions held in the cache, per row. */
  readonly lengths: number[];
  readonly mode: 'shared' | 'concat';
  private capacity: number;
  private cache: { k: HostTensor<'f32'>[]; v: HostTensor<'f32'>[] } = { k: [], v: [] };
  private rope: { cos: HostTensor<'f32'>; sin: HostTensor<'f32'> } | null = null;
  private readonly logits: HostTensor<'f32'>;
  // concat mode: the step API's cache and attention rows
  private kv: KvCache | null = null;
  private attention: number[][] = [];

  private constructor(
    readonly model: CausalLM,
    readonly batch: number,
    private readonly compiled: CompiledGraph | null,
    private readonly opts: DecodeSessionOptions,
  ) {
    this.mode = compiled ? 'shared' : 'concat';
    this.lengths = new Array<number>(batch).fill(0);
    this.capacity = Math.max(1, opts.capacity ?? 256);
    this.logits = { dtype: 'f32', shape: [batch, model.vocabSize], data: new Float32Array(batch * model.vocabSize) };
  }

  /** Open a session for `batch` rows (compiles the decode graph once per model and hook set). */
  static async open(model: CausalLM, batch: number, opts: DecodeSessionOptions = {}): Promise<DecodeSession> {
    if (!Number.isInteger(batch) || batch < 1) throw new SparsetuneError('BAD_ARGUMENT', `decode batch must be a positive integer, got ${batch}`);
    const env = process.env.SPARSETUNE_DECODE;
    const mode = opts.mode ?? (env === 'concat' || env === 'shared' ? env : 'auto');
    if (mode === 'shared' && !sharedCacheSupported(model)) {
      throw new SparsetuneError('BAD_ARGUMENT', `the in-place KV cache needs a head size that is a multiple of 8 (this model: ${model.arch.kvShape(model.config).headDim}); use mode 'auto'`);
    }
    const shared = mode !== 'concat' && sharedCacheSupported(model);
    const compiled = shared ? await decodeGraph(model, opts.hooks ?? NO_HOOKS) : null;
    return new DecodeSession(model, batch, compiled, opts);
  }

  private checkTokens(rows: readonly (readonly number[])[]): void {
    const V = this.model.vocabSize;
    for (const row of rows) for (const t of row) {
      if (!Number.isInteger(t) || t < 0 || t >= V) throw new SparsetuneError('BAD_ARGUMENT', `token id ${t} is outside the vocabulary (0..${V - 1})`);
    }
  }

  /** Make room for `need` positions per row (doubling; existing rows are copied once). */
  private reserve(need: number): void {
    const maxPos = this.model.config.maxPositionEmbeddings;
    if (!this.model.arch.ropeInvFreq && need > maxPos) {
      throw new SparsetuneError('BAD_ARGUMENT', `decode: ${need} positions exceed the model's ${maxPos} learned positions; shorten the prompt or max new tokens`);
    }
    if (this.cache.k.length && need <= this.capacity) return;
    const old = this.cache;
    const oldCap = this.capacity;
    while (this.capacity < need) this.capacity *= 2;
    const { layers, kvHeads, headDim } = this.model.arch.kvShape(this.model.config);
    const B = this.batch;
    const make = (prev?: HostTensor<'f32'>): HostTensor<'f32'> => {
      const data = new Float32Array(B * kvHeads * this.capacity * headDim);
      if (prev) {
        for (let r = 0; r < B * kvHeads; r++) data.set(prev.data.subarray(r * oldCap * headDim, (r + 1) * oldCap * headDim), r * this.capacity * headDim);
      }
      return { dtype: 'f32', shape: [B, kvHeads, this.capacity, headDim], data };
    };
    this.cache = { k: Array.from({ length: layers }, (_, l) => make(old.k[l])), v: Array.from({ length: layers }, (_, l) => make(old.v[l])) };
    const inv = this.model.arch.ropeInvFreq?.(this.model.config);
    this.rope = inv ? ropeTables(inv, this.capacity) : null;
  }

  /** Run each row's prompt from an empty cache; returns the logits at each prompt's last token. */
  async prefill(prompts: readonly (readonly number[])[]): Promise<HostTensor<'f32'>> {
    if (prompts.length !== this.batch) throw new SparsetuneError('BAD_ARGUMENT', `prefill: ${prompts.length} prompts for a session of ${this.batch} rows`);
    if (prompts.some((p) => p.length === 0)) throw new SparsetuneError('BAD_ARGUMENT', 'prefill: every prompt needs at least one token');
    this.checkTokens(prompts);
    const S = Math.max(...prompts.map((p) => p.length));
    if (!this.compiled) return this.prefillConcat(prompts, S);
    this.reserve(S);
    const B = this.batch;
    const ids = new BigInt64Array(B * S);
    const pos = new BigInt64Array(B * S);
    const seqlens = new Int32Array(B);
    const rows = new BigInt64Array(B);
    prompts.forEach((p, b) => {
      for (let s = 0; s < S; s++) {
        ids[b * S + s] = BigInt(s < p.length ? p[s] : 0); // right padding: never attended
        pos[b * S + s] = BigInt(s);
      }
      seqlens[b] = p.length - 1;
      rows[b] = BigInt(b * S + p.length - 1);
      this.lengths[b] = p.length;
    });
    return this.run(ids, pos, [B, S], seqlens, S, rows);
  }

  /** Append one token per row; returns the logits at the new positions. */
  async next(tokens: readonly number[]): Promise<HostTensor<'f32'>> {
    if (tokens.length !== this.batch) throw new SparsetuneError('BAD_ARGUMENT', `next: ${tokens.length} tokens for a session of ${this.batch} rows`);
    if (this.lengths.some((n) => n === 0)) throw new SparsetuneError('BAD_ARGUMENT', 'next: call prefill first');
    this.checkTokens([tokens]);
    if (!this.compiled) return this.nextConcat(tokens);
    const B = this.batch;
    const total = Math.max(...this.lengths) + 1;
    this.reserve(total);
    const ids = new BigInt64Array(B);
    const pos = new BigInt64Array(B);
    const seqlens = new Int32Array(B);
    const rows = new BigInt64Array(B);
    for (let b = 0; b < B; b++) {
      ids[b] = BigInt(tokens[b]);
      pos[b] = BigInt(this.lengths[b]);
      seqlens[b] = this.lengths[b];
      rows[b] = BigInt(b);
      this.lengths[b]++;
    }
    return this.run(ids, pos, [B, 1], seqlens, total, rows);
  }

  private async run(ids: BigInt64Array, pos: BigInt64Array, shape: number[], seqlens: Int32Array, total: number, rows: BigInt64Array): Promise<HostTensor<'f32'>> {
    const compiled = this.compiled!;
    const data: Record<string, HostTensor> = {
      ...this.opts.extraFeeds,
      input_ids: { dtype: 'i64', shape, data: ids },
      position_ids: { dtype: 'i64', shape, data: pos },
      seqlens_k: { dtype: 'i32', shape: [this.batch], data: seqlens },
      total_length: { dtype: 'i32', shape: [], data: Int32Array.of(total) },
      logit_rows: { dtype: 'i64', shape: [this.batch], data: rows },
    };
    if (this.rope) {
      data.rope_cos = this.rope.cos;
      data.rope_sin = this.rope.sin;
    }
    const outputs: Record<string, HostTensor> = { logits: this.logits };
    this.cache.k.forEach((k, l) => {
      data[`past_k_${l}`] = k;
      data[`past_v_${l}`] = this.cache.v[l];
      outputs[`present_k_${l}`] = k;
      outputs[`present_v_${l}`] = this.cache.v[l];
    });
    await compiled.runInto(this.model.feeds(compiled, data), outputs);
    return this.logits;
  }

  // ---- concat mode: the KvCache step path (left-padded rows) ----

  private lastLogits(out: HostTensor<'f32'>): HostTensor<'f32'> {
    const [B, S, V] = out.shape;
    for (let b = 0; b < B; b++) this.logits.data.set(out.data.subarray((b * S + S - 1) * V, (b * S + S) * V), b * V);
    return this.logits;
  }

  private async prefillConcat(prompts: readonly (readonly number[])[], L: number): Promise<HostTensor<'f32'>> {
    const padId = this.model.tokenizer?.padId ?? 0;
    const ids = prompts.map((p) => [...new Array<number>(L - p.length).fill(padId), ...p]);
    this.attention = prompts.map((p) => [...new Array<number>(L - p.length).fill(0), ...p.map(() => 1)]);
    const out = await this.model.step(ids, this.attention, this.model.emptyCache(this.batch), { hooks: this.opts.hooks, extraFeeds: this.opts.extraFeeds });
    this.kv = out.cache;
    prompts.forEach((p, b) => (this.lengths[b] = p.length));
    return this.lastLogits(out.logits);
  }

  private async nextConcat(tokens: readonly number[]): Promise<HostTensor<'f32'>> {
    for (const a of this.attention) a.push(1);
    const out = await this.model.step(
      tokens.map((t) => [t]),
      this.attention,
      this.kv!,
      { hooks: this.opts.hooks, extraFeeds: this.opts.extraFeeds },
    );
    this.kv = out.cache;
    for (let b = 0; b < this.batch; b++) this.lengths[b]++;
    return this.lastLogits(out.logits);
  }
}
