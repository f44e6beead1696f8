/**
 * The one interface every fine-tuning method implements (adapters, masks, sparse deltas).
 * The trainer knows no method by name: it asks the method for its trainable tensors, the
 * hooks that put it into the model graph, its objective, per-step feeds and hooks, and
 * finally for the adapter it exports.
 */
import type { Graph, Value } from '../engine/ir.js';
import type { Adapter, AdapterKind } from '../merge/types.js';
import type { BuiltGraph, CausalLM } from '../models/causal-lm.js';
import type { ModelHooks } from '../models/hooks.js';
import type { HostTensor } from '../tensor.js';
import type { TokenizedExample } from '../io/datasets.js';

/** A JS-owned tensor the optimizer updates in place. */
export interface TrainableParam {
  /** Graph input name (adapter params: `<method>.<site>.<part>`; base weights: their HF name). */
  name: string;
  shape: number[];
  data: Float32Array;
  /** Decoupled weight decay applies (false for biases, norms, masks' logits when the method says so). */
  decay: boolean;
  /** Optional per-parameter learning-rate multiplier. */
  lrScale?: number;
}

export interface StepContext {
  model: CausalLM;
  /** 0-based optimizer step about to run / just run. */
  step: number;
  totalSteps: number;
  /** Learning rate of this step (after the schedule). */
  lr: number;
  /** Deterministic per-step seed (derived from the run's seed). */
  seed: number;
}

/** What the trainer differentiates. */
export interface Objective {
  graph: Graph;
  /** The scalar the optimizer minimizes. */
  loss: Value;
  /** Other scalars whose gradients the method wants separately (e.g. R-AMT's knowledge loss). */
  extraLosses?: Record<string, Value>;
  /** Scalars to log (not differentiated). */
  metrics?: Record<string, Value>;
}

export type GradMap = Map<string, Float32Array>;

export interface Method {
  readonly name: string;
  readonly kind: AdapterKind;
  /** The tensors the optimizer updates. */
  params(): TrainableParam[];
  /**
   * Hooks that insert the method into a model graph (they declare the params as graph
   * inputs). `train` graphs may be stochastic (dropout, Gumbel noise, soft masks); `eval`
   * graphs are what the exported adapter computes.
   */
  hooks(mode: 'train' | 'eval'): ModelHooks;
  /** Build the training objective. Default: the LM loss of `model.build('train', hooks())`. */
  objective?(model: CausalLM, hooks: ModelHooks): Objective;
  /** Extra loss terms added to the LM loss by the default objective. */
  extraLoss?(built: BuiltGraph): Value | null;
  /** Per-step feeds for inputs the hooks declared that are not params (noise, temperatures). */
  stepFeeds?(ctx: StepContext): Record<string, HostTensor>;
  /** Feeds needed to evaluate (deterministic: no noise; hard masks). Default: stepFeeds of the last step. */
  evalFeeds?(ctx: StepContext): Record<string, HostTensor>;
  /** Rewrite raw gradients before clipping and the optimizer (gradient masks, dropout). */
  adjustGradients?(grads: GradMap, extra: Record<string, GradMap>, ctx: StepContext): void;
  /** Called once before the first step, with the training examples (e.g. for calibration). */
  beforeTraining?(ctx: StepContext, train?: readonly TokenizedExample[]): void | Promise<void>;
  /** Called after each optimizer step (proximal steps, schedules, mask updates). */
  afterStep?(ctx: StepContext): void | Promise<void>;
  /** Optional multi-phase training (LT-SFT): return true to restart the trainer loop with a fresh optimizer. */
  nextPhase?(ctx: StepContext): boolean | Promise<boolean>;
  /** The adapter file content (base fingerprint and model are filled in by the caller when empty). */
  export(model: CausalLM): Adapter | Promise<Adapter>;
  /** JSON-serializable state for checkpoints beyond the params (e.g. masks); restored by loadState. */
  state?(): Record<string, unknown>;
  loadState?(s: Record<string, unknown>): void;
  /** Resolved config (with defaults), recorded in adapter.json. */
  readonly config: Record<string, unknown>;
}

/** The default objective: LM cross-entropy (+ the method's extra loss). */
export function defaultObjective(method: Method, model: CausalLM, hooks: ModelHooks): Objective {
  const built = model.build('train', hooks);
  let loss = built.loss!;
  const metrics: Record<string, Value> = { lm_loss: loss };
  const extra = method.extraLoss?.(built);
  if (extra) {
    metrics.extra_loss = extra;
    loss = built.graph.add('Add', [loss, extra])[0];
  }
  return { graph: built.graph, loss, metrics };
}
