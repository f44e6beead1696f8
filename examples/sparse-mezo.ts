/**
 * Forward-only fine-tuning with Sparse-MeZO, and replaying the run from its trajectory.
 *
 *   node --import tsx examples/sparse-mezo.ts [OUT_DIR]
 *
 * Zeroth-order training estimates the gradient from two forward passes with the weights
 * nudged along a random direction, so it needs no backward pass and no optimizer state:
 * memory stays at inference level. Sparse-MeZO nudges only the small-magnitude weights (80%
 * of each tensor stay fixed). The bundled model's block linears are trained in place; the
 * run writes an additive adapter and trajectory.json (the seed, projected gradient and lr of
 * every step), and the trajectory alone turns a freshly loaded base into the trained weights
 * bit for bit. SPARSETUNE_EXAMPLE_STEPS sets the steps (default 20; CI runs it with 5).
 */
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import {
  bundledModelPath,
  CausalLM,
  loadDataset,
  loadTrajectory,
  replayTrajectory,
  runZerothOrderTraining,
  splitHoldout,
} from '../src/index.js';
import { exampleSteps } from './steps.js';

const steps = exampleSteps();
const out = process.argv[2] ?? join(tmpdir(), 'sparsetune-examples', 'sparse-mezo');
const dataFile = fileURLToPath(new URL('../data/demo/spanish.txt', import.meta.url));

const model = await CausalLM.load(bundledModelPath());
const { train, eval: held } = splitHoldout(await loadDataset(dataFile, model.tokenizer!, { seqLen: 64 }), 0.1, 0);

// Full-parameter ZO wants a small learning rate; each step costs two forward passes.
const run = await runZerothOrderTraining({
  model,
  method: 'sparse-mezo',
  sparsity: 0.8,
  lr: 1e-3,
  eps: 1e-3,
  steps,
  batchSize: 8,
  evalBatches: 4,
  seed: 0,
  train,
  eval: held,
  out,
});
const before = run.initialEval!;
const after = run.finalEval!;
console.log(`Sparse-MeZO: held-out loss ${before.loss.toFixed(4)} -> ${after.loss.toFixed(4)} after ${run.steps} steps (${2 * run.steps} forward passes, no backward)`);
const changed = Number(run.adapter.meta.metrics.changedElements);
if (!(changed > 0)) throw new Error('training changed no weight, so there is nothing to replay');
console.log(`${changed.toLocaleString('en-US')} of ${run.trainer.trainableCount.toLocaleString('en-US')} weights changed; saved ${run.files.adapterJson} and ${run.files.trajectory}`);

// Replay: a fresh copy of the base, the trajectory file, no data and no forward pass.
const fresh = await CausalLM.load(bundledModelPath());
const trajectory = await loadTrajectory(run.files.trajectory);
const names = run.trainer.tensors.map((t) => t.name);
replayTrajectory(
  names.map((name) => ({ name, data: fresh.weights.get(name)!.data })),
  trajectory.config,
  trajectory.steps,
);
// `model` holds the trained weights in place: compare every tensor's bytes.
let differing = 0;
for (const [name, t] of model.weights) {
  const a = new Uint32Array(t.data.buffer, t.data.byteOffset, t.data.length);
  const r = fresh.weights.get(name)!.data;
  const b = new Uint32Array(r.buffer, r.byteOffset, r.length);
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) differing++;
}
console.log(`replayed ${trajectory.steps.length} steps of ${run.files.trajectory} on a freshly loaded base: ${differing} weights differ from the trained model`);
if (differing !== 0) throw new Error(`the replayed weights differ from the trained ones in ${differing} places`);
console.log('replayed weights are bit-identical to the trained ones');
