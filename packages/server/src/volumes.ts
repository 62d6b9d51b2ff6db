import { CreateVolumeRequestSchema, type VolumeInfo } from '@roost/api';
import { parseJsonBody, queryParams } from './http.js';
import type { RouteContext, RoostHono } from './route-context.js';

/** A volume as the API describes it (fields picked: whatever the core keeps for itself stays out). */
export function volumeBody(v: VolumeInfo): VolumeInfo {
  return { name: v.name, path: v.path, createdAt: v.createdAt, labels: { ...v.labels }, usedBy: [...v.usedBy] };
}

/** Registers the `/v1/volumes` routes: named volumes of the runtime's home. */
export function volumeRoutes(app: RoostHono, ctx: RouteContext): void {
  const { runtime } = ctx;

  app.post('/v1/volumes', async (c) => {
    queryParams(c, []);
    const req = await parseJsonBody(c, CreateVolumeRequestSchema);
    return c.json(volumeBody(await runtime.volumes.create(req)), 201);
  });

  app.get('/v1/volumes', async (c) => {
    queryParams(c, []);
    return c.json({ volumes: (await runtime.volumes.list()).map(volumeBody) });
  });

  app.get('/v1/volumes/:name', async (c) => {
    queryParams(c, []);
    return c.json(volumeBody(await runtime.volumes.get(c.req.param('name'))));
  });

  app.delete('/v1/volumes/:name', async (c) => {
    queryParams(c, []);
    await runtime.volumes.remove(c.req.param('name'));
    return c.body(null, 204);
  });
}
