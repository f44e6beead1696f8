/**
 * Load generator for `sparsetune serve` (run as its own process by bench/serve.ts, or by
 * hand): closed-loop clients stream /v1/completions for a fixed time, cycling through the
 * given models, and print one JSON line with throughput and latency percentiles.
 *
 *   npx tsx bench/serve-load.ts --url http://127.0.0.1:8080 --models base,a,b \
 *     --concurrency 16 --duration-s 15 --max-tokens 32
 */
import { parseArgs } from 'node:util';
import { z } from 'zod';

const argsSchema = z.object({
  url: z.string().url(),
  models: z.string().min(1),
  concurrency: z.coerce.number().int().positive().default(16),
  'duration-s': z.coerce.number().positive().default(15),
  'max-tokens': z.coerce.number().int().positive().default(32),
  prompt: z.string().default('Once upon a time, there was a'),
  /** Comma-separated token ids to send instead of `prompt` (models without a tokenizer). */
  'prompt-ids': z.string().regex(/^\d+(,\d+)*$/).optional(),
  'api-key': z.string().optional(),
});

const { values } = parseArgs({
  options: {
    url: { type: 'string' },
    models: { type: 'string' },
    concurrency: { type: 'string' },
    'duration-s': { type: 'string' },
    'max-tokens': { type: 'string' },
    prompt: { type: 'string' },
    'prompt-ids': { type: 'string' },
    'api-key': { type: 'string' },
  },
});
const parsed = argsSchema.safeParse(values);
if (!parsed.success) {
  console.error(`serve-load: ${parsed.error.issues.map((i) => `--${i.path.join('.')}: ${i.message}`).join('; ')}`);
  process.exit(2);
}
const args = parsed.data;
const models = args.models.split(',');

interface Sample {
  ms: number;
  ttftMs: number;
  tokens: number;
}

/** One streamed completion; latency to the first text chunk and to [DONE]. */
async function oneRequest(model: string): Promise<Sample> {
  const t0 = performance.now();
  const res = await fetch(`${args.url}/v1/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', ...(args['api-key'] ? { authorization: `Bearer ${args['api-key']}` } : {}) },
    body: JSON.stringify({ model, prompt: args['prompt-ids'] ? args['prompt-ids'].split(',').map(Number) : args.prompt, max_tokens: args['max-tokens'], temperature: 0, stream: true, stream_options: { include_usage: true } }),
  });
  if (!res.ok || !res.body) throw new Error(`HTTP ${res.status}: ${(await res.text()).slice(0, 300)}`);
  let ttft = NaN;
  let tokens = 0;
  let buf = '';
  const decoder = new TextDecoder();
  for await (const part of res.body) {
    buf += decoder.decode(part as Uint8Array, { stream: true });
    let cut: number;
    while ((cut = buf.indexOf('\n\n')) >= 0) {
      const event = buf.slice(0, cut);
      buf = buf.slice(cut + 2);
      if (!event.startsWith('data: ') || event === 'data: [DONE]') continue;
      const chunk = JSON.parse(event.slice(6)) as { choices: { text: string }[]; usage?: { completion_tokens: number }; error?: { message: string } };
      if (chunk.error) throw new Error(`in stream: ${chunk.error.message}`);
      if (Number.isNaN(ttft) && chunk.choices.some((c) => c.text)) ttft = performance.now() - t0;
      if (chunk.usage) tokens = chunk.usage.completion_tokens;
    }
  }
  return { ms: performance.now() - t0, ttftMs: ttft, tokens };
}

function percentile(xs: number[], p: number): number {
  const s = xs.filter((x) => !Number.isNaN(x)).sort((a, b) => a - b);
  if (s.length === 0) return NaN;
  return s[Math.min(s.length - 1, Math.max(0, Math.ceil((p / 100) * s.length) - 1))];
}

const samples: Sample[] = [];
const errors: string[] = [];
let next = 0;
const start = performance.now();
const deadline = start + args['duration-s'] * 1000;
await Promise.all(
  Array.from({ length: args.concurrency }, async () => {
    while (performance.now() < deadline) {
      const model = models[next++ % models.length];
      try {
        samples.push(await oneRequest(model));
      } catch (err) {
        // Network-level failures (connection reset, client timeout) carry their reason in `cause`.
        const e = err as Error & { cause?: { code?: string; message?: string } };
        errors.push(e.cause ? `${e.message} (${e.cause.code ?? e.cause.message})` : e.message);
      }
    }
  }),
);
const seconds = (performance.now() - start) / 1000;
const tokens = samples.reduce((s, x) => s + x.tokens, 0);
console.log(
  JSON.stringify({
    models: models.length,
    concurrency: args.concurrency,
    seconds,
    requests: samples.length,
    errors: errors.length,
    firstError: errors[0],
    // Each distinct failure (HTTP status and body, error in the stream, or network reason) with its count.
    errorKinds: errors.reduce<Record<string, number>>((acc, m) => ((acc[m] = (acc[m] ?? 0) + 1), acc), {}),
    tokens,
    tokensPerSecond: tokens / seconds,
    requestsPerSecond: samples.length / seconds,
    latencyMs: { p50: percentile(samples.map((s) => s.ms), 50), p99: percentile(samples.map((s) => s.ms), 99) },
    ttftMs: { p50: percentile(samples.map((s) => s.ttftMs), 50), p99: percentile(samples.map((s) => s.ttftMs), 99) },
    // Raw samples, so a caller can pool several runs.
    samples: samples.map((s) => [Math.round(s.ms * 10) / 10, Math.round(s.ttftMs * 10) / 10, s.tokens]),
  }),
);
