/** Registry entry for LoRA (see src/train/registry.ts). */
import type { CausalLM } from '../models/causal-lm.js';
import { LoraMethod, loraConfigSchema } from './lora.js';
import type { MethodRecipe } from '../train/recipe.js';

/**
 * The reference recipe: microsoft/LoRA's GPT-2 E2E script (examples/NLG/README.md: AdamW,
 * weight decay 0.01, beta2 0.999, linear decay after 500 warmup steps of ~26k, no clipping,
 * batch 8), with the learning rate and length scaled to tiny models.
 */
export const recipe: MethodRecipe = {
  source: 'LoRA (Hu et al. 2021), microsoft/LoRA examples/NLG/README.md (gpt2_ft.py: AdamW lr 2e-4, wd 0.01, linear, warmup 500, clip 0, batch 8); r 8 / alpha 8 from PEFT LoraConfig',
  lr: 1e-2,
  steps: 200,
  batchSize: 8,
  optimizer: { type: 'adamw', beta1: 0.9, beta2: 0.999, weightDecay: 0.01 },
  schedule: { type: 'linear', warmupSteps: 4, minRatio: 0 },
  clipNorm: 0,
  notes: 'lr 2e-4 is for GPT-2 Medium over ~26k steps; on stories260K and tinystories-656K over 100-200 steps the held-out loss is best at 1e-2 to 3e-2 (lr grid in bench/outcomes/s2ft.ts), so 50x; warmup kept at ~2% of the steps',
};

export const configSchema = loraConfigSchema;
export const summary = 'LoRA baseline: low-rank pairs on target linears (PEFT-compatible naming and scaling)';
export function createMethod(model: CausalLM, config: unknown): LoraMethod {
  return new LoraMethod(model, config as never);
}
