/**
 * A job is one API request's view of its sequences: it turns their text and ends into an
 * ordered event stream for the HTTP handler, cancels them when the client goes away, and
 * lets go of the request's adapters once every sequence has ended.
 */
import type { FinishReason, Sequence, SequenceLogprob, SequenceSink } from './sequence.js';

export type JobEvent =
  | { type: 'text'; index: number; text: string; logprobs?: SequenceLogprob[] }
  | { type: 'end'; index: number; finishReason: FinishReason; promptTokens: number; completionTokens: number; error?: string };

export class Job implements SequenceSink {
  private readonly events: JobEvent[] = [];
  private wake: (() => void) | null = null;
  private ended = 0;
  private total = 0;
  private sequences: Sequence[] = [];

  /** `onDone` runs once, when the last sequence has ended (e.g. to release adapter pins). */
  constructor(private readonly onDone: (job: Job) => void, private readonly onCancel: (seq: Sequence) => void = () => {}) {}

  /** Attach the sequences the scheduler created for this job. */
  attach(seqs: Sequence[]): void {
    this.sequences = seqs;
    this.total = seqs.length;
    this.ended = seqs.filter((s) => s.done).length;
    if (this.total > 0 && this.ended === this.total) this.onDone(this);
  }

  get finished(): boolean {
    return this.total > 0 && this.ended === this.total;
  }

  text(seq: Sequence, delta: string, logprobs?: SequenceLogprob[]): void {
    this.push(logprobs ? { type: 'text', index: seq.index, text: delta, logprobs } : { type: 'text', index: seq.index, text: delta });
  }

  finish(seq: Sequence): void {
    this.push({
      type: 'end',
      index: seq.index,
      finishReason: seq.finishReason!,
      promptTokens: seq.spec.prompt.length,
      completionTokens: seq.generated.length,
      error: seq.error,
    });
    this.ended++;
    // Sequences can end while the scheduler is still creating them (before attach).
    if (this.total > 0 && this.ended === this.total) this.onDone(this);
  }

  /** Cancel every sequence that has not ended (the client went away). */
  cancel(): void {
    for (const s of this.sequences) {
      if (s.done) continue;
      this.onCancel(s);
      s.abort('cancelled', 'the client cancelled the request');
    }
  }

  /** Events in order, until every sequence has ended. */
  async *stream(): AsyncGenerator<JobEvent> {
    let seenEnds = 0;
    for (;;) {
      while (this.events.length) {
        const ev = this.events.shift()!;
        if (ev.type === 'end') seenEnds++;
        yield ev;
      }
      if (this.total > 0 && seenEnds === this.total) return;
      await new Promise<void>((r) => (this.wake = r));
    }
  }

  private push(ev: JobEvent): void {
    this.events.push(ev);
    const w = this.wake;
    this.wake = null;
    w?.();
  }
}
