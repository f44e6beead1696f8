/**
 * `sparsetune merge`: fuse adapters into a copy of the base weights and write a standard
 * Hugging Face model directory. A pruned (PAT) adapter instead exports the smaller model.
 */
import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { SparsetuneError } from '../../errors.js';
import { writeModelDir } from '../../io/model-dir.js';
import { loadAdapter } from '../../merge/adapter.js';
import { checkFingerprint } from '../../merge/fingerprint.js';
import type { Adapter } from '../../merge/types.js';
import { CausalLM } from '../../models/causal-lm.js';
import { addOnnxToModelDir } from '../../merge/onnx-export.js';
import type { HostTensor } from '../../tensor.js';
import { formatHelp, parseCommand, UsageError, wantsHelp, type CommandSpec } from '../args.js';
import { externalDataFlag } from './export.js';
import { applyAdapters, loadCliModel, resolveCliAdapter } from '../adapters.js';
import { loadOptional, optionalModules } from '../optional.js';
import { log } from '../output.js';

export const spec: CommandSpec = {
  name: 'merge',
  summary: 'Fuse adapters into the base weights and write a standard Hugging Face model directory.',
  usage: 'merge --adapter DIR [--adapter DIR ...] --out DIR [--model M]',
  flags: {
    model: { type: 'string', value: 'M', description: 'base model directory or hub id', default: 'bundled stories260K' },
    adapter: { type: 'string', value: 'DIR', multiple: true, description: 'adapter to fuse: a directory (sparsetune or PEFT LoRA) or a hub id (repeat to fuse several)', required: true },
    out: { type: 'string', value: 'DIR', description: 'output model directory (config.json, model.safetensors, tokenizer files)', required: true },
    dtype: { type: 'string', value: 'TYPE', description: 'stored weight type: f32, f16, bf16', default: 'f32' },
    overwrite: { type: 'boolean', description: 'replace a non-empty --out' },
    force: { type: 'boolean', description: 'fuse adapters even if trained on other base weights' },
    onnx: { type: 'boolean', description: 'also write onnx/model.onnx, so the directory loads in transformers.js (see `sparsetune export`)' },
    'external-data': { type: 'string', value: 'WHEN', description: 'with --onnx: weights in onnx/model.onnx_data: auto (above 1 GiB), always, never', default: 'auto' },
  },
  notes: 'A pruned adapter (PAT) exports the pruned, smaller model with an updated config.json; other adapters are fused first.',
};

/** What src/merge/prune-export.ts provides: the pruned model's config and weights. */
type ExportPruned = (model: CausalLM, adapter: Adapter) => { configJson: Record<string, unknown>; weights: Map<string, HostTensor<'f32'>> };

/** Run `sparsetune merge`. */
export async function run(argv: string[]): Promise<void> {
  if (wantsHelp(argv)) return void process.stdout.write(formatHelp(spec));
  const f = parseCommand(spec, argv);
  const dirs = f.list('adapter');
  if (dirs.length === 0) throw new UsageError('merge', 'missing --adapter DIR (the adapter to fuse)');
  const out = f.required('out');
  const dtype = ({ f32: 'F32', f16: 'F16', bf16: 'BF16' } as const)[f.choice('dtype', ['f32', 'f16', 'bf16'] as const, 'f32')!];
  const overwrite = f.bool('overwrite');
  const onnx = f.bool('onnx');
  if (f.has('external-data') && !onnx) throw new UsageError('merge', '--external-data only applies with --onnx');
  externalDataFlag(f);
  const existing = await fsp.readdir(out).catch(() => [] as string[]);
  if (existing.length && !overwrite) throw new UsageError('merge', `--out ${out} is not empty; choose another directory or pass --overwrite`);

  const model = await loadCliModel(f.str('model'), log);
  const shapes = new Map([...model.weights].map(([k, v]) => [k, v.shape]));
  // Sort pruned adapters out first: they change shapes, so everything else fuses before them.
  const pruned: { dir: string; adapter: Adapter }[] = [];
  const fusable: string[] = [];
  for (const dir of dirs) {
    const a = await loadAdapter(await resolveCliAdapter(dir), { shapes, base: model.weights });
    if (a.pruned) pruned.push({ dir, adapter: a });
    else fusable.push(dir);
  }
  if (pruned.length > 1) throw new SparsetuneError('BAD_ARGUMENT', `merge takes at most one pruned adapter, got ${pruned.length} (${pruned.map((p) => p.dir).join(', ')})`);
  const applied = await applyAdapters(model, fusable, { force: f.bool('force'), log });
  if (applied.unfused.length) {
    throw new SparsetuneError('BAD_ARGUMENT', `${applied.unfused.join(', ')}: this method's adapters run unfused (as extra graph branches) and cannot be merged into plain weights; serve them with their hooks instead`);
  }

  let configJson: Record<string, unknown>;
  let weights = model.weights;
  if (pruned.length) {
    const { dir, adapter } = pruned[0];
    checkFingerprint(adapter, applied.baseFingerprint, { force: f.bool('force') });
    const exportPruned = await loadOptional<ExportPruned>(optionalModules.pruneExport, 'merge/prune-export.js', 'exportPrunedModel', 'merging a pruned adapter');
    log(`pruning with ${dir}`);
    ({ configJson, weights } = exportPruned(model, adapter));
  } else {
    configJson = JSON.parse(await fsp.readFile(path.join(model.source, 'config.json'), 'utf8')) as Record<string, unknown>;
  }
  if (dtype !== 'F32') configJson.torch_dtype = dtype === 'F16' ? 'float16' : 'bfloat16';
  const dtypes = dtype === 'F32' ? undefined : Object.fromEntries([...weights.keys()].map((k) => [k, dtype]));
  log(`writing ${out}`);
  await writeModelDir(out, { configJson, weights, tokenizerFrom: model.source }, { overwrite, dtypes });
  if (onnx) {
    log(`writing ${path.join(out, 'onnx')}`);
    // From the directory just written, so the ONNX graph is exactly the merged (or pruned) model.
    await addOnnxToModelDir(await CausalLM.load(out), out, { externalData: externalDataFlag(f) });
  }
  process.stdout.write(`merged ${dirs.length} adapter(s) into ${out}${onnx ? ' (with onnx/ for transformers.js)' : ''}\n`);
}
