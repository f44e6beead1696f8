/**
 * One sequence being generated (llama.cpp calls it a slot): its prompt, sampler, streaming
 * decoder and stop-string matcher, the tokens produced so far, and where its text goes.
 * The token rules follow models/generate.ts, so a sequence served here produces what
 * `generateText` produces for the same prompt and options.
 */
import type { Tokenizer, TokenStreamDecoder } from '../io/tokenizer.js';
import { tokenLogprobs } from '../models/logprobs.js';
import { Sampler, StopStringMatcher, type SamplingOptions } from '../models/sampling.js';

/** Why a sequence ended. `eos` and `stop` are both "stop" to OpenAI clients. */
export type FinishReason = 'stop' | 'eos' | 'length' | 'cancelled' | 'error';

export interface SequenceSpec {
  /** Prompt token ids (at least one). */
  prompt: number[];
  /** Most new tokens to sample (an EOS counts as sampled). */
  maxTokens: number;
  sampling: SamplingOptions;
  stop: string[];
  /** Token ids that end the sequence. */
  eos: readonly number[];
  /** Report each generated token's log-probability and this many alternatives (OpenAI `logprobs`); absent: none. */
  logprobs?: number;
}

/**
 * A generated token's log-probability (over the model's raw distribution), with the text it
 * added and the `logprobs` most likely alternatives as [text, logprob].
 */
export interface SequenceLogprob {
  token: string;
  logprob: number;
  top: [string, number][];
}

/** Receives a sequence's output as it is produced. */
export interface SequenceSink {
  /** `logprobs`: entries of the tokens generated since the last call (when the spec asks for them). */
  text(seq: Sequence, delta: string, logprobs?: SequenceLogprob[]): void;
  finish(seq: Sequence): void;
}

export class Sequence {
  readonly history: number[];
  /** Generated ids (EOS excluded). */
  readonly generated: number[] = [];
  /** Last sampled token, not yet run through the model (the next decode step feeds it). */
  pending: number | null = null;
  finishReason: FinishReason | null = null;
  /** Error message when finishReason is 'error'. */
  error: string | undefined;
  private sampled = 0;
  private readonly sampler: Sampler;
  private readonly decoder: TokenStreamDecoder | null;
  private readonly stops: StopStringMatcher;
  private readonly eos: Set<number>;
  /** Logprob entries not yet handed to the sink with text. */
  private pendingLogprobs: SequenceLogprob[] | null;

  constructor(
    /** Position of this sequence in its request's choices. */
    readonly index: number,
    readonly spec: SequenceSpec,
    tokenizer: Tokenizer | null,
    private readonly sink: SequenceSink,
  ) {
    this.history = [...spec.prompt];
    this.sampler = new Sampler(spec.sampling);
    this.decoder = tokenizer?.streamDecoder({ context: spec.prompt }) ?? null;
    this.stops = new StopStringMatcher(spec.stop);
    this.eos = new Set(spec.eos);
    this.pendingLogprobs = spec.logprobs === undefined ? null : [];
  }

  get done(): boolean {
    return this.finishReason !== null;
  }

  /** Pick the next token from its logits row and stream its text; returns true once the sequence is done. */
  accept(logits: Float32Array): boolean {
    if (this.done) return true;
    const t = this.sampler.next(logits, this.history);
    this.sampled++;
    this.history.push(t);
    if (this.eos.has(t)) {
      this.end('eos', this.flushText());
      return true;
    }
    this.generated.push(t);
    const lp = this.pendingLogprobs ? tokenLogprobs(logits, t, this.spec.logprobs!) : null;
    const top: [string, number][] | undefined = lp?.top.map((x) => [this.decoder?.peek(x.id) ?? `token_id:${x.id}`, x.logprob]);
    const piece = this.decoder?.push(t) ?? '';
    if (lp) this.pendingLogprobs!.push({ token: this.decoder ? piece : `token_id:${t}`, logprob: lp.logprob, top: top! });
    const { emit, stopped } = this.stops.push(piece);
    if (emit) this.sink.text(this, emit, this.takeLogprobs());
    if (stopped) {
      this.end('stop', '');
      return true;
    }
    if (this.sampled >= this.spec.maxTokens) {
      this.end('length', this.flushText());
      return true;
    }
    this.pending = t;
    return false;
  }

  /** End the sequence early (client gone, shutdown, or a failed model run). */
  abort(reason: 'cancelled' | 'error', message?: string): void {
    if (this.done) return;
    this.error = message;
    this.end(reason, '');
  }

  /** Text still held back by the decoder (a partial character) or the stop matcher. */
  private flushText(): string {
    return this.stops.push(this.decoder?.flush() ?? '').emit + this.stops.flush();
  }

  /** Pending logprob entries (handed over with the text they belong to), or undefined. */
  private takeLogprobs(): SequenceLogprob[] | undefined {
    if (!this.pendingLogprobs?.length) return undefined;
    return this.pendingLogprobs.splice(0);
  }

  private end(reason: FinishReason, tail: string): void {
    const logprobs = this.takeLogprobs();
    if (tail || logprobs) this.sink.text(this, tail, logprobs);
    this.pending = null;
    this.finishReason = reason;
    this.sink.finish(this);
  }
}
