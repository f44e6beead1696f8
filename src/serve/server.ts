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
import { AdapterRegistry } from './registry.js';
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
  /** Memory for resident adapter payloads, in MiB (default 1024). */
  memoryBudgetMb?: number;
  /**
   * Run adapter sets unfused, side by side in one batch (default true). Off: every set is
   * fused into the weights for its own batches, one set at a time.
   */
  unfused?: boolean;
  /** Memory for unfused adapter tables of adapters no running request uses, in MiB (default 1024). */
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

/** Build a server (not listening yet). */
export async function createServer(opts: ServerOptions): Promise<SparsetuneServer> {
  const log = opts.log ?? (() => {});
  const model = typeof opts.model === 'string' ? await CausalLM.load(opts.model) : opts.model;
  const fingerprint = fingerprintWeights(model.weights);
  const shapes = new Map([...model.weights].map(([n, t]) => [n, t.shape]));
  const { registry, skipped } = await AdapterRegistry.open({
    dir: opts.adaptersDir,
    shapes,
    fingerprint,
    memoryBudgetBytes: (opts.memoryBudgetMb ?? 1024) * 2 ** 20,
    log,
  });
  const gate = new WeightGate();
  let metrics: ServerMetrics;
  const store = opts.unfused === false ? null : new UnfusedStore(model, { budgetBytes: (opts.unfusedBudgetMb ?? 1024) * 2 ** 20, maxUnfusedDensity: opts.maxUnfusedDensity ?? 0.25 });
  const policy = store ? new FusePolicy(store, SEGMENT_NS_PER_SITE * store.layout.sites.length) : null;
  const swapper = new Swapper(model.weights, gate, {
    fingerprint,
    onSwap: (r) => {
      metrics.swaps.inc();
      metrics.swapSeconds.observe(r.seconds);
      policy?.observeSwap(r.seconds, r.elements);
    },
  });
  let scheduler: Scheduler;
  metrics = new ServerMetrics({
    queueDepth: () => scheduler.queueDepth,
    activeSequences: () => scheduler.activeSequences,
    adaptersLoaded: () => registry.list().length,
    adapterResidentBytes: () => registry.residentBytes,
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
  const service = new ServeService(model, baseName, registry, swapper, scheduler, metrics);
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
