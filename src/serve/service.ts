/**
 * The serving core without HTTP: one base model, the adapter registry, the swapper and the
 * scheduler wired together. `generate` resolves an adapter set, pins its adapters and queues
 * the sequences; the returned Job streams their output.
 */
import { SparsetuneError } from '../errors.js';
import type { CausalLM } from '../models/causal-lm.js';
import { Job } from './job.js';
import type { ServerMetrics } from './metrics.js';
import { ADAPTER_ID, BASE_MODEL_ID, type AdapterEntry, type AdapterRegistry } from './registry.js';
import type { Scheduler } from './scheduler.js';
import type { SequenceSpec } from './sequence.js';
import type { Swapper } from './swapper.js';

/** Most adapters composed in one request. */
export const MAX_SET_SIZE = 8;

export class ServeService {
  private draining = false;

  constructor(
    readonly model: CausalLM,
    /** Name the base answers to besides "base" (the model directory's name). */
    readonly baseName: string,
    readonly registry: AdapterRegistry,
    readonly swapper: Swapper,
    readonly scheduler: Scheduler,
    readonly metrics: ServerMetrics,
  ) {}

  /** True once shutdown has begun. */
  get isDraining(): boolean {
    return this.draining;
  }

  /**
   * The adapter ids (sorted, unique) of a request: `model` is "base", the base model's name,
   * an adapter id, or a composition "a+b"; `extra` adds ids (the `adapters` field).
   */
  resolveSet(model: string, extra: readonly string[] = []): string[] {
    const fromModel = model === BASE_MODEL_ID || model === this.baseName ? [] : model.split('+').filter((p) => p !== BASE_MODEL_ID);
    const ids = [...new Set([...fromModel, ...extra])].sort();
    for (const id of ids) {
      if (!ADAPTER_ID.test(id)) throw new SparsetuneError('BAD_ARGUMENT', `"${id}" in model "${model}" is not a valid adapter id; use "base", an adapter id, or ids joined by "+"`);
      if (!this.registry.get(id)) {
        throw new SparsetuneError('NOT_FOUND', `model "${id}" does not exist: it is neither "${BASE_MODEL_ID}" nor a loaded adapter (GET /v1/models lists them)`);
      }
    }
    if (ids.length > MAX_SET_SIZE) throw new SparsetuneError('BAD_ARGUMENT', `a request may compose at most ${MAX_SET_SIZE} adapters, got ${ids.length}`);
    return ids;
  }

  /** Pin the adapters `ids` and queue `specs` (one per choice); the job streams the output. */
  async generate(ids: readonly string[], specs: readonly SequenceSpec[]): Promise<Job> {
    if (this.draining) throw new SparsetuneError('UNAVAILABLE', 'the server is shutting down; retry against another instance');
    const entries: AdapterEntry[] = await this.registry.acquire(ids);
    let released = false;
    const release = () => {
      if (!released) {
        released = true;
        this.registry.release(entries);
      }
    };
    const job = new Job(release, () => this.metrics.cancelled.inc());
    try {
      job.attach(this.scheduler.submit(entries, specs, job));
    } catch (err) {
      release();
      throw err;
    }
    for (const id of ids.length ? ids : [BASE_MODEL_ID]) this.metrics.adapterRequests.inc({ adapter: id });
    return job;
  }

  /**
   * Stop taking requests, let running ones finish for up to `graceMs`, cancel the rest, then
   * revert every adapter so the weights hold the original bits.
   */
  async close(graceMs: number): Promise<void> {
    this.draining = true;
    await this.scheduler.drain(graceMs);
    await this.swapper.reset();
  }
}
