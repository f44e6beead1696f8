/**
 * One-shot N:M masks without training: magnitude |W|, Wanda |W|·||x|| and SparseGPT (OBS
 * saliency from the input Hessian, optionally with its weight update). They are MaskLLM's
 * priors and the baselines it is compared with (bench/outcomes/maskllm.ts); `oneShotAdapter`
 * packages one as a `mask` adapter that fuses like any other.
 */
import { SparsetuneError } from '../errors.js';
import type { TokenizedExample } from '../io/datasets.js';
import { packBits } from '../merge/bits.js';
import { fingerprintWeights } from '../merge/fingerprint.js';
import { newAdapter, type Adapter, type AdditiveDelta } from '../merge/types.js';
import type { CausalLM } from '../models/causal-lm.js';
import type { LinearSite } from '../models/hooks.js';
import { selectSites } from '../adapters/common.js';
import { activationScores, checkGroupable, fromRowView, inputActivationNorms, inputGramMatrices, magnitudeScores, oneShotNM } from './priors.js';
import { sparseGptNM } from './sparsegpt.js';

export type OneShotKind = 'magnitude' | 'wanda' | 'sparsegpt';

export interface OneShotOptions {
  kind: OneShotKind;
  /** Keep n of every m consecutive inputs (default 2:4). */
  n?: number;
  m?: number;
  /** Linear layers to sparsify (default: every attention and MLP projection). */
  targetModules?: string[] | string;
  /** Calibration examples (needed by wanda and sparsegpt). */
  calibration?: readonly TokenizedExample[];
  /** SparseGPT: dampening as a fraction of the mean Hessian diagonal (default 0.01). */
  percdamp?: number;
  /** SparseGPT: also return the OBS-compensated weights (default false: mask only). */
  updateWeights?: boolean;
  batchSize?: number;
}

/** A one-shot mask of one Linear (weight layout), and SparseGPT's compensated weights if asked. */
export interface OneShotTensor {
  site: LinearSite;
  mask: Uint8Array;
  weights?: Float32Array;
}

/** Default targets: the projections MaskLLM sparsifies (Llama and GPT-2 names). */
export const ONE_SHOT_TARGETS = ['q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj', 'down_proj', 'c_attn', 'c_proj', 'c_fc'];

/** One-shot N:M masks of the sites given (or of `opts.targetModules`). */
export async function oneShotMasks(model: CausalLM, opts: OneShotOptions, sites?: LinearSite[]): Promise<OneShotTensor[]> {
  const n = opts.n ?? 2;
  const m = opts.m ?? 4;
  const targets = sites ?? selectSites(model, opts.targetModules ?? ONE_SHOT_TARGETS);
  for (const s of targets) checkGroupable(s, m);
  const weight = (s: LinearSite) => model.weights.get(s.weightName)!.data;
  if (opts.kind === 'magnitude') return targets.map((site) => ({ site, mask: fromRowView(oneShotNM(magnitudeScores(weight(site), site), n, m), site) }));
  if (!opts.calibration?.length) throw new SparsetuneError('BAD_ARGUMENT', `one-shot ${opts.kind} masks need calibration examples (opts.calibration)`);
  if (opts.kind === 'wanda') {
    const norms = await inputActivationNorms(model, targets, opts.calibration, opts);
    return targets.map((site) => ({ site, mask: fromRowView(oneShotNM(activationScores(weight(site), site, norms.get(site.name)!), n, m), site) }));
  }
  const grams = await inputGramMatrices(model, targets, opts.calibration, opts);
  return targets.map((site) => ({ site, ...sparseGptNM(weight(site), site, grams.get(site.name)!, n, m, { percdamp: opts.percdamp, updateWeights: opts.updateWeights }) }));
}

/**
 * A one-shot N:M `mask` adapter; with SparseGPT's `updateWeights` it also carries the
 * weight changes as additive deltas (masks apply last, so fusing gives the compensated
 * sparse weights).
 */
export async function oneShotAdapter(model: CausalLM, opts: OneShotOptions): Promise<Adapter> {
  const tensors = await oneShotMasks(model, opts);
  const n = opts.n ?? 2;
  const m = opts.m ?? 4;
  const a = newAdapter({
    method: `oneshot-${opts.kind}`,
    kind: 'mask',
    base: { model: model.source, fingerprint: fingerprintWeights(model.weights) },
    config: { kind: opts.kind, n, m, ...(opts.kind === 'sparsegpt' ? { percdamp: opts.percdamp ?? 0.01, updateWeights: opts.updateWeights ?? false } : {}) },
  });
  for (const t of tensors) {
    a.masks.set(t.site.weightName, { bits: packBits(t.mask), numel: t.mask.length });
    if (t.weights) {
      const delta = kept(t.weights, model.weights.get(t.site.weightName)!.data, t.mask);
      if (delta.indices.length) a.additive.set(t.site.weightName, delta);
    }
  }
  a.meta.metrics = { sparsity: 1 - n / m, maskedTensors: tensors.length, pattern: `${n}:${m}` };
  return a;
}

/** Additive delta new − old on the kept entries (pruned ones are zeroed by the mask anyway). */
function kept(next: Float32Array, old: Float32Array, mask: Uint8Array): AdditiveDelta {
  const idx: number[] = [];
  const val: number[] = [];
  for (let i = 0; i < mask.length; i++) {
    if (!mask[i]) continue;
    const d = Math.fround(next[i] - old[i]);
    if (d !== 0) {
      idx.push(i);
      val.push(d);
    }
  }
  return { indices: Int32Array.from(idx), values: Float32Array.from(val) };
}
