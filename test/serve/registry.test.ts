/**
 * The adapter registry: validation against the base at load, LRU eviction under a memory
 * budget (never of an adapter in use), memory holders (prepared swap forms, unfused
 * tables) counted in the same budget, reload from disk on demand, refusal of a changed
 * file, and unload while in use.
 */
import * as path from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { saveAdapter } from '../../src/merge/adapter.js';
import { newAdapter } from '../../src/merge/types.js';
import { fingerprintWeights } from '../../src/merge/fingerprint.js';
import type { HostTensor } from '../../src/tensor.js';
import { AdapterRegistry, adapterBytes, type AdapterEntry } from '../../src/serve/registry.js';
import { randomSparseAdapter, rng, tempDir, writeAdapters } from './helpers.js';

/** Small random base weights. */
function tinyWeights(): Map<string, HostTensor<'f32'>> {
  const r = rng(9);
  const w = new Map<string, HostTensor<'f32'>>();
  for (const [name, shape] of [['l0.weight', [16, 32]], ['l1.weight', [32, 16]], ['norm.weight', [16]]] as const) {
    const n = shape.reduce((a, b) => a * b, 1);
    w.set(name, { dtype: 'f32', shape: [...shape], data: Float32Array.from({ length: n }, () => r() - 0.5) });
  }
  return w;
}

