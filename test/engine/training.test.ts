import { describe, expect, it } from 'vitest';
import * as nn from '../../src/engine/nn.js';
import * as op from '../../src/engine/ops/index.js';
import { Graph } from '../../src/engine/ir.js';
import { grad } from '../../src/engine/autodiff.js';
import { rng, runtime } from './gradcheck.js';
import type { HostTensor } from '../../src/tensor.js';

/** The tiny AdamW of this test (the library's optimizer lives in src/train). */
function adamw(params: Float32Array[], lr: number, wd = 0.01) {
  const m = params.map((p) => new Float64Array(p.length));
  const v = params.map((p) => new Float64Array(p.length));
  let t = 0;
  return (grads: Float32Array[]) => {
    t++;
    params.forEach((p, k) => {
      const g = grads[k];
      for (let i = 0; i < p.length; i++) {
        m[k][i] = 0.9 * m[k][i] + 0.1 * g[i];
        v[k][i] = 0.999 * v[k][i] + 0.001 * g[i] * g[i];
        const mh = m[k][i] / (1 - 0.9 ** t);
        const vh = v[k][i] / (1 - 0.999 ** t);
        p[i] = p[i] - lr * (mh / (Math.sqrt(vh) + 1e-8) + wd * p[i]);
      }
    });
  };
}

const f32 = (shape: number[], data: Float32Array): HostTensor => ({ dtype: 'f32', shape, data });
const randn = (n: number, r: () => number, s: number) => Float32Array.from({ length: n }, () => (r() * 2 - 1) * s);

/** Plain-JS forward and backward of y = W2 tanh(W1 x + b1), MSE loss, for the cross-check. */
function mlpReference(x: Float32Array, t: Float32Array, N: number, D: number, H: number, w1: Float32Array, b1: Float32Array, w2: Float32Array) {
  const h = new Float64Array(N * H);
  const y = new Float64Array(N);
  for (let n = 0; n < N; n++) {
    for (let j = 0; j < H; j++) {
      let s = b1[j];
      for (let d = 0; d < D; d++) s += w1[j * D + d] * x[n * D + d];
      h[n * H + j] = Math.tanh(s);
    }
    let s = 0;
    for (let j = 0; j < H; j++) s += w2[j] * h[n * H + j];
    y[n] = s;
  }
  let loss = 0;
  for (let n = 0; n < N; n++) loss += (y[n] - t[n]) ** 2;
  loss /= N;
  const g1 = new Float32Array(w1.length);
  const gb = new Float32Array(b1.length);
  const g2 = new Float32Array(w2.length);
  for (let n = 0; n < N; n++) {
    const dy = (2 * (y[n] - t[n])) / N;
    for (let j = 0; j < H; j++) {
      g2[j] += dy * h[n * H + j];
      const dpre = dy * w2[j] * (1 - h[n * H + j] ** 2);
      gb[j] += dpre;
      for (let d = 0; d < D; d++) g1[j * D + d] += dpre * x[n * D + d];
    }
  }
  return { loss, grads: [g1, gb, g2] };
}

