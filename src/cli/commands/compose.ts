/** `sparsetune compose`: combine adapters into one adapter equivalent to applying them together. */
import { loadAdapter, saveAdapter } from '../../merge/adapter.js';
import { composeAdapters } from '../../merge/compose.js';
import { loadModel } from '../../io/model-dir.js';
import { planWeights } from '../../models/param-shapes.js';
import { formatHelp, parseCommand, UsageError, wantsHelp, type CommandSpec } from '../args.js';
import { log } from '../output.js';

export const spec: CommandSpec = {
  name: 'compose',
  summary: 'Compose several adapters into one (exactly equal to applying them together).',
  usage: 'compose --adapter DIR --adapter DIR [...] --out DIR [--model M]',
  flags: {
    adapter: { type: 'string', value: 'DIR', multiple: true, description: 'adapter directory (repeat for each input)', required: true },
    out: { type: 'string', value: 'DIR', description: 'output adapter directory', required: true },
    model: { type: 'string', value: 'M', description: 'base model, to check parameter names and shapes (optional)' },
    method: { type: 'string', value: 'NAME', description: 'method name recorded in the composed adapter.json', default: 'compose' },
  },
};

/** Run `sparsetune compose`. */
export async function run(argv: string[]): Promise<void> {
  if (wantsHelp(argv)) return void process.stdout.write(formatHelp(spec));
  const f = parseCommand(spec, argv);
  const dirs = f.list('adapter');
  if (dirs.length === 0) throw new UsageError('compose', 'missing --adapter DIR (give two or more adapters to compose)');
  const out = f.required('out');
  let shapes: Map<string, number[]> | undefined;
  const modelFlag = f.str('model');
  if (modelFlag) {
    log(`loading model ${modelFlag}`);
    const m = await loadModel(modelFlag, { planWeights });
    shapes = new Map([...m.weights].map(([k, v]) => [k, v.shape]));
  }
  const adapters = [];
  for (const dir of dirs) adapters.push(await loadAdapter(dir, { shapes }));
  const composed = composeAdapters(adapters, { shapes, method: f.str('method') ?? 'compose' });
  await saveAdapter(out, composed);
  process.stdout.write(`composed ${dirs.length} adapter(s) into ${out} (${composed.meta.kind})\n`);
}
