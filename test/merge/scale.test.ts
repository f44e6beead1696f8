import { describe, expect, it } from 'vitest';
import { WeightPatcher } from '../../src/merge/apply.js';
import { scaleAdapter } from '../../src/merge/scale.js';
import { packBits } from '../../src/merge/bits.js';
import { cloneWeights, firstDifference, randomAdapter, randomWeights, rng } from './helpers.js';

const snapshot = (w: Map<string, { data: Float32Array }>) => new Map([...w].map(([k, t]) => [k, t.data.slice()]));

describe('scaleAdapter', () => {
  it('scale 2 fuses to the same bits as the adapter applied twice, scale -1 cancels it exactly, scale 1 is the adapter itself', () => {
    const r = rng(77);
    let checked = 0;
    for (let trial = 0; trial < 300; trial++) {
      const a = randomAdapter(r, `a${trial}`);
      if (a.masks.size) continue;
      checked++;
      const base = randomWeights(r);
      const twice = cloneWeights(base);
      const p1 = new WeightPatcher(twice, { fingerprint: 'x' });
      p1.apply(a);
      p1.apply(a);
      const scaled = cloneWeights(base);
      new WeightPatcher(scaled, { fingerprint: 'x' }).apply(scaleAdapter(a, 2));
      expect(firstDifference(scaled, snapshot(twice))).toBeNull();

      const cancel = cloneWeights(base);
      const p2 = new WeightPatcher(cancel, { fingerprint: 'x' });
      p2.apply(a);
      p2.apply(scaleAdapter(a, -1));
      // Only elements the adapter touches are rewritten; they come back as w0 (+0 for a -0 base is allowed by p + 0).
      for (const [name, t] of cancel) {
        const w0 = base.get(name)!.data;
        for (let i = 0; i < w0.length; i++) if (!(t.data[i] === w0[i])) throw new Error(`${name}[${i}]: ${t.data[i]} != ${w0[i]}`);
      }
      expect(scaleAdapter(a, 1)).toBe(a);
    }
    expect(checked).toBeGreaterThan(100);
  });

  it('never writes the input adapter, and scales low-rank pairs through their scale', () => {
    const r = rng(5);
    let a = randomAdapter(r, 'x');
    while (a.lowrank.size === 0 || a.masks.size) a = randomAdapter(r, 'x');
    const before = JSON.stringify([...a.lowrank].map(([n, p]) => [n, p.scale, [...p.A.data]]));
    const s = scaleAdapter(a, 0.25);
    for (const [n, p] of s.lowrank) expect(p.scale).toBe(a.lowrank.get(n)!.scale * 0.25);
    expect(JSON.stringify([...a.lowrank].map(([n, p]) => [n, p.scale, [...p.A.data]]))).toBe(before);
  });

  it('refuses a scale that is not a finite number, and scales other than 1 on masks', () => {
    const r = rng(9);
    const a = randomAdapter(r, 'm');
    for (const bad of [NaN, Infinity, -Infinity, '0.5' as unknown as number]) expect(() => scaleAdapter(a, bad)).toThrow(/finite number/);
    a.masks.set('model.layers.0.self_attn.q_proj.weight', { bits: packBits(new Array(35).fill(1)), numel: 35 });
    expect(() => scaleAdapter(a, 0.5)).toThrow(/masks, which cannot be scaled/);
    expect(scaleAdapter(a, 1)).toBe(a);
  });
});
