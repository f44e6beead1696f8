/**
 * createServer: the library entry point that wires a base model, the adapters directory,
 * the scheduler and the HTTP app together. `sparsetune serve` is a thin shell over it.
 */
import * as path from 'node:path';
import type { FastifyInstance } from 'fastify';
import { CausalLM } from '../models/causal-lm.js';
import { fingerprintWeights } from '../merge/fingerprint.js';
import { WeightGate } from './gate.js';
import { buildApp } from './http.js';
import { ServerMetrics } from './metrics.js';
import { dropScaledCopies, scaledCopies } from './adapter-set.js';
import { adapterBytes, AdapterRegistry, type AdapterEntry } from './registry.js';
import { Scheduler } from './scheduler.js';
import { ServeService } from './service.js';
import { Swapper } from './swapper.js';
import { FusePolicy } from './unfused/cost.js';
import { UnfusedStore } from './unfused/store.js';

/** Cut-graph overhead per Linear site of a model run (ns), measured on the 2-core dev machine. */
const SEGMENT_NS_PER_SITE = 25_000;

export interface ServerOptions {
  /** The base model, loaded, or a model directory / hub id to load. Its weights must be pristine (no adapter fused). */
  model: CausalLM | string;
  /** Directory of adapters (one subdirectory with adapter.json each); runtime loads stay inside it. */
  adaptersDir: string;
  /** Require `Authorization: Bearer <apiKey>` on every route but /health. */
  apiKey?: string;
  /** Most sequences waiting for a slot before requests get 429 (default 64). */
  maxQueue?: number;
  /** Largest max_tokens a request may ask for (default 256). */
  maxTokens?: number;
  /** Most sequences decoded together in one batch: the mixed batch, or a fused set's (default 32). */
  maxBatch?: number;
  /** Most sequences with a KV cache at once, all sets together (default 64). */
  maxActive?: number;
  /** Most consecutive model runs for one adapter set while another waits (default 8). */
  maxConsecutiveSteps?: number;
  /**
   * Memory for resident adapters, in MiB (default 1024): their payloads and what the server
   * derives from them (prepared swap forms, unfused tables, scaled copies). Past it the least
   * recently used adapters no request is using are evicted and read back from disk on demand.
   */
  memoryBudgetMb?: number;
  /**
   * Run adapter sets unfused, side by side in one batch (default true). Off: every set is
   * fused into the weights for its own batches, one set at a time.
   */
  unfused?: boolean;
  /**
   * Most memory for unfused tables, in MiB (default: the memory budget). The tables live in
   * one WebAssembly memory that never shrinks, so this caps its size; they are counted in
   * the memory budget too.
   */
  unfusedBudgetMb?: number;
  /**
   * A set runs unfused while its kernel work per token is at most this fraction of the
   * model's dense work; denser sets (a 2:4 mask clears half of each weight) are fused (default 0.25).
   */
  maxUnfusedDensity?: number;
  /** Largest request body in bytes (default 1 MiB). */
  bodyLimitBytes?: number;
  /** How long shutdown lets running generations finish before cancelling them (default 10 s). */
  shutdownGraceMs?: number;
  log?: (message: string) => void;
}

export interface SparsetuneServer {
  /** The fastify app (for `inject` in tests, or to add routes). */
  app: FastifyInstance;
  service: ServeService;
  /** Adapters in the directory that could not be loaded at start, with the reason. */
  skipped: { id: string; error: string }[];
  /** Start listening (default 127.0.0.1:8080; port 0 = any free port). Resolves to the base URL. */
  listen(port?: number, host?: string): Promise<string>;
  /** Stop accepting, finish or cancel running work, revert all adapters, close the socket. Idempotent. */
  close(): Promise<void>;
}

/**
 * Count what the server derives from each adapter in the registry's budget, and prepare
 * adapters for fast swaps when they are loaded if they will be swapped: every adapter of a
 * fused-only server, and those that must be fused (dense masks...) in a mixed one. Other
 * adapters run unfused; the cost rule prepares them only when it wants to fuse them (a
 * prepared low-rank pair holds its dense B·A, far more than its payload).
 */
function holdAdapterMemory(registry: AdapterRegistry, swapper: Swapper, store: UnfusedStore | null): void {
  const payloads = (e: AdapterEntry) => (e.adapter ? [e.adapter, ...scaledCopies(e.adapter)] : []);
  registry.addHolder({
    bytes: (e) => {
      if (!e.adapter) return 0;
      let n = swapper.preparedBytes(payloads(e));
      for (const c of scaledCopies(e.adapter)) n += adapterBytes(c);
      return n;
    },
    resident: (e) => {
      if (!store || store.mustFuseAlone(e.payload())) swapper.prepare(e);
    },
    drop: (e) => {
      if (!e.adapter) return;
      swapper.forget(payloads(e));
      dropScaledCopies(e.adapter);
    },
  });
  if (store) registry.addHolder({ bytes: (e) => store.tableBytesOf(e.uid), busy: (e) => store.inUse(e.uid), drop: (e) => store.drop(e.uid) });
}

