/**
 * In-place perturbation kernels for MeZO / Sparse-MeZO: the passes over the trainable tensors
 * that add ±eps·z, restore the start weights and apply the update, with z regenerated from the
 * seed (z for tensor t, element i is z(seed, stream = t, index = i), so the chunk size never
 * changes a result).
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
 *
 * Speed. Each pass first lists the chunk's members with a branch-free compare of the float
 * bits (member-scan.ts; a data-dependent branch per element mispredicts on ~20% of elements
 * at sparsity 0.8 and costs ~2 ns per element, about as much as the rest of the pass). Then it
 * walks the members only; with the hash generator each member's z is computed on its own, so
 * non-members cost only the compare. Pass + skips the exact prediction for members with
 * |x| + |d| safely below h (it cannot find anything there). With the hash generator and no
 * exactRestore, the member rules run in WebAssembly (perturb-wasm.ts; the loops here are the
 * reference, and the tests check both give the same bits). The Philox generator (format-1
 * trajectories) fills whole chunks of z as before, with the same arithmetic, so its runs
 * replay bit for bit (checked against the format-1 implementation).
 */
import { ensureHashNormalTables, hashKeys, hashNormalAt } from './hash-normal.js';
import { MemberScanner, memberThresholdBits } from './member-scan.js';
import { plusInWasm, sweepInWasm, updateInWasm, type PassContext } from './perturb-wasm.js';
import { fillNormal, type NoiseGenerator, type TrainableTensor } from './rng.js';
import { clampMagnitude, SideTable } from './side-table.js';

/** Side-table cursor value once a tensor's entries are used up (above any element index). */
const NO_MORE = 2 ** 53;

/** The fixed parts of a run that every pass needs. */
export interface PerturbSetup {
  tensors: readonly TrainableTensor[];
  /** Per-tensor Sparse-MeZO thresholds (members: |x| <= h); null trains every element. */
  thresholds: Float64Array | null;
  eps: number;
  chunk: number;
  exactRestore: boolean;
  generator: NoiseGenerator;
  /** Run the member rules in WebAssembly where possible (default true; false: the JS loops only). */
  useWasm?: boolean;
}

/** Which perturbed state the weights are in when a restore is asked for. */
export type PerturbedState = 'plus' | 'minus';

/** The passes that `sweep` runs. */
export type SweepMode = 'minus' | 'restorePlus' | 'restoreMinus';

/** Runs the passes of one MeZO sample and the update, in place, with chunk-sized scratch only. */
export class PerturbationKernel {
  private readonly setup: PerturbSetup;
  /** The tensors' float bits, for the member test. */
  private readonly bits: Int32Array[];
  private readonly hBits: Int32Array | null;
  /** Lists each chunk's members (all elements for plain MeZO) and their hash-generator z. */
  private readonly scanner: MemberScanner;
  /** Offsets (in the chunk) of the current chunk's members. */
  private readonly members: Int32Array;
  /** Hash generator only: z of the current chunk's members (members[q] ↔ memberZ[q]). */
  private readonly memberZ: Float32Array | null;
  /** Hash generator, several samples: Σ_k g_k·z_k of the current chunk's members. */
  private readonly memberAcc: Float64Array | null;
  /** Philox only: z of the current chunk, and Σ g·z over samples for the update. */
  private readonly philoxZ: Float32Array | null;
  private readonly philoxAcc: Float64Array | null;
  private readonly side: SideTable;
  private peakSide = 0;
  /** Hash generator without exactRestore, where WebAssembly runs: the passes of perturb-wasm.ts. */
  private readonly wasmContext: PassContext | null;

