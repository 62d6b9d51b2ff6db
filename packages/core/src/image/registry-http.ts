/**
 * HTTP for registry clients: one exchange at a time over Node's `fetch`,
 * with redirects followed by hand (credentials never leave the first
 * origin), every wait bounded, transient failures retried with backoff, and
 * errors that carry the registry's own explanation. It knows nothing of
 * authentication (registry-auth.ts) or of the distribution API (registry.ts).
 */
import { abortError, RoostError } from '../errors.js';
import { backoffDelay, isRetryable, sleep } from './retry.js';

/** A retry about to happen. */
export interface RetryEvent {
  /** The host that failed (a registry, its token service, or blob storage it redirected to). */
  host: string;
  /** What was being fetched. */
  what: string;
  /** 1 for the first retry. */
  attempt: number;
  delayMs: number;
  /** Why the last try failed. */
  reason: string;
}

/** An HTTP exchange whose headers have arrived. Its body must be read to the end or discarded. */
export class Exchange {
  constructor(
    readonly res: Response,
    /** Where the response came from (after redirects). */
    readonly url: URL,
    /** Aborting it ends the body. */
    readonly controller: AbortController,
    private readonly release: () => void,
  ) {}

  /** Drops the body unread. The cancel is not awaited: undici's can hang, and nothing waits on it. */
  discard(): void {
    this.res.body?.cancel().catch(() => {});
    this.release();
  }

  /** Called once the body is finished with. */
  done(): void {
    this.release();
  }
}

/**
 * A request body: bytes, or a function that opens a stream of them. A
 * stream is opened once per send, so a request that must be sent again
 * (after an authentication challenge, or a 307/308 redirect) sends it whole.
 */
export type RequestBody = string | Uint8Array | (() => AsyncIterable<Uint8Array>);

export interface ExchangeInit {
  method?: 'GET' | 'HEAD' | 'POST' | 'PUT' | 'PATCH' | 'DELETE';
  accept?: string;
  /** Sent only to the origin of the first URL, never to one a redirect leads to. */
  authorization?: string;
  body?: RequestBody | undefined;
  contentType?: string;
  /** More request headers (`content-range`, `content-length` of a streamed body). */
  headers?: Record<string, string>;
  signal?: AbortSignal | undefined;
  /** What is fetched, for messages (`manifest of host/repo:tag`). */
  what: string;
}

const MAX_REDIRECTS = 10;
/** A registry asking to be left alone for longer than this is reported, not waited for. */
const MAX_RETRY_AFTER_MS = 60_000;
const MAX_ERROR_BODY_BYTES = 64 << 10;
const ERROR_BODY_TIMEOUT_MS = 5000;
const REDIRECT_STATUSES = new Set([301, 302, 303, 307, 308]);
/** Failures to connect that may go away: the registry restarting, a flaky network. */
const TRANSIENT_CODES = new Set([
  'ECONNREFUSED',
  'ECONNRESET',
  'ECONNABORTED',
  'EPIPE',
  'ETIMEDOUT',
  'EAI_AGAIN',
  'EHOSTUNREACH',
  'ENETUNREACH',
  'UND_ERR_SOCKET',
  'UND_ERR_CLOSED',
  'UND_ERR_CONNECT_TIMEOUT',
]);

/** The settings of a RegistryHttp, already checked (RegistryClient's options say what each means). */
export interface RegistryHttpSettings {
  userAgent: string;
  requestTimeoutMs: number;
  idleTimeoutMs: number;
  retries: number;
  retryBaseMs: number;
  onRetry: ((event: RetryEvent) => void) | undefined;
}

/**
 * Sends requests and reads their answers for one RegistryClient: its
 * exchanges, retries, bounded body reads, and the errors made from
 * unexpected answers. Shared by the client and its token fetches.
 */
export class RegistryHttp {
  private readonly userAgent: string;
  private readonly requestTimeoutMs: number;
  private readonly idleTimeoutMs: number;
  /** Retries of a request that failed transiently. */
  readonly retries: number;
  /** The first retry waits about this long. */
  readonly retryBaseMs: number;
  private readonly onRetry: ((event: RetryEvent) => void) | undefined;

