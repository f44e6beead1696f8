/** `sparsetune eval`: held-out loss and perplexity of a model, with or without adapters. */
import { SparsetuneError } from '../../errors.js';
import { loadDataset } from '../../io/datasets.js';
import { evaluateLoss } from '../../train/evaluation.js';
import { formatHelp, parseCommand, UsageError, wantsHelp, type CommandSpec } from '../args.js';
import { APPLY_ADAPTER_FLAG, applyAdapters, FORCE_FLAG, loadCliModel, MODEL_FLAG, WEIGHTS_DTYPE_FLAG } from '../adapters.js';
import { WEIGHTS_DTYPES } from '../../models/low-precision.js';
import { countProgress, log, printJson } from '../output.js';
import { accuracy, candidateLabels, readLabelledRows } from '../classify-data.js';

export const spec: CommandSpec = {
  name: 'eval',
  summary: 'Evaluate loss and perplexity on a data file; prints {"loss","ppl","tokens"} as JSON.',
  usage: 'eval --data FILE [--model M] [--adapter DIR ...] [--seq-len N]',
  flags: {
    model: MODEL_FLAG,
    adapter: APPLY_ADAPTER_FLAG,
    data: { type: 'string', value: 'FILE', description: 'evaluation data (.jsonl or .txt, as for train)', required: true },
    'seq-len': { type: 'string', value: 'N', description: 'tokens per example', default: 'min(128, model max)' },
    'batch-size': { type: 'string', value: 'N', description: 'examples per batch', default: '8' },
    'max-batches': { type: 'string', value: 'N', description: 'evaluate at most N batches (0 = all)', default: '0' },
    force: FORCE_FLAG,
    'weights-dtype': WEIGHTS_DTYPE_FLAG,
    classify: { type: 'boolean', description: 'also score {"prompt","completion"|"label"} rows by log-likelihood and add "accuracy"' },
    labels: { type: 'string', value: 'LIST', description: 'with --classify: comma-separated candidate labels', default: 'the distinct labels in --data' },
  },
};

/** Run `sparsetune eval`. */
export async function run(argv: string[]): Promise<void> {
  if (wantsHelp(argv)) return void process.stdout.write(formatHelp(spec));
  const f = parseCommand(spec, argv);
  const data = f.required('data');
  const seqLenFlag = f.int('seq-len', { min: 2 });
  const batchSize = f.int('batch-size', { min: 1 }, 8)!;
  const maxBatches = f.int('max-batches', { min: 0 }, 0)!;
  if (f.has('labels') && !f.bool('classify')) throw new UsageError('eval', '--labels only applies with --classify');
  const labelsFlag = (f.str('labels') ?? '').split(',').map((s) => s.trim()).filter(Boolean);
  const weightsDtype = f.choice('weights-dtype', WEIGHTS_DTYPES, 'f32')!;
  const model = await loadCliModel(f.str('model'), log);
  const maxPos = model.config.maxPositionEmbeddings;
  const seqLen = seqLenFlag ?? Math.min(128, maxPos);
  if (seqLen > maxPos) throw new UsageError('eval', `--seq-len ${seqLen} exceeds the model's max_position_embeddings (${maxPos})`);
  if (!model.tokenizer) throw new SparsetuneError('BAD_ARGUMENT', `${model.source} has no tokenizer.json, so ${data} cannot be tokenized`);
  const examples = await loadDataset(data, model.tokenizer, { seqLen, onWarning: (m) => log(`warning: ${m}`) });
  const applied = await applyAdapters(model, f.list('adapter'), { force: f.bool('force'), log, weightsDtype });
  const r = await evaluateLoss(model, examples, { batchSize, maxBatches, hooks: applied.hooks, extraFeeds: applied.extraFeeds, onBatch: countProgress('eval batch') });
  if (!f.bool('classify')) return printJson({ loss: r.loss, ppl: r.ppl, tokens: r.tokens });
  const rows = await readLabelledRows(data);
  const acc = await accuracy(model, rows, candidateLabels(rows, labelsFlag), { hooks: applied.hooks, extraFeeds: applied.extraFeeds });
  printJson({ loss: r.loss, ppl: r.ppl, tokens: r.tokens, accuracy: acc.accuracy, correct: acc.correct, total: acc.total });
}
