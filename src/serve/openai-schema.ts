/**
 * Request bodies of the OpenAI-compatible endpoints, validated with zod. Fields the server
 * cannot honour (echo, chat logprobs, tools, penalties other than repetition_penalty) are
 * refused with a 400 rather than silently ignored.
 */
import { z } from 'zod';
import { SparsetuneError } from '../errors.js';

const tokenId = z.number().int().nonnegative();
/** Most alternatives `logprobs` may ask for per token (vLLM's default max_logprobs). */
export const MAX_LOGPROBS = 20;
const stop = z.union([z.string().min(1), z.array(z.string().min(1)).max(4)]).nullable().optional();

/** One entry of the `adapters` field with a scale. The service checks the scale, naming the adapter. */
const adapterWithScale = z.strictObject({
  id: z.string().min(1).max(64),
  scale: z.unknown().optional(),
});

/** Fields shared by completions and chat completions. */
const common = {
  model: z.string().min(1).max(512),
  /**
   * Extension: adapters to apply (added to those named by `model`): ids, or
   * `{"id": "sw", "scale": 0.5}` for a per-request scale (default 1).
   */
  adapters: z.array(z.union([z.string().min(1).max(64), adapterWithScale])).max(16).optional(),
  max_tokens: z.number().int().positive().nullable().optional(),
  temperature: z.number().min(0).max(2).nullable().optional(),
  top_p: z.number().gt(0).max(1).nullable().optional(),
  /** Extension (vLLM-style): keep the k most likely tokens; 0 = off. */
  top_k: z.number().int().min(0).optional(),
  /** Extension (HF-style): > 1 discourages repeating tokens. */
  repetition_penalty: z.number().positive().max(10).optional(),
  seed: z.number().int().min(0).max(Number.MAX_SAFE_INTEGER).nullable().optional(),
  n: z.number().int().min(1).max(8).nullable().optional(),
  stop,
  stream: z.boolean().nullable().optional(),
  stream_options: z.object({ include_usage: z.boolean().optional() }).nullable().optional(),
  user: z.string().max(256).optional(),
  presence_penalty: z.number().min(-2).max(2).nullable().optional(),
  frequency_penalty: z.number().min(-2).max(2).nullable().optional(),
  logit_bias: z.record(z.string(), z.number()).nullable().optional(),
};

export const completionRequestSchema = z.object({
  ...common,
  prompt: z.union([z.string(), z.array(z.string()).min(1).max(16), z.array(tokenId).min(1), z.array(z.array(tokenId).min(1)).min(1).max(16)]),
  echo: z.boolean().nullable().optional(),
  /** Report each token's log-probability and this many most likely alternatives (OpenAI allows up to 5, vLLM 20). */
  logprobs: z.number().int().min(0).max(MAX_LOGPROBS).nullable().optional(),
  suffix: z.string().nullable().optional(),
  best_of: z.number().int().nullable().optional(),
});
export type CompletionRequest = z.infer<typeof completionRequestSchema>;

const textPart = z.object({ type: z.literal('text'), text: z.string() });
const chatMessage = z.object({
  role: z.enum(['system', 'developer', 'user', 'assistant']),
  content: z.union([z.string(), z.array(textPart)]),
  name: z.string().optional(),
});

export const chatRequestSchema = z.object({
  ...common,
  messages: z.array(chatMessage).min(1).max(256),
  max_completion_tokens: z.number().int().positive().nullable().optional(),
  logprobs: z.boolean().nullable().optional(),
  top_logprobs: z.number().int().nullable().optional(),
  tools: z.array(z.unknown()).optional(),
  tool_choice: z.unknown().optional(),
  response_format: z.object({ type: z.string() }).optional(),
});
export type ChatRequest = z.infer<typeof chatRequestSchema>;

export const loadAdapterSchema = z.object({
  id: z.string().min(1).max(64),
  /** Directory of the adapter, relative to the adapters directory (default: the id). */
  path: z.string().min(1).max(4096).optional(),
});

/** Parse `body` with `schema`, or throw BAD_ARGUMENT naming every problem. */
export function parseBody<T>(schema: z.ZodType<T>, body: unknown, what: string): T {
  if (body === undefined || body === null || typeof body !== 'object' || Array.isArray(body)) {
    throw new SparsetuneError('BAD_ARGUMENT', `${what}: the body must be a JSON object`);
  }
  const r = schema.safeParse(body);
  if (!r.success) {
    const issues = r.error.issues.map((i) => `${i.path.map(String).join('.') || '(body)'}: ${i.message}`).join('; ');
    throw new SparsetuneError('BAD_ARGUMENT', `${what}: ${issues}`);
  }
  return r.data;
}

/** Refuse options the server does not implement, naming the alternative when there is one. */
export function refuseUnsupported(req: CompletionRequest | ChatRequest): void {
  const no = (cond: unknown, msg: string) => {
    if (cond) throw new SparsetuneError('BAD_ARGUMENT', msg);
  };
  no(req.presence_penalty, 'presence_penalty is not supported; use repetition_penalty (e.g. 1.1)');
  no(req.frequency_penalty, 'frequency_penalty is not supported; use repetition_penalty (e.g. 1.1)');
  no(req.logit_bias && Object.keys(req.logit_bias).length, 'logit_bias is not supported');
  if ('prompt' in req) {
    no(req.echo, 'echo is not supported');
    no(req.suffix, 'suffix is not supported');
    no(req.best_of !== undefined && req.best_of !== null && req.best_of !== 1, 'best_of is not supported');
  } else {
    no(req.logprobs, 'logprobs is not supported on chat completions; use /v1/completions with logprobs');
    no(req.top_logprobs, 'top_logprobs is not supported on chat completions; use /v1/completions with logprobs');
    no(req.tools && req.tools.length, 'tools are not supported');
    no(req.response_format && req.response_format.type !== 'text', 'response_format other than "text" is not supported');
  }
}
