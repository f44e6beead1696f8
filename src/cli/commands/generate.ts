/** `sparsetune generate`: stream a continuation of a prompt to stdout. */
import { SparsetuneError } from '../../errors.js';
import { streamGenerate } from '../../models/generate.js';
import { formatHelp, parseCommand, UsageError, wantsHelp, type CommandSpec } from '../args.js';
import { APPLY_ADAPTER_FLAG, applyAdapters, FORCE_FLAG, loadCliModel, MODEL_FLAG, WEIGHTS_DTYPE_FLAG } from '../adapters.js';
import { WEIGHTS_DTYPES } from '../../models/low-precision.js';
import { log } from '../output.js';

export const spec: CommandSpec = {
  name: 'generate',
  summary: 'Generate text from a prompt, streamed to stdout.',
  usage: 'generate --prompt TEXT [--model M] [--adapter DIR ...] [--max-tokens N] [--temperature T]',
  flags: {
    model: MODEL_FLAG,
    adapter: APPLY_ADAPTER_FLAG,
    prompt: { type: 'string', value: 'TEXT', description: 'text to continue', required: true },
    'max-tokens': { type: 'string', value: 'N', description: 'new tokens at most', default: "the model's max_new_tokens, else 64" },
    temperature: { type: 'string', value: 'T', description: 'sampling temperature (0 = greedy)', default: '0' },
    'top-k': { type: 'string', value: 'N', description: 'keep the k most likely tokens (0 = off)' },
    'top-p': { type: 'string', value: 'P', description: 'nucleus sampling mass in (0, 1]' },
    'repetition-penalty': { type: 'string', value: 'X', description: 'discourage repeated tokens (> 1)' },
    seed: { type: 'string', value: 'N', description: 'seed of the sampler (random when absent)' },
    stop: { type: 'string', value: 'S', multiple: true, description: 'stop when this text appears (repeatable)' },
    echo: { type: 'boolean', description: 'print the prompt before the continuation' },
    force: FORCE_FLAG,
    'weights-dtype': WEIGHTS_DTYPE_FLAG,
  },
};

/** Run `sparsetune generate`. */
export async function run(argv: string[]): Promise<void> {
  if (wantsHelp(argv)) return void process.stdout.write(formatHelp(spec));
  const f = parseCommand(spec, argv);
  const prompt = f.required('prompt');
  const opts = {
    maxNewTokens: f.int('max-tokens', { min: 1 }),
    temperature: f.num('temperature', { min: 0 }, 0),
    topK: f.int('top-k', { min: 0 }),
    topP: f.num('top-p', { gt: 0, max: 1 }),
    repetitionPenalty: f.num('repetition-penalty', { gt: 0 }),
    seed: f.int('seed', { min: 0 }),
    stop: f.list('stop'),
  };
  const weightsDtype = f.choice('weights-dtype', WEIGHTS_DTYPES, 'f32')!;
  const model = await loadCliModel(f.str('model'), log);
  if (!model.tokenizer) throw new SparsetuneError('BAD_ARGUMENT', `${model.source} has no tokenizer.json; generate needs one to encode the prompt and decode the output`);
  const ids = model.tokenizer.encode(prompt);
  if (ids.length === 0) throw new UsageError('generate', '--prompt encodes to no tokens; give some text');
  const room = model.config.maxPositionEmbeddings - ids.length;
  if (room < 1) throw new UsageError('generate', `--prompt has ${ids.length} tokens, which fills the model's context (${model.config.maxPositionEmbeddings})`);
  const applied = await applyAdapters(model, f.list('adapter'), { force: f.bool('force'), log, weightsDtype });
  const maxNewTokens = Math.min(opts.maxNewTokens ?? model.generation.maxNewTokens ?? 64, room);
  if (f.bool('echo')) process.stdout.write(prompt);
  const it = streamGenerate(model, [ids], { ...opts, maxNewTokens, hooks: applied.hooks, extraFeeds: applied.extraFeeds });
  for (;;) {
    const r = await it.next();
    if (r.done) {
      const res = r.value[0];
      process.stdout.write('\n');
      log(`[${res.ids.length} tokens, finish: ${res.finishReason}]`);
      return;
    }
    if (r.value.text) process.stdout.write(r.value.text);
  }
}
