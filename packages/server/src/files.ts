import {
  FileQuerySchema,
  ListQuerySchema,
  MakeDirRequestSchema,
  ReadQuerySchema,
  RecursiveQuerySchema,
  RenameRequestSchema,
  StatQuerySchema,
  RoostError,
  WriteQuerySchema,
  type FileOptions,
  type FileWatchLine,
} from '@roost/api';
import type { Context } from 'hono';
import type { z } from 'zod';
import { errorBody, parseJsonBody, queryParams, toRoostError, validationError } from './http.js';
import type { RouteContext, RoostEnv, RoostHono } from './route-context.js';

/*
 * The files routes: `sandbox.files` over HTTP. Contents and archives stream
 * both ways with backpressure (a download is read from the guest no faster
 * than the client takes it; an upload is read from the client no faster
 * than the guest writes it), so nothing is held whole in the daemon.
 */

/**
 * The trailer that carries the error of a download that failed after its
 * first bytes were sent (the status was 200 by then): the JSON of an error
 * body's `error`, in ASCII. Sent to clients that ask for trailers (`TE:
 * trailers`); for others such a failure breaks the connection, so no
 * client takes a cut body for a whole one.
 */
export const ERROR_TRAILER = 'Roost-Error';

/** Routes whose request body is a raw stream of any size (exempt from the JSON body limit). */
export const FILE_UPLOAD_ROUTE = /^\/v1\/sandboxes\/[^/]+\/files\/(content|archive)$/;

/** A query string checked against its schema (the last value of a repeated parameter counts). */
function fileQuery<S extends z.ZodType>(c: Context, schema: S): z.output<S> {
  const raw: Record<string, string> = {};
  for (const [name, values] of Object.entries(c.req.queries())) raw[name] = values.at(-1) ?? '';
  const r = schema.safeParse(raw);
  if (!r.success) throw validationError('query', r.error);
  return r.data;
}

function userOf(q: { user?: string | number | undefined }): Pick<FileOptions, 'user'> {
  return q.user === undefined ? {} : { user: q.user };
}

function limitOf(q: { maxBytes?: number | undefined }): { maxBytes?: number } {
  return q.maxBytes === undefined ? {} : { maxBytes: q.maxBytes };
}

/** The request body as an async iterable, read as it is consumed. */
async function* requestBody(c: Context): AsyncGenerator<Uint8Array> {
  const body = c.req.raw.body;
  if (!body) return;
  for await (const chunk of body) yield chunk;
}

/** A JSON value as ASCII (a header value cannot carry more). */
function asciiJson(value: unknown): string {
  return JSON.stringify(value).replace(/[\u007f-\uffff]/g, (ch) => `\\u${ch.charCodeAt(0).toString(16).padStart(4, '0')}`);
}

const shuttingDown = (cause: unknown) => new RoostError('UNAVAILABLE', 'the daemon is shutting down', { cause });

const line = (v: FileWatchLine) => JSON.stringify(v) + '\n';

