/**
 * `sparsetune export --onnx DIR`: the model (with any adapters fused, or built in as hooks when
 * they run unfused) as a transformers.js model directory: config, tokenizer files and
 * onnx/model.onnx (+ model.onnx_data), which `pipeline('text-generation', DIR)` of
 * `@huggingface/transformers` loads in Node or the browser.
 */
import { exportOnnxModel } from '../../merge/onnx-export.js';
import { formatHelp, parseCommand, UsageError, wantsHelp, type CommandSpec, type Flags } from '../args.js';
import { APPLY_ADAPTER_FLAG, applyAdapters, FORCE_FLAG, loadCliModel, MODEL_FLAG } from '../adapters.js';
import { log } from '../output.js';

export const spec: CommandSpec = {
  name: 'export',
  summary: 'Export the model (adapters fused) as an ONNX model directory for transformers.js.',
  usage: 'export --onnx DIR [--model M] [--adapter DIR ...] [--external-data auto|always|never]',
  flags: {
    onnx: { type: 'string', value: 'DIR', description: 'output directory: config.json, tokenizer files, onnx/model.onnx', required: true },
    model: MODEL_FLAG,
    adapter: APPLY_ADAPTER_FLAG,
    'external-data': { type: 'string', value: 'WHEN', description: 'weights in onnx/model.onnx_data beside the graph: auto (above 1 GiB), always, never', default: 'auto' },
    overwrite: { type: 'boolean', description: 'replace a non-empty output directory' },
    force: FORCE_FLAG,
  },
  notes: [
    'Load it with transformers.js (Node or browser):',
    "  import { env, pipeline } from '@huggingface/transformers';",
    "  env.localModelPath = '<parent of DIR>/'; env.allowRemoteModels = false;",
    "  const generate = await pipeline('text-generation', '<name of DIR>');",
  ].join('\n'),
};

/** `--external-data` as exportOnnx's option. */
export function externalDataFlag(f: Flags): boolean | 'auto' {
  const v = f.choice('external-data', ['auto', 'always', 'never'] as const, 'auto')!;
  return v === 'auto' ? 'auto' : v === 'always';
}

/** Run `sparsetune export`. */
export async function run(argv: string[]): Promise<void> {
  if (wantsHelp(argv)) return void process.stdout.write(formatHelp(spec));
  const f = parseCommand(spec, argv);
  const out = f.required('onnx');
  if (out.trim() === '') throw new UsageError('export', '--onnx needs an output directory');
  const externalData = externalDataFlag(f);
  const model = await loadCliModel(f.str('model'), log);
  const applied = await applyAdapters(model, f.list('adapter'), { force: f.bool('force'), log });
  log(`writing ${out}`);
  const r = await exportOnnxModel(model, out, { hooks: applied.hooks, feeds: applied.extraFeeds, externalData, overwrite: f.bool('overwrite') });
  process.stdout.write(`exported ${out} (${r.files.join(', ')}; weights ${r.externalData ? 'in onnx/model.onnx_data' : 'inside onnx/model.onnx'})\n`);
}
