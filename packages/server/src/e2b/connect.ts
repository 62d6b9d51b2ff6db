import { isRoostError, RoostError, type RoostErrorCode } from '@roost/api';

/*
 * The Connect protocol with JSON, as E2B's SDK speaks it to envd
 * (docs/e2b-wire.md §2.2): unary calls are a JSON body in and out; server
 * streams are envelopes (a flags byte, a big-endian u32 length, the JSON),
 * ended by an end-stream envelope (flag 0x02) carrying `{}` or `{ error }`.
 */

/** Flag of an end-stream envelope. */
const END_STREAM = 0x02;
/** Flag of a compressed message: not accepted (the SDK never compresses). */
const COMPRESSED = 0x01;
/** The largest request message Roost reads (E2B's are small: a command line, its environment). */
const MAX_REQUEST_BYTES = 1 << 20;
/** Bytes a stream buffers before its writer is asked to wait (see `drained`). */
const STREAM_HIGH_WATER_BYTES = 1 << 20;
/** Bytes a stream may fall behind at most (a reader too slow for the other readers of a process): past it, the stream ends with an error. */
export const MAX_STREAM_BACKLOG_BYTES = 64 << 20;

/** A Connect error code (snake_case), from a RoostError's. */
export function connectCode(code: RoostErrorCode): string {
  switch (code) {
    case 'INVALID_ARGUMENT':
      return 'invalid_argument';
    case 'NOT_FOUND':
      return 'not_found';
    case 'ALREADY_EXISTS':
      return 'already_exists';
    case 'PERMISSION_DENIED':
      return 'permission_denied';
    case 'UNAUTHENTICATED':
      return 'unauthenticated';
    case 'RESOURCE_EXHAUSTED':
      return 'resource_exhausted';
    case 'TIMEOUT':
      return 'deadline_exceeded';
    case 'ABORTED':
      return 'canceled';
    case 'INVALID_STATE':
      return 'failed_precondition';
    case 'UNAVAILABLE':
      return 'unavailable';
    default:
      return 'internal';
  }
}

const CODE_STATUS: Record<string, number> = {
  invalid_argument: 400,
  failed_precondition: 400,
  not_found: 404,
  already_exists: 409,
  permission_denied: 403,
  unauthenticated: 401,
  resource_exhausted: 429,
  deadline_exceeded: 504,
  canceled: 499,
  unavailable: 503,
  internal: 500,
};

/** A failure as Connect's error object. */
export function connectError(err: unknown): { code: string; message: string } {
  const e = isRoostError(err) ? err : new RoostError('INTERNAL', err instanceof Error ? err.message : String(err));
  return { code: connectCode(e.code), message: e.message };
}

/** A unary call's error response. */
export function unaryError(err: unknown): Response {
  const body = connectError(err);
  return Response.json(body, { status: CODE_STATUS[body.code] ?? 500 });
}

/** Reads a server-streaming call's one request envelope. */
export async function readEnvelope(req: Request): Promise<unknown> {
  const bytes = new Uint8Array(await req.arrayBuffer());
  if (bytes.byteLength < 5) throw new RoostError('INVALID_ARGUMENT', 'a Connect stream request must start with an envelope');
  const flags = bytes[0]!;
  if (flags & COMPRESSED) throw new RoostError('INVALID_ARGUMENT', 'compressed Connect messages are not accepted');
  const length = new DataView(bytes.buffer, bytes.byteOffset).getUint32(1);
  if (length > MAX_REQUEST_BYTES || 5 + length > bytes.byteLength) throw new RoostError('INVALID_ARGUMENT', 'the envelope is longer than the body');
  return parseJson(new TextDecoder().decode(bytes.subarray(5, 5 + length)));
}

/** Reads a unary call's JSON body. */
export async function readUnary(req: Request): Promise<unknown> {
  const text = await req.text();
  if (Buffer.byteLength(text) > MAX_REQUEST_BYTES) throw new RoostError('INVALID_ARGUMENT', 'the request is too large');
  return parseJson(text || '{}');
}

function parseJson(text: string): unknown {
  try {
    return JSON.parse(text);
  } catch {
    throw new RoostError('INVALID_ARGUMENT', 'the request is not JSON');
  }
}

function envelope(flags: number, message: unknown): Uint8Array {
  const json = new TextEncoder().encode(JSON.stringify(message));
  const out = new Uint8Array(5 + json.byteLength);
  out[0] = flags;
  new DataView(out.buffer).setUint32(1, json.byteLength);
  out.set(json, 5);
  return out;
}

/**
 * A server stream's response: `send` each message, then `end` (with an
 * error, or none). Messages written after the client left are dropped; the
 * work behind the stream goes on (E2B's processes outlive their streams).
 * A writer that can wait does so while `backedUp` (see `drained`); a
 * stream that falls MAX_STREAM_BACKLOG_BYTES behind anyway is ended.
 */
export class ConnectStream {
  readonly response: Response;
  #controller!: ReadableStreamDefaultController<Uint8Array>;
  #open = true;
  #pending: Uint8Array[] = [];
  #waiters: (() => void)[] = [];

  /** @param onCancel called when the client leaves before the stream ends. */
  constructor(onCancel?: () => void) {
    const body = new ReadableStream<Uint8Array>(
      {
        start: (controller) => {
          this.#controller = controller;
        },
        pull: () => {
          for (const wake of this.#waiters.splice(0)) wake();
        },
        cancel: () => {
          this.#open = false;
          for (const wake of this.#waiters.splice(0)) wake();
          onCancel?.();
        },
      },
      new ByteLengthQueuingStrategy({ highWaterMark: STREAM_HIGH_WATER_BYTES }),
    );
    this.response = new Response(body, { status: 200, headers: { 'content-type': 'application/connect+json' } });
  }

  /** True until the client leaves or the stream ends. */
  get open(): boolean {
    return this.#open;
  }

  /** True while the client has not read what was sent (more than the high-water mark is buffered). */
  get backedUp(): boolean {
    return this.#open && (this.#controller.desiredSize ?? 0) <= 0;
  }

  /** Resolves when the client has read enough to take more, or left. */
  drained(): Promise<void> {
    if (!this.backedUp) return Promise.resolve();
    return new Promise((resolve) => this.#waiters.push(resolve));
  }

  send(message: unknown): void {
    if (!this.#open) return;
    // Messages sent in one tick go out as one chunk (a command's end and the end-stream, most often).
    if (this.#pending.push(envelope(0, message)) === 1) queueMicrotask(() => this.#flush());
  }

  end(err?: unknown): void {
    if (!this.#open) return;
    this.#pending.push(envelope(END_STREAM, err === undefined ? {} : { error: connectError(err) }));
    this.#flush();
    this.#open = false;
    this.#controller.close();
  }

  #flush(): void {
    if (this.#pending.length === 0 || !this.#open) return;
    const chunk = this.#pending.length === 1 ? this.#pending[0]! : Buffer.concat(this.#pending);
    this.#pending = [];
    this.#controller.enqueue(chunk);
    if ((this.#controller.desiredSize ?? 0) < -MAX_STREAM_BACKLOG_BYTES) {
      // This reader is too far behind: end its stream rather than buffer without bound.
      this.#controller.error(new Error(`the stream's reader fell more than ${MAX_STREAM_BACKLOG_BYTES} bytes behind`));
      this.#open = false;
      for (const wake of this.#waiters.splice(0)) wake();
    }
  }
}
