import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { MAX_VOLUMES } from '@roost/api';
import { RoostClient } from '@roost/client';
import { serve, type ServeHandle } from '@roost/server';
import { ApiClient, validated } from './api-client.js';
import { eventually, qemusOf, TestHome } from './helpers.js';

type Json = Record<string, unknown>;

// The volume routes of `roost serve`, checked against docs/openapi.json by
// ApiClient, and `client.volumes` of the SDK against the same daemon.
describe('roost serve: volumes', () => {
  let home: TestHome;
  let daemon: ServeHandle;
  let api: ApiClient;
  let client: RoostClient;
  const hostDir = mkdtempSync(join(tmpdir(), 'roost-volumes-api-'));

  beforeAll(async () => {
    home = new TestHome();
    daemon = await serve({ home: home.root });
    api = new ApiClient({ socketPath: daemon.socketPath }, daemon.token);
    await api.openSession();
    client = new RoostClient({ host: `unix://${daemon.socketPath}`, token: daemon.token });
  });

  afterAll(async () => {
    api?.close();
    await client?.close();
    await daemon?.close();
    if (home) await eventually(() => qemusOf(home.root).length === 0, 10_000, 'no QEMU process left');
    await home?.cleanup();
    rmSync(hostDir, { recursive: true, force: true });
  });

  it('creates (201), lists, gets and deletes (204) a volume; 409 for a taken name, 400 for a bad one, 404 for none', async () => {
    const created = await api.post<Json>('/v1/volumes', { name: 'api-1', labels: { team: 'x' } });
    expect(created.status).toBe(201);
    expect(created.body).toMatchObject({ name: 'api-1', labels: { team: 'x' }, usedBy: [], path: join(home.root, 'volumes', 'api-1', 'data') });
    const again = await api.post<Json>('/v1/volumes', { name: 'api-1' });
    expect(again.status).toBe(409);
    expect(again.body).toMatchObject({ error: { code: 'ALREADY_EXISTS' } });
    const bad = await api.post<Json>('/v1/volumes', { name: '-bad/name' });
    expect(bad.status).toBe(400);
    expect(bad.body).toMatchObject({ error: { code: 'INVALID_ARGUMENT', details: { field: 'name' } } });
    expect((await api.post<Json>('/v1/volumes', { name: 'x', extra: 1 })).status).toBe(400);
    expect((await api.post<Json>('/v1/volumes', {})).status).toBe(400);

    const list = await api.get<{ volumes: Json[] }>('/v1/volumes');
    expect(list.status).toBe(200);
    expect(list.body.volumes.map((v) => v.name)).toEqual(['api-1']);
    expect((await api.get<Json>('/v1/volumes/api-1')).body).toMatchObject({ name: 'api-1', usedBy: [] });
    expect((await api.get<Json>('/v1/volumes/none')).status).toBe(404);
    expect((await api.get<Json>('/v1/volumes/bad%20name')).status).toBe(400);
    expect((await api.get<Json>('/v1/volumes?x=1')).status).toBe(400);
    expect((await api.delete('/v1/volumes/api-1')).status).toBe(204);
    expect((await api.delete<Json>('/v1/volumes/api-1')).status).toBe(404);
  });

  it('creates a sandbox with volumes, refuses to delete a volume in use (409 naming the sandbox), deletes it after', async () => {
    const created = await api.post<Json>('/v1/sandboxes', {
      volumes: [
        { source: hostDir, target: '/host' },
        { source: 'api-2', target: '/vol', readOnly: false },
      ],
      timeoutMs: 120_000,
    });
    expect(created.status).toBe(201);
    const id = created.body.id as string;
    expect(created.body.volumes).toEqual([
      { source: hostDir, target: '/host', readOnly: false },
      { source: 'api-2', target: '/vol', readOnly: false },
    ]);
    const run = await api.post<Json>(
      `/v1/sandboxes/${id}/exec`,
      { cmd: 'echo hi > /host/h && echo vol > /vol/v' },
      { headers: { accept: 'application/json' } },
    );
    expect(run.body).toMatchObject({ exitCode: 0 });
    expect(readFileSync(join(hostDir, 'h'), 'utf8')).toBe('hi\n');

    expect((await api.get<Json>('/v1/volumes/api-2')).body).toMatchObject({ usedBy: [id] });
    const refused = await api.delete<Json>('/v1/volumes/api-2');
    expect(refused.status).toBe(409);
    expect(refused.body).toMatchObject({ error: { code: 'INVALID_STATE', message: expect.stringContaining(id) } });

    expect((await api.delete(`/v1/sandboxes/${id}?force=true`)).status).toBe(204);
    const path = (await api.get<Json>('/v1/volumes/api-2')).body.path as string;
    expect(readFileSync(join(path, 'v'), 'utf8')).toBe('vol\n');
    expect((await api.delete('/v1/volumes/api-2')).status).toBe(204);
    expect(existsSync(path)).toBe(false);
  });

  it('answers 400 for bad volumes in a create, and starts no VM', async () => {
    for (const volumes of [
      [{ source: '/no/such/dir', target: '/x' }],
      [{ source: 'v', target: 'relative' }],
      [
        { source: 'v', target: '/a' },
        { source: hostDir, target: '/a' },
      ],
      [{ source: 'v', target: '/x', mode: 'ro' }],
      Array.from({ length: MAX_VOLUMES + 1 }, (_, i) => ({ source: 'v', target: `/t${i}` })),
    ]) {
      const r = await api.post<Json>('/v1/sandboxes', { volumes });
      expect(r.status, JSON.stringify(volumes).slice(0, 100)).toBe(400);
      expect(r.body).toMatchObject({ error: { code: 'INVALID_ARGUMENT' } });
    }
    expect(qemusOf(home.root)).toEqual([]);
    expect((await api.get<{ sandboxes: Json[] }>('/v1/sandboxes')).body.sandboxes).toEqual([]);
    expect((await api.get<{ volumes: Json[] }>('/v1/volumes')).body.volumes).toEqual([]);
  });

  it('serves client.volumes of the SDK', async () => {
    const v = await client.volumes.create({ name: 'sdk-1', labels: { a: 'b' } });
    expect(v).toMatchObject({ name: 'sdk-1', labels: { a: 'b' }, usedBy: [] });
    await expect(client.volumes.create({ name: 'sdk-1' })).rejects.toMatchObject({ code: 'ALREADY_EXISTS' });
    expect((await client.volumes.list()).map((x) => x.name)).toEqual(['sdk-1']);
    expect(await client.volumes.get('sdk-1')).toEqual(v);
    await expect(client.volumes.get('nope')).rejects.toMatchObject({ code: 'NOT_FOUND' });
    await client.volumes.remove('sdk-1');
    await expect(client.volumes.remove('sdk-1')).rejects.toMatchObject({ code: 'NOT_FOUND' });
  });

  it('checked every response against docs/openapi.json', () => {
    expect(validated.responses).toBeGreaterThan(20);
  });
});
