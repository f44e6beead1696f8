/**
 * S²FT selection: which attention heads and FFN channels get a trainable slice. Budgets are
 * ratios over the GLOBAL pool of (layer, head) or (layer, channel) pairs, so the count per
 * layer varies and some layers get none (as in the reference). Strategies: seeded random
 * (the reference), or ranking by weight norm, activation norm or gradient norm
 * (largest or smallest first).
 */
import { SparsetuneError } from '../errors.js';
import { grad } from '../engine/autodiff.js';
import type { Value } from '../engine/ir.js';
import { mul, reduceSum } from '../engine/ops/index.js';
import { collate, type TokenizedExample } from '../io/datasets.js';
import type { LlamaConfig } from '../io/config.js';
import { CausalLM } from '../models/causal-lm.js';
import type { LinearSite } from '../models/hooks.js';
import { initRng } from './common.js';

/** The four selectable structures: o_proj input columns (query heads), v_proj output rows (KV heads), down_proj input columns and up_proj output rows (FFN channels). */
export type S2ftPart = 'o' | 'v' | 'down' | 'up';
export const S2FT_PARTS: readonly S2ftPart[] = ['o', 'v', 'down', 'up'];

/** Per part, per layer: the selected unit indices (query heads for o, KV heads for v, channels for down/up), sorted ascending. */
export type S2ftSelection = Record<S2ftPart, number[][]>;

export type S2ftStrategy = 'random' | 'weight-norm' | 'activation-norm' | 'gradient-norm';

/** Per part: one score per global pool entry (layer-major), or absent for parts with budget 0. */
export type PoolScores = Partial<Record<S2ftPart, Float64Array>>;

/** Geometry of the pools of a Llama-family model. */
export interface PoolGeometry {
  layers: number;
  heads: number;
  kvHeads: number;
  headDim: number;
  channels: number;
}

export function poolGeometry(cfg: LlamaConfig): PoolGeometry {
  return { layers: cfg.numLayers, heads: cfg.numHeads, kvHeads: cfg.numKvHeads, headDim: cfg.headDim, channels: cfg.intermediateSize };
}

/** Units per layer of a part. */
export function unitsPerLayer(geo: PoolGeometry, part: S2ftPart): number {
  return part === 'o' ? geo.heads : part === 'v' ? geo.kvHeads : geo.channels;
}

/** Width of one unit in weight rows/columns (head_dim for heads, 1 for channels). */
export function unitWidth(geo: PoolGeometry, part: S2ftPart): number {
  return part === 'o' || part === 'v' ? geo.headDim : 1;
}

/** The HF module kind a part trains. */
export const PART_MODULE: Record<S2ftPart, string> = { o: 'self_attn.o_proj', v: 'self_attn.v_proj', down: 'mlp.down_proj', up: 'mlp.up_proj' };

/** Number of units a ratio selects from the global pool (floor, like the reference). */
export function budget(geo: PoolGeometry, part: S2ftPart, ratio: number): number {
  return Math.floor(geo.layers * unitsPerLayer(geo, part) * ratio + 1e-9);
}

/** Split a set of global pool indices into sorted per-layer unit lists. */
function perLayer(globalIdx: number[], geo: PoolGeometry, part: S2ftPart): number[][] {
  const n = unitsPerLayer(geo, part);
  const out: number[][] = Array.from({ length: geo.layers }, () => []);
  for (const gi of globalIdx) out[Math.floor(gi / n)].push(gi % n);
  for (const l of out) l.sort((a, b) => a - b);
  return out;
}

/** Pick `count` pool entries uniformly at random (seeded partial Fisher-Yates). */
export function randomPick(poolSize: number, count: number, seed: number): number[] {
  const rand = initRng(seed);
  const idx = Array.from({ length: poolSize }, (_, i) => i);
  for (let i = 0; i < count; i++) {
    const j = i + Math.floor(rand() * (poolSize - i));
    [idx[i], idx[j]] = [idx[j], idx[i]];
  }
  return idx.slice(0, count);
}

/** The `count` entries with the largest (or smallest) score; ties go to the lower index. */
export function topByScore(scores: Float64Array, count: number, order: 'largest' | 'smallest'): number[] {
  const idx = Array.from({ length: scores.length }, (_, i) => i);
  const sign = order === 'largest' ? -1 : 1;
  idx.sort((a, b) => sign * (scores[a] - scores[b]) || a - b);
  return idx.slice(0, count);
}

/**
 * Choose units for every part. `scores` is required for non-random strategies; each part
 * draws from its own seeded stream so changing one budget leaves the others' picks alone.
 */
export function selectUnits(
  geo: PoolGeometry,
  ratios: Record<S2ftPart, number>,
  opts: { strategy: S2ftStrategy; order: 'largest' | 'smallest'; seed: number; scores?: PoolScores },
): S2ftSelection {
  const sel = {} as S2ftSelection;
  S2FT_PARTS.forEach((part, k) => {
    const count = budget(geo, part, ratios[part]);
    const poolSize = geo.layers * unitsPerLayer(geo, part);
    let picked: number[] = [];
    if (count > 0) {
      if (opts.strategy === 'random') picked = randomPick(poolSize, count, (opts.seed * 4 + k) | 0);
      else {
        const s = opts.scores?.[part];
        if (!s || s.length !== poolSize) throw new SparsetuneError('BAD_ARGUMENT', `s2ft: strategy ${opts.strategy} needs ${poolSize} scores for part ${part}`);
        picked = topByScore(s, count, opts.order);
      }
    }
    sel[part] = perLayer(picked, geo, part);
  });
  return sel;
}

