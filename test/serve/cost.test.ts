/**
 * The cost rule on a real model: which set the weights should hold for a run of the mixed
 * batch, and which sets must be fused (the density rule).
 */
import { beforeAll, describe, expect, it } from 'vitest';
import { bundledModelPath } from '../../src/io/model-dir.js';
import type { Adapter } from '../../src/merge/types.js';
import { CausalLM } from '../../src/models/causal-lm.js';
import { ServeSet, SetMember } from '../../src/serve/adapter-set.js';
import { FusePolicy } from '../../src/serve/unfused/cost.js';
import { UnfusedStore } from '../../src/serve/unfused/store.js';
import { denseMask, lora, sparse, sparseMask } from './zoo.js';

let model: CausalLM;
let store: UnfusedStore;
let policy: FusePolicy;
const base = new ServeSet([]);
let uid = 1000;
const setOf = (...xs: [Adapter, number][]) => new ServeSet(xs.map(([a, s]) => new SetMember({ uid: uid++, id: `x${uid}`, payload: () => a }, s)));

beforeAll(async () => {
  model = await CausalLM.load(bundledModelPath());
  store = new UnfusedStore(model, { budgetBytes: 1 << 20, maxUnfusedDensity: 0.25 });
  policy = new FusePolicy(store, 500_000);
});

describe('cost rule', () => {
  it('fuses the set every row uses, keeps the base for a mix, and cancels a fused set only when most rows have it', () => {
    const a = setOf([sparse(model, 1, 0.05), 1]);
    const b = setOf([lora(model, 2, 8), 1]);
    for (const s of [a, b]) store.acquire(s);
    const rows = (spec: [ServeSet, number][]) => spec.flatMap(([set, n]) => Array.from({ length: n }, () => ({ set, tokens: 1, remaining: 30 })));
    expect(policy.choose(rows([[a, 8]]), base, base).fused).toBe(a);
    expect(policy.choose(rows([[a, 8]]), base, base).unfused).toBe(false);
    expect(policy.choose(rows([[a, 1], [b, 1], [base, 6]]), base, base).fused).toBe(base);
    // Already fused and used by most rows: stay (no swap); the rest cancel it.
    const stay = policy.choose(rows([[a, 7], [base, 1]]), a, base);
    expect(stay.fused).toBe(a);
    expect(stay.unfused).toBe(true);
    // Fused, but no row uses it any more: go back to the base.
    expect(policy.choose(rows([[b, 3]]), a, base).fused).not.toBe(a);
    // A set not yet prepared for fast swaps is not swapped in: the run keeps the best ready
    // set and names the wanted one, to be prepared before the next run.
    const notReady = policy.choose(rows([[a, 8]]), base, base, (s) => s !== a);
    expect(notReady.fused).toBe(base);
    expect(notReady.wanted).toBe(a);
    expect(policy.choose(rows([[a, 8]]), base, base, () => true).wanted).toBeUndefined();
    // A swap that would serve one token only is not worth it for a single row.
    policy.nsPerElement = 1e6;
    expect(policy.choose([{ set: a, tokens: 1, remaining: 1 }], base, base).fused).toBe(base);
  });

  it('fuses dense masks (2:4) and runs sparse masks and deltas unfused', () => {
    expect(store.acquire(setOf([denseMask(model), 1])).mustFuse).toMatch(/of the model's dense work per token unfused \(limit 25%\), so it is fused/);
    expect(store.acquire(setOf([sparseMask(model, 3, 0.03), 1])).mustFuse).toBeNull();
    expect(store.acquire(setOf([sparse(model, 4, 0.2), 1])).mustFuse).toBeNull();
    expect(store.acquire(setOf([sparse(model, 5, 0.4), 1])).mustFuse).not.toBeNull();
  });
});
