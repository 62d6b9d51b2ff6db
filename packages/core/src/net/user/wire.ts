import { internetChecksum, onesComplementSum, pseudoHeaderSum } from './checksum.js';

/*
 * Frame layouts of the user-mode stack. Frames to the guest are built in one
 * buffer together with the 4-byte big-endian length prefix of QEMU's stream
 * netdev, so each is one write: [prefix 4][Ethernet 14][IPv4 20][L4 ...].
 */

export const LENGTH_PREFIX = 4;
export const ETH_HEADER = 14;
export const IP_HEADER = 20;
/** Where the L4 header starts in a frame buffer we build (prefix included). */
export const L4_OFFSET = LENGTH_PREFIX + ETH_HEADER + IP_HEADER;
/** The largest Ethernet frame (without prefix) an IPv4 packet can need. */
export const MAX_FRAME = 65535 + ETH_HEADER;

export const ETHERTYPE_IPV4 = 0x0800;
export const ETHERTYPE_ARP = 0x0806;
export const PROTO_ICMP = 1;
export const PROTO_TCP = 6;
export const PROTO_UDP = 17;

export const TCP_FIN = 0x01;
export const TCP_SYN = 0x02;
export const TCP_RST = 0x04;
export const TCP_PSH = 0x08;
export const TCP_ACK = 0x10;

export const BROADCAST_MAC = Buffer.from([0xff, 0xff, 0xff, 0xff, 0xff, 0xff]);

/** `52:55:0a:00:02:02` -> 6 bytes; throws on anything else. */
export function parseMac(text: string): Buffer {
  const m = /^([0-9a-f]{2}):([0-9a-f]{2}):([0-9a-f]{2}):([0-9a-f]{2}):([0-9a-f]{2}):([0-9a-f]{2})$/i.exec(text);
  if (!m) throw new Error(`"${text}" is not a MAC address (like 52:54:00:12:34:56)`);
  return Buffer.from(m.slice(1).map((h) => parseInt(h, 16)));
}

/** An IPv4 packet inside a frame from the guest, checked (offsets into the frame buffer). */
export interface Ipv4View {
  src: number;
  dst: number;
  protocol: number;
  /** Start of the IP header. */
  ipStart: number;
  /** Start and end of the payload (end from the header's total length, so Ethernet padding is cut). */
  l4Start: number;
  l4End: number;
  /** Fragment: more-fragments set or a non-zero offset. */
  fragment: boolean;
}

/** Checks an IPv4 header (version, lengths, checksum) at `start`; null when it is not a packet we may read. */
export function parseIpv4(frame: Buffer, start: number): Ipv4View | null {
  if (frame.length - start < IP_HEADER) return null;
  const vihl = frame[start]!;
  if (vihl >> 4 !== 4) return null;
  const headerLength = (vihl & 0x0f) * 4;
  if (headerLength < IP_HEADER) return null;
  const totalLength = frame.readUInt16BE(start + 2);
  if (totalLength < headerLength || start + totalLength > frame.length) return null;
  if (onesComplementSum(frame, start, start + headerLength) !== 0xffff) return null;
  const fragmentField = frame.readUInt16BE(start + 6);
  return {
    src: frame.readUInt32BE(start + 12),
    dst: frame.readUInt32BE(start + 16),
    protocol: frame[start + 9]!,
    ipStart: start,
    l4Start: start + headerLength,
    l4End: start + totalLength,
    fragment: (fragmentField & 0x3fff) !== 0,
  };
}

/** True when the TCP/UDP checksum of the L4 bytes (pseudo header included) is right. */
export function l4ChecksumValid(frame: Buffer, ip: Ipv4View): boolean {
  const initial = pseudoHeaderSum(ip.src, ip.dst, ip.protocol, ip.l4End - ip.l4Start);
  return onesComplementSum(frame, ip.l4Start, ip.l4End, initial) === 0xffff;
}

/**
 * Builds frames to the guest: Ethernet from the gateway's MAC to the
 * guest's (as last learned), IPv4 with DF, TTL 64 and a rolling ID.
 */
export class FrameBuilder {
  #ipId = 1;

  constructor(
    public guestMac: Buffer,
    readonly gatewayMac: Buffer,
  ) {}

  /** A frame buffer (length prefix, Ethernet and IPv4 headers written) with room for `l4Length` bytes at L4_OFFSET. */
  ipv4(src: number, dst: number, protocol: number, l4Length: number, dontFragment = true): Buffer {
    const frame = Buffer.allocUnsafe(L4_OFFSET + l4Length);
    frame.writeUInt32BE(ETH_HEADER + IP_HEADER + l4Length, 0);
    this.#ethernet(frame, this.guestMac, ETHERTYPE_IPV4);
    this.#ipHeader(frame, src, dst, protocol, IP_HEADER + l4Length, dontFragment ? 0x4000 : 0);
    return frame;
  }

  /** A frame with a non-IPv4 payload (ARP), `payloadLength` bytes at LENGTH_PREFIX + ETH_HEADER. */
  ethernet(dstMac: Buffer, ethertype: number, payloadLength: number): Buffer {
    const frame = Buffer.alloc(LENGTH_PREFIX + ETH_HEADER + payloadLength);
    frame.writeUInt32BE(ETH_HEADER + payloadLength, 0);
    this.#ethernet(frame, dstMac, ethertype);
    return frame;
  }

