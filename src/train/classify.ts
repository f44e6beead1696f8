/**
 * Classification with a causal LM by log-likelihood: score each candidate label as the
 * continuation of the prompt and pick the most likely one.
 *
 * Tokenization follows the {"prompt","completion"} training rule of io/datasets.ts:
 * encode(prompt + label) (+ EOS), and the label's tokens are those after the common prefix
 * with encode(prompt). So a model fine-tuned on prompt -> label completions is scored on
 * exactly the tokens it was trained to produce. With `appendEos` (default) the score is the
 * log-probability that the completion is exactly the label (a label that is a prefix of
 * another cannot win just by being shorter).
 */
import { SparsetuneError } from '../errors.js';
import type { CausalLM, KvCache } from '../models/causal-lm.js';
import type { ModelHooks } from '../models/hooks.js';
import type { HostTensor } from '../tensor.js';

export interface ScoreOptions {
  /** Hooks of an unmerged method (e.g. `method.hooks('eval')`); default none. */
  hooks?: ModelHooks;
  /** Feeds those hooks need (adapter params...). */
  extraFeeds?: Record<string, HostTensor>;
  /** Score label + EOS (default true when the tokenizer has an EOS token). */
  appendEos?: boolean;
  /** Total log-probability of the label tokens (`sum`, default) or its per-token mean. */
  reduction?: 'sum' | 'mean';
}

export interface ClassificationExample {
  prompt: string;
  /** The gold label; must be one of the candidate labels. */
  label: string;
}

export interface ClassificationResult {
  accuracy: number;
  correct: number;
  total: number;
  /** Predicted label of every example, in order. */
  predictions: string[];
  /** Per example, the score of every candidate label (in the order of `labels`). */
  scores: number[][];
}

interface Row {
  ids: number[];
  /** First position (in `ids`) of the label's tokens. */
  start: number;
}

function commonPrefix(a: readonly number[], b: readonly number[]): number {
  const n = Math.min(a.length, b.length);
  let i = 0;
  while (i < n && a[i] === b[i]) i++;
  return i;
}

function tokenizerOf(model: CausalLM) {
  const tok = model.tokenizer;
  if (!tok) throw new SparsetuneError('BAD_ARGUMENT', `classification needs a tokenizer, but the model from ${model.source} has none (tokenizer.json missing)`);
  return tok;
}

function labelRows(model: CausalLM, prompt: string, labels: readonly string[], appendEos: boolean | undefined): Row[] {
  const tok = tokenizerOf(model);
  const promptIds = tok.encode(prompt);
  const eos = (appendEos ?? true) ? tok.eosId : undefined;
  return labels.map((label) => {
    const ids = tok.encode(prompt + label);
    if (eos !== undefined) ids.push(eos);
    const start = commonPrefix(promptIds, ids);
    if (start === 0) throw new SparsetuneError('BAD_ARGUMENT', `cannot score label ${JSON.stringify(label)}: the prompt is empty and the tokenizer adds no BOS, so its first token has no context; give a non-empty prompt`);
    if (start >= ids.length) throw new SparsetuneError('BAD_ARGUMENT', `label ${JSON.stringify(label)} adds no tokens after the prompt; give a non-empty label (or keep appendEos on)`);
    return { ids, start };
  });
}

/** log softmax(logits[base .. base+V))[target], in float64. */
function logProb(data: Float32Array, base: number, V: number, target: number): number {
  let max = -Infinity;
  for (let v = 0; v < V; v++) max = Math.max(max, data[base + v]);
  let z = 0;
  for (let v = 0; v < V; v++) z += Math.exp(data[base + v] - max);
  return data[base + target] - max - Math.log(z);
}

/** Repeat each batch row `counts[e]` times (rows of every layer's cached keys/values). */
function expandCache(cache: KvCache, counts: readonly number[]): KvCache {
  const grow = (t: HostTensor<'f32'>): HostTensor<'f32'> => {
    const [, H, P, D] = t.shape;
    const per = H * P * D;
    const total = counts.reduce((a, b) => a + b, 0);
    const data = new Float32Array(total * per);
    let row = 0;
    counts.forEach((n, e) => {
      const src = t.data.subarray(e * per, (e + 1) * per);
      for (let k = 0; k < n; k++) data.set(src, (row++) * per);
    });
    return { dtype: 'f32', shape: [total, H, P, D], data };
  };
  return { k: cache.k.map(grow), v: cache.v.map(grow), length: cache.length };
}

/**
 * Scores of groups of rows sharing a prompt. The shared prefix of each group runs once
 * (prompts left-padded into one batch); its keys/values are copied to the group's label
 * rows, which then run as one batch of short continuations. Padding sits between prefix
 * and continuation; the attention mask and mask-derived positions make it invisible.
 */
