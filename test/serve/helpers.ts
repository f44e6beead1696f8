/**
 * Helpers for the serving tests: random sparse additive adapters for a base model, written
 * to an adapters directory, and an independent reference (a separate CausalLM with the
 * adapters fused by WeightPatcher, run with generateText).
 */
import { mkdtemp } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { saveAdapter } from '../../src/merge/adapter.js';
import { WeightPatcher } from '../../src/merge/apply.js';
import { fingerprintWeights } from '../../src/merge/fingerprint.js';
import { newAdapter, type Adapter } from '../../src/merge/types.js';
import type { CausalLM } from '../../src/models/causal-lm.js';
import { generateText } from '../../src/models/generate.js';
import type { HostTensor } from '../../src/tensor.js';
import { mulberry32 } from '../../src/util/random.js';

/** Seeded uniforms in [0, 1) (mulberry32). */
export const rng = mulberry32;

/**
 * A sparse additive adapter touching a fraction `density` of every 2-D weight, values
 * uniform in ±scale, recorded as trained on `weights` (their fingerprint).
 */
export function randomSparseAdapter(weights: Map<string, HostTensor<'f32'>>, opts: { seed: number; density: number; scale: number; method?: string }): Adapter {
  const r = rng(opts.seed);
  const a = newAdapter({ method: opts.method ?? 'random-sparse', kind: 'additive', base: { model: 'test', fingerprint: fingerprintWeights(weights) } });
  for (const [name, t] of weights) {
    if (t.shape.length !== 2) continue;
    const n = t.data.length;
    const idx: number[] = [];
    for (let i = 0; i < n; i++) if (r() < opts.density) idx.push(i);
    if (idx.length === 0) continue;
    const values = new Float32Array(idx.length);
    for (let k = 0; k < idx.length; k++) values[k] = (r() * 2 - 1) * opts.scale;
    a.additive.set(name, { indices: Int32Array.from(idx), values });
  }
  return a;
}

/** A fresh temporary directory. */
export function tempDir(prefix: string): Promise<string> {
  return mkdtemp(path.join(tmpdir(), prefix));
}

/** Save `adapters` as subdirectories of `dir` (id = key). */
export async function writeAdapters(dir: string, adapters: Record<string, Adapter>): Promise<void> {
  for (const [id, a] of Object.entries(adapters)) await saveAdapter(path.join(dir, id), a);
}

/** Greedy text of `prompt` on `model` with `adapters` fused in (then reverted). */
export async function fusedGreedy(model: CausalLM, adapters: Adapter[], prompt: string, maxNewTokens: number): Promise<string> {
  const patcher = new WeightPatcher(model.weights);
  for (const a of adapters) patcher.apply(a);
  try {
    return (await generateText(model, prompt, { maxNewTokens, temperature: 0 })).text;
  } finally {
    patcher.revertAll();
  }
}

/** Copies of every weight buffer, to compare bits later. */
export function snapshot(weights: Map<string, HostTensor<'f32'>>): Map<string, Uint8Array> {
  return new Map([...weights].map(([n, t]) => [n, new Uint8Array(t.data.buffer.slice(t.data.byteOffset, t.data.byteOffset + t.data.byteLength))]));
}

/** Names of weights whose bytes differ from the snapshot. */
export function changedWeights(weights: Map<string, HostTensor<'f32'>>, snap: Map<string, Uint8Array>): string[] {
  const out: string[] = [];
  for (const [n, t] of weights) {
    const now = new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength);
    const before = snap.get(n)!;
    if (now.length !== before.length || !now.every((b, i) => b === before[i])) out.push(n);
  }
  return out;
}
