/**
 * The push half of the distribution API (distribution-spec, "Push"): blob
 * existence checks, cross-repository mounts, monolithic and chunked blob
 * uploads, and manifest PUTs. RegistryClient lends it its authenticated
 * requests; the orchestration of a whole image is push.ts.
 */
import { abortError, RoostError } from '../errors.js';
import type { RequestOptions } from './registry-auth.js';
import type { Exchange, RegistryHttp } from './registry-http.js';
import { backoffDelay, isRetryable, sleep } from './retry.js';

/** What the uploader needs of its RegistryClient. */
export interface RegistryRequester {
  readonly http: RegistryHttp;
  /** The registry's API root (`http://127.0.0.1:5000`). */
  baseUrl(registry: string): string;
  /**
   * One try of a request to `registry`: `target` is a path of its API or a
   * URL it gave (an upload location). Authenticated as the registry asks,
   * but only on the registry's own origin. 5xx and 429 throw retryably.
   */
  send(registry: string, target: string | URL, options: RequestOptions): Promise<Exchange>;
}

/** A blob to push: its digest and size, and a way to read any part of it. */
export interface BlobToPush {
  digest: string;
  size: number;
  /** The bytes from `start` to `end`, both included, as a stream (opened again for each try). */
  read(start: number, end: number): AsyncIterable<Uint8Array>;
}

/** Where a blob push is: checking whether the registry has it, sending bytes, or waiting to try again. */
export type BlobPushPhase = 'checking' | 'uploading' | 'retrying';

/** How a blob reached the repository: it was there, the registry mounted it from another repository, or it was uploaded. */
export type BlobPushOutcome = 'exists' | 'mounted' | 'pushed';

export interface BlobPushOptions {
  /** Other repositories of the same registry known to hold the blob, tried in order for a cross-repository mount. */
  mountFrom?: readonly string[];
  /** Blobs larger than this go in chunks (PATCH); others in one PUT. */
  chunkThreshold: number;
  /** Bytes per PATCH (raised to the registry's `OCI-Chunk-Min-Length` when it asks for more). */
  chunkSize: number;
  signal?: AbortSignal | undefined;
  /** Hears of each phase, and of the bytes sent so far while uploading. */
  onProgress?: (phase: BlobPushPhase, sent: number) => void;
}

/** An upload session the registry opened: where to send the next bytes. */
interface UploadSession {
  registry: string;
  repository: string;
  location: URL;
  /** The smallest chunk the registry takes (all but the last), 0 when it does not say. */
  minChunk: number;
}

/** Mount sources tried per blob: a stale one costs a round trip, so not many. */
const MAX_MOUNT_SOURCES = 3;
const OCTET_STREAM = 'application/octet-stream';

/**
 * Pushes blobs and manifests to a registry. Requests without a body, and
 * the manifest PUT, are retried as pulls are (RegistryHttp.retrying); an
 * upload that fails transiently resumes where the registry says it got to
 * (chunked) or starts again (monolithic), with backoff, at most `retries`
 * times in a row. Safe for concurrent pushes of different blobs.
 */
export class BlobUploader {
  constructor(private readonly r: RegistryRequester) {}

  /** True when `registry/repository` has the blob (HEAD answered 200). */
  async exists(registry: string, repository: string, digest: string, signal?: AbortSignal): Promise<boolean> {
    const what = `the existence check of blob ${digest} in ${registry}/${repository}`;
    return this.r.http.retrying(hostOf(this.r.baseUrl(registry)), what, signal, async () => {
      const ex = await this.r.send(registry, `/v2/${repository}/blobs/${digest}`, this.options(repository, 'HEAD', what, signal));
      const { status } = ex.res;
      if (status === 200 || status === 404) {
        ex.discard();
        return status === 200;
      }
      throw await this.refusal(ex, registry, repository, what);
    });
  }

