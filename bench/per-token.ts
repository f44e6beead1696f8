/**
 * Per-token speed of a base model against its pruned export (PAT), shared by the methods
 * benchmark and bench/outcomes/pat.ts: prefill and decode wall times at batch 1, the two
 * models measured in alternating rounds after a warm-up each (so drift in machine load hits
 * both alike), medians over rounds.
 */
import { PatMethod } from '../src/adapters/pat.js';
import type { Runtime } from '../src/engine/runtime.js';
import { parseModelConfig } from '../src/io/config.js';
import { exportPrunedModel } from '../src/merge/prune-export.js';
import { CausalLM } from '../src/models/causal-lm.js';
import { ANSI_C_LCG, lcg32Uint32 } from '../src/util/random.js';

export interface PerToken {
  params: number;
  hidden: number;
  prefillTokS: number;
  decodeTokS: number;
  evalLoss?: number;
}

export interface PairedPerToken {
  base: PerToken;
  pruned: PerToken;
  /** Medians over rounds of the per-round ratio pruned/base tokens/s (rounds run back to back, so drift in machine load cancels). */
  prefillSpeedup: number;
  decodeSpeedup: number;
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

/** Wall times of one prefill (`prompt` tokens, batch 1) and of `decode` single-token steps after it. */
export async function timeGeneration(model: CausalLM, prompt: number, decode: number): Promise<{ prefillMs: number; decodeMs: number }> {
  const ids = Array.from({ length: prompt }, (_, i) => 1 + ((i * 7) % (model.vocabSize - 1)));
  const att = ids.map(() => 1);
  let t0 = performance.now();
  let { cache } = await model.step([ids], [att], model.emptyCache(1));
  const prefillMs = performance.now() - t0;
  t0 = performance.now();
  for (let s = 0; s < decode; s++) {
    att.push(1);
    cache = (await model.step([[5]], [att], cache)).cache;
  }
  return { prefillMs, decodeMs: performance.now() - t0 };
}

/** Base vs pruned model per token, measured in alternating rounds after one warm-up each. */
export async function comparePerToken(base: CausalLM, pruned: CausalLM, prompt: number, decode: number, rounds: number): Promise<PairedPerToken> {
  await timeGeneration(base, prompt, 2);
  await timeGeneration(pruned, prompt, 2);
  const b: { prefillMs: number; decodeMs: number }[] = [];
  const p: { prefillMs: number; decodeMs: number }[] = [];
  for (let r = 0; r < rounds; r++) {
    b.push(await timeGeneration(base, prompt, decode));
    p.push(await timeGeneration(pruned, prompt, decode));
  }
  const summary = (model: CausalLM, xs: typeof b): PerToken => ({
    params: [...model.weights.values()].reduce((n, w) => n + w.data.length, 0),
    hidden: model.config.hiddenSize,
    prefillTokS: prompt / (median(xs.map((x) => x.prefillMs)) / 1000),
    decodeTokS: decode / (median(xs.map((x) => x.decodeMs)) / 1000),
  });
  return {
    base: summary(base, b),
    pruned: summary(pruned, p),
    prefillSpeedup: median(b.map((x, i) => x.prefillMs / p[i].prefillMs)),
    decodeSpeedup: median(b.map((x, i) => x.decodeMs / p[i].decodeMs)),
  };
}

export function prunedModel(base: CausalLM, pat: PatMethod, runtime: Runtime): CausalLM {
  const { configJson, weights } = exportPrunedModel(base, pat.export(base));
  return new CausalLM(parseModelConfig(configJson, 'pruned export'), weights, base.tokenizer, base.generation, 'pat-pruned', runtime);
}


/**
 * PAT on `model` with a fixed, seeded mask keeping 75% of the hidden channels and nothing
 * trained: its export has the pruned shapes, which is all per-token speed depends on.
 */
export function fixedMaskPat(model: CausalLM): PatMethod {
  const pat = new PatMethod(model, { keepRatio: 0.75, hsmRank: 8, r: 4 });
  const next = lcg32Uint32(12345, ANSI_C_LCG);
  const order = Array.from({ length: pat.hidden }, (_, i) => i);
  for (let i = order.length - 1; i > 0; i--) {
    const j = next() % (i + 1);
    [order[i], order[j]] = [order[j], order[i]];
  }
  pat.mask.data.fill(-1);
  for (const ch of order.slice(0, pat.dKeep)) pat.mask.data[ch] = 1;
  return pat;
}
