/**
 * SparseGPT-style (Hessian / OBS) N:M masks (Frantar & Alistarh, 2023), the one-shot prior
 * the official MaskLLM recipe starts from.
 *
 * For a Linear with input Gram matrix H = Σ x·xᵀ (inputGramMatrices in priors.ts), damped by
 * 1% of its mean diagonal, let U be the upper Cholesky factor of H⁻¹ (H⁻¹ = Uᵀ·U). Columns
 * (inputs) are visited in order; at the start of every group of M columns, each row drops
 * the M − N weights with the smallest OBS saliency w² / U_jj². With `updateWeights` the
 * remaining columns then absorb the error of every pruned column (w_{j>i} −= (w_i − q_i) /
 * U_ii · U_ij), which is SparseGPT proper (it changes the weights, so it is not a mask-only
 * method); without it the saliencies are those of the original weights, which is the prior
 * MaskLLM's scripts use (its one-shot checkpoint is made without --update-weight).
 *
 * Everything works on the row view ([out, in], see priors.ts) in float64; cost O(in³ + out·in²).
 */
import { SparsetuneError } from '../errors.js';
import type { LinearSite } from '../models/hooks.js';
import { fromRowView, toRowView } from './priors.js';

export interface SparseGptOptions {
  /** Dampening added to H's diagonal, as a fraction of its mean diagonal (default 0.01). */
  percdamp?: number;
  /** Propagate each pruned column's error to the later columns (SparseGPT proper); default false. */
  updateWeights?: boolean;
}

export interface SparseGptResult {
  /** 0/1 keep mask in the weight's own layout, exactly N:M along the input dimension. */
  mask: Uint8Array;
  /** With updateWeights: the compensated weights (pruned entries 0) in the weight's own layout. */
  weights?: Float32Array;
}

/** In-place lower Cholesky factor of a symmetric positive definite n×n matrix (row-major). */
function choleskyLower(a: Float64Array, n: number): void {
  for (let j = 0; j < n; j++) {
    let d = a[j * n + j];
    for (let k = 0; k < j; k++) d -= a[j * n + k] ** 2;
    if (!(d > 0)) throw new SparsetuneError('BAD_DATA', 'SparseGPT: the damped input Hessian is not positive definite; use more calibration data or a larger percdamp');
    const ljj = Math.sqrt(d);
    a[j * n + j] = ljj;
    for (let i = j + 1; i < n; i++) {
      let s = a[i * n + j];
      for (let k = 0; k < j; k++) s -= a[i * n + k] * a[j * n + k];
      a[i * n + j] = s / ljj;
    }
    for (let k = j + 1; k < n; k++) a[j * n + k] = 0;
  }
}

/**
 * U with H⁻¹ = Uᵀ·U (upper triangular, row-major), from H damped and with dead inputs (zero
 * diagonal) set to 1, as SparseGPT. Returns U and the dead-input flags.
 */
export function inverseHessianFactor(h: Float64Array, n: number, percdamp = 0.01): { u: Float64Array; dead: Uint8Array } {
  if (h.length !== n * n) throw new SparsetuneError('SHAPE_MISMATCH', `SparseGPT: Hessian has ${h.length} entries, expected ${n}x${n}`);
  const a = Float64Array.from(h);
  const dead = new Uint8Array(n);
  let mean = 0;
  for (let i = 0; i < n; i++) {
    if (a[i * n + i] === 0) {
      dead[i] = 1;
      a[i * n + i] = 1;
    }
    mean += a[i * n + i];
  }
  const damp = (percdamp * mean) / n;
  for (let i = 0; i < n; i++) a[i * n + i] += damp;
  choleskyLower(a, n); // H = L·Lᵀ
  // L⁻¹ by forward substitution (lower triangular).
  const li = new Float64Array(n * n);
  for (let c = 0; c < n; c++) {
    li[c * n + c] = 1 / a[c * n + c];
    for (let r = c + 1; r < n; r++) {
      let s = 0;
      for (let k = c; k < r; k++) s += a[r * n + k] * li[k * n + c];
      li[r * n + c] = -s / a[r * n + r];
    }
  }
  // H⁻¹ = L⁻ᵀ·L⁻¹.
  const inv = new Float64Array(n * n);
  for (let i = 0; i < n; i++) {
    for (let j = 0; j <= i; j++) {
      let s = 0;
      for (let k = i; k < n; k++) s += li[k * n + i] * li[k * n + j];
      inv[i * n + j] = s;
      inv[j * n + i] = s;
    }
  }
  // Upper factor: H⁻¹ = Uᵀ·U with U = (lower Cholesky of H⁻¹)ᵀ.
  choleskyLower(inv, n);
  const u = new Float64Array(n * n);
  for (let i = 0; i < n; i++) for (let j = 0; j <= i; j++) u[j * n + i] = inv[i * n + j];
  return { u, dead };
}

/**
 * SparseGPT N:M mask (keep `n` of every `m` consecutive inputs of each row) of one Linear
 * weight (its own layout) from its input Gram matrix `h` ([in, in]).
 */
export function sparseGptNM(weight: Float32Array, site: LinearSite, h: Float64Array, n: number, m: number, opts: SparseGptOptions = {}): SparseGptResult {
  const I = site.inFeatures;
  const O = site.outFeatures;
  if (I % m !== 0) throw new SparsetuneError('BAD_CONFIG', `${site.name}: input dimension ${I} is not a multiple of M=${m}`);
  const { u, dead } = inverseHessianFactor(h, I, opts.percdamp ?? 0.01);
  const w = Float64Array.from(toRowView(weight, site));
  for (let r = 0; r < O; r++) for (let i = 0; i < I; i++) if (dead[i]) w[r * I + i] = 0;
  const mask = new Uint8Array(O * I).fill(1);
  const update = opts.updateWeights ?? false;
  const order = Array.from({ length: m }, (_, k) => k);
  const score = new Float64Array(m);
  for (let r = 0; r < O; r++) {
    const row = r * I;
    for (let i = 0; i < I; i++) {
      if (i % m === 0) {
        // Saliency of the group with the row's current (possibly compensated) weights; keep the n largest.
        for (let k = 0; k < m; k++) score[k] = w[row + i + k] ** 2 / u[(i + k) * I + i + k] ** 2;
        order.sort((a, b) => score[b] - score[a] || a - b);
        for (let k = n; k < m; k++) mask[row + i + order[k]] = 0;
      }
      if (!update || mask[row + i]) continue;
      // Prune column i of this row and spread its error over the later columns.
      const err = w[row + i] / u[i * I + i];
      w[row + i] = 0;
      for (let j = i + 1; j < I; j++) w[row + j] -= err * u[i * I + j];
    }
  }
  const out: SparseGptResult = { mask: fromRowView(mask, site) };
  if (update) {
    const view = Float32Array.from(w, (v, k) => (mask[k] ? v : 0));
    out.weights = site.layout === 'out_in' ? view : transposeBack(view, site);
  }
  return out;
}

/** Row view [out, in] back to a Conv1D layout [in, out]. */
function transposeBack(view: Float32Array, site: LinearSite): Float32Array {
  const { inFeatures: I, outFeatures: O } = site;
  const out = new Float32Array(O * I);
  for (let o = 0; o < O; o++) for (let i = 0; i < I; i++) out[i * O + o] = view[o * I + i];
  return out;
}
