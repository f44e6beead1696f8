/**
 * Loading the base model and putting adapters on it for the inference commands (eval,
 * logits, generate, merge). Adapters are fused into the loaded weights with WeightPatcher
 * (fingerprint checked unless forced); a method whose adapters must run unfused (e.g.
 * MoSA) exports `adapterHooks(model, adapter)` from its registry module, and then its
 * hooks and feeds are used instead.
 */
import { resolveAdapterDir } from '../io/hub.js';
import { bundledModelPath } from '../io/model-dir.js';
import { CausalLM } from '../models/causal-lm.js';
import { composeHooks, type ModelHooks } from '../models/hooks.js';
import { loadAdapter } from '../merge/adapter.js';
import { WeightPatcher } from '../merge/apply.js';
import { checkFingerprint, fingerprintWeights } from '../merge/fingerprint.js';
import type { Adapter } from '../merge/types.js';
import { lowRankHooks, runsUnfusedLowRank } from '../merge/unfused-lowrank.js';
import { WEIGHTS_DTYPES, type WeightsDtype } from '../models/low-precision.js';
import { METHOD_NAMES, methodModule } from '../train/registry.js';
import type { HostTensor } from '../tensor.js';
import type { FlagSpec } from './args.js';
import { downloadProgress } from './output.js';

/** Optional export of a method module: run an adapter as hooks instead of fusing it. */
export type AdapterHooksFn = (
  model: CausalLM,
  adapter: Adapter,
) => { hooks: ModelHooks; feeds?: Record<string, HostTensor> } | Promise<{ hooks: ModelHooks; feeds?: Record<string, HostTensor> }>;

/** Where status lines go (stderr for the CLI, so stdout stays clean for results). */
export type Log = (line: string) => void;

/** `--model` of the commands that load a model (its default is `modelRef`'s fallback). */
export const MODEL_FLAG: FlagSpec = { type: 'string', value: 'M', description: 'model directory or hub id (org/name, via the HF cache)', default: 'bundled stories260K' };
/** `--adapter` of the inference commands (eval, logits, generate). */
export const APPLY_ADAPTER_FLAG: FlagSpec = { type: 'string', value: 'DIR', multiple: true, description: 'adapter to apply: a directory (sparsetune or PEFT LoRA) or a hub id (repeat to combine)' };
/** `--force` of the inference commands: skip the base-fingerprint check. */
export const FORCE_FLAG: FlagSpec = { type: 'boolean', description: 'apply adapters even if trained on other base weights' };

/** `--weights-dtype` of the inference commands (generate, eval, logits, serve). */
export const WEIGHTS_DTYPE_FLAG: FlagSpec = {
  type: 'string',
  value: 'T',
  description: `store the linear weights as ${WEIGHTS_DTYPES.join(' | ')}: less memory, faster decode for int8/int4, logits no longer exact (docs/performance.md); LoRA adapters then run unfused in f32, others are fused before lowering`,
  default: 'f32',
};

/** `--model` as given, or the model bundled with the package. */
export function modelRef(flag: string | undefined): string {
  return flag ?? bundledModelPath();
}

/** Load a model dir or hub id (downloaded into the HF cache with a progress display), saying so on the log. */
export async function loadCliModel(ref: string | undefined, log: Log): Promise<CausalLM> {
  const r = modelRef(ref);
  log(`loading model ${r}`);
  return CausalLM.load(r, { progressCallback: downloadProgress() });
}

/** The local directory of an `--adapter`: a directory, or a hub id fetched into the HF cache. */
export function resolveCliAdapter(ref: string): Promise<string> {
  return resolveAdapterDir(ref, { progressCallback: downloadProgress() });
}

export interface AppliedAdapters {
  adapters: Adapter[];
  /** Hooks/feeds for adapters that run unfused (empty when all were fused). */
  hooks?: ModelHooks;
  extraFeeds?: Record<string, HostTensor>;
  patcher: WeightPatcher;
  /** Directories of the adapters that run as hooks (not fused). */
  unfused: string[];
  /** Fingerprint of the weights before any adapter was applied. */
  baseFingerprint: string;
}