async function scoreGroups(model: CausalLM, groups: Row[][], opts: ScoreOptions): Promise<number[][]> {
  const tok = tokenizerOf(model);
  const run = { hooks: opts.hooks, extraFeeds: opts.extraFeeds };
  // Prefix c_e: every row's label starts at or after c_e + 1, so the logits predicting the
  // first label token come from the continuation pass.
  const prefixLen = groups.map((rows) => Math.min(...rows.map((r) => r.start)) - 1);
  const P = Math.max(1, ...prefixLen);
  const prefixAttention = prefixLen.map((c) => [...new Array<number>(P - c).fill(0), ...new Array<number>(c).fill(1)]);
  const prefixIds = groups.map((rows, e) => [...new Array<number>(P - prefixLen[e]).fill(tok.padId), ...rows[0].ids.slice(0, prefixLen[e])]);
  const { cache } = await model.step(prefixIds, prefixAttention, model.emptyCache(groups.length), run);

  const rows = groups.flatMap((rs, e) => rs.map((r) => ({ ...r, group: e, tail: r.ids.length - prefixLen[e] })));
  const L = Math.max(...rows.map((r) => r.tail));
  const ids = rows.map((r) => [...new Array<number>(L - r.tail).fill(tok.padId), ...r.ids.slice(prefixLen[r.group])]);
  const attention = rows.map((r) => [...prefixAttention[r.group], ...new Array<number>(L - r.tail).fill(0), ...new Array<number>(r.tail).fill(1)]);
  const { logits } = await model.step(ids, attention, expandCache(cache, groups.map((g) => g.length)), run);
  const V = logits.shape[2];
  const scores = rows.map((r, b) => {
    const c = prefixLen[r.group];
    let total = 0;
    // Logits at token t - 1 predict token t; token t - 1 sits at column (L - tail) + (t - 1 - c).
    for (let t = r.start; t < r.ids.length; t++) total += logProb(logits.data, (b * L + (L - r.tail) + (t - 1 - c)) * V, V, r.ids[t]);
    return opts.reduction === 'mean' ? total / (r.ids.length - r.start) : total;
  });
  let k = 0;
  return groups.map((g) => g.map(() => scores[k++]));
}

/**
 * Log-likelihood of each label as the continuation of `prompt` (higher is more likely),
 * in the order of `labels`. The prompt runs once; the labels continue it from its KV cache.
 */
export async function scoreLabels(model: CausalLM, prompt: string, labels: readonly string[], opts: ScoreOptions = {}): Promise<number[]> {
  if (labels.length === 0) throw new SparsetuneError('BAD_ARGUMENT', 'scoreLabels: give at least one candidate label');
  return (await scoreGroups(model, [labelRows(model, prompt, labels, opts.appendEos)], opts))[0];
}

/** Index of the largest score (the first one on ties). */
export function argmax(scores: readonly number[]): number {
  let best = 0;
  for (let i = 1; i < scores.length; i++) if (scores[i] > scores[best]) best = i;
  return best;
}

/**
 * Accuracy of argmax-log-likelihood predictions over `examples` with candidate `labels`.
 * `examplesPerBatch` prompts (default 8) run as one prompt pass plus one pass over their
 * examplesPerBatch × labels.length continuations.
 */
export async function classificationAccuracy(
  model: CausalLM,
  examples: readonly ClassificationExample[],
  labels: readonly string[],
  opts: ScoreOptions & { examplesPerBatch?: number } = {},
): Promise<ClassificationResult> {
  if (examples.length === 0) throw new SparsetuneError('BAD_DATA', 'classificationAccuracy: no examples');
  if (labels.length === 0) throw new SparsetuneError('BAD_ARGUMENT', 'classificationAccuracy: give at least one candidate label');
  for (const e of examples) {
    if (!labels.includes(e.label)) throw new SparsetuneError('BAD_DATA', `gold label ${JSON.stringify(e.label)} is not among the candidate labels ${JSON.stringify(labels)}`);
  }
  const per = Math.max(1, opts.examplesPerBatch ?? 8);
  const predictions: string[] = [];
  const allScores: number[][] = [];
  for (let i = 0; i < examples.length; i += per) {
    const chunk = examples.slice(i, i + per);
    const scores = await scoreGroups(model, chunk.map((e) => labelRows(model, e.prompt, labels, opts.appendEos)), opts);
    for (const s of scores) {
      predictions.push(labels[argmax(s)]);
      allScores.push(s);
    }
  }
  const correct = predictions.filter((p, k) => p === examples[k].label).length;
  return { accuracy: correct / examples.length, correct, total: examples.length, predictions, scores: allScores };
}
