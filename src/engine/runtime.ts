/**
 * Run graphs on onnxruntime-node. Compiled graphs are cached by the ONNX bytes' hash (symbolic
 * batch/sequence dims, so one session serves every size); their native sessions live in a
 * bounded LRU cache (session-cache.ts) that releases idle ones past its limit. Inputs are
 * JS-owned typed arrays wrapped without copying: on CPU, ORT reads weight buffers in place.
 */
import { createHash } from 'node:crypto';
import ort from 'onnxruntime-node';
import { SparsetuneError } from '../errors.js';
import { numel, type DType, type HostTensor } from '../tensor.js';
import type { Graph, Value } from './ir.js';
import { toOnnxModel } from './onnx.js';
import { SessionCache, type CachedSession, type SessionCacheStats } from './session-cache.js';

export interface RuntimeOptions {
  /** Intra-op threads (default: SPARSETUNE_THREADS or the number of cores, capped by ORT). */
  threads?: number;
  /** Execution providers in order of preference (default ['cpu']). */
  executionProviders?: string[];
  /**
   * onnxruntime's CPU memory arena (default true). Off trades ~15% step time for ~25% lower
   * peak memory in training graphs (measured on a 30M Llama with LoRA: 1.97 -> 1.51 GB).
   */
  cpuMemArena?: boolean;
  /**
   * Write onnxruntime's per-op profile (Chrome trace JSON) for every session of this
   * runtime to files starting with this path prefix; `endProfiling()` flushes them.
   */
  profilePrefix?: string;
  /**
   * Most native sessions kept at once (default SPARSETUNE_MAX_SESSIONS or 32). Past it the
   * least recently used idle ones are released and rebuilt on their next run (session-cache.ts).
   */
  maxSessions?: number;
  /** Most ONNX model bytes of the kept sessions (default 1 GiB). */
  maxSessionBytes?: number;
  /**
   * Let idle intra-op threads spin waiting for work (onnxruntime's default, true; or
   * SPARSETUNE_ORT_SPINNING=0). Off, they sleep: on a machine whose cores are busy with other
   * work, spinning threads steal CPU from everything else (measured on the 2-core dev
   * machine at load ~30: a 30M-Llama decode step took 336 ms of CPU spinning, 22 ms not),
   * and from the JavaScript thread when a program alternates short runs with its own work.
   */
  spinning?: boolean;
  /**
   * onnxruntime's memory pattern (one block planned from the first run's sizes). Default:
   * on for inference graphs, off for graphs with a backward pass, where the planned block
   * was measured 20-50% larger than the arena's per-tensor peak (38.7M Llama, batch 4x256:
   * full fine-tuning 2159 -> 1755 MB, LoRA 1161 -> 773 MB) at no loss of speed. Env
   * SPARSETUNE_MEMPATTERN=0/1 forces it.
   */
  memPattern?: boolean;
}

const ORT_TYPE: Record<DType, ort.Tensor.Type> = { f32: 'float32', f64: 'float64', i32: 'int32', i64: 'int64', bool: 'bool', u8: 'uint8', f16: 'float16' };
const FROM_ORT: Partial<Record<string, DType>> = { float32: 'f32', float64: 'f64', int32: 'i32', int64: 'i64', bool: 'bool', uint8: 'u8', float16: 'f16' };

/** A compiled graph: run it with feeds keyed by input name. */
export class CompiledGraph {
  constructor(
    /** The graph's session (created again on demand if the runtime's cache evicted it). */
    readonly session: CachedSession,
    readonly inputs: { name: string; dtype: DType; shape: (number | string)[] }[],
    readonly outputNames: string[],
  ) {}

  /** Run the graph. Feeds are validated (names, dtypes, lengths, consistent symbolic dims) first. */
  async run(feeds: Record<string, HostTensor>, fetch?: string[]): Promise<Record<string, HostTensor>> {
    const ortFeeds = this.ortFeeds(feeds);
    let results: ort.InferenceSession.ReturnType;
    try {
      results = fetch ? await this.session.run(ortFeeds, fetch) : await this.session.run(ortFeeds);
    } catch (e) {
      throw new SparsetuneError('RUNTIME', `onnxruntime failed: ${(e as Error).message}`, { cause: e });
    }
    return fromOrt(results);
  }

