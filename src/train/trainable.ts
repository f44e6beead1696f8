/**
 * PEFT's `get_nb_trainable_parameters` / `print_trainable_parameters` for any method: how
 * many values the optimizer updates, out of all the values the adapted model holds (base
 * weights, tied tensors counted once, plus the method's own tensors).
 */
import type { CausalLM } from '../models/causal-lm.js';
import type { Method } from './method.js';

/** Trainable and total parameter counts, and the trainable share in percent. */
export interface TrainableSummary {
  trainable: number;
  total: number;
  percent: number;
}

/** Count the trainable values of `method` on `model` (a method training base weights in place does not add to the total). */
export function trainableParameters(model: CausalLM, method: Pick<Method, 'params'>): TrainableSummary {
  let total = 0;
  for (const t of model.weights.values()) total += t.data.length;
  let trainable = 0;
  for (const p of method.params()) {
    trainable += p.data.length;
    if (!model.weights.has(p.name)) total += p.data.length;
  }
  return { trainable, total, percent: total ? (100 * trainable) / total : 0 };
}

/** PEFT's line: `trainable params: 2,560 || all params: 262,592 || trainable%: 0.9749`. */
export function formatTrainableParameters(s: TrainableSummary): string {
  return `trainable params: ${s.trainable.toLocaleString('en-US')} || all params: ${s.total.toLocaleString('en-US')} || trainable%: ${s.percent.toFixed(4)}`;
}
