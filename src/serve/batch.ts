/**
 * The running batch of one adapter set: its sequences and their shared, right-aligned KV
 * cache. Sequences join after their own prefill and leave when done; each decode step runs
 * every row's pending token through the model at once.
 */
import type { KvCache } from '../models/causal-lm.js';
import type { HostTensor } from '../tensor.js';
import { concatRows, selectRows, type RowCache } from './kv.js';
import type { Sequence } from './sequence.js';
import type { SlotRun } from './slots.js';

/** How a lane runs the model for a batch: on the in-place cache (slots.ts) or the KvCache step path. */
export interface BatchRunner {
  /** A decode-graph run; returns the last-position logits [rows, vocab]. */
  slots(run: SlotRun, rows: readonly Sequence[]): Promise<HostTensor<'f32'>>;
  /** A `CausalLM.step`; returns logits [B, S, vocab] and the extended cache. */
  concat(ids: number[][], attention: number[][], cache: KvCache, rows: readonly Sequence[]): Promise<{ logits: HostTensor<'f32'>; cache: KvCache }>;
}

/** A lane's running batch, whichever cache it uses. */
export interface LaneBatch {
  readonly size: number;
  readonly sequences: readonly Sequence[];
  /** Prefill `seqs` (prompts of one length), give each its first token, and add them. */
  prefill(seqs: readonly Sequence[], runner: BatchRunner): Promise<void>;
  /** One decode step of every row; returns the tokens produced. */
  decode(runner: BatchRunner): Promise<number>;
  abortAll(reason: 'cancelled' | 'error', message?: string): void;
}

/** Logits of position `pos` of row `b` in logits [B, S, V]. */
export function logitsRow(logits: HostTensor<'f32'>, b: number, pos: number): Float32Array {
  const [, S, V] = logits.shape;
  return logits.data.subarray((b * S + pos) * V, (b * S + pos + 1) * V);
}

/** The KvCache form (right-aligned, copied per step): for models the in-place cache does not serve. */
export class DecodeBatch implements LaneBatch {
  private rows: Sequence[] = [];
  private state: RowCache | null = null;

  /** `emptyCache(n)`: an empty cache of n rows (CausalLM.emptyCache). */
  constructor(private readonly emptyCache: (rows: number) => KvCache) {}

  get size(): number {
    return this.rows.length;
  }

  get sequences(): readonly Sequence[] {
    return this.rows;
  }

  /**
   * Add prefilled sequences (their first token sampled) with their cache: one unpadded row
   * each, in order. Sequences that already ended are dropped right away.
   */
  join(seqs: readonly Sequence[], cache: KvCache): void {
    const own: RowCache = { cache, attention: seqs.map(() => new Array<number>(cache.length).fill(1)) };
    this.state = this.state ? concatRows(this.state, own) : own;
    this.rows.push(...seqs);
    this.compact();
  }

  /** Drop finished or cancelled rows (and cache columns nobody needs any more). */
  compact(): void {
    if (!this.state) return;
    const keep: number[] = [];
    this.rows.forEach((s, i) => {
      if (!s.done) keep.push(i);
    });
    if (keep.length === this.rows.length) return;
    this.rows = keep.map((i) => this.rows[i]);
    this.state = keep.length ? selectRows(this.state, keep) : null;
  }

  /**
   * The model inputs of the next decode step (each row's pending token), or null when the
   * batch is empty. Call `advance` with the step's result.
   */
  nextInputs(): { ids: number[][]; attention: number[][]; cache: KvCache } | null {
    this.compact();
    if (!this.state) return null;
    const ids = this.rows.map((s) => [s.pending!]);
    const attention = this.state.attention.map((r) => [...r, 1]);
    return { ids, attention, cache: this.state.cache };
  }

  /** Take a decode step's output: extend the cache and let every row pick its next token. */
  advance(out: { logits: HostTensor<'f32'>; cache: KvCache }, attention: number[][]): number {
    this.state = { cache: out.cache, attention };
    let produced = 0;
    this.rows.forEach((s, b) => {
      if (s.done) return; // cancelled while the step ran
      s.accept(logitsRow(out.logits, b, 0));
      produced++;
    });
    this.compact();
    return produced;
  }

  async prefill(seqs: readonly Sequence[], runner: BatchRunner): Promise<void> {
    const len = seqs[0].spec.prompt.length;
    const ones = new Array<number>(len).fill(1);
    const out = await runner.concat(seqs.map((s) => [...s.spec.prompt]), seqs.map(() => ones), this.emptyCache(seqs.length), seqs);
    seqs.forEach((s, b) => {
      if (!s.done) s.accept(logitsRow(out.logits, b, len - 1));
    });
    this.join(seqs, out.cache);
  }

  async decode(runner: BatchRunner): Promise<number> {
    const inputs = this.nextInputs();
    if (!inputs) return 0;
    const rows = [...this.rows];
    const out = await runner.concat(inputs.ids, inputs.attention, inputs.cache, rows);
    return this.advance(out, inputs.attention);
  }

  /** End every row (e.g. after a failed model run). */
  abortAll(reason: 'cancelled' | 'error', message?: string): void {
    for (const s of this.rows) s.abort(reason, message);
    this.rows = [];
    this.state = null;
  }
}
