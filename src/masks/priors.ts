/**
 * N:M sparsity helpers and one-shot mask priors (magnitude, activation-aware "Wanda"), and the
 * calibration statistics of the data-aware priors (input norms; input Gram matrices for SparseGPT).
 *
 * Every N:M routine works on the *row view* of a Linear weight: [out, in] row-major, so a
 * group is M consecutive input positions of one output row (the dimension summed in the
 * matmul). HF Linear weights already are [out, in]; GPT-2 Conv1D weights are [in, out]
 * and are transposed into / out of the row view by `toRowView` / `fromRowView`.
 */
import { SparsetuneError } from '../errors.js';
import { Graph, type Value } from '../engine/ir.js';
import { matmul, mul, reduceSum, transposeLast2 } from '../engine/ops/index.js';
import { collate, type TokenizedExample } from '../io/datasets.js';
import { CausalLM } from '../models/causal-lm.js';
import type { LinearSite } from '../models/hooks.js';

/** Number of ways to choose n of m. */
export function binomial(m: number, n: number): number {
  let c = 1;
  for (let k = 1; k <= n; k++) c = (c * (m - n + k)) / k;
  return Math.round(c);
}

/**
 * All C(m, n) binary patterns with exactly n ones among m positions, as a row-major
 * [C, m] 0/1 table in lexicographic order of the kept positions ({0,1}, {0,2}, ...).
 */
export function nmCandidates(n: number, m: number): Uint8Array {
  if (!Number.isInteger(n) || !Number.isInteger(m) || n < 1 || n >= m) {
    throw new SparsetuneError('BAD_CONFIG', `N:M sparsity needs integers 1 <= N < M, got ${n}:${m}`);
  }
  const out: number[] = [];
  const pick: number[] = [];
  const walk = (start: number) => {
    if (pick.length === n) {
      const row = new Array<number>(m).fill(0);
      for (const p of pick) row[p] = 1;
      out.push(...row);
      return;
    }
    for (let p = start; p <= m - (n - pick.length); p++) {
      pick.push(p);
      walk(p + 1);
      pick.pop();
    }
  };
  walk(0);
  return Uint8Array.from(out);
}

/** Copy a site's weight (or any tensor laid out like it) into the [out, in] row view. */
export function toRowView(data: Float32Array, site: LinearSite): Float32Array {
  if (site.layout === 'out_in') return data;
  const { inFeatures: I, outFeatures: O } = site;
  const out = new Float32Array(O * I);
  for (let i = 0; i < I; i++) for (let o = 0; o < O; o++) out[o * I + i] = data[i * O + o];
  return out;
}

/** Inverse of `toRowView` for 0/1 masks: row view [out, in] back to the tensor's own layout. */
export function fromRowView(view: Uint8Array, site: LinearSite): Uint8Array {
  if (site.layout === 'out_in') return view;
  const { inFeatures: I, outFeatures: O } = site;
  const out = new Uint8Array(O * I);
  for (let o = 0; o < O; o++) for (let i = 0; i < I; i++) out[i * O + o] = view[o * I + i];
  return out;
}

/** Throw unless the site's input dimension splits into whole groups of m. */
export function checkGroupable(site: LinearSite, m: number): void {
  if (site.inFeatures % m !== 0) {
    throw new SparsetuneError(
      'BAD_CONFIG',
      `${site.name}: input dimension ${site.inFeatures} is not a multiple of M=${m}; leave this module out of targetModules or pick an M that divides it`,
    );
  }
}

/**
 * One-shot N:M mask from importance scores (row view): in every group of m consecutive
 * inputs keep the n highest scores (ties keep the lower position). Returns 0/1 per element.
 */
export function oneShotNM(scores: Float32Array, n: number, m: number): Uint8Array {
  if (scores.length % m !== 0) throw new SparsetuneError('BAD_ARGUMENT', `oneShotNM: ${scores.length} scores do not split into groups of ${m}`);
  const mask = new Uint8Array(scores.length);
  const order = Array.from({ length: m }, (_, k) => k);
  for (let base = 0; base < scores.length; base += m) {
    order.sort((a, b) => scores[base + b] - scores[base + a] || a - b);
    for (let k = 0; k < n; k++) mask[base + order[k]] = 1;
  }
  return mask;
}

/** Magnitude importance |W| in the row view. */
export function magnitudeScores(weight: Float32Array, site: LinearSite): Float32Array {
  const view = toRowView(weight, site);
  const out = new Float32Array(view.length);
  for (let i = 0; i < view.length; i++) out[i] = Math.abs(view[i]);
  return out;
}

/** Activation-aware importance (Wanda): |W_oi| · ||x_i|| in the row view, with `inputNorms` [in]. */
export function activationScores(weight: Float32Array, site: LinearSite, inputNorms: Float32Array): Float32Array {
  if (inputNorms.length !== site.inFeatures) {
    throw new SparsetuneError('SHAPE_MISMATCH', `${site.name}: ${inputNorms.length} input norms for ${site.inFeatures} inputs`);
  }
  const view = toRowView(weight, site);
  const I = site.inFeatures;
  const out = new Float32Array(view.length);
  for (let k = 0; k < view.length; k++) out[k] = Math.abs(view[k]) * inputNorms[k % I];
  return out;
}

