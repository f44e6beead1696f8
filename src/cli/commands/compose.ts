/** `sparsetune compose`: combine adapters into one adapter equivalent to applying them together. */
import { loadAdapter, saveAdapter } from '../../merge/adapter.js';
import { composeAdapters } from '../../merge/compose.js';
import { loadModel } from '../../io/model-dir.js';
import { planWeights } from '../../models/param-shapes.js';
import { formatHelp, parseCommand, UsageError, wantsHelp, type CommandSpec } from '../args.js';
import { downloadProgress, log } from '../output.js';
import { resolveCliAdapter } from '../adapters.js';
import type { HostTensor } from '../../tensor.js';

export const spec: CommandSpec = {
  name: 'compose',
  summary: 'Compose several adapters into one (exactly equal to applying them together).',
  usage: 'compose --adapter DIR --adapter DIR [...] --out DIR [--weights W,W,...] [--model M]',
  flags: {
    adapter: { type: 'string', value: 'DIR', multiple: true, description: 'adapter: a directory (sparsetune or PEFT LoRA) or a hub id (repeat for each input)', required: true },
    out: { type: 'string', value: 'DIR', description: 'output adapter directory', required: true },
    model: { type: 'string', value: 'M', description: 'base model, to check parameter names and shapes (needed for PEFT modules_to_save)' },
    method: { type: 'string', value: 'NAME', description: 'method name recorded in the composed adapter.json', default: 'compose' },
    weights: { type: 'string', value: 'LIST', description: 'one weight per --adapter, in order (e.g. 0.5,1): each delta is scaled by its weight', default: 'all 1' },
  },
};

/** Run `sparsetune compose`. */
export async function run(argv: string[]): Promise<void> {
  if (wantsHelp(argv)) return void process.stdout.write(formatHelp(spec));
  const f = parseCommand(spec, argv);
  const dirs = f.list('adapter');
  if (dirs.length === 0) throw new UsageError('compose', 'missing --adapter DIR (give two or more adapters to compose)');
  const out = f.required('out');
  const weights = f.has('weights') ? parseWeights(f.str('weights')!, dirs.length) : undefined;
  let shapes: Map<string, number[]> | undefined;
  let base: Map<string, HostTensor<'f32'>> | undefined;
  const modelFlag = f.str('model');
  if (modelFlag) {
    log(`loading model ${modelFlag}`);
    base = (await loadModel(modelFlag, { planWeights, progressCallback: downloadProgress() })).weights;
    shapes = new Map([...base].map(([k, v]) => [k, v.shape]));
  }
  const adapters = [];
  for (const dir of dirs) adapters.push(await loadAdapter(await resolveCliAdapter(dir), { shapes, base }));
  const composed = composeAdapters(adapters, { shapes, method: f.str('method') ?? 'compose', weights });
  await saveAdapter(out, composed);
  const how = weights ? ` with weights ${weights.join(', ')}` : '';
  process.stdout.write(`composed ${dirs.length} adapter(s) into ${out}${how} (${composed.meta.kind})\n`);
}

/** `--weights 0.5,1`: one finite number per adapter. */
export function parseWeights(text: string, count: number): number[] {
  const parts = text.split(',').map((s) => s.trim());
  const weights = parts.map((p, i) => {
    const w = Number(p);
    if (p === '' || !Number.isFinite(w)) throw new UsageError('compose', `--weights item ${i + 1} is '${p}', not a number`);
    return w;
  });
  if (weights.length !== count) throw new UsageError('compose', `--weights has ${weights.length} value(s) but there are ${count} --adapter(s); give one weight per adapter, in order`);
  return weights;
}
