/**
 * In-place perturbation kernels for MeZO / Sparse-MeZO: the passes over the trainable tensors
 * that add ±eps·z, restore the start weights and apply the update, with z regenerated chunk by
 * chunk from the seed (z for tensor t, element i is z(seed, stream = t, index = i), so the chunk
 * size never changes a result).
 *
 * Reversibility. Every element is perturbed as
 *   pass +   : t1 = f(x + d)                         (f = round to float32, d = eps·z)
 *   pass −   : t2 = f(f(t1 − d) − d)                 (rebuild x, then subtract: no 2·d drift)
 *   restore  : x' = f(t2 + d)
 * x' equals x for most elements but not all: rounding t1 can drop low bits of x (always when
 * |x| << |d|), and no zero-memory scheme can undo that. Pass + still knows x and can predict
 * the later arithmetic exactly, so it lists the elements that need help in a per-sample side
 * table (sorted indices; freed logically after the sample, only its capacity persists):
 *   - Sparse-MeZO membership (|x| <= h on the step's start weights) must be readable from the
 *     current value in every later pass. An element whose intermediate value would leave
 *     [−h, h] is ambiguous (a non-member could hold the same value), so its index is listed
 *     (4 bytes; about the fraction of members within eps·|z| of h — ~3% of a N(0, 0.02) tensor
 *     at sparsity 0.8, eps 1e-3). Their restore is clamped to [−h, h] so they stay members.
 *   - With `exactRestore`, every element whose restore would not be bit-exact is listed too,
 *     with its start value (8 bytes; ~8% of perturbed elements at eps 1e-3 on N(0, 0.02)
 *     weights), making restore exact. Without it, restore is off by at most ~1.25 float32 ulp
 *     of max(|x|, |d|) for ~5–10% of perturbed elements (measured in the tests), and replay
 *     stays bit-exact anyway because it repeats the same passes.
 */
import { fillNormal, type TrainableTensor } from './rng.js';

/** Listed elements of one sample, sorted by (tensor, element) because pass + runs in order. */
class SideTable {
  indices = new Uint32Array(0);
  /** Start values of the listed elements; only kept with `exactRestore`. */
  values: Float32Array | null;
  length = 0;
  readonly starts: Int32Array;

  constructor(tensorCount: number, keepValues: boolean) {
    this.starts = new Int32Array(tensorCount + 1);
    this.values = keepValues ? new Float32Array(0) : null;
  }

  reset(): void {
    this.length = 0;
    this.starts.fill(0);
  }

  get byteLength(): number {
    return this.indices.byteLength + (this.values?.byteLength ?? 0);
  }

  push(index: number, value: number): void {
    if (this.length === this.indices.length) {
      const capacity = Math.max(1024, this.indices.length * 2);
      const indices = new Uint32Array(capacity);
      indices.set(this.indices);
      this.indices = indices;
      if (this.values !== null) {
        const values = new Float32Array(capacity);
        values.set(this.values);
        this.values = values;
      }
    }
    this.indices[this.length] = index;
    if (this.values !== null) this.values[this.length] = value;
    this.length++;
  }
}

/**
 * A listed member restored without its stored value can round to just past the threshold;
 * pulling it back to ±h keeps it a member (a change within the restore's rounding error).
 */
function clampMagnitude(v: number, h: number): number {
  return v > h ? h : v < -h ? -h : v;
}

/** The fixed parts of a run that every pass needs. */
export interface PerturbSetup {
  tensors: readonly TrainableTensor[];
  /** Per-tensor Sparse-MeZO thresholds (members: |x| <= h); null trains every element. */
  thresholds: Float64Array | null;
  eps: number;
  chunk: number;
  exactRestore: boolean;
}

/** Which perturbed state the weights are in when a restore is asked for. */
export type PerturbedState = 'plus' | 'minus';

/** Runs the passes of one MeZO sample and the update, in place, with chunk-sized scratch only. */
export class PerturbationKernel {
  private readonly setup: PerturbSetup;
  private readonly z: Float32Array;
  private readonly acc: Float64Array;
  private readonly side: SideTable;
  private peakSide = 0;

  constructor(setup: PerturbSetup) {
    this.setup = setup;
    this.z = new Float32Array(setup.chunk);
    this.acc = new Float64Array(setup.chunk);
    this.side = new SideTable(setup.tensors.length, setup.exactRestore);
  }

  /** Largest number of side-table entries any sample needed so far. */
  get peakSideEntries(): number {
    return this.peakSide;
  }

  /** Bytes held by the side table now (its capacity; it only grows). */
  get sideTableBytes(): number {
    return this.side.byteLength;
  }

  private threshold(t: number): number {
    return this.setup.thresholds === null ? Infinity : this.setup.thresholds[t];
  }

  private zChunk(length: number): Float32Array {
    return length === this.z.length ? this.z : this.z.subarray(0, length);
  }

