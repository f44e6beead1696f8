import { describe, expect, it } from 'vitest';
import { SparsetuneError } from '../../src/errors.js';
import { deriveStepSeed, replayTrajectory, ZerothOrderOptimizer, type ZoConfig } from '../../src/zeroth-order/mezo.js';
import { normalAt, uniform01, type NoiseGenerator, type TrainableTensor } from '../../src/zeroth-order/rng.js';
import { cloneTensors, leastSquares, randn, sameBits, ulp32 } from './helpers.js';

/** Two tensors of different sizes, so per-tensor streams and thresholds are exercised. */
function makeTensors(scale = 0.02): TrainableTensor[] {
  return [
    { name: 'a', data: randn(21, 1200, scale) },
    { name: 'b', data: randn(22, 800, scale) },
  ];
}

async function train(tensors: TrainableTensor[], cfg: ZoConfig, steps: number): Promise<ZerothOrderOptimizer> {
  const loss = leastSquares(tensors);
  const opt = new ZerothOrderOptimizer(tensors, cfg);
  for (let s = 0; s < steps; s++) await opt.step(loss);
  return opt;
}

function expectCode(fn: () => unknown, code: string): void {
  try {
    fn();
  } catch (err) {
    expect(err).toBeInstanceOf(SparsetuneError);
    expect((err as SparsetuneError).code).toBe(code);
    return;
  }
  throw new Error(`expected SparsetuneError ${code}`);
}

describe('ZerothOrderOptimizer: validation', () => {
  const ok: ZoConfig = { lr: 1e-3, eps: 1e-3, seed: 1 };
  it.each([
    ['lr = 0', { ...ok, lr: 0 }],
    ['negative lr', { ...ok, lr: -1 }],
    ['NaN lr', { ...ok, lr: NaN }],
    ['infinite lr', { ...ok, lr: Infinity }],
    ['eps = 0', { ...ok, eps: 0 }],
    ['infinite eps', { ...ok, eps: Infinity }],
    ['sparsity 1', { ...ok, sparsity: 1 }],
    ['fractional seed', { ...ok, seed: 0.5 }],
    ['samples 0', { ...ok, samples: 0 }],
    ['an unknown key', { ...ok, learningRate: 1 } as ZoConfig],
    ['an unknown generator', { ...ok, generator: 'mt19937' } as unknown as ZoConfig],
  ])('rejects %s', (_label, cfg) => {
    expectCode(() => new ZerothOrderOptimizer(makeTensors(), cfg), 'BAD_ARGUMENT');
  });

  it('rejects an empty tensor set, empty or shared buffers, and non-finite weights', () => {
    expectCode(() => new ZerothOrderOptimizer([], ok), 'BAD_ARGUMENT');
    expectCode(() => new ZerothOrderOptimizer([{ name: 'e', data: new Float32Array(0) }], ok), 'BAD_ARGUMENT');
    const buf = new Float32Array(10);
    expectCode(() => new ZerothOrderOptimizer([{ name: 'x', data: buf.subarray(0, 6) }, { name: 'y', data: buf.subarray(5) }], ok), 'BAD_ARGUMENT');
    expect(() => new ZerothOrderOptimizer([{ name: 'x', data: buf.subarray(0, 5) }, { name: 'y', data: buf.subarray(5) }], ok)).not.toThrow();
    expectCode(() => new ZerothOrderOptimizer([{ name: 'n', data: new Float32Array([1, NaN]) }], ok), 'BAD_ARGUMENT');
    expectCode(() => new ZerothOrderOptimizer([{ name: 'n', data: new Float32Array([1, NaN]) }], { ...ok, sparsity: 0.5 }), 'BAD_ARGUMENT');
  });

  it('rejects a bad per-step lr and a step started while another runs', async () => {
    const tensors = makeTensors();
    const opt = new ZerothOrderOptimizer(tensors, ok);
    await expect(opt.step(async () => 1, { lr: -1 })).rejects.toThrow(/Learning rate/);
    const slow = opt.step(() => new Promise((resolve) => setTimeout(() => resolve(1), 10)));
    await expect(opt.step(async () => 1)).rejects.toThrow(/another step/);
    await slow;
    expect(opt.stepsTaken).toBe(1);
  });
});