  constructor(settings: RegistryHttpSettings) {
    this.userAgent = settings.userAgent;
    this.requestTimeoutMs = settings.requestTimeoutMs;
    this.idleTimeoutMs = settings.idleTimeoutMs;
    this.retries = settings.retries;
    this.retryBaseMs = settings.retryBaseMs;
    this.onRetry = settings.onRetry;
  }

  /**
   * Runs `attempt` again after a backoff while it fails with a retryable
   * error, at most `retries` times. The error that ends it is no longer
   * retryable: callers above do not multiply the retries.
   */
  async retrying<T>(host: string, what: string, signal: AbortSignal | undefined, attempt: () => Promise<T>): Promise<T> {
    for (let n = 0; ; n++) {
      try {
        return await attempt();
      } catch (e) {
        if (!isRetryable(e)) throw e;
        const retryAfterMs = typeof e.details.retryAfterMs === 'number' ? e.details.retryAfterMs : undefined;
        const details = { ...e.details, retryable: false };
        if (retryAfterMs !== undefined && retryAfterMs > MAX_RETRY_AFTER_MS) {
          throw new RoostError(e.code, `${e.message}; it asks to wait ${Math.ceil(retryAfterMs / 1000)} s before trying again: try later`, {
            cause: e,
            details,
          });
        }
        if (n >= this.retries) throw new RoostError(e.code, n > 0 ? `${e.message} (gave up after ${n} retries)` : e.message, { cause: e, details });
        const delayMs = retryAfterMs ?? backoffDelay(n, this.retryBaseMs);
        this.onRetry?.({ host, what, attempt: n + 1, delayMs, reason: e.message });
        await sleep(delayMs, signal, what);
      }
    }
  }

  /**
   * Sends one request, following redirects by hand (at most 10, http(s)
   * only): Authorization goes to the first URL's origin only, never to
   * storage a blob is redirected to. Resolves when headers arrive.
   */
  async exchange(url: URL, init: ExchangeInit): Promise<Exchange> {
    const { signal, what } = init;
    if (signal?.aborted) throw abortError(signal, what);
    const controller = new AbortController();
    const onAbort = () => controller.abort(signal!.reason);
    signal?.addEventListener('abort', onAbort, { once: true });
    const release = () => signal?.removeEventListener('abort', onAbort);
    let current = url;
    let method = init.method ?? 'GET';
    let body = init.body;
    try {
      for (let hops = 0; ; hops++) {
        const headers: Record<string, string> = { 'user-agent': this.userAgent, ...init.headers };
        if (init.accept) headers.accept = init.accept;
        if (init.authorization && current.origin === url.origin) headers.authorization = init.authorization;
        if (body !== undefined && init.contentType) headers['content-type'] = init.contentType;
        if (body === undefined) delete headers['content-length'];
        const host = current.host;
        // The answer must come within requestTimeoutMs of the last byte sent:
        // a streamed body rearms the timer with every chunk fetch takes from it.
        let timer: NodeJS.Timeout | undefined;
        const arm = () => {
          clearTimeout(timer);
          timer = setTimeout(
            () => controller.abort(new RoostError('IMAGE', `${host} did not answer ${what} within ${this.requestTimeoutMs / 1000} s`)),
            this.requestTimeoutMs,
          );
        };
        arm();
        let res: Response;
        const reading: { error?: unknown } = {};
        try {
          const sent = typeof body === 'function' ? { body: ReadableStream.from(rearming(body(), arm, reading)), duplex: 'half' as const } : { body };
          res = await fetch(current, { method, headers, ...sent, redirect: 'manual', signal: controller.signal });
        } catch (e) {
          // A body that could not be read is our failure, not the server's.
          if (reading.error !== undefined && !signal?.aborted) {
            const err = reading.error;
            throw err instanceof RoostError
              ? err
              : new RoostError('IMAGE', `reading what to send for ${what} failed: ${(err as Error).message}`, { cause: err });
          }
          throw connectError(e, host, controller, signal, what);
        } finally {
          clearTimeout(timer);
        }
        const location = res.headers.get('location');
        if (!REDIRECT_STATUSES.has(res.status) || location === null) return new Exchange(res, current, controller, release);
        res.body?.cancel().catch(() => {});
        if (hops >= MAX_REDIRECTS) throw new RoostError('IMAGE', `${url.host} redirected ${what} more than ${MAX_REDIRECTS} times`);
        let next: URL;
        try {
          next = new URL(location, current);
        } catch (e) {
          throw new RoostError('IMAGE', `${host} redirected ${what} to an invalid URL`, { cause: e });
        }
        if (next.protocol !== 'http:' && next.protocol !== 'https:')
          throw new RoostError('IMAGE', `${host} redirected ${what} to a ${next.protocol} URL; refused`);
        if (res.status === 303 || ((res.status === 301 || res.status === 302) && method !== 'GET' && method !== 'HEAD')) {
          method = 'GET';
          body = undefined;
        }
        current = next;
      }
    } catch (e) {
      release();
      throw e;
    }
  }

