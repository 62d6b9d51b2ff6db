import {
  NetworkInfoSchema,
  NetworkStatsSchema,
  PortBindingSchema,
  PortProtocolSchema,
  PortSpecSchema,
  RoostError,
  type NetworkInfo,
  type PortBinding,
} from '@roost/api';
import { z } from 'zod';
import { parseJsonBody, queryParams } from './http.js';
import type { RouteContext, RoostHono } from './route-context.js';

/** POST /v1/sandboxes/{id}/ports: a port mapping as a string (`8080:80`) or an object (a component of its own in the document). */
export const PortSpecRequestSchema = PortSpecSchema.meta({ id: 'PortSpec' });
/** GET /v1/sandboxes/{id}/ports */
export const PortListSchema = z.object({ ports: z.array(PortBindingSchema) }).meta({ id: 'PortList' });
/** GET /v1/sandboxes/{id}/network */
export const NetworkStatusSchema = z.object({ network: NetworkInfoSchema, stats: NetworkStatsSchema }).meta({ id: 'NetworkStatus' });

/** A published port as the API describes it. */
export function portBody(p: PortBinding): PortBinding {
  return { guestPort: p.guestPort, hostPort: p.hostPort, hostIp: p.hostIp, protocol: p.protocol };
}

/** A sandbox's network as the API describes it (records from before networking have none: mode `none`). */
export function networkBody(n: NetworkInfo | undefined): NetworkInfo {
  if (!n) return { mode: 'none', ports: [], egress: { default: 'allow', allow: [], deny: [] } };
  const body: NetworkInfo = {
    mode: n.mode,
    ports: n.ports.map(portBody),
    egress: { default: n.egress.default, allow: [...n.egress.allow], deny: [...n.egress.deny] },
  };
  for (const k of ['mac', 'address', 'gateway', 'dns', 'bridge'] as const) if (n[k] !== undefined) body[k] = n[k];
  if (n.prefix !== undefined) body.prefix = n.prefix;
  return body;
}

/** The `{hostPort}` path parameter. */
function hostPortParam(text: string): number {
  if (!/^\d{1,5}$/.test(text) || Number(text) < 1 || Number(text) > 65535) {
    throw new RoostError('INVALID_ARGUMENT', `path: hostPort: "${text}" is not a port (a number from 1 to 65535)`, { details: { field: 'hostPort' } });
  }
  return Number(text);
}

/** Registers a sandbox's network routes: published ports (`.../ports`) and `.../network`. */
export function networkRoutes(app: RoostHono, ctx: RouteContext): void {
  const { runtime } = ctx;

  app.get('/v1/sandboxes/:id/ports', async (c) => {
    queryParams(c, []);
    const sandbox = await runtime.get(c.req.param('id'));
    return c.json({ ports: (await sandbox.ports.list()).map(portBody) });
  });

  app.post('/v1/sandboxes/:id/ports', async (c) => {
    queryParams(c, []);
    const spec = await parseJsonBody(c, PortSpecRequestSchema);
    const sandbox = await runtime.get(c.req.param('id'));
    const binding = await sandbox.ports.add(spec);
    c.header('Location', `/v1/sandboxes/${sandbox.id}/ports/${binding.hostPort}?protocol=${binding.protocol}&hostIp=${encodeURIComponent(binding.hostIp)}`);
    return c.json(portBody(binding), 201);
  });

  app.delete('/v1/sandboxes/:id/ports/:hostPort', async (c) => {
    const q = queryParams(c, ['protocol', 'hostIp']);
    const hostPort = hostPortParam(c.req.param('hostPort'));
    const protocolText = q.get('protocol')?.at(-1);
    const protocol = protocolText === undefined ? undefined : PortProtocolSchema.safeParse(protocolText).data;
    if (protocolText !== undefined && protocol === undefined) {
      throw new RoostError('INVALID_ARGUMENT', `query: protocol: expected tcp or udp, got "${protocolText}"`, { details: { field: 'protocol' } });
    }
    const hostIp = q.get('hostIp')?.at(-1);
    const sandbox = await runtime.get(c.req.param('id'));
    await sandbox.ports.remove({ hostPort, ...(protocol ? { protocol } : {}), ...(hostIp ? { hostIp } : {}) });
    return c.body(null, 204);
  });

  app.get('/v1/sandboxes/:id/network', async (c) => {
    queryParams(c, []);
    const sandbox = await runtime.get(c.req.param('id'));
    const stats = await sandbox.networkStats();
    return c.json({
      network: networkBody(sandbox.info.network),
      stats: { bytesIn: stats.bytesIn, packetsIn: stats.packetsIn, bytesOut: stats.bytesOut, packetsOut: stats.packetsOut, denied: stats.denied },
    });
  });
}
