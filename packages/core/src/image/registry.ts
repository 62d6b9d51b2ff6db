/**
 * The OCI distribution (registry v2) API as Roost reads it: manifests,
 * blobs and login checks (RegistryClient), and one repository of a
 * registry as an image source (RegistrySource). The HTTP underneath is
 * registry-http.ts; answering authentication challenges, registry-auth.ts.
 */
import { createHash } from 'node:crypto';
import { isIPv4 } from 'node:net';
import { RoostError } from '../errors.js';
import { isRegistryHost, normalizeRegistry, type CredentialStore, type Credentials } from './auth.js';
import { parseDigest } from './blobs.js';
import { MANIFEST_ACCEPT, MAX_DOCUMENT_BYTES, type Descriptor, type ImageSource } from './manifest.js';
import { registryApiHost, registryHostProblem, type ImageReference } from './reference.js';
import { AuthState, RegistryAuthenticator, type RequestOptions } from './registry-auth.js';
import { RegistryHttp, type Exchange, type RetryEvent } from './registry-http.js';
import { BlobUploader, type BlobPushOptions, type BlobPushOutcome, type BlobToPush } from './registry-upload.js';
import { BACKOFF_BASE_MS } from './retry.js';

// The names importers know from this module, wherever they now live.
export type { RetryEvent } from './registry-http.js';
export type { BlobPushOptions, BlobPushOutcome, BlobPushPhase, BlobToPush } from './registry-upload.js';
export { parseWwwAuthenticate, type AuthChallenge } from './www-authenticate.js';

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

