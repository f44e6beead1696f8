import { describe, expect, it } from 'vitest';
import { decodeBF16, decodeF16, encodeBF16, encodeF16 } from '../../src/io/half.js';

// Reference bit patterns produced by numpy (astype(float16)) and torch (to(bfloat16)).
const VALUES = [0.0, -0.0, 1.0, -2.5, 65504.0, 65520.0, 1e-8, 5.96e-8, 2.98e-8, 3.0e-8, 6.1e-5, 0.1, 0.3333333, 1e30, -1e-30,
  Infinity, 1.00048828125, 1.00146484375, 3.14159265];
const NUMPY_F16 = [0, 32768, 15360, 49408, 31743, 31744, 0, 1, 0, 1, 1023, 11878, 13653, 31744, 32768, 31744, 15360, 15362, 16968];
const TORCH_BF16 = [0, 32768, 16256, 49184, 18304, 18304, 12844, 13184, 13056, 13057, 14464, 15821, 16043, 29002, 36258, 32640, 16256,
  16256, 16457];

describe('half precision', () => {
  it('encodes like numpy (F16) and torch (BF16)', () => {
    const f = new Float32Array(VALUES);
    expect(Array.from(encodeF16(f))).toEqual(NUMPY_F16);
    expect(Array.from(encodeBF16(f))).toEqual(TORCH_BF16);
  });

  it('round-trips every non-NaN F16 bit pattern exactly', () => {
    const all = new Uint16Array(65536).map((_, i) => i);
    const back = encodeF16(decodeF16(all));
    let mismatches = 0;
    for (let h = 0; h < 65536; h++) {
      const isNaN = (h & 0x7c00) === 0x7c00 && (h & 0x3ff) !== 0;
      if (isNaN) expect(Number.isNaN(decodeF16(new Uint16Array([h]))[0])).toBe(true);
      else if (back[h] !== h) mismatches++;
    }
    expect(mismatches).toBe(0);
  });

  it('rounds exact midpoints between F16 neighbours to the even one', () => {
    // Midpoints of consecutive positive finite halves are exact in float32.
    const lo = new Uint16Array(0x7bff).map((_, i) => i);
    const a = decodeF16(lo);
    const b = decodeF16(lo.map((x) => x + 1));
    const mid = a.map((x, i) => (x + b[i]) / 2);
    const enc = encodeF16(mid);
    for (let i = 0; i < lo.length; i++) {
      const even = lo[i] % 2 === 0 ? lo[i] : lo[i] + 1;
      if (enc[i] !== even) throw new Error(`midpoint of ${lo[i]} and ${lo[i] + 1} -> ${enc[i]}`);
    }
  });

  it('BF16 decode is exact and NaN stays NaN', () => {
    const bits = new Uint16Array([0x3f80, 0xc000, 0x7f80, 0x0001]);
    expect(Array.from(decodeBF16(bits))).toEqual([1, -2, Infinity, 9.183549615799121e-41]);
    expect(Number.isNaN(decodeBF16(encodeBF16(new Float32Array([NaN])))[0])).toBe(true);
    const x = new Float32Array([1.5, -3.25, 1e-20, 1e20, 7]);
    const once = decodeBF16(encodeBF16(x));
    expect(Array.from(decodeBF16(encodeBF16(once)))).toEqual(Array.from(once));
    once.forEach((v, i) => expect(Math.abs(v - x[i]) / Math.abs(x[i])).toBeLessThan(1 / 256));
  });
});
