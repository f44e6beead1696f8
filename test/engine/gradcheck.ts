/** Finite-difference gradient checking for graphs built by a test. */
import { expect } from 'vitest';
import { Graph, type Value, type Shape } from '../../src/engine/ir.js';
import { grad } from '../../src/engine/autodiff.js';
import { mul, reduceSum, constTensor } from '../../src/engine/ops/index.js';
import { Runtime } from '../../src/engine/runtime.js';
import type { DType, HostTensor } from '../../src/tensor.js';
import { xorshift32 } from '../../src/util/random.js';

export const runtime = new Runtime({ threads: 1 });

/** Deterministic pseudo-random numbers for test data (xorshift32). */
export const rng = xorshift32;

export function randTensor(dtype: 'f32' | 'f64', shape: number[], r: () => number, lo = -1, hi = 1): HostTensor {
  const n = shape.reduce((a, b) => a * b, 1);
  const data = dtype === 'f64' ? new Float64Array(n) : new Float32Array(n);
  for (let i = 0; i < n; i++) data[i] = lo + (hi - lo) * r();
  return { dtype, shape, data };
}

export interface GradCase {
  /** Differentiable inputs: name, symbolic shape in the graph, concrete shape fed. */
  inputs: { name: string; shape: Shape; feed: number[]; lo?: number; hi?: number }[];
  /** Extra non-differentiable feeds (int indices, masks). */
  extra?: { name: string; dtype: DType; shape: Shape; tensor: HostTensor }[];
  build: (vals: Value[], extra: Value[]) => Value;
  dtype?: 'f32' | 'f64';
  seed?: number;
  tol?: number;
  eps?: number;
  samples?: number;
}

/**
 * Compare autodiff gradients with central differences of the loss sum(out * R) for a fixed
 * random R, on up to `samples` random elements of every input.
 */
export async function gradCheck(c: GradCase): Promise<void> {
  const dtype = c.dtype ?? 'f64';
  const r = rng(c.seed ?? 7);
  const g = new Graph('gradcheck');
  const vals = c.inputs.map((i) => g.input(i.name, dtype, i.shape));
  const extras = (c.extra ?? []).map((e) => g.input(e.name, e.dtype, e.shape));
  const out = c.build(vals, extras);
  const outShape = out.shape;
  // Projection weights R: fed as an input with the output's concrete shape (found by a dry run).
  const feeds: Record<string, HostTensor> = {};
  c.inputs.forEach((i) => (feeds[i.name] = randTensor(dtype, i.feed, r, i.lo ?? -1, i.hi ?? 1)));
  for (const e of c.extra ?? []) feeds[e.name] = e.tensor;
  const probe = new Graph('probe');
  const pv = c.inputs.map((i) => probe.input(i.name, dtype, i.shape));
  const pe = (c.extra ?? []).map((e) => probe.input(e.name, e.dtype, e.shape));
  probe.output('__probe', c.build(pv, pe));
  const y = (await (await runtime.compile(probe)).run(feeds)).__probe;
  const R = randTensor(dtype, y.shape, r);
  const rv = g.input('R', dtype, outShape);
  const loss = reduceSum(mul(out, rv), outShape.map((_, k) => k));
  const grads = grad(loss, vals);
  g.output('loss', loss);
  grads.forEach((gv, k) => g.output(`g${k}`, gv));
  const cg = await runtime.compile(g);
  feeds.R = R;
  const res = await cg.run(feeds);
  const lossAt = async () => Number((await cg.run(feeds, ['loss'])).loss.data[0]);
  const eps = c.eps ?? (dtype === 'f64' ? 1e-6 : 1e-2);
  const tol = c.tol ?? (dtype === 'f64' ? 1e-6 : 2e-2);
  for (const [k, i] of c.inputs.entries()) {
    const data = feeds[i.name].data as Float64Array;
    const analytic = res[`g${k}`].data as Float64Array;
    expect(res[`g${k}`].shape).toEqual(i.feed);
    const n = data.length;
    const picks = n <= (c.samples ?? 16) ? [...Array(n).keys()] : Array.from({ length: c.samples ?? 16 }, () => Math.floor(r() * n));
    for (const p of picks) {
      const orig = data[p];
      data[p] = orig + eps;
      const up = await lossAt();
      data[p] = orig - eps;
      const down = await lossAt();
      data[p] = orig;
      const numeric = (up - down) / (2 * eps);
      const a = analytic[p];
      const err = Math.abs(a - numeric) / Math.max(1, Math.abs(numeric));
      if (!(err <= tol)) {
        throw new Error(`gradient mismatch for input '${i.name}' element ${p}: autodiff ${a}, finite difference ${numeric}`);
      }
    }
  }
}

export { constTensor };
