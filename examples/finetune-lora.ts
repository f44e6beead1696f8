/**
 * Fine-tune LoRA on the bundled model and data, then use the result.
 *
 *   node --import tsx examples/finetune-lora.ts [OUT_DIR]
 *
 * Trains LoRA on Spanish text with the bundled 260K-parameter model, prints held-out loss
 * before and after, saves the adapter, loads it back, fuses it into the base weights and
 * checks the fused model scores the held-out set like the adapted one did, generates a
 * line, and restores the base exactly. SPARSETUNE_EXAMPLE_STEPS sets the optimizer steps
 * (default 20; CI runs it with 5).
 */
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import {
  bundledModelPath,
  CausalLM,
  evaluateLoss,
  fingerprintWeights,
  generateText,
  loadAdapter,
  loadDataset,
  LoraMethod,
  saveAdapter,
  splitHoldout,
  Trainer,
  WeightPatcher,
} from '../src/index.js';
import { exampleSteps } from './steps.js';

const steps = exampleSteps();
const out = process.argv[2] ?? join(tmpdir(), 'sparsetune-examples', 'spanish-lora');
const dataFile = fileURLToPath(new URL('../data/demo/spanish.txt', import.meta.url));

const model = await CausalLM.load(bundledModelPath());
const examples = await loadDataset(dataFile, model.tokenizer!, { seqLen: 64 });
const { train, eval: held } = splitHoldout(examples, 0.1, 0);
console.log(`${train.length} training and ${held.length} held-out examples from ${dataFile}`);

// LoRA on the attention and MLP output projections; B starts at zero, so step 0 is the base model.
const lora = new LoraMethod(model, { r: 8, alpha: 16, targetModules: ['q_proj', 'v_proj', 'o_proj', 'down_proj'] });
const trainer = new Trainer(model, lora, { steps, batchSize: 8, optimizer: { lr: 3e-3 }, evalBatches: 4, seed: 0 });
const result = await trainer.train(train, held);
const before = result.initialEval!;
const after = result.finalEval!;
console.log(`held-out loss ${before.loss.toFixed(4)} -> ${after.loss.toFixed(4)} (perplexity ${before.ppl.toFixed(1)} -> ${after.ppl.toFixed(1)}) after ${steps} steps`);

await saveAdapter(out, lora.export(model));
console.log(`saved the adapter to ${out}`);

// Use the saved adapter the way another process would: load, fuse, evaluate, generate, revert.
const adapter = await loadAdapter(out);
const pristine = fingerprintWeights(model.weights);
const patcher = new WeightPatcher(model.weights);
const handle = patcher.apply(adapter);
try {
  const fused = await evaluateLoss(model, held, { batchSize: 8, maxBatches: 4 });
  console.log(`fused adapter: held-out loss ${fused.loss.toFixed(4)}`);
  // Fusing computes W + s·B·A once instead of running the two branches: same loss up to rounding.
  if (Math.abs(fused.loss - after.loss) > 1e-3) throw new Error(`the fused adapter scores ${fused.loss}, the adapted model scored ${after.loss}`);
  const sample = await generateText(model, 'Y dijo Jesús', { maxNewTokens: 24, temperature: 0 });
  console.log(`sample: ${JSON.stringify(sample.text)}`);
} finally {
  patcher.revert(handle);
}
if (fingerprintWeights(model.weights) !== pristine) throw new Error('reverting the adapter did not restore the base weights');
console.log('base weights restored bit for bit');
