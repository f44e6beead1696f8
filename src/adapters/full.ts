/**
 * Full fine-tuning, the reference point every sparse method is measured against: the base
 * weights themselves are the trainable tensors (each TrainableParam is named by its HF
 * weight name and its data IS the model's weight buffer, so the optimizer updates the model
 * in place and the trainer differentiates w.r.t. those graph inputs).
 *
 * Export: the dense difference (trained − original) as an `additive` adapter, so a full
 * fine-tune travels in the same file format as the sparse methods and composes with them.
 *
 * Memory cost: the constructor keeps a float32 snapshot of every trained tensor (the
 * "original" the delta is taken against), i.e. one extra copy of the trained weights. With
 * AdamW's two moments and the gradient, full fine-tuning holds about 5x the trained
 * weights' bytes (weights + snapshot + m + v + grad), against ~1x (+ small adapters) for
 * LoRA-style methods. Restrict `targetModules` to shrink all of it.
 */
import { z } from 'zod';
import { hashTensors } from '../merge/fingerprint.js';
import { newAdapter, type Adapter, type AdditiveDelta } from '../merge/types.js';
import type { CausalLM } from '../models/causal-lm.js';
import type { ModelHooks } from '../models/hooks.js';
import type { HostTensor } from '../tensor.js';
import type { Method, TrainableParam } from '../train/method.js';
import { parseMethodConfig, selectSites } from './common.js';
import type { MethodRecipe } from '../train/recipe.js';

export const fullConfigSchema = z.object({
  /**
   * Train only these linears' weights and biases (PEFT-style names, full paths or a regex;
   * `lm_head` allowed). Absent: every parameter of the model (embeddings, norms, biases too).
   */
  targetModules: z.union([z.array(z.string()).min(1), z.string()]).optional(),
});
export type FullConfig = z.infer<typeof fullConfigSchema>;

/** Norm weights and biases get no weight decay (the usual convention, as in HF's Trainer). */
function decays(name: string): boolean {
  return !(name.endsWith('.bias') || /norm|(^|\.)ln_/.test(name));
}

/** The base parameter names full fine-tuning trains, in model order, without duplicates (tied heads). */
function trainedNames(model: CausalLM, targets: FullConfig['targetModules']): string[] {
  if (targets === undefined) {
    // The architecture's own list: every tensor the graphs read (the weights map may hold extras).
    return model.arch.paramNames(model.config).filter((n) => model.weights.has(n));
  }
  const names = new Set<string>();
  for (const site of selectSites(model, targets, { excludeLmHead: false })) {
    names.add(site.weightName);
    if (site.biasName) names.add(site.biasName);
  }
  return [...names];
}

export class FullFinetuneMethod implements Method {
  readonly name = 'full';
  readonly kind = 'additive' as const;
  readonly config: FullConfig;
  private readonly trainables: TrainableParam[];
  /** Copies of the trained tensors at construction (what the exported delta is relative to). */
  private readonly original = new Map<string, Float32Array>();

  constructor(
    readonly model: CausalLM,
    config: z.input<typeof fullConfigSchema> = {},
  ) {
    this.config = parseMethodConfig('full', fullConfigSchema, config ?? {});
    this.trainables = trainedNames(model, this.config.targetModules).map((name) => {
      const w = model.weights.get(name)!;
      this.original.set(name, w.data.slice());
      return { name, shape: [...w.shape], data: w.data, decay: decays(name) };
    });
  }

  params(): TrainableParam[] {
    return this.trainables;
  }

  /** Nothing to insert: the trained tensors are the base parameters the graph already reads. */
  hooks(): ModelHooks {
    return {};
  }

  /** Trained values in total (the optimizer state is twice this). */
  get trainableCount(): number {
    return this.trainables.reduce((n, p) => n + p.data.length, 0);
  }

  /** Put the original weights back into the model (e.g. to apply the exported adapter to the same model). */
  restoreBase(): void {
    for (const p of this.trainables) p.data.set(this.original.get(p.name)!);
  }

  /**
   * The `additive` adapter: every element whose trained value differs from the original,
   * with value float32(trained − original). The base fingerprint is that of the original
   * weights (hashed from the snapshot), so it is right even though the model now holds the
   * trained values. The model keeps its trained weights.
   */
  export(model: CausalLM): Adapter {
    const pristine = new Map<string, HostTensor>(model.weights);
    for (const [name, data] of this.original) pristine.set(name, { ...model.weights.get(name)!, data });
    const a = newAdapter({
      method: this.name,
      kind: 'additive',
      base: { model: model.source, fingerprint: hashTensors(pristine) },
      config: { ...this.config },
    });
    let changed = 0;
    for (const p of this.trainables) {
      const delta = denseDifference(p.data, this.original.get(p.name)!);
      if (delta) {
        a.additive.set(p.name, delta);
        changed += delta.indices.length;
      }
    }
    a.meta.metrics = { trainedValues: this.trainableCount, changedValues: changed };
    return a;
  }
}

/** float32(current − original) at every element that changed (flat, increasing indices), or null. */
function denseDifference(current: Float32Array, original: Float32Array): AdditiveDelta | null {
  let n = 0;
  for (let i = 0; i < current.length; i++) if (current[i] !== original[i]) n++;
  if (n === 0) return null;
  const indices = new Int32Array(n);
  const values = new Float32Array(n);
  let k = 0;
  for (let i = 0; i < current.length; i++) {
    if (current[i] === original[i]) continue;
    indices[k] = i;
    values[k++] = current[i] - original[i];
  }
  return { indices, values };
}

/**
 * The full fine-tuning baseline of S2FT's comparison (experiments/train_script/
 * finetune_commensense_llama2_full.sh): Adam betas (0.9, 0.95), no weight decay, lr 1e-5,
 * linear decay after 100 warmup steps, clipping 1.0, global batch 64.
 */
export const recipe: MethodRecipe = {
  source: 'S2FT (Yang et al. 2024) full fine-tuning baseline, Infini-AI-Lab/S2FT experiments/train_script/finetune_commensense_llama2_full.sh (Adam 0.9/0.95, wd 0, lr 1e-5, linear, warmup 100, clip 1.0, batch 64)',
  lr: 3e-3,
  steps: 200,
  batchSize: 8,
  optimizer: { type: 'adamw', beta1: 0.9, beta2: 0.95, weightDecay: 0 },
  schedule: { type: 'linear', warmupSteps: 4, minRatio: 0 },
  clipNorm: 1,
  notes: 'lr 1e-5 is for a 7B model over ~8k steps; tiny models over 200 steps need ~300x (best of 3e-4/1e-3/3e-3 on stories260K; grid in bench/outcomes/s2ft.ts)',
};

export const configSchema = fullConfigSchema;
export const summary = 'Full fine-tuning baseline: trains the base weights in place (optionally only targetModules); exports the dense delta as an additive adapter';
export function createMethod(model: CausalLM, config: unknown): FullFinetuneMethod {
  return new FullFinetuneMethod(model, config as z.input<typeof fullConfigSchema>);
}