  /**
   * A body as chunks, each read bounded by the idle timeout. Ends the
   * exchange however iteration ends.
   */
  async *stream(ex: Exchange, what: string, signal: AbortSignal | undefined): AsyncGenerator<Uint8Array> {
    const reader = ex.res.body?.getReader();
    // Undici does not always settle a pending read when its fetch is aborted
    // (seen when the abort races the end of a body), so every read also
    // races the abort itself: a stall or an abort always ends the stream.
    const aborts = ex.controller.signal;
    let onAbort = () => {};
    const aborted = new Promise<never>((_resolve, reject) => {
      onAbort = () => reject(aborts.reason);
    });
    aborted.catch(() => {});
    if (aborts.aborted) onAbort();
    else aborts.addEventListener('abort', onAbort, { once: true });
    try {
      while (reader) {
        const timer = setTimeout(() => {
          const error = new RoostError('IMAGE', `${ex.url.host} stopped sending ${what} (nothing for ${this.idleTimeoutMs / 1000} s)`, {
            details: { retryable: true },
          });
          ex.controller.abort(error);
        }, this.idleTimeoutMs);
        const read = reader.read();
        read.catch(() => {}); // when the abort wins the race, this read may still fail later
        let chunk: Awaited<typeof read>;
        try {
          chunk = await Promise.race([read, aborted]);
        } catch (e) {
          throw bodyError(e, ex, signal, what);
        } finally {
          clearTimeout(timer);
        }
        if (chunk.done) return;
        yield chunk.value;
      }
    } finally {
      aborts.removeEventListener('abort', onAbort);
      // Not awaited, like discard: an abort has already closed the connection, and a finished body has nothing to cancel.
      reader?.cancel().catch(() => {});
      ex.done();
    }
  }

  /** A whole (small) body, refused past `limit` bytes whatever Content-Length said. */
  async readAll(ex: Exchange, limit: number, what: string, signal: AbortSignal | undefined): Promise<Buffer> {
    const chunks: Uint8Array[] = [];
    let size = 0;
    for await (const chunk of this.stream(ex, what, signal)) {
      size += chunk.length;
      if (size > limit) throw new RoostError('IMAGE', `${what} is larger than ${limit} bytes; refused`);
      chunks.push(chunk);
    }
    return Buffer.concat(chunks);
  }

  /** A retryable error for a 5xx or 429 answer, carrying Retry-After when the server sent one. */
  async transientStatus(ex: Exchange, what: string): Promise<RoostError> {
    const retryAfterMs = parseRetryAfter(ex.res.headers.get('retry-after'));
    const detail = await this.errorDetail(ex);
    return new RoostError('IMAGE', `${ex.url.host} answered ${ex.res.status} ${ex.res.statusText} to ${what}${detail}`, {
      details: { retryable: true, status: ex.res.status, ...(retryAfterMs !== undefined ? { retryAfterMs } : {}) },
    });
  }

