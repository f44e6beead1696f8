import { describe, expect, it } from 'vitest';
import { SparsetuneError } from '../../src/errors.js';
import { checkFingerprint, fingerprintWeights, hashTensors } from '../../src/merge/fingerprint.js';
import { newAdapter } from '../../src/merge/types.js';
import type { HostTensor } from '../../src/tensor.js';
import { cloneWeights, randomWeights, rng } from './helpers.js';

describe('fingerprints', () => {
  it('depend on names, shapes and every bit, not on Map order or identity', () => {
    const w = randomWeights(rng(1));
    const fp = fingerprintWeights(w);
    expect(fp).toMatch(/^sha256:[0-9a-f]{64}$/);
    expect(fingerprintWeights(new Map([...w].reverse()))).toBe(fp);
    expect(fingerprintWeights(cloneWeights(w))).toBe(fp);

    const flipped = cloneWeights(w);
    const t = flipped.get('model.embed_tokens.weight')!;
    new Uint32Array(t.data.buffer)[5] ^= 1; // one ulp
    expect(fingerprintWeights(flipped)).not.toBe(fp);

    const renamed = new Map([...cloneWeights(w)].map(([k, v]) => [k === 'model.embed_tokens.weight' ? 'model.embed.weight' : k, v]));
    expect(fingerprintWeights(renamed)).not.toBe(fp);

    const reshaped = cloneWeights(w);
    reshaped.get('model.embed_tokens.weight')!.shape = [8, 3];
    expect(fingerprintWeights(reshaped)).not.toBe(fp);

    // Same bytes under another dtype label hash differently too.
    const asU8: Map<string, HostTensor> = new Map([['x', { dtype: 'u8', shape: [4], data: new Uint8Array(4) }]]);
    const asF32: Map<string, HostTensor> = new Map([['x', { dtype: 'f32', shape: [1], data: new Float32Array(1) }]]);
    expect(hashTensors(asU8)).not.toBe(hashTensors(asF32));
  });

  it('sees in-place edits by default, and memoizes per Map only when asked', () => {
    const w = randomWeights(rng(2));
    const fp = fingerprintWeights(w, { cache: true });
    w.get('model.embed_tokens.weight')!.data[0] += 1;
    expect(fingerprintWeights(w, { cache: true })).toBe(fp);
    expect(fingerprintWeights(w)).not.toBe(fp);
  });

  it('checkFingerprint passes unknown or equal fingerprints, and explains --force otherwise', () => {
    const a = newAdapter({ method: 'lt-sft', kind: 'additive', base: { model: 'stories260K', fingerprint: 'sha256:aa' } });
    expect(checkFingerprint(a, 'sha256:aa')).toBe(true);
    expect(checkFingerprint({ ...a, meta: { ...a.meta, base: { model: '', fingerprint: '' } } }, 'sha256:bb')).toBe(true);
    expect(checkFingerprint(a, 'sha256:bb', { force: true })).toBe(false);
    try {
      checkFingerprint(a, 'sha256:bb');
      expect.unreachable();
    } catch (err) {
      expect(err).toBeInstanceOf(SparsetuneError);
      expect((err as SparsetuneError).code).toBe('FINGERPRINT_MISMATCH');
      expect((err as Error).message).toMatch(/stories260K.*--force/);
    }
  });
});
