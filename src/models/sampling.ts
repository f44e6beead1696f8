/**
 * Next-token selection for generation, with Hugging Face `generate` semantics:
 * repetition penalty (on the raw logits), then temperature, top-k and top-p (nucleus), then a
 * draw from the remaining softmax. Temperature 0 (or unset) is greedy argmax. Draws use the
 * counter-based generator of zeroth-order/rng, so a seeded sampler is reproducible: draw i of
 * seed s is uniform01(s, 0, i), whatever happened before.
 *
 * Also `StopStringMatcher`, which streams decoded text while never emitting a stop string.
 */
import { randomInt } from 'node:crypto';
import { z } from 'zod';
import { SparsetuneError } from '../errors.js';
import { uniform01 } from '../zeroth-order/rng.js';

/** How to pick the next token. */
export interface SamplingOptions {
  /** Softmax temperature; 0 or undefined = greedy (argmax). */
  temperature?: number;
  /** Keep only the k highest logits (ties with the k-th are kept, as in HF). 0 or undefined = off. */
  topK?: number;
  /** Keep the smallest set of tokens whose probability reaches topP (at least one). 1 or undefined = off. */
  topP?: number;
  /** > 1 discourages tokens already in the sequence: positive logits / p, negative · p. 1 = off. */
  repetitionPenalty?: number;
  /** Seed of the draws; random when undefined (see `Sampler.seed`). */
  seed?: number;
}

/**
 * Schema of SamplingOptions. Other keys are ignored (callers pass wider option objects, e.g.
 * generate options with maxNewTokens and stop), so HTTP/CLI layers validate their own shapes.
 */
export const samplingOptionsSchema = z.object({
  temperature: z.number().min(0).optional(),
  topK: z.number().int().min(0).optional(),
  topP: z.number().gt(0).max(1).optional(),
  repetitionPenalty: z.number().positive().optional(),
  seed: z.number().int().min(0).max(Number.MAX_SAFE_INTEGER).optional(),
});

/** Picks tokens one position at a time. Not shared between concurrent generations. */
export class Sampler {
  /** The seed in use (drawn at random when the options gave none), so a run can be repeated. */
  readonly seed: number;
  private readonly temperature: number;
  private readonly topK: number;
  private readonly topP: number;
  private readonly penalty: number;
  private draws = 0;
  private scores = new Float64Array(0);
  private order = new Int32Array(0);

  constructor(opts: SamplingOptions = {}) {
    const parsed = samplingOptionsSchema.safeParse(opts);
    if (!parsed.success) {
      const problems = parsed.error.issues.map((i) => `${i.path.join('.') || '(options)'}: ${i.message}`).join('; ');
      throw new SparsetuneError('BAD_ARGUMENT', `Invalid sampling options: ${problems}. Expected temperature >= 0, integer topK >= 0, 0 < topP <= 1, repetitionPenalty > 0.`);
    }
    const o = parsed.data;
    this.temperature = o.temperature ?? 0;
    this.topK = o.topK ?? 0;
    this.topP = o.topP ?? 1;
    this.penalty = o.repetitionPenalty ?? 1;
    this.seed = o.seed ?? randomInt(0, 2 ** 47);
  }

  /** True when `next` is argmax (no randomness used). */
  get greedy(): boolean {
    return this.temperature === 0;
  }

  /** The next token id from the logits of one position (length = vocabulary), given the ids so far. */
  next(logits: Float32Array, previousIds: readonly number[]): number {
    const vocab = logits.length;
    if (vocab === 0) throw new SparsetuneError('BAD_ARGUMENT', 'Cannot sample from empty logits.');
    if (this.scores.length !== vocab) {
      this.scores = new Float64Array(vocab);
      this.order = new Int32Array(vocab);
    }
    const scores = this.scores;
    for (let i = 0; i < vocab; i++) {
      const v = logits[i];
      if (Number.isNaN(v)) throw new SparsetuneError('RUNTIME', `Logit ${i} is NaN; the model produced invalid output (diverged weights or a broken adapter).`);
      scores[i] = v;
    }
    if (this.penalty !== 1) this.applyRepetitionPenalty(scores, previousIds);
    if (this.greedy) return argmax(scores);
    return this.sample(scores);
  }

  private applyRepetitionPenalty(scores: Float64Array, previousIds: readonly number[]): void {
    const seen = new Set<number>();
    for (const id of previousIds) {
      if (!Number.isInteger(id) || id < 0 || id >= scores.length || seen.has(id)) continue;
      seen.add(id); // each id is penalized once however often it occurred (as in HF)
      const s = scores[id];
      scores[id] = s < 0 ? s * this.penalty : s / this.penalty;
    }
  }

