/*
 * The Internet checksum (RFC 1071), the hot path of the user-mode stack:
 * every segment in both directions is summed once (the stream netdev has no
 * checksum offload). The bulk is summed as little-endian 32-bit words
 * through a Uint32Array view from the first 4-byte aligned byte: one's
 * complement addition does not care about byte order or where the pairing
 * starts, up to a byte swap of the folded result (256 * 256 = 1 mod 65535),
 * so only the few bytes before the aligned part and after it are added one
 * by one. A double accumulator holds 2^21 words before it could lose bits,
 * far past the 64 KiB of an IP packet.
 */

/** The 16-bit one's complement sum of buf[start, end) plus `initial`, folded, not complemented. */
export function onesComplementSum(buf: Uint8Array, start: number, end: number, initial = 0): number {
  const lead = Math.min((4 - ((buf.byteOffset + start) & 3)) & 3, Math.max(0, end - start));
  // Bytes at even distance from `start` are high bytes of their 16-bit word.
  let edges = initial;
  for (let k = 0; k < lead; k++) edges += (k & 1) === 0 ? buf[start + k]! << 8 : buf[start + k]!;
  const bodyStart = start + lead;
  const words = Math.max(0, end - bodyStart) >>> 2;
  let body = 0;
  if (words > 0) {
    const view = new Uint32Array(buf.buffer, buf.byteOffset + bodyStart, words);
    for (let i = 0; i < words; i++) body += view[i]!;
    body = fold(body);
    // Little-endian words read each pair swapped; an odd lead shifted the pairing, which swaps it back.
    if ((lead & 1) === 0) body = swap16(body);
  }
  for (let p = bodyStart + words * 4; p < end; p++) edges += ((p - start) & 1) === 0 ? buf[p]! << 8 : buf[p]!;
  return fold(edges + body);
}

/** The checksum field value for buf[start, end): the complemented sum. */
export function internetChecksum(buf: Uint8Array, start: number, end: number, initial = 0): number {
  return ~onesComplementSum(buf, start, end, initial) & 0xffff;
}

/** The folded sum of the TCP/UDP pseudo header (addresses unsigned). */
export function pseudoHeaderSum(src: number, dst: number, protocol: number, length: number): number {
  return fold((src >>> 16) + (src & 0xffff) + (dst >>> 16) + (dst & 0xffff) + protocol + length);
}

function fold(sum: number): number {
  while (sum > 0xffff) sum = (sum % 0x10000) + Math.floor(sum / 0x10000);
  return sum;
}

function swap16(v: number): number {
  return ((v & 0xff) << 8) | (v >>> 8);
}
