/**
 * Bytes received in chunks, consumed from the front in pieces of known
 * length: the buffer under FrameDecoder and RecordDecoder. A piece taken out
 * is a copy, so it never pins (or aliases) the larger chunk it came in.
 */
export class ChunkQueue {
  #chunks: Buffer[] = [];
  #buffered = 0;

  /** Bytes held. */
  get buffered(): number {
    return this.#buffered;
  }

  push(chunk: Uint8Array): void {
    if (chunk.length === 0) return;
    this.#chunks.push(Buffer.from(chunk.buffer, chunk.byteOffset, chunk.length));
    this.#buffered += chunk.length;
  }

  /** A view of at least the first `n` bytes (n <= buffered); valid until the next take. */
  peek(n: number): Buffer {
    const first = this.#chunks[0]!;
    if (first.length >= n) return first;
    const merged = Buffer.concat(this.#chunks);
    this.#chunks = [merged];
    return merged;
  }

  /** Removes and returns (a copy of) the first `n` bytes (n <= buffered). */
  take(n: number): Buffer {
    const head = this.peek(n);
    const out = Buffer.from(head.subarray(0, n));
    const rest = head.subarray(n);
    this.#chunks[0] = rest;
    if (rest.length === 0) this.#chunks.shift();
    this.#buffered -= n;
    return out;
  }

  clear(): void {
    this.#chunks = [];
    this.#buffered = 0;
  }
}
