import { DeploymentSpecSchema, isRoostError, ScaleDeploymentRequestSchema, type DeploymentInfo, type DeploymentsApi, type ReplicaInfo } from '@roost/api';
import { parseJsonBody, queryParams } from './http.js';
import type { RouteContext, RoostHono } from './route-context.js';

/** A replica as the API describes it (fields picked). */
function replicaBody(r: ReplicaInfo): ReplicaInfo {
  return {
    id: r.id,
    revision: r.revision,
    current: r.current,
    state: r.state,
    restarts: r.restarts,
    startedAt: r.startedAt,
    lastProbe: r.lastProbe ? { ...r.lastProbe } : null,
    lastExit: r.lastExit ? { ...r.lastExit } : null,
  };
}

/** A deployment as the API describes it (fields picked: whatever the core keeps for itself stays out). */
export function deploymentBody(d: DeploymentInfo): DeploymentInfo {
  return {
    name: d.name,
    spec: d.spec,
    revision: d.revision,
    generation: d.generation,
    observedGeneration: d.observedGeneration,
    replicas: d.replicas,
    healthyReplicas: d.healthyReplicas,
    updatedReplicas: d.updatedReplicas,
    ports: d.ports.map((p) => ({ hostIp: p.hostIp, hostPort: p.hostPort, guestPort: p.guestPort, spec: p.spec })),
    members: d.members.map(replicaBody),
    canRollback: d.canRollback,
    createdAt: d.createdAt,
    updatedAt: d.updatedAt,
    lastError: d.lastError ? { ...d.lastError } : null,
    events: [...d.events],
  };
}

/** True when a deployment of that name exists (for the status of an apply: 201 for a new one). */
async function exists(deployments: DeploymentsApi, name: string): Promise<boolean> {
  try {
    await deployments.get(name);
    return true;
  } catch (e) {
    if (isRoostError(e, 'NOT_FOUND')) return false;
    throw e;
  }
}

/** Registers `/v1/deployments`: apply (create or change), list, get, scale, rollback, remove (docs/deployments.md). */
export function deploymentRoutes(app: RoostHono, ctx: RouteContext): void {
  const { runtime } = ctx;

  app.post('/v1/deployments', async (c) => {
    queryParams(c, []);
    const spec = await parseJsonBody(c, DeploymentSpecSchema);
    const existed = await exists(runtime.deployments, spec.name);
    const info = await runtime.deployments.apply(spec);
    c.header('Location', `/v1/deployments/${encodeURIComponent(info.name)}`);
    return c.json(deploymentBody(info), existed ? 200 : 201);
  });

  app.get('/v1/deployments', async (c) => {
    queryParams(c, []);
    return c.json({ deployments: (await runtime.deployments.list()).map(deploymentBody) });
  });

  app.get('/v1/deployments/:name', async (c) => {
    queryParams(c, []);
    return c.json(deploymentBody(await runtime.deployments.get(c.req.param('name'))));
  });

  app.post('/v1/deployments/:name/scale', async (c) => {
    queryParams(c, []);
    const req = await parseJsonBody(c, ScaleDeploymentRequestSchema);
    return c.json(deploymentBody(await runtime.deployments.scale(c.req.param('name'), req.replicas)));
  });

  app.post('/v1/deployments/:name/rollback', async (c) => {
    queryParams(c, []);
    return c.json(deploymentBody(await runtime.deployments.rollback(c.req.param('name'))));
  });

  app.delete('/v1/deployments/:name', async (c) => {
    queryParams(c, []);
    await runtime.deployments.remove(c.req.param('name'));
    return c.body(null, 204);
  });
}
