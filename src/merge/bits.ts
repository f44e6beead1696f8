/**
 * Bit-packed 0/1 masks: one bit per element, most significant bit first, each tensor
 * padded with zero bits to a whole byte. Element i lives in byte i >> 3 at bit 7 - (i & 7).
 * A set bit means "keep the weight".
 */
import { SparsetuneError } from '../errors.js';

/** Bytes needed to pack `numel` bits. */
export function packedLength(numel: number): number {
  return Math.ceil(numel / 8);
}

/** Pack a 0/1 (or boolean) array into bytes, MSB first; any nonzero element packs as 1. */
export function packBits(mask: ArrayLike<number | boolean>): Uint8Array {
  const n = mask.length;
  const out = new Uint8Array(packedLength(n));
  for (let i = 0; i < n; i++) {
    if (mask[i]) out[i >> 3] |= 0x80 >>> (i & 7);
  }
  return out;
}

/** Unpack the first `numel` bits of `bits` into one byte (0 or 1) per element. */
export function unpackBits(bits: Uint8Array, numel: number): Uint8Array {
  if (bits.length < packedLength(numel)) {
    throw new SparsetuneError('BAD_ARGUMENT', `unpackBits: ${numel} elements need ${packedLength(numel)} bytes, got ${bits.length}`);
  }
  const out = new Uint8Array(numel);
  for (let i = 0; i < numel; i++) out[i] = (bits[i >> 3] >>> (7 - (i & 7))) & 1;
  return out;
}

/** True when every padding bit after element `numel` in the last byte is zero. */
export function paddingIsClear(bits: Uint8Array, numel: number): boolean {
  const tail = numel & 7;
  if (tail === 0) return true;
  return (bits[bits.length - 1] & (0xff >>> tail)) === 0;
}

/** Sorted flat indices of the elements whose bit is 0 (the weights a mask removes). */
export function clearedIndices(bits: Uint8Array, numel: number): Int32Array {
  let count = 0;
  for (let i = 0; i < numel; i++) if (((bits[i >> 3] >>> (7 - (i & 7))) & 1) === 0) count++;
  const out = new Int32Array(count);
  let k = 0;
  for (let i = 0; i < numel; i++) if (((bits[i >> 3] >>> (7 - (i & 7))) & 1) === 0) out[k++] = i;
  return out;
}

/** Number of set bits (kept elements) among the first `numel`. */
export function countSetBits(bits: Uint8Array, numel: number): number {
  let count = 0;
  for (let i = 0; i < numel; i++) count += (bits[i >> 3] >>> (7 - (i & 7))) & 1;
  return count;
}