/** Registers the `/v1/sandboxes/{id}/files...` routes. */
export function fileRoutes(app: RoostHono, ctx: RouteContext): void {
  const { runtime } = ctx;
  const sandboxOf = (c: Context) => runtime.get(c.req.param('id') ?? '');
  /** Aborts the guest call when the client leaves or the daemon stops. */
  const callSignal = (c: Context<RoostEnv>, ...more: AbortSignal[]) => AbortSignal.any([ctx.clientGone(c), ctx.shutdown, ...more]);

  /**
   * Streams `source` as the response. The first chunk is awaited before
   * anything is sent, so a failure to open is a normal error response; a
   * failure after that ends the body with the error trailer.
   */
  const sendStream = async (
    c: Context<RoostEnv>,
    contentType: string,
    open: (signal: AbortSignal) => Promise<AsyncIterable<Uint8Array>>,
  ): Promise<Response> => {
    const cancel = new AbortController();
    const source = await open(callSignal(c, cancel.signal));
    const it = source[Symbol.asyncIterator]();
    let first: IteratorResult<Uint8Array>;
    try {
      first = await it.next();
    } catch (e) {
      cancel.abort();
      throw e;
    }
    const trailers = /(^|[\s,])trailers([\s,;]|$)/i.test(c.req.header('te') ?? '');
    const s = ctx.openStream(c, contentType, trailers ? { errorTrailer: ERROR_TRAILER } : {});
    // The client gone (or the stream ended): the guest stops reading.
    s.signal.addEventListener('abort', () => cancel.abort(), { once: true });
    void (async () => {
      let done = first.done === true;
      try {
        let r = first;
        while (!r.done) {
          if (r.value.byteLength > 0 && !(await s.write(r.value))) break;
          r = await it.next();
        }
        done = true;
        s.close();
      } catch (e) {
        done = true;
        const err = ctx.shutdown.aborted ? shuttingDown(e) : toRoostError(e);
        s.fail(err, asciiJson(errorBody(err).error));
      } finally {
        if (!done) await it.return?.()?.catch(() => {});
        cancel.abort();
      }
    })();
    return s.response();
  };

  app.get('/v1/sandboxes/:id/files/content', async (c) => {
    const q = fileQuery(c, ReadQuerySchema);
    const sandbox = await sandboxOf(c);
    return sendStream(c, 'application/octet-stream', (signal) => sandbox.files.read(q.path, { format: 'stream', ...userOf(q), ...limitOf(q), signal }));
  });

  app.put('/v1/sandboxes/:id/files/content', async (c) => {
    const q = fileQuery(c, WriteQuerySchema);
    const sandbox = await sandboxOf(c);
    const signal = callSignal(c);
    try {
      const info = await sandbox.files.write(q.path, requestBody(c), {
        ...userOf(q),
        ...(q.mode !== undefined ? { mode: q.mode } : {}),
        ...(q.noReplace !== undefined ? { noReplace: q.noReplace } : {}),
        signal,
      });
      return c.json(info, info.created ? 201 : 200);
    } catch (e) {
      // The client may still be sending: close the connection rather than read the rest for nothing.
      c.header('connection', 'close');
      throw e;
    }
  });

  app.get('/v1/sandboxes/:id/files/stat', async (c) => {
    const q = fileQuery(c, StatQuerySchema);
    const sandbox = await sandboxOf(c);
    return c.json(await sandbox.files.stat(q.path, { ...userOf(q), ...(q.follow !== undefined ? { follow: q.follow } : {}), signal: callSignal(c) }));
  });

  app.get('/v1/sandboxes/:id/files/list', async (c) => {
    const q = fileQuery(c, ListQuerySchema);
    const sandbox = await sandboxOf(c);
    const entries = await sandbox.files.list(q.path, { ...userOf(q), ...(q.depth !== undefined ? { depth: q.depth } : {}), signal: callSignal(c) });
    return c.json({ entries });
  });

  app.post('/v1/sandboxes/:id/files/mkdir', async (c) => {
    queryParams(c, []);
    const req = await parseJsonBody(c, MakeDirRequestSchema);
    const sandbox = await sandboxOf(c);
    const created = await sandbox.files.makeDir(req.path, { ...userOf(req), ...(req.mode !== undefined ? { mode: req.mode } : {}), signal: callSignal(c) });
    return c.json({ created });
  });

  app.post('/v1/sandboxes/:id/files/rename', async (c) => {
    queryParams(c, []);
    const req = await parseJsonBody(c, RenameRequestSchema);
    const sandbox = await sandboxOf(c);
    return c.json(
      await sandbox.files.rename(req.from, req.to, {
        ...userOf(req),
        ...(req.noReplace !== undefined ? { noReplace: req.noReplace } : {}),
        signal: callSignal(c),
      }),
    );
  });

  app.delete('/v1/sandboxes/:id/files', async (c) => {
    const q = fileQuery(c, RecursiveQuerySchema);
    const sandbox = await sandboxOf(c);
    await sandbox.files.remove(q.path, { ...userOf(q), recursive: q.recursive ?? true, signal: callSignal(c) });
    return c.body(null, 204);
  });

  app.get('/v1/sandboxes/:id/files/watch', async (c) => {
    const q = fileQuery(c, RecursiveQuerySchema);
    const sandbox = await sandboxOf(c);
    const watch = await sandbox.files.watch(q.path, { ...userOf(q), recursive: q.recursive ?? false, signal: callSignal(c) });
    const s = ctx.openStream(c, 'application/x-ndjson');
    s.push(line({ ready: true }));
    s.signal.addEventListener('abort', () => void watch.close().catch(() => {}), { once: true });
    void (async () => {
      try {
        for await (const event of watch) {
          if (!(await s.write(line(event)))) break;
        }
      } catch (e) {
        if (!s.closed) {
          const err = ctx.shutdown.aborted ? shuttingDown(e) : toRoostError(e);
          await s.write(line({ error: errorBody(err).error }));
        }
      } finally {
        await watch.close().catch(() => {});
        s.close();
      }
    })();
    return s.response();
  });

  app.get('/v1/sandboxes/:id/files/archive', async (c) => {
    const q = fileQuery(c, ReadQuerySchema);
    const sandbox = await sandboxOf(c);
    return sendStream(c, 'application/x-tar', (signal) => sandbox.files.readArchive(q.path, { ...userOf(q), ...limitOf(q), signal }));
  });

  app.put('/v1/sandboxes/:id/files/archive', async (c) => {
    const q = fileQuery(c, FileQuerySchema);
    const sandbox = await sandboxOf(c);
    try {
      await sandbox.files.writeArchive(q.path, requestBody(c), { ...userOf(q), signal: callSignal(c) });
    } catch (e) {
      c.header('connection', 'close');
      throw e;
    }
    return c.body(null, 204);
  });
}