describe('ZerothOrderOptimizer: the MeZO step', () => {
  it.each(['hash', 'philox'] as NoiseGenerator[])('perturbs by exactly +eps·z and -eps·z and applies x - lr·(g·z + wd·x) (checked against an independent formula), generator %s', async (generator) => {
    const tensors = makeTensors();
    const start = cloneTensors(tensors);
    const cfg: ZoConfig = { lr: 0.05, eps: 1e-3, seed: 42, weightDecay: 0.1, exactRestore: true, generator };
    const opt = new ZerothOrderOptimizer(tensors, cfg);
    const seed = deriveStepSeed(42, 0, 0);
    const f = Math.fround;
    const snapshots: Float32Array[][] = [];
    const loss = leastSquares(tensors);
    const result = await opt.step(async () => {
      snapshots.push(tensors.map((t) => t.data.slice()));
      return loss();
    });
    expect(snapshots).toHaveLength(2);
    const g = result.projectedGrads[0];
    expect(opt.trajectory).toEqual([{ step: 0, seed, projectedGrad: g, lr: 0.05 }]);
    for (let t = 0; t < tensors.length; t++) {
      for (let i = 0; i < tensors[t].data.length; i++) {
        const x = start[t].data[i];
        const z = normalAt(seed, t, i, generator);
        const d = 1e-3 * z;
        expect(snapshots[0][t][i]).toBe(f(x + d));
        // The − state is rebuilt from the + state: within one float32 rounding of x − d.
        expect(Math.abs(snapshots[1][t][i] - (x - d))).toBeLessThanOrEqual(1.5 * ulp32(Math.abs(x) + Math.abs(d)));
        expect(tensors[t].data[i]).toBe(f(x - 0.05 * (g * z + 0.1 * x)));
      }
    }
  });

  it('reduces a 2000-parameter least-squares loss', async () => {
    const tensors = makeTensors(0);
    const loss = leastSquares(tensors);
    const before = await loss();
    const opt = await train(tensors, { lr: 0.3, eps: 1e-3, seed: 3 }, 300);
    const after = await loss();
    expect(after).toBeLessThan(0.2 * before);
    expect(opt.trajectory).toHaveLength(300);
    expect(opt.sideTableBytes).toBe(0); // plain MeZO keeps no per-element state
  });

  it('averages n samples per step and still reduces the loss', async () => {
    const tensors = makeTensors(0);
    const loss = leastSquares(tensors);
    const before = await loss();
    const opt = await train(tensors, { lr: 0.3, eps: 1e-3, seed: 4, samples: 4 }, 100);
    expect(await loss()).toBeLessThan(0.6 * before);
    expect(opt.trajectory).toHaveLength(400);
    expect(new Set(opt.trajectory.map((r) => r.seed)).size).toBe(400);
  });

  it.each([
    ['MeZO', { lr: 0.2, eps: 1e-3, seed: 9, samples: 2, weightDecay: 0.01 }],
    ['Sparse-MeZO', { lr: 0.2, eps: 2e-3, seed: 9, samples: 2, weightDecay: 0.01, sparsity: 0.8 }],
  ] as [string, ZoConfig][])('is deterministic: two runs with one seed are bit-identical, another seed differs; chunk size changes nothing (%s)', async (_label, cfg) => {
    const runs = [];
    for (const chunk of [16384, 16384, 7, 1001]) {
      const tensors = makeTensors();
      const opt = await train(tensors, { ...cfg, chunk }, 20);
      runs.push({ tensors, trajectory: opt.trajectory });
    }
    const other = makeTensors();
    await train(other, { ...cfg, seed: 10 }, 20);
    for (const run of runs.slice(1)) {
      expect(run.trajectory).toEqual(runs[0].trajectory);
      for (let t = 0; t < 2; t++) expect(sameBits(run.tensors[t].data, runs[0].tensors[t].data)).toBe(true);
    }
    expect(sameBits(other[0].data, runs[0].tensors[0].data)).toBe(false);
  });

  it('uses a per-step lr override and records it', async () => {
    const tensors = makeTensors();
    const opt = new ZerothOrderOptimizer(tensors, { lr: 0.1, eps: 1e-3, seed: 1 });
    const loss = leastSquares(tensors);
    await opt.step(loss);
    await opt.step(loss, { lr: 0.01 });
    expect(opt.trajectory.map((r) => r.lr)).toEqual([0.1, 0.01]);
  });
});

