/**
 * The scheduler: request -> queue -> slot -> token loop, one loop for the whole server.
 *
 * Work runs in lanes, each with a waiting queue and a running batch (continuous batching,
 * right-aligned KV caches). The *mixed* lane holds every sequence whose adapter set can run
 * unfused, whatever the set: one batch, base GEMMs once per step, each row adding its own
 * adapters' contributions (unfused/). Before each of its model runs the cost rule
 * (unfused/cost.ts) picks the set the shared weights hold (often the base, or the set most
 * rows use); rows of other sets add or cancel the difference. Sets that must be fused
 * (dense masks, adapters touching norms...) get a lane each and run with their set
 * swapped in, as without unfused serving. Lanes take turns: a lane keeps the loop for at
 * most `maxConsecutiveSteps` model runs while another lane has work, so none starves, and
 * paused batches keep their KV caches (a cache depends only on its rows' own sets).
 */
import { SparsetuneError } from '../errors.js';
import type { CausalLM } from '../models/causal-lm.js';
import { sharedCacheSupported } from '../models/decode.js';
import { ServeSet } from './adapter-set.js';
import { DecodeBatch, type BatchRunner, type LaneBatch } from './batch.js';
import type { ServerMetrics } from './metrics.js';
import { Sequence, type SequenceSink, type SequenceSpec } from './sequence.js';
import { DenseDecoder, SlotBatch } from './slots.js';
import type { Swapper } from './swapper.js';
import type { FusePolicy } from './unfused/cost.js';
import type { UnfusedStore } from './unfused/store.js';

export interface SchedulerOptions {
  /** Most sequences decoded together in one lane's batch. */
  maxBatch: number;
  /** Most sequences waiting for a slot; more are refused with QUEUE_FULL (HTTP 429). */
  maxQueue: number;
  /** Most sequences holding a KV cache at once, over all lanes. */
  maxActive: number;
  /** Most consecutive model runs for one lane while another waits. */
  maxConsecutiveSteps: number;
}

/** Unfused serving: the tables and executor, and the cost rule. */
export interface UnfusedServing {
  store: UnfusedStore;
  policy: FusePolicy;
}

interface Lane {
  key: string;
  /** The set every row of a fused lane uses; null for the mixed lane. */
  set: ServeSet | null;
  waiting: Sequence[];
  batch: LaneBatch;
}

const MIXED = '*mixed*';
const BASE = new ServeSet([]);


export class Scheduler {
  private readonly lanes = new Map<string, Lane>();
  private readonly setOf = new WeakMap<Sequence, ServeSet>();
  private current: Lane | null = null;
  private consecutive = 0;
  private loopRunning: Promise<void> | null = null;
  private closing = false;
  private idleWaiters: (() => void)[] = [];
  /** The set the scheduler last had fused into the weights. */
  private fusedNow: ServeSet = BASE;
  /** Sets whose sequences ended; their table references are dropped between model runs. */
  private toRelease: ServeSet[] = [];
  /** Sets the cost rule wants fused once prepared; prepared between model runs. */
  private toPrepare: ServeSet[] = [];
  /** Keys of wanted sets whose preparation failed (not tried again). */
  private readonly unpreparable = new Set<string>();

  /** Runs of the plain decode graph (fused lanes, and the mixed lane when no row has unfused work). */
  private readonly dense: DenseDecoder | null;

  constructor(
    private readonly model: CausalLM,
    private readonly swapper: Swapper,
    private readonly metrics: ServerMetrics,
    private readonly opts: SchedulerOptions,
    private readonly unfused: UnfusedServing | null = null,
  ) {
    this.dense = sharedCacheSupported(model) ? (unfused?.store.executor.dense ?? new DenseDecoder(model)) : null;
    if (unfused && !this.dense) throw new SparsetuneError('BAD_ARGUMENT', 'unfused serving needs the in-place KV cache, which this model cannot use (head size not a multiple of 8); serve it fused-only');
  }

  /** A lane's batch: on the in-place KV cache when the model allows it. */
  private newBatch(): LaneBatch {
    return this.dense ? new SlotBatch(this.model) : new DecodeBatch((n) => this.model.emptyCache(n));
  }

  /** Sequences waiting for a slot. */
  get queueDepth(): number {
    let n = 0;
    for (const g of this.lanes.values()) for (const s of g.waiting) if (!s.done) n++;
    return n;
  }

