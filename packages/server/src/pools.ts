import { CreatePoolRequestSchema, ResizePoolRequestSchema, type PoolInfo } from '@roost/api';
import { parseJsonBody, queryParams } from './http.js';
import type { RouteContext, RoostHono } from './route-context.js';

/** A pool as the API describes it (fields picked: whatever the core keeps for itself stays out). */
export function poolBody(p: PoolInfo): PoolInfo {
  const body: PoolInfo = {
    name: p.name,
    size: p.size,
    maxSize: p.maxSize,
    ready: p.ready,
    starting: p.starting,
    handedOver: p.handedOver,
    fallbacks: p.fallbacks,
    createdAt: p.createdAt,
    members: [...p.members],
    lastError: p.lastError ? { ...p.lastError } : null,
  };
  if (p.template !== undefined) body.template = p.template;
  if (p.snapshot !== undefined) body.snapshot = p.snapshot;
  return body;
}

/** Registers `/v1/pools` (sandboxes are taken from a pool by POST /v1/sandboxes with `pool`). */
export function poolRoutes(app: RoostHono, ctx: RouteContext): void {
  const { runtime } = ctx;

  app.post('/v1/pools', async (c) => {
    queryParams(c, []);
    const req = await parseJsonBody(c, CreatePoolRequestSchema);
    const pool = await runtime.pools.create(req);
    c.header('Location', `/v1/pools/${encodeURIComponent(pool.name)}`);
    return c.json(poolBody(pool), 201);
  });

  app.get('/v1/pools', async (c) => {
    queryParams(c, []);
    return c.json({ pools: (await runtime.pools.list()).map(poolBody) });
  });

  app.get('/v1/pools/:name', async (c) => {
    queryParams(c, []);
    return c.json(poolBody(await runtime.pools.get(c.req.param('name'))));
  });

  app.post('/v1/pools/:name/size', async (c) => {
    queryParams(c, []);
    const req = await parseJsonBody(c, ResizePoolRequestSchema);
    return c.json(poolBody(await runtime.pools.resize(c.req.param('name'), req.size)));
  });

  app.delete('/v1/pools/:name', async (c) => {
    queryParams(c, []);
    await runtime.pools.remove(c.req.param('name'));
    return c.body(null, 204);
  });
}
