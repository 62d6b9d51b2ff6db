import { CreateSnapshotRequestSchema, CreateTemplateRequestSchema, ForkRequestSchema, SESSION_HEADER, type SnapshotInfo, type TemplateInfo } from '@roost/api';
import { z } from 'zod';
import { parseJsonBody, queryParams } from './http.js';
import { sandboxBody } from './mapping.js';
import type { RouteContext, RoostHono } from './route-context.js';

/** POST /v1/templates/{name}/warm */
export const WarmTemplateRequestSchema = z.object({ timeoutMs: z.number().int().positive().max(600_000).optional() }).strict();

/** A snapshot as the API describes it (fields picked: whatever the core keeps for itself stays out). */
export function snapshotBody(s: SnapshotInfo): SnapshotInfo {
  const body: SnapshotInfo = {
    id: s.id,
    name: s.name,
    kind: s.kind,
    createdAt: s.createdAt,
    sourceSandbox: s.sourceSandbox,
    parent: s.parent ?? null,
    cpus: s.cpus,
    memoryMiB: s.memoryMiB,
    diskSizeMiB: s.diskSizeMiB,
    env: { ...s.env },
    sizeBytes: s.sizeBytes,
    frozen: s.frozen,
    accel: s.accel,
    qemuVersion: s.qemuVersion,
    agentVersion: s.agentVersion,
    dependents: { sandboxes: [...s.dependents.sandboxes], snapshots: [...s.dependents.snapshots] },
  };
  if (s.image) body.image = { reference: s.image.reference, id: s.image.id, entrypoint: s.image.entrypoint, cmd: s.image.cmd };
  if (s.workingDir !== undefined) body.workingDir = s.workingDir;
  if (s.user !== undefined) body.user = s.user;
  if (s.template !== undefined) body.template = s.template;
  return body;
}

/** A template as the API describes it. */
export function templateBody(t: TemplateInfo): TemplateInfo {
  const body: TemplateInfo = {
    name: t.name,
    cpus: t.cpus,
    memoryMiB: t.memoryMiB,
    diskSizeMiB: t.diskSizeMiB,
    env: { ...t.env },
    createdAt: t.createdAt,
    snapshot: t.snapshot ?? null,
  };
  if (t.image !== undefined) body.image = t.image;
  if (t.setup !== undefined) body.setup = typeof t.setup === 'string' ? t.setup : [...t.setup];
  return body;
}

/**
 * Registers the snapshot routes of sandboxes (`.../snapshot`, `.../fork`),
 * `/v1/snapshots` and `/v1/templates`.
 */
export function snapshotRoutes(app: RoostHono, ctx: RouteContext): void {
  const { runtime } = ctx;
  // A client that gives up (or a daemon that stops) aborts the long work: nothing is left behind.
  const longSignal = (c: Parameters<RouteContext['clientGone']>[0]) => AbortSignal.any([ctx.clientGone(c), ctx.shutdown]);

  app.post('/v1/sandboxes/:id/snapshot', async (c) => {
    queryParams(c, []);
    const req = await parseJsonBody(c, CreateSnapshotRequestSchema);
    const sandbox = await runtime.get(c.req.param('id'));
    const snapshot = await sandbox.snapshot({ ...req, signal: longSignal(c) });
    c.header('Location', `/v1/snapshots/${encodeURIComponent(snapshot.name)}`);
    return c.json(snapshotBody(snapshot), 201);
  });

  app.post('/v1/sandboxes/:id/fork', async (c) => {
    queryParams(c, []);
    const req = await parseJsonBody(c, ForkRequestSchema);
    const sandbox = await runtime.get(c.req.param('id'));
    // Copies that are not detached belong to the request's session, else to their source's.
    const header = c.req.header(SESSION_HEADER);
    const detached = req.detached ?? sandbox.info.detached;
    const session = detached
      ? undefined
      : header
        ? ctx.sessions.get(header.trim())
        : (ctx.sessions.owner(sandbox.id) ?? ctx.sessions.required(undefined, 'fork'));
    const copies = await sandbox.fork({ ...req, signal: longSignal(c) });
    if (session) await Promise.all(copies.map((copy) => session.adopt(copy)));
    return c.json({ sandboxes: copies.map((s) => sandboxBody(s.info)) }, 201);
  });

  app.get('/v1/snapshots', async (c) => {
    queryParams(c, []);
    return c.json({ snapshots: (await runtime.snapshots.list()).map(snapshotBody) });
  });

  app.get('/v1/snapshots/:name', async (c) => {
    queryParams(c, []);
    return c.json(snapshotBody(await runtime.snapshots.get(c.req.param('name'))));
  });

  app.delete('/v1/snapshots/:name', async (c) => {
    queryParams(c, []);
    await runtime.snapshots.remove(c.req.param('name'));
    return c.body(null, 204);
  });

  app.post('/v1/templates', async (c) => {
    queryParams(c, []);
    const req = await parseJsonBody(c, CreateTemplateRequestSchema);
    const template = await runtime.templates.create({ ...req, signal: longSignal(c) });
    c.header('Location', `/v1/templates/${encodeURIComponent(template.name)}`);
    return c.json(templateBody(template), 201);
  });

  app.get('/v1/templates', async (c) => {
    queryParams(c, []);
    return c.json({ templates: (await runtime.templates.list()).map(templateBody) });
  });

  app.get('/v1/templates/:name', async (c) => {
    queryParams(c, []);
    return c.json(templateBody(await runtime.templates.get(c.req.param('name'))));
  });

  app.delete('/v1/templates/:name', async (c) => {
    queryParams(c, []);
    await runtime.templates.remove(c.req.param('name'));
    return c.body(null, 204);
  });

  app.post('/v1/templates/:name/warm', async (c) => {
    queryParams(c, []);
    const req = await parseJsonBody(c, WarmTemplateRequestSchema);
    const template = await runtime.templates.warm(c.req.param('name'), { ...req, signal: longSignal(c) });
    return c.json(templateBody(template));
  });
}
