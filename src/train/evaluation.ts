/**
 * Held-out evaluation of a model as it stands (base weights, fused adapters, or hooks for
 * adapters that run unfused): token-weighted mean cross-entropy and perplexity.
 */
import { SparsetuneError } from '../errors.js';
import { collate, type TokenizedExample } from '../io/datasets.js';
import type { CausalLM } from '../models/causal-lm.js';
import type { ModelHooks } from '../models/hooks.js';
import type { HostTensor } from '../tensor.js';
import type { Method } from './method.js';
import { paramFeeds } from './param-feeds.js';
import { stepSeed, type EvalResult } from './trainer.js';

/**
 * Feeds that run a method unfused in its eval form (its params plus deterministic eval
 * feeds), the way Trainer.evaluate does; pair them with one `method.hooks('eval')` object.
 */
export function methodEvalFeeds(method: Method, model: CausalLM, seed = 0): Record<string, HostTensor> {
  const ctx = { model, step: 0, totalSteps: 0, lr: 0, seed: stepSeed(seed, 0) };
  return { ...paramFeeds(method.params()), ...(method.evalFeeds?.(ctx) ?? method.stepFeeds?.(ctx) ?? {}) };
}

export interface EvaluateOptions {
  batchSize?: number;
  /** Stop after this many batches (0 or absent = all). */
  maxBatches?: number;
  hooks?: ModelHooks;
  extraFeeds?: Record<string, HostTensor>;
  /** Called after each batch with (batches done, batches total). */
  onBatch?(done: number, total: number): void;
}

/** Loss over every labelled token of `data` (the same definition the trainer uses). */
export async function evaluateLoss(model: CausalLM, data: readonly TokenizedExample[], opts: EvaluateOptions = {}): Promise<EvalResult> {
  if (data.length === 0) throw new SparsetuneError('BAD_DATA', 'evaluation set is empty');
  const bs = opts.batchSize ?? 8;
  if (!Number.isInteger(bs) || bs < 1) throw new SparsetuneError('BAD_ARGUMENT', `batchSize must be a positive integer, got ${bs}`);
  const padId = model.tokenizer?.padId ?? 0;
  let total = Math.ceil(data.length / bs);
  if (opts.maxBatches) total = Math.min(total, opts.maxBatches);
  let sum = 0;
  let tokens = 0;
  for (let k = 0; k < total; k++) {
    const r = await model.loss(collate(data.slice(k * bs, (k + 1) * bs), padId), { hooks: opts.hooks, extraFeeds: opts.extraFeeds });
    if (r.tokens > 0) {
      // A batch with nothing labelled reports a NaN mean; it adds nothing.
      sum += r.loss * r.tokens;
      tokens += r.tokens;
    }
    opts.onBatch?.(k + 1, total);
  }
  if (tokens === 0) throw new SparsetuneError('BAD_DATA', 'evaluation set has no labelled tokens');
  const loss = sum / tokens;
  return { loss, ppl: Math.exp(loss), tokens };
}
