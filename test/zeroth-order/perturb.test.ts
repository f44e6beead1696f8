import { describe, expect, it } from 'vitest';
import { PerturbationKernel } from '../../src/zeroth-order/perturb.js';
import { sparseMezoThreshold } from '../../src/zeroth-order/thresholds.js';
import { randn, sameBits } from './helpers.js';

/** Three tensors with sizes that leave partial chunks and SIMD tails. */
function makeTensors() {
  return [3001, 1201, 20000].map((n, t) => ({ name: `t${t}`, data: randn(40 + t, n, 0.02) }));
}

describe('PerturbationKernel: WebAssembly passes', () => {
  it('are used for the hash generator only, and not with exactRestore', () => {
    const base = { tensors: makeTensors(), thresholds: null, eps: 1e-3, chunk: 1024 };
    expect(new PerturbationKernel({ ...base, exactRestore: false, generator: 'hash' }).runsInWasm).toBe(true);
    expect(new PerturbationKernel({ ...base, exactRestore: true, generator: 'hash' }).runsInWasm).toBe(false);
    expect(new PerturbationKernel({ ...base, exactRestore: false, generator: 'philox' }).runsInWasm).toBe(false);
  });

  // Sparsity 0: every element a member, many near the threshold; eps 1e-2 lists ~15% of members.
  const cases: [number | undefined, number, number, number][] = [];
  for (const sparsity of [0.8, 0, undefined]) for (const chunk of [7, 1001, 16384]) for (const [eps, n] of [[1e-3, 1], [1e-2, 3]]) cases.push([sparsity, chunk, eps, n]);

  it.each(cases)('give the same bits and side table as the JS loops: sparsity %s, chunk %s, eps %s, n = %s', (sparsity, chunk, eps, n) => {
    const a = makeTensors();
    const b = makeTensors();
    const thresholds = sparsity === undefined ? null : Float64Array.from(a, (t) => sparseMezoThreshold(t.data, sparsity));
    const setup = { thresholds, eps, chunk, exactRestore: false, generator: 'hash' as const };
    const inWasm = new PerturbationKernel({ ...setup, tensors: a });
    const inJs = new PerturbationKernel({ ...setup, tensors: b, useWasm: false });
    expect([inWasm.runsInWasm, inJs.runsInWasm]).toEqual([true, false]);
    for (let step = 0; step < 3; step++) {
      const seeds = Array.from({ length: n }, (_, k) => 100 * step + k);
      const grads = seeds.map((s) => 3 * Math.sin(s + 1));
      for (const kernel of [inWasm, inJs]) {
        for (let k = 0; k < n; k++) {
          kernel.plus(seeds[k]);
          if (step === 1 && k === 0) {
            kernel.restore(seeds[k], 'plus');
            kernel.plus(seeds[k]);
          }
          kernel.minus(seeds[k]);
          if (k < n - 1) kernel.restore(seeds[k], 'minus');
        }
        kernel.restoreAndUpdate(seeds, grads, 0.05, 0.01);
        if (step === 2) kernel.update(seeds, grads, 0.05, 0.01);
      }
      for (let t = 0; t < a.length; t++) expect(sameBits(a[t].data, b[t].data)).toBe(true);
      expect(inWasm.peakSideEntries).toBe(inJs.peakSideEntries);
    }
    if (sparsity !== undefined) expect(inJs.peakSideEntries).toBeGreaterThan(0);
  });
});
