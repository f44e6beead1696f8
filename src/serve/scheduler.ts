/**
 * The scheduler: request -> queue -> slot -> token loop, one loop for the whole server.
 *
 * Sequences are grouped by adapter set. Each turn of the loop picks one group, makes the
 * weights hold that group's set (a swap, only when it changes), prefills the group's waiting
 * sequences one by one and merges them into the group's running batch, then runs one batched
 * decode step. A group keeps the weights for at most `maxConsecutiveSteps` model runs while
 * another group has work, then the next group (round robin) gets them, so no set starves and
 * a swap is paid once per turn rather than once per token. Paused batches keep their KV
 * caches: a cache computed under a set stays valid until the set is active again.
 */
import { SparsetuneError } from '../errors.js';
import type { CausalLM } from '../models/causal-lm.js';
import { DecodeBatch, logitsRow } from './batch.js';
import type { ServerMetrics } from './metrics.js';
import { Sequence, type SequenceSink, type SequenceSpec } from './sequence.js';
import type { SwapMember, Swapper } from './swapper.js';

export interface SchedulerOptions {
  /** Most sequences decoded together in one group's batch. */
  maxBatch: number;
  /** Most sequences waiting for a slot; more are refused with QUEUE_FULL (HTTP 429). */
  maxQueue: number;
  /** Most sequences holding a KV cache at once, over all groups. */
  maxActive: number;
  /** Most consecutive model runs for one group while another group waits. */
  maxConsecutiveSteps: number;
}

interface Group {
  key: string;
  set: readonly SwapMember[];
  waiting: Sequence[];
  batch: DecodeBatch;
}

/** Key of an adapter set: member uids, sorted ("" = the base). */
export function setKey(set: readonly SwapMember[]): string {
  return set.map((m) => m.uid).sort((a, b) => a - b).join('+');
}

export class Scheduler {
  private readonly groups = new Map<string, Group>();
  private current: Group | null = null;
  private consecutive = 0;
  private loopRunning: Promise<void> | null = null;
  private closing = false;
  private idleWaiters: (() => void)[] = [];

  constructor(
    private readonly model: CausalLM,
    private readonly swapper: Swapper,
    private readonly metrics: ServerMetrics,
    private readonly opts: SchedulerOptions,
  ) {}

  /** Sequences waiting for a slot. */
  get queueDepth(): number {
    let n = 0;
    for (const g of this.groups.values()) for (const s of g.waiting) if (!s.done) n++;
    return n;
  }

  /** Sequences in running batches. */
  get activeSequences(): number {
    let n = 0;
    for (const g of this.groups.values()) n += g.batch.size;
    return n;
  }

  /**
   * Queue sequences that share adapter set `set`. Throws QUEUE_FULL when the queue cannot take
   * them all, UNAVAILABLE while shutting down. `sink` receives their text and ends.
   */
  submit(set: readonly SwapMember[], specs: readonly SequenceSpec[], sink: SequenceSink): Sequence[] {
    if (this.closing) throw new SparsetuneError('UNAVAILABLE', 'the server is shutting down; retry against another instance');
    if (specs.length > this.opts.maxQueue) {
      throw new SparsetuneError('BAD_ARGUMENT', `the request asks for ${specs.length} sequences (prompts x n) but this server queues at most ${this.opts.maxQueue}; send fewer prompts or a smaller n`);
    }
    if (this.queueDepth + specs.length > this.opts.maxQueue) {
      throw new SparsetuneError('QUEUE_FULL', `the queue is full (${this.opts.maxQueue} sequences waiting); retry later`);
    }
    const key = setKey(set);
    let group = this.groups.get(key);
    if (!group) {
      group = { key, set: [...set], waiting: [], batch: new DecodeBatch() };
      this.groups.set(key, group);
    }
    const seqs = specs.map((spec, i) => new Sequence(i, spec, this.model.tokenizer, sink));
    group.waiting.push(...seqs);
    this.kick();
    return seqs;
  }

  /**
   * Stop taking work, let running sequences finish for up to `graceMs`, then cancel what is
   * left. Resolves when the loop is idle.
   */
  async drain(graceMs: number): Promise<void> {
    this.closing = true;
    const idle = this.whenIdle();
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<'timeout'>((r) => (timer = setTimeout(() => r('timeout'), graceMs)));
    const first = await Promise.race([idle.then(() => 'idle' as const), timeout]);
    clearTimeout(timer);
    if (first === 'timeout') {
      for (const g of this.groups.values()) {
        for (const s of [...g.waiting, ...g.batch.sequences]) {
          if (!s.done) this.metrics.cancelled.inc();
          s.abort('cancelled', 'the server shut down');
        }
      }
      await idle;
    }
  }

