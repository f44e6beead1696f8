/**
 * Feeds for the seeded noise inputs of a training graph (src/engine/noise.ts): uniforms in
 * [0, 1), one fresh tensor per noise input, drawn from a seed that mixes the run's seed, the
 * global step, the micro-batch and the input's name. A resumed run therefore draws exactly
 * the dropout masks the uninterrupted run would have drawn.
 */
import { SparsetuneError } from '../errors.js';
import { isNoiseInput } from '../engine/noise.js';
import type { HostTensor } from '../tensor.js';
import { fillUniform24, fnv1a32 } from '../util/random.js';

/** A graph input as a compiled graph lists it. */
export interface InputSpec {
  name: string;
  shape: (number | string)[];
}

/** The noise inputs among a compiled graph's inputs (empty for deterministic graphs). */
export function noiseSpecs(inputs: readonly InputSpec[]): InputSpec[] {
  return inputs.filter((s) => isNoiseInput(s.name));
}

/** The seed of the noise of one micro-batch (`micro`, 0-based) of global step `step` (0-based). */
export function noiseSeed(runSeed: number, step: number, micro: number): number {
  let h = Math.imul((runSeed ^ 0x27d4eb2f) >>> 0, 0x165667b1) >>> 0;
  h = Math.imul(h ^ (step + 0x61c88647), 0x85ebca6b) >>> 0;
  h = Math.imul(h ^ (h >>> 13) ^ (micro + 0x3c6ef372), 0xc2b2ae35) >>> 0;
  return (h ^ (h >>> 16)) >>> 0;
}

/** Sizes of the symbolic dims, read from the feeds of the non-noise inputs that use them. */
function symbolSizes(inputs: readonly InputSpec[], feeds: Record<string, HostTensor>): Map<string, number> {
  const sizes = new Map<string, number>();
  for (const spec of inputs) {
    const t = feeds[spec.name];
    if (!t || isNoiseInput(spec.name)) continue;
    spec.shape.forEach((d, axis) => {
      if (typeof d === 'string' && !d.includes('*') && !d.includes('+') && t.shape[axis] !== undefined) sizes.set(d, t.shape[axis]);
    });
  }
  return sizes;
}

function resolveDim(d: number | string, sizes: Map<string, number>, input: string): number {
  if (typeof d === 'number') return d;
  if (d.includes('+')) throw new SparsetuneError('BAD_GRAPH', `noise input '${input}': dim '${d}' is a sum; noise needs dims that are sizes or products of sizes`);
  return d.split('*').reduce((n, sym) => {
    const v = sizes.get(sym);
    if (v === undefined) throw new SparsetuneError('BAD_GRAPH', `noise input '${input}': no fed input has the symbolic dim '${sym}', so its size is unknown`);
    return n * v;
  }, 1);
}

/**
 * Uniform noise for every spec in `specs`, shaped from `feeds` (the step's other feeds).
 * Each input's stream is seeded by `seed` mixed with a hash of its name.
 */
export function noiseFeeds(specs: readonly InputSpec[], allInputs: readonly InputSpec[], feeds: Record<string, HostTensor>, seed: number): Record<string, HostTensor> {
  if (specs.length === 0) return {};
  const sizes = symbolSizes(allInputs, feeds);
  const out: Record<string, HostTensor> = {};
  for (const spec of specs) {
    const shape = spec.shape.map((d) => resolveDim(d, sizes, spec.name));
    const n = shape.reduce((a, b) => a * b, 1);
    out[spec.name] = { dtype: 'f32', shape, data: fillUniform24(new Float32Array(n), (seed ^ fnv1a32(spec.name)) >>> 0) };
  }
  return out;
}
