/**
 * Text generation with a KV cache: batched (ragged prompts), greedy or sampled, stop strings
 * and EOS, streaming token events through an async iterator. Runs on a `DecodeSession`
 * (in-place cache, last-position logits).
 */
import { SparsetuneError } from '../errors.js';
import type { HostTensor } from '../tensor.js';
import type { CausalLM } from './causal-lm.js';
import { DecodeSession } from './decode.js';
import type { ModelHooks } from './hooks.js';
import { Sampler, StopStringMatcher, type SamplingOptions } from './sampling.js';

export interface GenerateOptions extends SamplingOptions {
  /** Default: generation_config's max_new_tokens, else 64. */
  maxNewTokens?: number;
  /** Stop when the text contains one of these (the stop string itself is not returned). */
  stop?: string[];
  /** EOS ids that end a row (default: the model's); false = never stop on EOS. */
  eos?: number[] | false;
  hooks?: ModelHooks;
  extraFeeds?: Record<string, HostTensor>;
  signal?: AbortSignal;
}

export type FinishReason = 'stop' | 'length' | 'eos' | 'abort';

export interface GenerationEvent {
  row: number;
  token: number;
  /** Text completed by this token (may be empty while a character or stop string is pending). */
  text: string;
}

export interface GenerationResult {
  ids: number[];
  text: string;
  finishReason: FinishReason;
  promptTokens: number;
}

/** Row b of logits [B, V]. */
function rowLogits(logits: HostTensor<'f32'>, b: number): Float32Array {
  const V = logits.shape[1];
  return logits.data.subarray(b * V, (b + 1) * V);
}

/**
 * Generate continuations for a batch of prompts, yielding one event per new token and
 * returning the final results when done.
 */
export async function* streamGenerate(model: CausalLM, prompts: number[][], opts: GenerateOptions = {}): AsyncGenerator<GenerationEvent, GenerationResult[]> {
  if (prompts.length === 0) return [];
  if (prompts.some((p) => p.length === 0)) throw new SparsetuneError('BAD_ARGUMENT', 'generate: every prompt needs at least one token (e.g. BOS)');
  const maxNew = opts.maxNewTokens ?? model.generation.maxNewTokens ?? 64;
  if (!Number.isInteger(maxNew) || maxNew < 1) throw new SparsetuneError('BAD_ARGUMENT', `maxNewTokens must be a positive integer, got ${maxNew}`);
  const eos = new Set(opts.eos === false ? [] : (opts.eos ?? model.eosIds));
  const tok = model.tokenizer;
  const padId = tok?.padId ?? 0;
  const B = prompts.length;
  const L = Math.max(...prompts.map((p) => p.length));
  const samplers = prompts.map((_, b) => new Sampler({ ...opts, seed: opts.seed === undefined ? undefined : opts.seed + b }));
  const decoders = prompts.map((p) => tok?.streamDecoder({ context: p }) ?? null);
  const stops = prompts.map(() => new StopStringMatcher(opts.stop ?? []));
  const results: GenerationResult[] = prompts.map((p) => ({ ids: [], text: '', finishReason: 'length', promptTokens: p.length }));
  const history = prompts.map((p) => [...p]);
  const done = prompts.map(() => false);

  const maxPos = model.arch.ropeInvFreq ? Infinity : model.config.maxPositionEmbeddings;
  const session = await DecodeSession.open(model, B, { hooks: opts.hooks, extraFeeds: opts.extraFeeds, capacity: Math.min(L + maxNew, maxPos) });
  let logits = await session.prefill(prompts);
  for (let n = 0; n < maxNew; n++) {
    const next: number[] = [];
    for (let b = 0; b < B; b++) {
      if (done[b]) {
        next.push(padId);
        continue;
      }
      if (opts.signal?.aborted) {
        done[b] = true;
        results[b].finishReason = 'abort';
        next.push(padId);
        continue;
      }
      const t = samplers[b].next(rowLogits(logits, b), history[b]);
      next.push(t);
      history[b].push(t);
      if (eos.has(t)) {
        done[b] = true;
        results[b].finishReason = 'eos';
        // Flush a half-finished character held by the decoder, then what the stop matcher holds.
        const held = stops[b].push(decoders[b]?.flush() ?? '');
        const tail = held.stopped ? held.emit : held.emit + stops[b].flush();
        results[b].text += tail;
        if (tail) yield { row: b, token: t, text: tail };
        continue;
      }
      results[b].ids.push(t);
      const piece = decoders[b]?.push(t) ?? '';
      const { emit, stopped } = stops[b].push(piece);
      results[b].text += emit;
      yield { row: b, token: t, text: emit };
      if (stopped) {
        done[b] = true;
        results[b].finishReason = 'stop';
      }
    }
    if (done.every(Boolean) || n === maxNew - 1) break;
    logits = await session.next(next);
  }
  for (let b = 0; b < B; b++) {
    if (results[b].finishReason === 'length' || results[b].finishReason === 'abort') {
      const rest = stops[b].push(decoders[b]?.flush() ?? '').emit + stops[b].flush();
      results[b].text += rest;
    }
  }
  return results;
}

/** Generate for a batch of token-id prompts and collect the results. */
export async function generateIds(model: CausalLM, prompts: number[][], opts: GenerateOptions = {}): Promise<GenerationResult[]> {
  const it = streamGenerate(model, prompts, opts);
  for (;;) {
    const r = await it.next();
    if (r.done) return r.value;
  }
}

/** Generate a continuation of a text prompt (BOS added as the tokenizer says). */
export async function generateText(model: CausalLM, prompt: string, opts: GenerateOptions = {}): Promise<GenerationResult> {
  if (!model.tokenizer) throw new SparsetuneError('BAD_ARGUMENT', `${model.source} has no tokenizer.json; pass token ids to generateIds instead`);
  const ids = model.tokenizer.encode(prompt);
  return (await generateIds(model, [ids], opts))[0];
}
