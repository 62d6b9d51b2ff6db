import { setMaxListeners } from 'node:events';
import { readFile } from 'node:fs/promises';
import http, { type IncomingMessage } from 'node:http';
import https from 'node:https';
import { homedir } from 'node:os';
import { isAbsolute, join, resolve } from 'node:path';
import {
  abortError,
  apiTokenPath,
  daemonSocketPath,
  DEFAULT_TCP_PORT,
  ERROR_CODES,
  DISK_FULL_STATUS,
  ERROR_STATUS,
  errorFromBody,
  isErrorObject,
  RoostError,
  type RoostErrorCode,
} from '@roost/api';

/** Where a daemon listens: a unix socket, or an HTTP(S) address. */
export interface Endpoint {
  /** The unix socket, for a local daemon. */
  socketPath?: string;
  protocol: 'http:' | 'https:';
  hostname: string;
  port: number;
  /** The address as users write it (`unix:///home/me/.roost/roost.sock`, `http://127.0.0.1:7423`). */
  display: string;
}

/** The Roost home: the option, else $ROOST_HOME, else ~/.roost. */
export function resolveHome(home?: string): string {
  return resolve(home ?? process.env.ROOST_HOME ?? join(homedir(), '.roost'));
}

/**
 * Parses a daemon address: `unix:///path/to.sock`, `http://host:port`,
 * `https://host:port`, `tcp://host:port` (as HTTP), `host:port`, or a bare
 * path to a socket.
 */
