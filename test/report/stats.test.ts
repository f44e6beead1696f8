import { describe, expect, it } from 'vitest';
import { bundledModelPath } from '../../src/io/model-dir.js';
import { packBits } from '../../src/merge/bits.js';
import { newAdapter } from '../../src/merge/types.js';
import { adapterStats, lowRankNorm } from '../../src/report/adapter-stats.js';
import { countNmPatterns, nmPatterns } from '../../src/report/mask-stats.js';
import { locateParam } from '../../src/report/params.js';
import { readBaseInfo } from '../../src/report/base-info.js';
import { binSelection } from '../../src/report/adapter-charts.js';
import { lcg32, NUMERICAL_RECIPES_LCG } from '../../src/util/random.js';

const base = () => readBaseInfo(bundledModelPath());
const meta = (method: string, kind: 'additive' | 'structured' | 'mask' | 'lowrank' | 'pruned', config: Record<string, unknown> = {}) =>
  ({ method, kind, base: { model: 'test', fingerprint: '' }, config });

/** A deterministic pseudo-random f32 array. */
function values(n: number, seed: number): Float32Array {
  const rand = lcg32(seed, NUMERICAL_RECIPES_LCG);
  return Float32Array.from({ length: n }, () => rand() - 0.5);
}

describe('report statistics', () => {
  it('reads the base geometry without weights', async () => {
    const b = await base();
    expect(b.numLayers).toBe(5);
    expect(b.hiddenSize).toBe(64);
    expect(b.shapes.get('model.layers.2.mlp.down_proj.weight')).toEqual([64, 172]);
    expect(b.shapes.get('model.layers.0.self_attn.k_proj.weight')).toEqual([32, 64]);
    expect(b.layouts.get('model.layers.0.mlp.up_proj.weight')).toBe('out_in');
    expect(locateParam('model.layers.12.mlp.down_proj.weight')).toEqual({ layer: 12, module: 'down_proj' });
    expect(locateParam('transformer.h.3.attn.c_attn.bias')).toEqual({ layer: 3, module: 'c_attn' });
    expect(locateParam('lm_head.weight')).toEqual({ layer: null, module: 'lm_head' });
  });

  it('counts entries and densities of additive deltas, and rows/cols of structured ones', async () => {
    const a = newAdapter(meta('lt-sft', 'additive'));
    a.additive.set('model.layers.1.self_attn.k_proj.weight', { indices: Int32Array.from([0, 5, 2047]), values: Float32Array.from([1, -3, 0.5]) });
    a.additive.set('model.layers.0.mlp.down_proj.weight', { indices: Int32Array.from({ length: 172 }, (_, i) => i * 64), values: new Float32Array(172).fill(0.25) });
    a.structured.set('model.layers.2.self_attn.o_proj.weight', { cols: Int32Array.from([8, 9, 10, 11, 12, 13, 14, 15]), values: new Float32Array(64 * 8).fill(1), shape: [64, 64] });
    const s = adapterStats(a, await base());
    expect(s.additive.map((x) => x.name)).toEqual(['model.layers.0.mlp.down_proj.weight', 'model.layers.1.self_attn.k_proj.weight']);
    expect(s.additive[1]).toMatchObject({ layer: 1, module: 'k_proj', nnz: 3, numel: 2048, maxAbs: 3 });
    expect(s.additive[1].density).toBeCloseTo(3 / 2048, 12);
    expect(s.additive[1].meanAbs).toBeCloseTo(1.5, 6);
    expect(s.additive[0].density).toBeCloseTo(172 / (64 * 172), 12);
    expect(s.structured[0]).toMatchObject({ layer: 2, module: 'o_proj', rows: null, entries: 512, shape: [64, 64] });
    expect([...s.structured[0].cols!]).toEqual([8, 9, 10, 11, 12, 13, 14, 15]);
    expect(s.structured[0].density).toBeCloseTo(8 / 64, 12);
    expect(s.totals).toEqual({ deltaEntries: 3 + 172 + 512, deltaNumel: 2048 + 64 * 172 + 64 * 64 });

    // Without a base: counts only, and a note saying how to get densities.
    const bare = adapterStats(a);
    expect(bare.additive[1].density).toBeUndefined();
    expect(bare.totals.deltaNumel).toBeUndefined();
    expect(bare.notes.join(' ')).toMatch(/--model/);
  });

  it('counts the six 2:4 patterns group by group, in both storage layouts', () => {
    const patterns = nmPatterns(2, 4);
    expect(patterns).toEqual(['1100', '1010', '1001', '0110', '0101', '0011']);
    expect(nmPatterns(1, 3)).toEqual(['100', '010', '001']);
    // [out 4, in 8] = 8 groups; group g uses pattern g % 6, except group 7, which keeps 3.
    const out = 4;
    const inDim = 8;
    const rowView = new Uint8Array(out * inDim);
    for (let g = 0; g < 8; g++) {
      const p = g === 7 ? '1110' : patterns[g % 6];
      for (let k = 0; k < 4; k++) rowView[g * 4 + k] = Number(p[k]);
    }
    const expected = [2, 1, 1, 1, 1, 1]; // groups 0..6 use patterns 0,1,2,3,4,5,0
    const rowMajor = countNmPatterns({ bits: packBits(rowView), numel: 32 }, 2, 4, { outDim: out, inDim, layout: 'out_in' })!;
    expect(rowMajor.patterns.map((p) => p.count)).toEqual(expected);
    expect(rowMajor.other).toBe(1);
    expect(rowMajor.groups).toBe(8);
    // The same mask stored [in, out] (GPT-2 Conv1D) gives the same counts.
    const transposed = new Uint8Array(32);
    for (let o = 0; o < out; o++) for (let i = 0; i < inDim; i++) transposed[i * out + o] = rowView[o * inDim + i];
    const colMajor = countNmPatterns({ bits: packBits(transposed), numel: 32 }, 2, 4, { outDim: out, inDim, layout: 'in_out' })!;
    expect(colMajor.patterns.map((p) => p.count)).toEqual(expected);
    expect(countNmPatterns({ bits: packBits(rowView), numel: 32 }, 2, 4, { outDim: 8, inDim: 4, layout: 'in_out' })!.patterns.map((p) => p.count)).not.toEqual(expected);
    expect(countNmPatterns({ bits: packBits(rowView), numel: 32 }, 2, 3, { outDim: out, inDim, layout: 'out_in' })).toBeNull();
  });

  it('reports kept fractions of masks and N:M patterns only where they apply', async () => {
    const b = await base();
    const name = 'model.layers.0.self_attn.q_proj.weight'; // [64, 64]
    const mask = new Uint8Array(64 * 64);
    for (let i = 0; i < mask.length; i += 4) {
      mask[i] = 1;
      mask[i + ((i >> 2) % 3) + 1] = 1; // patterns 1100, 1010, 1001 in turn
    }
    const a = newAdapter(meta('maskllm', 'mask', { n: 2, m: 4 }));
    a.masks.set(name, { bits: packBits(mask), numel: mask.length });
    const s = adapterStats(a, b);
    expect(s.masks[0]).toMatchObject({ kept: 2048, numel: 4096, fractionKept: 0.5 });
    expect(s.masks[0].nm!.patterns.slice(0, 3).map((p) => p.count)).toEqual([342, 341, 341]);
    expect(s.masks[0].nm!.patterns.slice(3).every((p) => p.count === 0)).toBe(true);
    expect(s.masks[0].nm!.other).toBe(0);

    // Another method's mask that is not 2:4 gets no pattern counts.
    const other = newAdapter(meta('ramt', 'mask'));
    const half = new Uint8Array(4096);
    half.fill(1, 0, 2048);
    other.masks.set(name, { bits: packBits(half), numel: 4096 });
    const o = adapterStats(other, b);
    expect(o.masks[0].fractionKept).toBe(0.5);
    expect(o.masks[0].nm).toBeUndefined();
  });

  it('measures low-rank updates exactly and finds the untouched blocks (GS-LoRA)', async () => {
    const r = 4;
    const pair = (seed: number, zeroB = false) => ({
      A: { dtype: 'f32' as const, shape: [r, 64], data: values(r * 64, seed) },
      B: { dtype: 'f32' as const, shape: [172, r], data: zeroB ? new Float32Array(172 * r) : values(172 * r, seed + 1) },
      scale: 0.5,
    });
    const a = newAdapter(meta('gs-lora', 'lowrank', { groupBy: 'block' }));
    a.lowrank.set('model.layers.3.mlp.up_proj.weight', pair(1));
    a.lowrank.set('model.layers.0.mlp.up_proj.weight', pair(3));
    a.lowrank.set('model.layers.1.mlp.up_proj.weight', pair(5, true));
    const s = adapterStats(a, await base());

    const p = a.lowrank.get('model.layers.3.mlp.up_proj.weight')!;
    let sq = 0;
    for (let o = 0; o < 172; o++) {
      for (let i = 0; i < 64; i++) {
        let v = 0;
        for (let k = 0; k < r; k++) v += p.B.data[o * r + k] * p.A.data[k * 64 + i];
        sq += v * v;
      }
    }
    expect(lowRankNorm(p.A.data, p.B.data, r, 64, 172)).toBeCloseTo(Math.sqrt(sq), 9);
    expect(s.lowrank.map((x) => x.layer)).toEqual([0, 1, 3]);
    expect(s.lowrank[2].deltaNorm).toBeCloseTo(0.5 * Math.sqrt(sq), 9);
    expect(s.blocks.map((bl) => [bl.layer, bl.pairs, bl.alive])).toEqual([[0, 1, true], [1, 1, false], [2, 0, false], [3, 1, true], [4, 0, false]]);

    // Without a base, GS-LoRA's metadata still says how many blocks there were.
    a.meta.metrics = { totalGroups: 6, groupBy: 'block' };
    expect(adapterStats(a).blocks.length).toBe(6);
  });

  it('reports kept channels of a pruned adapter against the base width', async () => {
    const kept = Int32Array.from({ length: 48 }, (_, i) => i + Math.floor(i / 3));
    const a = newAdapter(meta('pat', 'pruned'));
    a.pruned = { keptChannels: kept, configJson: { hidden_size: 48 } };
    const s = adapterStats(a, await base());
    expect(s.pruned).toMatchObject({ kept: 48, total: 64, configHiddenSize: 48 });
    const bins = binSelection(kept, 64, 16);
    expect(bins.length).toBe(16);
    expect(bins.reduce((n, bin) => n + bin.fraction * (bin.end - bin.start), 0)).toBeCloseTo(48, 9);
    expect(binSelection(Int32Array.from([0, 3]), 4)).toEqual([
      { start: 0, end: 1, fraction: 1 },
      { start: 1, end: 2, fraction: 0 },
      { start: 2, end: 3, fraction: 0 },
      { start: 3, end: 4, fraction: 1 },
    ]);
  });
});
