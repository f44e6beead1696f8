/**
 * vLLM's tokenizer routes: `POST /tokenize` with {prompt[, add_special_tokens = true]} or
 * {messages[, add_generation_prompt = true, add_special_tokens = false]} (special tokens =
 * the BOS the tokenizer adds; the chat template writes its own) answers
 * {count, max_model_len, tokens[, token_strs]}; `POST /detokenize` {tokens} answers {prompt}
 * (special tokens kept, as Hugging Face's decode does by default). `model`, when given, must
 * name the base or loaded adapters (they share the base's tokenizer).
 */
import type { FastifyInstance } from 'fastify';
import { z } from 'zod';
import { SparsetuneError } from '../errors.js';
import type { Tokenizer } from '../io/tokenizer.js';
import { parseBody } from './openai-schema.js';
import { BASE_MODEL_ID } from './registry.js';
import type { ServeService } from './service.js';

const textPart = z.object({ type: z.literal('text'), text: z.string() });
const message = z.object({ role: z.enum(['system', 'developer', 'user', 'assistant']), content: z.union([z.string(), z.array(textPart)]) });

const tokenizeSchema = z.union([
  z.strictObject({
    model: z.string().min(1).max(512).nullable().optional(),
    prompt: z.string(),
    add_special_tokens: z.boolean().optional(),
    return_token_strs: z.boolean().nullable().optional(),
  }),
  z.strictObject({
    model: z.string().min(1).max(512).nullable().optional(),
    messages: z.array(message).min(1).max(256),
    add_generation_prompt: z.boolean().optional(),
    continue_final_message: z.literal(false).optional(),
    add_special_tokens: z.boolean().optional(),
    return_token_strs: z.boolean().nullable().optional(),
  }),
]);

const detokenizeSchema = z.strictObject({
  model: z.string().min(1).max(512).nullable().optional(),
  tokens: z.array(z.number().int().nonnegative()).max(1 << 20),
});

function tokenizerOf(svc: ServeService): Tokenizer {
  if (!svc.model.tokenizer) throw new SparsetuneError('BAD_ARGUMENT', `the served model ${svc.model.source} has no tokenizer.json, so it cannot tokenize`);
  return svc.model.tokenizer;
}

/** Refuse a `model` that is neither the base nor a composition of loaded adapters. */
function checkModel(svc: ServeService, model: string | null | undefined): void {
  if (!model || model === BASE_MODEL_ID || model === svc.baseName) return;
  for (const id of model.split('+')) {
    if (id !== BASE_MODEL_ID && !svc.registry.get(id)) throw new SparsetuneError('NOT_FOUND', `model "${id}" does not exist: it is neither "${BASE_MODEL_ID}" nor a loaded adapter (GET /v1/models lists them)`);
  }
}

export function registerTokenizeRoutes(app: FastifyInstance, svc: ServeService): void {
  app.post('/tokenize', async (req) => {
    const body = parseBody(tokenizeSchema, req.body, 'POST /tokenize');
    checkModel(svc, body.model);
    const tok = tokenizerOf(svc);
    let tokens: number[];
    if ('prompt' in body) {
      tokens = tok.encode(body.prompt, body.add_special_tokens === false ? { addBos: false } : {});
    } else {
      const messages = body.messages.map((m) => ({ role: m.role, content: typeof m.content === 'string' ? m.content : m.content.map((c) => c.text).join('') }));
      const text = tok.applyChatTemplate(messages, { addGenerationPrompt: body.add_generation_prompt ?? true });
      tokens = tok.encode(text, body.add_special_tokens ? {} : { addBos: false });
    }
    return {
      count: tokens.length,
      max_model_len: svc.model.config.maxPositionEmbeddings,
      tokens,
      ...(body.return_token_strs ? { token_strs: tokens.map((t) => tok.idToToken(t) ?? '') } : {}),
    };
  });

  app.post('/detokenize', async (req) => {
    const body = parseBody(detokenizeSchema, req.body, 'POST /detokenize');
    checkModel(svc, body.model);
    const bad = body.tokens.find((t) => t >= svc.model.vocabSize);
    if (bad !== undefined) throw new SparsetuneError('BAD_ARGUMENT', `POST /detokenize: token id ${bad} is outside the vocabulary (0..${svc.model.vocabSize - 1})`);
    return { prompt: tokenizerOf(svc).decode(body.tokens, { skipSpecialTokens: false }) };
  });
}
