/**
 * Answering a registry's authentication challenges: Basic with the saved
 * login, or Bearer with a token fetched from the registry's token service
 * and cached per registry and scope. Where logins are saved and found is
 * auth.ts; how requests travel is registry-http.ts.
 */
import { abortError, RoostError } from '../errors.js';
import type { Credentials } from './auth.js';
import type { Exchange, ExchangeInit, RegistryHttp, RequestBody } from './registry-http.js';
import { parseWwwAuthenticate, type AuthChallenge } from './www-authenticate.js';

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
export class AuthState {
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

/** What a registry request needs besides its URL. */
export interface RequestOptions {
  /** The token scope (`repository:team/app:pull`; several separated by spaces); none for the API root. */
  scope?: string;
  repository?: string;
  /** What the request needs of the repository, for messages when it is refused. Default 'pull'. */
  access?: 'pull' | 'push';
  method?: ExchangeInit['method'];
  accept?: string;
  headers?: Record<string, string>;
  /** Sent again whole if the registry challenges the first try (a stream is opened again). */
  body?: RequestBody | undefined;
  contentType?: string;
  signal?: AbortSignal | undefined;
  what: string;
}

const MAX_TOKEN_BYTES = 1 << 20;
const DEFAULT_TOKEN_TTL_S = 60;

/**
 * Sends registry requests with the authorization the registry asks for,
 * through one RegistryHttp. `allowsPlainHttp` says whether a host may be
 * spoken to over plain http: credentials are sent to no other http host.
 */
export class RegistryAuthenticator {
  constructor(
    private readonly http: RegistryHttp,
    private readonly allowsPlainHttp: (hostPort: string) => boolean,
  ) {}

  /**
   * One try of a registry request, answering an authentication challenge
   * if one comes. Returns the exchange for any status but 401, 429 and 5xx;
   * those throw (429 and 5xx retryably).
   */
  async request(state: AuthState, registry: string, url: URL, options: RequestOptions): Promise<Exchange> {
    const init: ExchangeInit = {
      method: options.method,
      accept: options.accept,
      headers: options.headers,
      body: options.body,
      signal: options.signal,
      what: options.what,
      ...(options.contentType ? { contentType: options.contentType } : {}),
    };
    let authorization = await this.authorization(state, registry, options);
    let ex = await this.http.exchange(url, { ...init, authorization });
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
        const to = options.access === 'push' && options.repository ? ` to push to ${registry}/${options.repository}` : '';
        throw new RoostError('IMAGE', `authentication required${to}: run roost login ${registry}`, { details: { registry, reason: 'unauthenticated' } });
      }
      ex = await this.http.exchange(url, { ...init, authorization });
      if (ex.res.status === 401 && ex.url.origin === url.origin) {
        ex.discard();
        const error = await this.denied(state, registry, options);
        state.forget(registry);
        throw error;
      }
    }
    if (ex.res.status >= 500 || ex.res.status === 429) throw await this.http.transientStatus(ex, options.what);
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
    if (creds && realm.protocol === 'http:' && !this.allowsPlainHttp(realm.host)) {
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
      // One `scope` parameter per scope, as the token protocol has it (a push that mounts asks for two repositories).
      for (const one of (scope ?? '').split(' ').filter(Boolean)) realm.searchParams.append('scope', one);
      init = { what, ...(creds ? { authorization: basicAuth(creds.username, creds.password) } : {}) };
    }
    return this.http.retrying(realm.host, what, undefined, async () => {
      const ex = await this.http.exchange(realm, init);
      const { status } = ex.res;
      if (status === 401 || status === 403) {
        const detail = await this.http.errorDetail(ex);
        state.forget(registry);
        throw creds
          ? new RoostError(
              'IMAGE',
              `authentication failed for ${registry}: ${realm.origin} answered ${status}${detail}; check the login (roost login ${registry})`,
              { details: { registry, status } },
            )
          : new RoostError('IMAGE', `authentication required: run roost login ${registry}`, { details: { registry, status } });
      }
      if (status >= 500 || status === 429) throw await this.http.transientStatus(ex, what);
      if (!ex.res.ok) throw await this.http.statusError(ex, what);
      const body = await this.http.readAll(ex, MAX_TOKEN_BYTES, what, undefined);
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
    if (options.access === 'push') {
      return creds
        ? new RoostError(
            'IMAGE',
            `${registry} refused to let the saved login push to ${registry}/${options.repository}: check that it may push there, or log in as one that may (roost login ${registry})`,
            { details: { ...details, reason: 'denied' } },
          )
        : new RoostError('IMAGE', `authentication required to push to ${registry}/${options.repository}: run roost login ${registry}`, {
            details: { ...details, reason: 'unauthenticated' },
          });
    }
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
}

/** The Authorization header of HTTP Basic authentication. */
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
