import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { RoostClient } from '@roost/client';
import { serve, type ServeHandle } from '@roost/server';
import { ApiClient, validated } from './api-client.js';
import { eventually, qemusOf, TestHome } from './helpers.js';

/*
 * Pause/resume, snapshots, forks and templates through `roost serve`, every
 * response checked against docs/openapi.json by ApiClient, and the same
 * calls through the SDK (RemoteSandbox, client.snapshots, client.templates).
 * One source sandbox; the others are restores (cheap: no boot), removed as
 * soon as they were looked at.
 */

type Json = Record<string, unknown>;
type Info = { id: string; status: string; snapshot?: string };

const home = new TestHome();
let daemon: ServeHandle;
let api: ApiClient;
let client: RoostClient;
let src: string;

const json = { headers: { accept: 'application/json' } };

/** Runs a shell command through the API; its stdout (the exit code must be 0). */
async function sh(id: string, cmd: string): Promise<string> {
  const r = await api.post<Json>(`/v1/sandboxes/${id}/exec`, { cmd }, json);
  expect(r.status, `${id}: ${cmd}`).toBe(200);
  expect(r.body, `${id}: ${cmd}`).toMatchObject({ exitCode: 0 });
  return r.body.stdout as string;
}

async function removeSandbox(id: string): Promise<void> {
  expect((await api.delete(`/v1/sandboxes/${id}?force=true`)).status).toBe(204);
}

beforeAll(async () => {
  daemon = await serve({ home: home.root });
  api = new ApiClient({ socketPath: daemon.socketPath }, daemon.token);
  await api.openSession();
  client = new RoostClient({ host: `unix://${daemon.socketPath}`, token: daemon.token });
  const created = await api.post<Info>('/v1/sandboxes', { timeoutMs: 60_000 });
  expect(created.status).toBe(201);
  src = created.body.id;
  await sh(src, 'echo before > /root/marker');
});

afterAll(async () => {
  api?.close();
  await client?.close();
  await daemon?.close();
  await eventually(() => qemusOf(home.root).length === 0, 10_000, 'no QEMU process left').catch(() => {});
  await home.cleanup();
});

describe('pause and resume', () => {
  it('pauses (status paused; pausing again changes nothing) and resumes where it was', async () => {
    const paused = await api.post<Info>(`/v1/sandboxes/${src}/pause`);
    expect(paused.status).toBe(200);
    expect(paused.body.status).toBe('paused');
    expect((await api.get<Info>(`/v1/sandboxes/${src}`)).body.status).toBe('paused');
    expect((await api.get<{ sandboxes: Info[] }>('/v1/sandboxes?status=paused')).body.sandboxes.map((s) => s.id)).toEqual([src]);
    const again = await api.post<Info>(`/v1/sandboxes/${src}/pause`);
    expect(again.status).toBe(200);
    expect(again.body.status).toBe('paused');

    const resumed = await api.post<Info>(`/v1/sandboxes/${src}/resume`, {});
    expect(resumed.status).toBe(200);
    expect(resumed.body.status).toBe('running');
    expect(await sh(src, 'cat /root/marker')).toBe('before\n');
    expect((await api.post<Info>(`/v1/sandboxes/${src}/resume`)).body.status).toBe('running');

    expect((await api.post<Json>(`/v1/sandboxes/${src}/pause`, { extra: 1 })).status).toBe(400);
    expect((await api.post<Json>('/v1/sandboxes/ffffffffffff/pause')).status).toBe(404);
    expect((await api.post<Json>('/v1/sandboxes/ffffffffffff/resume')).status).toBe(404);
  });
});

