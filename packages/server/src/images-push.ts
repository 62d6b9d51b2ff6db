import { encodePushProgress, PushImageRequestSchema, pushProgressDone, type PushEvent, type PushProgress } from '@roost/api';
import { errorBody, parseJsonBody, toRoostError, wantsJson } from './http.js';
import type { RouteContext, RoostHono } from './route-context.js';

/** Progress lines per blob are at most this often (its final one always goes out). */
const PROGRESS_INTERVAL_MS = 100;

const line = (e: PushEvent) => JSON.stringify(e) + '\n';

/**
 * `POST /v1/images/push`: `images.push` over HTTP, its progress as NDJSON
 * (PushEvent lines, `done` or `error` last) as a pull's is, or the
 * PushResult alone with `Accept: application/json`.
 */
export function imagePushRoute(app: RoostHono, ctx: RouteContext): void {
  const { runtime } = ctx;

  app.post('/v1/images/push', async (c) => {
    const req = await parseJsonBody(c, PushImageRequestSchema);
    const destination = req.destination !== undefined ? { destination: req.destination } : {};
    if (wantsJson(c)) {
      const result = await runtime.images.push(req.source, { ...destination, signal: AbortSignal.any([ctx.clientGone(c), ctx.shutdown]) });
      return c.json(result);
    }

    const s = ctx.openStream(c, 'application/x-ndjson');
    const lastSent = new Map<string, number>();
    let firstProgress!: () => void;
    const progressed = new Promise<void>((r) => (firstProgress = r));
    const onProgress = (p: PushProgress) => {
      // A refused login shows at the first existence check: the answer starts once a blob got further.
      if (p.status !== 'waiting' && p.status !== 'checking') firstProgress();
      const final = pushProgressDone(p) || p.status === 'failed';
      const now = Date.now();
      const prev = lastSent.get(p.digest);
      if (!final && prev !== undefined && now - prev < PROGRESS_INTERVAL_MS) return;
      lastSent.set(p.digest, now);
      // Lines are small and rate-limited: queued without waiting for the client.
      s.push(line(encodePushProgress(p)));
    };
    let failedEarly: unknown;
    const pushed = runtime.images.push(req.source, { ...destination, signal: AbortSignal.any([s.signal, ctx.shutdown]), onProgress });
    // A push that fails before any blob got past its existence check (an
    // unknown image, a bad destination, a refused login) gets a proper error
    // status rather than a 200 stream whose only line is the error.
    await Promise.race([
      progressed,
      pushed.then(
        () => {},
        (e: unknown) => void (failedEarly = e ?? new Error('push failed')),
      ),
    ]);
    if (failedEarly !== undefined) {
      s.close();
      throw failedEarly;
    }
    void pushed
      .then(
        (result) => s.push(line({ type: 'done', result })),
        (e: unknown) => s.push(line({ type: 'error', error: errorBody(toRoostError(e)).error })),
      )
      .finally(() => s.close());
    return s.response();
  });
}
