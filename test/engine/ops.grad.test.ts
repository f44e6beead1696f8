import { describe, expect, it } from 'vitest';
import * as op from '../../src/engine/ops/index.js';
import { gradCheck } from './gradcheck.js';
import type { HostTensor } from '../../src/tensor.js';

const i64 = (shape: number[], vals: number[]): HostTensor => ({ dtype: 'i64', shape, data: BigInt64Array.from(vals.map(BigInt)) });

describe('gradients of element-wise ops (f64, finite differences)', () => {
  const bin = (name: string, f: (a: any, b: any) => any, lo = -1, hi = 1) =>
    it(`${name} with broadcasting and symbolic dims`, () =>
      gradCheck({
        inputs: [
          { name: 'a', shape: ['batch', 3, 4], feed: [2, 3, 4], lo, hi },
          { name: 'b', shape: [3, 1], feed: [3, 1], lo, hi },
        ],
        build: ([a, b]) => f(a, b),
      }));
  bin('Add', op.add);
  bin('Sub', op.sub);
  bin('Mul', op.mul);
  bin('Div', op.div, 0.5, 2);
  bin('Pow', op.pow, 0.5, 2);
  bin('Max', op.maximum);
  bin('Min', op.minimum);

  const un = (name: string, f: (a: any) => any, lo = -2, hi = 2) =>
    it(name, () => gradCheck({ inputs: [{ name: 'x', shape: ['n', 5], feed: [3, 5], lo, hi }], build: ([x]) => f(x) }));
  un('Neg', op.neg);
  un('Sqrt', op.sqrt, 0.2, 3);
  un('Reciprocal', op.reciprocal, 0.5, 3);
  un('Exp', op.exp);
  un('Log', op.log, 0.2, 3);
  un('Tanh', op.tanh);
  un('Sigmoid', op.sigmoid);
  un('Relu', op.relu);
  un('Cos', op.cos);
  un('Sin', op.sin);
  un('Abs', op.abs);
  it('Erf (f32, no f64 kernel in ORT)', () =>
    gradCheck({ dtype: 'f32', inputs: [{ name: 'x', shape: [4, 5], feed: [4, 5] }], build: ([x]) => op.erf(x), eps: 1e-2, tol: 1e-2 }));
  it('Where with a computed condition', () =>
    gradCheck({
      inputs: [
        { name: 'a', shape: [4, 3], feed: [4, 3] },
        { name: 'b', shape: [3], feed: [3] },
      ],
      build: ([a, b]) => op.where(op.greater(a, 0), a, b),
    }));
  it('Cast f64 -> f32 -> f64 round trip', () =>
    gradCheck({ inputs: [{ name: 'x', shape: [6], feed: [6] }], build: ([x]) => op.mul(op.cast(op.cast(x, 'f32'), 'f64'), x), eps: 1e-3, tol: 1e-4 }));
});

describe('gradients of reductions and softmax', () => {
  for (const [name, f] of [
    ['ReduceSum', (x: any) => op.reduceSum(x, [1], false)],
    ['ReduceSum keepdims', (x: any) => op.reduceSum(x, [0, 2], true)],
    ['ReduceMean', (x: any) => op.reduceMean(x, [2], false)],
    ['ReduceMean symbolic axis', (x: any) => op.reduceMean(x, [0], true)],
    ['ReduceMax', (x: any) => op.reduceMax(x, [1], true)],
    ['Softmax', (x: any) => op.softmax(x, -1)],
    ['Softmax axis 1', (x: any) => op.softmax(x, 1)],
    ['LogSoftmax', (x: any) => op.logSoftmax(x, -1)],
  ] as const) {
    it(name, () => gradCheck({ inputs: [{ name: 'x', shape: ['b', 3, 4], feed: [2, 3, 4] }], build: ([x]) => f(x) }));
  }
});

