/** `sparsetune logits`: the logits of every position for a list of token ids, as JSON. */
import { formatHelp, parseCommand, UsageError, wantsHelp, type CommandSpec } from '../args.js';
import { APPLY_ADAPTER_FLAG, applyAdapters, FORCE_FLAG, loadCliModel, MODEL_FLAG, WEIGHTS_DTYPE_FLAG } from '../adapters.js';
import { WEIGHTS_DTYPES } from '../../models/low-precision.js';
import { log, printJson } from '../output.js';

export const spec: CommandSpec = {
  name: 'logits',
  summary: 'Print the logits of every position as JSON: {"ids", "shape": [T, V], "logits": [[...V] x T]}.',
  usage: 'logits --ids 1,2,3 [--model M] [--adapter DIR ...]',
  flags: {
    model: MODEL_FLAG,
    adapter: APPLY_ADAPTER_FLAG,
    ids: { type: 'string', value: 'LIST', description: 'comma-separated token ids, e.g. 1,403,407', required: true },
    force: FORCE_FLAG,
    'weights-dtype': WEIGHTS_DTYPE_FLAG,
  },
};

/** Parse "1, 2,3" into ids; anything else is a usage error naming the bad item. */
export function parseIds(text: string): number[] {
  const parts = text.split(',').map((s) => s.trim());
  if (parts.length === 0 || parts.every((p) => p === '')) throw new UsageError('logits', '--ids needs at least one token id, e.g. --ids 1,403,407');
  return parts.map((p, i) => {
    if (!/^\d+$/.test(p)) throw new UsageError('logits', `--ids item ${i + 1} is '${p}', not a non-negative integer`);
    return Number(p);
  });
}

/** Run `sparsetune logits`. */
export async function run(argv: string[]): Promise<void> {
  if (wantsHelp(argv)) return void process.stdout.write(formatHelp(spec));
  const f = parseCommand(spec, argv);
  const ids = parseIds(f.required('ids'));
  const weightsDtype = f.choice('weights-dtype', WEIGHTS_DTYPES, 'f32')!;
  const model = await loadCliModel(f.str('model'), log);
  const bad = ids.find((t) => t >= model.vocabSize);
  if (bad !== undefined) throw new UsageError('logits', `--ids: token id ${bad} is outside the vocabulary (0..${model.vocabSize - 1})`);
  if (ids.length > model.config.maxPositionEmbeddings) {
    throw new UsageError('logits', `--ids has ${ids.length} tokens, more than the model's max_position_embeddings (${model.config.maxPositionEmbeddings})`);
  }
  const applied = await applyAdapters(model, f.list('adapter'), { force: f.bool('force'), log, weightsDtype });
  const out = await model.logits([ids], { hooks: applied.hooks, extraFeeds: applied.extraFeeds });
  const [, T, V] = out.shape;
  const rows: number[][] = [];
  for (let t = 0; t < T; t++) rows.push(Array.from(out.data.subarray(t * V, (t + 1) * V)));
  printJson({ ids, shape: [T, V], logits: rows });
}