const DEFAULT_TIMEOUT_MS = 30_000;
const DEFAULT_RETRIES = 4;
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
  private readonly http: RegistryHttp;
  private readonly authenticator: RegistryAuthenticator;
  private readonly uploader: BlobUploader;

  constructor(options: RegistryClientOptions = {}) {
    const creds = options.credentials;
    this.auth = new AuthState(typeof creds === 'function' ? creds : creds ? (r) => creds.get(r) : () => Promise.resolve(undefined));
    const insecure = options.insecureRegistries ?? (process.env.ROOST_INSECURE_REGISTRIES ?? '').split(',');
    this.insecure = insecure
      .map((r) => r.trim())
      .filter(Boolean)
      .map(normalizeRegistry);
    const requestTimeoutMs = positive(options.requestTimeoutMs ?? DEFAULT_TIMEOUT_MS, 'requestTimeoutMs');
    const idleTimeoutMs = positive(options.idleTimeoutMs ?? DEFAULT_TIMEOUT_MS, 'idleTimeoutMs');
    const retries = options.retries ?? DEFAULT_RETRIES;
    if (!Number.isSafeInteger(retries) || retries < 0) throw new RoostError('INVALID_ARGUMENT', `retries must be a whole number >= 0, not ${options.retries}`);
    const retryBaseMs = positive(options.retryBaseMs ?? BACKOFF_BASE_MS, 'retryBaseMs');
    const userAgent = options.userAgent ?? `roost (node ${process.version})`;
    this.http = new RegistryHttp({ userAgent, requestTimeoutMs, idleTimeoutMs, retries, retryBaseMs, onRetry: options.onRetry });
    this.authenticator = new RegistryAuthenticator(this.http, (hostPort) => this.plainHttpAllowed(hostPort));
    this.uploader = new BlobUploader({
      http: this.http,
      baseUrl: (registry) => this.baseUrl(registry),
      send: (registry, target, options) => this.request(this.auth, registry, target, options),
    });
  }

  /** The registry's API root: https, or plain http for loopback hosts and insecure registries (Docker's rule). */
  baseUrl(registry: string): string {
    if (!isRegistryHost(registry))
      throw new RoostError('INVALID_ARGUMENT', registryHostProblem(registry) ?? `"${registry}" is not a registry host (HOST or HOST:PORT)`);
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
    return this.http.retrying(registryApiHost(registry), what, signal, async () => {
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
      if (!ex.res.ok) throw await this.http.statusError(ex, what);
      const mediaType = ex.res.headers.get('content-type')?.split(';')[0]?.trim() || undefined;
      const bytes = await this.http.readAll(ex, MAX_DOCUMENT_BYTES, what, signal);
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
    return this.http.retrying(registryApiHost(registry), what, signal, async () => {
      const ex = await this.request(this.auth, registry, `/v2/${repository}/blobs/${digest}`, { scope: pullScope(repository), repository, signal, what });
      if (ex.res.status === 404) {
        ex.discard();
        throw new RoostError('IMAGE', `blob ${digest} not found in repo ${registry}/${repository}`, { details: { registry, repository, digest } });
      }
      if (!ex.res.ok) throw await this.http.statusError(ex, what);
      return this.http.stream(ex, what, signal);
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
      const ex = await this.http.retrying(registryApiHost(registry), what, signal, () => this.request(state, registry, '/v2/', { signal, what }));
      if (!ex.res.ok) throw await this.http.statusError(ex, what);
      ex.discard();
    } catch (e) {
      if (e instanceof RoostError && e.code === 'IMAGE')
        throw new RoostError('IMAGE', `login to ${registry} failed: ${e.message}`, { cause: e, details: e.details });
      throw e;
    }
  }

  /** True when `registry/repository` has the blob (HEAD). 401/403 are IMAGE errors naming `roost login`. */
  blobExists(registry: string, repository: string, digest: string, signal?: AbortSignal): Promise<boolean> {
    checkRepository(repository);
    parseDigest(digest);
    return this.uploader.exists(registry, repository, digest, signal);
  }

  /**
   * Gets a blob into `registry/repository` (registry v2 push): nothing if it
   * is there, a cross-repository mount from one of `options.mountFrom` when
   * the registry agrees, else an upload, monolithic or chunked by size.
   * Authenticates with push scope. Says how the blob got there.
   */
  pushBlob(registry: string, repository: string, blob: BlobToPush, options: BlobPushOptions): Promise<BlobPushOutcome> {
    checkRepository(repository);
    parseDigest(blob.digest);
    for (const from of options.mountFrom ?? []) checkRepository(from);
    return this.uploader.push(registry, repository, blob, options);
  }

  /**
   * PUTs a manifest's exact bytes as `reference` (a tag, or the manifest's
   * digest) with its media type, and checks the registry stored it under
   * `manifest.digest`. A refused manifest is IMAGE with the registry's reason.
   */
  putManifest(
    registry: string,
    repository: string,
    reference: string,
    manifest: { bytes: Buffer; mediaType: string; digest: string },
    signal?: AbortSignal,
  ): Promise<string> {
    checkRepository(repository);
    if (reference.includes(':')) parseDigest(reference);
    else if (!TAG_RE.test(reference)) throw new RoostError('INVALID_ARGUMENT', `"${reference}" is neither a tag nor a digest`);
    return this.uploader.putManifest(registry, repository, reference, manifest, signal);
  }

  private plainHttpAllowed(hostPort: string): boolean {
    const lower = hostPort.toLowerCase();
    const host = lower.startsWith('[') ? lower.slice(1, lower.indexOf(']')) : lower.replace(/:\d+$/, '');
    if (host === 'localhost' || host === '::1' || (isIPv4(host) && host.startsWith('127.'))) return true;
    return this.insecure.some((entry) => entry === lower || (entry === host && !/:\d+$/.test(entry)));
  }

  /**
   * One try of a request to the registry's API at `target` (a path, or a URL
   * the registry gave), answering its authentication challenge if one comes
   * (RegistryAuthenticator.request). A URL on another origin (an upload
   * location at a storage service) gets no credentials.
   */
  private async request(state: AuthState, registry: string, target: string | URL, options: RequestOptions): Promise<Exchange> {
    const base = this.baseUrl(registry);
    const url = new URL(target, base);
    if (url.origin === new URL(base).origin) return this.authenticator.request(state, registry, url, options);
    const { method, accept, headers, body, contentType, signal, what } = options;
    const ex = await this.http.exchange(url, { method, accept, headers, body, signal, what, ...(contentType ? { contentType } : {}) });
    if (ex.res.status >= 500 || ex.res.status === 429) throw await this.http.transientStatus(ex, what);
    return ex;
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
