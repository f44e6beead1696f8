import { describe, expect, it } from 'vitest';
import { hashKeys, hashNormalAt } from '../../src/zeroth-order/hash-normal.js';
import { MemberScanner, memberThresholdBits } from '../../src/zeroth-order/member-scan.js';

/** The definition: offsets j with |x| <= h, in order (NaN never a member). */
function reference(data: Float32Array, off: number, len: number, h: number): number[] {
  const out: number[] = [];
  for (let j = 0; j < len; j++) if (Math.abs(data[off + j]) <= h) out.push(j);
  return out;
}

describe('MemberScanner', () => {
  const data = Float32Array.from({ length: 5000 }, (_, i) => 0.02 * Math.sin(i * 1.7));
  data.set([NaN, -NaN, Infinity, -Infinity, 0, -0, 1e-45, -1e-45, 0.004, -0.004], 100);
  const bits = new Int32Array(data.buffer);

  it('uses WebAssembly here, and both implementations list exactly the members |x| <= h, in order', () => {
    const wasm = new MemberScanner(1000);
    const js = new MemberScanner(1000, false);
    expect(wasm.usesWasm).toBe(true);
    expect(js.usesWasm).toBe(false);
    for (const h of [0, 1e-45, 1.5e-45, 0.004, Math.fround(0.004), 0.01, 1, 3.4e38, Infinity]) {
      // Lengths around the 4-wide SIMD rounds, and offsets that are not multiples of 4.
      for (const off of [0, 1, 97, 3999]) {
        for (const len of [0, 1, 2, 3, 4, 5, 7, 8, 999, 1000]) {
          if (off + len > data.length) continue;
          const expected = reference(data, off, len, h);
          for (const scanner of [wasm, js]) {
            const count = scanner.collect(bits, off, len, memberThresholdBits(h));
            expect(Array.from(scanner.members.subarray(0, count))).toEqual(expected);
          }
        }
      }
    }
  });

  it('lists nothing for a negative threshold and rejects a chunk longer than its buffer', () => {
    const scanner = new MemberScanner(64);
    expect(memberThresholdBits(-Infinity)).toBe(-1);
    expect(scanner.collect(bits, 100, 64, memberThresholdBits(-1))).toBe(0);
    expect(() => scanner.collect(bits, 0, 65, 0)).toThrow(RangeError);
  });

  it('computes the members\' hash normals bit-identically in wasm and JS, also near index 2^32', () => {
    const wasm = new MemberScanner(4096);
    const js = new MemberScanner(4096, false);
    const values = new Int32Array(4096);
    for (const [seed, stream] of [[1, 0], [77, 5]]) {
      const [kMul, kAdd] = hashKeys(seed, stream);
      for (const off of [0, 2 ** 31 - 1000, 2 ** 32 - 4096]) {
        const count = wasm.all(values, 0, 4096);
        js.all(values, 0, 4096);
        wasm.normals(count, off, kMul, kAdd);
        js.normals(count, off, kMul, kAdd);
        for (let q = 0; q < count; q++) expect(Object.is(wasm.z[q], js.z[q])).toBe(true);
        for (const q of [0, 1, 4095]) expect(wasm.z[q]).toBe(hashNormalAt(off + q, kMul, kAdd));
      }
    }
  });
});
