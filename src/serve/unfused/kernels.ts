/**
 * The WebAssembly kernels that add unfused adapter contributions to one row's site output
 * (y += scale · ΔW x), assembled by wasm-asm.ts. All pointers are byte offsets into the
 * arena's memory (arena.ts); every routine reads its tables in place, so nothing is copied
 * per step but the row's input and output vectors.
 *
 * - sparse: a sparse ΔW in "grouped" layout (tables.ts): output rows with the same entry
 *   count c form a group, taken four rows at a time with SIMD lanes = rows (entries stored
 *   j-major within a block of four, so each step loads four values at once), the rest of
 *   the group one row at a time. Equal trip counts in a group keep branches predictable;
 *   this runs at about 0.3-0.8 ns per entry from cache (1.6 from memory) on the dev
 *   machine, against 4-6 ns for JS or onnxruntime Gather/ScatterElements formulations.
 * - lowrank: t = scale · A x (A [r, in]), y += Bᵀᵀ t with B stored transposed [r, out].
 * - structured: y[rows] += scale · V x[cols] (V [rows, cols] dense; absent rows/cols = all).
 * - axpy: y += a · v (bias deltas).
 */
import { SparsetuneError } from '../../errors.js';
import { assemble, op, type Ins, type WasmFunction } from './wasm-asm.js';

const { get, set, tee, i32, f32 } = op;
const shl2: Ins[] = [i32(2), op.i32Shl];
/** ptr += by */
const bump = (ptr: string, by: number): Ins[] => [get(ptr), i32(by), op.i32Add, set(ptr)];
/** if (n == 0) skip the enclosing block */
const skipIfZero = (n: string): Ins[] => [get(n), op.i32Eqz, op.brIf(0)];

/** dot(a, b, n) -> sum of a[i]·b[i] (four SIMD lanes, then the tail). */
const DOT: WasmFunction = {
  name: 'dot',
  params: [['a', 'i32'], ['b', 'i32'], ['n', 'i32']],
  locals: [['i', 'i32'], ['n4', 'i32'], ['acc', 'v128'], ['s', 'f32']],
  result: 'f32',
  body: [
    f32(0), op.f32x4Splat, set('acc'),
    get('n'), i32(-4), op.i32And, set('n4'),
    op.block, ...skipIfZero('n4'),
    op.loop,
      get('acc'),
      get('a'), get('i'), ...shl2, op.i32Add, op.v128Load(),
      get('b'), get('i'), ...shl2, op.i32Add, op.v128Load(),
      op.f32x4Mul, op.f32x4Add, set('acc'),
      get('i'), i32(4), op.i32Add, tee('i'), get('n4'), op.i32LtU, op.brIf(0),
    op.end,
    op.end,
    get('acc'), op.f32x4ExtractLane(0), get('acc'), op.f32x4ExtractLane(1), op.f32Add,
    get('acc'), op.f32x4ExtractLane(2), get('acc'), op.f32x4ExtractLane(3), op.f32Add, op.f32Add, set('s'),
    op.block, get('i'), get('n'), op.i32GeU, op.brIf(0),
    op.loop,
      get('s'),
      get('a'), get('i'), ...shl2, op.i32Add, op.f32Load(),
      get('b'), get('i'), ...shl2, op.i32Add, op.f32Load(),
      op.f32Mul, op.f32Add, set('s'),
      get('i'), i32(1), op.i32Add, tee('i'), get('n'), op.i32LtU, op.brIf(0),
    op.end,
    op.end,
    get('s'),
  ],
};

/** axpy(alpha, v, n, y): y[i] += alpha · v[i]. */
const AXPY: WasmFunction = {
  name: 'axpy',
  params: [['alpha', 'f32'], ['v', 'i32'], ['n', 'i32'], ['y', 'i32']],
  locals: [['i', 'i32'], ['n4', 'i32'], ['va', 'v128'], ['p', 'i32']],
  body: [
    get('alpha'), op.f32x4Splat, set('va'),
    get('n'), i32(-4), op.i32And, set('n4'),
    op.block, ...skipIfZero('n4'),
    op.loop,
      get('y'), get('i'), ...shl2, op.i32Add, tee('p'),
      get('p'), op.v128Load(),
      get('v'), get('i'), ...shl2, op.i32Add, op.v128Load(), get('va'), op.f32x4Mul,
      op.f32x4Add, op.v128Store(),
      get('i'), i32(4), op.i32Add, tee('i'), get('n4'), op.i32LtU, op.brIf(0),
    op.end,
    op.end,
    op.block, get('i'), get('n'), op.i32GeU, op.brIf(0),
    op.loop,
      get('y'), get('i'), ...shl2, op.i32Add, tee('p'),
      get('p'), op.f32Load(),
      get('v'), get('i'), ...shl2, op.i32Add, op.f32Load(), get('alpha'), op.f32Mul,
      op.f32Add, op.f32Store(),
      get('i'), i32(1), op.i32Add, tee('i'), get('n'), op.i32LtU, op.brIf(0),
    op.end,
    op.end,
  ],
};