const uniformAt = (i: number) => uniform01(51, 0, i);

describe('perturb/restore reversibility', () => {
  /** Perturbs, then aborts the step (NaN or a throwing callback) so the restore alone is measured. */
  /** Elements that moved (of the N(0, 0.02) tensors) and the worst move in ulps (of all tensors). */
  async function cycleDrift(cfg: ZoConfig, failAt: 'none' | 'plus' | 'minus'): Promise<{ changed: number; worstUlps: number; total: number }> {
    // Plus magnitudes from 1e-7 to 1e-1 and signed zeros: where rounding loses the most bits.
    const wide = new Float32Array(3000);
    for (let i = 0; i < wide.length; i++) wide[i] = Math.sign(normalAt(50, 0, i)) * 10 ** (-1 - 6 * uniformAt(i));
    wide.set([0, -0, 0, -0], 0);
    const tensors = [...makeTensors(), { name: 'wide', data: wide }];
    const start = cloneTensors(tensors);
    const opt = new ZerothOrderOptimizer(tensors, cfg);
    const seed = deriveStepSeed(cfg.seed, 0, 0);
    let calls = 0;
    const outcome = opt.step(async () => {
      calls++;
      if ((failAt === 'plus' && calls === 1) || (failAt === 'minus' && calls === 2)) return NaN;
      // Stop before the update: a throwing callback restores the weights exactly as NaN does.
      if (calls === 2) throw new Error('stop here');
      return 1;
    });
    if (failAt === 'none') await expect(outcome).rejects.toThrow('stop here');
    else await expect(outcome).rejects.toMatchObject({ code: 'TRAINING_DIVERGED' });
    expect(opt.trajectory).toHaveLength(0);
    let changed = 0;
    let worstUlps = 0;
    let total = 0;
    for (let t = 0; t < tensors.length; t++) {
      for (let i = 0; i < tensors[t].data.length; i++) {
        const x = start[t].data[i];
        const now = tensors[t].data[i];
        const typical = tensors[t].name !== 'wide'; // the fraction is reported on N(0, 0.02) weights
        if (typical) total++;
        if (Object.is(now, x)) continue;
        if (typical) changed++;
        const d = cfg.eps * Math.abs(normalAt(seed, t, i));
        worstUlps = Math.max(worstUlps, Math.abs(now - x) / ulp32(Math.max(Math.abs(x), d)));
      }
    }
    return { changed, worstUlps, total };
  }

  it('restores bit-identically with exactRestore, from either perturbed state, dense and sparse', async () => {
    for (const sparsity of [undefined, 0.8]) {
      for (const failAt of ['none', 'plus', 'minus'] as const) {
        const { changed, worstUlps } = await cycleDrift({ lr: 1e-3, eps: 1e-3, seed: 5, sparsity, exactRestore: true }, failAt);
        expect(changed).toBe(0);
        expect(worstUlps).toBe(0);
      }
    }
  });

  it('without exactRestore, restores most elements exactly and the rest within 3 ulp of max(|x|, eps|z|)', async () => {
    for (const sparsity of [undefined, 0.8]) {
      for (const failAt of ['none', 'plus', 'minus'] as const) {
        const { changed, worstUlps, total } = await cycleDrift({ lr: 1e-3, eps: 1e-3, seed: 5, sparsity }, failAt);
        // Four roundings of values at most 2·max(|x|, |d|) bound the error by 3 ulp; measured:
        // ~5-8% of N(0, 0.02) elements move at eps 1e-3, the worst by ~1.4 ulp.
        expect(changed / total).toBeLessThan(0.15);
        expect(worstUlps).toBeLessThanOrEqual(3);
      }
    }
  });

  it('restores Sparse-MeZO members to within the threshold, so membership survives the restore', async () => {
    // Every entry sits exactly at the threshold; positive restore drift would make it a non-member.
    const data = Float32Array.from({ length: 4000 }, (_, i) => (i % 2 ? 0.0123 : -0.0123));
    const opt = new ZerothOrderOptimizer([{ name: 'edge', data }], { lr: 1e-3, eps: 1e-2, seed: 3, sparsity: 0 });
    const h = opt.thresholds![0];
    expect(h).toBe(Math.fround(0.0123));
    await expect(opt.step(async () => NaN)).rejects.toMatchObject({ code: 'TRAINING_DIVERGED' });
    let calls = 0;
    await expect(opt.step(async () => (++calls === 2 ? NaN : 1))).rejects.toMatchObject({ code: 'TRAINING_DIVERGED' });
    for (const v of data) expect(Math.abs(v)).toBeLessThanOrEqual(h);
  });

  it('a NaN loss throws TRAINING_DIVERGED, leaves the trajectory alone, and training can continue', async () => {
    const tensors = makeTensors();
    const loss = leastSquares(tensors);
    const opt = new ZerothOrderOptimizer(tensors, { lr: 0.1, eps: 1e-3, seed: 8, exactRestore: true });
    await opt.step(loss);
    const before = cloneTensors(tensors);
    await expect(opt.step(async () => NaN)).rejects.toThrow(/Loss L\+ is NaN/);
    for (let t = 0; t < 2; t++) expect(sameBits(tensors[t].data, before[t].data)).toBe(true);
    expect(opt.trajectory).toHaveLength(1);
    await opt.step(loss);
    expect(opt.trajectory).toHaveLength(2);
  });
});