describe('AdapterRegistry', () => {
  const weights = tinyWeights();
  const shapes = new Map([...weights].map(([n, t]) => [n, t.shape]));
  const fingerprint = fingerprintWeights(weights);
  const make = (seed: number) => randomSparseAdapter(weights, { seed, density: 0.25, scale: 0.1 });
  let dir: string;
  let size: number;

  beforeAll(async () => {
    dir = await tempDir('sparsetune-registry-');
    const ads = { a: make(1), b: make(2), c: make(3) };
    await writeAdapters(dir, ads);
    size = Math.max(...Object.values(ads).map(adapterBytes));
  });

  it('keeps resident adapters under the budget, evicting the least recently used that nobody holds', async () => {
    const { registry, skipped } = await AdapterRegistry.open({ dir, shapes, fingerprint, memoryBudgetBytes: Math.floor(size * 2.5) });
    expect(skipped).toEqual([]);
    expect(registry.list().map((e) => [e.id, e.resident])).toEqual([['a', false], ['b', true], ['c', true]]);
    // Asking for a reads it from disk again; b is now the least recently used.
    const [a] = await registry.acquire(['a']);
    expect(a.resident).toBe(true);
    expect(registry.get('b')!.resident).toBe(false);
    expect(a.payload().additive.size).toBeGreaterThan(0);
    // Held adapters are never evicted, even past the budget.
    const held = await registry.acquire(['b', 'c']);
    expect(registry.list().every((e) => e.resident)).toBe(true);
    registry.release(held);
    registry.release([a]);
    expect(registry.residentBytes).toBeLessThanOrEqual(size * 2.5);
  });

  it('counts what holders keep per adapter in the budget, tells them of loads and evictions, and never evicts what they use', async () => {
    const { registry } = await AdapterRegistry.open({ dir, shapes, fingerprint, memoryBudgetBytes: Math.floor(size * 4.5) });
    expect(registry.list().every((e) => e.resident)).toBe(true); // 3 payloads fit
    // A holder keeps one payload's worth per resident adapter (like a prepared swap form).
    const kept = new Map<string, number>();
    const events: string[] = [];
    const busy = new Set<string>();
    registry.addHolder({
      bytes: (e: AdapterEntry) => kept.get(e.id) ?? 0,
      busy: (e) => busy.has(e.id),
      resident: (e) => {
        events.push(`resident ${e.id}`);
        kept.set(e.id, e.bytes);
      },
      drop: (e) => {
        events.push(`drop ${e.id}`);
        kept.delete(e.id);
      },
    });
    // Told about the resident ones, most recently used first; past 4.5 payloads' worth the
    // least recently used (a) goes before the holder works on it.
    expect(events).toEqual(['resident c', 'resident b', 'drop a']);
    expect(registry.get('a')!.resident).toBe(false);
    expect(registry.residentBytes).toBe(registry.payloadBytes + kept.get('b')! + kept.get('c')!);
    expect(registry.residentBytes).toBeLessThanOrEqual(size * 4.5);
    // Reading a back tells the holder again; a holder's busy adapter (b) is skipped, so c goes.
    busy.add('b');
    events.length = 0;
    const [a] = await registry.acquire(['a']);
    expect(events).toEqual(['resident a', 'drop c']);
    expect(registry.get('b')!.resident).toBe(true);
    registry.release([a]);
    // Unloading an adapter nobody pins drops what the holder keeps for it.
    events.length = 0;
    registry.unload('a');
    expect(events).toEqual(['drop a']);
    expect(kept.has('a')).toBe(false);
  });

  it('refuses adapters of another base, unknown ids, escapes and duplicates', async () => {
    const other = tinyWeights();
    other.get('l0.weight')!.data[0] += 1;
    const foreign = randomSparseAdapter(other, { seed: 4, density: 0.1, scale: 0.1 });
    await saveAdapter(path.join(dir, 'sub', 'foreign'), foreign);
    const { registry } = await AdapterRegistry.open({ dir, shapes, fingerprint, memoryBudgetBytes: 1 << 20 });
    await expect(registry.load('foreign', 'sub/foreign')).rejects.toMatchObject({ code: 'FINGERPRINT_MISMATCH' });
    await expect(registry.load('x', '../x')).rejects.toMatchObject({ code: 'FORBIDDEN' });
    await expect(registry.load('a')).rejects.toMatchObject({ code: 'CONFLICT' });
    await expect(registry.load('base')).rejects.toMatchObject({ code: 'BAD_ARGUMENT' });
    await expect(registry.acquire(['a', 'zzz'])).rejects.toMatchObject({ code: 'NOT_FOUND' });
    expect(registry.get('a')!.pins).toBe(0); // a failed acquire holds nothing
  });

  it('refuses an adapter that only runs unfused (e.g. MoSA) instead of silently serving the base', async () => {
    const branch = newAdapter({ method: 'mosa', kind: 'lowrank', base: { model: 'tiny', fingerprint } });
    branch.extra = new Map([['mosa.layers.0.up.weight', { dtype: 'f32', shape: [2, 2], data: Float32Array.of(1, 2, 3, 4) }]]);
    await saveAdapter(path.join(dir, 'sub', 'branch'), branch);
    const { registry } = await AdapterRegistry.open({ dir, shapes, fingerprint, memoryBudgetBytes: 1 << 20 });
    await expect(registry.load('branch', 'sub/branch')).rejects.toMatchObject({ code: 'BAD_ADAPTER', message: expect.stringMatching(/separate branch/) });
  });

  it('keeps an unloaded adapter for the requests holding it, and notices a changed file on reload', async () => {
    const { registry } = await AdapterRegistry.open({ dir, shapes, fingerprint, memoryBudgetBytes: 1 << 20 });
    const [b] = await registry.acquire(['b']);
    registry.unload('b');
    expect(registry.get('b')).toBeUndefined();
    expect(b.payload().additive.size).toBeGreaterThan(0);
    registry.release([b]);
    expect(b.resident).toBe(false);

    const tight = (await AdapterRegistry.open({ dir, shapes, fingerprint, memoryBudgetBytes: 1 })).registry;
    expect(tight.list().map((e) => e.resident)).toEqual([false, false, true]); // only the newest stays
    await saveAdapter(path.join(dir, 'a'), make(99)); // another adapter under the same name
    await expect(tight.acquire(['a'])).rejects.toMatchObject({ code: 'CONFLICT' });
    expect(tight.get('a')!.pins).toBe(0);
  });
});
