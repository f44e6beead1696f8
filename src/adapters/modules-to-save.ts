/**
 * PEFT's `modules_to_save`: whole modules (a head, a norm, a projection) trained in full beside
 * a LoRA-style adapter. Selection follows PEFT: every module whose name ends with an entry
 * (plain text, `"lm_head"`, `"norm"`). Each of their parameters gets a trainable copy that the
 * graph reads instead of the base tensor; the export is the difference, float32(trained −
 * original), as an additive delta (so fusing restores the trained values to within one
 * float32 rounding, and unfusing restores the base exactly). A module whose weight is tied to
 * another (lm_head and embed_tokens in tied models) cannot be saved alone: an adapter on the
 * shared tensor would change both, so it is refused.
 */
import { SparsetuneError } from '../errors.js';
import type { Adapter } from '../merge/types.js';
import type { CausalLM } from '../models/causal-lm.js';
import type { ModelHooks } from '../models/hooks.js';
import { savedModuleNames } from '../models/targets.js';
import type { TrainableParam } from '../train/method.js';
import { paramValue } from './common.js';

/** Every module name of the model: all dotted prefixes of its parameter names, and its sites. */
function moduleNames(model: CausalLM): string[] {
  const names = new Set<string>();
  for (const p of model.weights.keys()) {
    const parts = p.split('.');
    for (let i = 1; i < parts.length; i++) names.add(parts.slice(0, i).join('.'));
  }
  for (const s of model.sites()) names.add(s.name);
  return [...names];
}

/** Norm weights and biases get no weight decay. */
function decays(name: string): boolean {
  return !(name.endsWith('.bias') || /norm|(^|\.)ln_/.test(name));
}

export class SavedModules {
  /** Trainable copies, named `<prefix>.modules_to_save.<param>`. */
  readonly params: TrainableParam[] = [];
  /** Module names selected (for logs and the PEFT config). */
  readonly modules: string[];
  private readonly byParam = new Map<string, TrainableParam>();
  private readonly original = new Map<string, Float32Array>();

  constructor(model: CausalLM, prefix: string, modulesToSave: readonly string[] | null | undefined) {
    this.modules = savedModuleNames(moduleNames(model), modulesToSave);
    if (!modulesToSave || modulesToSave.length === 0) return;
    if (this.modules.length === 0) {
      const examples = model.sites().map((s) => s.kind).filter((k, i, a) => a.indexOf(k) === i);
      throw new SparsetuneError('BAD_CONFIG', `modulesToSave ${JSON.stringify(modulesToSave)} matches no module of this ${model.config.modelType} model (a module matches when its name ends with an entry, e.g. ${examples.join(', ')}, norm)`);
    }
    const head = model.sites().find((s) => s.kind === 'lm_head');
    const tiedWeight = head && moduleOfParam(head.weightName) !== head.name ? head.weightName : undefined;
    const chosen = new Set<string>();
    for (const m of this.modules) {
      if (tiedWeight && (m === head!.name || tiedWeight.startsWith(`${m}.`))) {
        throw new SparsetuneError('BAD_CONFIG', `modulesToSave: "${m}" shares its weight ${tiedWeight} with ${m === head!.name ? 'the input embedding' : 'the output head'} in this model (tied embeddings); a saved copy would untie them, which an adapter on the shared tensor cannot express. Leave it out, or target the head with LoRA`);
      }
      for (const p of model.weights.keys()) if (p.startsWith(`${m}.`)) chosen.add(p);
    }
    for (const name of [...chosen].sort()) {
      const w = model.weights.get(name)!;
      const param: TrainableParam = { name: `${prefix}.modules_to_save.${name}`, shape: [...w.shape], data: w.data.slice(), decay: decays(name) };
      this.params.push(param);
      this.byParam.set(name, param);
      this.original.set(name, w.data.slice());
    }
  }

  /** Base parameter names that are replaced by trainable copies. */
  get paramNames(): string[] {
    return [...this.byParam.keys()];
  }

  /** The graph reads the trainable copy wherever it would read a saved parameter. */
  hooks(): ModelHooks {
    if (this.byParam.size === 0) return {};
    return {
      param: (name, value, g) => {
        const p = this.byParam.get(name);
        return p ? paramValue(g, p) : value;
      },
    };
  }

  /** Add float32(trained − original) of every changed element to `adapter` as additive deltas. */
  exportInto(adapter: Adapter): void {
    for (const [name, p] of this.byParam) {
      const orig = this.original.get(name)!;
      const idx: number[] = [];
      for (let i = 0; i < orig.length; i++) if (p.data[i] !== orig[i]) idx.push(i);
      if (idx.length === 0) continue;
      adapter.additive.set(name, { indices: Int32Array.from(idx), values: Float32Array.from(idx, (i) => p.data[i] - orig[i]) });
    }
    if (adapter.additive.size > 0 && adapter.lowrank.size > 0) adapter.meta.kind = 'additive';
  }
}

function moduleOfParam(name: string): string {
  const i = name.lastIndexOf('.');
  return i < 0 ? name : name.slice(0, i);
}
