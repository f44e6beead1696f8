/**
 * The WebAssembly memory holding every resident unfused table (tables.ts) and the scratch
 * vectors the kernels work on. Blocks are allocated first-fit from a free list that merges
 * neighbours on release; the memory grows (and never shrinks) when nothing fits. Views are
 * made fresh on each access because growing the memory replaces its buffer.
 */
import { SparsetuneError } from '../../errors.js';
import { instantiateKernels, newMemory, type KernelExports, type WasmMemory } from './kernels.js';

const PAGE = 65536;
const ALIGN = 16;
/** wasm32 addresses 4 GiB; stay a page short of it. */
const MAX_BYTES = 2 ** 32 - PAGE;

export class Arena {
  readonly memory: WasmMemory;
  readonly k: KernelExports;
  /** Free blocks, sorted by offset, never adjacent. */
  private free: { off: number; size: number }[];
  private sizes = new Map<number, number>();
  private used = 0;
  /**
   * While set, growing the memory is an error: onnxruntime holds views of the memory's
   * buffer (growing it would detach them), so the cut-graph runner freezes the arena around
   * each run.
   */
  frozen = false;

  constructor(initialBytes = 16 * PAGE) {
    const pages = Math.max(1, Math.ceil(initialBytes / PAGE));
    this.memory = newMemory(pages);
    this.k = instantiateKernels(this.memory);
    // Offset 0 stays unused so that 0 can mean "absent" in kernel arguments.
    this.free = [{ off: ALIGN, size: pages * PAGE - ALIGN }];
  }

  /** Bytes in allocated blocks. */
  get bytesInUse(): number {
    return this.used;
  }

  /** Bytes of the whole memory. */
  get capacity(): number {
    return this.memory.buffer.byteLength;
  }

  /** Allocate `bytes` (16-byte aligned); returns the block's offset. */
  alloc(bytes: number): number {
    const size = Math.max(ALIGN, Math.ceil(bytes / ALIGN) * ALIGN);
    let at = this.free.findIndex((b) => b.size >= size);
    if (at < 0) {
      this.grow(size);
      at = this.free.findIndex((b) => b.size >= size);
    }
    const block = this.free[at];
    const off = block.off;
    if (block.size === size) this.free.splice(at, 1);
    else {
      block.off += size;
      block.size -= size;
    }
    this.sizes.set(off, size);
    this.used += size;
    return off;
  }

  /** Give back a block from `alloc`. */
  release(off: number): void {
    const size = this.sizes.get(off);
    if (size === undefined) throw new SparsetuneError('RUNTIME', `arena: block ${off} is not allocated`);
    this.sizes.delete(off);
    this.used -= size;
    let i = 0;
    while (i < this.free.length && this.free[i].off < off) i++;
    this.free.splice(i, 0, { off, size });
    // Merge with the next block, then with the previous one.
    if (i + 1 < this.free.length && off + size === this.free[i + 1].off) {
      this.free[i].size += this.free[i + 1].size;
      this.free.splice(i + 1, 1);
    }
    if (i > 0 && this.free[i - 1].off + this.free[i - 1].size === off) {
      this.free[i - 1].size += this.free[i].size;
      this.free.splice(i, 1);
    }
  }

  private grow(atLeast: number): void {
    if (this.frozen) throw new SparsetuneError('RUNTIME', 'arena: cannot grow while onnxruntime reads it (a table was built during a model run)');
    const old = this.memory.buffer.byteLength;
    const last = this.free[this.free.length - 1];
    const tailFree = last && last.off + last.size === old ? last.size : 0;
    const want = Math.max(atLeast - tailFree, old / 2);
    const pages = Math.ceil(want / PAGE);
    if (old + pages * PAGE > MAX_BYTES) {
      throw new SparsetuneError('RUNTIME', `unfused adapter tables need ${atLeast} more bytes but their WebAssembly memory is at its 4 GiB limit; lower the unfused table budget (--unfused-budget-mb) so fewer adapters stay resident`);
    }
    this.memory.grow(pages);
    if (tailFree) last.size += pages * PAGE;
    else this.free.push({ off: old, size: pages * PAGE });
  }

  f32(off: number, n: number): Float32Array {
    return new Float32Array(this.memory.buffer, off, n);
  }

  u32(off: number, n: number): Uint32Array {
    return new Uint32Array(this.memory.buffer, off, n);
  }

  i32(off: number, n: number): Int32Array {
    return new Int32Array(this.memory.buffer, off, n);
  }

  u16(off: number, n: number): Uint16Array {
    return new Uint16Array(this.memory.buffer, off, n);
  }
}
