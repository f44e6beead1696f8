/** Attention masks and position ids, computed in JS and fed to the graphs. */
import type { HostTensor } from '../tensor.js';

export const MASKED = -1e9;

const causalCache = new Map<number, HostTensor<'f32'>>();

/** [1, 1, T, T] additive causal mask (training graphs: right padding needs nothing else). */
export function causalMask(T: number): HostTensor<'f32'> {
  let m = causalCache.get(T);
  if (!m) {
    const data = new Float32Array(T * T);
    for (let i = 0; i < T; i++) for (let j = i + 1; j < T; j++) data[i * T + j] = MASKED;
    m = { dtype: 'f32', shape: [1, 1, T, T], data };
    causalCache.set(T, m);
  }
  return m;
}

/**
 * [B, 1, S, total] additive mask for S new tokens after `past` cached ones: row b, query i
 * may attend key j when attention[b][j] is 1 and j <= past + i.
 */
export function stepMask(attention: readonly (readonly number[])[], past: number, S: number): HostTensor<'f32'> {
  const B = attention.length;
  const total = past + S;
  const data = new Float32Array(B * S * total).fill(MASKED);
  for (let b = 0; b < B; b++) {
    for (let i = 0; i < S; i++) {
      const row = (b * S + i) * total;
      for (let j = 0; j <= past + i; j++) if (attention[b][j]) data[row + j] = 0;
    }
  }
  return { dtype: 'f32', shape: [B, 1, S, total], data };
}

/** Position ids for the last S of `total` tokens: cumsum(mask) - 1, clamped at 0 (left padding). */
export function stepPositions(attention: readonly (readonly number[])[], S: number): HostTensor<'i64'> {
  const B = attention.length;
  const data = new BigInt64Array(B * S);
  for (let b = 0; b < B; b++) {
    const row = attention[b];
    let c = 0;
    const total = row.length;
    for (let j = 0; j < total; j++) {
      c += row[j] ? 1 : 0;
      const k = j - (total - S);
      if (k >= 0) data[b * S + k] = BigInt(Math.max(0, c - 1));
    }
  }
  return { dtype: 'i64', shape: [B, S], data };
}

/** Position ids 0..T-1 for every row (training). */
export function rangePositions(B: number, T: number): HostTensor<'i64'> {
  const data = new BigInt64Array(B * T);
  for (let b = 0; b < B; b++) for (let t = 0; t < T; t++) data[b * T + t] = BigInt(t);
  return { dtype: 'i64', shape: [B, T], data };
}
