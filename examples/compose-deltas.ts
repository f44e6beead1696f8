/**
 * Two sparse additive deltas, composed: a "language" delta and a "task" delta.
 *
 *   node --import tsx examples/compose-deltas.ts [OUT_DIR]
 *
 * LT-SFT trains each delta on the bundled model: a language delta on Spanish text and a
 * task delta on review sentiment (prompt/completion pairs). Each is a sparse additive
 * adapter (a few percent of the weights). They compose by addition into one adapter, so
 * the same base can run with neither, either or both; every fuse is reverted to the exact
 * original bits. SPARSETUNE_EXAMPLE_STEPS sets the steps of each LT-SFT phase (default 20;
 * CI runs it with 5).
 */
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import {
  bundledModelPath,
  CausalLM,
  composeAdapters,
  evaluateLoss,
  fingerprintWeights,
  generateText,
  loadDataset,
  LtSftMethod,
  saveAdapter,
  splitHoldout,
  Trainer,
  WeightPatcher,
  type Adapter,
  type TokenizedExample,
} from '../src/index.js';
import { exampleSteps } from './steps.js';

const steps = exampleSteps();
const out = process.argv[2] ?? join(tmpdir(), 'sparsetune-examples', 'composed');
const data = (file: string) => fileURLToPath(new URL(`../data/demo/${file}`, import.meta.url));

const model = await CausalLM.load(bundledModelPath());
const pristine = fingerprintWeights(model.weights);
const split = async (file: string, seqLen: number) => splitHoldout(await loadDataset(data(file), model.tokenizer!, { seqLen }), 0.1, 0);
const spanish = await split('spanish.txt', 64);
const sentiment = await split('sentiment.jsonl', 96); // long enough for every review prompt

/** Train one LT-SFT delta: full fine-tuning, keep the most-changed entries, rewind, retrain only those. */
async function trainDelta(purpose: 'language' | 'task', set: { train: TokenizedExample[]; eval: TokenizedExample[] }): Promise<Adapter> {
  const method = new LtSftMethod(model, { purpose });
  const trainer = new Trainer(model, method, { steps, batchSize: 8, optimizer: { lr: 3e-3, weightDecay: 0 }, evalBatches: 4, seed: 0 });
  const r = await trainer.train(set.train, set.eval);
  // export() also rewinds the model to the base weights, ready for the next delta.
  const delta = method.export(model);
  const entries = [...delta.additive.values()].reduce((n, d) => n + d.indices.length, 0);
  console.log(`${purpose} delta: held-out loss ${r.initialEval!.loss.toFixed(3)} -> ${r.finalEval!.loss.toFixed(3)}, ${entries.toLocaleString('en-US')} weights changed`);
  return delta;
}

const language = await trainDelta('language', spanish);
const task = await trainDelta('task', sentiment);
if (fingerprintWeights(model.weights) !== pristine) throw new Error('LT-SFT export did not restore the base weights');

// Additive deltas add: the composition is one adapter, and the order does not matter.
const both = composeAdapters([language, task]);
await saveAdapter(join(out, 'spanish'), language);
await saveAdapter(join(out, 'sentiment'), task);
await saveAdapter(join(out, 'spanish+sentiment'), both);
console.log(`saved three adapters under ${out}`);

const patcher = new WeightPatcher(model.weights);
const rows: [string, Adapter | null][] = [
  ['base', null],
  ['+ spanish', language],
  ['+ sentiment', task],
  ['+ spanish + sentiment', both],
];
for (const [name, adapter] of rows) {
  const handle = adapter ? patcher.apply(adapter) : null;
  try {
    const es = await evaluateLoss(model, spanish.eval, { maxBatches: 4 });
    const ts = await evaluateLoss(model, sentiment.eval, { maxBatches: 4 });
    const text = (await generateText(model, 'Review: The food was great.\nSentiment:', { maxNewTokens: 6, temperature: 0 })).text;
    console.log(`${name.padEnd(22)} Spanish loss ${es.loss.toFixed(3)}  sentiment loss ${ts.loss.toFixed(3)}  -> ${JSON.stringify(text)}`);
  } finally {
    if (handle) patcher.revert(handle);
  }
}

// Fusing the two deltas one after the other gives exactly the composed weights.
const h1 = patcher.apply(task);
const h2 = patcher.apply(language);
const sequential = fingerprintWeights(model.weights);
patcher.revert(h2);
patcher.revert(h1);
const h3 = patcher.apply(both);
const composed = fingerprintWeights(model.weights);
patcher.revert(h3);
if (sequential !== composed) throw new Error('applying the deltas one by one differs from applying their composition');
if (fingerprintWeights(model.weights) !== pristine) throw new Error('reverting did not restore the base weights');
console.log('composition = both deltas applied in either order; base restored bit for bit');