describe('snapshots', () => {
  let snapId: string;

  it('takes a named snapshot (201, listed, by name and by id); 409 for a taken name, 400 for a bad one, 404 for no sandbox', async () => {
    const r = await api.post<Json>(`/v1/sandboxes/${src}/snapshot`, { name: 'snap-1' });
    expect(r.status).toBe(201);
    expect(r.body).toMatchObject({ name: 'snap-1', kind: 'user', sourceSandbox: src, parent: null, dependents: { sandboxes: [], snapshots: [] } });
    expect(r.body.sizeBytes as number).toBeGreaterThan(0);
    snapId = r.body.id as string;
    // The source runs on; what it writes now is not in the snapshot.
    expect((await api.get<Info>(`/v1/sandboxes/${src}`)).body.status).toBe('running');
    await sh(src, 'echo after > /root/marker');

    const list = await api.get<{ snapshots: Json[] }>('/v1/snapshots');
    expect(list.status).toBe(200);
    expect(list.body.snapshots.map((s) => s.name)).toContain('snap-1');
    expect((await api.get<Json>('/v1/snapshots/snap-1')).body).toMatchObject({ id: snapId, name: 'snap-1' });
    expect((await api.get<Json>(`/v1/snapshots/${snapId}`)).body).toMatchObject({ id: snapId, name: 'snap-1' });

    const dup = await api.post<Json>(`/v1/sandboxes/${src}/snapshot`, { name: 'snap-1' });
    expect(dup.status).toBe(409);
    expect(dup.body).toMatchObject({ error: { code: 'ALREADY_EXISTS' } });
    const bad = await api.post<Json>(`/v1/sandboxes/${src}/snapshot`, { name: '-bad/name' });
    expect(bad.status).toBe(400);
    expect(bad.body).toMatchObject({ error: { code: 'INVALID_ARGUMENT', details: { field: 'name' } } });
    expect((await api.post<Json>(`/v1/sandboxes/${src}/snapshot`, { name: 'x', extra: true })).status).toBe(400);
    expect((await api.post<Json>('/v1/sandboxes/ffffffffffff/snapshot', { name: 'x' })).status).toBe(404);
    expect((await api.get<Json>('/v1/snapshots/none')).status).toBe(404);
    expect((await api.delete<Json>('/v1/snapshots/none')).status).toBe(404);
    expect((await api.get<Json>('/v1/snapshots?x=1')).status).toBe(400);
  });

  it('creates a sandbox from it: running, with the disk as it was; an image besides is 400, an unknown snapshot 404', async () => {
    const r = await api.post<Info>('/v1/sandboxes', { snapshot: 'snap-1', timeoutMs: 60_000 });
    expect(r.status).toBe(201);
    expect(r.body).toMatchObject({ status: 'running', snapshot: snapId });
    const restored = r.body.id;
    expect(restored).not.toBe(src);
    expect(await sh(restored, 'cat /root/marker')).toBe('before\n');
    // Its own disk from here on.
    await sh(restored, 'echo restored > /root/marker');
    expect(await sh(src, 'cat /root/marker')).toBe('after\n');

    expect((await api.get<Json>('/v1/snapshots/snap-1')).body).toMatchObject({ dependents: { sandboxes: [restored] } });
    const withImage = await api.post<Json>('/v1/sandboxes', { snapshot: 'snap-1', image: 'alpine' });
    expect(withImage.status).toBe(400);
    expect(withImage.body).toMatchObject({ error: { code: 'INVALID_ARGUMENT' } });
    const refused = await api.delete<Json>('/v1/snapshots/snap-1');
    expect(refused.status).toBe(409);
    expect(refused.body).toMatchObject({ error: { code: 'INVALID_STATE', message: expect.stringContaining(restored) } });
    await removeSandbox(restored);
    expect((await api.delete('/v1/snapshots/snap-1')).status).toBe(204);
    expect((await api.get<Json>(`/v1/snapshots/${snapId}`)).status).toBe(404);

    const none = await api.post<Json>('/v1/sandboxes', { snapshot: 'none' });
    expect(none.status).toBe(404);
    expect(none.body).toMatchObject({ error: { code: 'NOT_FOUND' } });
  });

  it('forks a sandbox into two running copies (201), each with its own disk', async () => {
    const r = await api.post<{ sandboxes: Info[] }>(`/v1/sandboxes/${src}/fork`, { count: 2, labels: { copy: 'yes' }, timeoutMs: 120_000 });
    expect(r.status).toBe(201);
    expect(r.body.sandboxes).toHaveLength(2);
    const ids = r.body.sandboxes.map((s) => s.id);
    expect(new Set([src, ...ids]).size).toBe(3);
    for (const s of r.body.sandboxes) expect(s).toMatchObject({ status: 'running', labels: { copy: 'yes' } });
    const [a, b] = ids as [string, string];
    expect(await sh(a, 'cat /root/marker')).toBe('after\n');
    await sh(a, 'echo a > /root/marker');
    expect(await sh(b, 'cat /root/marker')).toBe('after\n');
    expect(await sh(src, 'cat /root/marker')).toBe('after\n');

    const base = (await api.get<Json>(`/v1/snapshots/${r.body.sandboxes[0]!.snapshot!}`)).body;
    expect(base).toMatchObject({ kind: 'fork', sourceSandbox: src });
    expect([...(base.dependents as { sandboxes: string[] }).sandboxes].sort()).toEqual([...ids].sort());

    for (const count of [0, 33]) expect((await api.post<Json>(`/v1/sandboxes/${src}/fork`, { count })).status).toBe(400);
    expect((await api.post<Json>('/v1/sandboxes/ffffffffffff/fork', {})).status).toBe(404);
    for (const id of ids) await removeSandbox(id);
  });
});

