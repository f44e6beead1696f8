/**
 * LT-SFT, composable sparse fine-tuning (Ansell et al., ACL 2022), for decoder LLMs.
 *
 * The method trains the BASE weights in place: its trainable params are the maskable base
 * tensors (lt-sft-tensors.ts), whose buffers are the model's own weight buffers. Per
 * iteration (default one):
 *   1. snapshot P_prev (P0, the weights at construction, is kept for the whole run);
 *   2. phase 1 — full fine-tuning of every maskable entry;
 *   3. select the K/n entries with the largest |P − P0| globally (lt-sft-select.ts);
 *   4. rewind every maskable tensor to P_prev;
 *   5. phase 2 — sparse fine-tuning: the gradient is zeroed outside the mask.
 * The trainer's `nextPhase` hook drives the switch, and the trainer builds a FRESH optimizer
 * for every phase. Entries outside the mask therefore stay bit-identical to P0: their
 * gradient is exactly 0, AdamW's moments start at 0 and stay 0, and LT-SFT disables weight
 * decay on its params in both phases (decay toward zero would move every weight and also
 * corrupt the |P − P0| ranking; the L1 term below is the method's regularizer).
 *
 * Regularizer R = (1/N)·Σ|P − P0| over every trained entry, with N the model's total
 * parameter count (as the official code: the sum runs over the trained tensors, the
 * normalisation over all parameters), weight `l1` (0.1 for language SFTs, 0 for task SFTs),
 * in both phases. It is applied as a gradient term in adjustGradients, l1·sign(P − P0)/N
 * (sign(0) = 0), before the mask and before clipping, so no constant P0 feeds enter the
 * graph. `l1Distance()` reports R for logging.
 *
 * Selection ties: every entry whose |P − P0| equals the K-th largest is selected, as the
 * official `|delta| >= threshold` (so a selection can exceed K by the ties; in float32 these
 * are rare), except that entries that did not move are never selected.
 *
 * Non-maskable head: with an untied LM head, `trainHead` (default on for task SFTs, off for
 * language SFTs, as the official scripts freeze the output embeddings of language SFTs)
 * fine-tunes the head densely in both phases; it is rewound with everything else and
 * exported as a dense difference. With tied embeddings the head is the maskable embedding.
 *
 * Sources: a task SFT is trained on top of the source-language SFT(s). They are fused into
 * the weights at construction (WeightPatcher), P0 then is θ0 + φ_src, and the exported
 * φ_task is relative to that; the adapter's base fingerprint stays the pristine θ0's.
 *
 * Export: φ = P − P0 on the mask, dropping |φ| <= dropBelow, as an `additive` adapter.
 * `export()` then RESTORES THE BASE: weights back to P0, sources reverted, so the model is
 * bit-identical to what it was before the method was created (apply the adapter to use the
 * fine-tuned model). Later export() calls return the same adapter. `restoreBase()` does the
 * restore alone (e.g. after a failed run).
 */
import { z } from 'zod';
import { SparsetuneError } from '../errors.js';
import { loadAdapter } from '../merge/adapter.js';
import { WeightPatcher, type AppliedHandle } from '../merge/apply.js';
import { fingerprintWeights } from '../merge/fingerprint.js';
import { newAdapter, type Adapter } from '../merge/types.js';
import type { CausalLM } from '../models/causal-lm.js';
import type { ModelHooks } from '../models/hooks.js';
import type { GradMap, Method, TrainableParam } from '../train/method.js';
import type { MethodRecipe } from '../train/recipe.js';
import { parseMethodConfig } from '../adapters/common.js';
import { selectTopKByDelta, type SelectionResult } from './lt-sft-select.js';
import { DEFAULT_LT_SFT_TARGETS, maskableTensors, parameterCount, sparseDifference, untiedHead, type MaskableTensor } from './lt-sft-tensors.js';

