/**
 * Per-chunk work of the perturbation passes that runs faster outside plain JS loops:
 *   - member lists: the offsets j in [0, len) of a chunk whose weight satisfies |x| <= h, in
 *     increasing order, found without a data-dependent branch per element (a branch
 *     mispredicts on ~20% of elements at sparsity 0.8, which costs more than the rest of a
 *     pass). The test is on the float bits, (bits & 0x7fffffff) <= hb with hb the largest
 *     float32 bit pattern whose value is <= h (−1: nothing), so NaN is never a member;
 *   - the hash-generator noise of those members, in one batch;
 *   - (WebAssembly only) the member rules of the passes, on a copy of the chunk.
 *
 * Each has a WebAssembly routine (wasm-kernels.ts; V8 runs the JS member scan at ~2 ns per
 * element, wasm SIMD with the copy into its memory at ~0.5, and the noise at about half the JS
 * cost) and, except the rules, a plain JS loop used where WebAssembly SIMD is missing and as
 * the reference in the tests. Both give the same bits.
 */
import { ensureHashNormalTables, hashNormalAt, hashNormalTables } from './hash-normal.js';
import { leftPackTable, wasm, wasmModule } from './wasm-kernels.js';

/**
 * The `hb` for a threshold h: the largest float32 bit pattern whose value is <= h, so that
 * (bits & 0x7fffffff) <= hb ⟺ |x| <= h for every float32 x; −1 (no member) for h < 0.
 */
export function memberThresholdBits(h: number): number {
  if (!(h >= 0)) return -1;
  const f = Math.fround(h);
  const bits = new Int32Array(new Float32Array([f]).buffer)[0];
  return f > h ? bits - 1 : bits;
}

type CollectFn = (src: number, len: number, hb: number, out: number, table: number) => number;
type NormalsFn = (count: number, off: number, kMul: number, kAdd: number, members: number, zOut: number, center: number, tail: number) => void;
type PlusFn = (count: number, eps: number, h: number, safe: number, members: number, z: number, listed: number) => number;
type SweepFn = (count: number, eps: number, mode: number, members: number, z: number) => void;
type UpdateFn = (
  count: number,
  eps: number,
  lr: number,
  wd: number,
  invN: number,
  restoreFirst: number,
  g0: number,
  useAcc: number,
  members: number,
  z: number,
  acc: number,
) => void;

/** The wasm routines of one instance. */
interface WasmRoutines {
  collect: CollectFn;
  normals: NormalsFn;
  plus: PlusFn;
  sweep: SweepFn;
  update: UpdateFn;
}

/** Member rule of `applySweep`: the pass −, restore from −, restore from +. */
export const SWEEP_MINUS = 0;
export const SWEEP_RESTORE_MINUS = 1;
export const SWEEP_RESTORE_PLUS = 2;

/**
 * Per-chunk scratch of the perturbation passes: the member list of the current chunk, the
 * hash-generator z of each member and (WebAssembly only) a copy of the chunk on which the
 * member rules of the passes run, with chunk-sized buffers only.
 */
export class MemberScanner {
  /** The member offsets of the last `collect` (or `all`) call: its first `count` entries. */
  readonly members: Int32Array;
  /** z of the listed members after `normals`: z[q] for element off + members[q]. */
  readonly z: Float32Array;
  /** Per-member sums Σ_k g_k·z_k for `applyUpdate` (filled by the caller). */
  readonly acc: Float64Array;
  /** Members that `applyPlus` found near the threshold (chunk offsets, ascending). */
  readonly listed: Int32Array;
  private readonly chunk: number;
  private readonly routines: WasmRoutines | null = null;
  /** The chunk's values (and bits) inside the wasm memory (wasm only). */
  private readonly wasmValues: Float32Array | null = null;
  private readonly wasmBits: Int32Array | null = null;
  /** Byte offsets in the wasm memory. */
  private readonly layout = { members: 0, z: 0, acc: 0, listed: 0, leftPack: 0, center: 0, tail: 0 };
  /** Length of the identity list in `members` (all elements are members), 0 if none. */
  private identityLength = 0;

  /** `chunk`: the most elements one call will see. `useWasm: false` forces the JS loops. */
  constructor(chunk: number, useWasm = true) {
    this.chunk = chunk;
    const module = useWasm ? wasmModule() : null;
    const memory = module === null ? null : this.wasmMemory(chunk);
    if (module === null || memory === null) {
      this.members = new Int32Array(chunk);
      this.z = new Float32Array(chunk);
      this.acc = new Float64Array(chunk);
      this.listed = new Int32Array(chunk);
      return;
    }
    const { center, tail } = hashNormalTables();
    const layout = this.layout;
    const buffer = memory.buffer;
    new Uint8Array(buffer, layout.leftPack, 256).set(leftPackTable());
    new Float64Array(buffer, layout.center, center.length).set(center);
    new Float64Array(buffer, layout.tail, tail.length).set(tail);
    this.routines = new wasm!.Instance(module, { env: { memory } }).exports as unknown as WasmRoutines;
    this.wasmValues = new Float32Array(buffer, 0, chunk);
    this.wasmBits = new Int32Array(buffer, 0, chunk);
    this.members = new Int32Array(buffer, layout.members, chunk);
    this.z = new Float32Array(buffer, layout.z, chunk);
    this.acc = new Float64Array(buffer, layout.acc, chunk);
    this.listed = new Int32Array(buffer, layout.listed, chunk);
  }