describe('templates', () => {
  it('defines a template (201, cold), builds it on the first create from it, and lists its snapshot', async () => {
    const created = await api.post<Json>('/v1/templates', { name: 'tpl-1', setup: 'echo warm > /root/tpl', env: { TPL: '1' } });
    expect(created.status).toBe(201);
    expect(created.body).toMatchObject({ name: 'tpl-1', snapshot: null, setup: 'echo warm > /root/tpl', env: { TPL: '1' } });
    const dup = await api.post<Json>('/v1/templates', { name: 'tpl-1' });
    expect(dup.status).toBe(409);
    expect(dup.body).toMatchObject({ error: { code: 'ALREADY_EXISTS' } });
    expect((await api.post<Json>('/v1/templates', { name: 'x', extra: 1 })).status).toBe(400);
    expect((await api.post<Json>('/v1/templates', {})).status).toBe(400);

    const r = await api.post<Info>('/v1/sandboxes', { template: 'tpl-1', timeoutMs: 120_000 });
    expect(r.status).toBe(201);
    expect(r.body.status).toBe('running');
    expect(await sh(r.body.id, 'cat /root/tpl; echo "$TPL"')).toBe('warm\n1\n');

    const tpl = await api.get<Json>('/v1/templates/tpl-1');
    expect(tpl.status).toBe(200);
    const snapshot = tpl.body.snapshot as string;
    expect(snapshot).toMatch(/^[0-9a-f]{12}$/);
    expect(r.body.snapshot).toBe(snapshot);
    const list = await api.get<{ templates: Json[] }>('/v1/templates');
    expect(list.body.templates).toMatchObject([{ name: 'tpl-1', snapshot }]);
    expect((await api.get<Json>(`/v1/snapshots/${snapshot}`)).body).toMatchObject({ kind: 'template', template: 'tpl-1' });

    // Warming builds a new snapshot; the old one stays while the sandbox restored from it does.
    const warmed = await api.post<Json>('/v1/templates/tpl-1/warm', {});
    expect(warmed.status).toBe(200);
    expect(warmed.body).toMatchObject({ name: 'tpl-1', snapshot: expect.stringMatching(/^[0-9a-f]{12}$/) });
    expect(warmed.body.snapshot).not.toBe(snapshot);
    expect((await api.get<Json>(`/v1/snapshots/${snapshot}`)).body).toMatchObject({ dependents: { sandboxes: [r.body.id] } });

    await removeSandbox(r.body.id);
    expect((await api.delete('/v1/templates/tpl-1')).status).toBe(204);
    expect((await api.get<Json>('/v1/templates/tpl-1')).status).toBe(404);
  });

  it('answers 404 for templates that do not exist', async () => {
    expect((await api.get<Json>('/v1/templates/none')).status).toBe(404);
    expect((await api.delete<Json>('/v1/templates/none')).status).toBe(404);
    expect((await api.post<Json>('/v1/templates/none/warm', {})).status).toBe(404);
    const r = await api.post<Json>('/v1/sandboxes', { template: 'none' });
    expect(r.status).toBe(404);
    expect(r.body).toMatchObject({ error: { code: 'NOT_FOUND' } });
    expect((await api.post<Json>('/v1/templates/none/warm', { timeoutMs: -1 })).status).toBe(400);
  });
});

describe('the SDK', () => {
  it('pauses, resumes, snapshots and forks a RemoteSandbox; lists and removes snapshots and templates', async () => {
    const sandbox = await client.get(src);
    await sandbox.pause();
    expect(sandbox.status).toBe('paused');
    await sandbox.resume();
    expect(sandbox.status).toBe('running');

    const snap = await sandbox.snapshot({ name: 'sdk-1' });
    expect(snap).toMatchObject({ name: 'sdk-1', kind: 'user', sourceSandbox: src });
    await expect(sandbox.snapshot({ name: 'sdk-1' })).rejects.toMatchObject({ code: 'ALREADY_EXISTS' });
    expect((await client.snapshots.list()).map((s) => s.name)).toContain('sdk-1');
    expect(await client.snapshots.get(snap.id)).toEqual(await client.snapshots.get('sdk-1'));

    const [copy, ...rest] = await sandbox.fork();
    expect(rest).toEqual([]);
    expect(copy!.status).toBe('running');
    expect((await copy!.commands.run('cat /root/marker')).stdout).toBe('after\n');
    await copy!.remove({ force: true });

    await client.snapshots.remove('sdk-1');
    await expect(client.snapshots.get('sdk-1')).rejects.toMatchObject({ code: 'NOT_FOUND' });

    const t = await client.templates.create({ name: 'sdk-tpl', memoryMiB: 128 });
    expect(t).toMatchObject({ name: 'sdk-tpl', memoryMiB: 128, snapshot: null });
    expect((await client.templates.list()).map((x) => x.name)).toEqual(['sdk-tpl']);
    expect(await client.templates.get('sdk-tpl')).toEqual(t);
    await client.templates.remove('sdk-tpl');
    await expect(client.templates.get('sdk-tpl')).rejects.toMatchObject({ code: 'NOT_FOUND' });
  });

  it('checked every response against docs/openapi.json', () => {
    expect(validated.responses).toBeGreaterThan(40);
  });
});