  /** `: CODE: message` from a registry's JSON error body (`{"errors":[{"code","message"}]}`), or ''. Ends the exchange; never throws. */
  async errorDetail(ex: Exchange): Promise<string> {
    // The explanation is a nicety: a server that dribbles it out does not get to hold the caller for long.
    const timer = setTimeout(() => ex.controller.abort(new RoostError('IMAGE', 'the error message took too long')), ERROR_BODY_TIMEOUT_MS);
    try {
      if (!ex.res.headers.get('content-type')?.includes('json')) return '';
      const body = await this.readAll(ex, MAX_ERROR_BODY_BYTES, 'an error message', undefined);
      const doc = JSON.parse(body.toString('utf8')) as { errors?: { code?: unknown; message?: unknown }[] };
      const parts = (doc.errors ?? []).slice(0, 3).map((err) => [err.code, err.message].filter((p) => typeof p === 'string' && p).join(': '));
      return parts.length ? `: ${parts.join('; ').slice(0, 500)}` : '';
    } catch {
      return '';
    } finally {
      clearTimeout(timer);
      ex.discard();
    }
  }

  /** The error for an unexpected status, with the registry's own explanation when it gave one. */
  async statusError(ex: Exchange, what: string): Promise<RoostError> {
    const { status, statusText } = ex.res;
    const detail = await this.errorDetail(ex);
    const prefix = status === 403 ? 'access denied: ' : '';
    return new RoostError('IMAGE', `${prefix}${ex.url.host} answered ${status} ${statusText} to ${what}${detail}`, { details: { status } });
  }
}

/** Passes a body's chunks on, calling `progress` as each is taken (the sender is still sending). */
async function* rearming(chunks: AsyncIterable<Uint8Array>, progress: () => void, reading: { error?: unknown }): AsyncGenerator<Uint8Array> {
  try {
    for await (const chunk of chunks) {
      progress();
      yield chunk;
    }
  } catch (e) {
    reading.error = e;
    throw e;
  }
}

/** The errno-like code of a fetch failure (`ECONNREFUSED`, `UND_ERR_SOCKET`), found along its causes. */
function errorCode(e: unknown): string | undefined {
  for (let cur: unknown = e, depth = 0; cur && depth < 5; depth++) {
    const code = (cur as { code?: unknown }).code;
    if (typeof code === 'string') return code;
    const first = (cur as { errors?: unknown[] }).errors?.[0];
    cur = (cur as { cause?: unknown }).cause ?? first;
  }
  return undefined;
}

/** The message of the deepest cause: fetch's own is only "fetch failed". */
function innermostMessage(e: unknown): string {
  let cur = e;
  for (let depth = 0; depth < 5 && (cur as { cause?: unknown }).cause instanceof Error; depth++) cur = (cur as { cause: Error }).cause;
  return cur instanceof Error ? cur.message : String(cur);
}

function connectError(e: unknown, host: string, controller: AbortController, signal: AbortSignal | undefined, what: string): RoostError {
  if (signal?.aborted) return abortError(signal, what);
  const reason: unknown = controller.signal.reason;
  if (controller.signal.aborted && reason instanceof RoostError) return reason;
  const code = errorCode(e);
  if (code && TRANSIENT_CODES.has(code)) {
    const message = code.startsWith('UND_ERR') ? `${host} closed the connection before answering (${code})` : `cannot reach ${host}: ${code}`;
    return new RoostError('NETWORK', message, { cause: e, details: { retryable: true, code } });
  }
  const tls = code && /CERT|SSL|TLS|EPROTO/.test(code) ? ' (a TLS problem: if this registry serves plain http, list it in ROOST_INSECURE_REGISTRIES)' : '';
  return new RoostError('NETWORK', `cannot reach ${host}: ${code ?? innermostMessage(e)}${tls}`, { cause: e, ...(code ? { details: { code } } : {}) });
}

function bodyError(e: unknown, ex: Exchange, signal: AbortSignal | undefined, what: string): RoostError {
  if (signal?.aborted) return abortError(signal, what);
  const reason: unknown = ex.controller.signal.reason;
  if (ex.controller.signal.aborted && reason instanceof RoostError) return reason;
  return new RoostError('IMAGE', `the connection to ${ex.url.host} dropped while receiving ${what}: ${errorCode(e) ?? innermostMessage(e)}`, {
    cause: e,
    details: { retryable: true },
  });
}

/** Retry-After as milliseconds (delta-seconds or an HTTP date), or undefined. */
function parseRetryAfter(value: string | null): number | undefined {
  if (!value) return undefined;
  if (/^\d+$/.test(value.trim())) return Number(value.trim()) * 1000;
  const at = Date.parse(value);
  return Number.isNaN(at) ? undefined : Math.max(0, at - Date.now());
}
