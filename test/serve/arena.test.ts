import { describe, expect, it } from 'vitest';
import { Arena } from '../../src/serve/unfused/arena.js';
import { mulberry32 } from '../../src/util/random.js';

describe('unfused table arena', () => {
  it('never hands out overlapping blocks, reuses freed space, and keeps data when it grows', () => {
    const arena = new Arena(65536);
    const r = mulberry32(3);
    const live = new Map<number, { size: number; tag: number }>();
    for (let step = 0; step < 3000; step++) {
      if (live.size === 0 || r() < 0.55) {
        const size = 4 * (1 + Math.floor(r() * (r() < 0.05 ? 60000 : 500)));
        const off = arena.alloc(size);
        expect(off % 16).toBe(0);
        expect(off).toBeGreaterThan(0);
        arena.u32(off, size / 4).fill(step);
        live.set(off, { size, tag: step });
      } else {
        const offs = [...live.keys()];
        const off = offs[Math.floor(r() * offs.length)];
        arena.release(off);
        live.delete(off);
      }
      if (step % 100 === 0) {
        const spans = [...live].map(([o, b]) => [o, o + b.size]).sort((a, b) => a[0] - b[0]);
        for (let i = 1; i < spans.length; i++) expect(spans[i][0]).toBeGreaterThanOrEqual(spans[i - 1][1]);
        for (const [off, b] of live) expect(arena.u32(off, b.size / 4).every((v) => v === b.tag)).toBe(true);
      }
    }
    for (const off of [...live.keys()]) arena.release(off);
    expect(arena.bytesInUse).toBe(0);
    // Everything merged back: one block the size of the whole memory fits again.
    const all = arena.alloc(arena.capacity - 16);
    expect(all).toBe(16);
    expect(() => arena.release(all + 16)).toThrow(/not allocated/);
  });
});
