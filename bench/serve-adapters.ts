/**
 * The adapter mix of the serving benchmark, in rotation: a 1% sparse delta of every 2-D
 * weight, LoRA r8 and r16 on q_proj/v_proj (PEFT's default targets for Llama), and an
 * S2FT-style structured adapter (1/16 of the rows of v_proj/up_proj and of the columns of
 * o_proj/down_proj in every layer).
 */
import { newAdapter, type Adapter } from '../src/merge/types.js';
import type { CausalLM } from '../src/models/causal-lm.js';
import { xorshift32 } from '../src/util/random.js';
import { sparseAdapter } from './sparse-adapters.js';

export type MixKind = 'sparse-1%' | 'lora-r8' | 'lora-r16' | 's2ft';
export const MIX: MixKind[] = ['sparse-1%', 'lora-r8', 'lora-r16', 's2ft'];

function values(r: () => number, n: number, scale: number): Float32Array {
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) out[i] = (r() - 0.5) * 2 * scale;
  return out;
}

function sortedPick(r: () => number, n: number, k: number): Int32Array {
  const all = Array.from({ length: n }, (_, i) => i);
  for (let i = n - 1; i > 0; i--) {
    const j = Math.floor(r() * (i + 1));
    [all[i], all[j]] = [all[j], all[i]];
  }
  return Int32Array.from(all.slice(0, k).sort((a, b) => a - b));
}

/** Adapter number `i` of the rotation (kind MIX[i % 4]). */
export function mixAdapter(model: CausalLM, i: number, fingerprint: string): { kind: MixKind; adapter: Adapter } {
  const kind = MIX[i % MIX.length];
  const r = xorshift32(1000 + i);
  if (kind === 'sparse-1%') return { kind, adapter: sparseAdapter(model.weights, 0.01, 100 + i, fingerprint) };
  const a = newAdapter({ method: kind, kind: kind === 's2ft' ? 'structured' : 'lowrank', base: { model: 'bench', fingerprint } });
  for (const s of model.sites()) {
    if (s.layer === null) continue;
    const [rows, cols] = [s.outFeatures, s.inFeatures];
    if (kind === 's2ft') {
      if (s.kind === 'v_proj' || s.kind === 'up_proj') {
        const sel = sortedPick(r, rows, Math.max(1, rows >> 4));
        a.structured.set(s.weightName, { rows: sel, values: values(r, sel.length * cols, 0.01), shape: [rows, cols] });
      } else if (s.kind === 'o_proj' || s.kind === 'down_proj') {
        const sel = sortedPick(r, cols, Math.max(1, cols >> 4));
        a.structured.set(s.weightName, { cols: sel, values: values(r, rows * sel.length, 0.01), shape: [rows, cols] });
      }
    } else if (s.kind === 'q_proj' || s.kind === 'v_proj') {
      const rank = kind === 'lora-r8' ? 8 : 16;
      a.lowrank.set(s.weightName, {
        A: { dtype: 'f32', shape: [rank, cols], data: values(r, rank * cols, 0.05) },
        B: { dtype: 'f32', shape: [rows, rank], data: values(r, rows * rank, 0.05) },
        scale: 2,
      });
    }
  }
  return { kind, adapter: a };
}
