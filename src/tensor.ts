/** Host-side tensors: the JS-owned buffers that hold weights, inputs and results. */
/** `f16`: IEEE half floats as raw bits (Uint16Array); only low-precision weight storage uses it. */
export type DType = 'f32' | 'f64' | 'i32' | 'i64' | 'bool' | 'u8' | 'f16';

export type TypedArrayFor<D extends DType> = D extends 'f32'
  ? Float32Array
  : D extends 'f64'
    ? Float64Array
    : D extends 'i32'
      ? Int32Array
      : D extends 'i64'
        ? BigInt64Array
        : D extends 'f16'
          ? Uint16Array
          : Uint8Array;

export type AnyTypedArray = Float32Array | Float64Array | Int32Array | BigInt64Array | Uint8Array | Uint16Array;

/** A dense row-major tensor in JS memory. */
export interface HostTensor<D extends DType = DType> {
  dtype: D;
  shape: number[];
  data: TypedArrayFor<D>;
}

export function numel(shape: readonly number[]): number {
  let n = 1;
  for (const d of shape) n *= d;
  return n;
}

export function f32(shape: number[], data?: Float32Array | number[]): HostTensor<'f32'> {
  const n = numel(shape);
  const arr = data instanceof Float32Array ? data : data ? Float32Array.from(data) : new Float32Array(n);
  if (arr.length !== n) throw new Error(`f32(): shape [${shape}] needs ${n} values, got ${arr.length}`);
  return { dtype: 'f32', shape, data: arr };
}

export function i64(shape: number[], data: ArrayLike<number> | BigInt64Array): HostTensor<'i64'> {
  const arr = data instanceof BigInt64Array ? data : BigInt64Array.from(Array.from(data, (v) => BigInt(v)));
  if (arr.length !== numel(shape)) throw new Error(`i64(): shape [${shape}] needs ${numel(shape)} values, got ${arr.length}`);
  return { dtype: 'i64', shape, data: arr };
}
