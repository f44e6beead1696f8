/**
 * Model benchmark: prefill and decode tokens/s on stories260K and a random ~30M Llama,
 * against the memory-bandwidth bound (weight bytes per token / measured copy bandwidth).
 */
import { CausalLM } from '../src/models/causal-lm.js';
import { randomModel, LLAMA_30M } from '../src/models/random.js';
import { bundledModelPath } from '../src/io/model-dir.js';
import { Runtime } from '../src/engine/runtime.js';
import { table, timeIt, writeResults } from './util.js';

const threads = Number(process.env.SPARSETUNE_THREADS ?? 2);
const runtime = new Runtime({ threads });

function copyBandwidthGBs(): number {
  const n = 64 * 1024 * 1024; // 256 MB
  const a = new Float32Array(n).fill(1);
  const b = new Float32Array(n);
  b.set(a);
  const t0 = performance.now();
  for (let i = 0; i < 4; i++) b.set(a);
  const s = (performance.now() - t0) / 1000;
  return (4 * 2 * n * 4) / s / 1e9; // read + write bytes
}

async function measure(name: string, model: CausalLM, prompt: number, decodeSteps: number) {
  const params = [...model.weights.values()].reduce((s, w) => s + w.data.length, 0);
  const ids = Array.from({ length: prompt }, (_, i) => 1 + ((i * 7) % (model.vocabSize - 1)));
  const att = ids.map(() => 1);
  await model.step([ids], [att], model.emptyCache(1)); // compile
  const prefillMs = await timeIt(() => model.step([ids], [att], model.emptyCache(1)), 5, 1);
  const decodeMs = await timeIt(async () => {
    let { cache } = await model.step([ids], [att], model.emptyCache(1));
    const a = [...att];
    for (let s = 0; s < decodeSteps; s++) {
      a.push(1);
      cache = (await model.step([[5]], [a], cache)).cache;
    }
  }, 3, 1) - prefillMs;
  return { name, params, prefillTokS: prompt / (prefillMs / 1000), decodeTokS: decodeSteps / (decodeMs / 1000), decodeMsPerToken: decodeMs / decodeSteps };
}

const bw = copyBandwidthGBs();
const results = [
  await measure('stories260K', await CausalLM.load(bundledModelPath(), { runtime }), 128, 64),
  await measure('random llama ~30M', randomModel(LLAMA_30M, { runtime }), 128, 32),
];
const rows = results.map((r) => {
  const bound = (bw * 1e9) / (r.params * 4);
  return [r.name, (r.params / 1e6).toFixed(2) + 'M', r.prefillTokS, r.decodeTokS, bound, r.decodeTokS / bound];
});
const md = [
  `## Models: prefill and decode (batch 1, threads=${threads})`,
  '',
  `Measured copy bandwidth: ${bw.toFixed(1)} GB/s (read+write). Bound = bandwidth / (fp32 weight bytes per token).`,
  '',
  table(['model', 'params', 'prefill tok/s (128 tokens)', 'decode tok/s', 'bandwidth bound tok/s', 'decode / bound'], rows),
].join('\n');
writeResults('models', { threads, copyBandwidthGBs: bw, results }, md);
