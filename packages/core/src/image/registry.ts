import { createHash } from 'node:crypto';
import { isIPv4 } from 'node:net';
import { abortError, RoostError } from '../errors.js';
import { isRegistryHost, normalizeRegistry, type CredentialStore, type Credentials } from './auth.js';
import { parseDigest } from './blobs.js';
import { MANIFEST_ACCEPT, MAX_DOCUMENT_BYTES, type Descriptor, type ImageSource } from './manifest.js';
import { registryApiHost, type ImageReference } from './reference.js';
import { backoffDelay, BACKOFF_BASE_MS, isRetryable, sleep } from './retry.js';

export interface RegistryClientOptions {
  /**
   * Where credentials come from. Asked only when a registry demands
   * authentication, at most once per registry for the client's lifetime.
   * Default: none (anonymous pulls only).
   */
  credentials?: CredentialStore | ((registry: string) => Promise<Credentials | undefined>);
  /**
   * Registries spoken to over plain http (`host:port`, or `host` for every
   * port), as Docker's `insecure-registries`. Loopback registries always
   * are. Default: `$ROOST_INSECURE_REGISTRIES`, a comma-separated list.
   */
  insecureRegistries?: string[];
  /** How long a server may take to send response headers. Default 30 s. */
  requestTimeoutMs?: number;
  /** How long a response body may make no progress. Default 30 s. */
  idleTimeoutMs?: number;
  /** Retries of a request that failed transiently (5xx, 429, refused or reset connection). Default 4. */
  retries?: number;
  /** The first retry waits about this long, doubling up to 5 s. Default 200 ms. */
  retryBaseMs?: number;
  userAgent?: string;
  /** Called before each retry, for logging. */
  onRetry?: (event: RetryEvent) => void;
}

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

/** One challenge of a `WWW-Authenticate` header. */
export interface AuthChallenge {
  /** The scheme, lowercased (`basic`, `bearer`). */
  scheme: string;
  /** Parameters by lowercased name, values unquoted. */
  params: Record<string, string>;
  /** A token68 credential in place of parameters (rare in challenges). */
  token68?: string;
}

