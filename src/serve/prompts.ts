/**
 * From a validated OpenAI request to the sequences to generate: tokenize the prompt(s) or
 * render the chat template, expand `n`, resolve sampling defaults and token limits.
 */
import { SparsetuneError } from '../errors.js';
import type { CausalLM } from '../models/causal-lm.js';
import type { SamplingOptions } from '../models/sampling.js';
import type { ChatRequest, CompletionRequest } from './openai-schema.js';
import type { SequenceSpec } from './sequence.js';

export interface TokenLimits {
  /** Largest max_tokens a request may ask for. */
  maxTokens: number;
  /** Prompt + generated tokens must fit in this many positions. */
  contextLength: number;
}

/** OpenAI's default max_tokens for /v1/completions. */
const COMPLETIONS_DEFAULT_MAX_TOKENS = 16;

function tokenizerOf(model: CausalLM) {
  if (!model.tokenizer) throw new SparsetuneError('BAD_ARGUMENT', `the served model ${model.source} has no tokenizer; send prompts as token id arrays to /v1/completions`);
  return model.tokenizer;
}

/** Token-id prompts of a completions request. */
function completionPrompts(req: CompletionRequest, model: CausalLM): number[][] {
  const p = req.prompt;
  let prompts: number[][];
  if (typeof p === 'string') prompts = [tokenizerOf(model).encode(p)];
  else if (p.every((x) => typeof x === 'string')) prompts = (p as string[]).map((s) => tokenizerOf(model).encode(s));
  else if (p.every((x) => typeof x === 'number')) prompts = [p as number[]];
  else prompts = p as number[][];
  prompts.forEach((ids, i) => {
    if (ids.length === 0) throw new SparsetuneError('BAD_ARGUMENT', `prompt ${i} is empty after tokenization and the tokenizer adds no BOS; send some text`);
    const bad = ids.find((t) => t >= model.vocabSize);
    if (bad !== undefined) throw new SparsetuneError('BAD_ARGUMENT', `prompt ${i}: token id ${bad} is outside the vocabulary (0..${model.vocabSize - 1})`);
  });
  return prompts;
}

/** Token ids of a chat conversation rendered with the model's chat template. */
function chatPrompt(req: ChatRequest, model: CausalLM): number[] {
  const tok = tokenizerOf(model);
  const messages = req.messages.map((m) => ({ role: m.role, content: typeof m.content === 'string' ? m.content : m.content.map((c) => c.text).join('') }));
  const text = tok.applyChatTemplate(messages, { addGenerationPrompt: true });
  const ids = tok.encode(text, tok.templateEmitsBos(text) ? { addBos: false } : {});
  if (ids.length === 0) throw new SparsetuneError('BAD_ARGUMENT', 'the conversation renders to no tokens; send some content');
  return ids;
}

function maxTokensFor(asked: number | null | undefined, fallback: number, promptLen: number, limits: TokenLimits): number {
  if (asked !== undefined && asked !== null && asked > limits.maxTokens) {
    throw new SparsetuneError('BAD_ARGUMENT', `max_tokens ${asked} is above this server's limit of ${limits.maxTokens}; ask for fewer tokens`);
  }
  const room = limits.contextLength - promptLen;
  if (room < 1) throw new SparsetuneError('BAD_ARGUMENT', `the prompt has ${promptLen} tokens but the model's context is ${limits.contextLength}; shorten the prompt`);
  if (asked !== undefined && asked !== null) {
    if (asked > room) throw new SparsetuneError('BAD_ARGUMENT', `prompt (${promptLen} tokens) + max_tokens (${asked}) exceed the model's context of ${limits.contextLength} tokens; lower max_tokens to at most ${room}`);
    return asked;
  }
  return Math.min(fallback, room);
}

function specsFor(
  prompts: number[][],
  req: CompletionRequest | ChatRequest,
  asked: number | null | undefined,
  fallback: number,
  model: CausalLM,
  limits: TokenLimits,
): SequenceSpec[] {
  const n = req.n ?? 1;
  const stop = req.stop === undefined || req.stop === null ? [] : typeof req.stop === 'string' ? [req.stop] : req.stop;
  const specs: SequenceSpec[] = [];
  for (const prompt of prompts) {
    const maxTokens = maxTokensFor(asked, fallback, prompt.length, limits);
    for (let j = 0; j < n; j++) {
      const index = specs.length;
      const sampling: SamplingOptions = {
        temperature: req.temperature ?? model.generation.temperature ?? 1,
        topP: req.top_p ?? undefined,
        topK: req.top_k,
        repetitionPenalty: req.repetition_penalty,
        // Choice i of a seeded request uses seed + i, as generateIds does for batch rows.
        seed: req.seed === undefined || req.seed === null ? undefined : req.seed + index,
      };
      const logprobs = 'prompt' in req && req.logprobs !== undefined && req.logprobs !== null ? req.logprobs : undefined;
      specs.push({ prompt, maxTokens, sampling, stop, eos: model.eosIds, ...(logprobs === undefined ? {} : { logprobs }) });
    }
  }
  return specs;
}

/** Sequences of a /v1/completions request (choice order: prompt-major, then n). */
export function completionSpecs(req: CompletionRequest, model: CausalLM, limits: TokenLimits): SequenceSpec[] {
  return specsFor(completionPrompts(req, model), req, req.max_tokens, Math.min(COMPLETIONS_DEFAULT_MAX_TOKENS, limits.maxTokens), model, limits);
}

/** Sequences of a /v1/chat/completions request. */
export function chatSpecs(req: ChatRequest, model: CausalLM, limits: TokenLimits): SequenceSpec[] {
  return specsFor([chatPrompt(req, model)], req, req.max_completion_tokens ?? req.max_tokens, limits.maxTokens, model, limits);
}
