/**
 * Fine-tune with sparsetune, run the result with transformers.js (Node here; the same
 * directory works in the browser).
 *
 *   node --import tsx examples/transformersjs.ts [OUT_DIR]
 *
 * Trains a LoRA on the bundled model, fuses it, exports a transformers.js model directory
 * (config, tokenizer files, onnx/model.onnx) with exportOnnxModel, then loads that directory
 * with `@huggingface/transformers` from local files only and generates greedily: the text is
 * the one sparsetune generates with the adapter. SPARSETUNE_EXAMPLE_STEPS sets the optimizer
 * steps (default 20; CI runs it with 5). Needs `npm install @huggingface/transformers`.
 */
import { tmpdir } from 'node:os';
import { basename, dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { env, pipeline } from '@huggingface/transformers';
import { bundledModelPath, CausalLM, exportOnnxModel, generateText, loadDataset, LoraMethod, splitHoldout, Trainer, WeightPatcher } from '../src/index.js';
import { exampleSteps } from './steps.js';

const steps = exampleSteps();
const out = process.argv[2] ?? join(tmpdir(), 'sparsetune-examples', 'transformersjs');
const dataFile = fileURLToPath(new URL('../data/demo/spanish.txt', import.meta.url));

const model = await CausalLM.load(bundledModelPath());
const { train, eval: held } = splitHoldout(await loadDataset(dataFile, model.tokenizer!, { seqLen: 64 }), 0.1, 0);
const lora = new LoraMethod(model, { r: 8, alpha: 16, targetModules: 'all-linear' });
const r = await new Trainer(model, lora, { steps, batchSize: 8, optimizer: { lr: 1e-2 }, evalBatches: 4 }).train(train, held);
console.log(`LoRA: held-out loss ${r.initialEval!.loss.toFixed(4)} -> ${r.finalEval!.loss.toFixed(4)} after ${steps} steps`);

// Fuse the adapter and export the adapted model for transformers.js.
const patcher = new WeightPatcher(model.weights);
patcher.apply(lora.export(model));
const prompt = 'Había una vez';
const ours = await generateText(model, prompt, { maxNewTokens: 24, temperature: 0 });
const exported = await exportOnnxModel(model, out, { overwrite: true });
patcher.revertAll();
console.log(`exported ${out}: ${exported.files.join(', ')}`);

// transformers.js, local files only (in a browser: env.localModelPath = '/models/' on your web server).
env.allowRemoteModels = false;
env.localModelPath = `${dirname(out)}/`;
const generate = await pipeline('text-generation', basename(out));
const [theirs] = (await generate(prompt, { max_new_tokens: 24, do_sample: false })) as { generated_text: string }[];
await generate.dispose();
console.log(`sparsetune:      ${JSON.stringify(prompt + ours.text)}`);
console.log(`transformers.js: ${JSON.stringify(theirs.generated_text)}`);
if (theirs.generated_text !== prompt + ours.text) throw new Error('transformers.js generated another text than sparsetune');
console.log('same text');