export const ltSftConfigSchema = z
  .object({
    /** `language` (LM on raw text) or `task` (labelled data): picks the defaults of density and l1. */
    purpose: z.enum(['language', 'task']).default('task'),
    /** K as a fraction of the maskable entries (default 0.04 language, 0.08 task). */
    density: z.number().gt(0).max(1).optional(),
    /** K as an absolute number of entries (instead of density). */
    count: z.number().int().positive().optional(),
    /** Weight of R = Σ|P − P0| / (parameter count) (default 0.1 language, 0 task). */
    l1: z.number().nonnegative().optional(),
    /** Fine-tune an untied LM head densely (default true for task SFTs, false for language SFTs; no effect with tied embeddings). */
    trainHead: z.boolean().optional(),
    /** Full-then-sparse iterations; the mask grows by K/iterations each time. */
    iterations: z.number().int().positive().default(1),
    /** Linear layers whose weights are maskable (names, paths or a regex, as PEFT's target_modules). */
    targetModules: z.union([z.array(z.string()).min(1), z.string()]).default(DEFAULT_LT_SFT_TARGETS),
    /** Also mask the input token embedding (with tied embeddings: the shared embedding/LM-head matrix). */
    includeEmbeddings: z.boolean().default(true),
    /** Exported differences with |phi| <= this are dropped. */
    dropBelow: z.number().nonnegative().default(1e-7),
    /** Adapter directories (e.g. the source-language SFT) fused into the base while training. */
    sourceSfts: z.array(z.string().min(1)).default([]),
  })
  .refine((c) => c.density === undefined || c.count === undefined, { message: 'give either density or count, not both' });

export type LtSftConfigInput = z.input<typeof ltSftConfigSchema>;

/** The config with every default resolved (recorded in adapter.json). */
export type LtSftConfig = {
  purpose: 'language' | 'task';
  density: number | null;
  count: number | null;
  l1: number;
  trainHead: boolean;
  iterations: number;
  targetModules: string[] | string;
  includeEmbeddings: boolean;
  dropBelow: number;
  sourceSfts: string[];
};

export interface LtSftOptions {
  /** Loaded source SFTs to fuse into the base while training (createMethod puts the adapters of `sourceSfts` here). */
  sources?: Adapter[];
}

export type LtSftPhase = 'full' | 'sparse' | 'done' | 'restored';

/** Parse and resolve an LT-SFT config (defaults by purpose). */
export function resolveLtSftConfig(config: unknown): LtSftConfig {
  const c = parseMethodConfig('lt-sft', ltSftConfigSchema, config ?? {});
  const language = c.purpose === 'language';
  return {
    purpose: c.purpose,
    density: c.count === undefined ? (c.density ?? (language ? 0.04 : 0.08)) : null,
    count: c.count ?? null,
    l1: c.l1 ?? (language ? 0.1 : 0),
    trainHead: c.trainHead ?? !language,
    iterations: c.iterations,
    targetModules: c.targetModules,
    includeEmbeddings: c.includeEmbeddings,
    dropBelow: c.dropBelow,
    sourceSfts: c.sourceSfts,
  };
}

export class LtSftMethod implements Method {
  readonly name = 'lt-sft';
  readonly kind = 'additive' as const;
  readonly config: LtSftConfig;
  /** The maskable tensors (their data are the model's weight buffers). */
  readonly tensors: MaskableTensor[];
  /** Total maskable entries. */
  readonly maskableEntries: number;
  /** The untied LM head trained densely (trainHead), or null. */
  readonly head: MaskableTensor | null;
  /** N of the L1 term: every parameter of the model (tied tensors once). */
  readonly parameterCount: number;
  /** K: entries the run may tune. */
  readonly budget: number;
  /** Fingerprint of the base before any source SFT was fused (recorded in the adapter). */
  readonly baseFingerprint: string;
  /** One entry per completed selection. */
  readonly selections: SelectionResult[] = [];

  private readonly pretrained = new Map<string, Float32Array>();
  private readonly masks = new Map<string, Uint8Array>();
  /** P_prev when it differs from P0 (iterations after the first). */
  private previous: Map<string, Float32Array> | null = null;
  private readonly patcher: WeightPatcher | null;
  private readonly sourceHandles: AppliedHandle[] = [];
  private readonly sources: Adapter[];
  private currentPhase: LtSftPhase = 'full';
  private iteration = 0;
  private exported: Adapter | null = null;
  private readonly noHooks: ModelHooks = {};
  private readonly trainables: TrainableParam[];

