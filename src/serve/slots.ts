/**
 * Continuous batching on the in-place KV cache of the decode graph (models/decode.ts): a
 * lane's cache is one preallocated buffer per layer, [rows, kvHeads, capacity, headDim],
 * that onnxruntime's GroupQueryAttention updates in place. Each row keeps its own length
 * (rows are ragged, no padding, no attention mask); active rows sit in slots 0..n-1, so a
 * run over rows [first, first + k) feeds contiguous views of the buffers. Rows join by
 * prefilling straight into free slots at the end, and leave by having the last row moved
 * into their slot. Nothing of the cache is copied per token. onnxruntime's CPU kernel works
 * over the whole capacity, so the capacity starts small, doubles as rows grow, and starts
 * small again when the batch empties.
 */
import { SparsetuneError } from '../errors.js';
import type { CompiledGraph } from '../engine/runtime.js';
import type { CausalLM } from '../models/causal-lm.js';
import { buildDecodeGraph, ropeTables, sharedCacheSupported } from '../models/decode.js';
import type { HostTensor } from '../tensor.js';
import type { BatchRunner, LaneBatch } from './batch.js';
import type { Sequence } from './sequence.js';

/** The inputs of one decode-graph run over slots [first, first + rows). */
export interface SlotRun {
  first: number;
  rows: number;
  /** New tokens per row (1 when decoding). */
  seq: number;
  feeds: Record<string, HostTensor>;
  /** The cache views the run writes (present_k_l / present_v_l), [rows, kvHeads, capacity, headDim]. */
  present: Record<string, HostTensor<'f32'>>;
  /** Token ids [rows][seq], for token-embedding deltas. */
  ids: readonly (readonly number[])[];
}

export class SlotCache {
  /** Active rows (slots 0..n-1). */
  n = 0;
  /** Positions held per slot. */
  lengths: number[] = [];
  private rowCap: number;
  private posCap: number;
  private k: Float32Array[] = [];
  private v: Float32Array[] = [];
  private rope: { cos: HostTensor<'f32'>; sin: HostTensor<'f32'> } | null = null;
  private readonly layers: number;
  private readonly kvHeads: number;
  private readonly headDim: number;

  constructor(private readonly model: CausalLM, rows = 4, positions = 16) {
    if (!sharedCacheSupported(model)) throw new SparsetuneError('BAD_ARGUMENT', 'SlotCache: this model cannot use the in-place KV cache (head size not a multiple of 8)');
    ({ layers: this.layers, kvHeads: this.kvHeads, headDim: this.headDim } = model.arch.kvShape(model.config));
    this.rowCap = Math.max(1, rows);
    this.posCap = Math.max(1, positions);
    this.allocate(this.rowCap, this.posCap);
  }

  /** Bytes held by the cache buffers. */
  get bytes(): number {
    return 8 * this.layers * this.rowCap * this.rowStride;
  }

  private get rowStride(): number {
    return this.kvHeads * this.posCap * this.headDim;
  }

  private allocate(rowCap: number, posCap: number): void {
    const old = { k: this.k, v: this.v, stride: this.rowStride, posCap: this.posCap };
    const stride = this.kvHeads * posCap * this.headDim;
    const copy = (prev: Float32Array | undefined): Float32Array => {
      const data = new Float32Array(rowCap * stride);
      if (prev) {
        for (let r = 0; r < this.n; r++) {
          for (let h = 0; h < this.kvHeads; h++) {
            const from = (r * this.kvHeads + h) * old.posCap * this.headDim;
            data.set(prev.subarray(from, from + old.posCap * this.headDim), (r * this.kvHeads + h) * posCap * this.headDim);
          }
        }
      }
      return data;
    };
    this.k = Array.from({ length: this.layers }, (_, l) => copy(old.k[l]));
    this.v = Array.from({ length: this.layers }, (_, l) => copy(old.v[l]));
    this.rowCap = rowCap;
    this.posCap = posCap;
    const inv = this.model.arch.ropeInvFreq?.(this.model.config);
    this.rope = inv ? ropeTables(inv, posCap) : null;
  }

