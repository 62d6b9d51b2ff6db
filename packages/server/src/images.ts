import { encodePullProgress, pullProgressDone, PullRequestSchema, type PullEventSchema, type PullProgress } from '@roost/api';
import type { z } from 'zod';
import { boolParam, errorBody, parseJsonBody, queryParams, toRoostError, wantsJson } from './http.js';
import { imageBuildRoute } from './images-build.js';
import { imagePushRoute } from './images-push.js';
import type { RouteContext, RoostHono } from './route-context.js';

/** Progress lines per blob are at most this often (its last one, `done`, always goes out). */
const PROGRESS_INTERVAL_MS = 100;

const line = (e: z.infer<typeof PullEventSchema>) => JSON.stringify(e) + '\n';

/** Registers the `/v1/images` routes. */
export function imageRoutes(app: RoostHono, ctx: RouteContext): void {
  const { runtime } = ctx;

  app.post('/v1/images/pull', async (c) => {
    const req = await parseJsonBody(c, PullRequestSchema);
    if (wantsJson(c)) {
      const image = await runtime.images.pull(req.reference, { signal: AbortSignal.any([ctx.clientGone(c), ctx.shutdown]) });
      return c.json(image);
    }

    const s = ctx.openStream(c, 'application/x-ndjson');
    const lastSent = new Map<string, number>();
    let firstProgress!: () => void;
    const progressed = new Promise<void>((r) => (firstProgress = r));
    const onProgress = (p: PullProgress) => {
      firstProgress();
      const done = pullProgressDone(p);
      const now = Date.now();
      const prev = lastSent.get(p.digest);
      if (!done && prev !== undefined && now - prev < PROGRESS_INTERVAL_MS) return;
      lastSent.set(p.digest, now);
      // Lines are small and rate-limited: queued without waiting for the client.
      s.push(line(encodePullProgress(p, done)));
    };
    let failedEarly: unknown;
    const pulled = runtime.images.pull(req.reference, { signal: AbortSignal.any([s.signal, ctx.shutdown]), onProgress });
    // A pull that fails before it fetched anything (a bad reference, an
    // unknown image, a refused login) gets a proper error status rather
    // than a 200 stream whose only line is the error.
    await Promise.race([
      progressed,
      pulled.then(
        () => {},
        (e: unknown) => void (failedEarly = e ?? new Error('pull failed')),
      ),
    ]);
    if (failedEarly !== undefined) {
      s.close();
      throw failedEarly;
    }
    void pulled
      .then(
        (image) => s.push(line({ type: 'done', image })),
        (e: unknown) => s.push(line({ type: 'error', error: errorBody(toRoostError(e)).error })),
      )
      .finally(() => s.close());
    return s.response();
  });

  imagePushRoute(app, ctx);
  imageBuildRoute(app, ctx);

  app.get('/v1/build-cache', async (c) => {
    queryParams(c, []);
    return c.json({ entries: await runtime.images.buildCache() });
  });

  app.get('/v1/images', async (c) => {
    queryParams(c, []);
    return c.json({ images: await runtime.images.list() });
  });

  app.get('/v1/images/:ref', async (c) => {
    queryParams(c, []);
    return c.json(await runtime.images.inspect(c.req.param('ref')));
  });

  app.delete('/v1/images/:ref', async (c) => {
    const force = boolParam(queryParams(c, ['force']), 'force');
    const r = await runtime.images.remove(c.req.param('ref'), { force });
    return c.json({ untagged: r.untagged, deleted: r.deleted });
  });
}
