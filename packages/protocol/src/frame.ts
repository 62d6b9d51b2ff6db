import { HEADER_SIZE, LENGTH_OVERHEAD, MAX_FRAME_LENGTH, MAX_PAYLOAD } from './constants.js';
import { ChunkQueue } from './chunks.js';
import { ProtocolError } from './errors.js';

/** One decoded frame. `payload` is a view that stays valid (it is copied out of the decoder's buffer). */
export interface Frame {
  stream: number;
  type: number;
  payload: Uint8Array;
}

/** Encodes one frame. Throws RangeError on a payload over MAX_PAYLOAD: that is a bug on the sending side. */
export function encodeFrame(stream: number, type: number, payload: Uint8Array = EMPTY): Buffer {
  if (payload.length > MAX_PAYLOAD) throw new RangeError(`frame payload of ${payload.length} bytes exceeds ${MAX_PAYLOAD}`);
  if (!Number.isInteger(stream) || stream < 0 || stream > 0xffffffff) throw new RangeError(`invalid stream id ${stream}`);
  if (!Number.isInteger(type) || type < 0 || type > 0xff) throw new RangeError(`invalid frame type ${type}`);
  const buf = Buffer.allocUnsafe(HEADER_SIZE + payload.length);
  buf.writeUInt32BE(LENGTH_OVERHEAD + payload.length, 0);
  buf.writeUInt32BE(stream, 4);
  buf.writeUInt8(type, 8);
  buf.set(payload, HEADER_SIZE);
  return buf;
}

const EMPTY = new Uint8Array(0);

/**
 * Incremental frame decoder. Feed it chunks split anywhere; it yields whole
 * frames and throws ProtocolError on a length outside the protocol's bounds.
 * It never buffers more than one maximal frame plus one chunk.
 */
export class FrameDecoder {
  #queue = new ChunkQueue();

  /** Bytes held that do not yet form a whole frame. */
  get buffered(): number {
    return this.#queue.buffered;
  }

  /** Adds bytes and returns every frame they complete. */
  push(chunk: Uint8Array): Frame[] {
    const q = this.#queue;
    q.push(chunk);
    const frames: Frame[] = [];
    while (q.buffered >= 4) {
      const length = q.peek(4).readUInt32BE(0);
      if (length < LENGTH_OVERHEAD || length > MAX_FRAME_LENGTH) {
        throw new ProtocolError(`frame length ${length} outside [${LENGTH_OVERHEAD}, ${MAX_FRAME_LENGTH}]`);
      }
      if (q.buffered < 4 + length) break;
      const whole = q.take(4 + length);
      frames.push({
        stream: whole.readUInt32BE(4),
        type: whole.readUInt8(8),
        payload: whole.subarray(HEADER_SIZE),
      });
    }
    return frames;
  }

  /** Drops everything buffered (used when a new session starts). */
  reset(): void {
    this.#queue.clear();
  }
}