  /** Lays out and allocates the wasm memory (~24 bytes per chunk element + 100 KB); null if that fails. */
  private wasmMemory(chunk: number): { buffer: ArrayBuffer } | null {
    ensureHashNormalTables();
    const { center, tail } = hashNormalTables();
    const align = (n: number) => Math.ceil(n / 16) * 16;
    const layout = this.layout;
    layout.members = align(4 * chunk);
    layout.z = align(layout.members + 4 * chunk + 16); // + 16: the SIMD left-pack writes up to 3 lanes past the list
    layout.acc = align(layout.z + 4 * chunk);
    layout.listed = align(layout.acc + 8 * chunk);
    layout.leftPack = align(layout.listed + 4 * chunk);
    layout.center = layout.leftPack + 256;
    layout.tail = layout.center + center.byteLength;
    const pages = Math.ceil((layout.tail + tail.byteLength) / 65536);
    try {
      return new wasm!.Memory({ initial: pages, maximum: pages });
    } catch {
      return null; // e.g. a huge chunk: the JS loops need no such block
    }
  }

  /** Whether the WebAssembly routines are in use (and so the `apply*` methods available). */
  get usesWasm(): boolean {
    return this.routines !== null;
  }

  private checkLength(len: number): void {
    if (len > this.chunk) throw new RangeError(`len ${len} exceeds the chunk ${this.chunk}`);
  }

  /**
   * Takes the chunk data[off .. off+len) (into wasm memory) and lists j in [0, len) with
   * (bits & 0x7fffffff) <= hb into `members`; returns the count. `bits` views `data`.
   */
  collect(bits: Int32Array, off: number, len: number, hb: number): number {
    this.checkLength(len);
    this.identityLength = 0;
    if (this.routines !== null && this.wasmBits !== null) {
      this.wasmBits.set(bits.subarray(off, off + len));
      return this.routines.collect(0, len, hb, this.layout.members, this.layout.leftPack);
    }
    const out = this.members;
    let m = 0;
    // (abs bits − hb − 1) is negative exactly when abs bits <= hb.
    for (let j = 0; j < len; j++) {
      out[m] = j;
      m += ((bits[off + j] & 0x7fffffff) - hb - 1) >>> 31;
    }
    return m;
  }

  /** Takes the chunk (into wasm memory) and lists every element 0 .. len−1 (plain MeZO); returns len. */
  all(bits: Int32Array, off: number, len: number): number {
    this.checkLength(len);
    if (this.wasmBits !== null) this.wasmBits.set(bits.subarray(off, off + len));
    if (this.identityLength < len) {
      for (let j = this.identityLength; j < len; j++) this.members[j] = j;
      this.identityLength = len;
    }
    return len;
  }

  /**
   * z[q] = hashNormalAt(off + members[q], kMul, kAdd) for q < count: the noise of the listed
   * members of the chunk at `off` (element indices < 2^32).
   */
  normals(count: number, off: number, kMul: number, kAdd: number): void {
    if (this.routines !== null) {
      const { members, z, center, tail } = this.layout;
      this.routines.normals(count, off, kMul, kAdd, members, z, center, tail);
      return;
    }
    const members = this.members;
    const z = this.z;
    const km = kMul | 0;
    const ka = kAdd | 0;
    for (let q = 0; q < count; q++) z[q] = hashNormalAt(off + members[q], km, ka);
  }

  /* The apply* methods (wasm only) run a pass's member rule on the wasm copy of the chunk,
   * d = eps·z[q]; `copyOut` then writes the chunk back. See wasm-kernels.ts for the rules. */

  /** Pass + on the members; lists those near the threshold in `listed`, returns how many. */
  applyPlus(count: number, eps: number, h: number, safe: number): number {
    const { members, z, listed } = this.layout;
    return this.wasmRoutines().plus(count, eps, h, safe, members, z, listed);
  }

  /** The member rule of a sweep (SWEEP_MINUS, SWEEP_RESTORE_MINUS or SWEEP_RESTORE_PLUS). */
  applySweep(count: number, eps: number, mode: number): void {
    const { members, z } = this.layout;
    this.wasmRoutines().sweep(count, eps, mode, members, z);
  }

  /** The member rule of the update; the sum is acc[q] (`useAcc`) or 0 + g0·z[q]. */
  applyUpdate(count: number, eps: number, lr: number, wd: number, invN: number, restoreFirst: boolean, g0: number, useAcc: boolean): void {
    const { members, z, acc } = this.layout;
    this.wasmRoutines().update(count, eps, lr, wd, invN, restoreFirst ? 1 : 0, g0, useAcc ? 1 : 0, members, z, acc);
  }

  /** Writes the wasm copy of the chunk back to data[off .. off+len). */
  copyOut(data: Float32Array, off: number, len: number): void {
    data.set(this.wasmValues!.subarray(0, len), off);
  }

  private wasmRoutines(): WasmRoutines {
    if (this.routines === null) throw new Error('MemberScanner: the apply methods need WebAssembly');
    return this.routines;
  }
}