describe('Sparse-MeZO', () => {
  it('fixed thresholds: trains only the entries small at the start; large ones stay bit-identical over many steps, and the loss falls', async () => {
    const tensors = makeTensors(1);
    const start = cloneTensors(tensors);
    const loss = leastSquares(tensors);
    const before = await loss();
    const opt = await train(tensors, { lr: 0.3, eps: 1e-3, seed: 6, sparsity: 0.8, thresholds: 'fixed' }, 300);
    expect(await loss()).toBeLessThan(before);
    const thresholds = opt.thresholds!;
    expect(thresholds).toHaveLength(2);
    for (let t = 0; t < 2; t++) {
      const h = thresholds[t];
      let small = 0;
      let smallChanged = 0;
      for (let i = 0; i < start[t].data.length; i++) {
        const x = start[t].data[i];
        if (Math.abs(x) > h) expect(Object.is(tensors[t].data[i], x)).toBe(true);
        else {
          small++;
          if (tensors[t].data[i] !== x) smallChanged++;
        }
      }
      expect(small).toBe(Math.round(0.2 * start[t].data.length));
      expect(smallChanged).toBeGreaterThan(0.9 * small);
    }
    // Membership bookkeeping stays a few percent of the elements (4-byte indices).
    expect(opt.peakSideEntries).toBeLessThan(0.05 * 2000);
  });

  it.each(['hash', 'philox'] as NoiseGenerator[])('keeps the same membership for the +, − passes and the update of a step (generator %s)', async (generator) => {
    // eps comparable to the weights: many members cross the threshold while perturbed.
    const tensors = makeTensors();
    const start = cloneTensors(tensors);
    const opt = new ZerothOrderOptimizer(tensors, { lr: 0.05, eps: 1e-2, seed: 12, sparsity: 0.5, generator });
    const h = opt.thresholds!;
    const seed = deriveStepSeed(12, 0, 0);
    const states: Float32Array[][] = [];
    const loss = leastSquares(tensors);
    const { projectedGrads } = await opt.step(async () => {
      states.push(tensors.map((t) => t.data.slice()));
      return loss();
    });
    const g = projectedGrads[0];
    let members = 0;
    let crossers = 0;
    for (let t = 0; t < 2; t++) {
      for (let i = 0; i < start[t].data.length; i++) {
        const x = start[t].data[i];
        const z = normalAt(seed, t, i, generator);
        const d = 1e-2 * z;
        const now = [states[0][t][i], states[1][t][i], tensors[t].data[i]];
        if (Math.abs(x) > h[t]) {
          for (const v of now) expect(Object.is(v, x)).toBe(true);
          continue;
        }
        members++;
        if (Math.abs(x + d) > h[t] || Math.abs(x - d) > h[t]) crossers++;
        const tol = 3 * ulp32(Math.abs(x) + Math.abs(d));
        expect(Math.abs(now[0] - (x + d))).toBeLessThanOrEqual(tol);
        expect(Math.abs(now[1] - (x - d))).toBeLessThanOrEqual(tol);
        expect(Math.abs(now[2] - (x - 0.05 * g * z))).toBeLessThanOrEqual(tol);
      }
    }
    expect(members).toBe(1000);
    expect(crossers).toBeGreaterThan(100);
  });
});

