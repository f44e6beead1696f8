/**
 * Fuse a trained adapter into the base and export a standard Hugging Face model directory.
 *
 *   node --import tsx examples/export-merged-model.ts [OUT_DIR]
 *
 * Trains S²FT (dense deltas on a few selected attention heads and FFN channels) on the
 * bundled model, fuses the structured adapter into the weights, writes config.json +
 * model.safetensors + tokenizer files, reloads that directory as a plain model and checks
 * it computes the same logits as the adapted model. The result needs no sparsetune to
 * run: any Llama loader (e.g. transformers) reads it. SPARSETUNE_EXAMPLE_STEPS sets the
 * optimizer steps (default 20; CI runs it with 5).
 */
import { promises as fsp } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import {
  bundledModelPath,
  CausalLM,
  fingerprintWeights,
  loadDataset,
  methodEvalFeeds,
  S2ftMethod,
  splitHoldout,
  Trainer,
  WeightPatcher,
  writeModelDir,
  type Method,
} from '../src/index.js';
import { exampleSteps } from './steps.js';

const steps = exampleSteps();
const out = process.argv[2] ?? join(tmpdir(), 'sparsetune-examples', 'merged-model');
const baseDir = bundledModelPath();
const dataFile = fileURLToPath(new URL('../data/demo/spanish.txt', import.meta.url));

const model = await CausalLM.load(baseDir);
const { train, eval: held } = splitHoldout(await loadDataset(dataFile, model.tokenizer!, { seqLen: 64 }), 0.1, 0);

// 10% of the (layer, head) pairs train their o_proj columns, 5% of the FFN channels their down_proj columns.
const s2ft = await S2ftMethod.create(model, { oRatio: 0.1, dRatio: 0.05, seed: 0 });
const r = await new Trainer(model, s2ft, { steps, batchSize: 8, optimizer: { lr: 3e-3 }, evalBatches: 4 }).train(train, held);
console.log(`S²FT: held-out loss ${r.initialEval!.loss.toFixed(4)} -> ${r.finalEval!.loss.toFixed(4)} after ${steps} steps`);

// Logits of the adapted model, running the deltas as graph branches (nothing fused yet).
const ids = [model.tokenizer!.encode('Y dijo Jesús a sus discípulos')];
const method: Method = s2ft;
const adapted = await model.logits(ids, { hooks: method.hooks('eval'), extraFeeds: methodEvalFeeds(method, model) });

// Fuse the exported adapter into the weights and write them as a plain HF model directory.
const pristine = fingerprintWeights(model.weights);
const patcher = new WeightPatcher(model.weights);
const handle = patcher.apply(s2ft.export(model));
const configJson = JSON.parse(await fsp.readFile(join(baseDir, 'config.json'), 'utf8')) as Record<string, unknown>;
try {
  await writeModelDir(out, { configJson, weights: model.weights, tokenizerFrom: baseDir }, { overwrite: true });
} finally {
  patcher.revert(handle);
}
if (fingerprintWeights(model.weights) !== pristine) throw new Error('reverting the fuse did not restore the base weights');
console.log(`wrote ${out}: ${(await fsp.readdir(out)).sort().join(', ')}`);

// Reload it as an ordinary model: no adapter, no hooks.
const merged = await CausalLM.load(out);
const plain = await merged.logits(ids);
let worst = 0;
for (let i = 0; i < plain.data.length; i++) worst = Math.max(worst, Math.abs(plain.data[i] - adapted.data[i]));
console.log(`largest logit difference, merged model vs adapted model: ${worst.toExponential(2)}`);
if (!(worst < 1e-4)) throw new Error(`the merged model's logits differ from the adapted model's by ${worst}`);
const base = await model.logits(ids);
let moved = 0;
for (let i = 0; i < base.data.length; i++) moved = Math.max(moved, Math.abs(base.data[i] - plain.data[i]));
console.log(`largest logit change from the base model: ${moved.toExponential(2)}`);