/** True when every group of m consecutive entries of the 0/1 row view has exactly n ones. */
export function isExactlyNM(view: Uint8Array, n: number, m: number): boolean {
  if (view.length % m !== 0) return false;
  for (let base = 0; base < view.length; base += m) {
    let ones = 0;
    for (let k = 0; k < m; k++) {
      const v = view[base + k];
      if (v !== 0 && v !== 1) return false;
      ones += v;
    }
    if (ones !== n) return false;
  }
  return true;
}

/**
 * L2 norm of every input feature of the given sites over calibration text: ||x_i|| summed
 * over all real (non-padding) tokens (the Wanda statistic).
 */
export async function inputActivationNorms(
  model: CausalLM,
  sites: LinearSite[],
  examples: readonly TokenizedExample[],
  opts: { batchSize?: number } = {},
): Promise<Map<string, Float32Array>> {
  const sums = await calibrationSums(model, sites, examples, 'sumsq', opts);
  return new Map([...sums].map(([name, acc]) => [name, Float32Array.from(acc, (v) => Math.sqrt(v))]));
}

/**
 * The input Gram matrix H = Σ x·xᵀ of every given site over the real tokens of the
 * calibration text ([in, in] row-major, float64): the layer-wise Hessian of SparseGPT.
 */
export async function inputGramMatrices(
  model: CausalLM,
  sites: LinearSite[],
  examples: readonly TokenizedExample[],
  opts: { batchSize?: number } = {},
): Promise<Map<string, Float64Array>> {
  return calibrationSums(model, sites, examples, 'gram', opts);
}

/**
 * One forward graph over calibration examples whose linear hook records, per site, the
 * per-feature sums of squares of its input ('sumsq', [in]) or its Gram matrix ('gram',
 * [in, in]), padding excluded; sums accumulate in float64 over batches.
 */
async function calibrationSums(
  model: CausalLM,
  sites: LinearSite[],
  examples: readonly TokenizedExample[],
  stat: 'sumsq' | 'gram',
  opts: { batchSize?: number },
): Promise<Map<string, Float64Array>> {
  if (examples.length === 0) throw new SparsetuneError('BAD_DATA', 'calibration (one-shot mask prior): the calibration set is empty');
  const wanted = new Set(sites.map((s) => s.name));
  const g = new Graph('calibration');
  const ids = g.input('input_ids', 'i64', ['batch', 'seq']);
  const positions = g.input('position_ids', 'i64', ['batch', 'seq']);
  const mask = g.input('attention_mask', 'f32', [1, 1, 'seq', 'seq']);
  // 1 for real tokens, 0 for right padding: padding activations must not count.
  const valid = g.input('calibration_valid', 'f32', ['batch', 'seq', 1]);
  const recorded = new Map<string, Value>();
  model.forward(g, { ids, positions, mask }, {
    linear: (site, x, base) => {
      if (wanted.has(site.name) && !recorded.has(site.name)) {
        if (x.rank !== 3) throw new SparsetuneError('BAD_GRAPH', `calibration: input of ${site.name} has rank ${x.rank}, expected [batch, seq, in]`);
        const xv = mul(x, valid);
        recorded.set(site.name, stat === 'sumsq' ? reduceSum(mul(xv, xv), [0, 1]) : reduceSum(matmul(transposeLast2(xv), xv), [0]));
      }
      return base(x);
    },
  });
  for (const s of sites) {
    const v = recorded.get(s.name);
    if (!v) throw new SparsetuneError('BAD_GRAPH', `calibration: site ${s.name} was never reached by the forward pass`);
    g.output(`stat:${s.name}`, v);
  }
  const compiled = await model.runtime.compile(g);
  const sums = new Map(sites.map((s) => [s.name, new Float64Array(stat === 'sumsq' ? s.inFeatures : s.inFeatures * s.inFeatures)]));
  const bs = opts.batchSize ?? 8;
  const padId = model.tokenizer?.padId ?? 0;
  for (let i = 0; i < examples.length; i += bs) {
    const batch = collate(examples.slice(i, i + bs), padId);
    const validData = new Float32Array(batch.batchSize * batch.seqLen);
    for (let k = 0; k < validData.length; k++) validData[k] = batch.attentionMask[k] ? 1 : 0;
    const feeds = { ...CausalLM.trainFeeds(batch), calibration_valid: { dtype: 'f32' as const, shape: [batch.batchSize, batch.seqLen, 1], data: validData } };
    const out = await compiled.run(model.feeds(compiled, feeds));
    for (const s of sites) {
      const acc = sums.get(s.name)!;
      const d = out[`stat:${s.name}`].data as Float32Array;
      for (let k = 0; k < acc.length; k++) acc[k] += d[k];
    }
  }
  return sums;
}
