/**
 * The fastify application: auth, error shapes, and the non-generation routes (models,
 * adapter management, health, metrics). Generation routes live in http-generate.ts.
 */
import { timingSafeEqual } from 'node:crypto';
import Fastify, { type FastifyInstance, type FastifyReply } from 'fastify';
import { apiError, toApiError } from './http-errors.js';
import { registerGenerationRoutes } from './http-generate.js';
import { registerTokenizeRoutes } from './http-tokenize.js';
import { registerVllmRoutes } from './http-vllm.js';
import { loadAdapterSchema, parseBody } from './openai-schema.js';
import type { TokenLimits } from './prompts.js';
import { BASE_MODEL_ID, type AdapterEntry } from './registry.js';
import type { ServeService } from './service.js';

export interface HttpOptions {
  /** Bearer token every route but /health requires; undefined = open. */
  apiKey?: string;
  /** Largest request body in bytes (bigger: 413). */
  bodyLimit: number;
  limits: TokenLimits;
  log?: (message: string) => void;
}

function keyMatches(header: string | undefined, key: string): boolean {
  const m = /^Bearer\s+(.+)$/i.exec(header ?? '');
  if (!m) return false;
  const a = Buffer.from(m[1].trim());
  const b = Buffer.from(key);
  return a.length === b.length && timingSafeEqual(a, b);
}

function adapterInfo(e: AdapterEntry) {
  return {
    id: e.id,
    object: 'adapter',
    method: e.meta.method,
    kind: e.meta.kind,
    base_model: e.meta.base.model,
    created: e.meta.created,
    resident: e.resident,
    bytes: e.bytes,
    in_use: e.pins,
    requests: e.requests,
  };
}

/** Build the fastify app over a ServeService (not listening yet). */
export function buildApp(svc: ServeService, opts: HttpOptions): FastifyInstance {
  const app = Fastify({
    logger: false,
    bodyLimit: opts.bodyLimit,
    return503OnClosing: true,
    forceCloseConnections: 'idle',
    // Errors fastify raises before routing (bad URL encoding, a too-long path parameter) get the same error shape.
    frameworkErrors: (err, _req, reply: FastifyReply) => {
      const { status, body } = toApiError(err);
      void reply.code(status).send(body);
    },
  });
  const log = opts.log ?? (() => {});
  const started = Math.floor(Date.now() / 1000);

  app.addHook('onRequest', async (req, reply) => {
    if (!opts.apiKey || req.url === '/health') return;
    if (!keyMatches(req.headers.authorization, opts.apiKey)) {
      return reply.code(401).send(apiError(401, 'missing or wrong API key; send "Authorization: Bearer <key>"', 'invalid_api_key'));
    }
  });
  app.addHook('onResponse', async (req, reply) => {
    svc.metrics.requests.inc({ endpoint: req.routeOptions.url ?? 'unmatched', status: String(reply.statusCode) });
  });
  app.setErrorHandler((err, req, reply) => {
    const { status, body, internal } = toApiError(err);
    if (internal) log(`error on ${req.method} ${req.url}: ${(err as Error)?.stack ?? String(err)}`);
    if (status === 429) reply.header('retry-after', '1');
    return reply.code(status).send(body);
  });
  app.setNotFoundHandler((req, reply) => reply.code(404).send(apiError(404, `no route ${req.method} ${req.url}; see /v1/models, /v1/completions, /v1/chat/completions, /v1/adapters`, 'not_found')));

  app.get('/health', async (req, reply) => {
    const status = svc.isDraining ? 'draining' : 'ok';
    // /health needs no key (load balancers probe it); details only for those who have one.
    const details =
      !opts.apiKey || keyMatches(req.headers.authorization, opts.apiKey)
        ? {
            model: svc.baseName,
            adapters: svc.registry.list().length,
            active_adapters: svc.swapper.activeIds,
            queue_depth: svc.scheduler.queueDepth,
            active_sequences: svc.scheduler.activeSequences,
          }
        : {};
    return reply.code(svc.isDraining ? 503 : 200).send({ status, ...details });
  });

  app.get('/metrics', async (_req, reply) => reply.type('text/plain; version=0.0.4; charset=utf-8').send(svc.metrics.render()));

  const modelCard = (id: string, parent: string | null) => ({ id, object: 'model', created: started, owned_by: 'sparsetune', root: svc.baseName, parent });
  app.get('/v1/models', async () => ({
    object: 'list',
    data: [modelCard(BASE_MODEL_ID, null), ...svc.registry.list().map((e) => modelCard(e.id, BASE_MODEL_ID))],
  }));
  app.get<{ Params: { id: string } }>('/v1/models/:id', async (req) => {
    const ids = svc.resolveSet(req.params.id);
    return modelCard(req.params.id, ids.length ? BASE_MODEL_ID : null);
  });

  app.get('/v1/adapters', async () => ({ object: 'list', data: svc.registry.list().map(adapterInfo) }));
  app.post('/v1/adapters', async (req, reply) => {
    const body = parseBody(loadAdapterSchema, req.body, 'POST /v1/adapters');
    const entry = await svc.registry.load(body.id, body.path);
    log(`loaded adapter ${entry.id} from ${entry.dir}`);
    return reply.code(201).send(adapterInfo(entry));
  });
  app.delete<{ Params: { id: string } }>('/v1/adapters/:id', async (req) => {
    const entry = svc.registry.unload(req.params.id);
    log(`unloaded adapter ${entry.id}`);
    // in_use: requests still finishing with it (they keep it until they end).
    return { id: entry.id, object: 'adapter', deleted: true, in_use: entry.pins };
  });

  registerGenerationRoutes(app, svc, opts.limits);
  // Other servers' names for the same things (vLLM's adapter and tokenizer routes).
  registerVllmRoutes(app, svc, log);
  registerTokenizeRoutes(app, svc);
  return app;
}
