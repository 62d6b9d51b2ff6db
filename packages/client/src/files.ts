import type { IncomingMessage } from 'node:http';
import {
  abortError,
  errorFromBody,
  errorStatus,
  FileOptionsSchema,
  isErrorCode,
  isErrorObject,
  limitBytes,
  ListOptionsSchema,
  MakeDirOptionsSchema,
  parseInput,
  ReadArchiveOptionsSchema,
  readLimitError,
  ReadOptionsSchema,
  RemoveOptionsSchema,
  RenameOptionsSchema,
  StatOptionsSchema,
  WatchOptionsSchema,
  WriteOptionsSchema,
  isRoostError,
  RoostError,
  type EntryInfo,
  type WriteInfo,
  type FileEvent,
  type FileOptions,
  type FilesApi,
  type FileWatchApi,
  type ReadFormat,
  type ReadOptions,
  type WriteData,
  type WriteOptions,
} from '@roost/api';
import { errorFromResponse, type Transport } from './http.js';
import { NdjsonParser } from './wire.js';

/** The trailer a download ends with when it failed after its first bytes (see the daemon's files routes). */
const ERROR_TRAILER = 'roost-error';

type Query = Record<string, string | number | boolean | undefined>;

function userQuery(options: FileOptions): Query {
  return options.user === undefined ? {} : { user: String(options.user) };
}

/**
 * `sandbox.files` of a remote sandbox: the same FilesApi as core's, over the
 * daemon's `/v1/sandboxes/{id}/files` routes. Errors are the daemon's
 * RoostErrors with their `details` (`errno`, `path`, and the HTTP `status`).
 * Contents and archives stream both ways: an upload is sent as its iterable
 * yields (no faster than the connection drains), and a download is read
 * from the connection as it is consumed (a slow reader slows the read in
 * the guest). A stream left unread holds its connection: read it to its
 * end, or break out of it.
 *
 * Concurrency: calls may overlap; each is one request.
 */
export class RemoteFiles implements FilesApi {
  readonly #transport: Transport;
  readonly #base: string;

  /** @internal `base` is the sandbox's path, `/v1/sandboxes/{id}`. */
  constructor(transport: Transport, base: string) {
    this.#transport = transport;
    this.#base = `${base}/files`;
  }

  /** Reads a file: as text (UTF-8, the default), bytes, or a stream read as it is consumed. */
  read(path: string, options?: ReadOptions & { format?: 'text' }): Promise<string>;
  read(path: string, options: ReadOptions & { format: 'bytes' }): Promise<Uint8Array>;
  read(path: string, options: ReadOptions & { format: 'stream' }): Promise<AsyncIterable<Uint8Array>>;
  async read(path: string, options: ReadOptions & { format?: ReadFormat } = {}): Promise<string | Uint8Array | AsyncIterable<Uint8Array>> {
    parseInput(ReadOptionsSchema, options, 'read options');
    const stream = await this.#download('content', 'application/octet-stream', path, options, `reading ${path}`);
    const format = options.format ?? 'text';
    if (format === 'stream') return stream;
    const chunks: Uint8Array[] = [];
    for await (const chunk of stream) chunks.push(chunk);
    const buf = Buffer.concat(chunks);
    return format === 'bytes' ? new Uint8Array(buf.buffer, buf.byteOffset, buf.byteLength) : buf.toString('utf8');
  }

  /**
   * Writes a file, creating missing parent directories; the new contents
   * replace the old only once all of them arrived. An async iterable is
   * streamed; if it throws, the write is abandoned (the old file stays) and
   * this rejects with its error.
   */
  async write(path: string, data: WriteData, options: WriteOptions = {}): Promise<WriteInfo> {
    parseInput(WriteOptionsSchema, options, 'write options');
    const body = typeof data === 'string' ? Buffer.from(data) : data;
    const query: Query = { path, ...userQuery(options), mode: options.mode, noReplace: options.noReplace ? 'true' : undefined };
    return this.#transport.json<WriteInfo>('PUT', `${this.#base}/content`, { query, body, signal: options.signal, timeoutMs: null, what: `writing ${path}` });
  }

  /** Entries below a directory, `depth` levels deep (default 1), sorted by path. Symlinks are not followed. */
  async list(path: string, options: FileOptions & { depth?: number } = {}): Promise<EntryInfo[]> {
    parseInput(ListOptionsSchema, options, 'list options');
    const query: Query = { path, ...userQuery(options), depth: options.depth };
    const r = await this.#transport.json<{ entries: EntryInfo[] }>('GET', `${this.#base}/list`, { query, signal: options.signal, what: `listing ${path}` });
    return r.entries;
  }

  /** Describes one path (a symlink itself, unless `follow`). */
  async stat(path: string, options: FileOptions & { follow?: boolean } = {}): Promise<EntryInfo> {
    parseInput(StatOptionsSchema, options, 'stat options');
    const query: Query = { path, ...userQuery(options), follow: options.follow ? 'true' : undefined };
    return this.#transport.json<EntryInfo>('GET', `${this.#base}/stat`, { query, signal: options.signal, what: `stat of ${path}` });
  }

