import { SESSION_HEADER } from '@roost/api';
import { z } from 'zod';
import { parseJsonBody, queryParams } from './http.js';
import type { RouteContext, RoostHono } from './route-context.js';

const EmptyRequestSchema = z.object({}).strict();

/**
 * Registers `/v1/sessions`: `POST` opens a session (or resumes the one its
 * `Roost-Session` header names) and holds the response open, a JSON line
 * first and then every keepalive; `DELETE /v1/sessions/{id}` ends one now
 * (a client closing cleanly), answering once its sandboxes are ended.
 */
export function sessionRoutes(app: RoostHono, ctx: RouteContext): void {
  const { sessions } = ctx;

  app.post('/v1/sessions', async (c) => {
    queryParams(c, []);
    await parseJsonBody(c, EmptyRequestSchema);
    const resume = c.req.header(SESSION_HEADER)?.trim();
    const session = resume ? sessions.get(resume) : sessions.open();
    const disconnected = session.connect();
    const s = ctx.openStream(c, 'application/x-ndjson');
    const line = () => s.push(JSON.stringify(session.line()) + '\n');
    line();
    // Keepalive bytes: proxies keep the stream, and a peer that vanished without closing is found when a write fails.
    const keepalive = setInterval(line, session.line().keepaliveMs);
    keepalive.unref();
    const end = () => {
      clearInterval(keepalive);
      ctx.shutdown.removeEventListener('abort', end);
      s.close();
      disconnected();
    };
    s.signal.addEventListener('abort', end, { once: true });
    ctx.shutdown.addEventListener('abort', end, { once: true });
    return s.response();
  });

  app.delete('/v1/sessions/:session', async (c) => {
    queryParams(c, []);
    await sessions.get(c.req.param('session')).end();
    return c.body(null, 204);
  });
}
