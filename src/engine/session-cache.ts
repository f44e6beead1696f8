/**
 * A bounded cache of onnxruntime sessions. Every compiled graph gets a `CachedSession`,
 * which stands in for its native session: the native one is created on first use and may
 * be evicted (least recently used first, past a count or byte limit) and released with
 * `session.release()`; the next run creates it again from the graph's bytes, with the same
 * results. A session is never evicted while a run uses it. A server that compiles a graph
 * per adapter set therefore holds a bounded number of native sessions however many sets
 * it has seen.
 */
import type ort from 'onnxruntime-node';

/** What the cache needs of a native session. */
type Native = Pick<ort.InferenceSession, 'run' | 'release' | 'endProfiling' | 'inputNames' | 'outputNames'>;

export interface SessionCacheOptions {
  /** Most native sessions resident at once (default 32). */
  maxSessions?: number;
  /** Most ONNX model bytes (graph and constants) of resident sessions (default 1 GiB). */
  maxBytes?: number;
}

/** Counters for tests, metrics and benchmarks. */
export interface SessionCacheStats {
  /** Native sessions resident now. */
  resident: number;
  /** Their ONNX model bytes. */
  residentBytes: number;
  /** Native sessions created (first use and every re-creation after an eviction). */
  created: number;
  /** Native sessions released because the cache was over a limit. */
  evicted: number;
}

/**
 * Stand-in for one graph's native session, with the same `run` (every overload is passed
 * through), `inputNames`, `outputNames`, `endProfiling` and `release`.
 */
export class CachedSession {
  /** The native session while resident. */
  native: Native | null;
  /** Runs in progress (an entry in use is never evicted). */
  users = 0;
  released = false;
  readonly inputNames: readonly string[];
  readonly outputNames: readonly string[];
  /** Same call signatures as `InferenceSession.run`. */
  readonly run: ort.InferenceSession['run'];

  constructor(
    private readonly cache: SessionCache,
    first: Native,
    /** ONNX model bytes (what the byte limit counts). */
    readonly bytes: number,
    /** Builds the native session again after an eviction. */
    readonly create: () => Promise<Native>,
  ) {
    this.native = first;
    this.inputNames = [...first.inputNames];
    this.outputNames = [...first.outputNames];
    this.run = (async (...args: unknown[]) => {
      const native = await this.cache.acquire(this);
      try {
        return await (native.run as (...a: unknown[]) => Promise<unknown>)(...args);
      } finally {
        this.cache.done(this);
      }
    }) as ort.InferenceSession['run'];
  }

  /** Flush the native session's profile, if it is resident. */
  async endProfiling(): Promise<void> {
    await this.native?.endProfiling();
  }

  /** Release the native session now (or when its last run ends) and leave the cache. */
  async release(): Promise<void> {
    this.released = true;
    await this.cache.drop(this);
  }
}

/** The cache: LRU order is the insertion order of `entries` (a use moves an entry to the end). */
export class SessionCache {
  readonly maxSessions: number;
  readonly maxBytes: number;
  private readonly entries = new Set<CachedSession>();
  private readonly creating = new Map<CachedSession, Promise<Native>>();
  private created = 0;
  private evicted = 0;

  constructor(opts: SessionCacheOptions = {}) {
    this.maxSessions = Math.max(1, opts.maxSessions ?? 32);
    this.maxBytes = opts.maxBytes ?? 2 ** 30;
  }

  /** Register a freshly created native session; returns its stand-in. */
  add(native: Native, bytes: number, create: () => Promise<Native>): CachedSession {
    const s = new CachedSession(this, native, bytes, create);
    this.created++;
    this.entries.add(s);
    void this.enforce(s);
    return s;
  }

  /** The native session of `s` for one run (created again if evicted); pair with `done`. */
  async acquire(s: CachedSession): Promise<Native> {
    if (s.released) throw new Error('this compiled graph was released (Runtime.dispose); compile it again');
    s.users++;
    try {
      this.entries.delete(s);
      this.entries.add(s);
      while (!s.native) {
        let p = this.creating.get(s);
        if (!p) {
          p = s.create();
          this.creating.set(s, p);
          try {
            s.native = await p;
            this.created++;
          } finally {
            this.creating.delete(s);
          }
          break;
        }
        await p;
      }
      await this.enforce(s);
      return s.native!;
    } catch (err) {
      s.users--;
      throw err;
    }
  }

  /** A run of `s` ended. */
  done(s: CachedSession): void {
    s.users--;
    if (s.released && s.users === 0) void this.drop(s);
    else void this.enforce();
  }

  /** Forget `s`, releasing its native session as soon as no run uses it. */
  async drop(s: CachedSession): Promise<void> {
    this.entries.delete(s);
    if (s.users > 0 || !s.native) return;
    const native = s.native;
    s.native = null;
    await native.release().catch(() => undefined);
  }

  /** Evict least recently used idle sessions (never `keep`) until within the limits. */
  private async enforce(keep?: CachedSession): Promise<void> {
    let { resident: count, residentBytes: bytes } = this.stats;
    for (const e of this.entries) {
      if (count <= this.maxSessions && bytes <= this.maxBytes) break;
      if (e === keep || e.users > 0 || !e.native) continue;
      const native = e.native;
      e.native = null;
      // An idle evicted entry needs no tracking: its next run adds it back.
      this.entries.delete(e);
      count--;
      bytes -= e.bytes;
      this.evicted++;
      await native.release().catch(() => undefined);
    }
  }

  get stats(): SessionCacheStats {
    let resident = 0;
    let residentBytes = 0;
    for (const e of this.entries) {
      if (e.native) {
        resident++;
        residentBytes += e.bytes;
      }
    }
    return { resident, residentBytes, created: this.created, evicted: this.evicted };
  }

  /** Release every session (for Runtime.dispose). */
  async dispose(): Promise<void> {
    for (const e of [...this.entries]) {
      e.released = true;
      await this.drop(e);
    }
  }
}