async function hooksFor(method: string): Promise<AdapterHooksFn | undefined> {
  if (!METHOD_NAMES.includes(method)) return undefined;
  try {
    const mod = (await methodModule(method)) as unknown as { adapterHooks?: AdapterHooksFn };
    return typeof mod.adapterHooks === 'function' ? mod.adapterHooks : undefined;
  } catch {
    // The method's module is not available in this build: the adapter can still be fused.
    return undefined;
  }
}

/**
 * Load adapter directories (sparsetune or PEFT) and apply them to `model` (fused in place, or
 * as hooks). `weightsDtype` (other than f32): afterwards store the model's linear weights in
 * that precision; low-rank adapters then run as f32 hooks beside the lowered layers instead of
 * being fused (fusing would round their delta to the base's precision), and the others are
 * fused into the f32 weights before those are lowered.
 */
export async function applyAdapters(model: CausalLM, dirs: readonly string[], opts: { force?: boolean; log: Log; weightsDtype?: WeightsDtype }): Promise<AppliedAdapters> {
  const lower = opts.weightsDtype !== undefined && opts.weightsDtype !== 'f32';
  const baseFingerprint = fingerprintWeights(model.weights);
  const patcher = new WeightPatcher(model.weights, { fingerprint: baseFingerprint });
  const shapes = new Map([...model.weights].map(([k, v]) => [k, v.shape]));
  const adapters: Adapter[] = [];
  const hookSets: ModelHooks[] = [];
  const feeds: Record<string, HostTensor> = {};
  const unfusedDirs: string[] = [];
  // Load every adapter before fusing any: PEFT directories that save whole modules are read
  // as deltas against the pristine base weights.
  for (const dir of dirs) adapters.push(await loadAdapter(await resolveCliAdapter(dir), { shapes, base: model.weights }));
  for (const [k, dir] of dirs.entries()) {
    const adapter = adapters[k];
    if (opts.force && !checkFingerprint(adapter, baseFingerprint, { force: true })) {
      opts.log(`warning: ${dir} was trained on other base weights; applying it anyway (--force)`);
    }
    const unfused = await hooksFor(adapter.meta.method);
    if (!unfused && lower && runsUnfusedLowRank(model, adapter)) {
      checkFingerprint(adapter, baseFingerprint, { force: opts.force });
      const { hooks, feeds: f } = lowRankHooks(model, adapter, `adapter${k}`);
      hookSets.push(hooks);
      Object.assign(feeds, f);
      unfusedDirs.push(dir);
      opts.log(`adapter ${dir}: ${adapter.meta.method} (${adapter.meta.kind}), unfused in f32 beside the ${opts.weightsDtype} base`);
    } else if (unfused) {
      checkFingerprint(adapter, baseFingerprint, { force: opts.force });
      const { hooks, feeds: f } = await unfused(model, adapter);
      hookSets.push(hooks);
      Object.assign(feeds, f ?? {});
      unfusedDirs.push(dir);
      opts.log(`adapter ${dir}: ${adapter.meta.method} (${adapter.meta.kind}), unfused`);
    } else {
      patcher.apply(adapter, { force: opts.force, fingerprint: baseFingerprint });
      opts.log(`adapter ${dir}: ${adapter.meta.method} (${adapter.meta.kind}), fused${lower ? ` (before the weights are stored as ${opts.weightsDtype})` : ''}`);
    }
  }
  if (lower) {
    model.setWeightsDtype(opts.weightsDtype!);
    opts.log(`linear weights stored as ${opts.weightsDtype}`);
  }
  return {
    adapters,
    patcher,
    unfused: unfusedDirs,
    baseFingerprint,
    hooks: hookSets.length ? composeHooks(hookSets) : undefined,
    extraFeeds: hookSets.length ? feeds : undefined,
  };
}
