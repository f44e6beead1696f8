/**
 * Child process of memory.test.ts: load a checkpoint and run either inference only (loss
 * forwards) or Sparse-MeZO steps with the defaults, the same number of forward passes on the
 * same batches (seeded random tokens, 64 per example, the recipe's batch size), then print
 * process.resourceUsage().maxRSS and the RSS right after start-up (KiB) as JSON. Run with
 * `node --import tsx test/zeroth-order/memory-child.ts <model dir> infer|sparse-mezo <forwards>`.
 */
import { batches } from '../../src/io/datasets.js';
import { CausalLM } from '../../src/models/causal-lm.js';
import { xorshift32 } from '../../src/util/random.js';
import { resolveZoTrainConfig, ZerothOrderTrainer } from '../../src/zeroth-order/train.js';
import { randomTokenExamples } from '../helpers.js';

// Resident memory once the modules are loaded: the loader's own footprint varies between processes.
const startKiB = process.memoryUsage().rss / 1024;
const [dir, mode, forwardsArg] = process.argv.slice(2);
const forwards = Number(forwardsArg);
const model = await CausalLM.load(dir);
const { batchSize } = resolveZoTrainConfig({ method: 'sparse-mezo' });
const data = randomTokenExamples(xorshift32(1), 4 * batchSize, { length: 64, hi: model.vocabSize });
const list = [...batches(data, batchSize, { seed: 0, epoch: 0, padId: 0 })];
let sum = 0;
if (mode === 'infer') {
  for (let f = 0; f < forwards; f++) sum += (await model.loss(list[f % list.length])).loss;
} else {
  // The trainer's own setup (targets, thresholds, the check against the weights on disk), then its optimizer.
  const trainer = await ZerothOrderTrainer.create(model, { method: 'sparse-mezo' });
  for (let s = 0; s < forwards / 2; s++) sum += (await trainer.optimizer.step(async () => (await model.loss(list[s % list.length])).loss)).loss;
}
process.stdout.write(`${JSON.stringify({ mode, startKiB, maxRssKiB: process.resourceUsage().maxRSS, finite: Number.isFinite(sum) })}\n`);
