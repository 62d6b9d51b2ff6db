import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, statSync } from 'node:fs';
import { mkdtemp, readdir, rm, writeFile, mkdir } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ImageStore, isRoostError, type Sandbox } from '@roost/core';
import { buildBusyboxImage, buildDebianImage, startRegistry, writeOciLayout, type BusyboxImage, type ExpectedRoot, type TestRegistry } from '@roost/testkit';
import { eventually, TestHome } from './helpers.js';

const execFileP = promisify(execFile);
const CLI = join(import.meta.dirname, '..', 'packages', 'cli', 'bin', 'roost.js');

/** Runs the CLI; resolves with its exit code and output (never rejects on a non-zero exit). */
async function cli(args: string[], env: NodeJS.ProcessEnv, input?: string): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const child = execFile(process.execPath, [CLI, ...args], { env, timeout: 120_000 }, (err, stdout, stderr) => {
      resolve({ code: err ? ((err as { code?: number }).code ?? 1) : 0, stdout, stderr });
    });
    if (input !== undefined) child.stdin!.end(input);
  });
}

/** Bytes a file takes on disk (allocated blocks, not its apparent size). */
function allocated(path: string): number {
  return statSync(path).blocks * 512;
}

/** Checks a root filesystem inside a sandbox against what the image builder says it holds. */
async function expectRoot(sb: Sandbox, expected: ExpectedRoot): Promise<void> {
  // One shell script, one round trip: every check prints a line the test compares.
  const q = (p: string) => `'${p.replaceAll("'", `'\\''`)}'`;
  const lines: string[] = [];
  const want: string[] = [];
  for (const [p, f] of Object.entries(expected.files)) {
    lines.push(`printf 'file %s %s\\n' ${q(p)} "$(stat -c '%a %u %g' ${q(p)})"`);
    want.push(`file ${p} ${f.mode !== undefined ? (f.mode & 0o7777).toString(8) : '*'} ${f.uid ?? '*'} ${f.gid ?? '*'}`);
    if (f.content !== undefined) {
      lines.push(`printf 'sum %s %s\\n' ${q(p)} "$(md5sum < ${q(p)} | cut -d' ' -f1)"`);
      want.push(`sum ${p} ${md5(f.content)}`);
    }
  }
  for (const [p, d] of Object.entries(expected.dirs)) {
    if (d.entries) {
      lines.push(`printf 'ls %s %s\\n' ${q(p)} "$(ls -A ${q(p)} | tr '\\n' ' ')"`);
      want.push(`ls ${p} ${d.entries.map((e) => e + ' ').join('')}`);
    }
  }
  for (const [p, target] of Object.entries(expected.symlinks)) {
    lines.push(`printf 'link %s %s\\n' ${q(p)} "$(readlink ${q(p)})"`);
    want.push(`link ${p} ${target}`);
  }
  for (const group of expected.hardlinks) {
    lines.push(`printf 'inodes %s\\n' "$(stat -c %i ${group.map(q).join(' ')} | sort -u | wc -l)"`);
    want.push('inodes 1');
  }
  for (const p of expected.absent) {
    lines.push(`if [ -e ${q(p)} ] || [ -L ${q(p)} ]; then echo "present ${p}"; else echo "absent ${p}"; fi`);
    want.push(`absent ${p}`);
  }
  const r = await sb.commands.run(lines.join('\n'), { user: 'root', cwd: '/' });
  expect(r.stderr).toBe('');
  const got = r.stdout.trimEnd().split('\n');
  expect(got.length).toBe(want.length);
  got.forEach((line, i) => {
    const w = want[i]!;
    if (w.includes('*')) {
      const re = new RegExp(
        '^' +
          w
            .split('*')
            .map((s) => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&'))
            .join('\\S+') +
          '$',
      );
      expect(line).toMatch(re);
    } else expect(line).toBe(w);
  });
}

function md5(s: string): string {
  return createHash('md5').update(s).digest('hex');
}

describe('OCI images from a real registry', () => {
  let home: TestHome;
  let work: string;
  let registry: TestRegistry;
  let busybox: BusyboxImage;
  let ref: string;
  let store: ImageStore;
  let shared: Sandbox;

  beforeAll(async () => {
    home = new TestHome();
    work = await mkdtemp(join(tmpdir(), 'roost-images-'));
    busybox = await buildBusyboxImage(join(work, 'busybox'), { tag: '1' });
    registry = await startRegistry({ auth: 'none' });
    await registry.push(busybox.dir, 'roost/busybox:1');
    ref = `${registry.host}/roost/busybox:1`;
    store = new ImageStore({ home: home.root });
    shared = await home.create({ image: ref });
  });

  afterAll(async () => {
    await home?.cleanup();
    await registry?.stop();
    if (work) await rm(work, { recursive: true, force: true });
  });

  it('runs the image: layers in order, whiteouts, opaque dirs, hardlinks, owners and modes', async () => {
    await expectRoot(shared, busybox.expected);
    expect(shared.info.image).toMatchObject({ reference: ref, cmd: busybox.config.Cmd });
  });

  it('honours the image config: Env, WorkingDir; the agent stays outside the root', async () => {
    const r = await shared.commands.run('echo "$GREETING|$PATH|$(pwd)|$(id -u)"; ls /run/roost 2>&1 | head -1');
    expect(r.stdout.split('\n')[0]).toBe('hello|/bin:/usr/bin|/home/app|0');
    // The agent's own mounts and sockets are not visible from the command root.
    expect(r.stdout).not.toMatch(/lower|upper/);
    const env = await shared.commands.run('echo $GREETING', { env: { GREETING: 'override' } });
    expect(env.stdout).toBe('override\n');
  });

  it('keeps writes in each sandbox, and a sandbox costs the host only what it wrote', async () => {
    const other = await home.create({ image: ref });
    const before = allocated(join(other.dir, 'disk.qcow2'));
    const w = await other.commands.run('dd if=/dev/urandom of=/root/blob bs=1M count=16 2>/dev/null && sync && echo mine > /etc/motd && cat /etc/motd');
    expect(w.stdout).toBe('mine\n');
    const grown = allocated(join(other.dir, 'disk.qcow2')) - before;
    expect(grown).toBeGreaterThanOrEqual(16 * 2 ** 20);
    expect(grown).toBeLessThan(24 * 2 ** 20);
    // The other sandbox of the same image sees none of it.
    const seen = await shared.commands.run('cat /etc/motd; ls /root/blob 2>&1');
    expect(seen.stdout).not.toContain('mine');
    expect(seen.stdout).toContain('No such file');
    // The image's root filesystem is one file, shared, never written.
    const rootfs = await store.rootfs(store.inspect(ref).id);
    const { mtimeMs } = statSync(rootfs);
    expect((await readdir(join(home.root, 'images', 'rootfs'))).filter((f) => !f.includes('.tmp-'))).toHaveLength(1);
    // Deletions give space back to the host too (discard down to the qcow2 file).
    await other.commands.run('rm /root/blob && sync');
    await eventually(() => allocated(join(other.dir, 'disk.qcow2')) - before < 8 * 2 ** 20, 10_000, 'deleted blocks freed on the host');
    await other.kill();
    expect(statSync(rootfs).mtimeMs).toBe(mtimeMs);
  });

  it('gives ENOSPC inside the guest when its disk is full, and the sandbox goes on', async () => {
    const sb = await home.create({ image: ref, diskSizeMiB: 64 });
    const fill = await sb.commands.run('dd if=/dev/zero of=/fill bs=1M count=200 && sync');
    expect(fill.exitCode).not.toBe(0);
    expect(fill.stderr).toMatch(/No space left on device/);
    const after = await sb.commands.run('rm /fill && echo ok > /after && cat /after');
    expect(after.stdout).toBe('ok\n');
    expect(allocated(join(sb.dir, 'disk.qcow2'))).toBeLessThan(72 * 2 ** 20);
    await sb.kill();
  });

  it('pulls nothing again for a stored image; a pinned pull resolves to the same image; shared layers are stored once', async () => {
    const first = store.inspect(ref);
    const log0 = (await registry.accessLog()).filter((e) => e.path.includes('/blobs/')).length;
    const again = await store.pull(ref);
    expect(again.id).toBe(first.id);
    expect((await registry.accessLog()).filter((e) => e.path.includes('/blobs/')).length).toBe(log0);
    const pinned = await store.pull(`${registry.host}/roost/busybox@${first.id}`);
    expect(pinned.id).toBe(first.id);
    // The same layers as Docker schema 2 under another name: a new manifest and config, no new layer blob.
    await registry.push(busybox.dir, 'roost/busybox-v2s2:1', { format: 'v2s2' });
    const blobsBefore = (await store.blobs.list()).length;
    const v2 = await store.pull(`${registry.host}/roost/busybox-v2s2:1`);
    expect(v2.id).not.toBe(first.id);
    expect((await store.blobs.list()).length - blobsBefore).toBeLessThanOrEqual(2);
    expect(store.list().map((i) => i.id)).toEqual(expect.arrayContaining([first.id, v2.id]));
  });

  it('builds root filesystems from zstd and uncompressed layers', async () => {
    await registry.push(busybox.dir, 'roost/busybox-zstd:1', { compress: 'zstd' });
    await registry.push(busybox.dir, 'roost/busybox-raw:1', { compress: 'none' });
    for (const name of ['busybox-zstd', 'busybox-raw']) {
      const img = await store.pull(`${registry.host}/roost/${name}:1`);
      const path = await store.rootfs(img.id);
      expect(statSync(path).size).toBeGreaterThan(1_000_000);
    }
  });

  it('runs Entrypoint and Cmd as docker run does, as the image User', async () => {
    const img = await buildBusyboxImage(join(work, 'entry'), {
      tag: '1',
      user: 'app',
      entrypoint: ['/bin/sh', '-c', 'echo "args:$* uid:$(id -u)"', 'ep'],
      cmd: ['a', 'b'],
    });
    await registry.push(img.dir, 'roost/entry:1');
    const name = `${registry.host}/roost/entry:1`;
    // `roost run` owns the home it runs in (this process holds `home`'s runtime): give it its own.
    const cliHome = new TestHome();
    try {
      const plain = await cli(['run', name], cliHome.env);
      expect(plain).toMatchObject({ code: 0, stdout: 'args:a b uid:1000\n' });
      const given = await cli(['run', name, '--', 'x', 'y z'], cliHome.env);
      expect(given).toMatchObject({ code: 0, stdout: 'args:x y z uid:1000\n' });
      const root = await cli(['run', '-u', 'root', name, '--', 'r'], cliHome.env);
      expect(root.stdout).toBe('args:r uid:0\n');
      const ls = await cli(['images'], cliHome.env);
      expect(ls.stdout).toMatch(new RegExp(`${registry.host}/roost/entry\\s+1\\s+[0-9a-f]{12}`));
    } finally {
      await cliHome.cleanup();
    }
  });

  it('refuses to remove an image a sandbox uses; rmi and prune remove only what nothing references', async () => {
    const id = store.inspect(ref).id;
    // By id: every name would go, and a sandbox uses it.
    const refused = await cli(['rmi', id.slice(7, 19)], home.env);
    expect(refused.code).toBe(125);
    expect(refused.stderr).toMatch(/used by sandbox/);
    // Another name for the same image: removing it only untags.
    await cli(['tag', ref, `${registry.host}/roost/alias:2`], home.env);
    const untag = await cli(['rmi', `${registry.host}/roost/alias:2`], home.env);
    expect(untag).toMatchObject({ code: 0 });
    expect(untag.stdout).toMatch(/Untagged/);
    expect(store.find(ref)?.id).toBe(id);
    // The zstd image shares nothing still in use with it... remove it and prune: its blobs and rootfs go.
    const zstd = store.inspect(`${registry.host}/roost/busybox-zstd:1`);
    const r = await store.remove(`${registry.host}/roost/busybox-zstd:1`);
    expect(r.deleted).toEqual([zstd.id]);
    expect(existsSync(store.blobs.path(zstd.id))).toBe(false);
    const pruned = await store.prune();
    expect(pruned.deleted).toEqual([]);
    // What is left is exactly what the images reference: every blob belongs to one, none is missing.
    const referenced = new Set<string>();
    for (const img of store.list()) [img.id, img.configDigest, ...img.layers.map((l) => l.digest)].forEach((d) => referenced.add(d));
    expect(new Set(await store.blobs.list())).toEqual(referenced);
  });

  it('exports and imports OCI archives and docker save archives', async () => {
    const id = store.inspect(ref).id;
    const oci = join(work, 'export.oci.tar');
    const docker = join(work, 'export.docker.tar');
    expect((await cli(['images', 'export', ref, oci], home.env)).code).toBe(0);
    expect((await cli(['images', 'export', '--format', 'docker-archive', ref, docker], home.env)).code).toBe(0);
    // Into a fresh home: the OCI archive keeps the manifest digest; docker save's has uncompressed layers.
    const other = new TestHome();
    try {
      const otherStore = new ImageStore({ home: other.root });
      const a = await otherStore.import(oci);
      expect(a.id).toBe(id);
      expect(a.tags).toEqual([ref]);
      const b = await otherStore.import(docker, { tag: 'local/imported:docker' });
      expect(b.tags).toEqual(['docker.io/local/imported:docker']);
      const sb = await other.create({ image: 'local/imported:docker', pull: 'never' });
      expect((await sb.commands.run('cat /etc/os-release')).stdout).toContain('Roost test image');
    } finally {
      await other.cleanup();
    }
  });

  it('carries file capabilities and user xattrs into the root, and drops overlay xattrs', async () => {
    // security.capability v2: effective, permitted CAP_NET_BIND_SERVICE (bit 10).
    const cap = String.fromCharCode(0x01, 0, 0, 0x02, 0, 0x04, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0);
    const img = await writeOciLayout(join(work, 'xattrs'), {
      tag: '1',
      layers: [
        {
          entries: [
            { type: 'dir', path: 'bin' },
            { type: 'file', path: 'bin/busybox', source: '/bin/busybox', mode: 0o755 },
            { type: 'symlink', path: 'bin/sh', target: 'busybox' },
            { type: 'symlink', path: 'bin/grep', target: 'busybox' },
            { type: 'dir', path: 'etc' },
            { type: 'file', path: 'etc/passwd', content: 'root:x:0:0::/:/bin/sh\napp:x:1000:1000::/:/bin/sh\n' },
            { type: 'dir', path: 'opt' },
            { type: 'file', path: 'opt/cat', source: '/bin/busybox', mode: 0o755, xattrs: { 'security.capability': cap } },
            { type: 'file', path: 'opt/user', content: 'x', xattrs: { 'user.roost': 'hello' } },
            { type: 'file', path: 'opt/overlay', content: 'x', xattrs: { 'trusted.overlay.opaque': 'y' } },
          ],
        },
      ],
      config: { Env: ['PATH=/bin'] },
    });
    await registry.push(img.dir, 'roost/xattrs:1');
    const sb = await home.create({ image: `${registry.host}/roost/xattrs:1` });
    // Run as an unprivileged user, the capability on the file is what grants it.
    const r = await sb.commands.run('/opt/cat /proc/self/status | grep CapEff; grep CapEff /proc/self/status', { user: 'app' });
    expect(r.stdout).toBe('CapEff:\t0000000000000400\nCapEff:\t0000000000000000\n');
    const rootfs = await store.rootfs(store.inspect(`${registry.host}/roost/xattrs:1`).id);
    const xattrSize = async (path: string) => Number(/Xattr size: (\d+)/.exec((await execFileP('dump.erofs', [`--path=${path}`, rootfs])).stdout)?.[1]);
    expect(await xattrSize('/opt/user')).toBeGreaterThan(0);
    expect(await xattrSize('/opt/overlay')).toBe(0);
    await sb.kill();
  });

  it('refuses corrupt blobs and hostile layers with IMAGE errors, keeping the store consistent', async () => {
    // A layer blob corrupted behind the registry's back, pulled into a fresh store (this one
    // has the layer already): the digest check catches it, nothing is kept.
    const bad = await buildBusyboxImage(join(work, 'corrupt'), { tag: '1', cmd: ['corrupt'] });
    const corruptRegistry = await startRegistry({ auth: 'none' });
    const fresh = new TestHome();
    try {
      await corruptRegistry.push(bad.dir, 'roost/corrupt:1');
      const layer = bad.layers[0]!;
      await writeFile(corruptRegistry.blobPath(layer.digest), Buffer.alloc(layer.size, 7));
      const freshStore = new ImageStore({ home: fresh.root });
      const corrupt = await freshStore.pull(`${corruptRegistry.host}/roost/corrupt:1`).catch((e: unknown) => e);
      expect(isRoostError(corrupt, 'IMAGE')).toBe(true);
      expect((corrupt as Error).message).toMatch(/digest/);
      expect(await freshStore.blobs.has(layer.digest)).toBe(false);
      expect(freshStore.find(`${corruptRegistry.host}/roost/corrupt:1`)).toBeUndefined();
      expect((await readdir(join(freshStore.blobs.dir, 'sha256'))).filter((f) => f.startsWith('.tmp'))).toEqual([]);
    } finally {
      await corruptRegistry.stop();
      await fresh.cleanup();
    }

    // A layer that climbs out with ../ and one that plants a symlink to a host directory and writes through it.
    const outside = await mkdtemp(join(tmpdir(), 'roost-outside-'));
    await mkdir(join(outside, 'dir'));
    const hostile = await writeOciLayout(join(work, 'hostile'), {
      tag: '1',
      layers: [
        {
          entries: [
            { type: 'dir', path: 'etc' },
            { type: 'symlink', path: 'escape', target: join(outside, 'dir') },
            { type: 'file', path: 'escape/pwned', content: 'x' },
          ],
        },
        { entries: [{ type: 'file', path: `../../../../../../${outside.slice(1)}/dotdot`, content: 'x', verbatim: true }] },
      ],
      config: { Cmd: ['sh'] },
    });
    await registry.push(hostile.dir, 'roost/hostile:1');
    const err = await home.create({ image: `${registry.host}/roost/hostile:1` }).catch((e: unknown) => e);
    expect(isRoostError(err, 'IMAGE')).toBe(true);
    expect((err as Error).message).toMatch(/climbs out/);
    expect(await readdir(join(outside, 'dir'))).toEqual([]);
    expect(existsSync(join(outside, 'dotdot'))).toBe(false);
    // The pull itself was fine (the blobs are what the registry said); no root filesystem or scratch tree is left.
    const img = store.inspect(`${registry.host}/roost/hostile:1`);
    expect(existsSync(join(home.root, 'images', 'rootfs', img.id.slice(7) + '.erofs-1'))).toBe(false);
    expect((await readdir(join(home.root, 'tmp')).catch(() => [])).filter((f) => f.startsWith('tree-'))).toEqual([]);
    await rm(outside, { recursive: true, force: true });
  });
});

describe('registry authentication', () => {
  let home: TestHome;
  let work: string;
  let busybox: BusyboxImage;
  const registries: TestRegistry[] = [];

  beforeAll(async () => {
    home = new TestHome();
    work = await mkdtemp(join(tmpdir(), 'roost-auth-'));
    busybox = await buildBusyboxImage(join(work, 'busybox'), { tag: '1' });
  });

  afterAll(async () => {
    await home?.cleanup();
    await Promise.all(registries.map((r) => r.stop()));
    if (work) await rm(work, { recursive: true, force: true });
  });

  it('pulls through basic auth after roost login; refuses without credentials or with wrong ones', async () => {
    const reg = await startRegistry({ auth: 'basic' });
    registries.push(reg);
    await reg.push(busybox.dir, 'private/busybox:1');
    const name = `${reg.host}/private/busybox:1`;
    const anon = await cli(['pull', name], home.env);
    expect(anon.code).toBe(125);
    expect(anon.stderr).toMatch(/auth/i);
    const wrong = await cli(['login', '-u', reg.user, '--password-stdin', reg.host], home.env, 'not-the-password\n');
    expect(wrong.code).toBe(125);
    expect(existsSync(join(home.root, 'auth.json'))).toBe(false);
    const login = await cli(['login', '-u', reg.user, '--password-stdin', reg.host], home.env, `${reg.password}\n`);
    expect(login).toMatchObject({ code: 0 });
    expect(statSync(join(home.root, 'auth.json')).mode & 0o777).toBe(0o600);
    const pulled = await cli(['pull', '-q', name], home.env);
    expect(pulled).toMatchObject({ code: 0, stdout: `${busybox.manifestDigest}\n` });
    expect((await cli(['logout', reg.host], home.env)).code).toBe(0);
    expect((await cli(['pull', name], home.env)).code).toBe(125);
  });

  it('pulls through the bearer-token flow with credentials from the Docker config file', async () => {
    const reg = await startRegistry({ auth: 'token' });
    registries.push(reg);
    await reg.push(busybox.dir, 'team/busybox:1');
    const dockerDir = join(work, 'docker');
    await mkdir(dockerDir);
    const auth = Buffer.from(`${reg.user}:${reg.password}`).toString('base64');
    await writeFile(join(dockerDir, 'config.json'), JSON.stringify({ auths: { [reg.host]: { auth } } }));
    const env = { ...home.env, DOCKER_CONFIG: dockerDir };
    const pulled = await cli(['pull', '-q', `${reg.host}/team/busybox:1`], env);
    expect(pulled).toMatchObject({ code: 0, stdout: `${busybox.manifestDigest}\n` });
    // The token server saw our account and granted pull on that repository only.
    const ours = reg.token!.grants.filter((g) => g.account === reg.user).map((g) => g.granted);
    expect(ours).toContainEqual([{ type: 'repository', name: 'team/busybox', actions: ['pull'] }]);
    const r = await cli(['run', `${reg.host}/team/busybox:1`, '--', 'cat', '/etc/os-release'], env);
    expect(r.stdout).toContain('Roost test image');
  });
});

describe('a Debian minbase image', () => {
  let home: TestHome;
  let work: string;
  let registry: TestRegistry;

  beforeAll(async () => {
    home = new TestHome();
    work = await mkdtemp(join(tmpdir(), 'roost-debian-'));
    registry = await startRegistry({ auth: 'none' });
  }, 900_000);

  afterAll(async () => {
    await home?.cleanup();
    await registry?.stop();
    if (work) await rm(work, { recursive: true, force: true });
  });

  it('pulls, builds and boots it: files, owners, setuid bits, hardlinks and whiteouts across layers', async () => {
    const debian = await buildDebianImage(join(work, 'debian'), { progress: (l) => process.stderr.write(`[debian] ${l}\n`) });
    await registry.push(debian.dir, 'roost/debian:12');
    const sb = await home.create({ image: `${registry.host}/roost/debian:12`, memoryMiB: 256 });
    await expectRoot(sb, debian.expected);
    const r = await sb.commands.run('cat /etc/debian_version; dpkg-query -W | wc -l; id nobody; ls /usr/share/doc | wc -l');
    const [version, packages, nobody, docs] = r.stdout.trimEnd().split('\n');
    expect(version).toMatch(/^12\./);
    expect(Number(packages)).toBeGreaterThan(50);
    expect(nobody).toMatch(/^uid=65534\(nobody\)/);
    expect(docs).toBe('0');
    const asNobody = await sb.commands.run('id -un; touch /root/x', { user: 'nobody' });
    expect(asNobody.stdout).toBe('nobody\n');
    expect(asNobody.stderr).toMatch(/Permission denied/);
  }, 900_000);
});
