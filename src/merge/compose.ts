/**
 * Compose several adapters into one, and convert low-rank pairs to sparse deltas.
 *
 * composeAdapters is exact: applying the result gives the same bits as applying the inputs
 * together (WeightPatcher), whatever the kinds. Per parameter:
 * - touched by one input only: its payloads are copied as they are (a low-rank pair stays
 *   low-rank when its weight and bias are touched by no other input);
 * - touched by several: each input is reduced to its float32 delta (reduce.ts) and the
 *   deltas are summed canonically into one value per element. The sum is stored as an
 *   additive delta when only additive deltas met there, else as a structured block when the
 *   touched elements form one (rows x cols, or the whole matrix — e.g. two LoRAs on the same
 *   weight become one dense delta), else as an additive delta;
 * - masks intersect (bitwise AND) and still apply last.
 * Pruned adapters cannot be composed. Composing the composition with a third adapter is
 * exact only up to the one float32 rounding of the first composition.
 *
 * Weighted composition (`weights`): input k enters as `scaleAdapter(adapters[k], weights[k])`
 * (values times the weight, low-rank scales times the weight), so the result fuses to the
 * same bits as applying the scaled adapters together. Masks cannot be weighted (weight 1 only).
 */
import { SparsetuneError } from '../errors.js';
import { numel as numelOf } from '../tensor.js';
import { contributionsTo, deltaParams, lowRankProduct, mergeContributions, type Contribution } from './reduce.js';
import { scaleAdapter } from './scale.js';
import { ADAPTER_FORMAT, biasParamOf, type Adapter, type AdapterKind, type AdditiveDelta, type LowRankPair, type StructuredDelta } from './types.js';
import { validateAdapter } from './validate.js';

export interface ComposeOptions {
  /** Base parameter shapes; needed only when a structured delta does not carry its shape. */
  shapes?: Map<string, number[]>;
  /** `method` of the result (default "compose"). */
  method?: string;
  /** One weight per adapter (default all 1): adapter k contributes weights[k] times its delta. */
  weights?: readonly number[];
}

/** One adapter equivalent to applying all of `adapters` together (each scaled by its weight). */
export function composeAdapters(inputs: Adapter[], opts: ComposeOptions = {}): Adapter {
  if (inputs.length === 0) throw new SparsetuneError('BAD_ARGUMENT', 'composeAdapters: pass at least one adapter');
  const weights = opts.weights;
  if (weights && weights.length !== inputs.length) {
    throw new SparsetuneError('BAD_ARGUMENT', `composeAdapters: ${weights.length} weight(s) for ${inputs.length} adapter(s); give one weight per adapter`);
  }
  const adapters = weights ? inputs.map((a, k) => scaleAdapter(a, weights[k])) : inputs;
  for (const a of adapters) {
    if (a.pruned) throw new SparsetuneError('BAD_ARGUMENT', `composeAdapters: adapter "${a.meta.method}" is pruned (structural); pruned adapters cannot be composed, merge them into a model instead`);
    validateAdapter(a, { shapes: opts.shapes });
  }
  const base = commonBase(adapters);
  const shapeOf = shapeLookup(adapters, opts.shapes);

  const touchers = new Map<string, number[]>();
  adapters.forEach((a, k) => {
    for (const p of deltaParams(a)) touchers.set(p, [...(touchers.get(p) ?? []), k]);
  });
  const soleToucher = (p: string, k: number): boolean => {
    const t = touchers.get(p)!;
    return t.length === 1 && t[0] === k;
  };
  const pairCopied = (k: number, weight: string): boolean => {
    const pair = adapters[k].lowrank.get(weight)!;
    return soleToucher(weight, k) && (!pair.biasDelta || soleToucher(biasParamOf(weight), k));
  };

  const out: Adapter = {
    meta: {
      format: ADAPTER_FORMAT,
      method: opts.method ?? 'compose',
      kind: 'additive',
      base,
      config: { inputs: inputs.map((a, k) => ({ method: a.meta.method, kind: a.meta.kind, created: a.meta.created, ...(weights ? { weight: weights[k] } : {}) })) },
      created: new Date().toISOString(),
      metrics: {},
    },
    additive: new Map(),
    structured: new Map(),
    masks: new Map(),
    lowrank: new Map(),
  };

  for (const [param, ks] of touchers) {
    const k = ks[0];
    const a = adapters[k];
    const biasPairs = [...a.lowrank.keys()].filter((w) => a.lowrank.get(w)!.biasDelta && biasParamOf(w) === param);
    const copyable =
      ks.length === 1 && (!a.lowrank.has(param) || pairCopied(k, param)) && biasPairs.every((w) => pairCopied(k, w));
    if (copyable) {
      const add = a.additive.get(param);
      if (add) out.additive.set(param, { indices: add.indices.slice(), values: add.values.slice() });
      const st = a.structured.get(param);
      if (st) out.structured.set(param, cloneStructured(st, shapeOf(param)));
      const lr = a.lowrank.get(param);
      if (lr) out.lowrank.set(param, cloneLowRank(lr));
      continue;
    }
    const n = numelKnown(param, shapeOf, adapters);
    const reduced: Contribution[] = ks.map((i) => mergeContributions(contributionsTo(adapters[i], param, shapeOf), n));
    const merged = mergeContributions(reduced, n);
    const onlyAdditive = ks.every((i) => {
      const x = adapters[i];
      return !x.structured.has(param) && !x.lowrank.has(param) && !x.lowrank.has(param.replace(/\.bias$/, '.weight'));
    });
    emitMerged(out, param, merged, onlyAdditive ? undefined : shapeOf(param));
  }

  for (const a of adapters) {
    for (const [param, m] of a.masks) {
      const prev = out.masks.get(param);
      if (!prev) {
        out.masks.set(param, { bits: m.bits.slice(), numel: m.numel });
        continue;
      }
      if (prev.numel !== m.numel) throw new SparsetuneError('BAD_ADAPTER', `composeAdapters: masks on "${param}" cover ${prev.numel} and ${m.numel} elements; they come from different base models`);
      for (let i = 0; i < prev.bits.length; i++) prev.bits[i] &= m.bits[i];
    }
  }

  for (const a of adapters) {
    for (const [name, t] of a.extra ?? []) {
      out.extra ??= new Map();
      if (out.extra.has(name)) throw new SparsetuneError('BAD_ARGUMENT', `composeAdapters: two adapters carry an extra tensor named "${name}"; rename one before composing`);
      out.extra.set(name, { dtype: t.dtype, shape: [...t.shape], data: t.data.slice() } as typeof t);
    }
  }
  out.meta.kind = kindOf(out);
  return out;
}

