/** Registry entry for LoRA (see src/train/registry.ts). */
import type { CausalLM } from '../models/causal-lm.js';
import { LoraMethod, loraConfigSchema } from './lora.js';

export const configSchema = loraConfigSchema;
export const summary = 'LoRA baseline: low-rank pairs on target linears (PEFT-compatible naming and scaling)';
export function createMethod(model: CausalLM, config: unknown): LoraMethod {
  return new LoraMethod(model, config as never);
}