  /** Make room for `rows` slots of `positions` positions each (doubling, existing rows copied once). */
  private reserve(rows: number, positions: number): void {
    if (rows <= this.rowCap && positions <= this.posCap) return;
    const maxPos = this.model.config.maxPositionEmbeddings;
    if (!this.model.arch.ropeInvFreq && positions > maxPos) {
      throw new SparsetuneError('BAD_ARGUMENT', `${positions} positions exceed the model's ${maxPos} learned positions; shorten the prompt or max_tokens`);
    }
    let r = this.rowCap;
    let p = this.posCap;
    while (r < rows) r *= 2;
    while (p < positions) p *= 2;
    this.allocate(r, p);
  }

  private run(first: number, rows: number, seq: number, ids: number[][], positions: (b: number, s: number) => number, seqlens: Int32Array, total: number): SlotRun {
    const n = rows * seq;
    const idData = new BigInt64Array(n);
    const posData = new BigInt64Array(n);
    const logitRows = new BigInt64Array(rows);
    for (let b = 0; b < rows; b++) {
      for (let s = 0; s < seq; s++) {
        idData[b * seq + s] = BigInt(ids[b][s]);
        posData[b * seq + s] = BigInt(positions(b, s));
      }
      logitRows[b] = BigInt(b * seq + seq - 1);
    }
    const feeds: Record<string, HostTensor> = {
      input_ids: { dtype: 'i64', shape: [rows, seq], data: idData },
      position_ids: { dtype: 'i64', shape: [rows, seq], data: posData },
      seqlens_k: { dtype: 'i32', shape: [rows], data: seqlens },
      total_length: { dtype: 'i32', shape: [], data: Int32Array.of(total) },
      logit_rows: { dtype: 'i64', shape: [rows], data: logitRows },
    };
    if (this.rope) {
      feeds.rope_cos = this.rope.cos;
      feeds.rope_sin = this.rope.sin;
    }
    const present: Record<string, HostTensor<'f32'>> = {};
    const stride = this.rowStride;
    const view = (buf: Float32Array): HostTensor<'f32'> => ({ dtype: 'f32', shape: [rows, this.kvHeads, this.posCap, this.headDim], data: buf.subarray(first * stride, (first + rows) * stride) });
    for (let l = 0; l < this.layers; l++) {
      feeds[`past_k_${l}`] = present[`present_k_${l}`] = view(this.k[l]);
      feeds[`past_v_${l}`] = present[`present_v_${l}`] = view(this.v[l]);
    }
    return { first, rows, seq, feeds, present, ids };
  }

  /**
   * The run that prefills `prompts` (all of one length) into slots n..n+k-1. Call
   * `commitPrefill` after it ran to make them active.
   */
  prefillRun(prompts: readonly (readonly number[])[]): SlotRun {
    const k = prompts.length;
    const S = prompts[0].length;
    if (k === 0 || S === 0 || prompts.some((p) => p.length !== S)) throw new SparsetuneError('BAD_ARGUMENT', 'prefill: one or more prompts of one length');
    // Attention's cost grows with the cache capacity: start small again once the batch is empty.
    if (this.n === 0 && this.posCap > 2 * S) this.allocate(this.rowCap, Math.max(16, 2 ** Math.ceil(Math.log2(S))));
    this.reserve(this.n + k, S);
    return this.run(this.n, k, S, prompts.map((p) => [...p]), (_, s) => s, new Int32Array(k).fill(S - 1), S);
  }

  /** Make the rows of a finished prefill run active. */
  commitPrefill(run: SlotRun): void {
    for (let b = 0; b < run.rows; b++) this.lengths[run.first + b] = run.seq;
    this.n += run.rows;
  }

  /** The run that appends `tokens[i]` to active row i. Call `commitDecode` after it ran. */
  decodeRun(tokens: readonly number[]): SlotRun {
    if (tokens.length !== this.n) throw new SparsetuneError('BAD_ARGUMENT', `decode: ${tokens.length} tokens for ${this.n} rows`);
    const total = Math.max(...this.lengths.slice(0, this.n)) + 1;
    this.reserve(this.n, total);
    const seqlens = Int32Array.from(this.lengths.slice(0, this.n));
    return this.run(0, this.n, 1, tokens.map((t) => [t]), (b) => this.lengths[b], seqlens, total);
  }

