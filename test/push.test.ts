import { execFile } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { PushProgress } from '@roost/api';
import { ImageStore, type ImageInfo } from '@roost/core';
import { serve, type ServeHandle } from '@roost/server';
import { buildBusyboxImage, startRegistry, type BusyboxImage, type TestRegistry } from '@roost/testkit';
import { ApiClient } from './api-client.js';
import { TestHome } from './helpers.js';

const execFileP = promisify(execFile);
const CLI = join(import.meta.dirname, '..', 'packages', 'cli', 'bin', 'roost.js');

type Json = Record<string, unknown>;

/** Runs the CLI; resolves with its exit code and output (never rejects on a non-zero exit). */
async function cli(args: string[], env: NodeJS.ProcessEnv, input?: string): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const child = execFile(process.execPath, [CLI, ...args], { env, timeout: 120_000 }, (err, stdout, stderr) => {
      resolve({ code: err ? ((err as { code?: number }).code ?? 1) : 0, stdout, stderr });
    });
    if (input !== undefined) child.stdin!.end(input);
  });
}

/** The manifest digest skopeo sees at `docker://reference` (another client's view of what was pushed). */
async function skopeoDigest(reg: TestRegistry, reference: string): Promise<string> {
  const creds = reg.auth === 'none' ? [] : ['--creds', `${reg.user}:${reg.password}`];
  const { stdout } = await execFileP('skopeo', ['inspect', '--tls-verify=false', ...creds, `docker://${reference}`]);
  return (JSON.parse(stdout) as { Digest: string }).Digest;
}

/** The final status of each blob of a push. */
function finals(progress: PushProgress[]): string[] {
  const last = new Map(progress.map((p) => [p.digest, p.status]));
  return [...last.values()].sort();
}