  /** True when the path exists (a dangling symlink exists); false for ENOENT and ENOTDIR. */
  async exists(path: string, options: FileOptions = {}): Promise<boolean> {
    try {
      await this.stat(path, options);
      return true;
    } catch (e) {
      // As core: a missing path, or a parent that is not a directory (a NOT_FOUND without errno is the sandbox's).
      if (isRoostError(e) && ((e.code === 'NOT_FOUND' && e.details.errno !== undefined) || e.details.errno === 'ENOTDIR')) return false;
      throw e;
    }
  }

  /** Creates a directory and missing parents (default mode 0o755). Resolves false if it already existed. */
  async makeDir(path: string, options: FileOptions & { mode?: number } = {}): Promise<boolean> {
    parseInput(MakeDirOptionsSchema, options, 'makeDir options');
    const json = { path, ...(options.mode !== undefined ? { mode: options.mode } : {}), ...(options.user !== undefined ? { user: options.user } : {}) };
    const r = await this.#transport.json<{ created: boolean }>('POST', `${this.#base}/mkdir`, {
      json,
      signal: options.signal,
      what: `creating directory ${path}`,
    });
    return r.created;
  }

  /** Removes a file, a symlink (never its target) or a directory with everything below it (`recursive`, default true). */
  async remove(path: string, options: FileOptions & { recursive?: boolean } = {}): Promise<void> {
    parseInput(RemoveOptionsSchema, options, 'remove options');
    const query: Query = { path, ...userQuery(options), recursive: options.recursive === false ? 'false' : undefined };
    await this.#transport.json('DELETE', this.#base, { query, signal: options.signal, timeoutMs: null, what: `removing ${path}` });
  }

  /** Renames (moves) a path; replaces an existing target unless `noReplace`. */
  async rename(from: string, to: string, options: FileOptions & { noReplace?: boolean } = {}): Promise<EntryInfo> {
    parseInput(RenameOptionsSchema, options, 'rename options');
    const json = {
      from,
      to,
      ...(options.noReplace !== undefined ? { noReplace: options.noReplace } : {}),
      ...(options.user !== undefined ? { user: options.user } : {}),
    };
    return this.#transport.json<EntryInfo>('POST', `${this.#base}/rename`, { json, signal: options.signal, what: `renaming ${from} to ${to}` });
  }

  /**
   * Watches a directory; resolves once the watch is in place in the guest.
   * Iterate it for events; `close()` (or `signal`) ends it, and the
   * iteration then ends quietly.
   */
  async watch(path: string, options: FileOptions & { recursive?: boolean } = {}): Promise<FileWatchApi> {
    parseInput(WatchOptionsSchema, options, 'watch options');
    const what = `watching ${path}`;
    const query: Query = { path, ...userQuery(options), recursive: options.recursive ? 'true' : undefined };
    const { res, abort } = await this.#transport.stream('GET', `${this.#base}/watch`, {
      query,
      accept: 'application/x-ndjson',
      signal: options.signal,
      timeoutMs: null,
      what,
    });
    const watch = new RemoteWatch(res, abort, what, options.signal, this.#transport.endpoint.display);
    try {
      await watch.ready();
    } catch (e) {
      await watch.close();
      throw e;
    }
    return watch;
  }

  /** A tar stream (POSIX pax) of a file or directory, entries named `basename(path)/...`. */
  async readArchive(path: string, options: ReadOptions = {}): Promise<AsyncIterable<Uint8Array>> {
    parseInput(ReadArchiveOptionsSchema, options, 'readArchive options');
    return this.#download('archive', 'application/x-tar', path, options, `archiving ${path}`);
  }

  /** Extracts a tar stream into a directory (created if missing); as root, owners are kept. */
  async writeArchive(dir: string, tar: Uint8Array | AsyncIterable<Uint8Array>, options: FileOptions = {}): Promise<void> {
    parseInput(FileOptionsSchema, options, 'writeArchive options');
    const query: Query = { path: dir, ...userQuery(options) };
    await this.#transport.json('PUT', `${this.#base}/archive`, {
      query,
      body: tar,
      contentType: 'application/x-tar',
      signal: options.signal,
      timeoutMs: null,
      what: `extracting into ${dir}`,
    });
  }

  /** A download; with `maxBytes`, the daemon stops the guest past it, and what arrives is counted here too. */
  async #download(route: string, accept: string, path: string, options: ReadOptions, what: string): Promise<AsyncIterable<Uint8Array>> {
    const query: Query = { path, ...userQuery(options), maxBytes: options.maxBytes };
    // With `TE: trailers`, a failure after the first bytes comes as the daemon's error, not a broken connection.
    const { res, abort } = await this.#transport.stream('GET', `${this.#base}/${route}`, {
      query,
      accept,
      headers: { te: 'trailers' },
      signal: options.signal,
      timeoutMs: null,
      what,
    });
    const body = downloadBody(res, abort, what, options.signal, this.#transport.endpoint.display);
    const max = options.maxBytes;
    return max === undefined ? body : limitBytes(body, max, () => readLimitError(what, max, 'maxBytes', path));
  }
}

