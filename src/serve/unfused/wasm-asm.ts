/**
 * A tiny WebAssembly assembler: just enough to write the unfused-delta kernels (kernels.ts)
 * readably without a toolchain. A function is a list of instructions built with `op`;
 * locals are referred to by name. The module imports its memory as `env.memory`.
 */
import { SparsetuneError } from '../../errors.js';
import { uleb, sleb } from '../../util/leb128.js';

export type WasmType = 'i32' | 'f32' | 'v128';
const TYPE_CODE: Record<WasmType, number> = { i32: 0x7f, f32: 0x7d, v128: 0x7b };

/** One instruction (or a few) as bytes; `local` entries are resolved by name at assembly. */
export type Ins = number[] | { local: 'get' | 'set' | 'tee'; name: string };

const mem = (code: number[], align: number) => (offset = 0): number[] => [...code, align, ...uleb(offset)];
const simd = (code: number): number[] => [0xfd, ...uleb(code)];

/** Instructions. Memory ops take a static byte offset. */
export const op = {
  get: (name: string): Ins => ({ local: 'get', name }),
  set: (name: string): Ins => ({ local: 'set', name }),
  tee: (name: string): Ins => ({ local: 'tee', name }),
  i32: (v: number): Ins => [0x41, ...sleb(v | 0)],
  f32: (v: number): Ins => {
    const b = new Uint8Array(Float32Array.of(v).buffer);
    return [0x43, ...b];
  },
  block: [0x02, 0x40] as Ins,
  loop: [0x03, 0x40] as Ins,
  if: [0x04, 0x40] as Ins,
  /** An `if` whose branches each leave one i32. */
  ifI32: [0x04, 0x7f] as Ins,
  else: [0x05] as Ins,
  end: [0x0b] as Ins,
  br: (depth: number): Ins => [0x0c, ...uleb(depth)],
  brIf: (depth: number): Ins => [0x0d, ...uleb(depth)],
  drop: [0x1a] as Ins,
  i32Load: mem([0x28], 2),
  i32Load16U: mem([0x2f], 1),
  f32Load: mem([0x2a], 2),
  f32Store: mem([0x38], 2),
  i32Eqz: [0x45] as Ins,
  i32Eq: [0x46] as Ins,
  i32Ne: [0x47] as Ins,
  i32LtU: [0x49] as Ins,
  i32GeU: [0x4f] as Ins,
  i32GtU: [0x4b] as Ins,
  i32Add: [0x6a] as Ins,
  i32Sub: [0x6b] as Ins,
  i32Mul: [0x6c] as Ins,
  i32And: [0x71] as Ins,
  i32Shl: [0x74] as Ins,
  i32ShrU: [0x76] as Ins,
  f32Add: [0x92] as Ins,
  f32Sub: [0x93] as Ins,
  f32Mul: [0x94] as Ins,
  v128Load: mem(simd(0x00), 2),
  v128Store: mem(simd(0x0b), 2),
  f32x4Splat: simd(0x13) as Ins,
  f32x4ExtractLane: (lane: number): Ins => [...simd(0x1f), lane],
  f32x4ReplaceLane: (lane: number): Ins => [...simd(0x20), lane],
  f32x4Add: simd(0xe4) as Ins,
  f32x4Mul: simd(0xe6) as Ins,
};

/** A function: typed parameters and locals by name, an optional result, a body. */
export interface WasmFunction {
  name: string;
  params: [string, WasmType][];
  locals?: [string, WasmType][];
  result?: WasmType;
  body: Ins[];
}

function section(id: number, payload: number[]): number[] {
  return [id, ...uleb(payload.length), ...payload];
}

const str = (s: string): number[] => [...uleb(s.length), ...Array.from(s, (c) => c.charCodeAt(0))];

function code(fn: WasmFunction): number[] {
  const index = new Map<string, number>();
  for (const [n] of [...fn.params, ...(fn.locals ?? [])]) {
    if (index.has(n)) throw new SparsetuneError('BAD_ARGUMENT', `wasm function ${fn.name}: local "${n}" declared twice`);
    index.set(n, index.size);
  }
  const locals = fn.locals ?? [];
  const decls = [...uleb(locals.length), ...locals.flatMap(([, t]) => [1, TYPE_CODE[t]])];
  const body: number[] = [];
  for (const ins of fn.body) {
    if (Array.isArray(ins)) {
      body.push(...ins);
      continue;
    }
    const i = index.get(ins.name);
    if (i === undefined) throw new SparsetuneError('BAD_ARGUMENT', `wasm function ${fn.name}: unknown local "${ins.name}"`);
    body.push({ get: 0x20, set: 0x21, tee: 0x22 }[ins.local], ...uleb(i));
  }
  const all = [...decls, ...body, 0x0b];
  return [...uleb(all.length), ...all];
}

/** Assemble a module exporting `fns` and importing `env.memory` (at least `minPages` pages). */
export function assemble(fns: WasmFunction[], minPages = 1): Uint8Array {
  const types = fns.flatMap((f) => [0x60, ...uleb(f.params.length), ...f.params.map(([, t]) => TYPE_CODE[t]), ...(f.result ? [1, TYPE_CODE[f.result]] : [0])]);
  return new Uint8Array([
    0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00,
    ...section(1, [...uleb(fns.length), ...types]),
    ...section(2, [1, ...str('env'), ...str('memory'), 0x02, 0x00, ...uleb(minPages)]),
    ...section(3, [...uleb(fns.length), ...fns.flatMap((_, i) => uleb(i))]),
    ...section(7, [...uleb(fns.length), ...fns.flatMap((f, i) => [...str(f.name), 0x00, ...uleb(i)])]),
    ...section(10, [...uleb(fns.length), ...fns.flatMap(code)]),
  ]);
}
