/**
 * Test helpers for src/merge: a seeded PRNG, small random base weights, random adapters of
 * every kind, and an independent dense reference ("oracle") of the fuse semantics.
 */
import type { HostTensor } from '../../src/tensor.js';
import { packBits, unpackBits } from '../../src/merge/bits.js';
import { newAdapter, type Adapter } from '../../src/merge/types.js';
import { mulberry32 } from '../../src/util/random.js';

/** Seeded uniforms in [0, 1) (mulberry32). */
export const rng = mulberry32;

export const randInt = (r: () => number, n: number): number => Math.floor(r() * n);

/** Values spread over many binades, so summation order would show in the rounded bits. */
export function nastyValue(r: () => number): number {
  // Values that cancel across adapters (x and -x with a small y) make float64 sums depend
  // on their order, which the canonical order must hide.
  if (r() < 0.3) return [2 ** 60, -(2 ** 60), 2 ** 40, -(2 ** 40), 1, -1][randInt(r, 6)];
  const sign = r() < 0.5 ? -1 : 1;
  return Math.fround(sign * (1 + r()) * 2 ** (randInt(r, 40) - 30));
}

export const SHAPES: Record<string, number[]> = {
  'model.layers.0.self_attn.q_proj.weight': [5, 7],
  'model.layers.0.self_attn.q_proj.bias': [5],
  'model.layers.1.self_attn.o_proj.weight': [4, 6],
  'model.embed_tokens.weight': [3, 8],
};
export const WEIGHT_NAMES = Object.keys(SHAPES).filter((n) => SHAPES[n].length === 2);

export function shapesMap(): Map<string, number[]> {
  return new Map(Object.entries(SHAPES));
}

export function randomWeights(r: () => number): Map<string, HostTensor<'f32'>> {
  const out = new Map<string, HostTensor<'f32'>>();
  for (const [name, shape] of Object.entries(SHAPES)) {
    const n = shape.reduce((a, b) => a * b, 1);
    const data = new Float32Array(n);
    for (let i = 0; i < n; i++) data[i] = (r() - 0.5) * 2;
    out.set(name, { dtype: 'f32', shape: [...shape], data });
  }
  return out;
}

export function cloneWeights(w: Map<string, HostTensor<'f32'>>): Map<string, HostTensor<'f32'>> {
  return new Map([...w].map(([k, t]) => [k, { dtype: 'f32', shape: [...t.shape], data: t.data.slice() }]));
}

function sortedSubset(r: () => number, n: number, p: number): Int32Array {
  const out: number[] = [];
  for (let i = 0; i < n; i++) if (r() < p) out.push(i);
  if (out.length === 0) out.push(randInt(r, n));
  return Int32Array.from(out);
}

function randomFloats(r: () => number, n: number, nasty = true): Float32Array {
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) out[i] = nasty ? nastyValue(r) : (r() - 0.5) * 0.5;
  return out;
}

/**
 * A random adapter mixing payload kinds, often several on the same parameter. `shapes`
 * defaults to the tiny SHAPES; `density` draws the fraction of a parameter an additive
 * delta touches (default 10-60%).
 */
export function randomAdapter(
  r: () => number,
  label: string,
  opts: { shapes?: Record<string, number[]>; density?: () => number } = {},
): Adapter {
  const shapes = opts.shapes ?? SHAPES;
  const weightNames = Object.keys(shapes).filter((n) => shapes[n].length === 2);
  const a = newAdapter({ method: label, kind: 'additive', base: { model: 'tiny', fingerprint: '' } });
  const kinds = ['additive', 'structured', 'mask', 'lowrank'] as const;
  const count = 1 + randInt(r, 3);
  for (let k = 0; k < count; k++) {
    const kind = kinds[randInt(r, kinds.length)];
    const name = weightNames[randInt(r, weightNames.length)];
    const [out, inDim] = shapes[name];
    if (kind === 'additive') {
      const indices = sortedSubset(r, out * inDim, opts.density?.() ?? 0.1 + r() * 0.5);
      a.additive.set(name, { indices, values: randomFloats(r, indices.length) });
    } else if (kind === 'structured') {
      const mode = randInt(r, 4);
      const rows = mode === 0 || mode === 2 ? sortedSubset(r, out, 0.5) : undefined;
      const cols = mode === 1 || mode === 2 ? sortedSubset(r, inDim, 0.5) : undefined;
      const n = (rows?.length ?? out) * (cols?.length ?? inDim);
      a.structured.set(name, { rows, cols, values: randomFloats(r, n), shape: [out, inDim] });
    } else if (kind === 'mask') {
      const keep = Array.from({ length: out * inDim }, () => (r() < 0.7 ? 1 : 0));
      a.masks.set(name, { bits: packBits(keep), numel: out * inDim });
    } else {
      const rank = 1 + randInt(r, 3);
      a.lowrank.set(name, {
        A: { dtype: 'f32', shape: [rank, inDim], data: randomFloats(r, rank * inDim, false) },
        B: { dtype: 'f32', shape: [out, rank], data: randomFloats(r, out * rank, false) },
        scale: [0.5, 2, 1 / 3, 16][randInt(r, 4)],
        biasDelta: shapes[name.replace(/\.weight$/, '.bias')] && r() < 0.5 ? randomFloats(r, out) : undefined,
      });
      if (a.lowrank.get(name)!.biasDelta === undefined) delete a.lowrank.get(name)!.biasDelta;
    }
  }
  return a;
}