  constructor(setup: PerturbSetup) {
    this.setup = setup;
    const { tensors, thresholds, chunk } = setup;
    this.bits = tensors.map((t) => new Int32Array(t.data.buffer, t.data.byteOffset, t.data.length));
    this.hBits = thresholds === null ? null : Int32Array.from(thresholds, memberThresholdBits);
    this.scanner = new MemberScanner(chunk, setup.useWasm ?? true);
    this.members = this.scanner.members;
    const philox = setup.generator === 'philox';
    this.philoxZ = philox ? new Float32Array(chunk) : null;
    this.philoxAcc = philox ? new Float64Array(chunk) : null;
    this.memberZ = philox ? null : this.scanner.z;
    this.memberAcc = philox ? null : this.scanner.acc;
    if (!philox) ensureHashNormalTables();
    this.side = new SideTable(tensors.length, setup.exactRestore);
    const inWasm = this.scanner.usesWasm && !philox && !setup.exactRestore;
    this.wasmContext = inWasm
      ? {
          setup,
          side: this.side,
          scanner: this.scanner,
          fixups: new Float32Array(chunk),
          threshold: (t) => this.threshold(t),
          collect: (t, off, len) => this.collect(t, off, len),
          recordPeak: (entries) => {
            this.peakSide = Math.max(this.peakSide, entries);
          },
        }
      : null;
  }

  /**
   * New Sparse-MeZO thresholds (one per tensor), e.g. recomputed from the weights at the start
   * of a step. Only between steps: the passes of one step must all see the same thresholds.
   */
  setThresholds(thresholds: ArrayLike<number>): void {
    const own = this.setup.thresholds;
    if (own === null || this.hBits === null) throw new Error('setThresholds: this kernel trains every element (plain MeZO)');
    for (let t = 0; t < own.length; t++) {
      own[t] = thresholds[t];
      this.hBits[t] = memberThresholdBits(thresholds[t]);
    }
  }