  constructor(
    readonly model: CausalLM,
    config: LtSftConfigInput = {},
    opts: LtSftOptions = {},
  ) {
    this.config = resolveLtSftConfig(config);
    this.sources = opts.sources ?? [];
    if (this.config.sourceSfts.length > this.sources.length) {
      throw new SparsetuneError('BAD_ARGUMENT', 'lt-sft: sourceSfts lists adapter directories but they were not loaded; create the method with createMethod() / LtSftMethod.create(), or pass the loaded adapters as opts.sources');
    }
    this.tensors = maskableTensors(model, this.config.targetModules, this.config.includeEmbeddings);
    this.maskableEntries = this.tensors.reduce((s, t) => s + t.data.length, 0);
    this.head = this.config.trainHead ? untiedHead(model, this.tensors) : null;
    this.parameterCount = parameterCount(model);
    this.budget = this.config.count ?? Math.floor(this.config.density! * this.maskableEntries);
    if (this.budget < 1 || this.budget > this.maskableEntries) {
      throw new SparsetuneError('BAD_CONFIG', `lt-sft: K = ${this.budget} entries, but the model has ${this.maskableEntries} maskable entries; choose a density/count giving 1..${this.maskableEntries}`);
    }
    if (this.budget < this.config.iterations) {
      throw new SparsetuneError('BAD_CONFIG', `lt-sft: K = ${this.budget} is smaller than iterations = ${this.config.iterations}; raise the density/count or lower iterations`);
    }
    // Fingerprint first: it must describe the pristine base, before sources or training.
    this.baseFingerprint = fingerprintWeights(model.weights);
    this.patcher = this.sources.length ? new WeightPatcher(model.weights, { fingerprint: this.baseFingerprint }) : null;
    try {
      for (const a of this.sources) this.sourceHandles.push(this.patcher!.apply(a));
    } catch (err) {
      this.patcher?.revertAll();
      throw err;
    }
    for (const t of this.trained) this.pretrained.set(t.name, t.data.slice());
    for (const t of this.tensors) this.masks.set(t.name, new Uint8Array(t.data.length));
    this.trainables = this.trained.map((t) => ({ name: t.name, shape: t.shape, data: t.data, decay: false }));
  }

  /** Every tensor the optimizer updates: the maskable ones, then the dense head if any. */
  get trained(): MaskableTensor[] {
    return this.head ? [...this.tensors, this.head] : this.tensors;
  }

  /** Parse `config`, load its `sourceSfts` adapter directories, and create the method. */
  static async create(model: CausalLM, config: unknown = {}, opts: LtSftOptions = {}): Promise<LtSftMethod> {
    const resolved = resolveLtSftConfig(config);
    const shapes = new Map([...model.weights].map(([k, v]) => [k, v.shape]));
    const loaded = await Promise.all(resolved.sourceSfts.map((dir) => loadAdapter(dir, { shapes })));
    return new LtSftMethod(model, config as LtSftConfigInput, { sources: [...loaded, ...(opts.sources ?? [])] });
  }

  /** Where the run stands: phase 1 (`full`), phase 2 (`sparse`), finished, or base restored. */
  get phase(): LtSftPhase {
    return this.currentPhase;
  }

  /** 0-based iteration of the procedure. */
  get currentIteration(): number {
    return this.iteration;
  }

  /** The 0/1 mask of a maskable tensor (live; read-only by convention). */
  mask(name: string): Uint8Array {
    const m = this.masks.get(name);
    if (!m) throw new SparsetuneError('NOT_FOUND', `lt-sft: '${name}' is not a maskable tensor; maskable: ${[...this.masks.keys()].slice(0, 4).join(', ')}…`);
    return m;
  }

  /** P0 of a trained tensor (maskable or the dense head): the weights at construction (sources fused). */
  reference(name: string): Float32Array {
    const p = this.pretrained.get(name);
    if (!p) throw new SparsetuneError('NOT_FOUND', `lt-sft: '${name}' is not a tensor this method trains`);
    return p;
  }

  /** Entries currently selected (sum over masks). */
  get selectedEntries(): number {
    return this.selections.reduce((s, r) => s + r.picked, 0);
  }

