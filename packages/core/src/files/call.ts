import { Fd, MAX_RECORD, ProtocolError, RecordDecoder, decodeErrorRecord, type CallRequest, type ExecExit } from '@roost/protocol';
import type { OutputBuffer, WriteData } from '@roost/api';
import type { AgentConnection, ExecChannel } from '../agent/connection.js';
import { abortError, RoostError } from '../errors.js';
import { agentOutput } from '../output.js';
import { callError } from './call-error.js';

/*
 * One CALL stream (docs/PROTOCOL.md, "Calls") from the host side: fd 1 as
 * bytes or records under the stream's credit, fd 2 gathered for the one
 * error record, stdin sent under the agent's credit, cancellation by
 * SIGTERM. `runCall` runs one to completion; `Files` builds on the parts.
 */

/** Most bytes `runCall` gathers from fd 1 (streaming operations do not gather). */
export const MAX_CALL_OUTPUT = 64 << 20;
/** What fd 2 may hold: one error record, or the text of a child that failed otherwise. */
const MAX_STDERR = MAX_RECORD + 4;
/** How long a cancelled call may take to end after SIGTERM before it is killed and forgotten. */
const CANCEL_GRACE_MS = 5_000;
/** Pieces a large write is sent in, so a cancellation stops it between them. */
const WRITE_PIECE = 1 << 20;

// Signal numbers of the (Linux) guest, whatever the host is.
const SIGTERM = 15;
const SIGKILL = 9;

/** Options of one `Call`. */
export interface CallOptions {
  /** Names the operation in errors: `read /etc/passwd`. */
  what: string;
  /** The path named in error details when the error record has none. */
  path?: string | undefined;
  signal?: AbortSignal | undefined;
  /**
   * Record mode: fd 1 is decoded into records as it arrives, each handed
   * over with its size on the wire (grant it back with `grant` once
   * consumed). A malformed record is a protocol violation. Without this,
   * fd 1 is a byte stream (`stdout`).
   */
  onRecord?: (payload: Buffer, wireBytes: number) => void;
}

/**
 * One running CALL: fd 1 as a byte stream (or records), fd 2 gathered for
 * the error record, stdin under the agent's credit, cancellation by SIGTERM.
 */
export class Call {
  /** fd 1 as bytes (not used in record mode). Breaking out of its iterator ends the call. */
  readonly stdout: OutputBuffer;
  /** Settles when the call has ended: resolves on success, rejects with its error (the cancel reason, if cancelled). */
  readonly done: Promise<void>;
  /** Resolves once fd 1 carried data or the call ended, whichever comes first. */
  readonly firstOutput: Promise<void>;
  readonly #conn: AgentConnection;
  readonly #channel: ExecChannel;
  readonly #what: string;
  readonly #path: string | undefined;
  #stderr: Buffer[] = [];
  #stderrBytes = 0;
  #records: RecordDecoder | null = null;
  #sawOutput = false;
  #settled = false;
  /** undefined: not cancelled; null: cancelled without error (closing a watch, an early break). */
  #cancelled: RoostError | null | undefined = undefined;
  #resolveDone!: () => void;
  #rejectDone!: (e: RoostError) => void;
  #resolveFirst!: () => void;
  #ended: Promise<void>;
  #cleanups: (() => void)[] = [];

