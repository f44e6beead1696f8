/**
 * Helpers shared by tests in several directories: seeded random token data, bit-exact
 * comparison of float arrays, and snapshots of a model's weights to prove they did not move.
 */
import * as path from 'node:path';
import { expect } from 'vitest';
import type { TokenizedExample } from '../src/io/datasets.js';
import type { CausalLM } from '../src/models/causal-lm.js';

/**
 * `n` examples of uniformly random token ids in [lo, hi) (lo defaults to 3, past the special
 * tokens), labels = inputs. `length` is one length for all, or lengths cycled over the
 * examples. Ids are drawn from `rand` in order, so a seeded generator gives fixed data.
 */
export function randomTokenExamples(rand: () => number, n: number, opts: { length: number | readonly number[]; lo?: number; hi: number }): TokenizedExample[] {
  const lo = opts.lo ?? 3;
  const lengths = typeof opts.length === 'number' ? [opts.length] : opts.length;
  return Array.from({ length: n }, (_, i) => {
    const ids = Array.from({ length: lengths[i % lengths.length] }, () => lo + Math.floor(rand() * (opts.hi - lo)));
    return { inputIds: ids, labels: [...ids] };
  });
}

/** True when two float arrays hold the same bits (so -0 differs from 0, and equal NaNs match). */
export function sameBits(a: Float32Array, b: Float32Array): boolean {
  return Buffer.from(a.buffer, a.byteOffset, a.byteLength).equals(Buffer.from(b.buffer, b.byteOffset, b.byteLength));
}

/** Copies of every weight of `model`, to compare against later. */
export function snapshotWeights(model: CausalLM): Map<string, Float32Array> {
  return new Map([...model.weights].map(([name, t]) => [name, t.data.slice()]));
}

/** Assert that every weight of `model` has the bits it had in `before`. */
export function expectWeightsEqual(model: CausalLM, before: Map<string, Float32Array>): void {
  for (const [name, t] of model.weights) expect(sameBits(t.data, before.get(name)!), name).toBe(true);
}

/**
 * The project's `../shared` folder (models and data beside the checkout; CI puts it there
 * too). Resolved from the repository root, never from an absolute path.
 */
export const SHARED_DIR = path.resolve(import.meta.dirname, '..', '..', 'shared');

/** A pretrained checkpoint in `../shared/models` (stories260K, tinystories-656K). */
export function sharedModelDir(name: 'stories260K' | 'tinystories-656K'): string {
  return path.join(SHARED_DIR, 'models', name);
}
