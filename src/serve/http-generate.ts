/**
 * POST /v1/completions and POST /v1/chat/completions: validate, resolve the adapter set,
 * queue the sequences, then answer with one JSON body or, with `stream: true`, with
 * server-sent events (`data: {chunk}` ... `data: [DONE]`). A client that disconnects
 * cancels its sequences.
 */
import { randomUUID } from 'node:crypto';
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import { SparsetuneError } from '../errors.js';
import { toApiError } from './http-errors.js';
import type { JobEvent } from './job.js';
import { chatRequestSchema, completionRequestSchema, parseBody, refuseUnsupported, type ChatRequest, type CompletionRequest } from './openai-schema.js';
import { chatSpecs, completionSpecs, type TokenLimits } from './prompts.js';
import { LogprobsFormatter, type CompletionLogprobs } from './logprobs.js';
import type { FinishReason, SequenceLogprob } from './sequence.js';
import type { ServeService } from './service.js';

type Kind = 'completion' | 'chat';

/** OpenAI finish_reason of a sequence end. */
function finishReasonOf(r: FinishReason): 'stop' | 'length' {
  return r === 'length' ? 'length' : 'stop';
}

interface Usage {
  prompt_tokens: number;
  completion_tokens: number;
  total_tokens: number;
}

/** The chunk/choice shapes of the two endpoints. */
class Shapes {
  readonly id: string;
  readonly created = Math.floor(Date.now() / 1000);
  constructor(readonly kind: Kind, readonly model: string) {
    this.id = `${kind === 'chat' ? 'chatcmpl' : 'cmpl'}-${randomUUID().replace(/-/g, '')}`;
  }

  private head(object: string) {
    return { id: this.id, object, created: this.created, model: this.model };
  }

  chunk(index: number, text: string | null, finish: 'stop' | 'length' | null, first = false, logprobs: CompletionLogprobs | null = null) {
    if (this.kind === 'completion') {
      return { ...this.head('text_completion'), choices: [{ index, text: text ?? '', logprobs, finish_reason: finish }] };
    }
    const delta = finish !== null && text === null ? {} : first ? { role: 'assistant', content: text ?? '' } : { content: text ?? '' };
    return { ...this.head('chat.completion.chunk'), choices: [{ index, delta, logprobs: null, finish_reason: finish }] };
  }

  usageChunk(usage: Usage) {
    return { ...this.head(this.kind === 'chat' ? 'chat.completion.chunk' : 'text_completion'), choices: [], usage };
  }

  final(texts: string[], finishes: ('stop' | 'length')[], usage: Usage, logprobs?: CompletionLogprobs[]) {
    if (this.kind === 'completion') {
      return {
        ...this.head('text_completion'),
        choices: texts.map((text, index) => ({ index, text, logprobs: logprobs?.[index] ?? null, finish_reason: finishes[index] })),
        usage,
      };
    }
    return {
      ...this.head('chat.completion'),
      choices: texts.map((content, index) => ({ index, message: { role: 'assistant', content }, logprobs: null, finish_reason: finishes[index] })),
      usage,
    };
  }
}

/** Usage over the ends seen (prompt tokens counted once per distinct prompt, as OpenAI does for n > 1). */
function usageOf(ends: Extract<JobEvent, { type: 'end' }>[], promptTokens: number): Usage {
  const completion = ends.reduce((s, e) => s + e.completionTokens, 0);
  return { prompt_tokens: promptTokens, completion_tokens: completion, total_tokens: promptTokens + completion };
}

/** The error a sequence ended with, if it did not end normally. */
function endError(e: Extract<JobEvent, { type: 'end' }>): SparsetuneError | null {
  if (e.finishReason === 'error') return new SparsetuneError('RUNTIME', `generation failed: ${e.error ?? 'unknown error'}`);
  if (e.finishReason === 'cancelled') return new SparsetuneError('UNAVAILABLE', `generation was cancelled: ${e.error ?? 'cancelled'}`);
  return null;
}

export function registerGenerationRoutes(app: FastifyInstance, svc: ServeService, limits: TokenLimits): void {
  const handle = async (kind: Kind, request: FastifyRequest, reply: FastifyReply) => {
    const body =
      kind === 'chat'
        ? parseBody<ChatRequest>(chatRequestSchema, request.body, 'POST /v1/chat/completions')
        : parseBody<CompletionRequest>(completionRequestSchema, request.body, 'POST /v1/completions');
    refuseUnsupported(body);
    const members = svc.resolveMembers(body.model, body.adapters);
    const specs = kind === 'chat' ? chatSpecs(body as ChatRequest, svc.model, limits) : completionSpecs(body as CompletionRequest, svc.model, limits);
    const promptTokens = [...new Set(specs.map((s) => s.prompt))].reduce((n, p) => n + p.length, 0);
    const job = await svc.generate(members, specs);
    // 'close' before the response finished = the client went away: stop generating for it.
    reply.raw.on('close', () => {
      if (!reply.raw.writableFinished) job.cancel();
    });
    if (request.raw.socket?.destroyed) job.cancel(); // gone while the request was being queued
    const shapes = new Shapes(kind, body.model);
    const ends: Extract<JobEvent, { type: 'end' }>[] = [];
    // Completions `logprobs`: one formatter per choice (streaming chunks continue its text offsets).
    const lp = specs[0]?.logprobs === undefined ? null : specs.map(() => new LogprobsFormatter());

    if (body.stream) {
      reply.hijack();
      const res = reply.raw;
      res.writeHead(200, { 'content-type': 'text/event-stream; charset=utf-8', 'cache-control': 'no-cache', connection: 'keep-alive', 'x-accel-buffering': 'no' });
      const send = (obj: unknown) => {
        if (!res.destroyed) res.write(`data: ${JSON.stringify(obj)}\n\n`);
      };
      if (kind === 'chat') specs.forEach((_, i) => send(shapes.chunk(i, '', null, true)));
      let failed: SparsetuneError | null = null;
      for await (const ev of job.stream()) {
        if (ev.type === 'text') send(shapes.chunk(ev.index, ev.text, null, false, lp ? lp[ev.index].format(ev.logprobs ?? []) : null));
        else {
          ends.push(ev);
          const err = endError(ev);
          if (err) failed ??= err;
          else send(shapes.chunk(ev.index, kind === 'chat' ? null : '', finishReasonOf(ev.finishReason)));
        }
      }
      if (failed) send(toApiError(failed).body);
      else if (body.stream_options?.include_usage) send(shapes.usageChunk(usageOf(ends, promptTokens)));
      // The app's onResponse hook counts this request once the stream ends.
      if (!res.destroyed) res.end('data: [DONE]\n\n');
      return reply;
    }

    const texts = specs.map(() => '');
    const finishes = specs.map((): 'stop' | 'length' => 'stop');
    const entries = specs.map((): SequenceLogprob[] => []);
    for await (const ev of job.stream()) {
      if (ev.type === 'text') {
        texts[ev.index] += ev.text;
        if (ev.logprobs) entries[ev.index].push(...ev.logprobs);
      }
      else {
        ends.push(ev);
        const err = endError(ev);
        if (err) {
          job.cancel();
          throw err;
        }
        finishes[ev.index] = finishReasonOf(ev.finishReason);
      }
    }
    return shapes.final(texts, finishes, usageOf(ends, promptTokens), lp ? entries.map((e, i) => lp[i].format(e)) : undefined);
  };

  app.post('/v1/completions', (req, reply) => handle('completion', req, reply));
  app.post('/v1/chat/completions', (req, reply) => handle('chat', req, reply));
}
