/**
 * The forget side of GS-LoRA: a source of forget batches, and the bounded forget loss
 * ReLU(BND - CE_forget) computed by a second forward pass in the training graph.
 */
import type { Graph, Value } from '../engine/ir.js';
import { crossEntropy } from '../engine/nn.js';
import { relu, sub } from '../engine/ops/index.js';
import { SparsetuneError } from '../errors.js';
import { batches, type Batch, type TokenizedExample } from '../io/datasets.js';
import { CausalLM } from '../models/causal-lm.js';
import type { ModelHooks } from '../models/hooks.js';
import type { HostTensor } from '../tensor.js';

/** Hands out the next forget batch each time it is called (one call per training step). */
export type BatchSource = () => Batch;

/**
 * A BatchSource that cycles through `examples` in seeded, reshuffled epochs (the same order
 * rule as the trainer's own batches).
 */
export function cyclingBatchSource(examples: readonly TokenizedExample[], batchSize: number, opts: { seed?: number; padId?: number } = {}): BatchSource {
  if (examples.length === 0) throw new SparsetuneError('BAD_DATA', 'forget set is empty: pass at least one tokenized example');
  const seed = opts.seed ?? 0;
  const padId = opts.padId ?? 0;
  let epoch = 0;
  let it = batches(examples, batchSize, { seed, epoch, padId });
  return () => {
    let r = it.next();
    if (r.done) {
      it = batches(examples, batchSize, { seed, epoch: ++epoch, padId });
      r = it.next();
    }
    return r.value!;
  };
}

const PREFIX = 'gs_lora.forget.';

/** Graph-input names of the forget pass (the retain pass keeps the model's own names). */
export const FORGET_INPUTS = {
  ids: `${PREFIX}input_ids`,
  targets: `${PREFIX}targets`,
  positions: `${PREFIX}position_ids`,
  mask: `${PREFIX}attention_mask`,
  bound: `${PREFIX}bound`,
} as const;

/** Terms the forget pass adds to the objective. */
export interface ForgetTerms {
  /** CE of the adapted model on the forget batch. */
  ce: Value;
  /** ReLU(BND - CE): zero once the forget CE reaches the bound. */
  loss: Value;
}

/**
 * Run the adapted model on a forget batch inside `g` (its own symbolic batch/seq dims, so
 * forget and retain batches may differ in size) and build ReLU(BND - CE_forget).
 */
export function forgetTerms(model: CausalLM, g: Graph, hooks: ModelHooks): ForgetTerms {
  const ids = g.input(FORGET_INPUTS.ids, 'i64', ['fbatch', 'fseq']);
  const positions = g.input(FORGET_INPUTS.positions, 'i64', ['fbatch', 'fseq']);
  const mask = g.input(FORGET_INPUTS.mask, 'f32', [1, 1, 'fseq', 'fseq']);
  const targets = g.input(FORGET_INPUTS.targets, 'i64', ['fbatch', 'fseq']);
  const bound = g.input(FORGET_INPUTS.bound, 'f32', []);
  const logits = model.forward(g, { ids, positions, mask }, hooks).logits;
  const ce = crossEntropy(logits, targets);
  return { ce, loss: relu(sub(bound, ce)) };
}

/** Feeds of the forget pass for one batch and bound. */
export function forgetFeeds(batch: Batch, bound: number): Record<string, HostTensor> {
  const f = CausalLM.trainFeeds(batch);
  return {
    [FORGET_INPUTS.ids]: f.input_ids,
    [FORGET_INPUTS.targets]: f.targets,
    [FORGET_INPUTS.positions]: f.position_ids,
    [FORGET_INPUTS.mask]: f.attention_mask,
    [FORGET_INPUTS.bound]: { dtype: 'f32', shape: [], data: Float32Array.of(bound) },
  };
}
