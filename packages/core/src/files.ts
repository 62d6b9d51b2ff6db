import { CallFlags, DEFAULT_WINDOW, decodeEntryRecord, type CallRequest } from '@roost/protocol';
import {
  FileOptionsSchema,
  GuestPathSchema,
  ListOptionsSchema,
  MakeDirOptionsSchema,
  parseInput,
  limitBytes,
  ReadArchiveOptionsSchema,
  readLimitError,
  ReadOptionsSchema,
  RemoveOptionsSchema,
  RenameOptionsSchema,
  StatOptionsSchema,
  WatchOptionsSchema,
  WriteOptionsSchema,
  type EntryInfo,
  type FileOptions,
  type FilesApi,
  type FileWatchApi,
  type ReadFormat,
  type ReadOptions,
  type WriteData,
  type WriteInfo,
  type WriteOptions,
} from '@roost/api';
import type { AgentConnection } from './agent/connection.js';
import { abortError, RoostError } from './errors.js';
import { Call, describeCall, gather, MAX_CALL_OUTPUT, oneRecord, pumpStdin, records } from './files/call.js';
import { toEntryInfo } from './files/entry-info.js';
import { FileWatch } from './files/watch.js';

// The parts, from the path their users have always imported them from.
export { MAX_CALL_OUTPUT, runCall, type RunCallOptions } from './files/call.js';
export { callError, errnoName } from './files/call-error.js';
export { toEntryInfo } from './files/entry-info.js';

/*
 * `sandbox.files`: the agent's built-in file operations (docs/PROTOCOL.md,
 * "Calls"). Each operation is one CALL stream; the agent runs it in a child
 * with the rights of the requested user. Results come back as records
 * (entries on fd 1, one error record on fd 2 with exit status 1) or as raw
 * bytes (read, archive), always under the stream's credit. One call and its
 * results are in files/call.ts, error records in files/call-error.ts, entry
 * records in files/entry-info.ts, `watch` in files/watch.ts.
 */