  private sample(scores: Float64Array): number {
    const vocab = scores.length;
    const invT = 1 / this.temperature;
    let max = -Infinity;
    for (let i = 0; i < vocab; i++) {
      scores[i] *= invT;
      if (scores[i] > max) max = scores[i];
    }
    if (max === -Infinity) throw new SparsetuneError('RUNTIME', 'Every logit is -Infinity; no token can be sampled.');
    // Candidates: all tokens, or those at or above the k-th largest score.
    const order = this.order;
    let count = 0;
    const cutoff = this.topK > 0 && this.topK < vocab ? kthLargest(scores, this.topK) : -Infinity;
    for (let i = 0; i < vocab; i++) if (scores[i] >= cutoff && scores[i] !== -Infinity) order[count++] = i;
    // Unnormalized softmax weights, stored back into scores for the candidates.
    let total = 0;
    for (let c = 0; c < count; c++) {
      const i = order[c];
      const w = Math.exp(scores[i] - max);
      scores[i] = w;
      total += w;
    }
    if (this.topP < 1) {
      count = nucleus(scores, order, count, total, this.topP);
      total = 0;
      for (let c = 0; c < count; c++) total += scores[order[c]];
    }
    const target = uniform01(this.seed, 0, this.draws++) * total;
    let cumulative = 0;
    for (let c = 0; c < count; c++) {
      cumulative += scores[order[c]];
      if (target < cumulative) return order[c];
    }
    return order[count - 1]; // rounding left target at the very top
  }
}

/** Index of the largest score (the first one on ties). */
function argmax(scores: Float64Array): number {
  let best = 0;
  for (let i = 1; i < scores.length; i++) if (scores[i] > scores[best]) best = i;
  return best;
}

/** The k-th largest value of `values` (1-based), by quickselect on a copy: O(n). */
function kthLargest(values: Float64Array, k: number): number {
  const a = Float64Array.from(values);
  let lo = 0;
  let hi = a.length - 1;
  const target = k - 1; // index in descending order
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    const pivot = median3(a[lo], a[mid], a[hi]);
    let i = lo;
    let j = hi;
    while (i <= j) {
      while (a[i] > pivot) i++;
      while (a[j] < pivot) j--;
      if (i <= j) {
        const tmp = a[i];
        a[i] = a[j];
        a[j] = tmp;
        i++;
        j--;
      }
    }
    if (target <= j) hi = j;
    else if (target >= i) lo = i;
    else return a[target];
  }
  return a[target];
}

function median3(a: number, b: number, c: number): number {
  return a < b ? (b < c ? b : a < c ? c : a) : a < c ? a : b < c ? c : b;
}

/**
 * Top-p: reorders order[0..count) by weight (descending, index ascending on ties) and returns how
 * many to keep: a token stays while the mass strictly before it is below topP·total (HF rule;
 * the first token always stays). Tokens lighter than (1 − topP)·total / count can never be
 * reached (the heavier ones already hold topP of the mass), so they are dropped before sorting.
 */
function nucleus(weights: Float64Array, order: Int32Array, count: number, total: number, topP: number): number {
  const floor = ((1 - topP) * total) / count;
  let kept = 0;
  for (let c = 0; c < count; c++) if (weights[order[c]] >= floor) order[kept++] = order[c];
  const head = Array.from(order.subarray(0, kept)).sort((a, b) => weights[b] - weights[a] || a - b);
  const limit = topP * total;
  let before = 0;
  let keep = 0;
  while (keep < head.length && (keep === 0 || before < limit)) {
    before += weights[head[keep]];
    order[keep] = head[keep];
    keep++;
  }
  return keep;
}

/**
 * Streams decoded text while watching for stop strings: text that is (or may become) part of a
 * stop string is held back until it is known not to be; a stop string and all after it are
 * never emitted.
 */
export class StopStringMatcher {
  private readonly stops: string[];
  private held = '';
  private done = false;

  constructor(stops: string[]) {
    if (!Array.isArray(stops) || stops.some((s) => typeof s !== 'string' || s.length === 0)) {
      throw new SparsetuneError('BAD_ARGUMENT', 'Stop strings must be non-empty strings.');
    }
    this.stops = [...new Set(stops)];
  }

  /** True once a stop string was seen. */
  get stopped(): boolean {
    return this.done;
  }

  /** Feeds newly decoded text; returns what is safe to emit, and whether a stop string was reached. */
  push(text: string): { emit: string; stopped: boolean } {
    if (this.done) return { emit: '', stopped: true };
    const buffer = this.held + text;
    let first = -1;
    for (const stop of this.stops) {
      const at = buffer.indexOf(stop);
      if (at !== -1 && (first === -1 || at < first)) first = at;
    }
    if (first !== -1) {
      this.done = true;
      this.held = '';
      return { emit: buffer.slice(0, first), stopped: true };
    }
    const hold = this.partialMatchLength(buffer);
    this.held = buffer.slice(buffer.length - hold);
    return { emit: buffer.slice(0, buffer.length - hold), stopped: false };
  }

  /** At the end of generation: the held-back text (it never completed a stop string). */
  flush(): string {
    const out = this.done ? '' : this.held;
    this.held = '';
    return out;
  }

  /** Length of the longest suffix of `buffer` that is a proper prefix of some stop string. */
  private partialMatchLength(buffer: string): number {
    let best = 0;
    for (const stop of this.stops) {
      for (let len = Math.min(stop.length - 1, buffer.length); len > best; len--) {
        if (buffer.endsWith(stop.slice(0, len))) {
          best = len;
          break;
        }
      }
    }
    return best;
  }
}
