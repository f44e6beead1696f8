/**
 * KV-cache surgery for continuous batching. A batch keeps its rows right-aligned: every
 * row's newest token sits in the last cache column, shorter rows are padded on the left
 * with attention 0 (their position ids come from the attention cumsum, so padding does not
 * shift RoPE positions). Rows join by left-padding to a common length and leave by being
 * dropped, after which columns no remaining row attends are trimmed.
 */
import type { KvCache } from '../models/causal-lm.js';
import type { HostTensor } from '../tensor.js';

/** A cache with the attention row of each of its batch rows. */
export interface RowCache {
  cache: KvCache;
  /** [B][cache.length]: 1 = a real token, 0 = padding. */
  attention: number[][];
}

/** [B, H, T, D] of a cache tensor. */
function dims(t: HostTensor<'f32'>): [number, number, number, number] {
  const [B, H, T, D] = t.shape;
  return [B, H, T, D];
}

/** Stack two row caches (a's rows first), left-padding the shorter one. */
export function concatRows(a: RowCache, b: RowCache): RowCache {
  const T = Math.max(a.cache.length, b.cache.length);
  const stack = (x: HostTensor<'f32'>, y: HostTensor<'f32'>): HostTensor<'f32'> => {
    const [Ba, H, Ta, D] = dims(x);
    const [Bb, , Tb] = dims(y);
    const out = new Float32Array((Ba + Bb) * H * T * D);
    const place = (src: Float32Array, rows: number, Tsrc: number, firstRow: number) => {
      for (let r = 0; r < rows; r++) {
        for (let h = 0; h < H; h++) {
          const from = (r * H + h) * Tsrc * D;
          const to = (((firstRow + r) * H + h) * T + (T - Tsrc)) * D;
          out.set(src.subarray(from, from + Tsrc * D), to);
        }
      }
    };
    place(x.data, Ba, Ta, 0);
    place(y.data, Bb, Tb, Ba);
    return { dtype: 'f32', shape: [Ba + Bb, H, T, D], data: out };
  };
  const pad = (rows: number[][], len: number) => rows.map((r) => [...new Array<number>(T - len).fill(0), ...r]);
  return {
    cache: {
      k: a.cache.k.map((k, l) => stack(k, b.cache.k[l])),
      v: a.cache.v.map((v, l) => stack(v, b.cache.v[l])),
      length: T,
    },
    attention: [...pad(a.attention, a.cache.length), ...pad(b.attention, b.cache.length)],
  };
}

/** Keep only rows `keep` (in that order) and drop leading columns none of them attends. */
export function selectRows(x: RowCache, keep: readonly number[]): RowCache {
  let cut = x.cache.length;
  for (const r of keep) {
    const first = x.attention[r].indexOf(1);
    cut = Math.min(cut, first < 0 ? x.cache.length : first);
  }
  if (keep.length === 0) cut = x.cache.length;
  const T = x.cache.length - cut;
  const pick = (t: HostTensor<'f32'>): HostTensor<'f32'> => {
    const [, H, Told, D] = dims(t);
    const out = new Float32Array(keep.length * H * T * D);
    keep.forEach((r, i) => {
      for (let h = 0; h < H; h++) {
        const from = ((r * H + h) * Told + cut) * D;
        out.set(t.data.subarray(from, from + T * D), (i * H + h) * T * D);
      }
    });
    return { dtype: 'f32', shape: [keep.length, H, T, D], data: out };
  };
  return {
    cache: { k: x.cache.k.map(pick), v: x.cache.v.map(pick), length: T },
    attention: keep.map((r) => x.attention[r].slice(cut)),
  };
}
