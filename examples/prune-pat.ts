/**
 * Prune the hidden width with PAT and export a smaller plain model.
 *
 *   node --import tsx examples/prune-pat.ts [OUT_DIR]
 *
 * PAT (pruning-aware tuning) trains LoRA together with one shared mask over the hidden
 * (residual-stream) channels, aiming to keep 75% of them. The trained adapter is exported
 * as an ordinary Hugging Face Llama directory whose hidden_size is the number of kept
 * channels; reloaded with no sparsetune machinery, it computes the same logits as the
 * hard-masked model. SPARSETUNE_EXAMPLE_STEPS sets the optimizer steps (default 20; CI
 * runs it with 5), but PAT runs at least 20: see MIN_STEPS.
 */
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import {
  bundledModelPath,
  CausalLM,
  loadDataset,
  methodEvalFeeds,
  PatMethod,
  savePrunedModel,
  splitHoldout,
  Trainer,
  type HostTensor,
} from '../src/index.js';
import { exampleSteps } from './steps.js';

/**
 * Every mask logit starts at 0 (all channels kept) and Adam moves them all alike, so the count
 * loss first overshoots (almost every channel dropped after step 1) and needs some 20 steps to
 * swing back near the target width. Fewer steps would export a degenerate, few-channel model.
 */
const MIN_STEPS = 20;
const steps = Math.max(exampleSteps(), MIN_STEPS);
const out = process.argv[2] ?? join(tmpdir(), 'sparsetune-examples', 'pruned-model');
const dataFile = fileURLToPath(new URL('../data/demo/spanish.txt', import.meta.url));

const model = await CausalLM.load(bundledModelPath());
const { train, eval: held } = splitHoldout(await loadDataset(dataFile, model.tokenizer!, { seqLen: 64 }), 0.1, 0);

// The mask's count loss pulls the kept width to keepRatio · hidden_size (48 of 64 here); its
// schedule (soft -> hard mask) spans the run's steps. LoRA recovers what the pruning costs.
const pat = new PatMethod(model, { keepRatio: 0.75, r: 4, alpha: 8, dropout: 0, targetModules: ['q_proj', 'v_proj', 'o_proj', 'down_proj'] });
const r = await new Trainer(model, pat, { steps, batchSize: 8, optimizer: { lr: 3e-3 }, evalBatches: 4, seed: 0 }).train(train, held);
const kept = pat.keptChannels().length;
console.log(`PAT: held-out loss ${r.initialEval!.loss.toFixed(4)} -> ${r.finalEval!.loss.toFixed(4)} after ${steps} steps; keeps ${kept} of ${pat.hidden} channels (target ${pat.dKeep})`);
if (kept >= pat.hidden) throw new Error(`the mask kept all ${pat.hidden} channels: nothing was pruned`);

// Fold LoRA and the channel mask into a dense model of the smaller width, then load it like any model.
await savePrunedModel(out, model, pat.export(model), { overwrite: true });
const pruned = await CausalLM.load(out);
const count = (w: Map<string, HostTensor>) => [...w.values()].reduce((n, t) => n + t.data.length, 0);
console.log(`wrote ${out}`);
console.log(`hidden size ${model.config.hiddenSize} -> ${pruned.config.hiddenSize}, parameters ${count(model.weights).toLocaleString('en-US')} -> ${count(pruned.weights).toLocaleString('en-US')}`);
if (pruned.config.hiddenSize !== kept) throw new Error(`the pruned model has hidden_size ${pruned.config.hiddenSize}, the mask keeps ${kept} channels`);

// The reference: the base model with PAT's eval hooks (hard mask, LoRA and HSMs as graph branches).
const ids = [model.tokenizer!.encode('Y dijo Jesús a sus discípulos'), model.tokenizer!.encode('En el principio era el Verbo')];
const len = Math.min(ids[0].length, ids[1].length);
const batch = ids.map((row) => row.slice(0, len));
const masked = await model.logits(batch, { hooks: pat.hooks('eval'), extraFeeds: methodEvalFeeds(pat, model) });
const plain = await pruned.logits(batch);
let worst = 0;
for (let i = 0; i < plain.data.length; i++) worst = Math.max(worst, Math.abs(plain.data[i] - masked.data[i]));
console.log(`largest logit difference, pruned model vs hard-masked model: ${worst.toExponential(2)}`);
if (!(worst < 1e-4)) throw new Error(`the pruned model's logits differ from the hard-masked model's by ${worst}`);
