import { describe, expect, it } from 'vitest';
import * as nn from '../../src/engine/nn.js';
import * as op from '../../src/engine/ops/index.js';
import { Graph } from '../../src/engine/ir.js';
import { grad } from '../../src/engine/autodiff.js';
import { gradCheck, randTensor, rng, runtime } from './gradcheck.js';
import type { HostTensor } from '../../src/tensor.js';

const i64 = (shape: number[], vals: number[]): HostTensor => ({ dtype: 'i64', shape, data: BigInt64Array.from(vals.map(BigInt)) });

describe('gradients of composite layers (f64, finite differences)', () => {
  it('linear (3-D input, symbolic batch and seq, bias)', () =>
    gradCheck({
      inputs: [
        { name: 'x', shape: ['batch', 'seq', 4], feed: [2, 3, 4] },
        { name: 'w', shape: [5, 4], feed: [5, 4] },
        { name: 'b', shape: [5], feed: [5] },
      ],
      build: ([x, w, b]) => nn.linear(x, w, b),
    }));
  it('RMSNorm', () =>
    gradCheck({
      inputs: [
        { name: 'x', shape: ['b', 3, 6], feed: [2, 3, 6] },
        { name: 'w', shape: [6], feed: [6] },
      ],
      build: ([x, w]) => nn.rmsNorm(x, w, 1e-5),
    }));
  it('SwiGLU (fused silu(gate) * up)', () =>
    gradCheck({
      inputs: [
        { name: 'g', shape: ['b', 5], feed: [3, 5], lo: -3, hi: 3 },
        { name: 'u', shape: ['b', 5], feed: [3, 5] },
      ],
      build: ([g, u]) => nn.swiglu(g, u),
    }));
  it('RMSNorm with a frozen weight (gradient of x only, as under LoRA) and with a frozen input (weight only)', async () => {
    const r = rng(11);
    const w = randTensor('f64', [6], r, 0.5, 1.5);
    await gradCheck({
      inputs: [{ name: 'x', shape: ['b', 6], feed: [4, 6], lo: -2, hi: 2 }],
      extra: [{ name: 'w', dtype: 'f64', shape: [6], tensor: w }],
      build: ([x], [wv]) => nn.rmsNorm(x, wv, 1e-5),
    });
    await gradCheck({
      inputs: [{ name: 'w', shape: [6], feed: [6] }],
      extra: [{ name: 'x', dtype: 'f64', shape: ['b', 2, 6], tensor: randTensor('f64', [3, 2, 6], r, -2, 2) }],
      build: ([wv], [x]) => nn.rmsNorm(x, wv, 1e-5),
    });
  });
  it('SwiGLU with one side frozen (gate only, up only)', async () => {
    const r = rng(12);
    await gradCheck({
      inputs: [{ name: 'g', shape: [2, 'n'], feed: [2, 7], lo: -4, hi: 4 }],
      extra: [{ name: 'u', dtype: 'f64', shape: [2, 'n'], tensor: randTensor('f64', [2, 7], r) }],
      build: ([g], [u]) => nn.swiglu(g, u),
    });
    await gradCheck({
      inputs: [{ name: 'u', shape: [2, 'n'], feed: [2, 7] }],
      extra: [{ name: 'g', dtype: 'f64', shape: [2, 'n'], tensor: randTensor('f64', [2, 7], r, -4, 4) }],
      build: ([u], [g]) => nn.swiglu(g, u),
    });
  });
  it('a Llama MLP block built from the fused ops (RMSNorm, gate/up/down, SwiGLU, residual)', () =>
    gradCheck({
      inputs: [
        { name: 'x', shape: ['b', 'seq', 6], feed: [2, 3, 6], lo: -2, hi: 2 },
        { name: 'nw', shape: [6], feed: [6], lo: 0.5, hi: 1.5 },
        { name: 'wg', shape: [8, 6], feed: [8, 6] },
        { name: 'wu', shape: [8, 6], feed: [8, 6] },
        { name: 'wd', shape: [6, 8], feed: [6, 8] },
      ],
      build: ([x, nw, wg, wu, wd]) => {
        const h = nn.rmsNorm(x, nw, 1e-5);
        return op.add(x, nn.linear(nn.swiglu(nn.linear(h, wg), nn.linear(h, wu)), wd));
      },
    }));
  it('fused RMSNorm and SwiGLU in f32 (onnxruntime kernels) equal their primitive forms, values and gradients', async () => {
    const g = new Graph('fused');
    const x = g.input('x', 'f32', [4, 8]);
    const w = g.input('w', 'f32', [8]);
    const u = g.input('u', 'f32', [4, 8]);
    const fused = nn.swiglu(nn.rmsNorm(x, w, 1e-5), u);
    const plain = op.mul(nn.silu(nn.rmsNormPrimitive(x, w, 1e-5)), u);
    const wrt = [x, w, u];
    const r = op.sumAll(op.mul(fused, op.cos(fused)));
    const rp = op.sumAll(op.mul(plain, op.cos(plain)));
    g.output('y', fused);
    g.output('yp', plain);
    grad(r, wrt).forEach((v, k) => g.output(`g${k}`, v));
    grad(rp, wrt).forEach((v, k) => g.output(`gp${k}`, v));
    const feeds: Record<string, HostTensor> = {
      x: { dtype: 'f32', shape: [4, 8], data: Float32Array.from({ length: 32 }, (_, i) => Math.sin(i) * 2) },
      w: { dtype: 'f32', shape: [8], data: Float32Array.from({ length: 8 }, (_, i) => 0.5 + i / 8) },
      u: { dtype: 'f32', shape: [4, 8], data: Float32Array.from({ length: 32 }, (_, i) => Math.cos(i * 0.7)) },
    };
    const out = await (await runtime.compile(g)).run(feeds);
    const close = (a: HostTensor, b: HostTensor) => (a.data as Float32Array).forEach((v, i) => expect(Math.abs(v - (b.data as Float32Array)[i])).toBeLessThan(1e-5));
    close(out.y, out.yp);
    for (const k of [0, 1, 2]) close(out[`g${k}`], out[`gp${k}`]);
  });
  it('LayerNorm', () =>
    gradCheck({
      inputs: [
        { name: 'x', shape: ['b', 6], feed: [3, 6] },
        { name: 'w', shape: [6], feed: [6] },
        { name: 'b2', shape: [6], feed: [6] },
      ],
      build: ([x, w, b]) => nn.layerNorm(x, w, b, 1e-5),
    }));
  it('SiLU', () => gradCheck({ inputs: [{ name: 'x', shape: [3, 5], feed: [3, 5], lo: -3, hi: 3 }], build: ([x]) => nn.silu(x) }));
  it('GELU tanh', () => gradCheck({ inputs: [{ name: 'x', shape: [3, 5], feed: [3, 5], lo: -3, hi: 3 }], build: ([x]) => nn.geluTanh(x) }));
  it('GELU erf (f32)', () =>
    gradCheck({ dtype: 'f32', inputs: [{ name: 'x', shape: [3, 5], feed: [3, 5], lo: -3, hi: 3 }], build: ([x]) => nn.geluErf(x), eps: 1e-2, tol: 1e-2 }));
  it('rotary embedding', () =>
    gradCheck({
      inputs: [
        { name: 'x', shape: ['b', 2, 'seq', 4], feed: [1, 2, 3, 4] },
        { name: 'cos', shape: ['b', 1, 'seq', 4], feed: [1, 1, 3, 4] },
        { name: 'sin', shape: ['b', 1, 'seq', 4], feed: [1, 1, 3, 4] },
      ],
      build: ([x, c, s]) => nn.rotary(x, c, s),
    }));
  it('causal grouped-query attention with an additive mask', () => {
    const T = 3;
    const mask = new Float64Array(T * T);
    for (let i = 0; i < T; i++) for (let j = 0; j < T; j++) mask[i * T + j] = j > i ? -1e9 : 0;
    return gradCheck({
      inputs: [
        { name: 'q', shape: ['b', 4, 'seq', 2], feed: [2, 4, T, 2] },
        { name: 'k', shape: ['b', 2, 'seq', 2], feed: [2, 2, T, 2] },
        { name: 'v', shape: ['b', 2, 'seq', 2], feed: [2, 2, T, 2] },
      ],
      extra: [{ name: 'mask', dtype: 'f64', shape: [1, 1, 'seq', 'seq'], tensor: { dtype: 'f64', shape: [1, 1, T, T], data: mask } }],
      build: ([q, k, v], [m]) => nn.attention(q, k, v, m, 0.7),
    });
  });
  it('cross-entropy with ignore index and per-token weights', () =>
    gradCheck({
      inputs: [
        { name: 'logits', shape: ['b', 'seq', 5], feed: [2, 3, 5], lo: -3, hi: 3 },
        { name: 'w', shape: ['b', 'seq'], feed: [2, 3], lo: 0.5, hi: 1.5 },
      ],
      extra: [{ name: 't', dtype: 'i64', shape: ['b', 'seq'], tensor: i64([2, 3], [1, -100, 4, 0, 2, -100]) }],
      build: ([l, w], [t]) => nn.crossEntropy(l, t, { weights: w }),
    }));
  it('KL divergence between two distributions', () =>
    gradCheck({
      inputs: [
        { name: 'p', shape: ['b', 4], feed: [3, 4], lo: -2, hi: 2 },
        { name: 'q', shape: ['b', 4], feed: [3, 4], lo: -2, hi: 2 },
      ],
      build: ([p, q]) => nn.klDivergence(p, q),
    }));
});

