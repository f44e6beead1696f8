/**
 * The running batch of one adapter set: its sequences and their shared, right-aligned KV
 * cache. Sequences join after their own prefill and leave when done; each decode step runs
 * every row's pending token through the model at once.
 */
import type { CausalLM, KvCache } from '../models/causal-lm.js';
import type { HostTensor } from '../tensor.js';
import { concatRows, selectRows, type RowCache } from './kv.js';
import type { Sequence } from './sequence.js';

/** Logits of position `pos` of row `b` in logits [B, S, V]. */
export function logitsRow(logits: HostTensor<'f32'>, b: number, pos: number): Float32Array {
  const [, S, V] = logits.shape;
  return logits.data.subarray((b * S + pos) * V, (b * S + pos + 1) * V);
}

export class DecodeBatch {
  private rows: Sequence[] = [];
  private state: RowCache | null = null;

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

  /** End every row (e.g. after a failed model run). */
  abortAll(reason: 'cancelled' | 'error', message?: string): void {
    for (const s of this.rows) s.abort(reason, message);
    this.rows = [];
    this.state = null;
  }
}
