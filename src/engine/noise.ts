/**
 * Seeded noise as graph inputs. Instead of drawing random numbers inside onnxruntime (whose
 * generator ignores the run's seed, so runs with dropout could be neither reproduced nor
 * resumed), a stochastic graph declares a `noise:<key>` input shaped like the tensor it
 * perturbs, and whoever runs the graph feeds it uniforms in [0, 1) from a seeded generator
 * (the trainer does this with `noiseFeeds` from src/train/noise-feeds.ts, seeded by run seed,
 * step and micro-batch). The same seed then gives the same dropout masks, bit for bit.
 */
import type { Graph, Shape, Value } from './ir.js';
import { cast, less, mul } from './ops/index.js';

/** Prefix of every noise input's name. */
export const NOISE_PREFIX = 'noise:';

/** Whether a graph input is a noise input (fed with seeded uniforms). */
export function isNoiseInput(name: string): boolean {
  return name.startsWith(NOISE_PREFIX);
}

/**
 * Declare a uniform-noise input `noise:<key>` of `shape` (symbolic dims allowed; they are
 * resolved from the other feeds at run time). A key used twice in one graph (e.g. a second
 * forward pass through the same hooks) gets a suffix, so every use draws its own noise.
 */
export function noiseInput(g: Graph, key: string, shape: Shape): Value {
  const base = `${NOISE_PREFIX}${key}`;
  let name = base;
  for (let k = 1; g.inputs.some((v) => v.name === name); k++) name = `${base}#${k}`;
  return g.input(name, 'f32', shape);
}

/**
 * Inverted dropout with keep probability 1 − p whose mask comes from a seeded noise input
 * (identity when p = 0, and then no input is declared). `key` names the site, e.g.
 * `lora.model.layers.0.self_attn.q_proj`.
 */
export function seededDropout(x: Value, p: number, key: string): Value {
  if (p <= 0) return x;
  const u = noiseInput(x.graph, key, x.shape);
  const keep = cast(less(u, 1 - p), x.dtype);
  return mul(x, mul(keep, 1 / (1 - p)));
}