describe('roost push against a real registry', () => {
  let home: TestHome;
  let work: string;
  let busybox: BusyboxImage;
  let registry: TestRegistry;
  let store: ImageStore;
  let image: ImageInfo;
  let ref: string;
  const registries: TestRegistry[] = [];

  beforeAll(async () => {
    home = new TestHome();
    work = await mkdtemp(join(tmpdir(), 'roost-push-'));
    busybox = await buildBusyboxImage(join(work, 'busybox'), { tag: '1' });
    registry = await startRegistry({ auth: 'none' });
    registries.push(registry);
    await registry.push(busybox.dir, 'roost/busybox:1');
    ref = `${registry.host}/roost/busybox:1`;
    store = new ImageStore({ home: home.root });
    image = await store.pull(ref);
  });

  afterAll(async () => {
    await home?.cleanup();
    await Promise.all(registries.map((r) => r.stop()));
    if (work) await rm(work, { recursive: true, force: true });
  });

  const fresh = async (auth: 'none' | 'basic' | 'token' = 'none') => {
    const reg = await startRegistry({ auth });
    registries.push(reg);
    return reg;
  };

  it('pushes to another repository: mounted from the one it was pulled from, the same digest for skopeo; again, everything exists; a fresh home pulls it by digest and runs it', async () => {
    const progress: PushProgress[] = [];
    const dest = `${registry.host}/copy/busybox:2`;
    const r = await store.push(ref, { destination: dest, onProgress: (p) => progress.push(p) });
    expect(r).toMatchObject({
      imageId: image.id,
      destination: dest,
      manifestDigest: image.id,
      blobs: { exists: 0, mounted: 4, pushed: 0 },
      bytes: { pushed: 0 },
    });
    expect(r.bytes.total).toBeGreaterThan(image.layers.reduce((n, l) => n + l.size, 0));
    expect(finals(progress)).toEqual(['mounted', 'mounted', 'mounted', 'mounted']);
    expect(await skopeoDigest(registry, dest)).toBe(image.id);
    // The registry got mounts, not uploads.
    const log = await registry.accessLog();
    expect(log.filter((e) => e.method === 'POST' && e.path.startsWith('/v2/copy/busybox/blobs/uploads/?mount=')).map((e) => e.status)).toEqual([
      201, 201, 201, 201,
    ]);
    expect(log.some((e) => (e.method === 'PATCH' || e.method === 'PUT') && e.path.startsWith('/v2/copy/busybox/blobs/uploads/'))).toBe(false);

    const again = await store.push(ref, { destination: dest });
    expect(again).toMatchObject({ manifestDigest: image.id, blobs: { exists: 4, mounted: 0, pushed: 0 }, bytes: { pushed: 0 } });

    // Another home, another store: a pull by digest, and a sandbox of it.
    const other = new TestHome();
    try {
      const pinned = `${registry.host}/copy/busybox@${image.id}`;
      const pulled = await new ImageStore({ home: other.root }).pull(pinned);
      expect(pulled.id).toBe(image.id);
      const sb = await other.create({ image: pinned });
      const os = await sb.commands.run('cat /etc/os-release');
      expect(os.stdout).toContain('Roost test image');
    } finally {
      await other.cleanup();
    }
  });

  it('uploads to a registry that has nothing (in chunks above the threshold), and a later push to another repository there mounts from it', async () => {
    const reg = await fresh();
    const dest = `${reg.host}/team/busybox:1`;
    const progress: PushProgress[] = [];
    const r = await store.push(image.id, { destination: dest, chunkThreshold: 256 << 10, chunkSize: 256 << 10, onProgress: (p) => progress.push(p) });
    expect(r.blobs).toEqual({ exists: 0, mounted: 0, pushed: 4 });
    expect(r.bytes.pushed).toBe(r.bytes.total);
    expect(finals(progress)).toEqual(['pushed', 'pushed', 'pushed', 'pushed']);
    // The 1 MB busybox layer went in 256 KiB PATCHes; the small blobs in one PUT each.
    const big = image.layers.find((l) => l.size > 256 << 10)!;
    const patches = (await reg.accessLog()).filter((e) => e.method === 'PATCH');
    expect(patches).toHaveLength(Math.ceil(big.size / (256 << 10)));
    expect(patches.every((e) => e.status === 202)).toBe(true);
    // Its progress went up through the chunks.
    const sent = progress.filter((p) => p.digest === big.digest && p.status === 'uploading').map((p) => p.current);
    expect(sent.at(-1)).toBe(big.size);
    expect(await skopeoDigest(reg, dest)).toBe(image.id);

    const second = await store.push(image.id, { destination: `${reg.host}/other/busybox:1` });
    expect(second.blobs).toEqual({ exists: 0, mounted: 4, pushed: 0 });
    expect(await skopeoDigest(reg, `${reg.host}/other/busybox:1`)).toBe(image.id);
  });

  it('pushes through basic auth after roost login; without it, the error names roost login (CLI)', async () => {
    const reg = await fresh('basic');
    const dest = `${reg.host}/private/busybox:1`;
    const anon = await cli(['push', ref, dest], home.env);
    expect(anon.code).toBe(125);
    expect(anon.stderr).toContain(`roost login ${reg.host}`);
    const login = await cli(['login', '-u', reg.user, '--password-stdin', reg.host], home.env, `${reg.password}\n`);
    expect(login.code).toBe(0);
    const pushed = await cli(['push', ref, dest], home.env);
    expect(pushed).toMatchObject({ code: 0 });
    expect(pushed.stdout).toBe(
      `${dest}: digest ${image.id} (4 pushed, 0 mounted, 0 already there; ${pushed.stdout.match(/; (\S+) uploaded/)?.[1]} uploaded)\n`,
    );
    // Not a terminal: one line per blob once it is done.
    expect(
      pushed.stderr
        .trim()
        .split('\n')
        .filter((l) => /: pushed \(/.test(l)),
    ).toHaveLength(4);
    expect(await skopeoDigest(reg, dest)).toBe(image.id);
    const quiet = await cli(['push', '-q', ref, dest], home.env);
    expect(quiet).toMatchObject({ code: 0, stdout: `${image.id}\n` });
  });

  it('pushes through the bearer-token flow with push scope; anonymous tokens may not push', async () => {
    const reg = await fresh('token');
    const dest = `${reg.host}/team/busybox:1`;
    await store.credentials.login(reg.host, reg.user, reg.password);
    const r = await store.push(ref, { destination: dest });
    expect(r.blobs.pushed).toBe(4);
    const granted = reg.token!.grants.filter((g) => g.account === reg.user).map((g) => g.granted);
    expect(granted).toContainEqual([{ type: 'repository', name: 'team/busybox', actions: ['pull', 'push'] }]);
    expect(await skopeoDigest(reg, dest)).toBe(image.id);
    await store.credentials.logout(reg.host);
    // A store with no login (a new client: nothing cached) is told to log in.
    const noLogin = new ImageStore({ home: home.root });
    await expect(noLogin.push(ref, { destination: `${reg.host}/team/other:1` })).rejects.toMatchObject({
      code: 'IMAGE',
      message: expect.stringContaining(`roost login ${reg.host}`),
    });
  });

  it('refuses an unknown image with NOT_FOUND, and stops a push whose signal aborts', async () => {
    await expect(store.push(`${registry.host}/roost/none-such:1`, { destination: `${registry.host}/x/y:1` })).rejects.toMatchObject({ code: 'NOT_FOUND' });
    const reg = await fresh();
    const controller = new AbortController();
    const dest = `${reg.host}/cancelled/busybox:1`;
    const pushing = store.push(image.id, {
      destination: dest,
      chunkThreshold: 64 << 10,
      chunkSize: 64 << 10,
      concurrency: 1,
      signal: controller.signal,
      onProgress: (p) => {
        if (p.status === 'uploading' && p.current > 0) controller.abort();
      },
    });
    await expect(pushing).rejects.toMatchObject({ code: 'ABORTED' });
    // No manifest: the tag does not exist.
    const res = await fetch(`${reg.url}/v2/cancelled/busybox/manifests/1`, { method: 'HEAD' });
    expect(res.status).toBe(404);
  });
});

describe('POST /v1/images/push', () => {
  let home: TestHome;
  let work: string;
  let registry: TestRegistry;
  let daemon: ServeHandle;
  let api: ApiClient;
  let ref: string;

  beforeAll(async () => {
    home = new TestHome();
    work = await mkdtemp(join(tmpdir(), 'roost-push-api-'));
    const busybox = await buildBusyboxImage(join(work, 'busybox'), { tag: '1' });
    registry = await startRegistry({ auth: 'none' });
    await registry.push(busybox.dir, 'roost/busybox:1');
    ref = `${registry.host}/roost/busybox:1`;
    daemon = await serve({ home: home.root });
    api = new ApiClient({ socketPath: daemon.socketPath }, daemon.token);
    await api.openSession();
    await api.post('/v1/images/pull', { reference: ref }, { headers: { accept: 'application/json' } });
  });

  afterAll(async () => {
    api?.close();
    await daemon?.close();
    await registry?.stop();
    await home?.cleanup();
    if (work) await rm(work, { recursive: true, force: true });
  });

  it('streams a push as NDJSON (each line checked against the OpenAPI document), answers JSON when asked, and errors with a status', async () => {
    const dest = `${registry.host}/rest/busybox:1`;
    const s = await api.stream('POST', '/v1/images/push', { body: { source: ref, destination: dest } });
    expect(s.status).toBe(200);
    const lines: Json[] = [];
    for await (const l of s.lines()) lines.push(l);
    const done = lines.at(-1)!;
    expect(done).toMatchObject({ type: 'done', result: { destination: dest, blobs: { mounted: 4 } } });
    const last = new Map(lines.filter((l) => l.type === 'progress').map((l) => [l.digest, l]));
    expect([...last.values()].every((l) => l.done === true && l.status === 'mounted')).toBe(true);

    const again = await api.post<Json>('/v1/images/push', { source: ref, destination: dest }, { headers: { accept: 'application/json' } });
    expect(again.status).toBe(200);
    expect(again.body).toMatchObject({ manifestDigest: (done.result as Json).manifestDigest, blobs: { exists: 4 } });

    const missing = await api.post<Json>('/v1/images/push', { source: 'none-such:1', destination: dest });
    expect(missing.status).toBe(404);
    expect(missing.body).toMatchObject({ error: { code: 'NOT_FOUND' } });
    expect((await api.post('/v1/images/push', { source: ref, tag: 'x' })).status).toBe(400);
  });
});