  commitDecode(): void {
    for (let b = 0; b < this.n; b++) this.lengths[b]++;
  }

  /** Drop active row `i`: the last row moves into its slot. */
  remove(i: number): void {
    const last = this.n - 1;
    if (i < 0 || i > last) throw new SparsetuneError('BAD_ARGUMENT', `remove: no active row ${i}`);
    if (i !== last) {
      const stride = this.rowStride;
      for (const buf of [...this.k, ...this.v]) buf.copyWithin(i * stride, last * stride, (last + 1) * stride);
      this.lengths[i] = this.lengths[last];
    }
    this.n--;
  }
}

/** The decode graph without hooks, and runs of it with the cache bound in place. */
export class DenseDecoder {
  private compiled: Promise<CompiledGraph> | null = null;
  private logits = new Float32Array(0);

  constructor(readonly model: CausalLM) {}

  /** Run `run` through the plain decode graph; returns its logits [rows, vocab] (valid until the next run). */
  async run(run: SlotRun): Promise<HostTensor<'f32'>> {
    this.compiled ??= this.model.runtime.compile(buildDecodeGraph(this.model));
    const compiled = await this.compiled;
    const V = this.model.vocabSize;
    if (this.logits.length < run.rows * V) this.logits = new Float32Array(run.rows * V);
    const logits: HostTensor<'f32'> = { dtype: 'f32', shape: [run.rows, V], data: this.logits.subarray(0, run.rows * V) };
    await compiled.runInto(this.model.feeds(compiled, run.feeds), { logits, ...run.present });
    return logits;
  }
}

/**
 * The running batch of a lane on a SlotCache: its sequences (sequence i holds slot i) and
 * the runs that feed them. `prefill` admits sequences, `decode` steps all of them; both
 * take the lane's runner (dense, fused, or with unfused rows).
 */
export class SlotBatch implements LaneBatch {
  private rows: Sequence[] = [];
  readonly cache: SlotCache;

  constructor(model: CausalLM) {
    this.cache = new SlotCache(model);
  }

  get size(): number {
    return this.rows.length;
  }

  get sequences(): readonly Sequence[] {
    return this.rows;
  }

  /** Bytes of KV cache held. */
  get bytes(): number {
    return this.cache.bytes;
  }

  /**
   * Prefill `seqs` (prompts of one length) and add them; each gets its first token from the
   * logits `runModel` returns. Sequences that end right away leave again.
   */
  async prefill(seqs: readonly Sequence[], runner: BatchRunner): Promise<void> {
    const run = this.cache.prefillRun(seqs.map((s) => s.spec.prompt));
    const logits = await runner.slots(run, seqs);
    this.cache.commitPrefill(run);
    this.rows.push(...seqs);
    const V = logits.shape[1];
    seqs.forEach((s, b) => {
      if (!s.done) s.accept(logits.data.subarray(b * V, (b + 1) * V));
    });
    this.compact();
  }

  /** One decode step of every row; returns the number of tokens produced. */
  async decode(runner: BatchRunner): Promise<number> {
    this.compact();
    if (this.rows.length === 0) return 0;
    const rows = [...this.rows];
    const run = this.cache.decodeRun(rows.map((s) => s.pending!));
    const logits = await runner.slots(run, rows);
    this.cache.commitDecode();
    const V = logits.shape[1];
    let produced = 0;
    rows.forEach((s, b) => {
      if (s.done) return; // cancelled while the step ran
      s.accept(logits.data.subarray(b * V, (b + 1) * V));
      produced++;
    });
    this.compact();
    return produced;
  }

  /** Drop finished rows (the last row moves into each freed slot). */
  compact(): void {
    for (let i = this.rows.length - 1; i >= 0; i--) {
      if (!this.rows[i].done) continue;
      this.cache.remove(i);
      const last = this.rows.pop()!;
      if (i < this.rows.length) this.rows[i] = last;
    }
  }

  /** End every row (e.g. after a failed model run). */
  abortAll(reason: 'cancelled' | 'error', message?: string): void {
    for (const s of this.rows) s.abort(reason, message);
    this.compact();
  }
}
