import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { createReadStream, createWriteStream, existsSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pipeline } from 'node:stream/promises';
import { createGunzip } from 'node:zlib';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { alive } from './helpers.js';
import {
  buildBusyboxImage,
  buildDebianImage,
  buildE2bDebianImage,
  MEDIA_TYPES,
  tarEntries,
  writeOciIndex,
  writeOciLayout,
  type BusyboxImage,
  type BuiltImage,
  type LayerEntry,
} from '@roost/testkit';
import { parseChallenge, startRegistry, type RegistryAuth, type TestRegistry } from '@roost/testkit';

// The test harness itself: registries in every auth mode, and images they
// serve the way a client will see them. Requests are made by hand here
// (challenge, token, retry) so that this file checks the registry, not a
// client.

const ACCEPT = [
  MEDIA_TYPES.manifest,
  MEDIA_TYPES.index,
  'application/vnd.docker.distribution.manifest.v2+json',
  'application/vnd.docker.distribution.manifest.list.v2+json',
].join(', ');
const DOCKER_MANIFEST = 'application/vnd.docker.distribution.manifest.v2+json';

const sha256 = (data: Buffer) => `sha256:${createHash('sha256').update(data).digest('hex')}`;
const basic = (user: string, password: string) => `Basic ${Buffer.from(`${user}:${password}`).toString('base64')}`;

/**
 * GET with the auth dance done by hand: a Basic challenge is answered with
 * the credentials, a Bearer one with a token fetched from its realm for its
 * scope. `creds` null: anonymous (a token is still asked for, anonymously).
 */
async function get(reg: TestRegistry, path: string, creds: { user: string; password: string } | null = reg): Promise<Response> {
  const url = `${reg.url}${path}`;
  const first = await fetch(url, { headers: { accept: ACCEPT } });
  if (first.status !== 401) return first;
  const { scheme, params } = parseChallenge(first.headers.get('www-authenticate') ?? '');
  if (!creds && scheme === 'basic') return first;
  let authorization: string;
  if (scheme === 'basic') {
    authorization = basic(creds!.user, creds!.password);
  } else {
    const tokenUrl = new URL(params.realm!);
    tokenUrl.searchParams.set('service', params.service!);
    if (params.scope) tokenUrl.searchParams.set('scope', params.scope);
    const res = await fetch(tokenUrl, { headers: creds ? { authorization: basic(creds.user, creds.password) } : {} });
    if (res.status !== 200) return res;
    const body = (await res.json()) as { token: string; access_token: string; expires_in: number };
    expect(body.access_token).toBe(body.token);
    expect(body.expires_in).toBeGreaterThan(0);
    authorization = `Bearer ${body.token}`;
  }
  return fetch(url, { headers: { accept: ACCEPT, authorization } });
}

let layout: string;
let image: BusyboxImage;

beforeAll(async () => {
  layout = await mkdtemp(join(tmpdir(), 'roost-support-'));
  image = await buildBusyboxImage(join(layout, 'busybox'));
});
afterAll(() => rm(layout, { recursive: true, force: true }));

describe('buildBusyboxImage', () => {
  it('writes the same image every time, and skopeo reads it', async () => {
    const again = await buildBusyboxImage(join(layout, 'again'));
    expect(again.manifestDigest).toBe(image.manifestDigest);
    expect(image.layers).toHaveLength(3);
    const info = JSON.parse(execFileSync('skopeo', ['inspect', `oci:${image.dir}:${image.tag}`], { encoding: 'utf8' })) as {
      Digest: string;
      Layers: string[];
      Architecture: string;
      Os: string;
    };
    expect(info).toMatchObject({ Digest: image.manifestDigest, Architecture: 'amd64', Os: 'linux', Layers: image.layers.map((l) => l.digest) });
    const config = JSON.parse(execFileSync('skopeo', ['inspect', '--config', `oci:${image.dir}:${image.tag}`], { encoding: 'utf8' })) as {
      config: Record<string, unknown>;
      rootfs: { diff_ids: string[] };
    };
    expect(config.config).toEqual({ Env: ['PATH=/bin:/usr/bin', 'GREETING=hello'], WorkingDir: '/home/app', Cmd: ['sh', '-c', 'echo default-cmd'] });
    expect(config.rootfs.diff_ids).toEqual(image.layers.map((l) => l.diffId));
  });
});