/** Ascending-order float64 sum, starting from the first term. */
function sortedSum(xs: number[]): number {
  const s = [...xs].sort((x, y) => x - y);
  return s.slice(1).reduce((acc, v) => acc + v, s[0]);
}

/** Dense reference of one adapter: per parameter, its float32 delta per element (NaN = untouched) and cleared flags. */
export interface DenseAdapter {
  delta: Map<string, Float64Array>;
  cleared: Map<string, Uint8Array>;
}

export function denseReference(a: Adapter, shapes: Record<string, number[]> = SHAPES): DenseAdapter {
  const contrib = new Map<string, number[][]>();
  const at = (name: string): number[][] => {
    if (!contrib.has(name)) {
      const n = shapes[name].reduce((x, y) => x * y, 1);
      contrib.set(name, Array.from({ length: n }, () => []));
    }
    return contrib.get(name)!;
  };
  for (const [name, d] of a.additive) d.indices.forEach((e, k) => at(name)[e].push(d.values[k]));
  for (const [name, d] of a.structured) {
    const [out, inDim] = shapes[name];
    const rows = d.rows ? [...d.rows] : [...Array(out).keys()];
    const cols = d.cols ? [...d.cols] : [...Array(inDim).keys()];
    rows.forEach((row, ri) => cols.forEach((col, ci) => at(name)[row * inDim + col].push(d.values[ri * cols.length + ci])));
  }
  for (const [name, p] of a.lowrank) {
    const [out, inDim] = shapes[name];
    const rank = p.A.shape[0];
    for (let o = 0; o < out; o++) {
      for (let i = 0; i < inDim; i++) {
        let acc = 0;
        for (let k = 0; k < rank; k++) acc += p.B.data[o * rank + k] * p.A.data[k * inDim + i];
        at(name)[o * inDim + i].push(acc * p.scale);
      }
    }
    if (p.biasDelta) {
      const bias = name.replace(/\.weight$/, '.bias');
      p.biasDelta.forEach((b, o) => at(bias)[o].push(p.scale * b));
    }
  }
  const delta = new Map<string, Float64Array>();
  for (const [name, lists] of contrib) delta.set(name, Float64Array.from(lists, (l) => (l.length ? Math.fround(sortedSum(l)) : NaN)));
  const cleared = new Map<string, Uint8Array>();
  for (const [name, m] of a.masks) cleared.set(name, unpackBits(m.bits, m.numel).map((b) => 1 - b));
  return { delta, cleared };
}

/** Expected weights after applying `set` (dense references) to `base`. */
export function expectedWeights(base: Map<string, HostTensor<'f32'>>, set: DenseAdapter[]): Map<string, Float32Array> {
  const out = new Map<string, Float32Array>();
  for (const [name, t] of base) {
    const w = t.data.slice();
    for (let e = 0; e < w.length; e++) {
      const ds: number[] = [];
      let masked = false;
      for (const ad of set) {
        const d = ad.delta.get(name)?.[e];
        if (d !== undefined && !Number.isNaN(d)) ds.push(d);
        if (ad.cleared.get(name)?.[e]) masked = true;
      }
      if (masked) w[e] = 0;
      else if (ds.length > 0) {
        const D = Math.fround(sortedSum(ds));
        if (D !== 0) w[e] = t.data[e] + D;
      }
    }
    out.set(name, w);
  }
  return out;
}

/** Bit patterns, so -0/+0 and every last ulp count. */
export function bits(a: Float32Array): Uint32Array {
  return new Uint32Array(a.buffer, a.byteOffset, a.length);
}

/** Name of the first parameter whose bits differ, or null. */
export function firstDifference(actual: Map<string, HostTensor<'f32'>>, expected: Map<string, Float32Array>): string | null {
  for (const [name, exp] of expected) {
    const act = actual.get(name)!.data;
    const a = bits(act);
    const b = bits(exp);
    for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return `${name}[${i}]: ${act[i]} != ${exp[i]}`;
  }
  return null;
}
