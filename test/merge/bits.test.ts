import { describe, expect, it } from 'vitest';
import { clearedIndices, countSetBits, packBits, packedLength, paddingIsClear, unpackBits } from '../../src/merge/bits.js';
import { rng } from './helpers.js';

describe('bit packing', () => {
  it('packs MSB first with zero padding per tensor', () => {
    expect(Array.from(packBits([1, 0, 0, 0, 0, 0, 0, 0, 1]))).toEqual([0x80, 0x80]);
    expect(Array.from(packBits([0, 1, 1, 0, 0, 0, 0, 1]))).toEqual([0b01100001]);
    expect(Array.from(packBits([true, false, true]))).toEqual([0b10100000]);
    expect(packedLength(0)).toBe(0);
    expect(packedLength(9)).toBe(2);
  });

  it('round-trips every size from 1 to 70 (most not divisible by 8)', () => {
    const r = rng(11);
    for (let n = 1; n <= 70; n++) {
      const mask = Uint8Array.from({ length: n }, () => (r() < 0.5 ? 1 : 0));
      const packed = packBits(mask);
      expect(packed.length).toBe(Math.ceil(n / 8));
      expect(paddingIsClear(packed, n)).toBe(true);
      expect(unpackBits(packed, n)).toEqual(mask);
      expect(countSetBits(packed, n)).toBe(mask.reduce((a, b) => a + b, 0));
      expect(Array.from(clearedIndices(packed, n))).toEqual([...mask.keys()].filter((i) => mask[i] === 0));
    }
  });

  it('detects set padding bits and short buffers', () => {
    const packed = packBits([1, 1, 1]);
    expect(paddingIsClear(packed, 3)).toBe(true);
    packed[0] |= 0b00000001;
    expect(paddingIsClear(packed, 3)).toBe(false);
    expect(() => unpackBits(new Uint8Array(1), 9)).toThrow(/need 2 bytes/);
  });
});
