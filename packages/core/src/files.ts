import { constants as osConstants } from 'node:os';
import {
  CallFlags,
  DEFAULT_WINDOW,
  Fd,
  MAX_RECORD,
  ProtocolError,
  RecordDecoder,
  WatchEvent,
  decodeEntryRecord,
  decodeErrorRecord,
  decodeEventRecord,
  type CallRequest,
  type EntryRecord,
  type ErrorRecord,
  type EventRecord,
  type ExecExit,
} from '@roost/protocol';
import {
  errnoCode,
  FileOptionsSchema,
  GuestPathSchema,
  ListOptionsSchema,
  MakeDirOptionsSchema,
  ReadOptionsSchema,
  RemoveOptionsSchema,
  RenameOptionsSchema,
  StatOptionsSchema,
  WatchOptionsSchema,
  WriteOptionsSchema,
  type OutputBuffer,
  type EntryInfo,
  type FileEvent,
  type FileOptions,
  type FilesApi,
  type FileWatchApi,
  type ReadFormat,
  type WriteData,
  type WriteInfo,
  type WriteOptions,
} from '@roost/api';
import type { AgentConnection, ExecChannel } from './agent/connection.js';
import { abortError, RoostError } from './errors.js';
import { agentOutput } from './output.js';
import { parseOptions } from './validate.js';

/*
 * `sandbox.files`: the agent's built-in file operations (docs/PROTOCOL.md,
 * "Calls"). Each operation is one CALL stream; the agent runs it in a child
 * with the rights of the requested user. Results come back as records
 * (entries on fd 1, one error record on fd 2 with exit status 1) or as raw
 * bytes (read, archive), always under the stream's credit.
 */

/** Most bytes `runCall` gathers from fd 1 (streaming operations do not gather). */
export const MAX_CALL_OUTPUT = 64 << 20;
/** Most bytes `read` gathers as text or bytes; larger files are read with format 'stream'. */
const MAX_READ_GATHER = 256 << 20;
/** Credit per fd for streaming reads (read, archive): keeps the channel busy, bounds memory per stream. */
const STREAM_WINDOW = 2 << 20;
/** What fd 2 may hold: one error record, or the text of a child that failed otherwise. */
const MAX_STDERR = MAX_RECORD + 4;
/** How long a cancelled call may take to end after SIGTERM before it is killed and forgotten. */
const CANCEL_GRACE_MS = 5_000;
/** How long a `renamed from` event waits for its `renamed to` partner before it is reported alone. */
const RENAME_PAIR_MS = 50;
/** Pieces a large write is sent in, so a cancellation stops it between them. */
const WRITE_PIECE = 1 << 20;

// Signal numbers of the (Linux) guest, whatever the host is.
const SIGTERM = 15;
const SIGKILL = 9;

const S_IFMT = 0o170000;
const S_IFREG = 0o100000;
const S_IFDIR = 0o040000;
const S_IFLNK = 0o120000;

// ---- errors --------------------------------------------------------------------

let errnoNames: Map<number, string> | undefined;

/** The name of a Linux errno (`2` → `ENOENT`), from node's table (the host is Linux). */
export function errnoName(errno: number): string {
  if (!errnoNames) {
    errnoNames = new Map();
    for (const [name, n] of Object.entries(osConstants.errno)) if (!errnoNames.has(n)) errnoNames.set(n, name);
  }
  return errnoNames.get(errno) ?? `errno ${errno}`;
}

/**
 * The RoostError of an error record: the code from the errno (see
 * ERRNO_CODES in @roost/api), `details: { errno: 'ENOENT', path }`, and a
 * message like `read /etc/nope: No such file or directory (ENOENT)`.
 */
export function callError(record: ErrorRecord, what: string, fallbackPath?: string): RoostError {
  const name = errnoName(record.errno);
  const path = record.path || fallbackPath;
  // The agent's MESSAGE is `<what it did>: <strerror>`; the path it did it on is named when it is not the operand.
  let text = record.message.trim() || name;
  const sep = text.indexOf(': ');
  if (record.path && record.path !== fallbackPath && sep > 0) text = `${text.slice(0, sep)} ${record.path}${text.slice(sep)}`;
  const message = `${what}: ${text} (${name})`;
  return new RoostError(errnoCode(name), message, { details: { errno: name, ...(path !== undefined ? { path } : {}) } });
}