/**
 * The dense product scale·B·A of a low-rank pair as an additive delta (rounded once to
 * float32, exactly what fusing the pair adds). `budget` keeps only the largest |values|:
 * a count (integer >= 1) or a fraction in (0, 1); ties go to the lower index. The bias
 * delta, if any, is not included.
 */
export function lowRankToAdditive(pair: LowRankPair, shape: number[], opts: { budget?: number } = {}): AdditiveDelta {
  const [outDim, inDim] = [pair.B.shape[0], pair.A.shape[1]];
  if (shape.length !== 2 || shape[0] !== outDim || shape[1] !== inDim) {
    throw new SparsetuneError('SHAPE_MISMATCH', `lowRankToAdditive: B·A is [${outDim}, ${inDim}] but the parameter shape is [${shape}]`);
  }
  const values = Float32Array.from(lowRankProduct(pair));
  const n = values.length;
  const keep = budgetCount(opts.budget, n);
  if (keep >= n) {
    const indices = new Int32Array(n);
    for (let i = 0; i < n; i++) indices[i] = i;
    return { indices, values };
  }
  const mags = values.map(Math.abs);
  const threshold = mags.slice().sort()[n - keep];
  let above = 0;
  for (let i = 0; i < n; i++) if (mags[i] > threshold) above++;
  let tiesLeft = keep - above;
  const indices = new Int32Array(keep);
  const kept = new Float32Array(keep);
  let k = 0;
  for (let i = 0; i < n && k < keep; i++) {
    if (mags[i] > threshold || (mags[i] === threshold && tiesLeft-- > 0)) {
      indices[k] = i;
      kept[k++] = values[i];
    }
  }
  return { indices, values: kept };
}

function budgetCount(budget: number | undefined, n: number): number {
  if (budget === undefined) return n;
  if (!(budget > 0) || !Number.isFinite(budget)) throw new SparsetuneError('BAD_ARGUMENT', `lowRankToAdditive: budget ${budget} must be a count >= 1 or a fraction in (0, 1)`);
  if (budget < 1) return Math.max(1, Math.round(budget * n));
  if (!Number.isInteger(budget)) throw new SparsetuneError('BAD_ARGUMENT', `lowRankToAdditive: budget ${budget} >= 1 must be an integer count (use a value below 1 for a fraction)`);
  return Math.min(budget, n);
}

