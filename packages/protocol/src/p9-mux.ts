import { ChunkQueue } from './chunks.js';
import { ProtocolError } from './errors.js';

/**
 * The 9P relay port (`roost.p9`, docs/PROTOCOL.md "The 9P relay port"): every
 * relayed volume's 9P byte stream, multiplexed in mux frames of
 * `[u32 len][u16 channel][u8 kind][u8 flags]` (little-endian) and `len` payload bytes.
 */

/** Bytes of a mux frame header. */
export const MUX_HEADER = 8;
/** The largest mux frame payload; a longer one is a broken peer. */
export const MUX_MAX_PAYLOAD = 1048576;
/** The largest channel id. */
export const MUX_MAX_CHANNEL = 0xffff;

/** Mux frame kinds. Unknown kinds are ignored by both sides. */
export const MuxKind = {
  /** Either direction: the next bytes of the channel's 9P stream (len > 0). */
  DATA: 0,
  /** Guest->host: the kernel closed the channel (unmount). Host->guest: the host ended it; the relay closes its end. */
  EOF: 1,
  /** Host->guest (channel 0): stop reading the guest's channels, then answer QUIESCED. */
  QUIESCE: 2,
  /** Guest->host: every DATA frame the relay sends before RESUME was sent before this one. */
  QUIESCED: 3,
  /** Host->guest: answer BARRIER_ACK once every DATA byte sent before it is in its channel socket. Payload (<= 8 bytes) echoed. */
  BARRIER: 4,
  /** Guest->host: the BARRIER's answer, with its payload. */
  BARRIER_ACK: 5,
  /** Host->guest: read the channels again (a no-op when not quiesced). */
  RESUME: 6,
  /** Guest->host, at each host connect: u8 quiesced, then the u16 ids of the open channels. */
  HELLO: 7,
} as const;
export type MuxKind = (typeof MuxKind)[keyof typeof MuxKind];

/** One decoded mux frame; `payload` is a copy. */
export interface MuxFrame {
  channel: number;
  kind: number;
  payload: Buffer;
}

const EMPTY = Buffer.alloc(0);

/** Encodes one mux frame. Throws RangeError on a bad channel or kind, or a payload over MUX_MAX_PAYLOAD (a bug on the sending side). */
export function encodeMuxFrame(channel: number, kind: number, payload: Uint8Array = EMPTY): Buffer {
  if (!Number.isInteger(channel) || channel < 0 || channel > MUX_MAX_CHANNEL) throw new RangeError(`invalid mux channel ${channel}`);
  if (!Number.isInteger(kind) || kind < 0 || kind > 0xff) throw new RangeError(`invalid mux kind ${kind}`);
  if (payload.length > MUX_MAX_PAYLOAD) throw new RangeError(`mux payload of ${payload.length} bytes exceeds ${MUX_MAX_PAYLOAD}`);
  const buf = Buffer.allocUnsafe(MUX_HEADER + payload.length);
  buf.writeUInt32LE(payload.length, 0);
  buf.writeUInt16LE(channel, 4);
  buf.writeUInt8(kind, 6);
  buf.writeUInt8(0, 7);
  buf.set(payload, MUX_HEADER);
  return buf;
}

/** The payload of a relay HELLO: whether it is quiesced and its open channels. Throws ProtocolError if malformed. */
export function decodeMuxHello(payload: Uint8Array): { quiesced: boolean; channels: number[] } {
  if (payload.length < 1 || payload.length % 2 !== 1 || payload[0]! > 1) {
    throw new ProtocolError(`malformed relay HELLO of ${payload.length} bytes`);
  }
  const b = Buffer.from(payload.buffer, payload.byteOffset, payload.length);
  const channels: number[] = [];
  for (let i = 1; i < b.length; i += 2) channels.push(b.readUInt16LE(i));
  return { quiesced: b[0] === 1, channels };
}

/**
 * Incremental mux frame parser. Feed it chunks split anywhere; it returns
 * whole frames and throws ProtocolError on a length over MUX_MAX_PAYLOAD
 * (the stream cannot be resynchronised: drop the connection). It holds at most
 * one maximal frame plus one chunk.
 */
export class MuxParser {
  #queue = new ChunkQueue();

  /** Bytes held that do not yet form a whole frame. */
  get buffered(): number {
    return this.#queue.buffered;
  }

  /** Adds bytes and returns every frame they complete. */
  feed(chunk: Uint8Array): MuxFrame[] {
    const q = this.#queue;
    q.push(chunk);
    const frames: MuxFrame[] = [];
    while (q.buffered >= MUX_HEADER) {
      const len = q.peek(MUX_HEADER).readUInt32LE(0);
      if (len > MUX_MAX_PAYLOAD) throw new ProtocolError(`mux frame length ${len} over ${MUX_MAX_PAYLOAD}`);
      if (q.buffered < MUX_HEADER + len) break;
      const whole = q.take(MUX_HEADER + len);
      frames.push({ channel: whole.readUInt16LE(4), kind: whole.readUInt8(6), payload: whole.subarray(MUX_HEADER) });
    }
    return frames;
  }

  /** Drops everything buffered (a new connection). */
  reset(): void {
    this.#queue.clear();
  }
}
