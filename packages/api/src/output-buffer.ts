import { RoostError } from './errors.js';
import type { OutputCallback } from './sandbox.js';

/**
 * The credit port of an OutputBuffer: how the buffer tells its producer that
 * bytes left it (read by an iterator, collected, discarded, or handled by a
 * slow callback), so the producer may send that many more. Core grants the
 * agent's exec window; the client resumes the daemon's response.
 */
export interface OutputCreditPort {
  /** `n` bytes the buffer held are released. */
  credit(n: number): void;
}

/** Optional hooks of an OutputBuffer. */
export interface OutputBufferOptions {
  /** Every chunk pushed, as it arrives (counters). */
  onBytes?: (n: number) => void;
  /**
   * Called when an iterator stops early: the rest is then discarded (file
   * operations end their call). Without it, the rest is collected for
   * `text()` (commands: `wait()` still returns it).
   */
  onEarlyReturn?: () => void;
}

/**
 * One output stream of a running command or file operation, embedded or
 * remote. Chunks go to the callback (if any), then to an iterator (if one
 * is attached) with credit released as it consumes them, or into the
 * collected result with credit released at once (after the callback, so a
 * slow callback slows the producer).
 *
 * Concurrency: one producer (push/end) and one consumer (one iterator, or
 * collect/text); a second iterator is INVALID_STATE.
 */
export class OutputBuffer implements AsyncIterable<Uint8Array> {
  #queue: Uint8Array[] = [];
  #held = 0;
  #collected: Uint8Array[] = [];
  #collecting = false;
  #discarding = false;
  #iterating = false;
  #ended = false;
  #error: RoostError | null = null;
  #wake: (() => void) | null = null;
  #decoder = new TextDecoder();
  #callbackChain: Promise<void> = Promise.resolve();
  readonly #port: OutputCreditPort;
  readonly #callback: OutputCallback | undefined;
  readonly #options: OutputBufferOptions;

  constructor(port: OutputCreditPort, callback?: OutputCallback, options: OutputBufferOptions = {}) {
    this.#port = port;
    this.#callback = callback;
    this.#options = options;
  }

  /** Bytes pushed and not yet released to the producer. */
  get held(): number {
    return this.#held;
  }

  /** Takes one chunk from the producer. */
  push(chunk: Uint8Array): void {
    this.#options.onBytes?.(chunk.length);
    this.#held += chunk.length;
    if (this.#discarding) {
      this.#release(chunk.length);
      return;
    }
    if (this.#callback) {
      const text = this.#decoder.decode(chunk, { stream: true });
      const cb = this.#callback;
      this.#callbackChain = this.#callbackChain.then(() => cb(text)).catch(() => {});
    }
    if (this.#iterating) {
      this.#queue.push(chunk);
      this.#wake?.();
    } else if (this.#collecting || this.#callback) {
      this.#collected.push(chunk);
      // With a callback, credit waits for it: a slow callback slows the producer.
      void this.#callbackChain.then(() => this.#release(chunk.length));
    } else {
      this.#queue.push(chunk);
    }
  }

  /** Ends the stream, with the error an iterator then throws. */
  end(err: RoostError | null = null): void {
    if (this.#ended) return;
    this.#ended = true;
    this.#error = err;
    if (this.#callback) {
      const tail = this.#decoder.decode();
      if (tail) {
        const cb = this.#callback;
        this.#callbackChain = this.#callbackChain.then(() => cb(tail)).catch(() => {});
      }
    }
    this.#wake?.();
  }

  /** True once end() was called. */
  get ended(): boolean {
    return this.#ended;
  }

  /** Collects everything not consumed by an iterator (used by wait()). */
  collect(): void {
    if (this.#iterating || this.#collecting || this.#discarding) return;
    this.#collecting = true;
    const queued = this.#queue.splice(0);
    this.#collected.push(...queued);
    this.#release(queued.reduce((n, c) => n + c.length, 0));
  }

  /** Drops what is queued and everything that comes later, releasing its credit, so the producer never blocks on it. */
  discard(): void {
    if (this.#discarding) return;
    this.#discarding = true;
    this.#release(this.#queue.splice(0).reduce((n, c) => n + c.length, 0));
    this.#wake?.();
  }

  /** Collected output as text, after callbacks have run. */
  async text(): Promise<string> {
    await this.#callbackChain;
    return Buffer.concat(this.#collected).toString('utf8');
  }

  async *[Symbol.asyncIterator](): AsyncIterator<Uint8Array> {
    if (this.#iterating || this.#collecting) throw new RoostError('INVALID_STATE', 'this output stream is already being read');
    this.#iterating = true;
    try {
      for (;;) {
        const chunk = this.#queue.shift();
        if (chunk) {
          this.#release(chunk.length);
          yield chunk;
          continue;
        }
        if (this.#ended) {
          if (this.#error) throw this.#error;
          return;
        }
        await new Promise<void>((r) => (this.#wake = r));
        this.#wake = null;
      }
    } finally {
      // A reader that stops early must not leave the producer blocked on
      // output nobody will read.
      if (!this.#ended) {
        this.#iterating = false;
        if (this.#options.onEarlyReturn) {
          this.discard();
          this.#options.onEarlyReturn();
        } else {
          this.collect();
        }
      }
    }
  }

  #release(n: number): void {
    if (n <= 0) return;
    this.#held -= n;
    this.#port.credit(n);
  }
}