  /**
   * Run with some outputs written straight into caller-owned buffers (preallocated fetches:
   * no allocation or copy of those outputs per run). `outputs` maps output names to tensors
   * of the exact result shape; an output may be bound to the buffer of an input that the
   * op updates in place (a KV cache). Only the bound outputs are computed and returned
   * (unless `alsoFetch` names more); bound ones come back as the same HostTensor objects.
   */
  async runInto(feeds: Record<string, HostTensor>, outputs: Record<string, HostTensor>, alsoFetch: string[] = []): Promise<Record<string, HostTensor>> {
    const ortFeeds = this.ortFeeds(feeds);
    const fetches: Record<string, ort.Tensor | null> = {};
    for (const [name, t] of Object.entries(outputs)) {
      if (!this.outputNames.includes(name)) throw new SparsetuneError('BAD_FEED', `runInto: the graph has no output '${name}'`);
      fetches[name] = wrap(t);
    }
    for (const name of alsoFetch) fetches[name] ??= null;
    let results: ort.InferenceSession.ReturnType;
    try {
      results = await this.session.run(ortFeeds, fetches);
    } catch (e) {
      throw new SparsetuneError('RUNTIME', `onnxruntime failed: ${(e as Error).message}`, { cause: e });
    }
    const out: Record<string, HostTensor> = {};
    for (const name of Object.keys(outputs)) out[name] = outputs[name];
    const rest = Object.fromEntries(Object.entries(results).filter(([name]) => !(name in outputs)));
    return Object.assign(out, fromOrt(rest));
  }

  /** Validated ORT feeds (names, dtypes, lengths, consistent symbolic dims). */
  private ortFeeds(feeds: Record<string, HostTensor>): Record<string, ort.Tensor> {
    const ortFeeds: Record<string, ort.Tensor> = {};
    const sym = new Map<string, number>();
    for (const spec of this.inputs) {
      const t = feeds[spec.name];
      if (!t) throw new SparsetuneError('BAD_FEED', `missing input '${spec.name}' (${spec.dtype}[${spec.shape.join(', ')}])`);
      if (t.dtype !== spec.dtype) throw new SparsetuneError('BAD_FEED', `input '${spec.name}': dtype ${t.dtype}, graph expects ${spec.dtype}`);
      if (t.shape.length !== spec.shape.length) {
        throw new SparsetuneError('BAD_FEED', `input '${spec.name}': shape [${t.shape}] has rank ${t.shape.length}, graph expects [${spec.shape.join(', ')}]`);
      }
      spec.shape.forEach((d, k) => {
        const got = t.shape[k];
        if (typeof d === 'number') {
          if (got !== d) throw new SparsetuneError('BAD_FEED', `input '${spec.name}': axis ${k} is ${got}, graph expects ${d}`);
        } else if (!d.includes('*') && !d.includes('+')) {
          const prev = sym.get(d);
          if (prev !== undefined && prev !== got) {
            throw new SparsetuneError('BAD_FEED', `input '${spec.name}': symbolic dim '${d}' is ${got} here but ${prev} in another input`);
          }
          sym.set(d, got);
        }
      });
      if (t.data.length !== numel(t.shape)) {
        throw new SparsetuneError('BAD_FEED', `input '${spec.name}': buffer has ${t.data.length} elements, shape [${t.shape}] needs ${numel(t.shape)}`);
      }
      ortFeeds[spec.name] = wrap(t);
    }
    return ortFeeds;
  }
}

/**
 * The ORT tensor over a host tensor's buffer (no copy), reused while the buffer and shape
 * stay the same: weights are fed on every run, and a fresh wrapper per weight per run is
 * measurable in decode.
 */
const wrappers = new WeakMap<object, ort.Tensor>();
function wrap(t: HostTensor): ort.Tensor {
  const hit = wrappers.get(t.data);
  if (hit && hit.dims.length === t.shape.length && hit.dims.every((d, i) => d === t.shape[i])) return hit;
  const w = new ort.Tensor(ORT_TYPE[t.dtype], t.data as never, t.shape);
  wrappers.set(t.data, w);
  return w;
}

function fromOrt(results: ort.InferenceSession.ReturnType): Record<string, HostTensor> {
  const out: Record<string, HostTensor> = {};
  for (const [name, t] of Object.entries(results)) {
    const dtype = FROM_ORT[t.type];
    if (!dtype) throw new SparsetuneError('RUNTIME', `output '${name}' has unsupported type ${t.type}`);
    out[name] = { dtype, shape: [...t.dims], data: t.data as never };
  }
  return out;
}

/** Owns the session cache and the ORT options. */
export class Runtime {
  private cache = new Map<string, Promise<CompiledGraph>>();
  private readonly sessions: SessionCache;
  readonly threads: number;
  readonly executionProviders: string[];
  readonly cpuMemArena: boolean;
  readonly profilePrefix: string | undefined;
  readonly spinning: boolean;
  readonly memPattern: boolean | undefined;