/** Sum of squares of a [rows, cols] row-major block's row or column groups (float64). */
function groupSquares(data: Float32Array, rows: number, cols: number, axis: 'rows' | 'cols', width: number): Float64Array {
  const groups = (axis === 'rows' ? rows : cols) / width;
  const out = new Float64Array(groups);
  for (let r = 0; r < rows; r++) {
    for (let c = 0; c < cols; c++) {
      const v = data[r * cols + c];
      out[Math.floor((axis === 'rows' ? r : c) / width)] += v * v;
    }
  }
  return out;
}

/** Which axis of a part's weight its units index: o/down read input columns, v/up write output rows. */
export function partAxis(part: S2ftPart): 'rows' | 'cols' {
  return part === 'o' || part === 'down' ? 'cols' : 'rows';
}

function weightNameOf(layer: number, part: S2ftPart): string {
  return `model.layers.${layer}.${PART_MODULE[part]}.weight`;
}

/** Squared Frobenius norm of every unit's slice of its weight (the weight-norm strategy). */
export function weightNormScores(model: CausalLM, geo: PoolGeometry, parts: S2ftPart[]): PoolScores {
  const out: PoolScores = {};
  for (const part of parts) {
    const n = unitsPerLayer(geo, part);
    const s = new Float64Array(geo.layers * n);
    for (let l = 0; l < geo.layers; l++) {
      const w = model.weights.get(weightNameOf(l, part))!;
      s.set(groupSquares(w.data, w.shape[0], w.shape[1], partAxis(part), unitWidth(geo, part)), l * n);
    }
    out[part] = s;
  }
  return out;
}

function siteFor(model: CausalLM, layer: number, part: S2ftPart): LinearSite {
  const name = `model.layers.${layer}.${PART_MODULE[part]}`;
  const site = model.sites().find((s) => s.name === name);
  if (!site) throw new SparsetuneError('UNSUPPORTED_MODEL', `s2ft: the model has no linear ${name}`);
  return site;
}

/** Calibration batches of at most `batchSize` examples. */
function* calibrationBatches(model: CausalLM, data: TokenizedExample[], batchSize: number) {
  const padId = model.tokenizer?.padId ?? 0;
  for (let i = 0; i < data.length; i += batchSize) yield collate(data.slice(i, i + batchSize), padId);
}

/**
 * Activation-norm scores over calibration data: for o/down the squared norm of the slice of
 * the site's INPUT that the unit reads, for v/up the squared norm of the unit's OUTPUT.
 * (Padding positions of a short tail example are counted too; packed windows have none.)
 */
export async function activationNormScores(model: CausalLM, geo: PoolGeometry, parts: S2ftPart[], data: TokenizedExample[], batchSize = 8): Promise<PoolScores> {
  const wanted = new Map<string, { part: S2ftPart; layer: number }>();
  for (const part of parts) for (let l = 0; l < geo.layers; l++) wanted.set(siteFor(model, l, part).name, { part, layer: l });
  const outputs: { name: string; part: S2ftPart; layer: number; value: Value }[] = [];
  const built = model.build('train', {
    linear: (site, x, base) => {
      const y = base(x);
      const w = wanted.get(site.name);
      if (w) {
        const t = partAxis(w.part) === 'cols' ? x : y;
        outputs.push({ name: `sq:${site.name}`, ...w, value: reduceSum(mul(t, t), t.shape.slice(0, -1).map((_, i) => i)) });
      }
      return y;
    },
  });
  for (const o of outputs) built.graph.output(o.name, o.value);
  const compiled = await model.runtime.compile(built.graph);
  const out = emptyScores(geo, parts);
  for (const batch of calibrationBatches(model, data, batchSize)) {
    const res = await compiled.run(model.feeds(compiled, CausalLM.trainFeeds(batch)));
    for (const o of outputs) {
      const sums = res[o.name].data as Float32Array;
      const w = unitWidth(geo, o.part);
      const n = unitsPerLayer(geo, o.part);
      for (let c = 0; c < sums.length; c++) out[o.part]![o.layer * n + Math.floor(c / w)] += sums[c];
    }
  }
  return out;
}

function emptyScores(geo: PoolGeometry, parts: S2ftPart[]): PoolScores {
  const out: PoolScores = {};
  for (const part of parts) out[part] = new Float64Array(geo.layers * unitsPerLayer(geo, part));
  return out;
}

/** Gradient-norm scores: squared norm of dLoss/dW over each unit's slice, summed over calibration batches. */
export async function gradientNormScores(model: CausalLM, geo: PoolGeometry, parts: S2ftPart[], data: TokenizedExample[], batchSize = 8): Promise<PoolScores> {
  const built = model.build('train');
  const entries = parts.flatMap((part) => Array.from({ length: geo.layers }, (_, layer) => ({ name: `gw:${part}:${layer}`, part, layer })));
  const wrt = entries.map((e) => model.paramInput(built.graph, weightNameOf(e.layer, e.part)));
  grad(built.loss!, wrt).forEach((gv, k) => built.graph.output(entries[k].name, gv));
  const compiled = await model.runtime.compile(built.graph);
  // Reduce each full weight gradient to its unit slices on the host (this is a one-off calibration pass).
  const out = emptyScores(geo, parts);
  for (const batch of calibrationBatches(model, data, batchSize)) {
    const res = await compiled.run(model.feeds(compiled, CausalLM.trainFeeds(batch)));
    for (const e of entries) {
      const t = res[e.name];
      const sq = groupSquares(t.data as Float32Array, t.shape[0], t.shape[1], partAxis(e.part), unitWidth(geo, e.part));
      const n = unitsPerLayer(geo, e.part);
      for (let u = 0; u < n; u++) out[e.part]![e.layer * n + u] += sq[u];
    }
  }
  return out;
}