const CASES = [
  { tag: 'oci-gzip', push: { format: 'oci' }, manifest: MEDIA_TYPES.manifest, layer: MEDIA_TYPES.layerGzip },
  { tag: 'v2s2-gzip', push: { format: 'v2s2' }, manifest: DOCKER_MANIFEST, layer: 'application/vnd.docker.image.rootfs.diff.tar.gzip' },
  { tag: 'oci-zstd', push: { format: 'oci', compress: 'zstd' }, manifest: MEDIA_TYPES.manifest, layer: 'application/vnd.oci.image.layer.v1.tar+zstd' },
  { tag: 'oci-none', push: { compress: 'none' }, manifest: MEDIA_TYPES.manifest, layer: MEDIA_TYPES.layer },
] as const;

for (const auth of ['none', 'basic', 'token'] as RegistryAuth[]) {
  describe(`a registry with auth ${auth}`, () => {
    let reg: TestRegistry;
    beforeAll(async () => {
      reg = await startRegistry({ auth });
    });
    afterAll(() => reg?.stop());

    it('answers /v2/ as configured', async () => {
      expect(reg.host).toMatch(/^127\.0\.0\.1:\d+$/);
      const res = await fetch(`${reg.url}/v2/`);
      if (auth === 'none') {
        expect(res.status).toBe(200);
        return;
      }
      expect(res.status).toBe(401);
      const challenge = res.headers.get('www-authenticate');
      if (auth === 'basic') expect(challenge).toBe('Basic realm="roost-test"');
      else expect(challenge).toBe(`Bearer realm="${reg.token!.realm}",service="${reg.token!.service}"`);
      expect((await get(reg, '/v2/')).status).toBe(200);
    });

    for (const c of CASES) {
      it(`serves an image pushed as ${c.tag}`, async () => {
        const digest = await reg.push(image.dir, `test/busybox:${c.tag}`, c.push);
        expect(digest).toMatch(/^sha256:[0-9a-f]{64}$/);
        // Pushed unchanged, the manifest keeps the layout's bytes.
        if (c.tag === 'oci-gzip') expect(digest).toBe(image.manifestDigest);

        for (const ref of [c.tag, digest]) {
          const res = await get(reg, `/v2/test/busybox/manifests/${ref}`);
          expect(res.status).toBe(200);
          expect(res.headers.get('content-type')).toBe(c.manifest);
          expect(res.headers.get('docker-content-digest')).toBe(digest);
          const body = Buffer.from(await res.arrayBuffer());
          expect(sha256(body)).toBe(digest);
          const manifest = JSON.parse(body.toString()) as {
            mediaType: string;
            config: { digest: string };
            layers: { mediaType: string; digest: string; size: number }[];
          };
          expect(manifest.mediaType).toBe(c.manifest);
          expect(manifest.config.digest).toBe(image.configDigest);
          expect(manifest.layers.map((l) => l.mediaType)).toEqual([c.layer, c.layer, c.layer]);
          if (c.tag === 'oci-none') expect(manifest.layers.map((l) => l.digest)).toEqual(image.layers.map((l) => l.diffId));

          // The blobs are there and match their digests and sizes.
          for (const d of [...manifest.layers.slice(1), { digest: manifest.config.digest, size: -1 }]) {
            const blob = await get(reg, `/v2/test/busybox/blobs/${d.digest}`);
            expect(blob.status).toBe(200);
            const data = Buffer.from(await blob.arrayBuffer());
            expect(sha256(data)).toBe(d.digest);
            if (d.size >= 0) expect(data.length).toBe(d.size);
          }
          expect(existsSync(reg.blobPath(manifest.layers[0]!.digest))).toBe(true);
        }
      });
    }

    if (auth !== 'none') {
      it('refuses anonymous and wrong credentials', async () => {
        await reg.push(image.dir, 'test/busybox:anon');
        const anon = await fetch(`${reg.url}/v2/test/busybox/manifests/anon`, { headers: { accept: ACCEPT } });
        expect(anon.status).toBe(401);
        if (auth === 'token') {
          expect(anon.headers.get('www-authenticate')).toBe(
            `Bearer realm="${reg.token!.realm}",service="${reg.token!.service}",scope="repository:test/busybox:pull"`,
          );
        }
        // Anonymously through the dance: the token server refuses too.
        expect((await get(reg, '/v2/test/busybox/manifests/anon', null)).status).toBe(401);
        expect((await get(reg, '/v2/test/busybox/manifests/anon', { user: reg.user, password: 'wrong' })).status).toBe(401);
        expect((await get(reg, '/v2/test/busybox/manifests/anon', { user: 'nobody', password: reg.password })).status).toBe(401);
        expect((await get(reg, '/v2/test/busybox/manifests/anon')).status).toBe(200);
        // The token grants what was asked, for that repository only.
        if (auth === 'token') {
          const grant = reg.token!.grants.at(-1)!;
          expect(grant).toMatchObject({ account: reg.user, granted: [{ type: 'repository', name: 'test/busybox', actions: ['pull'] }] });
        }
      });
    }

    it('logs the requests it served', async () => {
      const log = await reg.accessLog();
      expect(log.some((e) => e.method === 'PUT' && e.path === '/v2/test/busybox/manifests/oci-gzip' && e.status === 201)).toBe(true);
      expect(log.some((e) => e.method === 'GET' && e.path.startsWith('/v2/test/busybox/blobs/') && e.status === 200)).toBe(true);
    });
  });
}

