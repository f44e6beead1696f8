/** End to end on the bundled stories260K weights: file round trips, fuse, compose, exact unfuse. */
import { promises as fsp } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { describe, expect, it } from 'vitest';
import { readSafetensors } from '../../src/io/safetensors.js';
import { loadAdapter, newAdapter, saveAdapter, type Adapter } from '../../src/merge/adapter.js';
import { WeightPatcher } from '../../src/merge/apply.js';
import { packBits } from '../../src/merge/bits.js';
import { composeAdapters } from '../../src/merge/compose.js';
import { fingerprintWeights } from '../../src/merge/fingerprint.js';
import { exportPeft, importPeft } from '../../src/merge/peft.js';
import type { HostTensor } from '../../src/tensor.js';
import { cloneWeights, firstDifference, rng } from './helpers.js';

const MODEL = path.resolve('models/stories260K/model.safetensors');

describe('adapters on the real stories260K weights', () => {
  it('save/load, fuse, compose and unfuse every kind with exact restore', async () => {
    const { tensors } = await readSafetensors(MODEL);
    const weights = tensors as Map<string, HostTensor<'f32'>>;
    const pristine = new Map([...cloneWeights(weights)].map(([k, t]) => [k, t.data]));
    const fp = fingerprintWeights(weights);
    const shapes = new Map([...weights].map(([k, t]) => [k, t.shape]));
    const r = rng(260);
    const layers = [...weights.keys()].filter((k) => /layers\.\d+\.(self_attn|mlp)\.\w+_proj\.weight$/.test(k));
    expect(layers.length).toBe(35);
    const base = { model: 'stories260K', fingerprint: fp };

    const ltsft = newAdapter({ method: 'lt-sft', kind: 'additive', base });
    for (const name of [...layers, 'model.embed_tokens.weight']) {
      const n = weights.get(name)!.data.length;
      const idx: number[] = [];
      for (let i = 0; i < n; i++) if (r() < 0.02) idx.push(i);
      ltsft.additive.set(name, { indices: Int32Array.from(idx), values: Float32Array.from(idx, () => (r() - 0.5) * 0.02) });
    }
    const s2ft = newAdapter({ method: 's2ft', kind: 'structured', base });
    s2ft.structured.set('model.layers.2.self_attn.o_proj.weight', { cols: Int32Array.from({ length: 8 }, (_, i) => 8 + i), values: Float32Array.from({ length: 64 * 8 }, () => r() - 0.5), shape: [64, 64] });
    s2ft.structured.set('model.layers.3.mlp.up_proj.weight', { rows: Int32Array.from([3, 50, 171]), values: Float32Array.from({ length: 3 * 64 }, () => r() - 0.5), shape: [172, 64] });
    const maskllm = newAdapter({ method: 'maskllm', kind: 'mask', base });
    const gate = 'model.layers.0.mlp.gate_proj.weight';
    const keep = Array.from({ length: 172 * 64 }, (_, i) => ((i % 4) + Math.floor(i / 64)) % 4 < 2 ? 1 : 0);
    maskllm.masks.set(gate, { bits: packBits(keep), numel: keep.length });
    const lora = newAdapter({ method: 'lora', kind: 'lowrank', base });
    for (const name of layers.filter((k) => /q_proj|v_proj/.test(k))) {
      const [out, inDim] = weights.get(name)!.shape;
      lora.lowrank.set(name, {
        A: { dtype: 'f32', shape: [4, inDim], data: Float32Array.from({ length: 4 * inDim }, () => (r() - 0.5) * 0.1) },
        B: { dtype: 'f32', shape: [out, 4], data: Float32Array.from({ length: out * 4 }, () => (r() - 0.5) * 0.1) },
        scale: 2,
      });
    }

    const dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'sparsetune-real-'));
    const loaded: Adapter[] = [];
    try {
      for (const a of [ltsft, s2ft, maskllm]) {
        await saveAdapter(path.join(dir, a.meta.method), a);
        const back = await loadAdapter(path.join(dir, a.meta.method), { shapes });
        expect(back).toEqual(a);
        loaded.push(back);
      }
      await exportPeft(lora, path.join(dir, 'peft'));
      const imported = await importPeft(path.join(dir, 'peft'));
      expect(imported.lowrank).toEqual(lora.lowrank);
      loaded.push(imported);
    } finally {
      await fsp.rm(dir, { recursive: true, force: true });
    }

    const patcher = new WeightPatcher(weights);
    const handles = loaded.map((a) => patcher.apply(a));
    const fusedGate = weights.get(gate)!.data;
    for (let i = 0; i < keep.length; i++) if (!keep[i]) expect(fusedGate[i]).toBe(0);
    const allFused = new Map([...weights].map(([k, t]) => [k, t.data.slice()]));

    // The composition of all four fuses to the same bits.
    const composed = composeAdapters(loaded, { shapes });
    const w2 = cloneWeights(new Map([...weights].map(([k, t]) => [k, { ...t, data: pristine.get(k)! }])));
    new WeightPatcher(w2, { fingerprint: fp }).apply(composed);
    expect(firstDifference(w2, allFused)).toBeNull();

    for (const h of [handles[2], handles[0], handles[3], handles[1]]) patcher.revert(h);
    expect(firstDifference(weights, pristine)).toBeNull();
    expect(fingerprintWeights(weights, { cache: false })).toBe(fp);
  });
});
