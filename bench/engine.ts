/**
 * Engine benchmark: GFLOP/s of a GEMM-heavy forward+backward graph against a bare ORT
 * MatMul of the same shapes, session creation time and per-run overhead.
 */
import ort from 'onnxruntime-node';
import onnxProto from 'onnx-proto';
import { Graph } from '../src/engine/ir.js';
import { grad } from '../src/engine/autodiff.js';
import { linear } from '../src/engine/nn.js';
import { add, mul, reduceSum } from '../src/engine/ops/index.js';
import { Runtime } from '../src/engine/runtime.js';
import type { HostTensor } from '../src/tensor.js';
import { table, timeIt, writeResults } from './util.js';

const threads = Number(process.env.SPARSETUNE_THREADS ?? 2);
const rt = new Runtime({ threads });
const rand = (n: number) => Float32Array.from({ length: n }, () => Math.random() - 0.5);
const f32 = (shape: number[], data: Float32Array): HostTensor => ({ dtype: 'f32', shape, data });

async function bareMatmulGflops(N: number, D: number): Promise<number> {
  const { onnx } = onnxProto;
  const vi = (name: string, dims: number[]) => ({ name, type: { tensorType: { elemType: 1, shape: { dim: dims.map((d) => ({ dimValue: d })) } } } });
  const bytes = onnx.ModelProto.encode(
    onnx.ModelProto.create({
      irVersion: 8,
      opsetImport: [{ domain: '', version: 18 }],
      graph: { name: 'mm', node: [{ opType: 'MatMul', input: ['a', 'b'], output: ['c'] }], input: [vi('a', [N, D]), vi('b', [D, D])], output: [vi('c', [N, D])] },
    }),
  ).finish();
  const s = await ort.InferenceSession.create(bytes, { intraOpNumThreads: threads, graphOptimizationLevel: 'all' });
  const a = new ort.Tensor('float32', rand(N * D), [N, D]);
  const b = new ort.Tensor('float32', rand(D * D), [D, D]);
  const ms = await timeIt(() => s.run({ a, b }), 7, 2);
  return (2 * N * D * D) / (ms / 1000) / 1e9;
}

async function fwdBwdGflops(N: number, D: number): Promise<{ gflops: number; ms: number }> {
  const g = new Graph('mlp2');
  const x = g.input('x', 'f32', ['n', D]);
  const w1 = g.input('w1', 'f32', [D, D]);
  const w2 = g.input('w2', 'f32', [D, D]);
  const y = linear(linear(x, w1), w2);
  const loss = reduceSum(mul(y, y), [0, 1]);
  const [g1, g2] = grad(loss, [w1, w2]);
  g.output('loss', loss);
  g.output('g1', g1);
  g.output('g2', g2);
  const c = await rt.compile(g);
  const feeds = { x: f32([N, D], rand(N * D)), w1: f32([D, D], rand(D * D)), w2: f32([D, D], rand(D * D)) };
  const ms = await timeIt(() => c.run(feeds), 7, 2);
  // forward: 2 GEMMs; backward: dW2, dH, dW1 (no dX): 3 GEMMs; each 2·N·D·D flops.
  return { gflops: (5 * 2 * N * D * D) / (ms / 1000) / 1e9, ms };
}

async function sessionCreateMs(): Promise<number> {
  const times: number[] = [];
  for (let k = 0; k < 5; k++) {
    const g = new Graph(`fresh${k}`);
    const x = g.input('x', 'f32', ['n', 64]);
    let h = x;
    for (let l = 0; l < 8; l++) h = add(linear(h, g.input(`w${l}`, 'f32', [64, 64])), k + 1);
    g.output('y', h);
    const t0 = performance.now();
    await rt.compile(g);
    times.push(performance.now() - t0);
  }
  times.sort((a, b) => a - b);
  return times[2];
}

async function perRunOverheadMs(): Promise<number> {
  const g = new Graph('tiny');
  const x = g.input('x', 'f32', [1]);
  g.output('y', add(x, 1));
  const c = await rt.compile(g);
  const feeds = { x: f32([1], new Float32Array(1)) };
  const reps = 2000;
  await c.run(feeds);
  const t0 = performance.now();
  for (let i = 0; i < reps; i++) await c.run(feeds);
  return (performance.now() - t0) / reps;
}

const shapes: [number, number][] = [
  [512, 512],
  [1024, 1024],
  [2048, 768],
];
const rows: (string | number)[][] = [];
const json: Record<string, unknown> = { threads, gemm: [] as unknown[] };
for (const [N, D] of shapes) {
  const bare = await bareMatmulGflops(N, D);
  const fb = await fwdBwdGflops(N, D);
  (json.gemm as unknown[]).push({ N, D, bareMatmulGflops: bare, fwdBwdGflops: fb.gflops, fwdBwdMs: fb.ms, ratio: fb.gflops / bare });
  rows.push([`${N}x${D} @ ${D}x${D}`, bare, fb.gflops, fb.gflops / bare]);
}
json.sessionCreateMs = await sessionCreateMs();
json.perRunOverheadMs = await perRunOverheadMs();
const md = [
  `## Engine (threads=${threads})`,
  '',
  table(['GEMM shape', 'bare ORT MatMul GFLOP/s', 'engine fwd+bwd GFLOP/s', 'ratio'], rows),
  '',
  `Session creation (8-layer MLP graph): ${(json.sessionCreateMs as number).toFixed(1)} ms; per-run overhead (1-element graph): ${((json.perRunOverheadMs as number) * 1000).toFixed(0)} µs.`,
].join('\n');
writeResults('engine', json, md);