  /** Pass +: x ← x + eps·z(seed) on members; records the side table for this sample. */
  plus(seed: number): void {
    const { tensors, eps, chunk, exactRestore } = this.setup;
    const tracked = this.setup.thresholds !== null || exactRestore;
    const side = this.side;
    side.reset();
    for (let t = 0; t < tensors.length; t++) {
      const data = tensors[t].data;
      const h = this.threshold(t);
      side.starts[t] = side.length;
      for (let off = 0; off < data.length; off += chunk) {
        const z = this.zChunk(Math.min(chunk, data.length - off));
        fillNormal(z, seed, t, off);
        if (!tracked) {
          for (let j = 0; j < z.length; j++) data[off + j] += eps * z[j];
          continue;
        }
        for (let j = 0; j < z.length; j++) {
          const i = off + j;
          const x = data[i];
          if (!(Math.abs(x) <= h)) continue;
          const d = eps * z[j];
          const t1 = Math.fround(x + d);
          // Predict what the later passes will compute from the current value alone.
          const back = Math.fround(t1 - d);
          const t2 = Math.fround(back - d);
          const restored = Math.fround(t2 + d);
          const ambiguous = Math.abs(t1) > h || Math.abs(back) > h || Math.abs(t2) > h || Math.abs(restored) > h;
          const inexact = exactRestore && (restored !== x || back !== x || (x === 0 && 1 / x < 0));
          if (ambiguous || inexact) side.push(i, x);
          data[i] = t1;
        }
      }
    }
    side.starts[tensors.length] = side.length;
    this.peakSide = Math.max(this.peakSide, side.length);
  }

  /** Pass −: from the + state to x − eps·z. */
  minus(seed: number): void {
    this.sweep(seed, 'minus');
  }

  /** Back to the start weights from the + or − state (exact with `exactRestore`). */
  restore(seed: number, from: PerturbedState): void {
    this.sweep(seed, from === 'plus' ? 'restorePlus' : 'restoreMinus');
  }

  private sweep(seed: number, mode: 'minus' | 'restorePlus' | 'restoreMinus'): void {
    const { tensors, eps, chunk } = this.setup;
    const { indices, values, starts } = this.side;
    for (let t = 0; t < tensors.length; t++) {
      const data = tensors[t].data;
      const h = this.threshold(t);
      let p = starts[t];
      const end = starts[t + 1];
      let nextSide = p < end ? indices[p] : -1;
      for (let off = 0; off < data.length; off += chunk) {
        const z = this.zChunk(Math.min(chunk, data.length - off));
        fillNormal(z, seed, t, off);
        for (let j = 0; j < z.length; j++) {
          const i = off + j;
          const d = eps * z[j];
          const cur = data[i];
          if (i === nextSide) {
            // A listed element is a member whatever its current value says.
            const listed = p++;
            nextSide = p < end ? indices[p] : -1;
            if (values !== null) data[i] = mode === 'minus' ? values[listed] - d : values[listed];
            else if (mode === 'minus') data[i] = Math.fround(cur - d) - d;
            else data[i] = clampMagnitude(Math.fround(mode === 'restoreMinus' ? cur + d : cur - d), h);
            continue;
          }
          if (!(Math.abs(cur) <= h)) continue;
          if (mode === 'minus') data[i] = Math.fround(cur - d) - d;
          else if (mode === 'restoreMinus') data[i] = cur + d;
          else data[i] = cur - d;
        }
      }
    }
  }

  /**
   * Restores the last sample (weights in its − state) and applies the step's update in the same
   * pass: x ← x − lr·(mean_k(g_k·z_k) + wd·x) on members.
   */
  restoreAndUpdate(seeds: readonly number[], grads: readonly number[], lr: number, weightDecay: number): void {
    this.updatePass(seeds, grads, lr, weightDecay, true);
  }

  /** The update alone, from weights that are at the step's start values (exact-restore replay). */
  update(seeds: readonly number[], grads: readonly number[], lr: number, weightDecay: number): void {
    this.updatePass(seeds, grads, lr, weightDecay, false);
  }

  private updatePass(seeds: readonly number[], grads: readonly number[], lr: number, wd: number, restoreFirst: boolean): void {
    const { tensors, eps, chunk } = this.setup;
    const { indices, values, starts } = this.side;
    const n = seeds.length;
    const invN = 1 / n;
    for (let t = 0; t < tensors.length; t++) {
      const data = tensors[t].data;
      const h = this.threshold(t);
      let p = restoreFirst ? starts[t] : 0;
      const end = restoreFirst ? starts[t + 1] : 0;
      let nextSide = p < end ? indices[p] : -1;
      for (let off = 0; off < data.length; off += chunk) {
        const len = Math.min(chunk, data.length - off);
        const z = this.zChunk(len);
        const acc = this.acc;
        acc.fill(0, 0, len);
        // Sum g_k·z_k in sample order; afterwards z holds the last sample's z for the restore.
        for (let k = 0; k < n; k++) {
          fillNormal(z, seeds[k], t, off);
          const g = grads[k];
          for (let j = 0; j < len; j++) acc[j] += g * z[j];
        }
        for (let j = 0; j < len; j++) {
          const i = off + j;
          const cur = data[i];
          let base: number;
          if (i === nextSide) {
            base = values === null ? clampMagnitude(Math.fround(cur + eps * z[j]), h) : values[p];
            p++;
            nextSide = p < end ? indices[p] : -1;
          } else {
            if (!(Math.abs(cur) <= h)) continue;
            base = restoreFirst ? Math.fround(cur + eps * z[j]) : cur;
          }
          data[i] = base - lr * (acc[j] * invN + wd * base);
        }
      }
    }
  }
}
