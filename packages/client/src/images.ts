import {
  abortError,
  BuildEventSchema,
  BuildOptionsSchema,
  type BuildCacheEntry,
  type BuildContextArchive,
  errorFromBody,
  type BuildImageOptions,
  type BuildResult,
  decodePullEvent,
  decodePushEvent,
  PushImageOptionsSchema,
  PushImageRequestSchema,
  type PushImageOptions,
  type PushResult,
  isRoostError,
  parseInput,
  PullImageOptionsSchema,
  PullRequestSchema,
  RemoveImageOptionsSchema,
  RoostError,
  type ImageInfoBody,
  type ImageRemoval,
  type ImagesApi,
  type PullImageOptions,
} from '@roost/api';
import { contextTar } from './context-tar.js';
import type { RequestOptions, Transport } from './http.js';
import { NdjsonParser } from './wire.js';

/**
 * `client.images`: the daemon's image store.
 *
 * Concurrency: calls may overlap; pulls of the same image share the daemon's downloads.
 */
export class RemoteImages implements ImagesApi {
  /** @internal */
  constructor(private readonly transport: Transport) {}

  /** Pulls an image; `onProgress` hears about each blob. Resolves with the stored image. */
  async pull(reference: string, options: PullImageOptions = {}): Promise<ImageInfoBody> {
    // Checked here with the contract's schemas, before anything goes on the wire.
    parseInput(PullRequestSchema, { reference }, 'image pull');
    parseInput(PullImageOptionsSchema, options, 'pull options');
    return this.#ndjson<ImageInfoBody>(`pulling ${reference}`, '/v1/images/pull', { json: { reference } }, options.signal, (v) => {
      const ev = decodePullEvent(v, reference);
      if (ev?.type === 'progress') quietly(() => options.onProgress?.(ev.progress));
      else if (ev?.type === 'error') throw ev.error;
      return ev?.type === 'done' ? ev.image : undefined;
    });
  }

  /**
   * Pushes a stored image of the daemon's to a registry (with the daemon's
   * logins); `onProgress` hears about each blob. Resolves with what was pushed.
   */
  async push(reference: string, options: PushImageOptions = {}): Promise<PushResult> {
    const body = { source: reference, ...(options.destination !== undefined ? { destination: options.destination } : {}) };
    // Checked here with the contract's schemas, before anything goes on the wire.
    parseInput(PushImageRequestSchema, body, 'image push');
    parseInput(PushImageOptionsSchema, options, 'push options');
    return this.#ndjson<PushResult>(`pushing ${reference}`, '/v1/images/push', { json: body }, options.signal, (v) => {
      const ev = decodePushEvent(v, options.destination ?? reference);
      if (ev?.type === 'progress') quietly(() => options.onProgress?.(ev.progress));
      else if (ev?.type === 'error') throw ev.error;
      return ev?.type === 'done' ? ev.result : undefined;
    });
  }

  /**
   * Builds an image on the daemon from a Dockerfile in `context`: a local
   * directory sent as a tar stream, or a tar stream given as `{ tar }` (see
   * docs/images.md#build); `onProgress` hears each step and its output.
   * Resolves with the tagged image.
   */
  async build(context: string | BuildContextArchive, options: BuildImageOptions = {}): Promise<BuildResult> {
    const { onProgress, signal, ...rest } = options;
    const opts = parseInput(BuildOptionsSchema, rest, 'build options');
    const local = typeof context === 'string';
    if (!local && typeof context?.tar?.[Symbol.asyncIterator] !== 'function') {
      throw new RoostError('INVALID_ARGUMENT', 'build context: give a directory, or { tar } with an async iterable of its tar stream');
    }
    const what = local ? context : 'a tar stream';
    return this.#ndjson<BuildResult>(
      `building ${what}`,
      '/v1/images/build',
      { body: local ? contextTar(context, signal) : context.tar, contentType: 'application/x-tar', query: { options: JSON.stringify(opts) } },
      signal,
      (v) => {
        const ev = BuildEventSchema.safeParse(v);
        if (!ev.success) return undefined;
        const e = ev.data;
        if (e.type === 'error') throw errorFromBody(e.error, { code: 'INTERNAL', message: `building ${what} failed` });
        if (e.type === 'done') return { image: e.image, ran: e.ran, cached: e.cached };
        quietly(() => onProgress?.(e));
        return undefined;
      },
    );
  }

  /** A POST answered with NDJSON lines: `take` decodes each (throws a failure, returns the result); the stream must end with one. */
  async #ndjson<T>(
    what: string,
    path: string,
    request: Pick<RequestOptions, 'json' | 'body' | 'contentType' | 'query'>,
    signal: AbortSignal | undefined,
    take: (line: unknown) => T | undefined,
  ): Promise<T> {
    const { res, abort } = await this.transport.stream('POST', path, { ...request, accept: 'application/x-ndjson', signal, timeoutMs: null, what });
    const parser = new NdjsonParser();
    let result: T | undefined;
    const each = (v: unknown) => {
      const r = take(v);
      if (r !== undefined) result = r;
    };
    try {
      for await (const chunk of res) for (const v of parser.push(chunk as Buffer)) each(v);
      for (const v of parser.end()) each(v);
    } catch (e) {
      abort(e instanceof Error ? e : new Error(String(e)));
      if (isRoostError(e)) throw e;
      if (signal?.aborted) throw abortError(signal, what);
      throw new RoostError('UNAVAILABLE', `${what}: the connection to the daemon at ${this.transport.endpoint.display} broke`, { cause: e });
    }
    if (result === undefined) throw new RoostError('UNAVAILABLE', `${what}: the daemon ended the stream without a result`);
    return result;
  }

  /** The steps the daemon's build cache knows, most recently used first. */
  async buildCache(): Promise<BuildCacheEntry[]> {
    return (await this.transport.json<{ entries: BuildCacheEntry[] }>('GET', '/v1/build-cache')).entries;
  }

  /** The stored images. */
  async list(): Promise<ImageInfoBody[]> {
    return (await this.transport.json<{ images: ImageInfoBody[] }>('GET', '/v1/images')).images;
  }

  /** One image, by reference or id (prefix); NOT_FOUND when it is not stored. */
  inspect(reference: string): Promise<ImageInfoBody> {
    return this.transport.json<ImageInfoBody>('GET', `/v1/images/${encodeURIComponent(reference)}`);
  }

  /** Untags an image, and deletes it when no name is left. One that sandboxes use needs `force`. */
  async remove(reference: string, options: { force?: boolean } = {}): Promise<ImageRemoval> {
    options = parseInput(RemoveImageOptionsSchema, options, 'image removal options');
    return this.transport.json('DELETE', `/v1/images/${encodeURIComponent(reference)}`, { query: options.force ? { force: 'true' } : {} });
  }
}

/** Runs a caller's progress callback: one that throws does not end the operation. */
function quietly(fn: () => void): void {
  try {
    fn();
  } catch {
    // ignored: progress is advisory
  }
}
