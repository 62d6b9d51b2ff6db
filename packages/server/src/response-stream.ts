import type { ServerResponse } from 'node:http';
import { RESPONSE_ALREADY_SENT } from '@hono/node-server/utils/response';

const encoder = new TextEncoder();

/** Bytes queued in a response stream before writers wait for the client. */
const DEFAULT_HIGH_WATER_MARK = 64 * 1024;

/**
 * A streamed response body with backpressure: `write()` resolves only when
 * the client has taken enough of what was queued, so a producer that awaits
 * it (an exec's output iterator, the event iterator) never reads faster
 * than the HTTP connection drains. @hono/node-server pulls from `body` only
 * when the socket has drained.
 *
 * `signal` aborts when the client goes away (the body is cancelled) or the
 * stream is closed; writes after that return false. Safe for several
 * concurrent writers (stdout and stderr pumps).
 *
 * Served by @hono/node-server, it writes straight to the Node response
 * (`outgoing`) and waits for its 'drain': the Web-stream path costs about
 * a millisecond per short exec in hops between the stream and the socket.
 * Without one (`app.request()` in tests) it is a ReadableStream body.
 */
export class ResponseStream {
  readonly body: ReadableStream<Uint8Array>;
  readonly #abort = new AbortController();
  #controller!: ReadableStreamDefaultController<Uint8Array>;
  #waiters: (() => void)[] = [];
  #closed = false;
  #onEnd: (() => void) | undefined;
  readonly #contentType: string;
  readonly #highWaterMark: number;
  readonly #outgoing: ServerResponse | undefined;
  /** Node mode: what was pushed before response() sent the head. */
  #pending: (string | Uint8Array)[] | null = [];
  /** The trailer that `fail()` may send (announced in the head). */
  readonly #errorTrailer: string | undefined;

  constructor(options: { contentType: string; highWaterMark?: number; onEnd?: () => void; outgoing?: ServerResponse | undefined; errorTrailer?: string }) {
    this.#onEnd = options.onEnd;
    this.#contentType = options.contentType;
    this.#highWaterMark = options.highWaterMark ?? DEFAULT_HIGH_WATER_MARK;
    this.#outgoing = options.outgoing;
    this.#errorTrailer = options.errorTrailer;
    if (this.#outgoing) {
      this.#outgoing.on('drain', () => this.#wake());
      this.#outgoing.on('close', () => this.#finish());
    }
    this.body = new ReadableStream<Uint8Array>(
      {
        start: (controller) => {
          this.#controller = controller;
        },
        pull: () => this.#wake(),
        cancel: () => this.#finish(),
      },
      { highWaterMark: this.#highWaterMark, size: (chunk) => chunk.byteLength },
    );
  }

  /** Aborted once the client has gone away or the stream was closed. */
  get signal(): AbortSignal {
    return this.#abort.signal;
  }

  get closed(): boolean {
    return this.#closed;
  }

  /** Bytes queued for the client and not yet taken by it (for writers that drop rather than wait). */
  get queuedBytes(): number {
    if (!this.#outgoing) return Math.max(0, this.#highWaterMark - (this.#controller.desiredSize ?? 0));
    if (this.#pending) return this.#pending.reduce((n, p) => n + (typeof p === 'string' ? Buffer.byteLength(p) : p.byteLength), 0);
    return this.#outgoing.writableLength;
  }

  /** The streamed response (chunked; no proxy buffering, no caching). */
  response(status = 200): Response {
    const headers: Record<string, string> = { 'content-type': this.#contentType, 'cache-control': 'no-store', 'x-accel-buffering': 'no' };
    if (this.#errorTrailer) headers.trailer = this.#errorTrailer;
    const out = this.#outgoing;
    if (!out) return new Response(this.body, { status, headers });
    if (!out.headersSent) out.writeHead(status, headers);
    const pending = this.#pending ?? [];
    this.#pending = null;
    if (pending.length > 0 && !out.destroyed) {
      if (pending.every((p) => typeof p === 'string')) out.write(pending.join(''));
      else for (const p of pending) out.write(p);
    } else out.flushHeaders();
    if (this.#closed && !out.writableEnded) out.end();
    return RESPONSE_ALREADY_SENT;
  }

  /** Queues text (or bytes) and waits until the client has room for more. False when the stream has ended. */
  async write(text: string | Uint8Array): Promise<boolean> {
    if (!this.push(text)) return false;
    while (!this.#closed && (this.#outgoing ? this.#outgoing.writableNeedDrain : (this.#controller.desiredSize ?? 0) <= 0)) {
      await new Promise<void>((r) => this.#waiters.push(r));
    }
    return !this.#closed;
  }

  /** Queues text (or bytes) without waiting (for small, rate-limited messages). False when the stream has ended. */
  push(text: string | Uint8Array): boolean {
    if (this.#closed) return false;
    if (!this.#outgoing) this.#controller.enqueue(typeof text === 'string' ? encoder.encode(text) : text);
    else if (this.#pending) this.#pending.push(text);
    else this.#outgoing.write(text);
    return true;
  }

  /** Ends the stream after what is queued. */
  close(): void {
    if (this.#closed) return;
    if (this.#outgoing) {
      // Before the head went out, response() ends it after writing what is pending.
      if (!this.#pending && !this.#outgoing.writableEnded) this.#outgoing.end();
    } else {
      try {
        this.#controller.close();
      } catch {
        // Already cancelled by the consumer.
      }
    }
    this.#finish();
  }

  /**
   * Ends a stream that failed after its head was sent: with the error
   * trailer announced at construction (its value `trailerValue`), else by
   * breaking the connection, so the client never takes a cut body for a
   * whole one. Without a Node response (tests), the body errors.
   */
  fail(err: Error, trailerValue?: string): void {
    if (this.#closed) return;
    const out = this.#outgoing;
    if (!out) {
      try {
        this.#controller.error(err);
      } catch {
        // Already cancelled by the consumer.
      }
    } else if (this.#pending) {
      // The head is not out yet (response() not called): nothing the client could mistake.
      this.#pending = [];
    } else if (this.#errorTrailer && trailerValue !== undefined && !out.destroyed && !out.writableEnded) {
      out.addTrailers({ [this.#errorTrailer]: trailerValue });
      out.end();
    } else if (!out.destroyed) {
      out.destroy();
    }
    this.#finish();
  }

  /** The client is known to be gone: writers stop now (what is queued goes nowhere). */
  abort(): void {
    // Closed rather than errored: an errored body is logged by the HTTP adapter as a failure.
    this.close();
  }

  #wake(): void {
    for (const w of this.#waiters.splice(0)) w();
  }

  #finish(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#abort.abort();
    this.#wake();
    const onEnd = this.#onEnd;
    this.#onEnd = undefined;
    onEnd?.();
  }
}
