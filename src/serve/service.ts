/**
 * The serving core without HTTP: one base model, the adapter registry, the swapper and the
 * scheduler wired together. `generate` resolves an adapter set, pins its adapters and queues
 * the sequences; the returned Job streams their output.
 */
import { SparsetuneError } from '../errors.js';
import type { CausalLM } from '../models/causal-lm.js';
import { checkScale, ServeSet, SetMember, type RequestedAdapter } from './adapter-set.js';
import { Job } from './job.js';
import type { ServerMetrics } from './metrics.js';
import { ADAPTER_ID, BASE_MODEL_ID, type AdapterEntry, type AdapterRegistry } from './registry.js';
import type { Scheduler } from './scheduler.js';
import type { SequenceSpec } from './sequence.js';
import type { Swapper } from './swapper.js';
import type { UnfusedStore } from './unfused/store.js';

/** An entry of a request's `adapters` field as parsed (the scale is checked by resolveMembers). */
export interface AdapterRequest {
  id: string;
  scale?: unknown;
}

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
    /** What unfused serving keeps (tables, cut graph); null for a fused-only server. */
    readonly unfused: UnfusedStore | null = null,
  ) {}

  /** True once shutdown has begun. */
  get isDraining(): boolean {
    return this.draining;
  }

  /**
   * The adapter ids (sorted, unique) of a request: `model` is "base", the base model's name,
   * an adapter id, or a composition "a+b"; `extra` adds ids (the `adapters` field).
   */
  resolveSet(model: string, extra: readonly (string | AdapterRequest)[] = []): string[] {
    return this.resolveMembers(model, extra).map((m) => m.id);
  }

  /**
   * The adapters of a request with their scales, sorted by id: those named by `model` (scale
   * 1) and by the `adapters` field (ids, or `{id, scale}`). An id named twice must ask for
   * the same scale both times. Throws NOT_FOUND for an unknown id, BAD_ARGUMENT for a bad
   * id, scale or set size, naming the culprit.
   */
  resolveMembers(model: string, extra: readonly (string | AdapterRequest)[] = []): RequestedAdapter[] {
    const fromModel = model === BASE_MODEL_ID || model === this.baseName ? [] : model.split('+').filter((p) => p !== BASE_MODEL_ID);
    const wanted = new Map<string, number>();
    const add = (id: string, scale: number) => {
      if (!ADAPTER_ID.test(id)) throw new SparsetuneError('BAD_ARGUMENT', `"${id}" in model "${model}" is not a valid adapter id; use "base", an adapter id, or ids joined by "+"`);
      const prev = wanted.get(id);
      if (prev !== undefined && prev !== scale) throw new SparsetuneError('BAD_ARGUMENT', `adapter "${id}" is asked for twice, at scales ${prev} and ${scale}; name it once`);
      wanted.set(id, scale);
    };
    for (const id of fromModel) add(id, 1);
    for (const x of extra) typeof x === 'string' ? add(x, 1) : add(x.id, x.scale === undefined ? 1 : checkScale(x.id, x.scale));
    const ids = [...wanted.keys()].sort();
    for (const id of ids) {
      if (this.registry.get(id)) continue;
      const refused = this.registry.refusedReason(id);
      if (refused) throw new SparsetuneError('BAD_ADAPTER', `adapter "${id}" cannot be served: ${refused}`);
      throw new SparsetuneError('NOT_FOUND', `model "${id}" does not exist: it is neither "${BASE_MODEL_ID}" nor a loaded adapter (GET /v1/models lists them)`);
    }
    if (ids.length > MAX_SET_SIZE) throw new SparsetuneError('BAD_ARGUMENT', `a request may compose at most ${MAX_SET_SIZE} adapters, got ${ids.length}`);
    return ids.map((id) => ({ id, scale: wanted.get(id)! }));
  }

  /**
   * Pin the adapters of a request (ids at scale 1, or `{id, scale}`) and queue `specs` (one
   * per choice); the job streams the output.
   */
  async generate(requested: readonly (string | RequestedAdapter)[], specs: readonly SequenceSpec[]): Promise<Job> {
    if (this.draining) throw new SparsetuneError('UNAVAILABLE', 'the server is shutting down; retry against another instance');
    const wanted = requested.map((r) => (typeof r === 'string' ? { id: r, scale: 1 } : r));
    const entries: AdapterEntry[] = await this.registry.acquire(wanted.map((w) => w.id));
    let released = false;
    const release = () => {
      if (!released) {
        released = true;
        this.registry.release(entries);
      }
    };
    const job = new Job(release, () => this.metrics.cancelled.inc());
    try {
      const members = entries.map((e, i) => {
        const scale = checkScale(e.id, wanted[i].scale);
        if (scale !== 1 && e.payload().masks.size) {
          throw new SparsetuneError('BAD_ARGUMENT', `adapter "${e.id}" holds masks, which keep or clear weights and cannot be scaled; ask for it at scale 1`);
        }
        return new SetMember(e, scale);
      });
      job.attach(this.scheduler.submit(new ServeSet(members.sort((a, b) => (a.id < b.id ? -1 : 1))), specs, job));
    } catch (err) {
      release();
      throw err;
    }
    for (const w of wanted.length ? wanted : [{ id: BASE_MODEL_ID }]) this.metrics.adapterRequests.inc({ adapter: w.id });
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