const DOT_INDEX = 0;
const AXPY_INDEX = 1;
const call = (index: number): Ins => [0x10, index];

/** x[cols[k]] with cols u16 at byte `cols + off`. */
const xAt = (off: number): Ins[] => [get('x'), get('cols'), op.i32Load16U(off), ...shl2, op.i32Add, op.f32Load()];
/** y[rowIds[lane]] += acc[lane] */
const laneOut = (lane: number): Ins[] => [
  get('y'), get('rowIds'), op.i32Load(4 * lane), ...shl2, op.i32Add, tee('p'),
  get('p'), op.f32Load(), get('acc'), op.f32x4ExtractLane(lane), op.f32Add, op.f32Store(),
];

/**
 * sparse(groups, nGroups, rowIds, cols, vals, x, y, scale): groups = u32 triples [count c,
 * blocks of four rows, single rows]; rowIds u32, cols u16, vals f32 in table order.
 */
const SPARSE: WasmFunction = {
  name: 'sparse',
  params: [['groups', 'i32'], ['nGroups', 'i32'], ['rowIds', 'i32'], ['cols', 'i32'], ['vals', 'i32'], ['x', 'i32'], ['y', 'i32'], ['scale', 'f32']],
  locals: [['g', 'i32'], ['c', 'i32'], ['n', 'i32'], ['t', 'i32'], ['j', 'i32'], ['acc', 'v128'], ['s', 'f32'], ['p', 'i32'], ['vs', 'v128']],
  body: [
    get('scale'), op.f32x4Splat, set('vs'),
    op.block, ...skipIfZero('nGroups'),
    op.loop,
      get('groups'), op.i32Load(0), set('c'), get('groups'), op.i32Load(4), set('n'), get('groups'), op.i32Load(8), set('t'),
      ...bump('groups', 12),
      op.block, ...skipIfZero('n'),
      op.loop,
        f32(0), op.f32x4Splat, set('acc'), get('c'), set('j'),
        op.loop,
          get('acc'),
          get('vals'), op.v128Load(),
          ...xAt(0), op.f32x4Splat, ...xAt(2), op.f32x4ReplaceLane(1), ...xAt(4), op.f32x4ReplaceLane(2), ...xAt(6), op.f32x4ReplaceLane(3),
          op.f32x4Mul, op.f32x4Add, set('acc'),
          ...bump('vals', 16), ...bump('cols', 8),
          get('j'), i32(1), op.i32Sub, tee('j'), op.brIf(0),
        op.end,
        get('acc'), get('vs'), op.f32x4Mul, set('acc'),
        ...laneOut(0), ...laneOut(1), ...laneOut(2), ...laneOut(3),
        ...bump('rowIds', 16),
        get('n'), i32(1), op.i32Sub, tee('n'), op.brIf(0),
      op.end,
      op.end,
      op.block, ...skipIfZero('t'),
      op.loop,
        f32(0), set('s'), get('c'), set('j'),
        op.loop,
          get('s'), get('vals'), op.f32Load(), ...xAt(0), op.f32Mul, op.f32Add, set('s'),
          ...bump('vals', 4), ...bump('cols', 2),
          get('j'), i32(1), op.i32Sub, tee('j'), op.brIf(0),
        op.end,
        get('y'), get('rowIds'), op.i32Load(), ...shl2, op.i32Add, tee('p'),
        get('p'), op.f32Load(), get('scale'), get('s'), op.f32Mul, op.f32Add, op.f32Store(),
        ...bump('rowIds', 4),
        get('t'), i32(1), op.i32Sub, tee('t'), op.brIf(0),
      op.end,
      op.end,
      get('g'), i32(1), op.i32Add, tee('g'), get('nGroups'), op.i32LtU, op.brIf(0),
    op.end,
    op.end,
  ],
};

