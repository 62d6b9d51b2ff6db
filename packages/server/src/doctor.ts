import { DoctorRequestSchema } from '@roost/api';
import { parseJsonBody, queryParams } from './http.js';
import type { RouteContext, RoostHono } from './route-context.js';

/** Registers `POST /v1/doctor`: the runtime's check of its home, and with `repair` its repair (see docs/recovery.md). */
export function doctorRoutes(app: RoostHono, ctx: RouteContext): void {
  app.post('/v1/doctor', async (c) => {
    queryParams(c, []);
    const req = await parseJsonBody(c, DoctorRequestSchema);
    return c.json(await ctx.runtime.doctor(req));
  });
}