  constructor(opts: RuntimeOptions = {}) {
    const env = Number(process.env.SPARSETUNE_THREADS);
    this.threads = opts.threads ?? (Number.isFinite(env) && env > 0 ? env : 0);
    this.executionProviders = opts.executionProviders ?? ['cpu'];
    this.cpuMemArena = opts.cpuMemArena ?? process.env.SPARSETUNE_ARENA !== '0';
    this.profilePrefix = opts.profilePrefix;
    const envMax = Number(process.env.SPARSETUNE_MAX_SESSIONS);
    // Profiles are flushed by endProfiling: while profiling, sessions are kept (no eviction).
    const defaultMax = this.profilePrefix ? 1 << 20 : Number.isInteger(envMax) && envMax > 0 ? envMax : 32;
    this.sessions = new SessionCache({ maxSessions: opts.maxSessions ?? defaultMax, maxBytes: opts.maxSessionBytes });
    this.spinning = opts.spinning ?? process.env.SPARSETUNE_ORT_SPINNING !== '0';
    const envPattern = process.env.SPARSETUNE_MEMPATTERN;
    this.memPattern = opts.memPattern ?? (envPattern === '0' ? false : envPattern === '1' ? true : undefined);
  }

  /** Compile (or fetch from cache) the session for a graph. */
  compile(g: Graph): Promise<CompiledGraph> {
    const { bytes, externals } = toOnnxModel(g);
    const key = createHash('sha256').update(bytes).digest('hex');
    let p = this.cache.get(key);
    if (p) {
      // Most recently used last; the map keeps a bounded number of compiled graphs.
      this.cache.delete(key);
      this.cache.set(key, p);
    } else {
      p = this.create(bytes, g, externals);
      this.cache.set(key, p);
      p.catch(() => this.cache.delete(key));
      for (const old of this.cache.keys()) {
        if (this.cache.size <= 4 * this.sessions.maxSessions) break;
        this.cache.delete(old);
      }
    }
    return p;
  }

  private async create(bytes: Uint8Array, g: Graph, externals: { path: string; data: Uint8Array }[]): Promise<CompiledGraph> {
    let native: ort.InferenceSession;
    const options: ort.InferenceSession.SessionOptions = {
      executionProviders: this.executionProviders,
      ...(this.threads ? { intraOpNumThreads: this.threads } : {}),
      interOpNumThreads: 1,
      // ORT's fusions (e.g. QuickGelu) only have f32 kernels: keep f64 graphs (gradient checks) unfused.
      graphOptimizationLevel: g.inputs.some((v) => v.dtype === 'f64') ? 'basic' : 'all',
      logSeverityLevel: 3,
      enableCpuMemArena: this.cpuMemArena,
      enableMemPattern: this.memPattern ?? !g.differentiated,
      ...(this.profilePrefix ? { enableProfiling: true, profileFilePrefix: this.profilePrefix } : {}),
      ...(this.spinning ? {} : { extra: { session: { intra_op: { allow_spinning: '0' } } } }),
      ...(externals.length ? { externalData: externals } : {}),
    };
    try {
      native = await ort.InferenceSession.create(bytes, options);
    } catch (e) {
      throw new SparsetuneError('RUNTIME', `onnxruntime rejected the graph '${g.name}': ${(e as Error).message}`, { cause: e });
    }
    // Kept in the bounded session cache; rebuilt from the same bytes and options if evicted.
    // External constants (quantized weights) are copied and prepacked by the session: count them.
    const size = externals.reduce((n, e) => n + e.data.byteLength, bytes.length);
    const session = this.sessions.add(native, size, () => ort.InferenceSession.create(bytes, options));
    const used = new Set(session.inputNames);
    const inputs = g.inputs.filter((v: Value) => used.has(v.name)).map((v) => ({ name: v.name, dtype: v.dtype, shape: v.shape }));
    return new CompiledGraph(session, inputs, [...session.outputNames]);
  }

  /** Native sessions held now (for tests and metrics); at most `maxSessions`. */
  get cachedSessions(): number {
    return this.sessions.stats.resident;
  }

  /** Flush the profiles of every session built so far (see `profilePrefix`). */
  async endProfiling(): Promise<void> {
    for (const p of this.cache.values()) {
      try {
        await (await p).session.endProfiling();
      } catch {
        // a session that failed to build has no profile
      }
    }
  }

  /** The session cache's counters: resident sessions and bytes, created, evicted. */
  get sessionStats(): SessionCacheStats {
    return this.sessions.stats;
  }

  /** Release every native session; graphs compiled before must be compiled again. */
  async dispose(): Promise<void> {
    this.cache.clear();
    await this.sessions.dispose();
  }
}

let shared: Runtime | null = null;
/** The process-wide default runtime. */
export function defaultRuntime(): Runtime {
  shared ??= new Runtime();
  return shared;
}
