/**
 * Adapters of every kind for the unfused-serving tests, built for a real model's sites:
 * sparse additive deltas (embedding included), S2FT-style structured rows and columns,
 * LoRA pairs of several ranks (with bias deltas where the model has biases), sparse masks
 * (a few percent cleared), a dense 2:4 mask, and GS-LoRA's own export (mixed ranks, whole
 * blocks zeroed by the group lasso).
 */
import { GsLoraMethod } from '../../src/adapters/gs-lora.js';
import { packBits } from '../../src/merge/bits.js';
import { fingerprintWeights } from '../../src/merge/fingerprint.js';
import { newAdapter, type Adapter } from '../../src/merge/types.js';
import type { CausalLM } from '../../src/models/causal-lm.js';
import type { LinearSite } from '../../src/models/hooks.js';
import { mulberry32 } from '../../src/util/random.js';
import { randomSparseAdapter } from './helpers.js';

const pick = (r: () => number, n: number, k: number): Int32Array => {
  const all = [...Array(n).keys()];
  for (let i = n - 1; i > 0; i--) {
    const j = Math.floor(r() * (i + 1));
    [all[i], all[j]] = [all[j], all[i]];
  }
  return Int32Array.from(all.slice(0, k).sort((a, b) => a - b));
};

const values = (r: () => number, n: number, scale: number) => Float32Array.from({ length: n }, () => (r() * 2 - 1) * scale);

/** Weight shape [rows, cols] as stored (GPT-2's Conv1D stores [in, out]). */
const stored = (s: LinearSite): [number, number] => (s.layout === 'out_in' ? [s.outFeatures, s.inFeatures] : [s.inFeatures, s.outFeatures]);

function base(model: CausalLM, method: string, kind: Adapter['meta']['kind']): Adapter {
  return newAdapter({ method, kind, base: { model: 'test', fingerprint: fingerprintWeights(model.weights) } });
}

/** Block sites (not lm_head) whose kind is in `kinds`, or every block site. */
function blockSites(model: CausalLM, kinds?: string[]): LinearSite[] {
  return model.sites().filter((s) => s.layer !== null && (!kinds || kinds.includes(s.kind)));
}

/** A sparse delta on a fraction `density` of every site weight and the token embedding. */
export function sparse(model: CausalLM, seed: number, density = 0.02, scale = 0.2): Adapter {
  const a = randomSparseAdapter(model.weights, { seed, density, scale });
  const keep = new Set([...model.sites().map((s) => s.weightName), 'model.embed_tokens.weight', 'transformer.wte.weight']);
  for (const name of [...a.additive.keys()]) if (!keep.has(name)) a.additive.delete(name);
  return a;
}

/** S2FT-like: a few output rows of some sites and a few input columns of others. */
export function structured(model: CausalLM, seed: number, scale = 0.1): Adapter {
  const r = mulberry32(seed);
  const a = base(model, 's2ft-test', 'structured');
  blockSites(model).forEach((s, i) => {
    const [rows, cols] = stored(s);
    if (i % 3 === 0) {
      const sel = pick(r, rows, Math.max(1, Math.floor(rows / 8)));
      a.structured.set(s.weightName, { rows: sel, values: values(r, sel.length * cols, scale), shape: [rows, cols] });
    } else if (i % 3 === 1) {
      const sel = pick(r, cols, Math.max(1, Math.floor(cols / 8)));
      a.structured.set(s.weightName, { cols: sel, values: values(r, rows * sel.length, scale), shape: [rows, cols] });
    }
  });
  return a;
}

/** LoRA pairs of rank `rank` on every block site (bias deltas where the site has a bias). */
export function lora(model: CausalLM, seed: number, rank: number, scale = 2, kinds?: string[]): Adapter {
  const r = mulberry32(seed);
  const a = base(model, `lora-r${rank}-test`, 'lowrank');
  for (const s of blockSites(model, kinds)) {
    // PEFT's convention in the [out, in] view; Conv1D weights hold the transpose.
    const [rows, cols] = stored(s);
    a.lowrank.set(s.weightName, {
      A: { dtype: 'f32', shape: [rank, cols], data: values(r, rank * cols, 0.3) },
      B: { dtype: 'f32', shape: [rows, rank], data: values(r, rows * rank, 0.3) },
      scale: scale / rank,
      ...(s.biasName && s.layout === 'out_in' ? { biasDelta: values(r, rows, 0.1) } : {}),
    });
  }
  return a;
}

/** A mask clearing a fraction `cleared` of some weights (the embedding included). */
export function sparseMask(model: CausalLM, seed: number, cleared = 0.03): Adapter {
  const r = mulberry32(seed);
  const a = base(model, 'mask-test', 'mask');
  const names = [...new Set(model.sites().map((s) => s.weightName))].filter((_, i) => i % 2 === 0);
  for (const name of names) {
    const n = model.weights.get(name)!.data.length;
    a.masks.set(name, { bits: packBits(Array.from({ length: n }, () => (r() < cleared ? 0 : 1))), numel: n });
  }
  return a;
}

/** A 2:4 mask on every block weight (half of each weight cleared). */
export function denseMask(model: CausalLM): Adapter {
  const a = base(model, 'nm-test', 'mask');
  for (const s of blockSites(model)) {
    const n = model.weights.get(s.weightName)!.data.length;
    a.masks.set(s.weightName, { bits: packBits(Array.from({ length: n }, (_, i) => (i % 4 < 2 ? 1 : 0))), numel: n });
  }
  return a;
}

/**
 * A GS-LoRA adapter as the method exports it: pairs on the FFN linears with ranks 8
 * (gate_proj), 16 (up_proj) and 2 (down_proj), random trained-like values, and the first
 * block's group exactly zero (so the export leaves it out, as the lasso does).
 */
export function gsLora(model: CausalLM, seed: number, scale = 0.3): Adapter {
  const m = new GsLoraMethod(model, { r: 8, rankPattern: { up_proj: 16, down_proj: 2 }, loraAlpha: 8, seed });
  const r = mulberry32(seed);
  const first = Math.min(...m.pairs.map((p) => p.site.layer!));
  for (const p of m.pairs) {
    for (const t of [p.A, p.B]) t.data.set(p.site.layer === first ? new Float32Array(t.data.length) : values(r, t.data.length, scale));
  }
  return m.export(model);
}