function commonBase(adapters: Adapter[]): Adapter['meta']['base'] {
  const fps = new Set(adapters.map((a) => a.meta.base.fingerprint).filter((f) => f !== ''));
  const models = new Set(adapters.map((a) => a.meta.base.model).filter((m) => m !== ''));
  if (fps.size > 1 || (fps.size === 0 && models.size > 1)) {
    const list = adapters.map((a) => `"${a.meta.method}" (${a.meta.base.model || '?'}, ${a.meta.base.fingerprint.slice(0, 19) || 'no fingerprint'})`).join(', ');
    throw new SparsetuneError('FINGERPRINT_MISMATCH', `composeAdapters: the adapters were trained on different base models: ${list}; compose only adapters of the same base`);
  }
  return { model: [...models][0] ?? '', fingerprint: [...fps][0] ?? '' };
}

/** Shapes from the caller, else from what the payloads tell (structured shape, low-rank dims). */
function shapeLookup(adapters: Adapter[], shapes?: Map<string, number[]>): (name: string) => number[] | undefined {
  const known = new Map<string, number[]>();
  for (const a of adapters) {
    for (const [name, st] of a.structured) if (st.shape) known.set(name, st.shape);
    for (const [name, p] of a.lowrank) {
      known.set(name, [p.B.shape[0], p.A.shape[1]]);
      if (p.biasDelta) known.set(biasParamOf(name), [p.biasDelta.length]);
    }
  }
  return (name) => shapes?.get(name) ?? known.get(name);
}

function numelKnown(param: string, shapeOf: (n: string) => number[] | undefined, adapters: Adapter[]): number | undefined {
  const s = shapeOf(param);
  if (s) return numelOf(s);
  return adapters.find((a) => a.masks.has(param))?.masks.get(param)!.numel;
}

function emitMerged(out: Adapter, param: string, merged: { idx: Int32Array | null; vals: Float32Array }, shape: number[] | undefined): void {
  if (shape && shape.length === 2) {
    const s: [number, number] = [shape[0], shape[1]];
    if (merged.idx === null) {
      out.structured.set(param, { values: merged.vals, shape: s });
      return;
    }
    const block = asBlock(merged.idx, s);
    if (block) {
      out.structured.set(param, { ...block, values: merged.vals, shape: s });
      return;
    }
  }
  let idx = merged.idx;
  if (idx === null) {
    idx = new Int32Array(merged.vals.length);
    for (let i = 0; i < idx.length; i++) idx[i] = i;
  }
  out.additive.set(param, { indices: idx, values: merged.vals });
}

/** Rows/cols when the sorted flat indices are exactly a rows x cols product set, else null. */
function asBlock(idx: Int32Array, [outDim, inDim]: [number, number]): { rows?: Int32Array; cols?: Int32Array } | null {
  const rows: number[] = [];
  const colSeen = new Uint8Array(inDim);
  for (let k = 0; k < idx.length; k++) {
    const r = Math.floor(idx[k] / inDim);
    if (rows.length === 0 || rows[rows.length - 1] !== r) rows.push(r);
    colSeen[idx[k] - r * inDim] = 1;
  }
  const cols: number[] = [];
  for (let c = 0; c < inDim; c++) if (colSeen[c]) cols.push(c);
  // Distinct elements inside rows x cols, as many as the product: they are the whole product.
  if (rows.length * cols.length !== idx.length) return null;
  return {
    rows: rows.length === outDim ? undefined : Int32Array.from(rows),
    cols: cols.length === inDim ? undefined : Int32Array.from(cols),
  };
}

function cloneStructured(st: StructuredDelta, shape: number[] | undefined): StructuredDelta {
  const out: StructuredDelta = { values: st.values.slice() };
  if (st.rows) out.rows = st.rows.slice();
  if (st.cols) out.cols = st.cols.slice();
  const s = st.shape ?? shape;
  if (s && s.length === 2) out.shape = [s[0], s[1]];
  return out;
}

function cloneLowRank(p: LowRankPair): LowRankPair {
  const out: LowRankPair = {
    A: { dtype: 'f32', shape: [...p.A.shape], data: p.A.data.slice() },
    B: { dtype: 'f32', shape: [...p.B.shape], data: p.B.data.slice() },
    scale: p.scale,
  };
  if (p.biasDelta) out.biasDelta = p.biasDelta.slice();
  return out;
}

/** The single payload kind present, or "additive" for a mix (or nothing). */
function kindOf(a: Adapter): AdapterKind {
  const kinds: AdapterKind[] = [];
  if (a.additive.size) kinds.push('additive');
  if (a.structured.size) kinds.push('structured');
  if (a.lowrank.size) kinds.push('lowrank');
  if (a.masks.size) kinds.push('mask');
  return kinds.length === 1 ? kinds[0] : 'additive';
}
