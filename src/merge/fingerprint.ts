/**
 * Base-model fingerprints: a sha256 over the sorted parameter names, dtypes, shapes and raw
 * bytes, so an adapter can refuse to be applied to weights it was not trained on.
 */
import { createHash } from 'node:crypto';
import { SparsetuneError } from '../errors.js';
import type { HostTensor } from '../tensor.js';
import type { Adapter } from './types.js';

const cache = new WeakMap<Map<string, HostTensor>, string>();

/** sha256 of a tensor map (names sorted; each entry framed by name, dtype, shape, byte count). */
export function hashTensors(tensors: Map<string, HostTensor>): string {
  const h = createHash('sha256');
  for (const name of [...tensors.keys()].sort()) {
    const t = tensors.get(name)!;
    const bytes = new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength);
    h.update(`${name}\n${t.dtype}\n${t.shape.join(',')}\n${bytes.length}\n`);
    h.update(bytes); // the weight buffer itself, no copy
  }
  return `sha256:${h.digest('hex')}`;
}

/**
 * Fingerprint of base weights (hashes every byte, about 0.6 ms per MB). `{ cache: true }`
 * memoizes it per Map object: only for callers that know the weights will not change
 * afterwards, since in-place edits (fusing, training base weights) would not be seen.
 */
export function fingerprintWeights(weights: Map<string, HostTensor<'f32'>>, opts: { cache?: boolean } = {}): string {
  const useCache = opts.cache ?? false;
  if (useCache) {
    const hit = cache.get(weights);
    if (hit) return hit;
  }
  const fp = hashTensors(weights);
  if (useCache) cache.set(weights, fp);
  return fp;
}

/**
 * Check that `adapter` was trained on the base with `fingerprint`. An adapter with an empty
 * fingerprint (unknown origin, e.g. imported from PEFT) always passes. Returns false when the
 * fingerprints differ but `force` let it through (callers may warn); throws otherwise.
 */
export function checkFingerprint(adapter: Adapter, fingerprint: string, opts: { force?: boolean } = {}): boolean {
  const expected = adapter.meta.base.fingerprint;
  if (expected === '' || expected === fingerprint) return true;
  if (opts.force) return false;
  const model = adapter.meta.base.model ? ` "${adapter.meta.base.model}"` : '';
  throw new SparsetuneError(
    'FINGERPRINT_MISMATCH',
    `adapter "${adapter.meta.method}" was trained on base model${model} with fingerprint ${short(expected)}, ` +
      `but the loaded weights have fingerprint ${short(fingerprint)}. Load the base model the adapter was trained on, ` +
      'or pass --force (force: true) to apply it anyway (the result is likely meaningless if the weights differ).',
  );
}

function short(fp: string): string {
  return fp.length > 23 ? `${fp.slice(0, 23)}…` : fp;
}
