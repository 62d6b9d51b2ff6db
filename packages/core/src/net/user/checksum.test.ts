import { randomBytes } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { internetChecksum, onesComplementSum, pseudoHeaderSum } from './checksum.js';

/** RFC 1071 the slow way. */
function reference(buf: Uint8Array, start: number, end: number, initial = 0): number {
  let sum = initial;
  for (let i = start; i < end; i += 2) sum += (buf[i]! << 8) | (i + 1 < end ? buf[i + 1]! : 0);
  while (sum > 0xffff) sum = (sum & 0xffff) + (sum >>> 16);
  return sum;
}

describe('onesComplementSum', () => {
  it('matches RFC 1071 at every alignment and length', () => {
    const backing = randomBytes(70_000);
    for (let offset = 0; offset < 8; offset++) {
      const buf = backing.subarray(offset);
      for (const [start, length] of [
        [0, 0],
        [0, 1],
        [1, 2],
        [3, 5],
        [2, 20],
        [1, 1501],
        [5, 65_535],
        [0, 65_536],
        [7, 40],
        [6, 3],
      ] as const) {
        expect(onesComplementSum(buf, start, start + length, 0x1234)).toBe(reference(buf, start, start + length, 0x1234));
      }
    }
    // All ones and all zeros.
    const ff = Buffer.alloc(65_536, 0xff);
    expect(onesComplementSum(ff, 1, 65_535)).toBe(reference(ff, 1, 65_535));
    expect(onesComplementSum(Buffer.alloc(100), 0, 100)).toBe(0);
  });

  it('makes checksums that verify', () => {
    const header = Buffer.from('450000730000400040110000c0a80001c0a800c7', 'hex');
    header.writeUInt16BE(internetChecksum(header, 0, 20), 10);
    // The classic example (RFC 1071 / Wikipedia): 0xb861.
    expect(header.readUInt16BE(10)).toBe(0xb861);
    expect(onesComplementSum(header, 0, 20)).toBe(0xffff);
    expect(pseudoHeaderSum(0xc0a80001, 0xc0a800c7, 17, 8)).toBe(reference(Buffer.from('c0a80001c0a800c700110008', 'hex'), 0, 12));
  });
});
