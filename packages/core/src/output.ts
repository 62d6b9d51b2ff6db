import type { Fd } from '@roost/protocol';
import type { OutputCallback } from '@roost/api';
import { RoostError } from './errors.js';

/**
 * @internal One output stream of a running command or file operation.
 * Chunks go to the callback (if any), then to an iterator (if one is
 * attached) with credit granted as it consumes them, or into the collected
 * result with credit granted at once.
 *
 * A reader that stops early (break, return) either leaves the rest to be
 * collected (commands: `wait()` still returns it), or, with `onEarlyReturn`,
 * discards it and reports that nobody reads any more (file operations end the
 * call).
 */
export class OutputStream implements AsyncIterable<Uint8Array> {
  #queue: Uint8Array[] = [];
  #collected: Uint8Array[] = [];
  #collecting = false;
  #discarding = false;
  #iterating = false;
  #ended = false;
  #error: RoostError | null = null;
  #wake: (() => void) | null = null;
  #decoder = new TextDecoder();
  #callbackChain: Promise<void> = Promise.resolve();

  constructor(
    private readonly fd: Fd,
    private readonly grant: (fd: Fd, n: number) => void,
    private readonly callback?: OutputCallback,
    private readonly onBytes?: (n: number) => void,
    private readonly onEarlyReturn?: () => void,
  ) {}

  push(chunk: Uint8Array): void {
    this.onBytes?.(chunk.length);
    if (this.#discarding) {
      this.grant(this.fd, chunk.length);
      return;
    }
    if (this.callback) {
      const text = this.#decoder.decode(chunk, { stream: true });
      const cb = this.callback;
      this.#callbackChain = this.#callbackChain.then(() => cb(text)).catch(() => {});
    }
    if (this.#iterating) {
      this.#queue.push(chunk);
      this.#wake?.();
    } else if (this.#collecting || this.callback) {
      this.#collected.push(chunk);
      // With a callback, credit waits for it: a slow callback slows the command.
      void this.#callbackChain.then(() => this.grant(this.fd, chunk.length));
    } else {
      this.#queue.push(chunk);
    }
  }

  end(err: RoostError | null = null): void {
    if (this.#ended) return;
    this.#ended = true;
    this.#error = err;
    if (this.callback) {
      const tail = this.#decoder.decode();
      if (tail) {
        const cb = this.callback;
        this.#callbackChain = this.#callbackChain.then(() => cb(tail)).catch(() => {});
      }
    }
    this.#wake?.();
  }

  /** True once end() was called. */
  get ended(): boolean {
    return this.#ended;
  }

  /** Collect everything not consumed by an iterator (used by wait()). */
  collect(): void {
    if (this.#iterating || this.#collecting || this.#discarding) return;
    this.#collecting = true;
    const queued = this.#queue.splice(0);
    this.#collected.push(...queued);
    const bytes = queued.reduce((n, c) => n + c.length, 0);
    if (bytes > 0) this.grant(this.fd, bytes);
  }

  /** Drops what is queued and everything that comes later, granting its credit, so the producer never blocks on it. */
  discard(): void {
    if (this.#discarding) return;
    this.#discarding = true;
    const bytes = this.#queue.splice(0).reduce((n, c) => n + c.length, 0);
    if (bytes > 0) this.grant(this.fd, bytes);
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
          this.grant(this.fd, chunk.length);
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
        if (this.onEarlyReturn) {
          this.discard();
          this.onEarlyReturn();
        } else {
          this.collect();
        }
      }
    }
  }
}