  /**
   * Fragments of one IPv4 packet whose payload (`l4`, checksum already in
   * it) is too big for the guest's MTU: the only case we fragment is a
   * large UDP datagram from the host.
   */
  fragments(src: number, dst: number, protocol: number, l4: Buffer, mtu: number): Buffer[] {
    const step = Math.floor((mtu - IP_HEADER) / 8) * 8;
    const id = this.#nextId();
    const out: Buffer[] = [];
    for (let offset = 0; offset < l4.length; offset += step) {
      const piece = l4.subarray(offset, Math.min(offset + step, l4.length));
      const frame = Buffer.allocUnsafe(L4_OFFSET + piece.length);
      frame.writeUInt32BE(ETH_HEADER + IP_HEADER + piece.length, 0);
      this.#ethernet(frame, this.guestMac, ETHERTYPE_IPV4);
      const more = offset + piece.length < l4.length ? 0x2000 : 0;
      this.#ipHeader(frame, src, dst, protocol, IP_HEADER + piece.length, more | (offset / 8), id);
      piece.copy(frame, L4_OFFSET);
      out.push(frame);
    }
    return out;
  }

  #ethernet(frame: Buffer, dstMac: Buffer, ethertype: number): void {
    dstMac.copy(frame, LENGTH_PREFIX);
    this.gatewayMac.copy(frame, LENGTH_PREFIX + 6);
    frame.writeUInt16BE(ethertype, LENGTH_PREFIX + 12);
  }

  #ipHeader(frame: Buffer, src: number, dst: number, protocol: number, totalLength: number, fragmentField: number, id = this.#nextId()): void {
    const o = LENGTH_PREFIX + ETH_HEADER;
    frame[o] = 0x45;
    frame[o + 1] = 0;
    frame.writeUInt16BE(totalLength, o + 2);
    frame.writeUInt16BE(id, o + 4);
    frame.writeUInt16BE(fragmentField, o + 6);
    frame[o + 8] = 64;
    frame[o + 9] = protocol;
    frame.writeUInt16BE(0, o + 10);
    frame.writeUInt32BE(src >>> 0, o + 12);
    frame.writeUInt32BE(dst >>> 0, o + 16);
    frame.writeUInt16BE(internetChecksum(frame, o, o + IP_HEADER), o + 10);
  }

  #nextId(): number {
    const id = this.#ipId;
    this.#ipId = (this.#ipId + 1) & 0xffff;
    return id;
  }
}

/** Fills in the TCP or UDP checksum of a frame built by FrameBuilder.ipv4 (the L4 checksum field must be 0). */
export function finishL4Checksum(frame: Buffer, src: number, dst: number, protocol: number, checksumOffset: number): void {
  const end = frame.length;
  const initial = pseudoHeaderSum(src, dst, protocol, end - L4_OFFSET);
  let sum = internetChecksum(frame, L4_OFFSET, end, initial);
  // UDP sends a computed 0 as 0xffff (0 means "no checksum").
  if (sum === 0 && protocol === PROTO_UDP) sum = 0xffff;
  frame.writeUInt16BE(sum, L4_OFFSET + checksumOffset);
}

/**
 * Splits QEMU's stream netdev bytes into frames (4-byte big-endian length,
 * then the frame). Frames inside one chunk are handed out as views; only a
 * frame that spans chunks is copied, once, into a buffer of its size.
 */
export class FrameReader {
  readonly #header = Buffer.alloc(LENGTH_PREFIX);
  #headerFill = 0;
  #frame: Buffer | null = null;
  #frameFill = 0;

  constructor(readonly maxFrame: number) {}

  /**
   * Feeds a chunk; onFrame gets every complete frame (and returns false to
   * stop reading this chunk). Returns the offending length when a prefix
   * exceeds maxFrame: the stream cannot be trusted after that.
   */
  push(chunk: Buffer, onFrame: (frame: Buffer) => boolean): number | null {
    let offset = 0;
    const end = chunk.length;
    while (offset < end) {
      if (this.#frame !== null) {
        const frame = this.#frame;
        const take = Math.min(frame.length - this.#frameFill, end - offset);
        chunk.copy(frame, this.#frameFill, offset, offset + take);
        this.#frameFill += take;
        offset += take;
        if (this.#frameFill < frame.length) return null;
        this.#frame = null;
        if (!onFrame(frame)) return null;
        continue;
      }
      let length: number;
      if (this.#headerFill > 0 || end - offset < LENGTH_PREFIX) {
        const take = Math.min(LENGTH_PREFIX - this.#headerFill, end - offset);
        chunk.copy(this.#header, this.#headerFill, offset, offset + take);
        this.#headerFill += take;
        offset += take;
        if (this.#headerFill < LENGTH_PREFIX) return null;
        this.#headerFill = 0;
        length = this.#header.readUInt32BE(0);
      } else {
        length = chunk.readUInt32BE(offset);
        offset += LENGTH_PREFIX;
      }
      if (length > this.maxFrame) return length;
      if (end - offset >= length) {
        const frame = chunk.subarray(offset, offset + length);
        offset += length;
        if (!onFrame(frame)) return null;
      } else {
        this.#frame = Buffer.allocUnsafe(length);
        this.#frameFill = 0;
      }
    }
    return null;
  }

  /** Forgets a partial frame (a new link). */
  reset(): void {
    this.#headerFill = 0;
    this.#frame = null;
    this.#frameFill = 0;
  }
}
