import {
  CreateSandboxRequestSchema,
  ListSandboxesQuerySchema,
  listFilterFromQuery,
  RoostError,
  SandboxStatusSchema,
  SESSION_HEADER,
  SetLifetimeRequestSchema,
  StartSandboxRequestSchema,
  StopSandboxRequestSchema,
} from '@roost/api';
import { z } from 'zod';
import { boolParam, intParam, parseJsonBody, queryParams, validationError } from './http.js';
import { sandboxBody } from './mapping.js';
import type { RouteContext, RoostHono } from './route-context.js';

const EmptyRequestSchema = z.object({}).strict();

/** Registers the `/v1/sandboxes` routes (exec aside). */
export function sandboxRoutes(app: RoostHono, ctx: RouteContext): void {
  const { runtime } = ctx;

  app.post('/v1/sandboxes', async (c) => {
    queryParams(c, []);
    const req = await parseJsonBody(c, CreateSandboxRequestSchema);
    // A sandbox that is not detached belongs to its client's session (see session-registry.ts).
    const session = req.detached ? undefined : ctx.sessions.required(c.req.header(SESSION_HEADER), 'POST /v1/sandboxes');
    // A client that gives up (or a daemon that stops) aborts the boot: nothing is left behind.
    const sandbox = await runtime.create({ ...req, signal: AbortSignal.any([ctx.clientGone(c), ctx.shutdown]) });
    await session?.adopt(sandbox);
    c.header('Location', `/v1/sandboxes/${sandbox.id}`);
    return c.json(sandboxBody(sandbox.info), 201);
  });

  app.get('/v1/sandboxes', async (c) => {
    const raw: Record<string, string | string[]> = {};
    for (const [name, values] of Object.entries(c.req.queries())) raw[name] = name === 'label' ? values : (values.at(-1) ?? '');
    const parsed = ListSandboxesQuerySchema.safeParse(raw);
    if (!parsed.success) throw validationError('query', parsed.error);
    const filter = listFilterFromQuery(parsed.data);
    for (const s of [filter.status ?? []].flat()) {
      if (!SandboxStatusSchema.safeParse(s).success) {
        throw new RoostError('INVALID_ARGUMENT', `query: status: unknown status "${s}" (known: ${SandboxStatusSchema.options.join(', ')})`, {
          details: { field: 'status' },
        });
      }
    }
    const list = await runtime.list(filter);
    return c.json({ sandboxes: list.map(sandboxBody) });
  });

  app.get('/v1/sandboxes/:id', async (c) => {
    queryParams(c, []);
    const sandbox = await runtime.get(c.req.param('id'));
    return c.json(sandboxBody(await sandbox.refresh()));
  });

  app.post('/v1/sandboxes/:id/stop', async (c) => {
    const req = await parseJsonBody(c, StopSandboxRequestSchema);
    const sandbox = await runtime.get(c.req.param('id'));
    await sandbox.stop(req.timeoutMs === undefined ? {} : { timeoutMs: req.timeoutMs });
    return c.json(sandboxBody(sandbox.info));
  });

  app.post('/v1/sandboxes/:id/start', async (c) => {
    const req = await parseJsonBody(c, StartSandboxRequestSchema);
    const sandbox = await runtime.get(c.req.param('id'));
    const signal = AbortSignal.any([ctx.clientGone(c), ctx.shutdown]);
    await sandbox.start(req.timeoutMs === undefined ? { signal } : { timeoutMs: req.timeoutMs, signal });
    return c.json(sandboxBody(sandbox.info));
  });

  app.post('/v1/sandboxes/:id/kill', async (c) => {
    await parseJsonBody(c, EmptyRequestSchema);
    const sandbox = await runtime.get(c.req.param('id'));
    await sandbox.kill();
    return c.json(sandboxBody(sandbox.info));
  });

  app.post('/v1/sandboxes/:id/pause', async (c) => {
    await parseJsonBody(c, EmptyRequestSchema);
    const sandbox = await runtime.get(c.req.param('id'));
    await sandbox.pause();
    return c.json(sandboxBody(sandbox.info));
  });

  app.post('/v1/sandboxes/:id/lifetime', async (c) => {
    const body = await parseJsonBody(c, SetLifetimeRequestSchema);
    const sandbox = await runtime.get(c.req.param('id'));
    const { lifetimeMs, ...options } = body;
    return c.json(sandboxBody(await sandbox.setLifetime(lifetimeMs, options)));
  });

  app.post('/v1/sandboxes/:id/resume', async (c) => {
    await parseJsonBody(c, EmptyRequestSchema);
    const sandbox = await runtime.get(c.req.param('id'));
    await sandbox.resume();
    return c.json(sandboxBody(sandbox.info));
  });

  app.delete('/v1/sandboxes/:id', async (c) => {
    const force = boolParam(queryParams(c, ['force']), 'force');
    const sandbox = await runtime.get(c.req.param('id'));
    await sandbox.remove({ force });
    return c.body(null, 204);
  });

  app.get('/v1/sandboxes/:id/logs', async (c) => {
    const tail = intParam(queryParams(c, ['tail']), 'tail');
    const sandbox = await runtime.get(c.req.param('id'));
    const text = await sandbox.logs(tail === undefined ? {} : { tail });
    return c.body(text, 200, { 'content-type': 'text/plain; charset=utf-8' });
  });

  app.get('/v1/sandboxes/:id/metrics', async (c) => {
    queryParams(c, []);
    const sandbox = await runtime.get(c.req.param('id'));
    return c.json(await runtime.sandboxMetrics(sandbox.id));
  });
}
