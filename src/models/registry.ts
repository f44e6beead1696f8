/** One place mapping a config's architecture to its graph builder. */
import type { ModelConfig } from '../io/config.js';
import type { Architecture } from './arch.js';
import { gpt2 } from './gpt2.js';
import { llama } from './llama.js';

export function architectureOf(cfg: ModelConfig): Architecture {
  switch (cfg.arch) {
    case 'llama':
      return llama as Architecture;
    case 'gpt2':
      return gpt2 as Architecture;
  }
}