  /** R = Σ|P − P0| over the trained entries / the parameter count (for logging). */
  l1Distance(): number {
    let s = 0;
    for (const t of this.trained) {
      const p0 = this.pretrained.get(t.name)!;
      for (let i = 0; i < p0.length; i++) s += Math.abs(t.data[i] - p0[i]);
    }
    return s / this.parameterCount;
  }

  params(): TrainableParam[] {
    return this.trainables;
  }

  hooks(): ModelHooks {
    // The weights themselves change; nothing is inserted into the graph.
    return this.noHooks;
  }

  beforeTraining(): void {
    if (this.currentPhase === 'restored') {
      throw new SparsetuneError('BAD_ARGUMENT', 'lt-sft: this run was exported and the base restored; create a new method to train again');
    }
  }

  adjustGradients(grads: GradMap): void {
    const reg = this.config.l1 / this.parameterCount;
    const sparse = this.currentPhase !== 'full';
    for (const t of this.trained) {
      const g = grads.get(t.name);
      if (!g) continue;
      const p = t.data;
      const p0 = this.pretrained.get(t.name)!;
      // The dense head has no mask: it trains fully in both phases.
      const mask = this.masks.get(t.name);
      for (let i = 0; i < g.length; i++) {
        // Assign (not multiply) so masked-out entries get +0 even from NaN or -0 gradients.
        if (sparse && mask && !mask[i]) {
          g[i] = 0;
          continue;
        }
        if (reg !== 0) {
          const d = p[i] - p0[i];
          if (d > 0) g[i] += reg;
          else if (d < 0) g[i] -= reg;
        }
      }
    }
  }

  /** Checkpoint state: phase, iteration, masks, selections and P_prev (typed arrays go to the tensor file). */
  state(): Record<string, unknown> {
    return {
      phase: this.currentPhase,
      iteration: this.iteration,
      selections: this.selections.map((r) => ({ ...r })),
      masks: Object.fromEntries([...this.masks].map(([n, m]) => [n, m.slice()])),
      previous: this.previous ? Object.fromEntries([...this.previous].map(([n, p]) => [n, p.slice()])) : null,
    };
  }

  /** Restore checkpoint state (the trainer restores the weights themselves afterwards). */
  loadState(s: Record<string, unknown>): void {
    const phase = s.phase as LtSftPhase;
    if (phase !== 'full' && phase !== 'sparse') {
      throw new SparsetuneError('BAD_ARGUMENT', `lt-sft: cannot resume a run in phase '${String(phase)}'; only runs still training (full or sparse phase) resume`);
    }
    const masks = s.masks as Record<string, Uint8Array>;
    for (const [name, m] of this.masks) {
      const saved = masks?.[name];
      if (!(saved instanceof Uint8Array) || saved.length !== m.length) {
        throw new SparsetuneError('BAD_ARGUMENT', `lt-sft: the checkpoint has no valid mask for '${name}'; it was made with other target modules`);
      }
      m.set(saved);
    }
    this.selections.length = 0;
    this.selections.push(...((s.selections as SelectionResult[]) ?? []));
    this.iteration = Number(s.iteration ?? 0);
    const prev = s.previous as Record<string, Float32Array> | null;
    this.previous = prev ? new Map(Object.entries(prev)) : null;
    this.currentPhase = phase;
  }

  nextPhase(): boolean {
    if (this.currentPhase === 'full') {
      const n = this.config.iterations;
      const share = Math.floor(this.budget / n);
      // The last iteration takes what is left of K (earlier ties may have used some of it).
      const k = this.iteration < n - 1 ? share : Math.max(0, this.budget - this.selectedEntries);
      this.selections.push(
        selectTopKByDelta(
          this.tensors.map((t) => ({ name: t.name, current: t.data, reference: this.pretrained.get(t.name)!, mask: this.masks.get(t.name)! })),
          k,
          { ties: 'all' },
        ),
      );
      const rewindTo = this.previous ?? this.pretrained;
      for (const t of this.trained) t.data.set(rewindTo.get(t.name)!);
      this.currentPhase = 'sparse';
      return true;
    }
    if (this.currentPhase === 'sparse') {
      this.iteration++;
      if (this.iteration < this.config.iterations) {
        this.previous = new Map(this.trained.map((t) => [t.name, t.data.slice()]));
        this.currentPhase = 'full';
        return true;
      }
      this.previous = null;
      this.currentPhase = 'done';
    }
    return false;
  }

