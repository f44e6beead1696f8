/**
 * PAT's hybrid sparsification modules (HSMs) and loss terms, as graph pieces.
 *
 * One HSM sits on every write into the residual stream (embedding output, attention
 * output, MLP output): h(x) = s ⊙ mask ⊙ (x + U(D x)), with D [k, d] Kaiming-uniform,
 * U [d, k] zeros and s [d] ones, so each HSM is the identity at init. All HSMs share ONE
 * trainable mask-logit vector m [d], so a pruned channel is zero everywhere in the stream.
 */
import type { Graph, Value } from '../engine/ir.js';
import {
  abs, add, cast, constTensor, div, gemm, greater, greaterOrEqual, maximum, mul, reduceMean, reduceSum, scalar, sigmoid, stopGradient, straightThrough, sub,
} from '../engine/ops/index.js';
import { linear } from '../engine/nn.js';
import type { ModelHooks, ResidualKind } from '../models/hooks.js';
import type { TrainableParam } from '../train/method.js';
import { initRng, kaimingUniform, paramValue } from './common.js';

export interface Hsm {
  /** `embed`, `layers.<l>.attn` or `layers.<l>.mlp`. */
  key: string;
  D: TrainableParam;
  U: TrainableParam;
  s: TrainableParam;
}

/** The HSM key of a residual write. */
export function hsmKey(kind: ResidualKind, layer: number): string {
  return kind === 'embed' ? 'embed' : `layers.${layer}.${kind}`;
}

/**
 * HSMs for a Llama model with `layers` blocks and hidden width `d`, rank `k`. `embed: false`
 * (tied embeddings) leaves the embedding without an HSM: it then gets the shared mask alone.
 */
export function createHsms(layers: number, d: number, k: number, seed: number, opts: { embed?: boolean } = {}): Hsm[] {
  const rand = initRng(seed ^ 0x5a17);
  const keys = [...(opts.embed === false ? [] : ['embed']), ...Array.from({ length: layers }, (_, l) => [`layers.${l}.attn`, `layers.${l}.mlp`]).flat()];
  return keys.map((key) => ({
    key,
    D: { name: `pat.hsm.${key}.D`, shape: [k, d], data: kaimingUniform(k * d, d, rand), decay: true },
    U: { name: `pat.hsm.${key}.U`, shape: [d, k], data: new Float32Array(d * k), decay: true },
    s: { name: `pat.hsm.${key}.s`, shape: [d], data: new Float32Array(d).fill(1), decay: false },
  }));
}

/** Names of the per-step schedule inputs the training graph declares. */
export const SCHEDULE_INPUTS = { temperature: 'pat.temperature', bias: 'pat.bias', live: 'pat.mask_live' } as const;

function scalarInput(g: Graph, name: string): Value {
  return g.inputs.find((v) => v.name === name) ?? g.input(name, 'f32', [1]);
}

/**
 * The channel mask as a graph value. `train`: sigmoid(T·m) + b, where the LM loss reaches
 * m only while `pat.mask_live` is 1 (0 after the freeze point: forward unchanged, gradient
 * stopped). `eval`: the hard mask 1[m >= 0].
 */
export function maskValue(g: Graph, m: TrainableParam, mode: 'train' | 'eval'): Value {
  const mv = paramValue(g, m);
  if (mode === 'eval') return cast(greaterOrEqual(mv, 0), 'f32');
  const live = scalarInput(g, SCHEDULE_INPUTS.live);
  const gated = add(mul(mv, live), mul(stopGradient(mv), sub(scalar(g, 1, 'f32'), live)));
  return add(sigmoid(mul(gated, scalarInput(g, SCHEDULE_INPUTS.temperature))), scalarInput(g, SCHEDULE_INPUTS.bias));
}

/**
 * Residual hook applying the HSMs with the shared mask (computed once per graph). An
 * embedding without an HSM (tied embeddings) is multiplied by the mask alone, so pruned
 * channels are zero in the stream from the start either way.
 */
export function hsmHooks(hsms: Hsm[], m: TrainableParam, mode: 'train' | 'eval'): ModelHooks {
  const byKey = new Map(hsms.map((h) => [h.key, h]));
  const masks = new WeakMap<Graph, Value>();
  return {
    residual: (kind, layer, h, g) => {
      const hsm = byKey.get(hsmKey(kind, layer));
      if (!hsm && kind !== 'embed') return h;
      let mask = masks.get(g);
      if (!mask) masks.set(g, (mask = maskValue(g, m, mode)));
      if (!hsm) return mul(h, mask);
      const mixed = add(h, linear(linear(h, paramValue(g, hsm.D)), paramValue(g, hsm.U)));
      return mul(mixed, mul(paramValue(g, hsm.s), mask));
    },
  };
}

/**
 * Mask loss: countWeight·|count(m >= 0) − dKeep| / dKeep (count through a straight-through
 * binarizer: forward 1[m >= 0], gradient identity) + mean((m − 0.5)²) over m > 0
 * + mean((m + 0.5)²) over m <= 0 (an empty side contributes 0). Returns the loss and the count.
 */
export function maskLoss(g: Graph, m: TrainableParam, dKeep: number, countWeight: number): { loss: Value; count: Value } {
  const mv = paramValue(g, m);
  const count = reduceSum(straightThrough(cast(greaterOrEqual(mv, 0), 'f32'), mv), [0]);
  const countLoss = mul(abs(sub(count, dKeep)), countWeight / dKeep);
  const pos = cast(greater(mv, 0), 'f32');
  const neg = sub(scalar(g, 1, 'f32'), pos);
  const sideMean = (sel: Value, centre: number): Value => {
    const dev = sub(mv, centre);
    // The count comes from a comparison, so it is a constant for autodiff.
    return div(reduceSum(mul(mul(dev, dev), sel), [0]), maximum(reduceSum(sel, [0]), 1));
  };
  return { loss: add(countLoss, add(sideMean(pos, 0.5), sideMean(neg, -0.5))), count };
}

/** Identity loss of one HSM: mean((D Dᵀ − I_k)²), keeping D orthonormal so s carries the scale. */
export function identityLoss(g: Graph, D: TrainableParam): Value {
  const k = D.shape[0];
  const key = `pat.eye.${k}`;
  let eye = g.memo.get(key);
  if (!eye) {
    const data = new Float32Array(k * k);
    for (let i = 0; i < k; i++) data[i * k + i] = 1;
    eye = constTensor(g, { dtype: 'f32', shape: [k, k], data }, 'eye');
    g.memo.set(key, eye);
  }
  const Dv = paramValue(g, D);
  const diff = sub(gemm(Dv, Dv, { transB: true }), eye);
  return reduceMean(mul(diff, diff), [0, 1]);
}