  /**
   * Gets one blob into `registry/repository`: nothing when it is there
   * already, a cross-repository mount when one of `mountFrom` has it and the
   * registry agrees, else an upload (monolithic up to `chunkThreshold`,
   * chunked above). The registry checks the digest when the upload closes.
   */
  async push(registry: string, repository: string, blob: BlobToPush, options: BlobPushOptions): Promise<BlobPushOutcome> {
    const { signal } = options;
    const what = `pushing blob ${blob.digest} to ${registry}/${repository}`;
    options.onProgress?.('checking', 0);
    if (await this.exists(registry, repository, blob.digest, signal)) return 'exists';
    for (let attempt = 0; ; attempt++) {
      let session: UploadSession | undefined;
      let closed = false;
      try {
        const started = await this.start(registry, repository, blob.digest, options.mountFrom ?? [], signal);
        if (started === 'mounted') return 'mounted';
        session = started;
        options.onProgress?.('uploading', 0);
        if (blob.size <= options.chunkThreshold) await this.putWhole(session, blob, options);
        else await this.putChunks(session, blob, options);
        closed = true;
        return 'pushed';
      } catch (e) {
        if (session && !closed) this.cancel(session);
        if (signal?.aborted) throw abortError(signal, what);
        if (!isRetryable(e) || attempt >= this.r.http.retries) throw notRetryable(e);
        options.onProgress?.('retrying', 0);
        await sleep(backoffDelay(attempt, this.r.http.retryBaseMs), signal, what);
      }
    }
  }

  /**
   * PUTs a manifest (its exact bytes, Content-Type its media type) as
   * `reference` (a tag or its digest). Returns the digest the registry
   * answers with, which must be `digest`: the digest of the bytes sent.
   * A manifest the registry refuses is IMAGE with the registry's own reason.
   */
  async putManifest(
    registry: string,
    repository: string,
    reference: string,
    manifest: { bytes: Buffer; mediaType: string; digest: string },
    signal?: AbortSignal,
  ): Promise<string> {
    const name = `${registry}/${repository}${reference.includes(':') ? '@' : ':'}${reference}`;
    const what = `the manifest of ${name}`;
    return this.r.http.retrying(hostOf(this.r.baseUrl(registry)), what, signal, async () => {
      const ex = await this.r.send(registry, `/v2/${repository}/manifests/${reference}`, {
        ...this.options(repository, 'PUT', what, signal),
        body: manifest.bytes,
        contentType: manifest.mediaType,
      });
      const { status, statusText } = ex.res;
      if (status === 201 || status === 200 || status === 204) {
        const answered = ex.res.headers.get('docker-content-digest')?.trim();
        ex.discard();
        if (answered && answered !== manifest.digest) {
          throw new RoostError(
            'IMAGE',
            `${registry} stored the manifest of ${name} as ${answered}, not ${manifest.digest} (the bytes sent); the push is not what was asked`,
            {
              details: { registry, repository, expected: manifest.digest, answered },
            },
          );
        }
        return manifest.digest;
      }
      if (status === 401 || status === 403) throw await this.refusal(ex, registry, repository, what);
      const detail = await this.r.http.errorDetail(ex);
      throw new RoostError('IMAGE', `${registry} rejected the manifest of ${name} (${status} ${statusText})${detail}`, {
        details: { registry, repository, status },
      });
    });
  }

  // ---- the steps of one blob ---------------------------------------------------

  /** Opens an upload (POST), trying cross-repository mounts first. Returns 'mounted' when one worked. */
  private async start(
    registry: string,
    repository: string,
    digest: string,
    mountFrom: readonly string[],
    signal?: AbortSignal,
  ): Promise<UploadSession | 'mounted'> {
    const sources = [...new Set(mountFrom)].filter((from) => from !== repository).slice(0, MAX_MOUNT_SOURCES);
    for (const [i, from] of sources.entries()) {
      let offered: UploadSession | 'mounted';
      try {
        offered = await this.post(registry, repository, signal, { digest, from });
      } catch {
        if (signal?.aborted) throw abortError(signal, `mounting ${digest}`);
        // A mount is only a shortcut: refused (the login may not read `from`), it costs an upload.
        continue;
      }
      if (offered === 'mounted' || i === sources.length - 1) return offered;
      // 202: the registry would take an upload instead; another source may still mount.
      this.cancel(offered);
    }
    return this.post(registry, repository, signal);
  }

