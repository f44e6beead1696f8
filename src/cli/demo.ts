/**
 * `sparsetune demo`: the five-minute tour, offline on the bundled model and data. Trains a
 * sparse "language" delta (Spanish text) and a sparse "task" delta (review sentiment) with
 * LT-SFT, shows held-out loss before/after, composes them, generates with each, and says
 * where the files went and what to try next.
 */
import { join, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { fileURLToPath } from 'node:url';
import { SparsetuneError } from '../errors.js';
import { bundledModelPath } from '../io/model-dir.js';
import { writeFileAtomic } from '../io/atomic.js';
import { loadDataset, splitHoldout, type TokenizedExample } from '../io/datasets.js';
import { CausalLM } from '../models/causal-lm.js';
import { generateText } from '../models/generate.js';
import { LtSftMethod } from '../masks/lt-sft.js';
import { saveAdapter } from '../merge/adapter.js';
import { composeAdapters } from '../merge/compose.js';
import { WeightPatcher } from '../merge/apply.js';
import { fingerprintWeights } from '../merge/fingerprint.js';
import type { Adapter } from '../merge/types.js';
import { Trainer } from '../train/trainer.js';
import { ProgressBar } from '../train/progress.js';
import { readFileSync } from 'node:fs';

const HELP = `sparsetune demo — train, compose and try two sparse adapters on the bundled model (offline)

Usage: sparsetune demo [--out DIR] [--steps N] [--seed N]

  --out DIR    where the adapters go (default ./sparsetune-demo)
  --steps N    optimizer steps per training phase (default 80; LT-SFT runs two phases)
  --seed N     random seed (default 0)
  -h, --help   show this help
`;

function dataDir(): string {
  // src/cli/demo.ts and dist/cli.js both sit two levels below the package root.
  const here = fileURLToPath(new URL('.', import.meta.url));
  const candidates = [resolve(here, '..', '..', 'data', 'demo'), resolve(here, '..', 'data', 'demo')];
  for (const c of candidates) {
    try {
      readFileSync(join(c, 'README.md'));
      return c;
    } catch {
      // try the next layout
    }
  }
  throw new SparsetuneError('NOT_FOUND', `bundled demo data not found (looked in ${candidates.join(', ')}); reinstall the package`);
}

export async function runDemo(argv: string[]): Promise<void> {
  const { values } = parseArgs({
    args: argv,
    options: { out: { type: 'string' }, steps: { type: 'string' }, seed: { type: 'string' }, help: { type: 'boolean', short: 'h' } },
    strict: true,
  });
  if (values.help) {
    process.stdout.write(HELP);
    return;
  }
  const steps = Number(values.steps ?? 80);
  const seed = Number(values.seed ?? 0);
  if (!Number.isInteger(steps) || steps < 1) throw new SparsetuneError('BAD_ARGUMENT', `--steps must be a positive integer, got ${values.steps}`);
  if (!Number.isInteger(seed)) throw new SparsetuneError('BAD_ARGUMENT', `--seed must be an integer, got ${values.seed}`);
  const out = resolve(values.out ?? 'sparsetune-demo');
  const say = (s = '') => process.stdout.write(`${s}\n`);
  const t0 = performance.now();

  const model = await CausalLM.load(bundledModelPath());
  const tok = model.tokenizer!;
  const params = [...model.weights.values()].reduce((s, w) => s + w.data.length, 0);
  const fingerprint = fingerprintWeights(model.weights);
  say(`sparsetune demo — model: stories260K (${params.toLocaleString('en')} parameters, a Llama trained on children's stories)`);
  say(`Everything runs on this CPU, offline. Adapters go to ${out}\n`);

  const data = dataDir();
  const spanish = splitHoldout(await loadDataset(join(data, 'spanish.txt'), tok, { seqLen: 64 }), 0.1, seed);
  const task = splitHoldout(await loadDataset(join(data, 'sentiment.jsonl'), tok, { seqLen: 128 }), 0.1, seed);

  const summary: Record<string, unknown> = {};
  const train = async (title: string, purpose: 'language' | 'task', set: { train: TokenizedExample[]; eval: TokenizedExample[] }, lr: number) => {
    say(`▸ ${title}`);
    const method = new LtSftMethod(model, { purpose });
    const bar = new ProgressBar({ label: `  ${purpose}`, stream: process.stdout });
    let phaseStart = true;
    const trainer = new Trainer(model, method, { steps, batchSize: 16, optimizer: { lr, weightDecay: 0 }, schedule: { type: 'linear', minRatio: 0 }, seed }, {
      onStep: (log) => {
        if (phaseStart) {
          bar.start(steps, log.step - 1);
          phaseStart = false;
        }
        bar.update(log);
        if (log.step === steps) {
          bar.finish();
          phaseStart = true;
        }
      },
    });
    const r = await trainer.train(set.train, set.eval);
    const adapter = method.export(model); // also restores the base weights
    adapter.meta.base = { model: 'stories260K', fingerprint };
    const nnz = [...adapter.additive.values()].reduce((s, d) => s + d.indices.length, 0);
    summary[purpose] = { before: r.initialEval!.loss, after: r.finalEval!.loss, nnz };
    say(`  held-out loss ${r.initialEval!.loss.toFixed(3)} -> ${r.finalEval!.loss.toFixed(3)}  (perplexity ${r.initialEval!.ppl.toFixed(1)} -> ${r.finalEval!.ppl.toFixed(1)}); delta touches ${nnz.toLocaleString('en')} weights (${((100 * nnz) / params).toFixed(1)}%)\n`);
    return adapter;
  };

  const lang = await train('Language delta: LT-SFT on Spanish text (full fine-tune, keep the 4% most-changed weights, rewind, retrain only those)', 'language', spanish, 3e-3);
  const taskDelta = await train('Task delta: LT-SFT on review sentiment ("Review: ... Sentiment: positive|negative")', 'task', task, 3e-3);
  const composed = composeAdapters([lang, taskDelta]);

  const dirs = { language: join(out, 'spanish-lt-sft'), task: join(out, 'sentiment-lt-sft'), composed: join(out, 'spanish-and-sentiment') };
  await saveAdapter(dirs.language, lang);
  await saveAdapter(dirs.task, taskDelta);
  await saveAdapter(dirs.composed, composed);

  say('▸ Compare base, each delta and the composition (deltas are fused in place and reverted exactly)');
  const patcher = new WeightPatcher(model.weights);
  const evalLoss = async (set: TokenizedExample[]) => (await new Trainer(model, nullMethod(), { batchSize: 16 }).evaluate(set)).loss;
  const rows: [string, Adapter | null][] = [
    ['base', null],
    ['+ language', lang],
    ['+ task', taskDelta],
    ['+ language + task', composed],
  ];
  const table: Record<string, { spanishLoss: number; taskLoss: number; sample: string }> = {};
  say('  adapter            Spanish loss   sentiment-task loss   "Once upon a time" ->');
  for (const [name, a] of rows) {
    const h = a ? patcher.apply(a) : null;
    try {
      const es = await evalLoss(spanish.eval);
      const tl = await evalLoss(task.eval);
      const g = await generateText(model, 'Once upon a time', { maxNewTokens: 24 });
      table[name] = { spanishLoss: es, taskLoss: tl, sample: g.text };
      say(`  ${name.padEnd(18)} ${es.toFixed(3).padStart(12)}   ${tl.toFixed(3).padStart(19)}   ${JSON.stringify(g.text.slice(0, 60))}`);
    } finally {
      if (h) patcher.revert(h);
    }
  }
  summary.compare = table;
  summary.adapters = dirs;
  const summaryFile = join(out, 'demo-summary.json');
  await writeFileAtomic(summaryFile, JSON.stringify(summary, null, 2));
  say(`\nDone in ${((performance.now() - t0) / 1000).toFixed(0)} s. Files:`);
  for (const d of Object.values(dirs)) say(`  ${d}/adapter.json, adapter.safetensors`);
  say('\nTry next:');
  say(`  npx sparsetune generate --adapter ${dirs.composed} --prompt "Había una vez"`);
  say(`  npx sparsetune eval --adapter ${dirs.language} --data ${join(data, 'spanish.txt')}`);
  say(`  npx sparsetune serve --adapters ${out}      # then: curl localhost:8080/v1/models`);
  say('  npx sparsetune train --method s2ft --help   # other methods: lora gs-lora mosa s2ft pat maskllm ramt lt-sft mezo sparse-mezo');
}

/** A method with no parameters: evaluates the model as it is (with whatever is fused). */
function nullMethod() {
  return {
    name: 'none',
    kind: 'additive' as const,
    config: {},
    params: () => [],
    hooks: () => ({}),
    export: () => {
      throw new SparsetuneError('BAD_ARGUMENT', 'nothing to export');
    },
  };
}
