/**
 * The frames the user-mode stack answers with by itself (ARP, ICMP echo and
 * unreachable, UDP datagrams to the guest): pure builders on a FrameBuilder,
 * so UserNet only decides when to send them.
 */
import { onesComplementSum, internetChecksum, pseudoHeaderSum } from './checksum.js';
import { DNS, GATEWAY, GUEST, USER_NET } from './addressing.js';
import {
  ETH_HEADER,
  ETHERTYPE_ARP,
  ETHERTYPE_IPV4,
  finishL4Checksum,
  L4_OFFSET,
  LENGTH_PREFIX,
  PROTO_ICMP,
  PROTO_UDP,
  type FrameBuilder,
  type Ipv4View,
} from './wire.js';

/** An ARP request from the guest, checked for shape (Ethernet/IPv4 addresses). */
export interface ArpRequest {
  op: number;
  senderIp: number;
  targetIp: number;
  /** Offset of the sender's MAC in the frame. */
  senderMacOffset: number;
}

/** Reads an ARP packet about IPv4 over Ethernet; null for anything else. */
export function parseArp(frame: Buffer): ArpRequest | null {
  const a = ETH_HEADER;
  if (frame.length < a + 28) return null;
  if (frame.readUInt16BE(a) !== 1 || frame.readUInt16BE(a + 2) !== ETHERTYPE_IPV4 || frame[a + 4] !== 6 || frame[a + 5] !== 4) return null;
  return { op: frame.readUInt16BE(a + 6), senderIp: frame.readUInt32BE(a + 14), targetIp: frame.readUInt32BE(a + 24), senderMacOffset: a + 8 };
}

/** Our answer to an ARP request for the gateway or DNS address; null when the request is not for us. */
export function arpReply(frames: FrameBuilder, frame: Buffer, request: ArpRequest): Buffer | null {
  const { op, senderIp, targetIp, senderMacOffset } = request;
  if (op !== 1 || (targetIp !== GATEWAY && targetIp !== DNS)) return null;
  const senderMac = frame.subarray(senderMacOffset, senderMacOffset + 6);
  const reply = frames.ethernet(senderMac, ETHERTYPE_ARP, 28);
  const r = LENGTH_PREFIX + ETH_HEADER;
  reply.writeUInt16BE(1, r);
  reply.writeUInt16BE(ETHERTYPE_IPV4, r + 2);
  reply[r + 4] = 6;
  reply[r + 5] = 4;
  reply.writeUInt16BE(2, r + 6);
  frames.gatewayMac.copy(reply, r + 8);
  reply.writeUInt32BE(targetIp, r + 14);
  senderMac.copy(reply, r + 18);
  reply.writeUInt32BE(senderIp, r + 24);
  return reply;
}

/** The echo reply to a valid ICMP echo request to the gateway or DNS address; null for any other ICMP packet. */
export function icmpEchoReply(frames: FrameBuilder, frame: Buffer, ip: Ipv4View): Buffer | null {
  const length = ip.l4End - ip.l4Start;
  if (length < 8 || onesComplementSum(frame, ip.l4Start, ip.l4End) !== 0xffff) return null;
  // Echo requests to the gateway and DNS addresses; nothing else is ours to answer.
  if (frame[ip.l4Start] !== 8 || frame[ip.l4Start + 1] !== 0 || (ip.dst !== GATEWAY && ip.dst !== DNS)) return null;
  const reply = frames.ipv4(ip.dst, GUEST, PROTO_ICMP, length, false);
  frame.copy(reply, L4_OFFSET, ip.l4Start, ip.l4End);
  reply[L4_OFFSET] = 0;
  reply.writeUInt16BE(0, L4_OFFSET + 2);
  reply.writeUInt16BE(internetChecksum(reply, L4_OFFSET, reply.length), L4_OFFSET + 2);
  return reply;
}

/** Destination unreachable (type 3) about the guest's packet: code 13 administratively prohibited, 1 host, 3 port unreachable. */
export function icmpUnreachable(frames: FrameBuilder, frame: Buffer, ip: Ipv4View, code: number): Buffer {
  const quoted = Math.min(ip.l4End, ip.l4Start + 8) - ip.ipStart;
  const reply = frames.ipv4(GATEWAY, GUEST, PROTO_ICMP, 8 + quoted, false);
  reply.fill(0, L4_OFFSET, L4_OFFSET + 8);
  reply[L4_OFFSET] = 3;
  reply[L4_OFFSET + 1] = code;
  frame.copy(reply, L4_OFFSET + 8, ip.ipStart, ip.ipStart + quoted);
  reply.writeUInt16BE(internetChecksum(reply, L4_OFFSET, reply.length), L4_OFFSET + 2);
  return reply;
}

/** The frames of one UDP datagram to the guest: one, or fragments when it is larger than the MTU allows; none past IPv4's limit. */
export function udpFrames(frames: FrameBuilder, src: number, srcPort: number, dst: number, dstPort: number, payload: Buffer): Buffer[] {
  const l4Length = 8 + payload.length;
  if (l4Length > 65535 - 20) return [];
  if (20 + l4Length <= USER_NET.mtu) {
    const frame = frames.ipv4(src, dst, PROTO_UDP, l4Length, false);
    frame.writeUInt16BE(srcPort, L4_OFFSET);
    frame.writeUInt16BE(dstPort, L4_OFFSET + 2);
    frame.writeUInt16BE(l4Length, L4_OFFSET + 4);
    frame.writeUInt16BE(0, L4_OFFSET + 6);
    payload.copy(frame, L4_OFFSET + 8);
    finishL4Checksum(frame, src, dst, PROTO_UDP, 6);
    return [frame];
  }
  const datagram = Buffer.alloc(l4Length);
  datagram.writeUInt16BE(srcPort, 0);
  datagram.writeUInt16BE(dstPort, 2);
  datagram.writeUInt16BE(l4Length, 4);
  payload.copy(datagram, 8);
  const sum = internetChecksum(datagram, 0, l4Length, pseudoHeaderSum(src, dst, PROTO_UDP, l4Length));
  datagram.writeUInt16BE(sum === 0 ? 0xffff : sum, 6);
  return frames.fragments(src, dst, PROTO_UDP, datagram, USER_NET.mtu);
}