describe('gradients of shape ops', () => {
  const x = (shape: any[], feed: number[]) => [{ name: 'x', shape, feed }];
  it('Transpose', () => gradCheck({ inputs: x(['b', 3, 4], [2, 3, 4]), build: ([v]) => op.transpose(v, [2, 0, 1]) }));
  it('Reshape with symbolic product', () => gradCheck({ inputs: x(['b', 'seq', 4], [2, 3, 4]), build: ([v]) => op.reshape(v, ['b*seq', 2, 2]) }));
  it('Reshape with -1', () => gradCheck({ inputs: x([2, 3, 4], [2, 3, 4]), build: ([v]) => op.reshape(v, [-1, 4]) }));
  it('Unsqueeze/Squeeze', () => gradCheck({ inputs: x([3, 4], [3, 4]), build: ([v]) => op.squeeze(op.mul(op.unsqueeze(v, [0, 2]), v), [0]) }));
  it('Expand', () => gradCheck({ inputs: x([3, 1], [3, 1]), build: ([v]) => op.expand(v, [2, 3, 4]) }));
  it('Concat (static)', () =>
    gradCheck({ inputs: [...x([2, 3], [2, 3]), { name: 'y', shape: [2, 2], feed: [2, 2] }], build: ([a, b]) => op.concat([a, b, a], 1) }));
  it('Concat (symbolic axis)', () =>
    gradCheck({ inputs: [{ name: 'a', shape: [2, 'p'], feed: [2, 3] }, { name: 'b', shape: [2, 1], feed: [2, 1] }], build: ([a, b]) => op.concat([a, b], 1, 'total') }));
  it('Slice', () => gradCheck({ inputs: x([4, 6], [4, 6]), build: ([v]) => op.slice(v, [1, -4], [3, 100], [0, 1]) }));
  it('Split', () => gradCheck({ inputs: x([4, 6], [4, 6]), build: ([v]) => { const [a, , c] = op.split(v, [1, 2, 3], 1); return op.add(op.slice(c, [0], [1], [1]), a); } }));
  it('Pad', () => gradCheck({ inputs: x([2, 3], [2, 3]), build: ([v]) => op.pad(v, [1, 0, 0, 2], 0) }));
  it('Trilu', () => gradCheck({ inputs: x([4, 4], [4, 4]), build: ([v]) => op.trilu(v, false, 0) }));
  it('Gather (embedding lookup with repeated ids)', () =>
    gradCheck({
      inputs: x([5, 3], [5, 3]),
      extra: [{ name: 'ids', dtype: 'i64', shape: ['b', 'seq'], tensor: i64([2, 3], [0, 4, 4, 1, 0, 2]) }],
      build: ([v], [ids]) => op.gather(v, ids, 0),
    }));
  it('GatherElements', () =>
    gradCheck({
      inputs: x([3, 4], [3, 4]),
      extra: [{ name: 'idx', dtype: 'i64', shape: [3, 2], tensor: i64([3, 2], [0, 3, 1, 1, 2, 0]) }],
      build: ([v], [idx]) => op.gatherElements(v, idx, 1),
    }));
  it('ScatterElements (data and updates)', () =>
    gradCheck({
      inputs: [...x([3, 4], [3, 4]), { name: 'u', shape: [3, 1], feed: [3, 1] }],
      extra: [{ name: 'idx', dtype: 'i64', shape: [3, 1], tensor: i64([3, 1], [2, 0, 3]) }],
      build: ([v, u], [idx]) => op.scatterElements(v, idx, u, 1),
    }));
  it('ScatterND (data and updates)', () =>
    gradCheck({
      inputs: [...x([4, 3], [4, 3]), { name: 'u', shape: [2, 3], feed: [2, 3] }],
      extra: [{ name: 'idx', dtype: 'i64', shape: [2, 1], tensor: i64([2, 1], [3, 1]) }],
      build: ([v, u], [idx]) => op.scatterND(v, idx, u),
    }));
});

describe('gradients of matrix products', () => {
  it('MatMul batched with broadcasting', () =>
    gradCheck({
      inputs: [
        { name: 'a', shape: ['b', 2, 3, 4], feed: [2, 2, 3, 4] },
        { name: 'w', shape: [4, 5], feed: [4, 5] },
      ],
      build: ([a, w]) => op.matmul(a, w),
    }));
  it('MatMul both batched, broadcast batch axes', () =>
    gradCheck({
      inputs: [
        { name: 'a', shape: [2, 1, 3, 4], feed: [2, 1, 3, 4] },
        { name: 'b', shape: [1, 3, 4, 2], feed: [1, 3, 4, 2] },
      ],
      build: ([a, b]) => op.matmul(a, b),
    }));
  for (const [tA, tB] of [[false, false], [false, true], [true, false], [true, true]]) {
    it(`Gemm transA=${tA} transB=${tB} with bias`, () =>
      gradCheck({
        inputs: [
          { name: 'a', shape: tA ? [4, 3] : [3, 4], feed: tA ? [4, 3] : [3, 4] },
          { name: 'b', shape: tB ? [5, 4] : [4, 5], feed: tB ? [5, 4] : [4, 5] },
          { name: 'c', shape: [5], feed: [5] },
        ],
        build: ([a, b, c]) => op.gemm(a, b, { transA: tA, transB: tB, c }),
      }));
  }
});

describe('stopGradient and straightThrough', () => {
  it('stopGradient blocks the gradient; straightThrough forwards hard bits and passes the soft gradient', async () => {
    const { Graph } = await import('../../src/engine/ir.js');
    const { grad } = await import('../../src/engine/autodiff.js');
    const { runtime } = await import('./gradcheck.js');
    const g = new Graph();
    const x = g.input('x', 'f64', [4]);
    const hard = op.cast(op.greater(x, 0), 'f64');
    const st = op.straightThrough(hard, op.mul(x, 3));
    const y = op.add(op.mul(x, op.stopGradient(x)), st);
    const loss = op.reduceSum(y, [0]);
    const [gx] = grad(loss, [x]);
    g.output('st', st);
    g.output('gx', gx);
    const xs = Float64Array.from([-1.5, 0.25, 2, -0.1]);
    const r = await (await runtime.compile(g)).run({ x: { dtype: 'f64', shape: [4], data: xs } });
    expect(Array.from(r.st.data as Float64Array)).toEqual([0, 1, 1, 0]);
    // d/dx [x * stop(x)] = stop(x) = x; d/dx ST = d/dx (3x) = 3.
    expect(Array.from(r.gx.data as Float64Array)).toEqual(Array.from(xs, (v) => v + 3));
  });
});
