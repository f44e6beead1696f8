/**
 * Method registry: the one place mapping a `--method` name to its module. Each method
 * module exports `configSchema` (zod, with defaults) and `createMethod(model, config)`.
 * Modules load lazily so the CLI starts fast.
 */
import type { z } from 'zod';
import { SparsetuneError } from '../errors.js';
import type { CausalLM } from '../models/causal-lm.js';
import type { Method } from './method.js';
import type { MethodRecipe } from './recipe.js';

export interface MethodModule {
  configSchema: z.ZodTypeAny;
  createMethod(model: CausalLM, config: unknown): Method | Promise<Method>;
  /** One line for `--help`. */
  summary: string;
  /** The reference trainer settings (the defaults of `train --method NAME`); GENERIC_RECIPE when absent. */
  recipe?: MethodRecipe;
}

const loaders: Record<string, () => Promise<MethodModule>> = {
  lora: () => import('../adapters/lora-module.js'),
  'gs-lora': () => import('../adapters/gs-lora.js'),
  mosa: () => import('../adapters/mosa.js'),
  s2ft: () => import('../adapters/s2ft.js'),
  pat: () => import('../adapters/pat.js'),
  maskllm: () => import('../masks/maskllm.js'),
  ramt: () => import('../masks/ramt.js'),
  'lt-sft': () => import('../masks/lt-sft.js'),
  full: () => import('../adapters/full.js'),
};

export const METHOD_NAMES = Object.keys(loaders);

/** Load a method module by name; unknown names list the valid ones. */
export async function methodModule(name: string): Promise<MethodModule> {
  const load = loaders[name];
  if (!load) throw new SparsetuneError('BAD_ARGUMENT', `unknown method '${name}'; choose one of: ${[...METHOD_NAMES, 'mezo', 'sparse-mezo'].join(', ')}`);
  return load();
}