/** Most bytes `read` gathers as text or bytes; larger files are read with format 'stream'. */
const MAX_READ_GATHER = 256 << 20;
/** Credit per fd for streaming reads (read, archive): keeps the channel busy, bounds memory per stream. */
const STREAM_WINDOW = 2 << 20;

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
    private readonly defaults: () => { user?: string | undefined; maxBytes?: number | undefined } = () => ({}),
  ) {}

  read(path: string, options?: ReadOptions & { format?: 'text' }): Promise<string>;
  read(path: string, options: ReadOptions & { format: 'bytes' }): Promise<Uint8Array>;
  read(path: string, options: ReadOptions & { format: 'stream' }): Promise<AsyncIterable<Uint8Array>>;
  /**
   * Reads a file: as text (UTF-8, the default) or bytes (at most 256 MiB;
   * more is RESOURCE_EXHAUSTED), or as a stream read from the guest as it is
   * consumed. A failure before the first byte (a missing file) rejects
   * `read` itself, also for 'stream'; a later one ends the stream with the
   * error. Breaking out of the stream (or `signal`) stops the read. At most
   * `maxBytes` (default: the sandbox's disk size) come from the guest: more
   * is RESOURCE_EXHAUSTED and the read is stopped.
   */
  async read(path: string, options: ReadOptions & { format?: ReadFormat } = {}): Promise<string | Uint8Array | AsyncIterable<Uint8Array>> {
    path = checkPath(path, 'path');
    const opts = parseInput(ReadOptionsSchema, options, 'read options');
    const format = opts.format ?? 'text';
    const limit = this.#limit(opts.maxBytes);
    const started = await this.#start('read', [path], opts, format === 'stream' ? { window: STREAM_WINDOW } : {});
    if (format === 'stream') return this.#stream(started, limit, path);
    const bytes = await gather(started.call, Math.min(MAX_READ_GATHER, limit), () =>
      limit < MAX_READ_GATHER
        ? readLimitError(started.what, limit, 'maxBytes', path)
        : new RoostError('RESOURCE_EXHAUSTED', `${started.what}: the file is larger than ${MAX_READ_GATHER >> 20} MiB; read it with format 'stream'`, {
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
    const opts = parseInput(WriteOptionsSchema, options, 'write options');
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
    const opts = parseInput(ListOptionsSchema, options, 'list options');
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
    const opts = parseInput(StatOptionsSchema, options, 'stat options');
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
    const opts = parseInput(MakeDirOptionsSchema, options, 'makeDir options');
    const { call, conn, what } = await this.#start('mkdir', [path], opts, { flags: CallFlags.PARENTS, mode: opts.mode ?? 0o755 });
    const out = await gather(call, MAX_CALL_OUTPUT, () => new RoostError('AGENT', `${what}: the guest agent sent an oversized result`));
    return oneRecord(conn, out, decodeEntryRecord, what).event === 1;
  }

  /** Removes a file, a symlink (never its target) or a directory with everything below it (`recursive`, default true). */
  async remove(path: string, options: FileOptions & { recursive?: boolean } = {}): Promise<void> {
    path = checkPath(path, 'path');
    const opts = parseInput(RemoveOptionsSchema, options, 'remove options');
    const { call } = await this.#start('remove', [path], opts, opts.recursive === false ? {} : { flags: CallFlags.RECURSIVE });
    await gather(call, MAX_CALL_OUTPUT, () => new RoostError('AGENT', 'the guest agent sent output for remove'));
  }

  /** Renames (moves) a path; replaces an existing target unless `noReplace` (then ALREADY_EXISTS). */
  async rename(from: string, to: string, options: FileOptions & { noReplace?: boolean } = {}): Promise<EntryInfo> {
    from = checkPath(from, 'from');
    to = checkPath(to, 'to');
    const opts = parseInput(RenameOptionsSchema, options, 'rename options');
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
    const opts = parseInput(WatchOptionsSchema, options, 'watch options');
    const watch = new FileWatch(path);
    const started = await this.#start('watch', [path], opts, opts.recursive ? { flags: CallFlags.RECURSIVE } : {}, (p, n) => watch.onRecord(p, n));
    return watch.attach(started.call);
  }

  /**
   * A tar stream (POSIX pax) of a file or directory, entries named
   * `basename(path)/...`; read as it is consumed, like `read` with format
   * 'stream', and bounded the same way (`maxBytes` of archive).
   */
  async readArchive(path: string, options: ReadOptions = {}): Promise<AsyncIterable<Uint8Array>> {
    path = checkPath(path, 'path');
    const opts = parseInput(ReadArchiveOptionsSchema, options, 'readArchive options');
    const limit = this.#limit(opts.maxBytes);
    return this.#stream(await this.#start('archive', [path], opts, { window: STREAM_WINDOW }), limit, path);
  }

  /**
   * @internal An image builder's step boundary: the agent ends the command
   * root's processes and seals its changes so far as a layer (docs/PROTOCOL.md,
   * `commit`). Resolves to the layer's number. AGENT when the agent does not
   * serve layers (a sandbox booted with an older agent).
   */
  async _commitLayer(options: { signal?: AbortSignal } = {}): Promise<number> {
    const conn = await this.connection();
    if (!conn.supports('LAYERS'))
      throw new RoostError('AGENT', 'the guest agent does not serve layers (commit): boot the sandbox with the agent `roost setup` built');
    const { call, what } = await this.#start('commit', [], { user: '0', ...options });
    const text = Buffer.from(await gather(call, 64, () => new RoostError('AGENT', `${what}: the guest agent sent more than a layer number`))).toString('utf8');
    const n = Number(text);
    if (!Number.isInteger(n) || n < 1)
      throw new RoostError('AGENT', `${what}: the guest agent answered ${JSON.stringify(text.slice(0, 20))}, not a layer number`);
    return n;
  }

  /** @internal The changes of sealed layer `n` as a tar stream with extended attributes (overlayfs whiteouts and opaque markers as they are). */
  async _readLayer(n: number, options: { signal?: AbortSignal } = {}): Promise<AsyncIterable<Uint8Array>> {
    return this.#stream(
      await this.#start('archive', [String(n)], { user: '0', ...options }, { window: STREAM_WINDOW, flags: CallFlags.LAYER }),
      Infinity,
      `layer ${n}`,
    );
  }

  /** The bound of one read: the caller's, else the sandbox's (its disk size), else none. */
  #limit(maxBytes: number | undefined): number {
    return maxBytes ?? this.defaults().maxBytes ?? Infinity;
  }

  /** Extracts a tar stream into a directory (created, with parents, if missing), streamed under the agent's credit; as root, owners are kept. */
  async writeArchive(dir: string, tar: Uint8Array | AsyncIterable<Uint8Array>, options: FileOptions = {}): Promise<void> {
    dir = checkPath(dir, 'dir');
    if (!(tar instanceof Uint8Array) && !isAsyncIterable(tar)) {
      throw new RoostError('INVALID_ARGUMENT', 'tar: must be a Uint8Array or an async iterable of Uint8Array', {
        details: { fields: [{ path: 'tar', message: 'invalid type' }] },
      });
    }
    const opts = parseInput(FileOptionsSchema, options, 'writeArchive options');
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

  /**
   * A byte stream of a call, once it has shown data or ended: an error
   * before the first byte rejects here. More than `limit` bytes end it with
   * RESOURCE_EXHAUSTED and stop the call.
   */
  async #stream({ call, what }: { call: Call; what: string }, limit: number, path: string): Promise<AsyncIterable<Uint8Array>> {
    await call.firstOutput;
    // Data came first: a later failure ends the stream instead.
    if (call.settled && !call.sawOutput) await call.done;
    if (limit === Infinity) return call.stdout;
    // Leaving the inner iterator (the throw) ends the call in the guest.
    return limitBytes(call.stdout, limit, () => readLimitError(what, limit, 'maxBytes', path));
  }
}