describe('composite forward values', () => {
  it('cross-entropy equals the hand-computed value and ignores -100', async () => {
    const g = new Graph();
    const l = g.input('l', 'f32', [1, 2, 3]);
    const t = g.input('t', 'i64', [1, 2]);
    g.output('ce', nn.crossEntropy(l, t));
    const logits = Float32Array.from([1, 2, 3, 5, 0, 0]);
    const r = await (await runtime.compile(g)).run({ l: { dtype: 'f32', shape: [1, 2, 3], data: logits }, t: i64([1, 2], [0, -100]) });
    const expected = -(1 - Math.log(Math.exp(1) + Math.exp(2) + Math.exp(3)));
    expect(r.ce.data[0]).toBeCloseTo(expected, 5);
  });
  it('KL of a distribution with itself is zero', async () => {
    const g = new Graph();
    const p = g.input('p', 'f32', [2, 5]);
    g.output('kl', nn.klDivergence(p, p));
    const r = await (await runtime.compile(g)).run({ p: { dtype: 'f32', shape: [2, 5], data: Float32Array.from([1, 2, 3, 4, 5, -1, 0, 1, 2, 0.5]) } });
    expect(Math.abs(r.kl.data[0] as number)).toBeLessThan(1e-6);
  });
  it('the hard-masked attention ignores future positions', async () => {
    const g = new Graph();
    const q = g.input('q', 'f32', [1, 1, 2, 2]);
    const k = g.input('k', 'f32', [1, 1, 2, 2]);
    const v = g.input('v', 'f32', [1, 1, 2, 2]);
    const m = g.input('m', 'f32', [1, 1, 2, 2]);
    g.output('o', nn.attention(q, k, v, m, 1));
    const f = (a: number[]) => ({ dtype: 'f32' as const, shape: [1, 1, 2, 2], data: Float32Array.from(a) });
    const r = await (await runtime.compile(g)).run({ q: f([1, 0, 0, 1]), k: f([1, 0, 0, 1]), v: f([1, 2, 30, 40]), m: f([0, -1e9, 0, 0]) });
    expect(Array.from(r.o.data as Float32Array).slice(0, 2)).toEqual([1, 2]);
  });
});