/** Build a server (not listening yet). */
export async function createServer(opts: ServerOptions): Promise<SparsetuneServer> {
  const log = opts.log ?? (() => {});
  const model = typeof opts.model === 'string' ? await CausalLM.load(opts.model) : opts.model;
  // The server fuses adapters into the base weights and reverts them bit for bit: f32 only.
  model.requireF32('serving (adapters are fused into the base weights and reverted exactly)');
  const fingerprint = fingerprintWeights(model.weights);
  const shapes = new Map([...model.weights].map(([n, t]) => [n, t.shape]));
  const memoryBudgetMb = opts.memoryBudgetMb ?? 1024;
  const { registry, skipped } = await AdapterRegistry.open({
    dir: opts.adaptersDir,
    shapes,
    fingerprint,
    memoryBudgetBytes: memoryBudgetMb * 2 ** 20,
    log,
  });
  const gate = new WeightGate();
  let metrics: ServerMetrics;
  // Memory changes are re-checked against the budget on a later microtask (never in the middle of a swap or a plan).
  let budgetCheck = false;
  const checkBudget = () => {
    if (budgetCheck) return;
    budgetCheck = true;
    queueMicrotask(() => {
      budgetCheck = false;
      registry.enforceBudget();
    });
  };
  const store =
    opts.unfused === false
      ? null
      : new UnfusedStore(model, { budgetBytes: (opts.unfusedBudgetMb ?? memoryBudgetMb) * 2 ** 20, maxUnfusedDensity: opts.maxUnfusedDensity ?? 0.25, onGrow: checkBudget });
  const policy = store ? new FusePolicy(store, SEGMENT_NS_PER_SITE * store.layout.sites.length) : null;
  const swapper = new Swapper(model.weights, gate, {
    fingerprint,
    onSwap: (r) => {
      metrics.swaps.inc();
      metrics.swapSeconds.observe(r.seconds);
      policy?.observeSwap(r.seconds, r.elements);
    },
    onPrepare: checkBudget,
  });
  holdAdapterMemory(registry, swapper, store);
  let scheduler: Scheduler;
  metrics = new ServerMetrics({
    queueDepth: () => scheduler.queueDepth,
    activeSequences: () => scheduler.activeSequences,
    adaptersLoaded: () => registry.list().length,
    adapterResidentBytes: () => registry.residentBytes,
    adapterPayloadBytes: () => registry.payloadBytes,
    unfusedTableBytes: () => store?.residentBytes ?? 0,
  });
  scheduler = new Scheduler(
    model,
    swapper,
    metrics,
    {
      maxBatch: opts.maxBatch ?? 32,
      maxQueue: opts.maxQueue ?? 64,
      maxActive: opts.maxActive ?? 64,
      maxConsecutiveSteps: opts.maxConsecutiveSteps ?? 8,
    },
    store && policy ? { store, policy } : null,
  );
  const baseName = path.basename(model.source);
  const service = new ServeService(model, baseName, registry, swapper, scheduler, metrics, store);
  const app = buildApp(service, {
    apiKey: opts.apiKey,
    bodyLimit: opts.bodyLimitBytes ?? 2 ** 20,
    limits: { maxTokens: opts.maxTokens ?? 256, contextLength: model.config.maxPositionEmbeddings },
    log,
  });

  let closing: Promise<void> | null = null;
  return {
    app,
    service,
    skipped,
    async listen(port = 8080, host = '127.0.0.1') {
      await app.listen({ port, host });
      const addr = app.server.address();
      const actualPort = typeof addr === 'object' && addr ? addr.port : port;
      return `http://${host.includes(':') ? `[${host}]` : host}:${actualPort}`;
    },
    close() {
      closing ??= (async () => {
        // Drain first (new requests get 503), while app.close waits for in-flight responses.
        const drained = service.close(opts.shutdownGraceMs ?? 10_000);
        let closed = false;
        const appClosed = app.close().then(() => {
          closed = true;
        });
        await drained;
        // Keep-alive connections whose last response ended after close began would hold the
        // socket open until the client's idle timeout: close them as they go idle.
        while (!closed) {
          app.server.closeIdleConnections();
          await Promise.race([appClosed, new Promise((r) => setTimeout(r, 25))]);
        }
      })();
      return closing;
    },
  };
}