const TCHAR_RE = /[!#$%&'*+\-.^_`|~0-9A-Za-z]/;
const TOKEN68_RE = /[A-Za-z0-9\-._~+/]+=*[ \t]*(?=,|$)/y;

/**
 * Parses a `WWW-Authenticate` header value (RFC 7235: one or more
 * challenges, each a scheme then a token68 or comma-separated
 * `name=token` / `name="quoted \"string\""` parameters). Several headers
 * joined by ", " parse as one. Malformed input ends parsing: what was read
 * before it is returned, as browsers and Docker do.
 */
export function parseWwwAuthenticate(header: string): AuthChallenge[] {
  const out: AuthChallenge[] = [];
  const n = header.length;
  let i = 0;
  const skipSpace = () => {
    while (i < n && (header[i] === ' ' || header[i] === '\t')) i++;
  };
  const token = () => {
    const start = i;
    while (i < n && TCHAR_RE.test(header[i]!)) i++;
    return header.slice(start, i);
  };
  const quoted = (): string | undefined => {
    let value = '';
    for (i++; i < n;) {
      const c = header[i++]!;
      if (c === '"') return value;
      if (c === '\\') {
        if (i >= n) return undefined;
        value += header[i++]!;
      } else value += c;
    }
    return undefined;
  };

  challenges: while (i < n) {
    skipSpace();
    if (header[i] === ',') {
      i++;
      continue;
    }
    const scheme = token();
    if (!scheme) break;
    const challenge: AuthChallenge = { scheme: scheme.toLowerCase(), params: Object.create(null) as Record<string, string> };
    out.push(challenge);
    skipSpace();
    TOKEN68_RE.lastIndex = i;
    const t68 = TOKEN68_RE.exec(header);
    if (t68) {
      challenge.token68 = t68[0].trim();
      i += t68[0].length;
      continue;
    }
    while (i < n) {
      skipSpace();
      if (header[i] === ',') {
        i++;
        continue;
      }
      const start = i;
      const name = token();
      if (!name) break challenges;
      skipSpace();
      if (header[i] !== '=') {
        // A token not followed by "=" is the scheme of the next challenge.
        i = start;
        continue challenges;
      }
      i++;
      skipSpace();
      const value = header[i] === '"' ? quoted() : token() || undefined;
      if (value === undefined) break challenges;
      challenge.params[name.toLowerCase()] = value;
      skipSpace();
      if (i < n && header[i] !== ',') break challenges;
    }
  }
  return out;
}

type Challenge = { scheme: 'basic' } | { scheme: 'bearer'; realm: string; service?: string };

/** The challenge Roost answers: Bearer when offered (with a realm), else Basic. */
function pickChallenge(challenges: AuthChallenge[]): Challenge | undefined {
  const bearer = challenges.find((c) => c.scheme === 'bearer' && c.params.realm);
  if (bearer) return { scheme: 'bearer', realm: bearer.params.realm!, ...(bearer.params.service !== undefined ? { service: bearer.params.service } : {}) };
  return challenges.some((c) => c.scheme === 'basic') ? { scheme: 'basic' } : undefined;
}

interface CachedToken {
  promise: Promise<string>;
  /** Set once the token arrived. */
  value?: string;
  expiresAt: number;
}

/** What one source of credentials has learned: each registry's challenge, and bearer tokens per scope. */
class AuthState {
  readonly challenges = new Map<string, Challenge>();
  readonly tokens = new Map<string, CachedToken>();
  private readonly looked = new Map<string, Promise<Credentials | undefined>>();

  constructor(private readonly lookup: (registry: string) => Promise<Credentials | undefined>) {}

  /**
   * The registry's credentials, looked up once, until `forget`: a failed
   * lookup is tried again next time.
   */
  credentials(registry: string): Promise<Credentials | undefined> {
    let p = this.looked.get(registry);
    if (!p) {
      p = this.lookup(registry);
      this.looked.set(registry, p);
      const mine = p;
      mine.catch(() => {
        if (this.looked.get(registry) === mine) this.looked.delete(registry);
      });
    }
    return p;
  }

  /** Looks the credentials up again next time (after the registry refused them, or asked for some when there were none). */
  forget(registry: string): void {
    this.looked.delete(registry);
  }
}

/** An HTTP exchange whose headers have arrived. Its body must be read to the end or discarded. */
class Exchange {
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

interface ExchangeInit {
  method?: 'GET' | 'POST';
  accept?: string;
  /** Sent only to the origin of the first URL, never to one a redirect leads to. */
  authorization?: string;
  body?: string;
  contentType?: string;
  signal?: AbortSignal | undefined;
  /** What is fetched, for messages (`manifest of host/repo:tag`). */
  what: string;
}

interface RequestOptions {
  /** The token scope (`repository:team/app:pull`); none for the API root. */
  scope?: string;
  repository?: string;
  accept?: string;
  signal?: AbortSignal | undefined;
  what: string;
}

const DEFAULT_TIMEOUT_MS = 30_000;
const DEFAULT_RETRIES = 4;
const MAX_REDIRECTS = 10;
/** A registry asking to be left alone for longer than this is reported, not waited for. */
const MAX_RETRY_AFTER_MS = 60_000;
const MAX_TOKEN_BYTES = 1 << 20;
const MAX_ERROR_BODY_BYTES = 64 << 10;
const ERROR_BODY_TIMEOUT_MS = 5000;
const DEFAULT_TOKEN_TTL_S = 60;
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
const TAG_RE = /^[\w][\w.-]{0,127}$/;
const REPOSITORY_RE = /^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:\/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*$/;

/**
 * A client of the OCI distribution (registry v2) API over Node's `fetch`.
 * It answers Basic and Bearer challenges (tokens cached per registry and
 * scope), follows redirects itself so that credentials never reach another
 * origin, retries transient failures with backoff, and bounds every wait:
 * response headers by `requestTimeoutMs`, a silent body by `idleTimeoutMs`.
 * One client may serve many concurrent pulls.
 */
export class RegistryClient {
  private readonly auth: AuthState;
  private readonly insecure: string[];
  private readonly requestTimeoutMs: number;
  private readonly idleTimeoutMs: number;
  private readonly retries: number;
  private readonly retryBaseMs: number;
  private readonly userAgent: string;
  private readonly onRetry: ((event: RetryEvent) => void) | undefined;

  constructor(options: RegistryClientOptions = {}) {
    const creds = options.credentials;
    this.auth = new AuthState(typeof creds === 'function' ? creds : creds ? (r) => creds.get(r) : () => Promise.resolve(undefined));
    const insecure = options.insecureRegistries ?? (process.env.ROOST_INSECURE_REGISTRIES ?? '').split(',');
    this.insecure = insecure
      .map((r) => r.trim())
      .filter(Boolean)
      .map(normalizeRegistry);
    this.requestTimeoutMs = positive(options.requestTimeoutMs ?? DEFAULT_TIMEOUT_MS, 'requestTimeoutMs');
    this.idleTimeoutMs = positive(options.idleTimeoutMs ?? DEFAULT_TIMEOUT_MS, 'idleTimeoutMs');
    this.retries = options.retries ?? DEFAULT_RETRIES;
    if (!Number.isSafeInteger(this.retries) || this.retries < 0)
      throw new RoostError('INVALID_ARGUMENT', `retries must be a whole number >= 0, not ${options.retries}`);
    this.retryBaseMs = positive(options.retryBaseMs ?? BACKOFF_BASE_MS, 'retryBaseMs');
    this.userAgent = options.userAgent ?? `roost (node ${process.version})`;
    this.onRetry = options.onRetry;
  }

  /** The registry's API root: https, or plain http for loopback hosts and insecure registries (Docker's rule). */
  baseUrl(registry: string): string {
    if (!isRegistryHost(registry)) throw new RoostError('INVALID_ARGUMENT', `"${registry}" is not a registry host`);
    return `${this.plainHttpAllowed(registry) ? 'http' : 'https'}://${registryApiHost(registry)}`;
  }

  /**
   * Fetches a manifest or index by tag or digest, with every manifest media
   * type Roost reads in Accept. Returns the bytes as served (at most
   * MAX_DOCUMENT_BYTES), the media type the registry gave, and the digest:
   * the one asked for, verified, or the sha256 of the bytes for a tag.
   * A missing manifest is NOT_FOUND.
   */
  async getManifest(
    registry: string,
    repository: string,
    tagOrDigest: string,
    signal?: AbortSignal,
  ): Promise<{ bytes: Buffer; mediaType?: string; digest: string }> {
    checkRepository(repository);
    const byDigest = tagOrDigest.includes(':');
    if (byDigest) parseDigest(tagOrDigest);
    else if (!TAG_RE.test(tagOrDigest)) throw new RoostError('INVALID_ARGUMENT', `"${tagOrDigest}" is neither a tag nor a digest`);
    const name = `${registry}/${repository}${byDigest ? '@' : ':'}${tagOrDigest}`;
    const what = `the manifest of ${name}`;
    return this.retrying(registryApiHost(registry), what, signal, async () => {
      const ex = await this.request(this.auth, registry, `/v2/${repository}/manifests/${tagOrDigest}`, {
        scope: pullScope(repository),
        repository,
        accept: MANIFEST_ACCEPT,
        signal,
        what,
      });
      if (ex.res.status === 404) {
        ex.discard();
        throw new RoostError('NOT_FOUND', `image ${name} not found`, { details: { registry, repository, reference: tagOrDigest } });
      }
      if (!ex.res.ok) throw await this.statusError(ex, what);
      const mediaType = ex.res.headers.get('content-type')?.split(';')[0]?.trim() || undefined;
      const bytes = await this.readAll(ex, MAX_DOCUMENT_BYTES, what, signal);
      const algorithm = byDigest ? parseDigest(tagOrDigest).algorithm : 'sha256';
      const digest = `${algorithm}:${createHash(algorithm).update(bytes).digest('hex')}`;
      if (byDigest && digest !== tagOrDigest) {
        throw new RoostError('IMAGE', `${what} arrived with digest ${digest} (corrupt or tampered); refused`, {
          details: { registry, repository, digest: tagOrDigest },
        });
      }
      return { bytes, digest, ...(mediaType ? { mediaType } : {}) };
    });
  }

  /**
   * Streams a blob, following the registry's redirect to its storage (which
   * gets no credentials). The caller verifies digest and size (BlobStore.put
   * does). A connection that drops or stalls mid-body ends the stream with
   * a retryable IMAGE error: fetch the blob again from the start.
   */
  async openBlob(registry: string, repository: string, digest: string, signal?: AbortSignal): Promise<AsyncIterable<Uint8Array>> {
    checkRepository(repository);
    parseDigest(digest);
    const what = `blob ${digest} of ${registry}/${repository}`;
    return this.retrying(registryApiHost(registry), what, signal, async () => {
      const ex = await this.request(this.auth, registry, `/v2/${repository}/blobs/${digest}`, { scope: pullScope(repository), repository, signal, what });
      if (ex.res.status === 404) {
        ex.discard();
        throw new RoostError('IMAGE', `blob ${digest} not found in repo ${registry}/${repository}`, { details: { registry, repository, digest } });
      }
      if (!ex.res.ok) throw await this.statusError(ex, what);
      return this.stream(ex, what, signal);
    });
  }

  /**
   * Checks a login before it is saved: `GET /v2/` through the registry's
   * authentication with exactly these credentials (nothing cached is used).
   * Throws IMAGE "login to HOST failed: ..." when the registry refuses them,
   * NETWORK when it cannot be reached. A registry that asks for no
   * authentication accepts any login, as with `docker login`.
   */
  async checkLogin(registry: string, credentials: Credentials, signal?: AbortSignal): Promise<void> {
    const state = new AuthState(() => Promise.resolve(credentials));
    const what = `the API root of ${registry}`;
    try {
      const ex = await this.retrying(registryApiHost(registry), what, signal, () => this.request(state, registry, '/v2/', { signal, what }));
      if (!ex.res.ok) throw await this.statusError(ex, what);
      ex.discard();
    } catch (e) {
      if (e instanceof RoostError && e.code === 'IMAGE')
        throw new RoostError('IMAGE', `login to ${registry} failed: ${e.message}`, { cause: e, details: e.details });
      throw e;
    }
  }

  private plainHttpAllowed(hostPort: string): boolean {
    const lower = hostPort.toLowerCase();
    const host = lower.startsWith('[') ? lower.slice(1, lower.indexOf(']')) : lower.replace(/:\d+$/, '');
    if (host === 'localhost' || host === '::1' || (isIPv4(host) && host.startsWith('127.'))) return true;
    return this.insecure.some((entry) => entry === lower || (entry === host && !/:\d+$/.test(entry)));
  }

  /**
   * Runs `attempt` again after a backoff while it fails with a retryable
   * error, at most `retries` times. The error that ends it is no longer
   * retryable: callers above do not multiply the retries.
   */
  private async retrying<T>(host: string, what: string, signal: AbortSignal | undefined, attempt: () => Promise<T>): Promise<T> {
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
   * One try of a registry request, answering an authentication challenge
   * if one comes. Returns the exchange for any status but 401, 429 and 5xx;
   * those throw (429 and 5xx retryably).
   */
  private async request(state: AuthState, registry: string, path: string, options: RequestOptions): Promise<Exchange> {
    const url = new URL(path, this.baseUrl(registry));
    const init = { accept: options.accept, signal: options.signal, what: options.what };
    let authorization = await this.authorization(state, registry, options);
    let ex = await this.exchange(url, { ...init, authorization });
    // A 401 from elsewhere (storage a blob was redirected to) is no challenge of the registry's.
    if (ex.res.status === 401 && ex.url.origin === url.origin) {
      const header = ex.res.headers.get('www-authenticate') ?? '';
      ex.discard();
      const challenge = pickChallenge(parseWwwAuthenticate(header));
      if (!challenge) {
        throw new RoostError(
          'IMAGE',
          `${url.host} demands authentication for ${options.what} with a challenge Roost cannot answer (WWW-Authenticate: ${header.slice(0, 200) || 'none'})`,
        );
      }
      state.challenges.set(registry, challenge);
      authorization = await this.authorization(state, registry, options, authorization);
      if (authorization === undefined) {
        state.forget(registry);
        throw new RoostError('IMAGE', `authentication required: run roost login ${registry}`, { details: { registry } });
      }
      ex = await this.exchange(url, { ...init, authorization });
      if (ex.res.status === 401 && ex.url.origin === url.origin) {
        ex.discard();
        const error = await this.denied(state, registry, options);
        state.forget(registry);
        throw error;
      }
    }
    if (ex.res.status >= 500 || ex.res.status === 429) throw await this.transientStatus(ex, options.what);
    return ex;
  }

  /**
   * The Authorization header for a request, from the registry's known
   * challenge: undefined when none is known yet, or when Basic is asked
   * for and there are no credentials. `rejected` is a header the registry
   * just refused: a cached token equal to it is not used again.
   */
  private async authorization(state: AuthState, registry: string, options: RequestOptions, rejected?: string): Promise<string | undefined> {
    const challenge = state.challenges.get(registry);
    if (!challenge) return undefined;
    if (challenge.scheme === 'basic') {
      const creds = await state.credentials(registry);
      return creds && 'password' in creds ? basicAuth(creds.username, creds.password) : undefined;
    }
    const key = `${registry} ${options.scope ?? ''}`;
    const cached = state.tokens.get(key);
    if (cached && cached.expiresAt > Date.now() && (cached.value === undefined || `Bearer ${cached.value}` !== rejected)) {
      return `Bearer ${await raceSignal(cached.promise, options.signal, options.what)}`;
    }
    // Fetched without the caller's signal: other requests wait for the same token, and one caller giving up must not fail them.
    const entry: CachedToken = { promise: Promise.resolve(''), expiresAt: Infinity };
    entry.promise = this.fetchToken(state, registry, challenge, options.scope).then(({ token, ttlS }) => {
      entry.value = token;
      entry.expiresAt = Date.now() + ttlS * 1000;
      return token;
    });
    state.tokens.set(key, entry);
    entry.promise.catch(() => {
      if (state.tokens.get(key) === entry) state.tokens.delete(key);
    });
    return `Bearer ${await raceSignal(entry.promise, options.signal, options.what)}`;
  }

  /** Gets a bearer token from the challenge's realm (the Docker token protocol, or OAuth2 with an identity token). */
  private async fetchToken(
    state: AuthState,
    registry: string,
    challenge: { realm: string; service?: string },
    scope: string | undefined,
  ): Promise<{ token: string; ttlS: number }> {
    let realm: URL;
    try {
      realm = new URL(challenge.realm);
    } catch (e) {
      throw new RoostError('IMAGE', `${registry} named an invalid token service "${challenge.realm}"`, { cause: e });
    }
    if (realm.protocol !== 'https:' && realm.protocol !== 'http:')
      throw new RoostError('IMAGE', `${registry} named a token service that is not http(s): ${challenge.realm}`);
    const creds = await state.credentials(registry);
    if (creds && realm.protocol === 'http:' && !this.plainHttpAllowed(realm.host)) {
      throw new RoostError(
        'IMAGE',
        `${registry} sends logins to ${realm.origin} over plain http; refusing to send credentials there (list it in ROOST_INSECURE_REGISTRIES if that is intended)`,
      );
    }
    const what = `a token for ${registry} from ${realm.origin}`;
    let init: ExchangeInit;
    if (creds && 'identityToken' in creds) {
      const form = new URLSearchParams({ grant_type: 'refresh_token', refresh_token: creds.identityToken, client_id: 'roost' });
      if (challenge.service !== undefined) form.set('service', challenge.service);
      if (scope) form.set('scope', scope);
      init = { method: 'POST', body: form.toString(), contentType: 'application/x-www-form-urlencoded', what };
    } else {
      if (challenge.service !== undefined) realm.searchParams.set('service', challenge.service);
      if (scope) realm.searchParams.set('scope', scope);
      init = { what, ...(creds ? { authorization: basicAuth(creds.username, creds.password) } : {}) };
    }
    return this.retrying(realm.host, what, undefined, async () => {
      const ex = await this.exchange(realm, init);
      const { status } = ex.res;
      if (status === 401 || status === 403) {
        const detail = await this.errorDetail(ex);
        state.forget(registry);
        throw creds
          ? new RoostError(
              'IMAGE',
              `authentication failed for ${registry}: ${realm.origin} answered ${status}${detail}; check the login (roost login ${registry})`,
              { details: { registry, status } },
            )
          : new RoostError('IMAGE', `authentication required: run roost login ${registry}`, { details: { registry, status } });
      }
      if (status >= 500 || status === 429) throw await this.transientStatus(ex, what);
      if (!ex.res.ok) throw await this.statusError(ex, what);
      const body = await this.readAll(ex, MAX_TOKEN_BYTES, what, undefined);
      let reply: { token?: unknown; access_token?: unknown; expires_in?: unknown };
      try {
        reply = JSON.parse(body.toString('utf8')) as typeof reply;
      } catch (e) {
        throw new RoostError('IMAGE', `${what}: the answer is not JSON`, { cause: e });
      }
      const token = typeof reply.token === 'string' && reply.token ? reply.token : typeof reply.access_token === 'string' ? reply.access_token : '';
      if (!token) throw new RoostError('IMAGE', `${what}: the answer has no token`);
      const ttlS = typeof reply.expires_in === 'number' && reply.expires_in > 0 ? reply.expires_in : DEFAULT_TOKEN_TTL_S;
      return { token, ttlS };
    });
  }

  private async denied(state: AuthState, registry: string, options: RequestOptions): Promise<RoostError> {
    const creds = await state.credentials(registry);
    const details = { registry, ...(options.repository ? { repository: options.repository } : {}) };
    if (!options.repository) return new RoostError('IMAGE', `${registry} refused the credentials`, { details });
    if (!creds)
      return new RoostError('IMAGE', `authentication required: run roost login ${registry} (or check that ${registry}/${options.repository} exists)`, {
        details,
      });
    return new RoostError(
      'IMAGE',
      `${registry} refused access to ${registry}/${options.repository} with the saved login: check that the repository exists and that this login may pull it`,
      { details },
    );
  }

  /**
   * Sends one request, following redirects by hand (at most 10, http(s)
   * only): Authorization goes to the first URL's origin only, never to
   * storage a blob is redirected to. Resolves when headers arrive.
   */
  private async exchange(url: URL, init: ExchangeInit): Promise<Exchange> {
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
        const headers: Record<string, string> = { 'user-agent': this.userAgent };
        if (init.accept) headers.accept = init.accept;
        if (init.authorization && current.origin === url.origin) headers.authorization = init.authorization;
        if (body !== undefined && init.contentType) headers['content-type'] = init.contentType;
        const host = current.host;
        const timer = setTimeout(
          () => controller.abort(new RoostError('IMAGE', `${host} did not answer ${what} within ${this.requestTimeoutMs / 1000} s`)),
          this.requestTimeoutMs,
        );
        let res: Response;
        try {
          res = await fetch(current, { method, headers, body, redirect: 'manual', signal: controller.signal });
        } catch (e) {
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
        if (res.status === 303 || ((res.status === 301 || res.status === 302) && method === 'POST')) {
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
  private async *stream(ex: Exchange, what: string, signal: AbortSignal | undefined): AsyncGenerator<Uint8Array> {
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
  private async readAll(ex: Exchange, limit: number, what: string, signal: AbortSignal | undefined): Promise<Buffer> {
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
  private async transientStatus(ex: Exchange, what: string): Promise<RoostError> {
    const retryAfterMs = parseRetryAfter(ex.res.headers.get('retry-after'));
    const detail = await this.errorDetail(ex);
    return new RoostError('IMAGE', `${ex.url.host} answered ${ex.res.status} ${ex.res.statusText} to ${what}${detail}`, {
      details: { retryable: true, status: ex.res.status, ...(retryAfterMs !== undefined ? { retryAfterMs } : {}) },
    });
  }

  /** `: CODE: message` from a registry's JSON error body (`{"errors":[{"code","message"}]}`), or ''. Ends the exchange; never throws. */
  private async errorDetail(ex: Exchange): Promise<string> {
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
  private async statusError(ex: Exchange, what: string): Promise<RoostError> {
    const { status, statusText } = ex.res;
    const detail = await this.errorDetail(ex);
    const prefix = status === 403 ? 'access denied: ' : '';
    return new RoostError('IMAGE', `${prefix}${ex.url.host} answered ${status} ${statusText} to ${what}${detail}`, { details: { status } });
  }
}

/**
 * An image source reading one repository of a registry. Manifests fetched
 * by digest are verified here; blobs are verified by whoever stores them.
 */
export class RegistrySource implements ImageSource {
  readonly description: string;

  constructor(
    private readonly client: RegistryClient,
    /** The repository read (its tag and digest are not used: they are asked for per call). */
    readonly ref: Pick<ImageReference, 'registry' | 'repository'>,
  ) {
    this.description = `${ref.registry}/${ref.repository}`;
  }

  getManifest(tagOrDigest: string, signal?: AbortSignal): Promise<{ bytes: Buffer; mediaType?: string }> {
    return this.client.getManifest(this.ref.registry, this.ref.repository, tagOrDigest, signal);
  }

  openBlob(descriptor: Descriptor, signal?: AbortSignal): Promise<AsyncIterable<Uint8Array>> {
    return this.client.openBlob(this.ref.registry, this.ref.repository, descriptor.digest, signal);
  }

  /** Nothing to release: connections belong to fetch's shared pool, and each stream ends its own. */
  async close(): Promise<void> {}
}

function positive(value: number, name: string): number {
  if (!Number.isFinite(value) || value <= 0) throw new RoostError('INVALID_ARGUMENT', `${name} must be a positive number of milliseconds, not ${value}`);
  return value;
}

function checkRepository(repository: string): void {
  if (!REPOSITORY_RE.test(repository)) throw new RoostError('INVALID_ARGUMENT', `"${repository}" is not a repository name`);
}

function pullScope(repository: string): string {
  return `repository:${repository}:pull`;
}

function basicAuth(username: string, password: string): string {
  return `Basic ${Buffer.from(`${username}:${password}`, 'utf8').toString('base64')}`;
}

/** Waits for `promise`, or rejects at once when `signal` aborts. */
function raceSignal<T>(promise: Promise<T>, signal: AbortSignal | undefined, what: string): Promise<T> {
  if (!signal) return promise;
  if (signal.aborted) return Promise.reject(abortError(signal, what));
  return new Promise((resolve, reject) => {
    const onAbort = () => reject(abortError(signal, what));
    signal.addEventListener('abort', onAbort, { once: true });
    promise.then(
      (v) => {
        signal.removeEventListener('abort', onAbort);
        resolve(v);
      },
      (e: unknown) => {
        signal.removeEventListener('abort', onAbort);
        reject(e);
      },
    );
  });
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