export function parseHost(host: string): Endpoint {
  const h = host.trim();
  if (h.startsWith('unix://') || h.startsWith('unix:')) {
    const path = h.startsWith('unix://') ? h.slice('unix://'.length) : h.slice('unix:'.length);
    if (!path) throw new RoostError('INVALID_ARGUMENT', `host ${host}: a unix address names a socket: unix:///path/to/roost.sock`);
    return socketEndpoint(path);
  }
  if (isAbsolute(h) || h.startsWith('./') || h.startsWith('../') || h.endsWith('.sock')) return socketEndpoint(h);
  const withScheme = /^[a-z][a-z0-9+.-]*:\/\//i.test(h) ? h : `http://${h}`;
  let url: URL;
  try {
    url = new URL(withScheme.replace(/^tcp:\/\//i, 'http://'));
  } catch (cause) {
    throw new RoostError('INVALID_ARGUMENT', `host ${host}: expected unix:///path/to/roost.sock, http://HOST:PORT or a socket path`, { cause });
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:') {
    throw new RoostError('INVALID_ARGUMENT', `host ${host}: unsupported scheme ${url.protocol} (use unix://, http:// or https://)`);
  }
  if (url.pathname !== '/' && url.pathname !== '') {
    throw new RoostError('INVALID_ARGUMENT', `host ${host}: give the daemon's address without a path`);
  }
  const port = url.port ? Number(url.port) : url.protocol === 'https:' ? 443 : DEFAULT_TCP_PORT;
  const hostname = url.hostname.replace(/^\[(.*)\]$/, '$1');
  return { protocol: url.protocol, hostname, port, display: `${url.protocol}//${url.host}${url.port ? '' : `:${port}`}` };
}

function socketEndpoint(path: string): Endpoint {
  const abs = resolve(path);
  return { socketPath: abs, protocol: 'http:', hostname: 'localhost', port: 80, display: `unix://${abs}` };
}

/** The default daemon of a home: its unix socket. */
export function defaultEndpoint(home: string): Endpoint {
  return socketEndpoint(daemonSocketPath(home));
}

/** Options of one request. */
export interface RequestOptions {
  query?: Record<string, string | number | boolean | string[] | undefined>;
  /** A JSON body (sent with Content-Type: application/json). */
  json?: unknown;
  /**
   * A raw body: bytes, or an async iterable sent as it yields (chunked, with
   * backpressure: the next chunk is taken only when the connection drained).
   */
  body?: Uint8Array | AsyncIterable<Uint8Array | string>;
  /** The media type of a raw body (default application/octet-stream). */
  contentType?: string;
  accept?: string;
  headers?: Record<string, string>;
  signal?: AbortSignal | undefined;
  /**
   * How long the daemon may take to answer with its headers, in ms; `null`
   * for no limit (calls bounded by their own timeout on the daemon's side).
   * Default: the client's timeout.
   */
  timeoutMs?: number | null;
  /** What the call is, for error messages ("GET /v1/sandboxes"). */
  what?: string;
}

/** A streaming response: the body is read by the caller; `abort` ends it. */
export interface StreamingResponse {
  res: IncomingMessage;
  /** Destroys the request and the response with `err` (the daemon sees the connection close). */
  abort(err: Error): void;
}

/** Bytes of an error body read before giving up on it. */
const MAX_ERROR_BODY = 64 << 10;
/** Bytes of a JSON or text response read before the call fails (logs have their own `tail`). */
const MAX_BODY = 256 << 20;

/**
 * HTTP over a unix socket or TCP with node:http, keep-alive, bearer auth,
 * and every failure turned into a RoostError.
 *
 * Concurrency: any number of requests may run at once.
 */
export class Transport {
  readonly endpoint: Endpoint;
  #agent: http.Agent;
  #token: TokenSource;
  #timeoutMs: number;
  #closed = new AbortController();

  constructor(endpoint: Endpoint, token: TokenSource, timeoutMs: number) {
    this.endpoint = endpoint;
    this.#token = token;
    this.#timeoutMs = timeoutMs;
    // Every request in flight listens for close(): hundreds at once are normal, not a leak.
    setMaxListeners(0, this.#closed.signal);
    // No cap on sockets: exec and event streams hold theirs for as long as they run, and a stdin write must never queue behind them.
    const agentOptions = { keepAlive: true, keepAliveMsecs: 1_000, maxFreeSockets: 8 };
    this.#agent = endpoint.protocol === 'https:' ? new https.Agent(agentOptions) : new http.Agent(agentOptions);
  }

  /** Aborted when the client closes: long calls (event streams, execs) listen to it. */
  get closedSignal(): AbortSignal {
    return this.#closed.signal;
  }

  /** Ends every request in flight and the idle connections. */
  close(): void {
    if (!this.#closed.signal.aborted) this.#closed.abort(new RoostError('ABORTED', 'the client was closed'));
    this.#agent.destroy();
  }

  /** Sends a request; resolves with a 2xx response whose body the caller reads. Non-2xx answers reject with the daemon's RoostError. */
  async stream(method: string, path: string, options: RequestOptions = {}): Promise<StreamingResponse> {
    try {
      return await this.#send(method, path, options);
    } catch (e) {
      // A kept-alive socket the daemon had just closed: a GET is safe to send again.
      if (method === 'GET' && (e as { retryable?: boolean }).retryable) return this.#send(method, path, options);
      throw e;
    }
  }

  /** Sends a request and parses its JSON answer (undefined for 204). */
  async json<T>(method: string, path: string, options: RequestOptions = {}): Promise<T> {
    const text = await this.text(method, path, { accept: 'application/json', ...options });
    if (text === '') return undefined as T;
    try {
      return JSON.parse(text) as T;
    } catch (cause) {
      throw new RoostError(
        'INTERNAL',
        `${options.what ?? `${method} ${path}`}: the daemon at ${this.endpoint.display} answered with something other than JSON`,
        { cause },
      );
    }
  }

  /** Sends a request and reads its whole body as text. */
  async text(method: string, path: string, options: RequestOptions = {}): Promise<string> {
    const { res, abort } = await this.stream(method, path, options);
    try {
      return (
        await readAll(res, MAX_BODY, () => abort(new RoostError('RESOURCE_EXHAUSTED', `${method} ${path}: the answer is larger than ${MAX_BODY} bytes`)))
      ).toString('utf8');
    } catch (e) {
      throw this.#mapError(e, options.what ?? `${method} ${path}`);
    }
  }

  async #send(method: string, path: string, options: RequestOptions): Promise<StreamingResponse> {
    const what = options.what ?? `${method} ${path}`;
    const signals = [this.#closed.signal, ...(options.signal ? [options.signal] : [])];
    for (const s of signals) if (s.aborted) throw abortError(s, what);
    const token = await this.#token();
    const headers: Record<string, string> = { accept: options.accept ?? 'application/json', ...options.headers };
    if (token) headers.authorization = `Bearer ${token}`;
    let body: Uint8Array | undefined;
    let source: AsyncIterable<Uint8Array | string> | undefined;
    if (options.json !== undefined) {
      body = Buffer.from(JSON.stringify(options.json));
      headers['content-type'] = 'application/json';
    } else if (options.body !== undefined) {
      if (options.body instanceof Uint8Array) body = options.body;
      else source = options.body;
      headers['content-type'] = options.contentType ?? 'application/octet-stream';
    }
    if (body) headers['content-length'] = String(body.byteLength);
    else if (!source && (method === 'POST' || method === 'PUT')) headers['content-length'] = '0';
    const fullPath = `${path}${queryString(options.query)}`;
    const e = this.endpoint;
    const mod = e.protocol === 'https:' ? https : http;

    return new Promise<StreamingResponse>((resolvePromise, reject) => {
      let settled = false;
      let res: IncomingMessage | undefined;
      const req = mod.request({
        method,
        path: fullPath,
        headers,
        agent: this.#agent,
        ...(e.socketPath ? { socketPath: e.socketPath } : { hostname: e.hostname, port: e.port }),
      });
      const cleanups: (() => void)[] = [];
      const cleanup = () => cleanups.splice(0).forEach((c) => c());
      const abort = (err: Error) => {
        if (res && !res.destroyed) res.destroy(err);
        if (!req.destroyed) req.destroy(err);
      };
      const fail = (err: unknown) => {
        cleanup();
        if (settled) return;
        settled = true;
        const mapped = this.#mapError(err, what);
        if ((err as NodeJS.ErrnoException).code === 'ECONNRESET' && req.reusedSocket && !res) (mapped as { retryable?: boolean }).retryable = true;
        reject(mapped);
      };
      for (const s of signals) {
        const onAbort = () => {
          const err = abortError(s, what);
          abort(err);
          fail(err);
        };
        s.addEventListener('abort', onAbort, { once: true });
        cleanups.push(() => s.removeEventListener('abort', onAbort));
      }
      const timeoutMs = options.timeoutMs === undefined ? this.#timeoutMs : options.timeoutMs;
      if (timeoutMs !== null && timeoutMs > 0) {
        const timer = setTimeout(() => {
          const err = new RoostError('TIMEOUT', `${what}: the daemon at ${e.display} did not answer within ${timeoutMs} ms`);
          abort(err);
          fail(err);
        }, timeoutMs);
        timer.unref();
        cleanups.push(() => clearTimeout(timer));
      }
      req.on('error', fail);
      req.on('response', (r) => {
        res = r;
        // An answer before the whole body went (an error): the rest is not sent.
        if (source && !req.writableEnded) {
          const stop = () => req.destroy();
          r.once('end', stop);
          r.once('close', stop);
        }
        // Errors reach readers through iteration; without a reader, a destroyed body must not crash the process.
        r.on('error', () => {});
        const status = r.statusCode ?? 0;
        if (status >= 200 && status < 300) {
          if (settled) {
            r.destroy();
            return;
          }
          settled = true;
          // Timeouts bound the wait for headers; aborts keep working while the body streams.
          cleanup();
          for (const s of signals) {
            const onAbort = () => abort(abortError(s, what));
            s.addEventListener('abort', onAbort, { once: true });
            r.once('close', () => s.removeEventListener('abort', onAbort));
          }
          resolvePromise({ res: r, abort });
          return;
        }
        // Cannot reject: a body that fails to read is an empty one, and fail() settles the call.
        void readAll(r, MAX_ERROR_BODY, () => r.destroy())
          .catch(() => Buffer.alloc(0))
          .then((buf) => {
            const err = errorFromResponse(status, buf.toString('utf8'), what, e.display);
            if (err.code === 'UNAUTHENTICATED' && !token) {
              const why = this.#token.missing?.() ?? 'no token was sent: set ROOST_TOKEN, or give the client its token';
              fail(new RoostError('UNAUTHENTICATED', `${err.message} (${why})`, { details: err.details }));
            } else fail(err);
          });
      });
      if (!source) {
        req.end(body);
        return;
      }
      void pumpBody(req, source, () => settled || res !== undefined).then(
        () => {
          if (!req.destroyed) req.end();
        },
        (err: unknown) => {
          // The source failed: the daemon sees a cut body and keeps nothing of it (as core: ABORTED, or the source's RoostError).
          abort(err instanceof Error ? err : new Error(String(err)));
          cleanup();
          if (settled) return;
          settled = true;
          reject(
            err instanceof RoostError
              ? err
              : new RoostError('ABORTED', `${what}: reading the data to send failed: ${(err as Error)?.message ?? String(err)}`, { cause: err }),
          );
        },
      );
    });
  }

  #mapError(err: unknown, what: string): RoostError {
    if (err instanceof RoostError) return err;
    const code = (err as NodeJS.ErrnoException | undefined)?.code;
    const where = this.endpoint.display;
    switch (code) {
      case 'ENOENT':
      case 'ECONNREFUSED':
        return new RoostError('UNAVAILABLE', `no daemon listens at ${where} (start one with \`roost serve\`)`, { cause: err });
      case 'EACCES':
      case 'EPERM':
        return new RoostError('UNAVAILABLE', `cannot connect to the daemon at ${where}: permission denied (its socket is private to the user who runs it)`, {
          cause: err,
        });
      case 'ENOTFOUND':
      case 'EAI_AGAIN':
        return new RoostError('UNAVAILABLE', `cannot resolve the daemon's host ${this.endpoint.hostname} (${code})`, { cause: err });
      case 'ETIMEDOUT':
      case 'EHOSTUNREACH':
      case 'ENETUNREACH':
        return new RoostError('UNAVAILABLE', `cannot reach the daemon at ${where} (${code})`, { cause: err });
      case 'ECONNRESET':
      case 'EPIPE':
      case 'ERR_STREAM_PREMATURE_CLOSE':
        return new RoostError('UNAVAILABLE', `${what}: the connection to the daemon at ${where} broke (did the daemon stop?)`, { cause: err });
      default:
        if (err instanceof Error && err.message === 'aborted') {
          return new RoostError('UNAVAILABLE', `${what}: the connection to the daemon at ${where} broke (did the daemon stop?)`, { cause: err });
        }
        return new RoostError('INTERNAL', `${what}: ${err instanceof Error ? err.message : String(err)}`, { cause: err });
    }
  }
}

/** Rebuilds the daemon's RoostError from an error answer (`{ "error": { code, message, details } }`). */
export function errorFromResponse(status: number, text: string, what: string, where: string): RoostError {
  try {
    const e = (JSON.parse(text) as { error?: unknown }).error;
    if (isErrorObject(e)) return errorFromBody(e, { code: statusCode(status), message: e.message }, { status });
  } catch {
    // Not an error body: a proxy, or not a Roost daemon.
  }
  const snippet = text.trim().slice(0, 200);
  return new RoostError(statusCode(status), `${what}: the daemon at ${where} answered ${status}${snippet ? `: ${snippet}` : ''}`, { details: { status } });
}

/** The code of an HTTP status, from the status table (the first code with it). */
function statusCode(status: number): RoostErrorCode {
  // Statuses a proxy in front of the daemon answers with.
  if (status === 500) return 'INTERNAL';
  if (status === 502 || status === 503) return 'UNAVAILABLE';
  if (status === 504) return 'TIMEOUT';
  if (status === DISK_FULL_STATUS) return 'RESOURCE_EXHAUSTED';
  for (const code of ERROR_CODES) if (ERROR_STATUS[code] === status) return code;
  return status >= 400 && status < 500 ? 'INVALID_ARGUMENT' : 'INTERNAL';
}

function queryString(query: RequestOptions['query']): string {
  if (!query) return '';
  const params = new URLSearchParams();
  for (const [k, v] of Object.entries(query)) {
    if (v === undefined) continue;
    if (Array.isArray(v)) for (const item of v) params.append(k, item);
    else params.append(k, String(v));
  }
  const s = params.toString();
  return s ? `?${s}` : '';
}

/**
 * Writes an async iterable into a request, waiting for 'drain' when the
 * connection is full. Stops early when `stopped()` (an answer came) or the
 * request is destroyed.
 */
async function pumpBody(req: http.ClientRequest, source: AsyncIterable<Uint8Array | string>, stopped: () => boolean): Promise<void> {
  for await (const chunk of source) {
    if (stopped() || req.destroyed) return;
    const buf = typeof chunk === 'string' ? Buffer.from(chunk) : chunk;
    if (buf.byteLength === 0) continue;
    if (!req.write(buf)) {
      await new Promise<void>((resolve) => {
        const done = () => {
          req.off('drain', done);
          req.off('close', done);
          resolve();
        };
        req.on('drain', done);
        req.on('close', done);
      });
    }
  }
}

/** Reads a whole body, at most `max` bytes (calls `tooBig` past that and rejects). */
export async function readAll(res: IncomingMessage, max: number, tooBig: () => void): Promise<Buffer> {
  const chunks: Buffer[] = [];
  let n = 0;
  for await (const c of res) {
    const buf = c as Buffer;
    n += buf.length;
    if (n > max) {
      tooBig();
      throw new RoostError('RESOURCE_EXHAUSTED', `the answer is larger than ${max} bytes`);
    }
    chunks.push(buf);
  }
  return Buffer.concat(chunks);
}

/**
 * Where a client's API token comes from; `missing` says why none could be
 * read (the token file is gone or unreadable), for the message of a 401.
 */
export type TokenSource = (() => Promise<string | undefined>) & { missing?: () => string | undefined };

/** Reads the API token: the option, else $ROOST_TOKEN, else (for a local socket) the home's token file. */
export function tokenSource(options: { token?: string; home: string; local: boolean }): TokenSource {
  if (options.token) {
    const t = options.token;
    return () => Promise.resolve(t);
  }
  const env = process.env.ROOST_TOKEN;
  if (env) return () => Promise.resolve(env);
  if (!options.local) return () => Promise.resolve(undefined);
  const path = apiTokenPath(options.home);
  let cached: Promise<string | undefined> | undefined;
  let missing: string | undefined;
  const source: TokenSource = () => {
    cached ??= readFile(path, 'utf8').then(
      (t) => {
        missing = t.trim() ? undefined : `the token file ${path} is empty: restart the daemon to have a new one made, or set ROOST_TOKEN`;
        return t.trim() || undefined;
      },
      (e: NodeJS.ErrnoException) => {
        // No token file: the daemon will answer UNAUTHENTICATED if it needs one. Read it again next time.
        cached = undefined;
        missing =
          e.code === 'ENOENT'
            ? `the token file ${path} is missing: the daemon writes it when it starts, so restart the daemon (\`roost serve\`) to have a new one made, or set ROOST_TOKEN`
            : `the token file ${path} could not be read (${e.code ?? e.message}): set ROOST_TOKEN, or fix the file`;
        return undefined;
      },
    );
    return cached;
  };
  source.missing = () => missing;
  return source;
}
