/**
 * Splitting a byte stream into 9P frames, bounded: a frame whose size field
 * is under the header size or over the negotiated msize is refused before
 * any of it is buffered, so a peer can make the reader hold at most one
 * maximal frame plus one chunk.
 */
import { HEADER_SIZE } from './constants.js';
import { DecodeError } from './wire.js';

/** An incremental frame splitter. */
export class FrameReader {
  #chunks: Buffer[] = [];
  #buffered = 0;

  /** @param maxFrame the largest frame accepted (msize once negotiated); may be changed between pushes. */
  constructor(public maxFrame: number) {}

  /** Bytes held that do not yet form a whole frame. */
  get buffered(): number {
    return this.#buffered;
  }

  /** Takes out the bytes of the incomplete frame held (to save a session), leaving the reader empty. */
  takePartial(): Buffer {
    const bytes = Buffer.concat(this.#chunks);
    this.#chunks = [];
    this.#buffered = 0;
    return bytes;
  }

  /** Adds bytes and returns the frames they complete. Throws DecodeError on a size out of bounds. */
  push(chunk: Buffer): Buffer[] {
    if (chunk.length > 0) {
      this.#chunks.push(chunk);
      this.#buffered += chunk.length;
    }
    const frames: Buffer[] = [];
    for (;;) {
      if (this.#buffered < 4) return frames;
      const size = this.#peekSize();
      if (size < HEADER_SIZE) throw new DecodeError(`frame size ${size} is under the header size`);
      if (size > this.maxFrame) throw new DecodeError(`frame size ${size} is over msize ${this.maxFrame}`);
      if (this.#buffered < size) return frames;
      frames.push(this.#take(size));
    }
  }

  #peekSize(): number {
    const first = this.#chunks[0]!;
    if (first.length >= 4) return first.readUInt32LE(0);
    const head = Buffer.concat(this.#chunks, Math.min(4, this.#buffered)).subarray(0, 4);
    this.#chunks = [Buffer.concat(this.#chunks)];
    return head.readUInt32LE(0);
  }

  #take(size: number): Buffer {
    const first = this.#chunks[0]!;
    let frame: Buffer;
    if (first.length >= size) {
      // A copy, so one frame kept by a slow request does not pin a large chunk.
      frame = Buffer.from(first.subarray(0, size));
      if (first.length === size) this.#chunks.shift();
      else this.#chunks[0] = first.subarray(size);
    } else {
      frame = Buffer.allocUnsafe(size);
      let at = 0;
      while (at < size) {
        const c = this.#chunks[0]!;
        const n = Math.min(c.length, size - at);
        c.copy(frame, at, 0, n);
        at += n;
        if (n === c.length) this.#chunks.shift();
        else this.#chunks[0] = c.subarray(n);
      }
    }
    this.#buffered -= size;
    return frame;
  }
}