/** A download's body as bytes, read as it is consumed; a failure the daemon reported in its trailer is thrown at the end. */
async function* downloadBody(
  res: IncomingMessage,
  abort: (err: Error) => void,
  what: string,
  signal: AbortSignal | undefined,
  where: string,
): AsyncGenerator<Uint8Array> {
  let complete = false;
  try {
    for await (const chunk of res) {
      const buf = chunk as Buffer;
      yield new Uint8Array(buf.buffer, buf.byteOffset, buf.byteLength);
    }
    const trailer = res.trailers[ERROR_TRAILER];
    if (trailer !== undefined) {
      let error: unknown;
      try {
        error = JSON.parse(trailer);
      } catch {
        error = { code: 'INTERNAL', message: `${what} failed: ${trailer.slice(0, 200)}` };
      }
      throw lineError(error, what, where);
    }
    complete = true;
  } catch (e) {
    if (isRoostError(e)) throw e;
    if (signal?.aborted) throw abortError(signal, what);
    throw new RoostError('UNAVAILABLE', `${what}: the connection to the daemon at ${where} broke (did the daemon stop?)`, { cause: e });
  } finally {
    // A reader that stops early: the daemon sees the connection close and stops reading in the guest.
    if (!complete) abort(new RoostError('ABORTED', `${what}: the reader stopped`));
  }
}

/** A watch over an NDJSON response. */
class RemoteWatch implements FileWatchApi {
  readonly #res: IncomingMessage;
  readonly #abort: (err: Error) => void;
  readonly #what: string;
  readonly #signal: AbortSignal | undefined;
  readonly #where: string;
  readonly #parser = new NdjsonParser();
  readonly #lines: unknown[] = [];
  readonly #chunks: AsyncIterator<unknown>;
  #closed = false;
  #ended = false;

  constructor(res: IncomingMessage, abort: (err: Error) => void, what: string, signal: AbortSignal | undefined, where: string) {
    this.#res = res;
    this.#abort = abort;
    this.#what = what;
    this.#signal = signal;
    this.#where = where;
    this.#chunks = (res as AsyncIterable<unknown>)[Symbol.asyncIterator]();
  }

  /** The next line, or undefined at the end of the stream. */
  async #next(): Promise<unknown> {
    for (;;) {
      if (this.#lines.length > 0) return this.#lines.shift();
      if (this.#ended) return undefined;
      let r: IteratorResult<unknown>;
      try {
        r = await this.#chunks.next();
      } catch (e) {
        this.#ended = true;
        if (this.#closed) return undefined;
        if (isRoostError(e)) throw e;
        if (this.#signal?.aborted) return undefined;
        throw new RoostError('UNAVAILABLE', `${this.#what}: the connection to the daemon at ${this.#where} broke (did the daemon stop?)`, { cause: e });
      }
      if (r.done) {
        this.#ended = true;
        this.#lines.push(...this.#parser.end());
      } else {
        this.#lines.push(...this.#parser.push(r.value as Buffer));
      }
    }
  }

  /** Waits for the daemon's `ready` line. */
  async ready(): Promise<void> {
    const first = (await this.#next()) as { ready?: unknown; error?: unknown } | undefined;
    if (first?.ready === true) return;
    if (first?.error) throw lineError(first.error, this.#what, this.#where);
    throw new RoostError('UNAVAILABLE', `${this.#what}: the daemon ended the watch before it was in place`);
  }

  async *[Symbol.asyncIterator](): AsyncIterator<FileEvent> {
    try {
      for (;;) {
        if (this.#closed) return;
        const line = (await this.#next()) as (FileEvent & { error?: unknown }) | undefined;
        if (line === undefined || this.#closed) return;
        if (line.error) throw lineError(line.error, this.#what, this.#where);
        if (typeof line.type === 'string' && typeof line.path === 'string') yield line;
      }
    } finally {
      if (!this.#ended) await this.close();
    }
  }

  /** Ends the watch (the daemon stops the guest's watch when the connection closes). */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    this.#abort(new RoostError('ABORTED', `${this.#what}: closed`));
    this.#res.destroy();
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }
}

/** Rebuilds an error the daemon sent inside a stream (a trailer, an `error` line), with the status of its code. */
function lineError(error: unknown, what: string, where: string): RoostError {
  if (!isErrorObject(error)) return errorFromResponse(500, JSON.stringify({ error }), what, where);
  const details = typeof error.details === 'object' && error.details !== null ? (error.details as Record<string, unknown>) : {};
  const status = isErrorCode(error.code) ? errorStatus({ code: error.code, details }) : 500;
  return errorFromBody(error, { code: 'INTERNAL', message: error.message }, { status });
}