// ---- one call ------------------------------------------------------------------

interface CallOptions {
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
class Call {
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
function describeCall(op: string, args: readonly string[]): string {
  const shown = args.map((a) => (a.length > 200 ? `${a.slice(0, 200)}…` : a));
  return [op, ...shown].join(' ');
}

/**
 * Sends `data` as the call's stdin under its credit and closes it. A data
 * source that fails cancels the call with ABORTED (never EOF: that would
 * commit a partial write). Resolves once done or given up.
 */
async function pumpStdin(call: Call, data: WriteData, what: string): Promise<void> {
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
async function gather(call: Call, limit: number, tooLarge: () => RoostError): Promise<Buffer> {
  const parts: Uint8Array[] = [];
  let n = 0;
  try {
    for await (const chunk of call.stdout) {
      if (n + chunk.length > limit) {
        await call.cancel(tooLarge());
        break;
      }
      parts.push(chunk);
      n += chunk.length;
    }
  } catch {
    // The stream ends with the call's error, which `done` carries too.
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
function records<T>(conn: AgentConnection, bytes: Buffer, decode: (payload: Buffer) => T, what: string): T[] {
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

function oneRecord<T>(conn: AgentConnection, bytes: Buffer, decode: (payload: Buffer) => T, what: string): T {
  const all = records(conn, bytes, decode, what);
  if (all.length !== 1) {
    const reason = `${what}: ${all.length} records where one was expected`;
    conn.reportViolation(reason);
    throw new RoostError('AGENT', `the guest agent sent a malformed result for ${what} (${all.length} records where one was expected)`);
  }
  return all[0]!;
}

// ---- conversions ---------------------------------------------------------------

/** An entry record as the API's EntryInfo: type from st_mode, mode & 0o7777, mtime ISO from MTIME_NS. */
export function toEntryInfo(e: EntryRecord): EntryInfo {
  const fmt = e.stMode & S_IFMT;
  const info: EntryInfo = {
    path: e.path,
    name: e.name,
    type: fmt === S_IFREG ? 'file' : fmt === S_IFDIR ? 'dir' : fmt === S_IFLNK ? 'symlink' : 'other',
    size: Number(e.size),
    mode: e.stMode & 0o7777,
    uid: e.uid,
    gid: e.gid,
    mtime: isoFromNs(e.mtimeNs),
  };
  if (e.link !== undefined) info.symlinkTarget = e.link;
  return info;
}

const MAX_DATE_MS = 8.64e15;

function isoFromNs(ns: bigint): string {
  // The guest's u64 holds a signed time_t-based value: times before 1970 wrap.
  const ms = Number(BigInt.asIntN(64, ns) / 1_000_000n);
  return new Date(Math.max(-MAX_DATE_MS, Math.min(MAX_DATE_MS, ms))).toISOString();
}

// ---- validation ----------------------------------------------------------------

/** Checks a path operand; INVALID_ARGUMENT names the field. */
function checkPath(value: unknown, field: string): string {
  const r = GuestPathSchema.safeParse(value);
  if (r.success) return r.data;
  const message = r.error.issues[0]?.message ?? 'invalid';
  throw new RoostError('INVALID_ARGUMENT', `${field}: ${message}`, { details: { fields: [{ path: field, message }] } });
}

function isAsyncIterable(x: unknown): x is AsyncIterable<unknown> {
  return typeof x === 'object' && x !== null && typeof (x as Record<symbol, unknown>)[Symbol.asyncIterator] === 'function';
}

// ---- the API -------------------------------------------------------------------

/**
 * `sandbox.files`: reads, writes, lists and watches files in the guest
 * through the agent's built-in operations, with the rights of `user`
 * (default: the sandbox's user, as commands). Errors are RoostErrors with
 * `details.errno` and `details.path` (see FilesApi). File operations are not
 * commands: they emit no exec events and do not count as execs.
 */
export class Files implements FilesApi {
  /** @internal */
  constructor(
    private readonly connection: () => Promise<AgentConnection>,
    private readonly defaults: () => { user?: string | undefined } = () => ({}),
  ) {}

  read(path: string, options?: FileOptions & { format?: 'text' }): Promise<string>;
  read(path: string, options: FileOptions & { format: 'bytes' }): Promise<Uint8Array>;
  read(path: string, options: FileOptions & { format: 'stream' }): Promise<AsyncIterable<Uint8Array>>;
  /**
   * Reads a file: as text (UTF-8, the default) or bytes (at most 256 MiB;
   * more is RESOURCE_EXHAUSTED), or as a stream read from the guest as it is
   * consumed. A failure before the first byte (a missing file) rejects
   * `read` itself, also for 'stream'; a later one ends the stream with the
   * error. Breaking out of the stream (or `signal`) stops the read.
   */
  async read(path: string, options: FileOptions & { format?: ReadFormat } = {}): Promise<string | Uint8Array | AsyncIterable<Uint8Array>> {
    path = checkPath(path, 'path');
    const opts = parseOptions(ReadOptionsSchema, options, 'read options');
    const format = opts.format ?? 'text';
    const started = await this.#start('read', [path], opts, format === 'stream' ? { window: STREAM_WINDOW } : {});
    if (format === 'stream') return this.#stream(started);
    const bytes = await gather(
      started.call,
      MAX_READ_GATHER,
      () =>
        new RoostError('RESOURCE_EXHAUSTED', `${started.what}: the file is larger than ${MAX_READ_GATHER >> 20} MiB; read it with format 'stream'`, {
          details: { path },
        }),
    );
    return format === 'text' ? bytes.toString('utf8') : bytes;
  }

  /**
   * Writes a file, creating missing parent directories. `data` is sent under
   * the agent's credit as it is produced, never held whole. The new contents
   * replace the old only once all of them arrived (the agent writes a
   * temporary file and renames it): a failed or aborted write leaves the old
   * file, or none. Resolves with the written file's entry.
   */
  async write(path: string, data: WriteData, options: WriteOptions = {}): Promise<WriteInfo> {
    path = checkPath(path, 'path');
    if (typeof data !== 'string' && !(data instanceof Uint8Array) && !isAsyncIterable(data)) {
      throw new RoostError('INVALID_ARGUMENT', 'data: must be a string, a Uint8Array or an async iterable of them', {
        details: { fields: [{ path: 'data', message: 'invalid type' }] },
      });
    }
    const opts = parseOptions(WriteOptionsSchema, options, 'write options');
    if (typeof data === 'string') data = Buffer.from(data, 'utf8');
    const extra: Partial<CallRequest> = { stdin: true, flags: CallFlags.PARENTS | (opts.noReplace ? CallFlags.NO_REPLACE : 0) };
    if (opts.mode !== undefined) extra.mode = opts.mode;
    if (data instanceof Uint8Array) extra.size = BigInt(data.length);
    const { call, conn, what } = await this.#start('write', [path], opts, extra);
    void pumpStdin(call, data, what);
    const out = await gather(call, MAX_CALL_OUTPUT, () => new RoostError('AGENT', `${what}: the guest agent sent an oversized result`));
    const record = oneRecord(conn, out, decodeEntryRecord, what);
    return { ...toEntryInfo(record), created: record.event === 1 };
  }

  /** Entries below a directory, `depth` levels deep (default 1), sorted by path. Symlinks are not followed. */
  async list(path: string, options: FileOptions & { depth?: number } = {}): Promise<EntryInfo[]> {
    path = checkPath(path, 'path');
    const opts = parseOptions(ListOptionsSchema, options, 'list options');
    const { call, conn, what } = await this.#start('list', [path], opts, { depth: opts.depth ?? 1 });
    const out = await gather(
      call,
      MAX_CALL_OUTPUT,
      () =>
        new RoostError('RESOURCE_EXHAUSTED', `${what}: the listing is larger than ${MAX_CALL_OUTPUT >> 20} MiB; list fewer levels (depth)`, {
          details: { path },
        }),
    );
    const entries = records(conn, out, decodeEntryRecord, what).map(toEntryInfo);
    return entries.sort((a, b) => (a.path < b.path ? -1 : a.path > b.path ? 1 : 0));
  }

  /** Describes one path: a symlink itself, unless `follow`. */
  async stat(path: string, options: FileOptions & { follow?: boolean } = {}): Promise<EntryInfo> {
    path = checkPath(path, 'path');
    const opts = parseOptions(StatOptionsSchema, options, 'stat options');
    const { call, conn, what } = await this.#start('stat', [path], opts, opts.follow ? { flags: CallFlags.FOLLOW } : {});
    const out = await gather(call, MAX_CALL_OUTPUT, () => new RoostError('AGENT', `${what}: the guest agent sent an oversized result`));
    return toEntryInfo(oneRecord(conn, out, decodeEntryRecord, what));
  }

  /** True when the path exists (a dangling symlink exists); false for ENOENT, and for ENOTDIR (a parent is not a directory). */
  async exists(path: string, options: FileOptions = {}): Promise<boolean> {
    try {
      await this.stat(path, options);
      return true;
    } catch (e) {
      if (e instanceof RoostError && (e.code === 'NOT_FOUND' || e.details.errno === 'ENOTDIR')) return false;
      throw e;
    }
  }

  /** Creates a directory and missing parents (default mode 0o755). Resolves false if it already existed. */
  async makeDir(path: string, options: FileOptions & { mode?: number } = {}): Promise<boolean> {
    path = checkPath(path, 'path');
    const opts = parseOptions(MakeDirOptionsSchema, options, 'makeDir options');
    const { call, conn, what } = await this.#start('mkdir', [path], opts, { flags: CallFlags.PARENTS, mode: opts.mode ?? 0o755 });
    const out = await gather(call, MAX_CALL_OUTPUT, () => new RoostError('AGENT', `${what}: the guest agent sent an oversized result`));
    return oneRecord(conn, out, decodeEntryRecord, what).event === 1;
  }

  /** Removes a file, a symlink (never its target) or a directory with everything below it (`recursive`, default true). */
  async remove(path: string, options: FileOptions & { recursive?: boolean } = {}): Promise<void> {
    path = checkPath(path, 'path');
    const opts = parseOptions(RemoveOptionsSchema, options, 'remove options');
    const { call } = await this.#start('remove', [path], opts, opts.recursive === false ? {} : { flags: CallFlags.RECURSIVE });
    await gather(call, MAX_CALL_OUTPUT, () => new RoostError('AGENT', 'the guest agent sent output for remove'));
  }

  /** Renames (moves) a path; replaces an existing target unless `noReplace` (then ALREADY_EXISTS). */
  async rename(from: string, to: string, options: FileOptions & { noReplace?: boolean } = {}): Promise<EntryInfo> {
    from = checkPath(from, 'from');
    to = checkPath(to, 'to');
    const opts = parseOptions(RenameOptionsSchema, options, 'rename options');
    const { call, conn, what } = await this.#start('rename', [from, to], opts, opts.noReplace ? { flags: CallFlags.NO_REPLACE } : {});
    const out = await gather(call, MAX_CALL_OUTPUT, () => new RoostError('AGENT', `${what}: the guest agent sent an oversized result`));
    return toEntryInfo(oneRecord(conn, out, decodeEntryRecord, what));
  }

  /**
   * Watches a path (inotify in the guest); resolves once the watches are in
   * place. Iterate the result for events; a `renamed from` immediately
   * followed by its `renamed to` is one `rename` event with `oldPath`; a
   * lone `renamed to` (moved in) is a `rename` without `oldPath`, a lone
   * `renamed from` (moved out) is a `remove`. Iteration ends when the
   * watched path is deleted (after its `remove` event) or on `close()`;
   * breaking out of it closes the watch. Events wait in the guest while
   * nobody iterates (credit), up to the kernel's queue (then `overflow`).
   */
  async watch(path: string, options: FileOptions & { recursive?: boolean } = {}): Promise<FileWatchApi> {
    path = checkPath(path, 'path');
    const opts = parseOptions(WatchOptionsSchema, options, 'watch options');
    const watch = new FileWatch(path);
    const started = await this.#start('watch', [path], opts, opts.recursive ? { flags: CallFlags.RECURSIVE } : {}, (p, n) => watch.onRecord(p, n));
    return watch.attach(started.call);
  }

  /** A tar stream (POSIX pax) of a file or directory, entries named `basename(path)/...`; read as it is consumed, like `read` with format 'stream'. */
  async readArchive(path: string, options: FileOptions = {}): Promise<AsyncIterable<Uint8Array>> {
    path = checkPath(path, 'path');
    const opts = parseOptions(FileOptionsSchema, options, 'readArchive options');
    return this.#stream(await this.#start('archive', [path], opts, { window: STREAM_WINDOW }));
  }

  /** Extracts a tar stream into a directory (created, with parents, if missing), streamed under the agent's credit; as root, owners are kept. */
  async writeArchive(dir: string, tar: Uint8Array | AsyncIterable<Uint8Array>, options: FileOptions = {}): Promise<void> {
    dir = checkPath(dir, 'dir');
    if (!(tar instanceof Uint8Array) && !isAsyncIterable(tar)) {
      throw new RoostError('INVALID_ARGUMENT', 'tar: must be a Uint8Array or an async iterable of Uint8Array', {
        details: { fields: [{ path: 'tar', message: 'invalid type' }] },
      });
    }
    const opts = parseOptions(FileOptionsSchema, options, 'writeArchive options');
    const { call, what } = await this.#start('extract', [dir], opts, { stdin: true, flags: CallFlags.PARENTS });
    void pumpStdin(call, tar, what);
    await gather(call, MAX_CALL_OUTPUT, () => new RoostError('AGENT', `${what}: the guest agent sent output for extract`));
  }

  async #start(
    op: string,
    args: string[],
    opts: FileOptions,
    extra: Partial<CallRequest> = {},
    onRecord?: (payload: Buffer, wireBytes: number) => void,
  ): Promise<{ call: Call; conn: AgentConnection; what: string }> {
    const what = describeCall(op, args);
    if (opts.signal?.aborted) throw abortError(opts.signal, what);
    const conn = await this.connection();
    const user = opts.user ?? this.defaults().user;
    const request: CallRequest = { op, args, window: DEFAULT_WINDOW, ...extra };
    if (user !== undefined && user !== '') request.user = String(user);
    const call = new Call(conn, request, { what, path: args[0], signal: opts.signal, ...(onRecord ? { onRecord } : {}) });
    return { call, conn, what };
  }

  /** A byte stream of a call, once it has shown data or ended: an error before the first byte rejects here. */
  async #stream({ call }: { call: Call }): Promise<AsyncIterable<Uint8Array>> {
    await call.firstOutput;
    // Data came first: a later failure ends the stream instead.
    if (call.settled && !call.sawOutput) await call.done;
    return call.stdout;
  }
}

/** A running `files.watch`. */
class FileWatch implements FileWatchApi {
  #path: string;
  #call: Call | null = null;
  #queue: { record: EventRecord; bytes: number }[] = [];
  #ready = false;
  #readyWaiter: { resolve: () => void; reject: (e: RoostError) => void } | null = null;
  #closed = false;
  #ended = false;
  #error: RoostError | null = null;
  #iterating = false;
  #wake: (() => void) | null = null;
  /** Credit owed for records that came before attach() (none in practice: records arrive in later ticks). */
  #owed = 0;

  constructor(path: string) {
    this.#path = path;
  }

  /** @internal Called inside the frame's dispatch: throws ProtocolError on a bad record. */
  onRecord(payload: Buffer, bytes: number): void {
    const record = decodeEventRecord(payload);
    if (!this.#ready) {
      if (record.event !== WatchEvent.READY) throw new ProtocolError(`watch sent event ${record.event} before READY`);
      this.#ready = true;
      this.#grant(bytes);
      this.#readyWaiter?.resolve();
      return;
    }
    if (this.#closed) {
      this.#grant(bytes);
      return;
    }
    this.#queue.push({ record, bytes });
    this.#wake?.();
  }

  /** @internal Resolves with this watch once READY came; rejects with the call's error if it ended first. */
  attach(call: Call): Promise<FileWatchApi> {
    this.#call = call;
    if (this.#owed > 0) call.grant(this.#owed);
    this.#owed = 0;
    call.done.then(
      () => this.#end(null),
      (e: RoostError) => this.#end(e),
    );
    if (this.#ready) return Promise.resolve(this);
    return new Promise<FileWatchApi>((resolve, reject) => {
      this.#readyWaiter = { resolve: () => resolve(this), reject };
    });
  }

  #end(err: RoostError | null): void {
    this.#ended = true;
    this.#error = this.#closed ? null : err;
    if (!this.#ready) {
      this.#readyWaiter?.reject(err ?? new RoostError('AGENT', `watch ${this.#path}: the guest ended the watch before it was in place`));
      this.#readyWaiter = null;
    }
    this.#wake?.();
  }

  /** Stops watching (SIGTERM to the guest's watcher); iteration ends cleanly. Resolves once the watcher has ended. */
  async close(): Promise<void> {
    if (!this.#closed) {
      this.#closed = true;
      this.#grant(this.#queue.splice(0).reduce((n, q) => n + q.bytes, 0));
      this.#wake?.();
    }
    await this.#call?.cancel(null);
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }

  async *[Symbol.asyncIterator](): AsyncIterator<FileEvent> {
    if (this.#iterating) throw new RoostError('INVALID_STATE', 'this watch is already being iterated');
    this.#iterating = true;
    let finished = false;
    try {
      for (;;) {
        if (this.#closed) {
          finished = true;
          return;
        }
        const item = this.#take();
        if (item) {
          const r = item.record;
          if (r.event === WatchEvent.RENAME_FROM) {
            // Its partner comes right after it when the move stayed inside the watched tree.
            if (this.#queue.length === 0 && !this.#ended) await this.#waitFor(RENAME_PAIR_MS);
            if (this.#closed) continue;
            const next = this.#queue[0];
            if (next && next.record.event === WatchEvent.RENAME_TO) {
              this.#take();
              yield { type: 'rename', path: next.record.path, oldPath: r.path, isDir: isDir(r) || isDir(next.record) };
            } else {
              yield { type: 'remove', path: r.path, isDir: isDir(r) };
            }
            continue;
          }
          const ev = toFileEvent(r, this.#path);
          if (ev) yield ev;
          continue;
        }
        if (this.#ended) {
          finished = true;
          if (this.#error) throw this.#error;
          return;
        }
        await this.#waitFor();
      }
    } finally {
      this.#iterating = false;
      // A reader that breaks out stops the watch.
      if (!finished) void this.close();
    }
  }

  #take(): { record: EventRecord; bytes: number } | undefined {
    const item = this.#queue.shift();
    if (item) this.#grant(item.bytes);
    return item;
  }

  #grant(bytes: number): void {
    if (bytes <= 0) return;
    if (this.#call) this.#call.grant(bytes);
    else this.#owed += bytes;
  }

  #waitFor(ms?: number): Promise<void> {
    return new Promise<void>((resolve) => {
      const timer = ms === undefined ? undefined : setTimeout(done, ms);
      function done(): void {
        if (timer) clearTimeout(timer);
        resolve();
      }
      this.#wake = () => {
        this.#wake = null;
        done();
      };
    });
  }
}

function isDir(r: EventRecord): boolean {
  return (r.stMode & S_IFMT) === S_IFDIR;
}

function toFileEvent(r: EventRecord, watched: string): FileEvent | null {
  switch (r.event) {
    case WatchEvent.CREATE:
      return { type: 'create', path: r.path, isDir: isDir(r) };
    case WatchEvent.WRITE:
      return { type: 'write', path: r.path, isDir: isDir(r) };
    case WatchEvent.REMOVE:
      return { type: 'remove', path: r.path, isDir: isDir(r) };
    case WatchEvent.RENAME_TO:
      return { type: 'rename', path: r.path, isDir: isDir(r) };
    case WatchEvent.CHMOD:
      return { type: 'chmod', path: r.path, isDir: isDir(r) };
    case WatchEvent.OVERFLOW:
      return { type: 'overflow', path: r.path || watched, isDir: false };
    default:
      return null; // READY again, or an event a newer agent added
  }
}
