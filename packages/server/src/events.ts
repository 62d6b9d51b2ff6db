import { EventTypeSchema, RoostError, type EventType } from '@roost/api';
import { errorBody, intParam, queryParams, toRoostError } from './http.js';
import type { RouteContext, RoostHono } from './route-context.js';

/** How long a client waits before reconnecting after the stream drops (the SSE `retry:` field). */
const RETRY_MS = 1_000;

/**
 * Registers `GET /v1/events`: the runtime's events as Server-Sent Events.
 * Each event carries its persisted id, so a client that reconnects with
 * `Last-Event-ID` (or `?after=`) resumes exactly after the last one it saw.
 */
export function eventRoutes(app: RoostHono, ctx: RouteContext): void {
  app.get('/v1/events', async (c) => {
    const q = queryParams(c, ['after', 'type', 'sandbox']);
    let after = intParam(q, 'after');
    // EventSource reconnects to the same URL with Last-Event-ID: the header wins over ?after=.
    const lastEventId = c.req.header('last-event-id')?.trim();
    if (lastEventId) {
      if (!/^\d{1,15}$/.test(lastEventId))
        throw new RoostError('INVALID_ARGUMENT', `Last-Event-ID: expected an event id, got "${lastEventId}"`, { details: { field: 'Last-Event-ID' } });
      after = Number(lastEventId);
    }
    let types: EventType[] | undefined;
    const typeParam = q.get('type');
    if (typeParam) {
      types = [];
      for (const t of typeParam
        .flatMap((v) => v.split(','))
        .map((v) => v.trim())
        .filter(Boolean)) {
        const r = EventTypeSchema.safeParse(t);
        if (!r.success)
          throw new RoostError('INVALID_ARGUMENT', `query: type: unknown event type "${t}" (known: ${EventTypeSchema.options.join(', ')})`, {
            details: { field: 'type' },
          });
        types.push(r.data);
      }
    }
    const sandboxId = q.get('sandbox')?.at(-1);

    const s = ctx.openStream(c, 'text/event-stream; charset=utf-8');
    const stop = new AbortController();
    const end = () => stop.abort();
    s.signal.addEventListener('abort', end, { once: true });
    ctx.shutdown.addEventListener('abort', end, { once: true });
    // A client that asked for new events only learns where it starts (an id-only block sets its
    // Last-Event-ID without dispatching anything), so a reconnect misses what happened in between.
    if (after === undefined) after = ctx.runtime.lastEventId();
    s.push(`retry: ${RETRY_MS}\nid: ${after}\n: connected\n\n`);
    // Comments keep proxies and idle timers from closing a quiet stream.
    const heartbeat = setInterval(() => s.push(': heartbeat\n\n'), ctx.heartbeatMs);
    heartbeat.unref();

    void (async () => {
      try {
        const options: Parameters<typeof ctx.runtime.events>[0] = { signal: stop.signal };
        if (after !== undefined) options.after = after;
        if (types) options.types = types;
        if (sandboxId) options.sandboxId = sandboxId;
        for await (const event of ctx.runtime.events(options)) {
          if (!(await s.write(`id: ${event.id}\nevent: ${event.type}\ndata: ${JSON.stringify(event)}\n\n`))) break;
        }
      } catch (e) {
        if (!stop.signal.aborted) s.push(`event: error\ndata: ${JSON.stringify(errorBody(toRoostError(e)))}\n\n`);
      } finally {
        clearInterval(heartbeat);
        ctx.shutdown.removeEventListener('abort', end);
        stop.abort();
        s.close();
      }
    })();
    return s.response();
  });
}