  /**
   * The sparse difference φ = P − P0 on the mask as an `additive` adapter; then the base is
   * restored (see restoreBase). Calling it again returns the same adapter.
   */
  export(model: CausalLM = this.model): Adapter {
    if (model !== this.model) throw new SparsetuneError('BAD_ARGUMENT', 'lt-sft: export() must get the model the method was created on');
    if (this.exported) return this.exported;
    if (this.currentPhase === 'restored') throw new SparsetuneError('BAD_ARGUMENT', 'lt-sft: the base was restored before export; the trained values are gone');
    const adapter = newAdapter({ method: this.name, kind: this.kind, base: { model: model.source, fingerprint: this.baseFingerprint }, config: { ...this.config } });
    let nnz = 0;
    for (const t of this.tensors) {
      const delta = sparseDifference(t.data, this.pretrained.get(t.name)!, this.masks.get(t.name)!, this.config.dropBelow);
      if (!delta) continue;
      adapter.additive.set(t.name, delta);
      nnz += delta.indices.length;
    }
    let headEntries = 0;
    if (this.head) {
      // Dense: every entry that moved (the official code stores the head in full).
      const delta = sparseDifference(this.head.data, this.pretrained.get(this.head.name)!, new Uint8Array(this.head.data.length).fill(1), 0);
      if (delta) {
        adapter.additive.set(this.head.name, delta);
        headEntries = delta.indices.length;
      }
    }
    adapter.meta.metrics = {
      maskableEntries: this.maskableEntries,
      budget: this.budget,
      selected: this.selectedEntries,
      nnz,
      ...(this.head ? { denseHead: this.head.name, headEntries } : {}),
      thresholds: this.selections.map((s) => s.threshold),
      completed: this.currentPhase === 'done',
      sources: this.sources.map((a) => ({ method: a.meta.method, created: a.meta.created, metrics: a.meta.metrics })),
    };
    this.exported = adapter;
    this.restoreBase();
    return adapter;
  }

  /**
   * Put the base back exactly as it was before this method was created: maskable weights
   * to P0, then the source SFTs reverted. Idempotent; training afterwards is refused.
   */
  restoreBase(): void {
    if (this.currentPhase === 'restored') return;
    for (const t of this.trained) t.data.set(this.pretrained.get(t.name)!);
    for (const h of this.sourceHandles.splice(0).reverse()) this.patcher!.revert(h);
    this.previous = null;
    this.currentPhase = 'restored';
  }
}

/**
 * The reference trainer settings (the defaults of `train --method lt-sft`): the official
 * code's optimizer and schedule, a fresh one per phase, with separate step counts for the
 * full and the sparse phase.
 */
export const recipe: MethodRecipe = {
  source:
    'LT-SFT (Ansell et al., ACL 2022), official code cambridgeltl/composable-sft: src/sft/lt_sft.py + trainer.py, examples/language-modeling/train_mlm.sh ' +
    '(AdamW, no weight decay, linear decay to 0, clip 1.0, a fresh optimizer and schedule per phase, separate full/sparse step counts, L1 0.1 for language SFTs)',
  lr: 1e-3,
  steps: 100,
  phaseSteps: [100, 100],
  phaseNames: ['full', 'sparse'],
  batchSize: 8,
  optimizer: { type: 'adamw', beta1: 0.9, beta2: 0.999, eps: 1e-8, weightDecay: 0 },
  schedule: { type: 'linear', warmupSteps: 0, minRatio: 0 },
  clipNorm: 1,
  notes:
    'the reference lr 5e-5 (2e-5 for task SFTs) and 10k-100k steps per phase are for 100M+ parameter models; tiny checkpoints here learn in 100 steps per phase at lr 1e-3 (lr grid in bench/outcomes/lt-sft.ts)',
};

/** Registry entry (src/train/registry.ts). */
export const configSchema = ltSftConfigSchema;
export const summary = 'LT-SFT: composable sparse fine-tuning (full FT, keep the top-K changed entries, rewind, sparse FT; additive deltas that compose)';
export function createMethod(model: CausalLM, config: unknown): Promise<LtSftMethod> {
  return LtSftMethod.create(model, config);
}