  /** POST /v2/<name>/blobs/uploads/ (with ?mount=&from= for a mount): 201 mounted, 202 an upload session. */
  private async post(
    registry: string,
    repository: string,
    signal: AbortSignal | undefined,
    mount?: { digest: string; from: string },
  ): Promise<UploadSession | 'mounted'> {
    const url = new URL(`/v2/${repository}/blobs/uploads/`, this.r.baseUrl(registry));
    if (mount) {
      url.searchParams.set('mount', mount.digest);
      url.searchParams.set('from', mount.from);
    }
    const what = mount ? `a mount of blob ${mount.digest} from ${mount.from} into ${registry}/${repository}` : `a blob upload to ${registry}/${repository}`;
    const options = this.options(repository, 'POST', what, signal);
    if (mount) options.scope = `${options.scope} repository:${mount.from}:pull`;
    return this.r.http.retrying(url.host, what, signal, async () => {
      const ex = await this.r.send(registry, url, options);
      const { status } = ex.res;
      if (status === 201 && mount) {
        ex.discard();
        return 'mounted';
      }
      if (status === 202) {
        const location = locationOf(ex, what);
        const min = Number(ex.res.headers.get('oci-chunk-min-length'));
        ex.discard();
        return { registry, repository, location, minChunk: Number.isSafeInteger(min) && min > 0 ? min : 0 };
      }
      throw await this.refusal(ex, registry, repository, what);
    });
  }

  /** The whole blob in the closing PUT. */
  private async putWhole(session: UploadSession, blob: BlobToPush, options: BlobPushOptions): Promise<void> {
    const what = `the upload of blob ${blob.digest} to ${session.registry}/${session.repository}`;
    const ex = await this.r.send(session.registry, withDigest(session.location, blob.digest), {
      ...this.options(session.repository, 'PUT', what, options.signal),
      headers: { 'content-length': String(blob.size) },
      contentType: OCTET_STREAM,
      body: blob.size === 0 ? new Uint8Array(0) : () => counted(blob.read(0, blob.size - 1), 0, options),
    });
    await this.closed(ex, session, blob, what);
  }

  /**
   * PATCHes of `chunkSize` bytes (Content-Range, inclusive), each to the
   * Location the one before answered, then an empty closing PUT. A 416
   * (the registry has a different offset than we think) or a chunk that
   * failed transiently resumes from the offset GET <location> reports.
   */
  private async putChunks(session: UploadSession, blob: BlobToPush, options: BlobPushOptions): Promise<void> {
    const { registry, repository } = session;
    const what = `the upload of blob ${blob.digest} to ${registry}/${repository}`;
    const chunkSize = Math.max(options.chunkSize, session.minChunk);
    let location = session.location;
    let offset = 0;
    let setbacks = 0;
    const setback = async (e: RoostError) => {
      if (++setbacks > this.r.http.retries) throw notRetryable(e, ` (${setbacks - 1} resumptions)`);
      options.onProgress?.('retrying', offset);
      await sleep(backoffDelay(setbacks - 1, this.r.http.retryBaseMs), options.signal, what);
      ({ location, offset } = await this.status({ ...session, location }, blob.size, options.signal));
      session.location = location;
    };
    while (offset < blob.size) {
      const start = offset;
      const end = Math.min(blob.size, start + chunkSize) - 1;
      let ex: Exchange;
      try {
        ex = await this.r.send(registry, location, {
          ...this.options(repository, 'PATCH', what, options.signal),
          headers: { 'content-range': `${start}-${end}`, 'content-length': String(end - start + 1) },
          contentType: OCTET_STREAM,
          body: () => counted(blob.read(start, end), start, options),
        });
      } catch (e) {
        if (options.signal?.aborted || !isRetryable(e)) throw e;
        await setback(e);
        continue;
      }
      const { status } = ex.res;
      if (status === 202 || status === 204) {
        location = ex.res.headers.get('location') ? locationOf(ex, what) : location;
        session.location = location;
        const got = rangeEnd(ex.res.headers.get('range'));
        ex.discard();
        const next = got === undefined ? end + 1 : got + 1;
        if (next > blob.size) throw new RoostError('IMAGE', `${registry} says it holds ${next} bytes of ${blob.digest}, which has ${blob.size}`);
        if (next > offset) setbacks = 0;
        offset = next;
        continue;
      }
      if (status === 416) {
        ex.discard();
        await setback(
          new RoostError('IMAGE', `${registry} refused bytes ${start}-${end} of ${blob.digest} (416): the upload is elsewhere`, { details: { status } }),
        );
        continue;
      }
      if (status === 404) {
        // The session is gone (expired, or the registry restarted): start the blob again.
        const detail = await this.r.http.errorDetail(ex);
        throw new RoostError('IMAGE', `${registry} lost the upload of ${blob.digest} (404)${detail}`, { details: { status, retryable: true } });
      }
      throw await this.refusal(ex, registry, repository, what);
    }
    const close = `the closing of ${what}`;
    await this.r.http.retrying(location.host, close, options.signal, async () => {
      const ex = await this.r.send(registry, withDigest(location, blob.digest), {
        ...this.options(repository, 'PUT', close, options.signal),
        headers: { 'content-length': '0' },
        body: new Uint8Array(0),
      });
      await this.closed(ex, session, blob, close);
    });
  }