describe('training through the engine', () => {
  it('a two-layer MLP: loss goes down and matches plain-JS math step by step', async () => {
    const N = 16, D = 4, H = 8;
    const r = rng(3);
    const x = randn(N * D, r, 1);
    const t = Float32Array.from({ length: N }, (_, n) => Math.sin(x[n * D]) + 0.5 * x[n * D + 1]);
    const g = new Graph('mlp');
    const xv = g.input('x', 'f32', ['n', D]);
    const tv = g.input('t', 'f32', ['n', 1]);
    const w1 = g.input('w1', 'f32', [H, D]);
    const b1 = g.input('b1', 'f32', [H]);
    const w2 = g.input('w2', 'f32', [1, H]);
    const y = nn.linear(op.tanh(nn.linear(xv, w1, b1)), w2);
    const diff = op.sub(y, tv);
    const loss = op.reduceMean(op.mul(diff, diff), [0, 1]);
    const grads = grad(loss, [w1, b1, w2]);
    g.output('loss', loss);
    grads.forEach((gv, k) => g.output(`g${k}`, gv));
    const cg = await runtime.compile(g);

    const P = [randn(H * D, r, 0.5), randn(H, r, 0.1), randn(H, r, 0.5)];
    const Pref = P.map((p) => p.slice());
    const step = adamw(P, 0.05);
    const stepRef = adamw(Pref, 0.05);
    const losses: number[] = [];
    for (let s = 0; s < 30; s++) {
      const res = await cg.run({ x: f32([N, D], x), t: f32([N, 1], t), w1: f32([H, D], P[0]), b1: f32([H], P[1]), w2: f32([1, H], P[2]) });
      const ref = mlpReference(x, t, N, D, H, Pref[0], Pref[1], Pref[2]);
      const l = res.loss.data[0] as number;
      expect(Math.abs(l - ref.loss)).toBeLessThan(1e-4 * Math.max(1, ref.loss));
      losses.push(l);
      const gs = [0, 1, 2].map((k) => res[`g${k}`].data as Float32Array);
      gs.forEach((gk, k) => gk.forEach((v, i) => expect(Math.abs(v - ref.grads[k][i])).toBeLessThan(1e-4)));
      step(gs);
      stepRef(ref.grads);
    }
    expect(losses[29]).toBeLessThan(losses[0] * 0.3);
  });

  it('a causal self-attention block learns to copy the previous token', async () => {
    const V = 8, E = 16, T = 6, B = 4;
    const r = rng(11);
    const g = new Graph('attn');
    const ids = g.input('ids', 'i64', ['batch', 'seq']);
    const targets = g.input('targets', 'i64', ['batch', 'seq']);
    const mask = g.input('mask', 'f32', [1, 1, 'seq', 'seq']);
    const names = ['emb', 'wq', 'wk', 'wv', 'wo', 'pos'] as const;
    const shapes: Record<string, number[]> = { emb: [V, E], wq: [E, E], wk: [E, E], wv: [E, E], wo: [V, E], pos: [T, E] };
    const posShape: Record<string, (number | string)[]> = { pos: ['seq', E] };
    const w = Object.fromEntries(names.map((n) => [n, g.input(n, 'f32', posShape[n] ?? shapes[n])]));
    const h = op.add(op.gather(w.emb, ids), w.pos);
    const heads = (v: ReturnType<typeof op.add>) => op.transpose(op.reshape(v, ['batch', 'seq', 2, E / 2]), [0, 2, 1, 3]);
    const q = heads(nn.linear(h, w.wq));
    const k = heads(nn.linear(h, w.wk));
    const vv = heads(nn.linear(h, w.wv));
    const a = op.reshape(op.transpose(nn.attention(q, k, vv, mask, 1 / Math.sqrt(E / 2)), [0, 2, 1, 3]), ['batch', 'seq', E]);
    const logits = nn.linear(op.add(a, h), w.wo);
    const loss = nn.crossEntropy(logits, targets);
    const gr = grad(loss, names.map((n) => w[n]));
    g.output('loss', loss);
    gr.forEach((gv, i) => g.output(`g_${names[i]}`, gv));
    const cg = await runtime.compile(g);
    const P = names.map((n) => randn(shapes[n].reduce((x, y) => x * y), r, 0.3));
    const step = adamw(P, 0.03, 0);
    const maskData = new Float32Array(T * T);
    for (let i = 0; i < T; i++) for (let j = i + 1; j < T; j++) maskData[i * T + j] = -1e9;
    const losses: number[] = [];
    for (let s = 0; s < 60; s++) {
      const idv = Array.from({ length: B * T }, () => Math.floor(r() * V));
      const tg = idv.map((_, i) => (i % T === 0 ? -100 : idv[i - 1]));
      const feeds: Record<string, HostTensor> = {
        ids: { dtype: 'i64', shape: [B, T], data: BigInt64Array.from(idv.map(BigInt)) },
        targets: { dtype: 'i64', shape: [B, T], data: BigInt64Array.from(tg.map(BigInt)) },
        mask: f32([1, 1, T, T], maskData),
      };
      names.forEach((n, i) => (feeds[n] = f32(shapes[n], P[i])));
      const res = await cg.run(feeds);
      losses.push(res.loss.data[0] as number);
      step(names.map((n) => res[`g_${n}`].data as Float32Array));
    }
    const first = losses.slice(0, 5).reduce((a, b) => a + b) / 5;
    const last = losses.slice(-5).reduce((a, b) => a + b) / 5;
    expect(first).toBeGreaterThan(1.8);
    expect(last).toBeLessThan(first * 0.5);
  });

  it('frozen weights get no gradient nodes (partial backprop)', () => {
    const g = new Graph();
    const x = g.input('x', 'f32', ['n', 4]);
    const frozen = g.input('frozen', 'f32', [4, 4]);
    const train = g.input('train', 'f32', [4, 4]);
    const loss = op.reduceSum(nn.linear(nn.linear(x, train), frozen), [0, 1]);
    const before = g.nodes.length;
    grad(loss, [train]);
    const backward = g.nodes.slice(before);
    // The backward pass reads `frozen` (to push the gradient to its input) but never builds
    // dL/d(frozen) = G^T x, which would be a Gemm with transA over the layer's input.
    const gemms = backward.filter((n) => n.op === 'Gemm');
    expect(gemms.length).toBe(2); // dX through the frozen layer, dW of the trained layer
    expect(gemms.some((n) => n.inputs.includes(frozen))).toBe(true);
    expect(gemms.filter((n) => n.attrs.transA === 1).length).toBe(1);
  });
});
