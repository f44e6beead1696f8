/**
 * Learn a 2:4 sparsity mask with MaskLLM and fuse it into the weights.
 *
 *   node --import tsx examples/nm-mask.ts [OUT_DIR]
 *
 * 2:4 sparsity keeps 2 of every 4 consecutive input weights of a Linear (the pattern sparse
 * tensor cores accelerate). The one-shot baseline keeps the 2 largest magnitudes of each
 * group; MaskLLM instead learns which 2 to keep, end to end, with the weights frozen. This
 * example trains the mask on the bundled model, saves it as a mask adapter, fuses it with
 * WeightPatcher, checks that every group of 4 keeps exactly 2 weights, compares held-out
 * perplexity of magnitude 2:4 and learned 2:4, and restores the dense weights.
 * SPARSETUNE_EXAMPLE_STEPS sets the optimizer steps (default 20; CI runs it with 5).
 */
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import {
  bundledModelPath,
  CausalLM,
  evaluateLoss,
  fingerprintWeights,
  loadAdapter,
  loadDataset,
  MaskllmMethod,
  newAdapter,
  packBits,
  saveAdapter,
  splitHoldout,
  Trainer,
  unpackBits,
  WeightPatcher,
  type Adapter,
  type LinearSite,
} from '../src/index.js';
import { exampleSteps } from './steps.js';

const steps = exampleSteps();
const out = process.argv[2] ?? join(tmpdir(), 'sparsetune-examples', 'maskllm-2of4');
const dataFile = fileURLToPath(new URL('../data/demo/spanish.txt', import.meta.url));
const N = 2;
const M = 4;

const model = await CausalLM.load(bundledModelPath());
const pristine = fingerprintWeights(model.weights);
const { train, eval: held } = splitHoldout(await loadDataset(dataFile, model.tokenizer!, { seqLen: 64 }), 0.1, 0);
const heldOut = () => evaluateLoss(model, held, { batchSize: 8, maxBatches: 4 });

/** Flat index of weight (out o, in i) in the site's own layout. */
const at = (site: LinearSite, o: number, i: number) => (site.layout === 'out_in' ? o * site.inFeatures + i : i * site.outFeatures + o);

/** One-shot magnitude 2:4: in each group of 4 inputs keep the 2 largest |w| (the baseline MaskLLM starts from). */
function magnitudeMask(sites: LinearSite[]): Adapter {
  const a = newAdapter({ method: 'magnitude-2:4', kind: 'mask', base: { model: model.source, fingerprint: pristine } });
  for (const site of sites) {
    const w = model.weights.get(site.weightName)!.data;
    const mask = new Uint8Array(w.length);
    for (let o = 0; o < site.outFeatures; o++) {
      for (let g = 0; g < site.inFeatures; g += M) {
        const group = Array.from({ length: M }, (_, j) => at(site, o, g + j)).sort((x, y) => Math.abs(w[y]) - Math.abs(w[x]));
        for (const k of group.slice(0, N)) mask[k] = 1;
      }
    }
    a.masks.set(site.weightName, { bits: packBits(mask), numel: mask.length });
  }
  return a;
}

// Start from the magnitude prior; a high learning rate lets a few steps move the pattern logits.
const maskllm = new MaskllmMethod(model, { n: N, m: M, seed: 0 });
const sites = maskllm.tensors.map((t) => t.site);
const r = await new Trainer(model, maskllm, { steps, batchSize: 8, optimizer: { lr: 5e-2, beta2: 0.95, eps: 1e-5 }, evalBatches: 4, seed: 0 }).train(train, held);
console.log(`MaskLLM ${N}:${M} on ${sites.length} linears: held-out loss with the hard mask ${r.initialEval!.loss.toFixed(4)} -> ${r.finalEval!.loss.toFixed(4)} after ${steps} steps`);
await saveAdapter(out, maskllm.export(model));
console.log(`saved the mask adapter to ${out}`);

const dense = await heldOut();
const patcher = new WeightPatcher(model.weights);
let handle = patcher.apply(magnitudeMask(sites));
const magnitude = await heldOut();
patcher.revert(handle);

// Fuse the saved mask: pruned weights become 0, kept weights keep their exact bits.
const learnedAdapter = await loadAdapter(out);
const baseCopies = new Map(sites.map((s) => [s.weightName, model.weights.get(s.weightName)!.data.slice()]));
handle = patcher.apply(learnedAdapter);
let groups = 0;
try {
  for (const site of sites) {
    const fused = model.weights.get(site.weightName)!.data;
    const base = baseCopies.get(site.weightName)!;
    const entry = learnedAdapter.masks.get(site.weightName)!;
    const kept = unpackBits(entry.bits, entry.numel);
    for (let o = 0; o < site.outFeatures; o++) {
      for (let g = 0; g < site.inFeatures; g += M) {
        let keptInGroup = 0;
        for (let j = 0; j < M; j++) {
          const k = at(site, o, g + j);
          keptInGroup += kept[k];
          // A kept weight keeps its base value (which may itself be 0); a dropped one is 0.
          const want = kept[k] ? base[k] : 0;
          if (fused[k] !== want) {
            throw new Error(`${site.weightName}[${k}] is ${fused[k]} after fusing, expected ${want}`);
          }
        }
        if (keptInGroup !== N) throw new Error(`${site.weightName}: output ${o}, inputs ${g}..${g + M - 1} keep ${keptInGroup} weights, not ${N}`);
        groups++;
      }
    }
  }
  console.log(`every one of ${groups.toLocaleString('en-US')} groups of ${M} inputs keeps exactly ${N} weights`);
  const learned = await heldOut();
  // The mask is learned on this (Spanish) data, so choosing which weights to drop also adapts the
  // English-trained model to it: the learned sparse model can beat even the dense one here.
  console.log(`held-out perplexity: dense ${dense.ppl.toFixed(2)}, magnitude ${N}:${M} ${magnitude.ppl.toFixed(2)}, learned ${N}:${M} ${learned.ppl.toFixed(2)}`);
  // The fused mask must score what the method's hard-mask hooks scored during training.
  if (Math.abs(learned.loss - r.finalEval!.loss) > 1e-3) throw new Error(`the fused mask scores ${learned.loss}, the hard-mask hooks scored ${r.finalEval!.loss}`);
} finally {
  patcher.revert(handle);
}
if (fingerprintWeights(model.weights) !== pristine) throw new Error('reverting the mask did not restore the dense weights');
console.log('dense weights restored bit for bit');