  /** Where an upload is: GET <location> answers 204 with `Range: 0-<last byte>` and the Location to go on with. */
  private async status(session: UploadSession, size: number, signal: AbortSignal | undefined): Promise<{ location: URL; offset: number }> {
    const what = `the state of the upload to ${session.registry}/${session.repository}`;
    return this.r.http.retrying(session.location.host, what, signal, async () => {
      const ex = await this.r.send(session.registry, session.location, this.options(session.repository, 'GET', what, signal));
      const { status } = ex.res;
      if (status !== 204 && status !== 200) {
        const detail = await this.r.http.errorDetail(ex);
        // An upload the registry no longer knows: the blob starts again.
        throw new RoostError('IMAGE', `${session.registry} answered ${status} to ${what}${detail}`, { details: { status, retryable: status === 404 } });
      }
      const location = ex.res.headers.get('location') ? locationOf(ex, what) : session.location;
      const end = rangeEnd(ex.res.headers.get('range'));
      ex.discard();
      // `0-0` is also what distribution says for an empty upload; chunks are never one byte long, so it means 0.
      const offset = end === undefined || end === 0 ? 0 : end + 1;
      if (offset > size) throw new RoostError('IMAGE', `${session.registry} says it holds ${offset} bytes of a ${size}-byte blob`);
      return { location, offset };
    });
  }

  /** Checks the answer to a closing PUT: 201, and the digest the registry computed. */
  private async closed(ex: Exchange, session: UploadSession, blob: BlobToPush, what: string): Promise<void> {
    const { status } = ex.res;
    if (status === 201 || status === 204 || status === 200) {
      const answered = ex.res.headers.get('docker-content-digest')?.trim();
      ex.discard();
      if (answered && answered !== blob.digest) {
        throw new RoostError('IMAGE', `${session.registry} stored blob ${blob.digest} as ${answered}: refused`, {
          details: { expected: blob.digest, answered },
        });
      }
      return;
    }
    if (status === 404) {
      const detail = await this.r.http.errorDetail(ex);
      throw new RoostError('IMAGE', `${session.registry} lost the upload of ${blob.digest} (404)${detail}`, { details: { status, retryable: true } });
    }
    if (status === 400) {
      // DIGEST_INVALID: what arrived is not the blob (it changed on disk, or was cut short on the way).
      const detail = await this.r.http.errorDetail(ex);
      throw new RoostError('IMAGE', `${session.registry} refused ${what} (400 Bad Request)${detail}`, { details: { status, digest: blob.digest } });
    }
    throw await this.refusal(ex, session.registry, session.repository, what);
  }