describe('replayTrajectory', () => {
  it.each([
    ['MeZO', { lr: 0.2, eps: 1e-3, seed: 31 }],
    ['MeZO, n = 3, weight decay', { lr: 0.2, eps: 1e-3, seed: 32, samples: 3, weightDecay: 0.05 }],
    ['Sparse-MeZO', { lr: 0.2, eps: 1e-3, seed: 33, sparsity: 0.8 }],
    ['Sparse-MeZO, n = 2, exact restore', { lr: 0.2, eps: 1e-3, seed: 34, sparsity: 0.7, samples: 2, exactRestore: true }],
    ['MeZO, exact restore', { lr: 0.2, eps: 1e-2, seed: 35, exactRestore: true }],
    ['Sparse-MeZO, Philox noise', { lr: 0.2, eps: 1e-3, seed: 36, sparsity: 0.8, generator: 'philox' }],
    ['MeZO, n = 2, Philox noise, exact restore', { lr: 0.2, eps: 1e-3, seed: 37, samples: 2, generator: 'philox', exactRestore: true }],
  ] as [string, ZoConfig][])('reproduces the trained weights bit-for-bit: %s', async (_label, cfg) => {
    const tensors = makeTensors();
    const start = cloneTensors(tensors);
    const opt = await train(tensors, cfg, 40);
    const replayed = cloneTensors(start);
    replayTrajectory(replayed, { ...cfg, chunk: 100 }, opt.trajectory);
    for (let t = 0; t < 2; t++) {
      expect(sameBits(replayed[t].data, tensors[t].data)).toBe(true);
      expect(sameBits(replayed[t].data, start[t].data)).toBe(false);
    }
  });

  it('needs the run\'s generator: the same records with the other noise give other weights', async () => {
    const tensors = makeTensors();
    const start = cloneTensors(tensors);
    const cfg: ZoConfig = { lr: 0.2, eps: 1e-3, seed: 38, sparsity: 0.8 };
    const opt = await train(tensors, cfg, 10);
    const withPhilox = cloneTensors(start);
    replayTrajectory(withPhilox, { ...cfg, generator: 'philox' }, opt.trajectory);
    expect(sameBits(withPhilox[0].data, tensors[0].data)).toBe(false);
    const withDefault = cloneTensors(start);
    replayTrajectory(withDefault, { ...cfg, generator: 'hash' }, opt.trajectory);
    expect(sameBits(withDefault[0].data, tensors[0].data)).toBe(true);
  });

  it('rejects a trajectory whose sample count does not match the config', async () => {
    const tensors = makeTensors();
    const opt = await train(cloneTensors(tensors), { lr: 0.1, eps: 1e-3, seed: 1, samples: 2 }, 2);
    expectCode(() => replayTrajectory(tensors, { lr: 0.1, eps: 1e-3, seed: 1 }, opt.trajectory), 'BAD_ARGUMENT');
  });
});