/** lowrank(A, BT, r, nIn, nOut, x, y, scale, tmp): tmp = scale · A x; y += BTᵀ tmp. */
const LOWRANK: WasmFunction = {
  name: 'lowrank',
  params: [['A', 'i32'], ['BT', 'i32'], ['r', 'i32'], ['nIn', 'i32'], ['nOut', 'i32'], ['x', 'i32'], ['y', 'i32'], ['scale', 'f32'], ['tmp', 'i32']],
  locals: [['j', 'i32'], ['p', 'i32']],
  body: [
    op.block, ...skipIfZero('r'),
    get('tmp'), set('p'),
    op.loop,
      get('p'),
      get('A'), get('j'), get('nIn'), op.i32Mul, ...shl2, op.i32Add, get('x'), get('nIn'), call(DOT_INDEX),
      get('scale'), op.f32Mul, op.f32Store(),
      ...bump('p', 4),
      get('j'), i32(1), op.i32Add, tee('j'), get('r'), op.i32LtU, op.brIf(0),
    op.end,
    i32(0), set('j'),
    op.loop,
      get('tmp'), get('j'), ...shl2, op.i32Add, op.f32Load(),
      get('BT'), get('j'), get('nOut'), op.i32Mul, ...shl2, op.i32Add, get('nOut'), get('y'), call(AXPY_INDEX),
      get('j'), i32(1), op.i32Add, tee('j'), get('r'), op.i32LtU, op.brIf(0),
    op.end,
    op.end,
  ],
};

/**
 * structured(V, nr, nc, rows, cols, x, y, scale, tmp): y[rows[i]] += scale · V[i]·x[cols]
 * (rows/cols: i32 arrays, or 0 for all rows / all columns).
 */
const STRUCTURED: WasmFunction = {
  name: 'structured',
  params: [['V', 'i32'], ['nr', 'i32'], ['nc', 'i32'], ['rows', 'i32'], ['cols', 'i32'], ['x', 'i32'], ['y', 'i32'], ['scale', 'f32'], ['tmp', 'i32']],
  locals: [['i', 'i32'], ['src', 'i32'], ['p', 'i32']],
  body: [
    get('x'), set('src'),
    op.block, get('cols'), op.i32Eqz, op.brIf(0), ...skipIfZero('nc'),
    get('tmp'), set('src'),
    op.loop,
      get('tmp'), get('i'), ...shl2, op.i32Add,
      get('x'), get('cols'), get('i'), ...shl2, op.i32Add, op.i32Load(), ...shl2, op.i32Add, op.f32Load(),
      op.f32Store(),
      get('i'), i32(1), op.i32Add, tee('i'), get('nc'), op.i32LtU, op.brIf(0),
    op.end,
    op.end,
    i32(0), set('i'),
    op.block, ...skipIfZero('nr'),
    op.loop,
      get('y'),
      get('rows'), op.i32Eqz, op.ifI32, get('i'), op.else, get('rows'), get('i'), ...shl2, op.i32Add, op.i32Load(), op.end,
      ...shl2, op.i32Add, tee('p'),
      get('p'), op.f32Load(),
      get('V'), get('i'), get('nc'), op.i32Mul, ...shl2, op.i32Add, get('src'), get('nc'), call(DOT_INDEX),
      get('scale'), op.f32Mul, op.f32Add, op.f32Store(),
      get('i'), i32(1), op.i32Add, tee('i'), get('nr'), op.i32LtU, op.brIf(0),
    op.end,
    op.end,
  ],
};

/** The typed entry points. */
export interface KernelExports {
  dot(a: number, b: number, n: number): number;
  axpy(alpha: number, v: number, n: number, y: number): void;
  sparse(groups: number, nGroups: number, rowIds: number, cols: number, vals: number, x: number, y: number, scale: number): void;
  lowrank(A: number, BT: number, r: number, nIn: number, nOut: number, x: number, y: number, scale: number, tmp: number): void;
  structured(V: number, nr: number, nc: number, rows: number, cols: number, x: number, y: number, scale: number, tmp: number): void;
}

/** The part of the WebAssembly JS API used here (the project's TypeScript libs do not declare it). */
interface WasmApi {
  Module: new (bytes: Uint8Array) => object;
  Instance: new (module: object, imports: Record<string, Record<string, unknown>>) => { exports: Record<string, unknown> };
  Memory: new (descriptor: { initial: number; maximum?: number }) => WasmMemory;
}

/** A WebAssembly.Memory. */
export interface WasmMemory {
  readonly buffer: ArrayBuffer;
  grow(pages: number): number;
}

let compiled: object | null = null;

function api(): WasmApi {
  const w = (globalThis as { WebAssembly?: WasmApi }).WebAssembly;
  if (!w) throw new SparsetuneError('RUNTIME', 'this JavaScript runtime has no WebAssembly, which unfused adapters need; serve with fused adapters only');
  return w;
}

/** A new memory of `pages` 64 KiB pages. */
export function newMemory(pages: number): WasmMemory {
  return new (api().Memory)({ initial: pages });
}

/** Instantiate the kernels over `memory`. */
export function instantiateKernels(memory: WasmMemory): KernelExports {
  const w = api();
  compiled ??= new w.Module(assemble([DOT, AXPY, SPARSE, LOWRANK, STRUCTURED]));
  return new w.Instance(compiled, { env: { memory } }).exports as unknown as KernelExports;
}