  constructor(conn: AgentConnection, request: CallRequest, options: CallOptions) {
    this.#conn = conn;
    this.#what = options.what;
    this.#path = options.path;
    this.done = new Promise<void>((res, rej) => ((this.#resolveDone = res), (this.#rejectDone = rej)));
    this.done.catch(() => {});
    this.#ended = this.done.then(
      () => {},
      () => {},
    );
    this.firstOutput = new Promise<void>((r) => (this.#resolveFirst = r));
    const onRecord = options.onRecord;
    if (onRecord) this.#records = new RecordDecoder();
    this.stdout = agentOutput(
      Fd.STDOUT,
      (fd, n) => this.grant(n, fd),
      undefined,
      undefined,
      () => void this.cancel(null),
    );
    this.#channel = conn.call(request, {
      started: () => {},
      data: (fd, chunk) => {
        if (fd === Fd.STDOUT) {
          this.#sawOutput = true;
          this.#resolveFirst();
          if (this.#records && onRecord) {
            // Decoded here, inside the frame's dispatch: a malformed record throws
            // ProtocolError, which the connection treats as a violation.
            for (const payload of this.#records.push(chunk)) onRecord(payload, payload.length + 4);
          } else {
            this.stdout.push(chunk);
          }
        } else {
          this.#onStderr(chunk);
        }
      },
      eof: () => {},
      exit: (e) => this.#onExit(e),
      failed: (err) => this.#settle(this.#cancelled === undefined ? err : this.#cancelled),
    });
    const signal = options.signal;
    if (signal) {
      const onAbort = () => void this.cancel(abortError(signal, this.#what));
      signal.addEventListener('abort', onAbort, { once: true });
      this.#cleanups.push(() => signal.removeEventListener('abort', onAbort));
      if (signal.aborted) onAbort();
    }
  }

  /** True once the call has ended (its outcome is in `done`). */
  get settled(): boolean {
    return this.#settled;
  }

  /** True once fd 1 carried data. */
  get sawOutput(): boolean {
    return this.#sawOutput;
  }

  /** True once the call was cancelled (nothing more must be sent on its stdin). */
  get cancelled(): boolean {
    return this.#cancelled !== undefined;
  }

  /** Grants the agent `n` more bytes on an output fd (as they are consumed). */
  grant(n: number, fd: Fd = Fd.STDOUT): void {
    this.#channel.grant(fd, n);
  }

  /** Sends stdin under the agent's credit. Throws once the call has ended. */
  writeStdin(data: Uint8Array): Promise<void> {
    return this.#channel.writeStdin(data);
  }

  closeStdin(): void {
    if (!this.cancelled && !this.#settled) this.#channel.closeStdin();
  }

  /**
   * Ends the call: SIGTERM (the agent's operations stop promptly and clean
   * up), output from now on discarded. `done` then rejects with `reason`
   * (or resolves, for null). Resolves once the call has ended; one that does
   * not within CANCEL_GRACE_MS is killed and forgotten.
   */
  cancel(reason: RoostError | null): Promise<void> {
    if (this.#settled || this.#cancelled !== undefined) return this.#ended;
    this.#cancelled = reason;
    this.#channel.signal(SIGTERM);
    this.stdout.discard();
    this.stdout.end(reason);
    const timer = setTimeout(() => {
      this.#channel.signal(SIGKILL);
      this.#channel.abandon();
      this.#settle(reason);
    }, CANCEL_GRACE_MS);
    timer.unref();
    this.#cleanups.push(() => clearTimeout(timer));
    return this.#ended;
  }

  #onStderr(chunk: Uint8Array): void {
    // Granted at once: fd 2 is small (one record) or the text of a broken child, kept bounded.
    this.grant(chunk.length, Fd.STDERR);
    const room = MAX_STDERR - this.#stderrBytes;
    if (room <= 0) return;
    const part = Buffer.from(chunk.subarray(0, room));
    this.#stderr.push(part);
    this.#stderrBytes += part.length;
  }

  #onExit(e: ExecExit): void {
    if (this.#cancelled !== undefined) {
      this.#settle(this.#cancelled);
      return;
    }
    let err: RoostError | null;
    try {
      if (this.#records) this.#records.end();
      err = this.#exitError(e);
    } catch (x) {
      if (!(x instanceof ProtocolError)) throw x;
      const reason = `${this.#what}: ${x.message}`;
      this.#settle(new RoostError('AGENT', `the guest agent sent a malformed result for ${this.#what} (${x.message})`, { details: { violation: reason } }));
      this.#conn.reportViolation(reason);
      return;
    }
    this.#settle(err);
  }

  #exitError(e: ExecExit): RoostError | null {
    if (e.timedOut) return new RoostError('TIMEOUT', `${this.#what} timed out and was stopped`);
    if (e.exitCode === 0) return null;
    const stderr = Buffer.concat(this.#stderr, this.#stderrBytes);
    if (e.exitCode === 1) {
      const decoder = new RecordDecoder();
      const records = decoder.push(stderr);
      decoder.end();
      if (records.length !== 1) throw new ProtocolError(`exit status 1 with ${records.length} error records on fd 2`);
      return callError(decodeErrorRecord(records[0]!), this.#what, this.#path);
    }
    const how = e.signal !== null ? `was killed by signal ${e.signal}` : `exited with status ${e.exitCode}`;
    const text = stderr.toString('utf8').trim().slice(0, 4000);
    return new RoostError('AGENT', `${this.#what} failed in the guest: the agent's child ${how}${text ? `: ${text}` : ''}`, {
      details: { exitCode: e.exitCode, signal: e.signal, stderr: text },
    });
  }

  #settle(err: RoostError | null): void {
    if (this.#settled) return;
    this.#settled = true;
    for (const c of this.#cleanups.splice(0)) c();
    this.stdout.end(err);
    this.#resolveFirst();
    if (err) this.#rejectDone(err);
    else this.#resolveDone();
  }
}

/** Names a call in errors: `read /etc/passwd`, `rename /a /b`. */
export function describeCall(op: string, args: readonly string[]): string {
  const shown = args.map((a) => (a.length > 200 ? `${a.slice(0, 200)}…` : a));
  return [op, ...shown].join(' ');
}

/**
 * Sends `data` as the call's stdin under its credit and closes it. A data
 * source that fails cancels the call with ABORTED (never EOF: that would
 * commit a partial write). Resolves once done or given up.
 */
export async function pumpStdin(call: Call, data: WriteData, what: string): Promise<void> {
  try {
    if (typeof data === 'string' || data instanceof Uint8Array) {
      const bytes = typeof data === 'string' ? Buffer.from(data, 'utf8') : data;
      for (let off = 0; off < bytes.length && !call.cancelled; off += WRITE_PIECE) {
        await call.writeStdin(bytes.subarray(off, off + WRITE_PIECE));
      }
    } else {
      for await (const chunk of data) {
        if (call.cancelled || call.settled) return;
        let bytes: Uint8Array;
        if (typeof chunk === 'string') bytes = Buffer.from(chunk, 'utf8');
        else if (chunk instanceof Uint8Array) bytes = chunk;
        else throw new RoostError('INVALID_ARGUMENT', `${what}: the data stream yielded a ${typeof chunk}, not a Uint8Array or string`);
        for (let off = 0; off < bytes.length && !call.cancelled; off += WRITE_PIECE) {
          await call.writeStdin(bytes.subarray(off, off + WRITE_PIECE));
        }
      }
    }
    call.closeStdin();
  } catch (e) {
    // The call ended under us (its outcome is in `done`), or the source failed.
    if (call.settled || call.cancelled) return;
    const reason =
      e instanceof RoostError ? e : new RoostError('ABORTED', `${what}: reading the data to send failed: ${(e as Error)?.message ?? String(e)}`, { cause: e });
    await call.cancel(reason);
  }
}

/** Gathers fd 1 up to `limit` bytes, then waits for the call's outcome. Over the limit, the call is cancelled. */
export async function gather(call: Call, limit: number, tooLarge: () => RoostError): Promise<Buffer> {
  const parts: Uint8Array[] = [];
  let n = 0;
  let exceeded: RoostError | null = null;
  try {
    for await (const chunk of call.stdout) {
      if (n + chunk.length > limit) {
        exceeded = tooLarge();
        await call.cancel(exceeded);
        break;
      }
      parts.push(chunk);
      n += chunk.length;
    }
  } catch {
    // The stream ends with the call's error, which `done` carries too.
  }
  // Thrown here, not left to `done`: a call whose output had all arrived
  // has settled already, and cancelling it changes nothing (the read would
  // come back cut short, as if the file ended at the limit).
  if (exceeded) {
    await call.done.catch(() => {});
    throw exceeded;
  }
  await call.done;
  return Buffer.concat(parts, n);
}

/** Options of `runCall`. */
export interface RunCallOptions {
  signal?: AbortSignal;
  /** The call's stdin (the request is sent with STDIN=1); closed after the last byte. */
  stdin?: Uint8Array | AsyncIterable<Uint8Array | string>;
  /** Most bytes of fd 1 to gather (default MAX_CALL_OUTPUT, 64 MiB). */
  maxBytes?: number;
}

/**
 * Runs one call to completion and returns what it wrote on fd 1 (at most
 * 64 MiB: more is RESOURCE_EXHAUSTED and the call is stopped). A failure is
 * the RoostError mapped from its error record (`details.errno`,
 * `details.path`); a child that died otherwise is AGENT with its stderr; an
 * abort is ABORTED once the call has ended.
 */
export async function runCall(conn: AgentConnection, request: CallRequest, options: RunCallOptions = {}): Promise<Buffer> {
  const what = describeCall(request.op, request.args);
  if (options.signal?.aborted) throw abortError(options.signal, what);
  const withStdin = options.stdin !== undefined || request.stdin === true;
  const call = new Call(conn, { ...request, stdin: withStdin }, { what, path: request.args[0], signal: options.signal });
  if (options.stdin !== undefined) void pumpStdin(call, options.stdin, what);
  else if (withStdin) call.closeStdin();
  const limit = options.maxBytes ?? MAX_CALL_OUTPUT;
  return gather(call, limit, () => new RoostError('RESOURCE_EXHAUSTED', `${what}: the result is larger than ${limit} bytes; it was stopped`));
}

/** Decodes the records of a gathered fd 1; a malformed one is a protocol violation. */
export function records<T>(conn: AgentConnection, bytes: Buffer, decode: (payload: Buffer) => T, what: string): T[] {
  try {
    const d = new RecordDecoder();
    const out = d.push(bytes).map(decode);
    d.end();
    return out;
  } catch (e) {
    if (!(e instanceof ProtocolError)) throw e;
    conn.reportViolation(`${what}: ${e.message}`);
    throw new RoostError('AGENT', `the guest agent sent a malformed result for ${what} (${e.message})`, { details: { violation: e.message } });
  }
}

/** The one record of a gathered fd 1; none or several is a protocol violation. */
export function oneRecord<T>(conn: AgentConnection, bytes: Buffer, decode: (payload: Buffer) => T, what: string): T {
  const all = records(conn, bytes, decode, what);
  if (all.length !== 1) {
    const reason = `${what}: ${all.length} records where one was expected`;
    conn.reportViolation(reason);
    throw new RoostError('AGENT', `the guest agent sent a malformed result for ${what} (${all.length} records where one was expected)`);
  }
  return all[0]!;
}