  /** Sequences in running batches. */
  get activeSequences(): number {
    let n = 0;
    for (const g of this.lanes.values()) n += g.batch.size;
    return n;
  }

  /**
   * Queue sequences that share adapter set `set`. Throws QUEUE_FULL when the queue cannot take
   * them all, UNAVAILABLE while shutting down. `sink` receives their text and ends.
   */
  submit(set: ServeSet, specs: readonly SequenceSpec[], sink: SequenceSink): Sequence[] {
    if (this.closing) throw new SparsetuneError('UNAVAILABLE', 'the server is shutting down; retry against another instance');
    if (specs.length > this.opts.maxQueue) {
      throw new SparsetuneError('BAD_ARGUMENT', `the request asks for ${specs.length} sequences (prompts x n) but this server queues at most ${this.opts.maxQueue}; send fewer prompts or a smaller n`);
    }
    if (this.queueDepth + specs.length > this.opts.maxQueue) {
      throw new SparsetuneError('QUEUE_FULL', `the queue is full (${this.opts.maxQueue} sequences waiting); retry later`);
    }
    const mixable = this.unfused !== null && (set.isBase || this.unfused.store.acquire(set).mustFuse === null);
    const key = mixable ? MIXED : set.key;
    let lane = this.lanes.get(key);
    if (!lane) {
      lane = { key, set: mixable ? null : set, waiting: [], batch: this.newBatch() };
      this.lanes.set(key, lane);
    }
    // The first acquire above stands for the first sequence; take one more per extra sequence.
    if (mixable && !set.isBase) for (let i = 1; i < specs.length; i++) this.unfused!.store.acquire(set);
    const releasing: SequenceSink = {
      text: (seq, delta, logprobs) => sink.text(seq, delta, logprobs),
      finish: (seq) => {
        if (mixable && !set.isBase) this.toRelease.push(set);
        sink.finish(seq);
      },
    };
    const seqs = specs.map((spec, i) => new Sequence(i, spec, this.model.tokenizer, releasing));
    for (const s of seqs) this.setOf.set(s, set);
    lane.waiting.push(...seqs);
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
      for (const g of this.lanes.values()) {
        for (const s of [...g.waiting, ...g.batch.sequences]) {
          if (!s.done) this.metrics.cancelled.inc();
          s.abort('cancelled', 'the server shut down');
        }
      }
      await idle;
    }
    this.releaseEnded();
  }

  /** Resolves when no lane has work left. */
  whenIdle(): Promise<void> {
    if (!this.loopRunning) return Promise.resolve();
    return new Promise((r) => this.idleWaiters.push(r));
  }

  private kick(): void {
    if (this.loopRunning) return;
    this.loopRunning = this.loop().finally(() => {
      this.loopRunning = null;
      this.releaseEnded();
      if (this.hasWork()) this.kick();
      else for (const w of this.idleWaiters.splice(0)) w();
    });
  }

  /** Prepare `set`'s members for fast swaps (once each; swapper.ts). */
  private prepare(set: ServeSet): void {
    for (const m of set.members) this.swapper.prepare(m);
  }

  private releaseEnded(): void {
    for (const s of this.toRelease.splice(0)) this.unfused?.store.release(s);
  }

  private hasWork(): boolean {
    for (const g of this.lanes.values()) if (this.runnable(g)) return true;
    return false;
  }

  private runnable(g: Lane): boolean {
    return g.batch.size > 0 || (g.waiting.length > 0 && this.activeSequences < this.opts.maxActive);
  }

  /** The lane to run next: the current one until its turn is over, then round robin. */
  private pickLane(): Lane | null {
    const cur = this.current;
    const others = [...this.lanes.values()].filter((g) => g !== cur && this.runnable(g));
    const curLive = cur !== null && this.lanes.get(cur.key) === cur;
    if (curLive && this.runnable(cur) && (this.consecutive < this.opts.maxConsecutiveSteps || others.length === 0)) return cur;
    if (curLive) {
      // Send the lane whose turn ended to the back of the line.
      this.lanes.delete(cur.key);
      this.lanes.set(cur.key, cur);
    }
    const next = others[0] ?? null;
    if (next !== cur) this.consecutive = 0;
    this.current = next;
    return next;
  }

  private async loop(): Promise<void> {
    for (;;) {
      this.releaseEnded();
      const g = this.pickLane();
      if (!g) return;
      try {
        // A fused lane's set is prepared before its first swap, outside the weight gate.
        if (g.set) this.prepare(g.set);
        await this.admit(g);
        await this.decode(g);
      } catch (err) {
        const msg = err instanceof Error ? err.message : String(err);
        for (const s of g.waiting) s.abort('error', msg);
        g.waiting = [];
        g.batch.abortAll('error', msg);
      }
      g.waiting = g.waiting.filter((s) => !s.done);
      if (g.waiting.length === 0 && g.batch.size === 0) this.lanes.delete(g.key);
      this.prepareWanted();
    }
  }

  /**
   * Prepare the sets the cost rule wanted fused (between runs, outside the gate). A set whose
   * adapter went meanwhile (its rows ended and it was evicted) is skipped: the rule asks again
   * if rows still want it.
   */
  private prepareWanted(): void {
    for (const set of this.toPrepare.splice(0)) {
      if (this.unpreparable.has(set.key)) continue;
      try {
        this.prepare(set);
      } catch {
        // Its adapter went meanwhile, or cannot be prepared: the rule keeps the set unfused.
        if (this.unpreparable.size >= 1024) this.unpreparable.clear();
        this.unpreparable.add(set.key);
      }
    }
  }

  /**
   * How lane `g` runs the model: a fused lane swaps its set in; the mixed lane lets the cost
   * rule pick the fused set for each run and runs each row's difference unfused.
   */
  private runner(g: Lane): BatchRunner {
    const fusedRun = <T>(set: ServeSet, fn: () => Promise<T>): Promise<T> =>
      this.swapper
        .runWith(set.members, async () => {
          this.fusedNow = set;
          return fn();
        })
        .catch((err) => {
          this.fusedNow = BASE; // a failed swap leaves the pristine base
          throw err;
        });
    if (g.set || !this.unfused) {
      const set = g.set ?? BASE;
      return {
        slots: (run) => fusedRun(set, () => this.dense!.run(run)),
        concat: (ids, attention, cache) => fusedRun(set, () => this.model.step(ids, attention, cache)),
      };
    }
    const { store, policy } = this.unfused;
    return {
      slots: (run, rows) => {
        const runRows = rows.map((s) => ({ set: this.setOf.get(s)!, tokens: run.seq, remaining: Math.max(1, s.spec.maxTokens - s.generated.length) }));
        const choice = policy.choose(runRows, this.fusedNow, BASE, (set) => set.members.every((m) => this.swapper.isPrepared(m)));
        if (choice.wanted) this.toPrepare.push(choice.wanted);
        if (choice.fused.key !== this.fusedNow.key) this.metrics.fusedSetChanges.inc();
        return fusedRun(choice.fused, async () => {
          const plans = runRows.map((r) => store.plan(r.set, choice.fused));
          const out = await store.executor.step(run, plans);
          this.metrics.runs.inc({ path: out.unfused ? 'unfused' : 'dense' });
          if (out.unfused) this.metrics.unfusedRows.inc({}, plans.filter((p) => p.terms.length || p.masks).length);
          return out.logits;
        });
      },
      concat: () => Promise.reject(new SparsetuneError('RUNTIME', 'the mixed batch runs on the in-place KV cache only')),
    };
  }

  /**
   * Prefill the lane's waiting sequences into its batch: one model run per prompt length
   * (rows of equal length need no padding, so each row computes what it would alone).
   */
  private async admit(g: Lane): Promise<void> {
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
    const runner = this.runner(g);
    for (const [len, seqs] of byLength) {
      try {
        await g.batch.prefill(seqs, runner);
      } catch (err) {
        for (const s of seqs) s.abort('error', err instanceof Error ? err.message : String(err)); // these prompts only
        continue;
      } finally {
        this.consecutive++;
      }
      this.metrics.steps.inc({ kind: 'prefill' });
      this.metrics.promptTokens.inc({}, len * seqs.length);
      this.metrics.completionTokens.inc({}, seqs.filter((s) => s.generated.length > 0 || s.finishReason === 'eos').length);
    }
  }

  /** One decode step for every sequence in the lane's batch. */
  private async decode(g: Lane): Promise<void> {
    if (g.batch.size === 0) return;
    const produced = await g.batch.decode(this.runner(g));
    this.consecutive++;
    this.metrics.steps.inc({ kind: 'decode' });
    this.metrics.completionTokens.inc({}, produced);
  }
}
