/**
 * Sparse deltas between trained and original weights, chosen so that applying them with the
 * adapter rule w = float32(w0 + d) gives the trained bits back exactly.
 */
import type { AdditiveDelta } from '../merge/types.js';

const f32 = new Float32Array(1);
const u32 = new Uint32Array(f32.buffer);

/** The float32 next to `v` towards +Infinity (dir 1) or -Infinity (dir -1). */
function nextFloat32(v: number, dir: 1 | -1): number {
  if (v === 0) return dir * 2 ** -149;
  f32[0] = v;
  // For positive floats a larger bit pattern is a larger value; for negative ones the reverse.
  u32[0] += (v > 0) === (dir > 0) ? 1 : -1;
  return f32[0];
}

/** The float32 d closest to w − w0 with float32(w0 + d) === w, or the plain rounding if none is near. */
function exactStep(w: number, w0: number): { d: number; exact: boolean } {
  const d = Math.fround(w - w0);
  if (Math.fround(w0 + d) === w) return { d, exact: true };
  // w − w0 needs more than 24 bits: a neighbour of the rounded difference usually lands on w.
  for (const dir of [1, -1] as const) {
    let c = d;
    for (let k = 0; k < 4; k++) {
      c = nextFloat32(c, dir);
      if (Math.fround(w0 + c) === w) return { d: c, exact: true };
    }
  }
  return { d, exact: false };
}

/**
 * Builds the additive delta from original to trained weights of one tensor, fed chunk by chunk
 * in order: every element whose bits differ, with a value d != 0 such that
 * float32(original + d) equals the trained value. `inexact` counts the elements where no
 * float32 d does (the difference needs more than 24 bits and no neighbour lands on the trained
 * value, e.g. a weight that changed sign or shrank across several binades); there fusing is off
 * by at most about one ulp of max(|original|, |trained|).
 */
export class AdditiveDeltaBuilder {
  private indices = new Int32Array(1024);
  private values = new Float32Array(1024);
  private length = 0;
  inexact = 0;

  /** Compare elements [start, start + original.length) of `trained` with `original`. */
  add(trained: Float32Array, original: Float32Array, start: number): void {
    const a = new Uint32Array(trained.buffer, trained.byteOffset + start * 4, original.length);
    const b = new Uint32Array(original.buffer, original.byteOffset, original.length);
    for (let j = 0; j < b.length; j++) {
      if (a[j] === b[j]) continue;
      const { d, exact } = exactStep(trained[start + j], original[j]);
      if (d === 0) continue; // +0 vs -0: nothing to add
      if (!exact) this.inexact++;
      this.push(start + j, d);
    }
  }

  private push(index: number, value: number): void {
    if (this.length === this.indices.length) {
      const indices = new Int32Array(this.length * 2);
      const values = new Float32Array(this.length * 2);
      indices.set(this.indices);
      values.set(this.values);
      this.indices = indices;
      this.values = values;
    }
    this.indices[this.length] = index;
    this.values[this.length] = value;
    this.length++;
  }

  /** The delta (own, exactly sized buffers: the adapter writer serializes whole backing stores). */
  finish(): AdditiveDelta {
    return { indices: this.indices.slice(0, this.length), values: this.values.slice(0, this.length) };
  }
}

/** The additive delta between two whole tensors (see AdditiveDeltaBuilder). */
export function additiveDelta(trained: Float32Array, original: Float32Array): { delta: AdditiveDelta; inexact: number } {
  const builder = new AdditiveDeltaBuilder();
  builder.add(trained, original, 0);
  return { delta: builder.finish(), inexact: builder.inexact };
}