  /** Whether the passes run their member rules in WebAssembly (perturb-wasm.ts). */
  get runsInWasm(): boolean {
    return this.wasmContext !== null;
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

  /** Lists the members of elements off .. off+len−1 of tensor t in `members`; returns their count. */
  private collect(t: number, off: number, len: number): number {
    if (this.hBits === null) return this.scanner.all(this.bits[t], off, len);
    return this.scanner.collect(this.bits[t], off, len, this.hBits[t]);
  }

  /** Hash generator: memberZ[q] = z(seed of keys, element off + members[q]) for q < count. */
  private memberNormals(count: number, off: number, kMul: number, kAdd: number): void {
    if (this.memberZ !== null) this.scanner.normals(count, off, kMul, kAdd);
  }

  /** Philox only: z of seed for elements off .. off+len−1 of tensor t into philoxZ. */
  private fillPhilox(seed: number, t: number, off: number, len: number): void {
    if (this.philoxZ !== null) fillNormal(this.philoxZ.subarray(0, len), seed, t, off, 'philox');
  }

  /** Pass +: x ← x + eps·z(seed) on members; records the side table for this sample. */
  plus(seed: number): void {
    if (this.wasmContext !== null) {
      plusInWasm(this.wasmContext, seed);
      return;
    }
    const { tensors, eps, chunk, exactRestore } = this.setup;
    const side = this.side;
    const members = this.members;
    const memberZ = this.memberZ;
    const philoxZ = this.philoxZ;
    side.reset();
    let sideLength = 0;
    for (let t = 0; t < tensors.length; t++) {
      const data = tensors[t].data;
      const h = this.threshold(t);
      // Every value of the cycle is within (|x| + |d|)·(1 + 2^-20), so below `safe` nothing can
      // leave [−h, h] and the prediction is skipped; exactRestore needs it for every member.
      const safe = exactRestore ? -1 : h * (1 - 2 ** -18);
      const [kMul, kAdd] = hashKeys(seed, t);
      const km = kMul | 0;
      const ka = kAdd | 0;
      side.starts[t] = sideLength;
      for (let off = 0; off < data.length; off += chunk) {
        const len = Math.min(chunk, data.length - off);
        const count = this.collect(t, off, len);
        this.fillPhilox(seed, t, off, len);
        this.memberNormals(count, off, km, ka);
        // Room for every member of the chunk, so the arrays are constants of the loop: stores
        // through a binding that the loop may reassign ran ~10x slower in V8.
        if (safe !== Infinity) side.reserve(sideLength + count); // plain MeZO never lists anything
        const sideIndices = side.indices;
        const sideValues = side.values;
        for (let q = 0; q < count; q++) {
          const j = members[q];
          const i = off + j;
          const d = eps * (memberZ !== null ? memberZ[q] : philoxZ![j]);
          const x = data[i];
          const t1 = Math.fround(x + d);
          data[i] = t1;
          if (Math.abs(x) + Math.abs(d) <= safe) continue;
          // Predict what the later passes will compute from the current value alone.
          const back = Math.fround(t1 - d);
          const t2 = Math.fround(back - d);
          const restored = Math.fround(t2 + d);
          const ambiguous = Math.abs(t1) > h || Math.abs(back) > h || Math.abs(t2) > h || Math.abs(restored) > h;
          const inexact = exactRestore && (restored !== x || back !== x || (x === 0 && 1 / x < 0));
          if (!ambiguous && !inexact) continue;
          sideIndices[sideLength] = i;
          if (sideValues !== null) sideValues[sideLength] = x;
          sideLength++;
        }
      }
    }
    side.length = sideLength;
    side.starts[tensors.length] = sideLength;
    this.peakSide = Math.max(this.peakSide, sideLength);
  }

  /** Pass −: from the + state to x − eps·z. */
  minus(seed: number): void {
    this.sweep(seed, 'minus');
  }

  /** Back to the start weights from the + or − state (exact with `exactRestore`). */
  restore(seed: number, from: PerturbedState): void {
    this.sweep(seed, from === 'plus' ? 'restorePlus' : 'restoreMinus');
  }

  /*
   * The later passes walk two sorted lists at once: the chunk's members by current value and
   * the side table's listed elements (members whatever their current value says; some of them
   * are outside [−h, h] now and so not in the first list): a tight loop over the members up to
   * the next listed element, then that element. All handling is inline: a method call per
   * listed element cost more than the rest of the pass.
   */

  private sweep(seed: number, mode: SweepMode): void {
    if (this.wasmContext !== null) {
      sweepInWasm(this.wasmContext, seed, mode);
      return;
    }
    const { tensors, eps, chunk } = this.setup;
    const { indices, starts, values } = this.side;
    const members = this.members;
    const memberZ = this.memberZ;
    const philoxZ = this.philoxZ;
    const minus = mode === 'minus';
    const fromMinus = mode === 'restoreMinus';
    for (let t = 0; t < tensors.length; t++) {
      const data = tensors[t].data;
      const h = this.threshold(t);
      const [kMul, kAdd] = hashKeys(seed, t);
      const km = kMul | 0;
      const ka = kAdd | 0;
      let p = starts[t];
      const end = starts[t + 1];
      let next = p < end ? indices[p] : NO_MORE;
      for (let off = 0; off < data.length; off += chunk) {
        const len = Math.min(chunk, data.length - off);
        const chunkEnd = off + len;
        const count = this.collect(t, off, len);
        this.fillPhilox(seed, t, off, len);
        this.memberNormals(count, off, km, ka);
        let q = 0;
        for (;;) {
          // The members before the next listed element, in a tight loop.
          const stop = Math.min(next, chunkEnd);
          for (; q < count; q++) {
            const j = members[q];
            const i = off + j;
            if (i >= stop) break;
            const d = eps * (memberZ !== null ? memberZ[q] : philoxZ![j]);
            const cur = data[i];
            if (minus) data[i] = Math.fround(cur - d) - d;
            else if (fromMinus) data[i] = cur + d;
            else data[i] = cur - d;
          }
          if (next >= chunkEnd) break;
          // The listed element: in `members` too when its current value is within [−h, h].
          const i = next;
          if (q < count && off + members[q] === i) q++;
          const d = eps * (philoxZ === null ? hashNormalAt(i, km, ka) : philoxZ[i - off]);
          const cur = data[i];
          if (values !== null) data[i] = minus ? values[p] - d : values[p];
          else if (minus) data[i] = Math.fround(cur - d) - d;
          else data[i] = clampMagnitude(Math.fround(fromMinus ? cur + d : cur - d), h);
          next = ++p < end ? indices[p] : NO_MORE;
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
    if (this.wasmContext !== null) {
      updateInWasm(this.wasmContext, seeds, grads, lr, wd, restoreFirst);
      return;
    }
    const { tensors, eps, chunk } = this.setup;
    const { indices, values, starts } = this.side;
    const members = this.members;
    const memberZ = this.memberZ;
    const memberAcc = this.memberAcc;
    const philoxZ = this.philoxZ;
    const philoxAcc = this.philoxAcc;
    const n = seeds.length;
    const invN = 1 / n;
    const g = Float64Array.from(grads);
    const kMuls = new Int32Array(n);
    const kAdds = new Int32Array(n);
    for (let t = 0; t < tensors.length; t++) {
      const data = tensors[t].data;
      const h = this.threshold(t);
      const wdT = tensors[t].decay === false ? 0 : wd;
      for (let k = 0; k < n; k++) [kMuls[k], kAdds[k]] = hashKeys(seeds[k], t);
      let p = restoreFirst ? starts[t] : 0;
      const end = restoreFirst ? starts[t + 1] : 0;
      let next = p < end ? indices[p] : NO_MORE;
      for (let off = 0; off < data.length; off += chunk) {
        const len = Math.min(chunk, data.length - off);
        const chunkEnd = off + len;
        const count = this.collect(t, off, len);
        if (philoxZ !== null && philoxAcc !== null) {
          // Sum g_k·z_k in sample order; afterwards philoxZ holds the last sample's z for the restore.
          philoxAcc.fill(0, 0, len);
          for (let k = 0; k < n; k++) {
            this.fillPhilox(seeds[k], t, off, len);
            for (let j = 0; j < len; j++) philoxAcc[j] += g[k] * philoxZ[j];
          }
        } else if (memberAcc !== null && memberZ !== null) {
          // The same sum over the members; afterwards memberZ holds the last sample's z.
          for (let k = 0; k < n; k++) {
            this.memberNormals(count, off, kMuls[k], kAdds[k]);
            const gk = g[k];
            if (k === 0) for (let q = 0; q < count; q++) memberAcc[q] = 0 + gk * memberZ[q];
            else for (let q = 0; q < count; q++) memberAcc[q] += gk * memberZ[q];
          }
        }
        let q = 0;
        // Same walk as `sweep`: members up to the next listed element, then that element.
        for (;;) {
          const stop = Math.min(next, chunkEnd);
          let i = chunkEnd;
          for (; q < count; q++) {
            i = off + members[q];
            if (i >= stop) break;
            const acc = memberAcc !== null ? memberAcc[q] : philoxAcc![i - off];
            const zLast = memberZ !== null ? memberZ[q] : philoxZ![i - off];
            const cur = data[i];
            const base = restoreFirst ? Math.fround(cur + eps * zLast) : cur;
            data[i] = base - lr * (acc * invN + wdT * base);
          }
          if (next >= chunkEnd) break;
          // The listed element: in `members` too (where the walk stopped) if |current| <= h.
          if (q < count && i === next) q++;
          i = next;
          let acc = 0;
          let zLast = 0;
          if (philoxZ !== null && philoxAcc !== null) {
            acc = philoxAcc[i - off];
            zLast = philoxZ[i - off];
          } else {
            for (let k = 0; k < n; k++) {
              zLast = hashNormalAt(i, kMuls[k], kAdds[k]);
              acc += g[k] * zLast;
            }
          }
          const base = values !== null ? values[p] : clampMagnitude(Math.fround(data[i] + eps * zLast), h);
          data[i] = base - lr * (acc * invN + wdT * base);
          next = ++p < end ? indices[p] : NO_MORE;
        }
      }
    }
  }
}
