/**
 * `sparsetune serve`: parse and validate the flags, start the server, and shut it down
 * gracefully on SIGTERM/SIGINT (stop accepting, finish or cancel running work, exit 0).
 */
import { parseArgs } from 'node:util';
import { z } from 'zod';
import { SparsetuneError } from '../errors.js';
import { bundledModelPath } from '../io/model-dir.js';
import { createServer, type SparsetuneServer } from './server.js';

export const SERVE_USAGE = `Usage: sparsetune serve --adapters DIR [options]

Serve one base model and many adapters over an OpenAI-compatible HTTP API.

Options:
  --model DIR              base model directory or hub id (default: the bundled stories260K)
  --adapters DIR           adapters directory (each subdirectory with adapter.json is one adapter)
  --port N                 TCP port (default 8080; 0 = any free port)
  --host ADDR              address to bind (default 127.0.0.1; use 0.0.0.0 to expose it)
  --api-key KEY            require "Authorization: Bearer KEY" (default: SPARSETUNE_API_KEY, else none)
  --max-queue N            sequences allowed to wait before requests get 429 (default 64)
  --max-tokens N           largest max_tokens a request may ask for (default 256)
  --max-batch N            sequences decoded together in one batch (default 32)
  --memory-budget-mb N     memory for resident adapters: payloads, prepared swaps and unfused
                           tables; least recently used are evicted, read back on demand (default 1024)
  --unfused-budget-mb N    most memory for unfused tables (default: the memory budget)
  --max-unfused-density X  run a set unfused while its per-token work is at most this
                           fraction of the model's dense work, else fuse it (default 0.25)
  --fused-only             never run adapters unfused: one adapter set at a time, swapped in
  --help                   show this help`;

const flagsSchema = z.object({
  model: z.string().min(1).optional(),
  adapters: z.string({ error: '--adapters DIR is required' }).min(1),
  port: z.coerce.number().int().min(0).max(65535).default(8080),
  host: z.string().min(1).default('127.0.0.1'),
  'api-key': z.string().min(8, '--api-key must be at least 8 characters').optional(),
  'max-queue': z.coerce.number().int().positive().default(64),
  'max-tokens': z.coerce.number().int().positive().default(256),
  'max-batch': z.coerce.number().int().positive().max(256).default(32),
  'memory-budget-mb': z.coerce.number().positive().default(1024),
  'unfused-budget-mb': z.coerce.number().positive().optional(),
  'max-unfused-density': z.coerce.number().min(0).max(100).default(0.25),
  'fused-only': z.boolean().default(false),
});

export type ServeFlags = z.infer<typeof flagsSchema>;

/** Parse `serve` flags; throws BAD_ARGUMENT naming the flag and the fix. */
export function parseServeFlags(argv: string[]): { help: true } | ({ help: false } & ServeFlags) {
  let values: Record<string, string | boolean | undefined>;
  try {
    ({ values } = parseArgs({
      args: argv,
      options: {
        model: { type: 'string' },
        adapters: { type: 'string' },
        port: { type: 'string' },
        host: { type: 'string' },
        'api-key': { type: 'string' },
        'max-queue': { type: 'string' },
        'max-tokens': { type: 'string' },
        'max-batch': { type: 'string' },
        'memory-budget-mb': { type: 'string' },
        'unfused-budget-mb': { type: 'string' },
        'max-unfused-density': { type: 'string' },
        'fused-only': { type: 'boolean' },
        help: { type: 'boolean', short: 'h' },
      },
      strict: true,
      allowPositionals: false,
    }));
  } catch (err) {
    throw new SparsetuneError('BAD_ARGUMENT', `serve: ${(err as Error).message}; see sparsetune serve --help`);
  }
  if (values.help) return { help: true };
  const r = flagsSchema.safeParse({ ...values, 'api-key': values['api-key'] ?? process.env.SPARSETUNE_API_KEY });
  if (!r.success) {
    const issues = r.error.issues.map((i) => `--${i.path.map(String).join('.')}: ${i.message}`).join('; ');
    throw new SparsetuneError('BAD_ARGUMENT', `serve: ${issues}; see sparsetune serve --help`);
  }
  return { ...r.data, help: false };
}

/**
 * Run `sparsetune serve` with `argv` (the arguments after "serve"). Resolves once the server
 * has shut down after SIGTERM or SIGINT; the caller then exits with code 0.
 */
export async function runServe(argv: string[]): Promise<void> {
  const flags = parseServeFlags(argv);
  if (flags.help) {
    console.log(SERVE_USAGE);
    return;
  }
  const log = (m: string) => console.error(`[serve] ${m}`);
  const server: SparsetuneServer = await createServer({
    model: flags.model ?? bundledModelPath(),
    adaptersDir: flags.adapters,
    apiKey: flags['api-key'],
    maxQueue: flags['max-queue'],
    maxTokens: flags['max-tokens'],
    maxBatch: flags['max-batch'],
    memoryBudgetMb: flags['memory-budget-mb'],
    unfused: !flags['fused-only'],
    unfusedBudgetMb: flags['unfused-budget-mb'],
    maxUnfusedDensity: flags['max-unfused-density'],
    log,
  });
  for (const s of server.skipped) log(`adapter ${s.id} not loaded: ${s.error}`);
  const url = await server.listen(flags.port, flags.host);
  const ids = server.service.registry.list().map((e) => e.id);
  log(`listening on ${url} (model ${server.service.baseName}; ${ids.length} adapter(s)${ids.length ? `: ${ids.slice(0, 10).join(', ')}${ids.length > 10 ? ', ...' : ''}` : ''})`);
  if (flags.host !== '127.0.0.1' && flags.host !== 'localhost' && !flags['api-key']) log('warning: listening beyond loopback without --api-key; anyone who can reach the port can use it');

  await new Promise<void>((resolve) => {
    const stop = (signal: string) => {
      process.off('SIGTERM', onTerm);
      process.off('SIGINT', onInt);
      log(`${signal}: finishing running requests, then exiting`);
      server.close().then(resolve, (err) => {
        log(`error while shutting down: ${(err as Error).message}`);
        resolve();
      });
    };
    const onTerm = () => stop('SIGTERM');
    const onInt = () => stop('SIGINT');
    process.on('SIGTERM', onTerm);
    process.on('SIGINT', onInt);
  });
  log('stopped');
}
