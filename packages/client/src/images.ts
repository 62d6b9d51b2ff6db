import {
  abortError,
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
import type { Transport } from './http.js';
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
    const what = `pulling ${reference}`;
    const { res, abort } = await this.transport.stream('POST', '/v1/images/pull', {
      json: { reference },
      accept: 'application/x-ndjson',
      signal: options.signal,
      timeoutMs: null,
      what,
    });
    const parser = new NdjsonParser();
    let result: ImageInfoBody | undefined;
    const take = (v: unknown) => {
      const ev = decodePullEvent(v, reference);
      if (ev?.type === 'progress') {
        try {
          options.onProgress?.(ev.progress);
        } catch {
          // A throwing progress callback does not end the pull.
        }
      } else if (ev?.type === 'done') {
        result = ev.image;
      } else if (ev?.type === 'error') {
        throw ev.error;
      }
    };
    try {
      for await (const chunk of res) for (const v of parser.push(chunk as Buffer)) take(v);
      for (const v of parser.end()) take(v);
    } catch (e) {
      abort(e instanceof Error ? e : new Error(String(e)));
      if (isRoostError(e)) throw e;
      if (options.signal?.aborted) throw abortError(options.signal, what);
      throw new RoostError('UNAVAILABLE', `${what}: the connection to the daemon at ${this.transport.endpoint.display} broke`, { cause: e });
    }
    if (!result) throw new RoostError('UNAVAILABLE', `${what}: the daemon ended the stream without a result`);
    return result;
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
    const what = `pushing ${reference}`;
    const { res, abort } = await this.transport.stream('POST', '/v1/images/push', {
      json: body,
      accept: 'application/x-ndjson',
      signal: options.signal,
      timeoutMs: null,
      what,
    });
    const parser = new NdjsonParser();
    let result: PushResult | undefined;
    const take = (v: unknown) => {
      const ev = decodePushEvent(v, options.destination ?? reference);
      if (ev?.type === 'progress') {
        try {
          options.onProgress?.(ev.progress);
        } catch {
          // A throwing progress callback does not end the push.
        }
      } else if (ev?.type === 'done') {
        result = ev.result;
      } else if (ev?.type === 'error') {
        throw ev.error;
      }
    };
    try {
      for await (const chunk of res) for (const v of parser.push(chunk as Buffer)) take(v);
      for (const v of parser.end()) take(v);
    } catch (e) {
      abort(e instanceof Error ? e : new Error(String(e)));
      if (isRoostError(e)) throw e;
      if (options.signal?.aborted) throw abortError(options.signal, what);
      throw new RoostError('UNAVAILABLE', `${what}: the connection to the daemon at ${this.transport.endpoint.display} broke`, { cause: e });
    }
    if (!result) throw new RoostError('UNAVAILABLE', `${what}: the daemon ended the stream without a result`);
    return result;
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
