/**
 * Lower-precision rows of the models benchmark (bench/models.ts): the same model stored as
 * f32, f16, int8 and int4 (`CausalLM.setWeightsDtype`), side by side in one process with
 * alternating rounds: decode tokens/s at batch 1 and 8, prefill, the weight bytes held and
 * the resident memory each copy added, and the largest logit difference against f32.
 */
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import type { CausalLM } from '../src/models/causal-lm.js';
import { DecodeSession } from '../src/models/decode.js';
import { WEIGHTS_DTYPES, type WeightsDtype } from '../src/models/low-precision.js';

setFlagsFromString('--expose-gc');
const gc = runInNewContext('gc') as () => void;
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

export interface PrecisionRow {
  dtype: WeightsDtype;
  weightBytes: number;
  /** Weight bytes read per decoded token (the embedding table counts only when tied). */
  bytesPerToken: number;
  /** Growth of the process's resident memory from before the copy was made to after its first runs (GC'd). */
  rssDeltaBytes: number;
  decode1: number;
  decode8: number;
  prefill: number;
  maxLogitErr: number;
  maxLogit: number;
}

async function decodeRate(model: CausalLM, prompts: number[][], n: number): Promise<number> {
  const s = await DecodeSession.open(model, prompts.length, { capacity: Math.max(...prompts.map((p) => p.length)) + n });
  await s.prefill(prompts);
  const t0 = performance.now();
  for (let i = 0; i < n; i++) await s.next(prompts.map((_, b) => 3 + ((i + b) % 100)));
  return (prompts.length * n) / ((performance.now() - t0) / 1000);
}

async function prefillRate(model: CausalLM, prompt: number[]): Promise<number> {
  const s = await DecodeSession.open(model, 1, { capacity: prompt.length });
  const t0 = performance.now();
  await s.prefill([prompt]);
  return prompt.length / ((performance.now() - t0) / 1000);
}

/**
 * Measure `make()`'s model in every precision. `make` must build the same weights each
 * call (a seeded random model, or a checkpoint). Rounds alternate over the precisions.
 */
export async function measurePrecisions(
  make: () => Promise<CausalLM> | CausalLM,
  opts: { rounds: number; decodeTokens: number; promptLen: number; prefillLen: number; log: (m: string) => void },
): Promise<PrecisionRow[]> {
  const models: { dtype: WeightsDtype; model: CausalLM; rss: number }[] = [];
  for (const dtype of WEIGHTS_DTYPES) {
    gc();
    const before = process.memoryUsage().rss;
    const model = await make();
    if (dtype !== 'f32') model.setWeightsDtype(dtype);
    models.push({ dtype, model, rss: before });
    await decodeRate(model, [tokens(16, model.vocabSize)], 2); // compile the decode graph
    gc();
    models.at(-1)!.rss = process.memoryUsage().rss - before;
  }
  const V = models[0].model.vocabSize;
  const probe = [tokens(64, V, 5)];
  const want = (await models[0].model.logits(probe)).data.slice();
  let maxLogit = 0;
  for (const v of want) maxLogit = Math.max(maxLogit, Math.abs(v));
  const errs = new Map<WeightsDtype, number>();
  for (const { dtype, model } of models) {
    const got = (await model.logits(probe)).data;
    let e = 0;
    for (let i = 0; i < got.length; i++) e = Math.max(e, Math.abs(got[i] - want[i]));
    errs.set(dtype, e);
  }
  const one = [tokens(opts.promptLen, V)];
  const eight = Array.from({ length: 8 }, (_, b) => tokens(opts.promptLen, V, b));
  const pre = tokens(opts.prefillLen, V, 9);
  const acc = new Map(models.map((m) => [m.dtype, { d1: [] as number[], d8: [] as number[], p: [] as number[] }]));
  for (const { model } of models) await decodeRate(model, eight, 2);
  for (let r = 0; r < opts.rounds; r++) {
    for (const { dtype, model } of models) {
      const a = acc.get(dtype)!;
      a.p.push(await prefillRate(model, pre));
      a.d1.push(await decodeRate(model, one, opts.decodeTokens));
      a.d8.push(await decodeRate(model, eight, Math.max(8, opts.decodeTokens / 4)));
    }
    opts.log(`round ${r + 1}/${opts.rounds}: ${models.map((m) => `${m.dtype} ${acc.get(m.dtype)!.d1.at(-1)!.toFixed(1)}`).join(', ')} tok/s`);
  }
  return models.map(({ dtype, model, rss }) => {
    const cfg = model.config;
    const embed = cfg.tieWordEmbeddings ? 0 : cfg.vocabSize * cfg.hiddenSize * 4;
    const a = acc.get(dtype)!;
    return {
      dtype,
      weightBytes: model.weightBytes,
      bytesPerToken: model.weightBytes - embed,
      rssDeltaBytes: rss,
      decode1: median(a.d1),
      decode8: median(a.d8),
      prefill: median(a.p),
      maxLogitErr: errs.get(dtype)!,
      maxLogit,
    };
  });
}

function tokens(n: number, vocab: number, salt = 0): number[] {
  return Array.from({ length: n }, (_, i) => 3 + ((i * 7 + salt * 13) % (vocab - 3)));
}