  /** Ends an upload session that will not be finished (DELETE <location>), without waiting: registries expire them anyway. */
  private cancel(session: UploadSession): void {
    this.r
      .send(session.registry, session.location, this.options(session.repository, 'DELETE', 'the cancel of an unfinished upload', AbortSignal.timeout(5000)))
      .then((ex) => ex.discard())
      .catch(() => {});
  }

  /** The request options of a push request to `repository`: the push scope, so one token serves every request of the push. */
  private options(repository: string, method: NonNullable<RequestOptions['method']>, what: string, signal: AbortSignal | undefined): RequestOptions {
    return { scope: pushScope(repository), repository, access: 'push', method, signal, what };
  }

  /** The error for an answer a push cannot go on from: 401/403 name `roost login`, others carry the registry's reason. */
  private async refusal(ex: Exchange, registry: string, repository: string, what: string): Promise<RoostError> {
    const { status } = ex.res;
    if (status !== 401 && status !== 403) return this.r.http.statusError(ex, what);
    const detail = await this.r.http.errorDetail(ex);
    return new RoostError(
      'IMAGE',
      `${registry} denied ${what} (${status})${detail}: push needs a login allowed to push to ${registry}/${repository} (roost login ${registry})`,
      { details: { registry, repository, status, reason: status === 401 ? 'unauthenticated' : 'denied' } },
    );
  }
}

/** The token scope of a push to `repository`. */
export function pushScope(repository: string): string {
  return `repository:${repository}:pull,push`;
}

/**
 * The end offset of a `Range` header of an upload (`0-<end>`, or
 * `bytes=0-<end>` as some registries write it); undefined when absent or
 * malformed.
 */
export function rangeEnd(header: string | null): number | undefined {
  const m = /^\s*(?:bytes=)?0-(\d+)\s*$/.exec(header ?? '');
  if (!m) return undefined;
  const end = Number(m[1]);
  return Number.isSafeInteger(end) ? end : undefined;
}

/** An upload location with `digest=` added to its query (which may already carry the registry's state). */
export function withDigest(location: URL, digest: string): URL {
  const url = new URL(location);
  url.searchParams.set('digest', digest);
  return url;
}

/** The Location an upload answer carries, resolved against the URL it came from. */
function locationOf(ex: Exchange, what: string): URL {
  const header = ex.res.headers.get('location');
  if (!header) {
    ex.discard();
    throw new RoostError('IMAGE', `${ex.url.host} answered ${what} without a Location to upload to`);
  }
  try {
    const url = new URL(header, ex.url);
    if (url.protocol !== 'http:' && url.protocol !== 'https:') throw new Error(`a ${url.protocol} URL`);
    return url;
  } catch (e) {
    ex.discard();
    throw new RoostError('IMAGE', `${ex.url.host} answered ${what} with an unusable Location (${header.slice(0, 200)})`, { cause: e });
  }
}

/** A blob part as sent, telling `onProgress` how far the blob is (`base` is where the part starts). */
async function* counted(chunks: AsyncIterable<Uint8Array>, base: number, options: BlobPushOptions): AsyncGenerator<Uint8Array> {
  let sent = base;
  for await (const chunk of chunks) {
    if (options.signal?.aborted) throw abortError(options.signal, 'uploading a blob');
    yield chunk;
    sent += chunk.length;
    options.onProgress?.('uploading', sent);
  }
}

function hostOf(baseUrl: string): string {
  return new URL(baseUrl).host;
}

/** The error as it ends a push: no longer retryable (nothing above retries it again). */
function notRetryable(e: unknown, suffix = ''): unknown {
  if (!(e instanceof RoostError) || e.details.retryable !== true) return e;
  return new RoostError(e.code, `${e.message}${suffix}`, { cause: e, details: { ...e.details, retryable: false } });
}
