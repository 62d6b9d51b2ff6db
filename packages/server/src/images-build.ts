import {
  BuildOptionsSchema,
  MAX_BUILD_CONTEXT_BYTES,
  RoostError,
  type BuildEvent,
  type BuildOptions,
  type BuildProgressEvent,
  type BuildResult,
} from '@roost/api';
import { z } from 'zod';
import { errorBody, errorResponse, queryParams, toRoostError, validationError, wantsJson } from './http.js';
import type { ResponseStream } from './response-stream.js';
import type { RouteContext, RoostHono } from './route-context.js';

/** Output bytes queued for a slow client past which a build's output lines are dropped (steps and notes never are). */
const MAX_OUTPUT_BACKLOG = 4 * 1024 * 1024;

const line = (e: BuildEvent) => JSON.stringify(e) + '\n';

/** The `options` query parameter, parsed as its own object so errors name `options.FIELD`. */
const OptionsQuerySchema = z.object({ options: BuildOptionsSchema });

/**
 * `POST /v1/images/build?options=<BuildOptions as JSON>`: the request body
 * is the build context as a tar stream (bounded by MAX_BUILD_CONTEXT_BYTES:
 * 413 past it), handed to `images.build({ tar })`, which unpacks it
 * strictly into a temp directory of the home and removes it after. The
 * answer is NDJSON BuildEvent lines (`step`, `output`, `note`, then `done`
 * or `error`), or the BuildResult alone with `Accept: application/json`. A
 * build that fails before its first progress line (a hostile or oversized
 * body, a Dockerfile error) gets its own status. A client that goes away
 * aborts the build.
 */
export function imageBuildRoute(app: RoostHono, ctx: RouteContext): void {
  const { runtime } = ctx;

  app.post('/v1/images/build', async (c) => {
    const options = parseOptions(queryParams(c, ['options']).get('options')?.at(-1));
    const type = (c.req.header('content-type') ?? '').split(';')[0]!.trim().toLowerCase();
    if (type !== '' && type !== 'application/x-tar' && type !== 'application/octet-stream') {
      throw new RoostError('INVALID_ARGUMENT', `request body: the build context is a tar stream (Content-Type: application/x-tar), not ${type}`, {
        details: { field: '' },
      });
    }
    const length = Number(c.req.header('content-length') ?? NaN);
    if (length > MAX_BUILD_CONTEXT_BYTES) return errorResponse(c, contextTooLarge(), 413);
    const body = c.req.raw.body;
    if (!body) throw new RoostError('INVALID_ARGUMENT', 'request body: the build context, as a tar stream, is required', { details: { field: '' } });
    const received = boundedBody(body);

    if (wantsJson(c)) {
      const signal = AbortSignal.any([ctx.clientGone(c), ctx.shutdown]);
      const result = await runtime.images.build({ tar: received.chunks }, { ...options, signal }).catch((e: unknown) => {
        throw received.tooLarge ? contextTooLarge() : e;
      });
      return c.json(result);
    }

    const s = ctx.openStream(c, 'application/x-ndjson');
    const output = new OutputGate(s);
    let firstProgress!: () => void;
    const progressed = new Promise<void>((r) => (firstProgress = r));
    const onProgress = (e: BuildProgressEvent) => {
      firstProgress();
      // Lines are small, and a RUN's output is bounded by what the client has not taken yet: queued without waiting.
      if (e.type === 'output') output.push(e);
      else output.pushLine(line(e));
    };
    let failedEarly: unknown;
    const built: Promise<BuildResult> = runtime.images.build(
      { tar: received.chunks },
      { ...options, signal: AbortSignal.any([s.signal, ctx.shutdown]), onProgress },
    );
    // A build that fails before its first line (a refused or oversized context, a Dockerfile error, an unknown base image)
    // gets a proper error status rather than a 200 stream whose only line is the error.
    await Promise.race([
      progressed,
      built.then(
        () => {},
        (e: unknown) => void (failedEarly = e ?? new Error('build failed')),
      ),
    ]);
    if (failedEarly !== undefined) {
      s.close();
      if (received.tooLarge) return errorResponse(c, contextTooLarge(), 413);
      throw failedEarly;
    }
    void built
      .then(
        (r) => output.pushLine(line({ type: 'done', image: r.image, ran: r.ran, cached: r.cached })),
        (e: unknown) => output.pushLine(line({ type: 'error', error: errorBody(received.tooLarge ? contextTooLarge() : toRoostError(e)).error })),
      )
      .finally(() => s.close());
    return s.response();
  });
}

/** The `options` query parameter: JSON of BuildOptions (none: `{}`). */
function parseOptions(raw: string | undefined): BuildOptions {
  let value: unknown = {};
  if (raw !== undefined && raw.trim() !== '') {
    try {
      value = JSON.parse(raw);
    } catch (e) {
      throw new RoostError('INVALID_ARGUMENT', `query: options: invalid JSON (${(e as Error).message})`, { details: { field: 'options' } });
    }
  }
  const r = OptionsQuerySchema.safeParse({ options: value });
  if (!r.success) throw validationError('query', r.error);
  return r.data.options;
}

function contextTooLarge(): RoostError {
  return new RoostError(
    'INVALID_ARGUMENT',
    `request body: the build context is larger than the limit of ${MAX_BUILD_CONTEXT_BYTES} bytes (2 GiB); leave what the build does not need out with .dockerignore`,
    { details: { field: '', maxBytes: MAX_BUILD_CONTEXT_BYTES } },
  );
}

/** The request body as chunks, cut off with an error (and `tooLarge` set) past MAX_BUILD_CONTEXT_BYTES. */
function boundedBody(body: ReadableStream<Uint8Array>): { chunks: AsyncIterable<Uint8Array>; readonly tooLarge: boolean } {
  let tooLarge = false;
  async function* chunks(): AsyncGenerator<Uint8Array> {
    const reader = body.getReader();
    let total = 0;
    try {
      for (;;) {
        const { done, value } = await reader.read();
        if (done) return;
        total += value.byteLength;
        if (total > MAX_BUILD_CONTEXT_BYTES) {
          tooLarge = true;
          throw contextTooLarge();
        }
        yield value;
      }
    } finally {
      // The rest of a refused body is not read: the connection ends with the answer.
      await reader.cancel().catch(() => {});
    }
  }
  return {
    chunks: chunks(),
    get tooLarge() {
      return tooLarge;
    },
  };
}

/**
 * A build's lines onto its response: steps, notes and the last line always
 * go; a RUN's output is dropped while more than MAX_OUTPUT_BACKLOG bytes
 * wait for a slow client (a guest that floods its output must not grow the
 * daemon's memory), and a note says how much was dropped once it drains.
 */
class OutputGate {
  #dropped = 0;

  constructor(private readonly s: ResponseStream) {}

  push(e: Extract<BuildProgressEvent, { type: 'output' }>): void {
    if (this.s.queuedBytes > MAX_OUTPUT_BACKLOG) {
      this.#dropped += Buffer.byteLength(e.data);
      return;
    }
    this.#flushNote();
    this.s.push(line(e));
  }

  pushLine(text: string): void {
    this.#flushNote();
    this.s.push(text);
  }

  #flushNote(): void {
    if (this.#dropped === 0) return;
    this.s.push(line({ type: 'note', message: `${this.#dropped} bytes of output were dropped: the client read them slower than the build wrote them` }));
    this.#dropped = 0;
  }
}