describe('bad input fails early with clear messages', () => {
  it('shape mismatch at build time names the op and the shapes', () => {
    const g = new Graph();
    const a = g.input('a', 'f32', [2, 3]);
    const b = g.input('b', 'f32', [4, 5]);
    expect(() => op.matmul(a, b)).toThrow(/MatMul: inner dims differ \(3 vs 4\).*%a: f32\[2, 3\].*%b: f32\[4, 5\]/);
    expect(() => op.add(a, b)).toThrow(/Add: cannot broadcast \[2, 3\] with \[4, 5\]/);
  });
  it('dtype mismatch at build time', () => {
    const g = new Graph();
    const a = g.input('a', 'f32', [2]);
    const b = g.input('b', 'f64', [2]);
    expect(() => op.mul(a, b)).toThrow(/Mul: dtypes differ/);
  });
  it('a buffer of the wrong length or dtype fails before the run', async () => {
    const g = new Graph();
    const a = g.input('a', 'f32', ['n', 3]);
    const b = g.input('b', 'f32', ['n', 3]);
    g.output('y', op.add(a, b));
    const cg = await runtime.compile(g);
    const t = (shape: number[], n: number) => ({ dtype: 'f32' as const, shape, data: new Float32Array(n) });
    await expect(cg.run({ a: t([2, 3], 5), b: t([2, 3], 6) })).rejects.toThrow(/input 'a': buffer has 5 elements, shape \[2,3\] needs 6/);
    await expect(cg.run({ a: t([2, 3], 6), b: t([4, 3], 12) })).rejects.toThrow(/symbolic dim 'n' is 4 here but 2/);
    await expect(cg.run({ a: t([2, 3], 6), b: { dtype: 'f64', shape: [2, 3], data: new Float64Array(6) } })).rejects.toThrow(/dtype f64, graph expects f32/);
    await expect(cg.run({ a: t([2, 3], 6) })).rejects.toThrow(/missing input 'b'/);
  });
  it('one session serves every size (cached by signature)', async () => {
    const mk = () => {
      const g = new Graph('cachetest');
      const a = g.input('a', 'f32', ['n', 3]);
      g.output('y', op.mul(a, 2));
      return g;
    };
    const c1 = await runtime.compile(mk());
    const c2 = await runtime.compile(mk());
    expect(c2).toBe(c1);
    for (const n of [1, 4, 9]) {
      const r = await c1.run({ a: { dtype: 'f32', shape: [n, 3], data: new Float32Array(n * 3).fill(1.5) } });
      expect(r.y.shape).toEqual([n, 3]);
      expect(r.y.data[n * 3 - 1]).toBe(3);
    }
  });
});