describe('a token registry with anonymous pull', () => {
  let reg: TestRegistry;
  beforeAll(async () => {
    reg = await startRegistry({ auth: 'token', anonymousPull: true, user: 'alice', password: 'secret' });
  });
  afterAll(() => reg?.stop());

  it('gives anonymous clients pull and nothing more', async () => {
    const digest = await reg.push(image.dir, 'public/busybox:1');
    const res = await get(reg, '/v2/public/busybox/manifests/1', null);
    expect(res.status).toBe(200);
    expect(res.headers.get('docker-content-digest')).toBe(digest);
    expect(reg.token!.grants.at(-1)).toMatchObject({ account: null, granted: [{ name: 'public/busybox', actions: ['pull'] }] });

    // An anonymous push: the token carries no push, so the registry refuses it.
    const tokenUrl = new URL(reg.token!.realm);
    tokenUrl.searchParams.set('service', reg.token!.service);
    tokenUrl.searchParams.set('scope', 'repository:public/busybox:pull,push');
    const { token } = (await (await fetch(tokenUrl)).json()) as { token: string };
    const upload = await fetch(`${reg.url}/v2/public/busybox/blobs/uploads/`, { method: 'POST', headers: { authorization: `Bearer ${token}` } });
    expect(upload.status).toBe(401);
    expect(reg.token!.grants.at(-1)!.granted).toEqual([{ type: 'repository', name: 'public/busybox', actions: ['pull'] }]);
  });

  it('stop() ends the registry and removes its files', async () => {
    const other = await startRegistry();
    expect(alive(other.pid)).toBe(true);
    await other.stop();
    expect(alive(other.pid)).toBe(false);
    expect(existsSync(other.storageDir)).toBe(false);
  });
});

