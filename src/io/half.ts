/**
 * Conversions between IEEE half precision (F16), bfloat16 (BF16) and float32.
 * Encoders round to nearest, ties to even (what PyTorch and numpy do), so a round trip
 * through these functions matches files written by the Python tooling bit for bit.
 */

const f32Scratch = new Float32Array(1);
const u32Scratch = new Uint32Array(f32Scratch.buffer);

let f16Table: Float32Array | null = null;

/** All 65,536 half values as float32, built once: a table lookup beats bit twiddling per element. */
function halfTable(): Float32Array {
  if (f16Table) return f16Table;
  const table = new Float32Array(65536);
  const bits = new Uint32Array(table.buffer);
  for (let h = 0; h < 65536; h++) {
    const sign = (h & 0x8000) << 16;
    const exp = (h >>> 10) & 0x1f;
    const mant = h & 0x3ff;
    if (exp === 0x1f) {
      bits[h] = sign | 0x7f800000 | (mant << 13); // inf / NaN (payload kept)
    } else if (exp !== 0) {
      bits[h] = sign | ((exp + 112) << 23) | (mant << 13);
    } else {
      // zero or subnormal: mant * 2^-24, exact in float32
      table[h] = (mant / 16777216) * (sign ? -1 : 1);
      if (mant === 0) bits[h] = sign; // keep -0
    }
  }
  f16Table = table;
  return table;
}

/** Decode F16 bit patterns to float32 values. */
export function decodeF16(u16: Uint16Array): Float32Array {
  const table = halfTable();
  const out = new Float32Array(u16.length);
  for (let i = 0; i < u16.length; i++) out[i] = table[u16[i]];
  return out;
}

/** Decode BF16 bit patterns to float32 values (exact: BF16 is the top half of a float32). */
export function decodeBF16(u16: Uint16Array): Float32Array {
  const out = new Float32Array(u16.length);
  const bits = new Uint32Array(out.buffer);
  for (let i = 0; i < u16.length; i++) bits[i] = u16[i] << 16;
  return out;
}

/** Round one float32 bit pattern to the nearest F16 bit pattern (ties to even). */
function f32BitsToF16(x: number): number {
  const sign = (x >>> 16) & 0x8000;
  const exp = (x >>> 23) & 0xff;
  const mant = x & 0x7fffff;
  if (exp === 0xff) return sign | 0x7c00 | (mant ? 0x200 | (mant >>> 13) : 0);
  const e = exp - 112; // rebias 127 -> 15
  if (e >= 0x1f) return sign | 0x7c00;
  if (e <= 0) {
    // Result is subnormal (or zero): value in units of 2^-24 is m >> shift.
    const shift = 14 - e;
    if (shift > 24) return sign;
    const m = mant | 0x800000;
    let q = m >>> shift;
    const rem = m & ((1 << shift) - 1);
    const half = 1 << (shift - 1);
    if (rem > half || (rem === half && (q & 1))) q++;
    return sign | q;
  }
  let q = (e << 10) | (mant >>> 13);
  const rem = mant & 0x1fff;
  // A carry out of the mantissa correctly bumps the exponent (up to infinity).
  if (rem > 0x1000 || (rem === 0x1000 && (q & 1))) q++;
  return sign | q;
}

/** Encode float32 values as F16 bit patterns, rounding to nearest even. */
export function encodeF16(f32: Float32Array): Uint16Array {
  const bits = new Uint32Array(f32.buffer, f32.byteOffset, f32.length);
  const out = new Uint16Array(f32.length);
  for (let i = 0; i < f32.length; i++) out[i] = f32BitsToF16(bits[i]);
  return out;
}

/** Encode float32 values as BF16 bit patterns, rounding to nearest even; NaN stays NaN. */
export function encodeBF16(f32: Float32Array): Uint16Array {
  const bits = new Uint32Array(f32.buffer, f32.byteOffset, f32.length);
  const out = new Uint16Array(f32.length);
  for (let i = 0; i < f32.length; i++) {
    const x = bits[i];
    if ((x & 0x7f800000) === 0x7f800000 && (x & 0x7fffff) !== 0) {
      out[i] = (x >>> 16) | 0x40; // quiet NaN; plain truncation could turn it into inf
    } else {
      out[i] = ((x + 0x7fff + ((x >>> 16) & 1)) >>> 16) & 0xffff;
    }
  }
  return out;
}

/** Round a single number to F16 and back (handy in tests and quantization checks). */
export function roundToF16(v: number): number {
  f32Scratch[0] = v;
  return halfTable()[f32BitsToF16(u32Scratch[0])];
}
