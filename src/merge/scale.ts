/**
 * Scale an adapter's weight delta by a factor (per-request scales in the server, weighted
 * compositions). The scaled adapter is the definition: fusing it (`WeightPatcher.apply`)
 * is what "adapter a at scale s" means everywhere in sparsetune.
 */
import { SparsetuneError } from '../errors.js';
import type { Adapter, LowRankPair } from './types.js';

/**
 * `adapter` with every delta multiplied by `scale`:
 * - additive and structured values become float32(scale · v);
 * - a low-rank pair keeps A and B and gets pair.scale · scale (so its bias delta, which is
 *   applied as pair.scale · biasDelta, scales too).
 * Masks (multiplicative 0/1), pruned payloads and unfused branches (`extra`) have no
 * meaningful scale: an adapter holding any of them only accepts scale 1. Scale 1 returns
 * `adapter` itself (no copy); any other scale returns a new adapter with new value arrays
 * (index arrays and low-rank factors are shared with the input: neither is ever written).
 */
export function scaleAdapter(adapter: Adapter, scale: number): Adapter {
  if (typeof scale !== 'number' || !Number.isFinite(scale)) {
    throw new SparsetuneError('BAD_ARGUMENT', `scaleAdapter: scale ${String(scale)} must be a finite number`);
  }
  if (scale === 1) return adapter;
  const what = `adapter "${adapter.meta.method}"`;
  if (adapter.masks.size) throw new SparsetuneError('BAD_ARGUMENT', `${what} holds masks, which cannot be scaled (a mask keeps or clears weights); use scale 1 for it`);
  if (adapter.pruned) throw new SparsetuneError('BAD_ARGUMENT', `${what} is a pruned (structural) adapter, which cannot be scaled; use scale 1 for it`);
  if (adapter.extra?.size) throw new SparsetuneError('BAD_ARGUMENT', `${what} carries unfused branch tensors, which cannot be scaled; use scale 1 for it`);
  const times = (v: Float32Array): Float32Array => {
    const out = new Float32Array(v.length);
    for (let i = 0; i < v.length; i++) out[i] = scale * v[i];
    return out;
  };
  const out: Adapter = {
    meta: adapter.meta,
    additive: new Map([...adapter.additive].map(([n, d]) => [n, { indices: d.indices, values: times(d.values) }])),
    structured: new Map([...adapter.structured].map(([n, d]) => [n, { ...d, values: times(d.values) }])),
    masks: new Map(),
    lowrank: new Map(
      [...adapter.lowrank].map(([n, p]): [string, LowRankPair] => [n, { A: p.A, B: p.B, scale: p.scale * scale, ...(p.biasDelta ? { biasDelta: p.biasDelta } : {}) }]),
    ),
  };
  return out;
}