describe('multi-platform images', () => {
  let reg: TestRegistry;
  beforeAll(async () => {
    reg = await startRegistry();
  });
  afterAll(() => reg?.stop());

  it('pushes an index with every platform in it', async () => {
    const dir = join(layout, 'multi');
    const amd64 = await buildBusyboxImage(dir, { tag: 'amd64' });
    const arm64 = await writeOciLayout(dir, {
      tag: 'arm64',
      architecture: 'arm64',
      config: { Cmd: ['/not-for-this-host'] },
      layers: [{ entries: [{ type: 'file', path: 'ARCH', content: 'arm64\n' }] }],
    });
    const indexDigest = await writeOciIndex(dir, 'multi', [
      { ...arm64, platform: { architecture: 'arm64', os: 'linux', variant: 'v8' } },
      { ...amd64, platform: { architecture: 'amd64', os: 'linux' } },
    ]);
    const digest = await reg.push(dir, 'test/multi:1', { from: 'multi', all: true });
    expect(digest).toBe(indexDigest);
    const res = await get(reg, '/v2/test/multi/manifests/1');
    expect(res.headers.get('content-type')).toBe(MEDIA_TYPES.index);
    const index = (await res.json()) as { manifests: { digest: string; platform: { architecture: string } }[] };
    expect(index.manifests.map((m) => [m.platform.architecture, m.digest])).toEqual([
      ['arm64', arm64.manifestDigest],
      ['amd64', amd64.manifestDigest],
    ]);
    expect((await get(reg, `/v2/test/multi/manifests/${arm64.manifestDigest}`)).status).toBe(200);
  });
});

describe('buildDebianImage', () => {
  it('writes a multi-layer Debian minbase layout that skopeo accepts', { timeout: 20 * 60_000 }, async () => {
    const dir = join(layout, 'debian');
    const started = Date.now();
    const built = await buildDebianImage(dir, { progress: (line) => process.stderr.write(`[debian image] ${line}\n`) });
    process.stderr.write(
      `[debian image] ready in ${((Date.now() - started) / 1000).toFixed(1)} s: ${(built.tarBytes / 1e6).toFixed(0)} MB in layers, ${(built.blobBytes / 1e6).toFixed(0)} MB gzipped\n`,
    );
    expect(built.layers).toHaveLength(3);
    expect(built.tarBytes).toBeGreaterThan(100e6);
    expect(built.expected.absent.length).toBeGreaterThan(0);
    expect(built.expected.hardlinks.length).toBeGreaterThanOrEqual(2);
    const info = JSON.parse(execFileSync('skopeo', ['inspect', `oci:${dir}:${built.tag}`], { encoding: 'utf8' })) as {
      Digest: string;
      Layers: string[];
      Os: string;
      Architecture: string;
    };
    expect(info).toMatchObject({ Digest: built.manifestDigest, Os: 'linux', Architecture: 'amd64', Layers: built.layers.map((l) => l.digest) });

    // A second build comes from the cache, byte for byte.
    const again = Date.now();
    const second = await buildDebianImage(join(layout, 'debian-again'));
    expect(second.manifestDigest).toBe(built.manifestDigest);
    expect(Date.now() - again).toBeLessThan(15_000);
  });
});

/**
 * The root filesystem an image's gzip layers make, read back from the blobs
 * without unpacking: each path's last entry, with the text of the files in
 * `read`. Enough for images without whiteouts.
 */
async function rootOf(image: BuiltImage, read: string[]): Promise<Map<string, LayerEntry & { text?: string }>> {
  const root = new Map<string, LayerEntry & { text?: string }>();
  const tar = join(layout, 'layer.tar');
  for (const layer of image.layers) {
    await pipeline(createReadStream(join(image.dir, 'blobs', 'sha256', layer.digest.slice(7))), createGunzip(), createWriteStream(tar));
    for await (const e of tarEntries(tar)) {
      const path = `/${e.path.replace(/\/+$/, '')}`;
      expect(path).not.toContain('/.wh.');
      let text: string | undefined;
      if (e.type === 'file' && read.includes(path)) {
        const chunks: Uint8Array[] = [];
        for await (const c of e.stream!) chunks.push(c);
        text = Buffer.concat(chunks).toString('utf8');
      }
      root.set(path, { ...e, path, ...(text !== undefined ? { text } : {}) });
    }
  }
  await rm(tar, { force: true });
  return root;
}

