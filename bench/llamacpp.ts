/**
 * The llama.cpp anchor: the same weights as a CausalLM, written to an F32 GGUF file
 * (bench/gguf.ts) and run through node-llama-cpp. It is not in package.json: the npm
 * registry this project installs from lacks that package's mac/windows binaries, which
 * breaks `npm ci` for everyone; install it for a benchmark run with
 * `npm install --no-save node-llama-cpp@3` (its prebuilt linux CPU binary needs no install
 * script). Everything here degrades to a reason string when the package or its binary
 * cannot be used, so the benchmarks report a skip instead of failing.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { CausalLM } from '../src/models/causal-lm.js';
import { writeGguf } from './gguf.js';

export interface LlamaCppResult {
  threads: number;
  prefillTokS: number;
  decodeTokS: number;
  /** Largest |logit difference| between llama.cpp and sparsetune at the prompt's last position. */
  maxLogitDiff: number;
  /** Largest |logit| there (for scale). */
  maxLogit: number;
}

/** The slice of node-llama-cpp's API used here (typed locally: the package is optional). */
interface Sequence {
  controlledEvaluate(items: unknown[]): Promise<({ next: { logits?: Map<number, number> } } | undefined)[]>;
  evaluateWithoutGeneratingNewTokens(tokens: number[]): Promise<void>;
  evaluate(tokens: number[], opts: { temperature: number }): AsyncGenerator<number>;
  clearHistory(): Promise<void>;
}
interface NodeLlama {
  LlamaLogLevel: { error: unknown };
  getLlama(opts: Record<string, unknown>): Promise<{
    loadModel(opts: Record<string, unknown>): Promise<{
      createContext(opts: Record<string, unknown>): Promise<{ getSequence(): Sequence; dispose(): Promise<void> }>;
      dispose(): Promise<void>;
    }>;
  }>;
}

const PACKAGE = 'node-llama-cpp';

async function loadPackage(): Promise<NodeLlama | string> {
  try {
    return (await import(PACKAGE)) as NodeLlama;
  } catch (e) {
    return `node-llama-cpp is not installed (${(e as Error).message.split('\n')[0]}); for this benchmark run npm install --no-save node-llama-cpp@3`;
  }
}

/**
 * Measure llama.cpp on `model`'s weights: prefill of `prompt` token ids (batch 1), then
 * `decode` greedy tokens, each `rounds` times (medians), at each thread count in `threads`.
 * Returns a reason string instead when llama.cpp is unavailable.
 */
export async function measureLlamaCpp(
  model: CausalLM,
  opts: { threads: number[]; prompt: number[]; decode: number; rounds: number },
): Promise<LlamaCppResult[] | string> {
  const pkg = await loadPackage();
  if (typeof pkg === 'string') return pkg;
  if (model.config.arch !== 'llama') return `llama.cpp anchor: ${model.config.modelType} is not written to GGUF here`;
  const dir = mkdtempSync(join(tmpdir(), 'sparsetune-gguf-'));
  try {
    const file = join(dir, 'model.gguf');
    writeGguf(model, file);
    let llama;
    try {
      llama = await pkg.getLlama({ gpu: false, build: 'never', skipDownload: true, progressLogs: false, logLevel: pkg.LlamaLogLevel.error });
    } catch (e) {
      return `node-llama-cpp has no usable prebuilt binary here (${(e as Error).message.split('\n')[0]})`;
    }
    const lm = await llama.loadModel({ modelPath: file, gpuLayers: 0, useMmap: false });
    const ours = await model.logits([opts.prompt]);
    const V = model.vocabSize;
    const P = opts.prompt.length;
    const ref = ours.data.subarray((P - 1) * V, P * V);
    const out: LlamaCppResult[] = [];
    try {
      for (const threads of opts.threads) {
        // F32 KV cache (llama.cpp defaults to F16) and no flash attention: the same arithmetic as ours.
        const ctx = await lm.createContext({
          contextSize: P + opts.decode + 16,
          batchSize: P,
          threads,
          sequences: 1,
          flashAttention: false,
          experimentalKvCacheKeyType: 'F32',
          experimentalKvCacheValueType: 'F32',
        });
        try {
          const seq = ctx.getSequence();
          // Logit check at the prompt's last position.
          const items = opts.prompt.map((t, i) => (i === P - 1 ? [t, { generateNext: { logits: true } }] : t));
          const res = await seq.controlledEvaluate(items);
          const logits = res[P - 1]?.next.logits;
          let maxLogitDiff = Number.NaN;
          let maxLogit = 0;
          if (logits) {
            maxLogitDiff = 0;
            for (let i = 0; i < V; i++) {
              maxLogitDiff = Math.max(maxLogitDiff, Math.abs((logits.get(i) ?? Number.NaN) - ref[i]));
              maxLogit = Math.max(maxLogit, Math.abs(ref[i]));
            }
          }
          await seq.clearHistory();
          const tokens = opts.prompt;
          const prefill: number[] = [];
          const decode: number[] = [];
          for (let r = 0; r < opts.rounds + 1; r++) {
            let t0 = performance.now();
            await seq.evaluateWithoutGeneratingNewTokens(tokens);
            const pMs = performance.now() - t0;
            t0 = performance.now();
            let n = 0;
            for await (const _ of seq.evaluate(tokens.slice(-1), { temperature: 0 })) {
              if (++n >= opts.decode) break;
            }
            const dMs = performance.now() - t0;
            await seq.clearHistory();
            if (r === 0) continue; // warm-up
            prefill.push(P / (pMs / 1000));
            decode.push(opts.decode / (dMs / 1000));
          }
          const med = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
          out.push({ threads, prefillTokS: med(prefill), decodeTokS: med(decode), maxLogitDiff, maxLogit });
        } finally {
          await ctx.dispose();
        }
      }
    } finally {
      await lm.dispose();
    }
    return out;
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}