  /** Resolves when no group has work left. */
  whenIdle(): Promise<void> {
    if (!this.loopRunning) return Promise.resolve();
    return new Promise((r) => this.idleWaiters.push(r));
  }

  private kick(): void {
    if (this.loopRunning) return;
    this.loopRunning = this.loop().finally(() => {
      this.loopRunning = null;
      if (this.hasWork()) this.kick();
      else for (const w of this.idleWaiters.splice(0)) w();
    });
  }

  private hasWork(): boolean {
    for (const g of this.groups.values()) if (this.runnable(g)) return true;
    return false;
  }

  private runnable(g: Group): boolean {
    return g.batch.size > 0 || (g.waiting.length > 0 && this.activeSequences < this.opts.maxActive);
  }

  /** The group to run next: the current one until its turn is over, then round robin. */
  private pickGroup(): Group | null {
    const cur = this.current;
    const others = [...this.groups.values()].filter((g) => g !== cur && this.runnable(g));
    const curLive = cur !== null && this.groups.get(cur.key) === cur;
    if (curLive && this.runnable(cur) && (this.consecutive < this.opts.maxConsecutiveSteps || others.length === 0)) return cur;
    if (curLive) {
      // Send the group whose turn ended to the back of the line.
      this.groups.delete(cur.key);
      this.groups.set(cur.key, cur);
    }
    const next = others[0] ?? null;
    if (next !== cur) this.consecutive = 0;
    this.current = next;
    return next;
  }

  private async loop(): Promise<void> {
    for (;;) {
      const g = this.pickGroup();
      if (!g) return;
      try {
        await this.admit(g);
        await this.decode(g);
      } catch (err) {
        const msg = err instanceof Error ? err.message : String(err);
        for (const s of g.waiting) s.abort('error', msg);
        g.waiting = [];
        g.batch.abortAll('error', msg);
      }
      g.waiting = g.waiting.filter((s) => !s.done);
      if (g.waiting.length === 0 && g.batch.size === 0) this.groups.delete(g.key);
    }
  }

  /**
   * Prefill the group's waiting sequences into its batch: one model run per prompt length
   * (rows of equal length need no padding, so each row computes what it would alone).
   */
  private async admit(g: Group): Promise<void> {
    const room = Math.min(this.opts.maxBatch - g.batch.size, this.opts.maxActive - this.activeSequences);
    const byLength = new Map<number, Sequence[]>();
    let taken = 0;
    while (taken < room && g.waiting.length) {
      const seq = g.waiting.shift()!;
      if (seq.done) continue;
      const len = seq.spec.prompt.length;
      byLength.set(len, [...(byLength.get(len) ?? []), seq]);
      taken++;
    }
    for (const [len, seqs] of byLength) {
      const ones = new Array<number>(len).fill(1);
      let out;
      try {
        out = await this.swapper.runWith(g.set, () => this.model.step(seqs.map((s) => s.spec.prompt), seqs.map(() => ones), this.model.emptyCache(seqs.length)));
      } catch (err) {
        for (const s of seqs) s.abort('error', err instanceof Error ? err.message : String(err)); // these prompts only
        continue;
      } finally {
        this.consecutive++;
      }
      this.metrics.steps.inc({ kind: 'prefill' });
      this.metrics.promptTokens.inc({}, len * seqs.length);
      seqs.forEach((s, b) => {
        if (s.done) return; // cancelled during the prefill
        this.metrics.completionTokens.inc();
        s.accept(logitsRow(out.logits, b, len - 1));
      });
      g.batch.join(seqs, out.cache); // rows that already ended are dropped again
    }
  }

  /** One decode step for every sequence in the group's batch. */
  private async decode(g: Group): Promise<void> {
    const inputs = g.batch.nextInputs();
    if (!inputs) return;
    const out = await this.swapper.runWith(g.set, () => this.model.step(inputs.ids, inputs.attention, inputs.cache));
    this.consecutive++;
    this.metrics.steps.inc({ kind: 'decode' });
    this.metrics.completionTokens.inc({}, g.batch.advance(out, inputs.attention));
  }
}