describe('buildE2bDebianImage', () => {
  it("writes Debian minbase with python3, bash and the user account of E2B's base template", { timeout: 20 * 60_000 }, async () => {
    const dir = join(layout, 'e2b');
    const started = Date.now();
    const built = await buildE2bDebianImage(dir, { progress: (line) => process.stderr.write(`[e2b image] ${line}\n`) });
    process.stderr.write(
      `[e2b image] ready in ${((Date.now() - started) / 1000).toFixed(1)} s: ${(built.tarBytes / 1e6).toFixed(0)} MB in layers, ${(built.blobBytes / 1e6).toFixed(0)} MB gzipped\n`,
    );
    expect(built.tag).toBe('e2b');
    expect(built.layers).toHaveLength(2);
    expect(built.rootTarball).toMatch(/debian-minbase-bookworm\+python3\.tar$/);
    const config = JSON.parse(execFileSync('skopeo', ['inspect', '--config', `oci:${dir}:e2b`], { encoding: 'utf8' })) as { config: Record<string, unknown> };
    // No User: E2B's face picks `user` itself.
    expect(config.config).toEqual({
      Env: ['PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin', 'LANG=C.UTF-8'],
      Cmd: ['bash'],
      WorkingDir: '/',
    });

    const accounts = ['/etc/passwd', '/etc/group', '/etc/shadow', '/etc/gshadow'];
    const root = await rootOf(built, accounts);
    const at = (p: string) => root.get(p) ?? expect.fail(`${p} is not in the image`);
    expect(at('/bin')).toMatchObject({ type: 'symlink', target: 'usr/bin' });
    expect(at('/usr/bin/bash')).toMatchObject({ type: 'file', mode: 0o755 });
    expect(at('/usr/bin/python3')).toMatchObject({ type: 'symlink', target: 'python3.11' });
    expect(at('/usr/bin/python3.11')).toMatchObject({ type: 'file', mode: 0o755, uid: 0 });
    expect(at('/home/user')).toMatchObject({ type: 'dir', mode: 0o755, uid: 1000, gid: 1000 });
    expect(at('/home/user/.bashrc')).toMatchObject({ type: 'file', uid: 1000, gid: 1000 });
    const [passwd, group, shadow, gshadow] = accounts.map((p) => at(p).text ?? '');
    expect(passwd).toMatch(/^root:x:0:0:root:\/root:\/bin\/bash$/m);
    expect(passwd).toMatch(/^user:x:1000:1000:[^:]*:\/home\/user:\/bin\/bash$/m);
    expect(group).toMatch(/^user:x:1000:$/m);
    expect(shadow).toMatch(/^user:[!*]:/m);
    expect(gshadow).toMatch(/^user:[!*]::$/m);
    expect(at('/etc/shadow')).toMatchObject({ mode: 0o640, uid: 0, gid: 42 });
    // What the builder says the root holds (for tests that boot it) is what the layers hold.
    for (const [p, f] of Object.entries(built.expected.files)) {
      expect(at(p), p).toMatchObject({ type: 'file', ...(f.mode !== undefined ? { mode: f.mode, uid: f.uid, gid: f.gid } : {}) });
      if (f.content !== undefined && accounts.includes(p)) expect(at(p).text).toBe(f.content);
    }

    // A second build comes from the cache, byte for byte.
    const again = Date.now();
    const second = await buildE2bDebianImage(join(layout, 'e2b-again'), { tag: 'other' });
    expect(second.manifestDigest).toBe(built.manifestDigest);
    expect(Date.now() - again).toBeLessThan(15_000);
  });
});
