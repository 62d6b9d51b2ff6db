import { createHash } from 'node:crypto';
import { existsSync, lstatSync, mkdirSync, mkdtempSync, readFileSync, realpathSync, rmSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { MAX_VOLUMES } from '@roost/api';
import { isRoostError, type Runtime, type Sandbox } from '@roost/core';
import { qemusOf, TestHome } from './helpers.js';

// Two sandboxes booted once serve most tests: `sb` mounts a host directory
// read-write, another read-only, and the named volume `shared`; `peer`
// mounts `shared` too. Tests that need their own sandbox (lifecycle, bad
// input) make and remove it themselves.
const home = new TestHome();
const scratch = mkdtempSync(join(tmpdir(), 'roost-volumes-'));
const hostDir = join(scratch, 'rw');
const roDir = join(scratch, 'ro');
/** A directory beside the volumes that no guest may reach. */
const outside = join(scratch, 'outside');
let runtime: Runtime;
let sb: Sandbox;
let peer: Sandbox;

const sha256 = (b: Uint8Array) => createHash('sha256').update(b).digest('hex');

/** Runs a shell command line in a sandbox; fails the test on a non-zero exit. */
async function sh(s: Sandbox, cmd: string): Promise<string> {
  const r = await s.commands.run(cmd);
  if (r.exitCode !== 0) throw new Error(`${cmd}: exit ${r.exitCode}: ${r.stderr}`);
  return r.stdout;
}

beforeAll(async () => {
  for (const d of [hostDir, roDir, outside]) mkdirSync(d);
  writeFileSync(join(roDir, 'readme.txt'), 'read only\n');
  writeFileSync(join(outside, 'secret.txt'), 'HOST SECRET\n');
  runtime = await home.runtime();
  [sb, peer] = await Promise.all([
    home.create({
      network: 'none',
      volumes: [
        { source: hostDir, target: '/mnt/host' },
        { source: roDir, target: '/mnt/ro', readOnly: true },
        { source: 'shared', target: '/data' },
      ],
    }),
    home.create({ volumes: [{ source: 'shared', target: '/other' }] }),
  ]);
});

afterAll(async () => {
  await home.cleanup();
  rmSync(scratch, { recursive: true, force: true });
});

describe('host directories', () => {
  it('records the volumes (host directories resolved, named volumes by name)', () => {
    expect(sb.info.volumes).toEqual([
      { source: realpathSync(hostDir), target: '/mnt/host', readOnly: false },
      { source: realpathSync(roDir), target: '/mnt/ro', readOnly: true },
      { source: 'shared', target: '/data', readOnly: false },
    ]);
  });

  it('mounts a host directory read-write: what the guest writes the host reads, and the other way round', async () => {
    const guestSum = await sh(sb, 'head -c 300000 /dev/urandom > /mnt/host/random.bin && sha256sum /mnt/host/random.bin');
    expect(sha256(readFileSync(join(hostDir, 'random.bin')))).toBe(guestSum.split(' ')[0]);

    const bytes = Buffer.from(Array.from({ length: 70_000 }, (_, i) => (i * 31) & 0xff));
    writeFileSync(join(hostDir, 'from-host.bin'), bytes);
    expect((await sh(sb, 'sha256sum /mnt/host/from-host.bin')).split(' ')[0]).toBe(sha256(bytes));
    // Changes on the host show at once (no stale guest cache).
    writeFileSync(join(hostDir, 'from-host.bin'), 'changed\n');
    expect(await sh(sb, 'cat /mnt/host/from-host.bin')).toBe('changed\n');
    await sh(sb, 'mkdir -p /mnt/host/sub/dir && echo deep > /mnt/host/sub/dir/f && rm /mnt/host/random.bin');
    expect(readFileSync(join(hostDir, 'sub/dir/f'), 'utf8')).toBe('deep\n');
    expect(existsSync(join(hostDir, 'random.bin'))).toBe(false);
  });

  it('never lets guest root make setuid, executable or root-made special files on the host', async () => {
    // The guest sees the modes it set; the host sees plain 0644 files of QEMU's user.
    const guest = await sh(
      sb,
      'cp /bin/busybox /mnt/host/suid && chmod 4755 /mnt/host/suid && mknod /mnt/host/blk b 254 0 && mkfifo /mnt/host/fifo && ln -s /etc/shadow /mnt/host/link && stat -c "%a %F" /mnt/host/suid /mnt/host/blk /mnt/host/fifo /mnt/host/link',
    );
    expect(guest.split('\n').filter(Boolean)).toEqual(['4755 regular file', '644 block special file', '644 fifo', '777 symbolic link']);
    for (const name of ['suid', 'blk', 'fifo', 'link']) {
      const st = lstatSync(join(hostDir, name));
      expect(st.isFile(), name).toBe(true);
      expect(st.mode & 0o7777, name).toBe(0o644);
      // The owner is the sandbox's confined QEMU's uid (Roost's own with ROOST_JAIL=off).
      expect(st.uid, name).toBe(sb.info.confinement?.uid ?? process.getuid!());
    }
    // A guest symlink is a file holding its target on the host.
    expect(readFileSync(join(hostDir, 'link'), 'utf8')).toBe('/etc/shadow');
    const dir = await sh(sb, 'mkdir /mnt/host/d && chmod 7777 /mnt/host/d && stat -c %a /mnt/host/d');
    expect(dir).toBe('7777\n');
    expect(lstatSync(join(hostDir, 'd')).mode & 0o7777).toBe(0o755);
  });
});

describe('the POSIX workload of the 9P tests, on a volume', () => {
  it('passes through the relay and the file server as it does over TCP', async () => {
    await sb.files.write('/tmp/p9-workload.sh', readFileSync(join(import.meta.dirname, 'fixtures', 'p9-workload.sh')));
    await sh(sb, 'mkdir -p /mnt/host/work');
    const r = await sb.commands.run('sh /tmp/p9-workload.sh /mnt/host/work', { timeoutMs: 240_000 });
    expect(r.stdout).toContain('WORKLOAD OK');
    expect(r.exitCode).toBe(0);
    // The host side: the guest's big file whole, its symlink a plain file holding its target.
    expect(statSync(join(hostDir, 'work', 'big.bin')).size).toBe(5000);
    expect(lstatSync(join(hostDir, 'work', 'sym.txt')).isFile()).toBe(true);
    rmSync(join(hostDir, 'work'), { recursive: true, force: true });
  }, 300_000);
});

describe('a named volume shared by two running sandboxes', () => {
  it('shows what one writes to the other and to the host', async () => {
    await sh(sb, 'echo from-sb > /data/a.txt');
    expect(await sh(peer, 'cat /other/a.txt')).toBe('from-sb\n');
    await sh(peer, 'echo from-peer >> /other/a.txt && echo new > /other/b.txt');
    expect(await sh(sb, 'cat /data/a.txt /data/b.txt')).toBe('from-sb\nfrom-peer\nnew\n');
    const vol = await runtime.volumes.get('shared');
    expect(vol.path).toBe(join(home.root, 'volumes', 'shared', 'data'));
    expect(readFileSync(join(vol.path, 'a.txt'), 'utf8')).toBe('from-sb\nfrom-peer\n');
    expect(vol.usedBy.sort()).toEqual([sb.id, peer.id].sort());
  });
});

describe('read-only mounts', () => {
  it('refuse writes with EROFS, for guest root too, even after a remount read-write', async () => {
    expect(await sh(sb, 'cat /mnt/ro/readme.txt')).toBe('read only\n');
    const attempts =
      'echo x > /mnt/ro/new; echo x >> /mnt/ro/readme.txt; rm /mnt/ro/readme.txt; chmod 777 /mnt/ro/readme.txt; mkdir /mnt/ro/d; ln -s x /mnt/ro/l';
    const before = await sb.commands.run(attempts);
    expect(before.stderr.match(/Read-only file system/g)).toHaveLength(6);
    expect((await sb.commands.run('mount -o remount,rw /mnt/ro')).exitCode).toBe(0);
    expect(await sh(sb, "grep ' /mnt/ro ' /proc/mounts | cut -d' ' -f4 | cut -d, -f1")).toBe('rw\n');
    const after = await sb.commands.run(attempts);
    expect(after.stderr.match(/Read-only file system/g)).toHaveLength(6);
    // Unmounting it gains nothing either: the export is only reachable through the relay, which the server serves read-only.
    const again = await sb.commands.run('umount /mnt/ro && mkdir -p /mnt/ro2 && mount -t 9p -o trans=virtio,version=9p2000.L roost.v1 /mnt/ro2');
    expect(again.exitCode).not.toBe(0);
    expect(readFileSync(join(roDir, 'readme.txt'), 'utf8')).toBe('read only\n');
    expect(existsSync(join(roDir, 'new'))).toBe(false);
  });
});

describe('escape attempts', () => {
  it('a guest symlink to / leads into the guest, and the host never follows it', async () => {
    await sh(sb, 'echo guest-only > /tmp/marker && ln -s / /mnt/host/escape');
    expect(await sh(sb, 'cat /mnt/host/escape/tmp/marker')).toBe('guest-only\n');
    expect(await sh(sb, 'cat /mnt/host/escape/etc/hostname')).toBe(await sh(sb, 'cat /etc/hostname'));
    const r = await sb.commands.run(`cat /mnt/host/escape${outside}/secret.txt`);
    expect(r.stdout).toBe('');
    expect(r.stderr).toMatch(/No such file/);
    // On the host it is a regular file holding "/", not a link QEMU could follow.
    const st = lstatSync(join(hostDir, 'escape'));
    expect(st.isSymbolicLink()).toBe(false);
    expect(readFileSync(join(hostDir, 'escape'), 'utf8')).toBe('/');
  });

  it('a symlink the host put in the volume is not followed out of it', async () => {
    symlinkSync(outside, join(hostDir, 'host-link'));
    const r = await sb.commands.run('cat /mnt/host/host-link/secret.txt; ls /mnt/host/host-link/');
    expect(r.stdout).not.toMatch(/HOST SECRET|secret\.txt/);
    expect(r.stderr).toMatch(/Too many levels of symbolic links|No such file/);
  });

  it('.. from the mount root stays in the guest', async () => {
    expect(await sh(sb, 'cat /mnt/host/../../tmp/marker')).toBe('guest-only\n');
    expect(await sh(sb, 'cd /mnt/host && cd ../../../.. && pwd && ls')).not.toMatch(/outside|rw\n/);
    const r = await sb.commands.run('ls /mnt/host/../outside /mnt/host/../../outside');
    expect(r.exitCode).not.toBe(0);
  });

  it('no hard link crosses the mount: EXDEV both ways', async () => {
    const r = await sb.commands.run('ln /etc/passwd /mnt/host/passwd; echo x > /mnt/host/in && ln /mnt/host/in /tmp/out');
    expect(r.stderr.match(/Invalid cross-device link/g)).toHaveLength(2);
    expect(existsSync(join(hostDir, 'passwd'))).toBe(false);
  });
});

describe('volume lifecycle', () => {
  it('creates, lists, inspects; refuses taken names, bad names and unknown volumes', async () => {
    const v = await runtime.volumes.create({ name: 'made-1', labels: { team: 'a' } });
    expect(v).toMatchObject({ name: 'made-1', labels: { team: 'a' }, usedBy: [], path: join(home.root, 'volumes', 'made-1', 'data') });
    expect(existsSync(v.path)).toBe(true);
    await expect(runtime.volumes.create({ name: 'made-1' })).rejects.toMatchObject({
      code: 'ALREADY_EXISTS',
      message: expect.stringMatching(/made-1 already exists/),
    });
    await expect(runtime.volumes.create({ name: '../x' })).rejects.toMatchObject({ code: 'INVALID_ARGUMENT' });
    await expect(runtime.volumes.create({ name: '' })).rejects.toMatchObject({ code: 'INVALID_ARGUMENT' });
    await expect(runtime.volumes.get('nope')).rejects.toMatchObject({ code: 'NOT_FOUND', message: expect.stringMatching(/no volume nope/) });
    await expect(runtime.volumes.get('../etc')).rejects.toMatchObject({ code: 'INVALID_ARGUMENT' });
    await expect(runtime.volumes.remove('nope')).rejects.toMatchObject({ code: 'NOT_FOUND' });
    const names = (await runtime.volumes.list()).map((x) => x.name);
    expect(names).toEqual(expect.arrayContaining(['made-1', 'shared']));
    expect(names).toEqual([...names].sort());
    await runtime.volumes.remove('made-1');
    expect(existsSync(join(home.root, 'volumes', 'made-1'))).toBe(false);
    await expect(runtime.volumes.get('made-1')).rejects.toMatchObject({ code: 'NOT_FOUND' });
  });

  it('refuses to remove a volume while a sandbox, even a stopped one, mounts it; keeps the data after the sandbox goes', async () => {
    const lastEvent = runtime.lastEventId();
    const s = await home.create({ volumes: [{ source: 'keep', target: '/keep' }] });
    expect((await runtime.volumes.get('keep')).usedBy).toEqual([s.id]);
    await sh(s, 'echo kept > /keep/f');
    await expect(runtime.volumes.remove('keep')).rejects.toMatchObject({ code: 'INVALID_STATE', message: expect.stringContaining(s.id) });
    await s.stop();
    await expect(runtime.volumes.remove('keep')).rejects.toMatchObject({ code: 'INVALID_STATE', message: expect.stringContaining(s.id) });
    // start() mounts it again.
    await s.start();
    expect(await sh(s, 'cat /keep/f')).toBe('kept\n');
    await s.remove({ force: true });
    const kept = await runtime.volumes.get('keep');
    expect(kept.usedBy).toEqual([]);
    expect(readFileSync(join(kept.path, 'f'), 'utf8')).toBe('kept\n');
    // A later sandbox finds the data.
    const t = await home.create({ volumes: [{ source: 'keep', target: '/again', readOnly: true }] });
    expect(await sh(t, 'cat /again/f')).toBe('kept\n');
    await t.remove({ force: true });
    await runtime.volumes.remove('keep');
    expect(existsSync(join(home.root, 'volumes', 'keep'))).toBe(false);
    const events = [];
    for await (const e of runtime.events({ after: lastEvent, signal: AbortSignal.timeout(500) })) events.push(e);
    expect(events.filter((e) => e.type.startsWith('volume.')).map((e) => [e.type, e.data.name])).toEqual([
      ['volume.created', 'keep'],
      ['volume.removed', 'keep'],
    ]);
  }, 180_000);

  it('start() refuses a host directory that went away or became a link, and mounts it again once restored', async () => {
    const dir = join(scratch, 'comes-and-goes');
    mkdirSync(dir);
    const s = await home.create({ volumes: [{ source: dir, target: '/cg' }] });
    await sh(s, 'echo before > /cg/f');
    await s.stop();
    rmSync(dir, { recursive: true });
    await expect(s.start()).rejects.toMatchObject({
      code: 'NOT_FOUND',
      message: expect.stringMatching(/mounts host directory .*comes-and-goes at \/cg, which is no longer a directory/),
    });
    symlinkSync(outside, dir);
    await expect(s.start()).rejects.toMatchObject({ code: 'INVALID_STATE', message: expect.stringMatching(/which is now a link to .*outside/) });
    expect(s.status).toBe('stopped');
    rmSync(dir);
    mkdirSync(dir);
    writeFileSync(join(dir, 'f'), 'restored\n');
    await s.start();
    expect(await sh(s, 'cat /cg/f')).toBe('restored\n');
    await s.remove({ force: true });
  }, 180_000);

  it(`mounts ${MAX_VOLUMES} volumes, the most a sandbox takes, over one channel; nested ones parent first`, async () => {
    // Given child first: the parent is mounted first all the same, so the child stays visible.
    const volumes = [
      { source: 'nest-child', target: '/n/a/b' },
      { source: hostDir, target: '/n/a' },
      { source: 'nest-other', target: '/n/c', readOnly: true },
    ];
    for (let i = volumes.length; i < MAX_VOLUMES; i++) volumes.push({ source: `many-${i}`, target: `/many/${i}` });
    writeFileSync(join(hostDir, 'nest.txt'), 'parent\n');
    // With a network too: volumes take no device slot.
    const s = await home.create({ volumes });
    expect(await sh(s, "grep -c ' 9p ' /proc/mounts")).toBe(`${MAX_VOLUMES}\n`);
    expect(await sh(s, 'echo hi > /n/a/b/x && cat /n/a/b/x /n/a/nest.txt')).toBe('hi\nparent\n');
    expect(await sh(s, `echo last > /many/${MAX_VOLUMES - 1}/f && cat /many/${MAX_VOLUMES - 1}/f`)).toBe('last\n');
    // The child's mount point was made in the parent volume; the child's data is in its own.
    expect(readFileSync(join((await runtime.volumes.get('nest-child')).path, 'x'), 'utf8')).toBe('hi\n');
    await s.remove({ force: true });
    await expect(home.create({ volumes: [...volumes, { source: hostDir, target: '/n/z' }], network: 'none' })).rejects.toMatchObject({
      code: 'INVALID_ARGUMENT',
      message: expect.stringMatching(/volumes/),
    });
  }, 120_000);
});

describe('bad volumes', () => {
  const cases: [string, { source: string; target: string }[], RegExp][] = [
    ['a missing host directory', [{ source: '/no/such/dir', target: '/x' }], /volumes\[0\]\.source: the host directory \/no\/such\/dir does not exist/],
    ['a host file', [{ source: '/etc/hostname', target: '/x' }], /\/etc\/hostname is not a directory/],
    ['a relative target', [{ source: 'vol', target: 'x/y' }], /must be absolute/],
    ['a target that is not normalized', [{ source: 'vol', target: '/a/../b' }], /not normalized: write it as "\/b"/],
    ['a trailing slash', [{ source: 'vol', target: '/a/' }], /not normalized: write it as "\/a"/],
    [
      'a duplicate target',
      [
        { source: 'vol', target: '/a' },
        { source: 'other', target: '/a' },
      ],
      /volumes\[1\]\.target: two volumes are mounted at \/a/,
    ],
    ['the root', [{ source: 'vol', target: '/' }], /cannot be mounted on \//],
    ['/proc', [{ source: 'vol', target: '/proc/x' }], /under \/proc/],
    ['/dev', [{ source: 'vol', target: '/dev' }], /under \/dev/],
    ['a bad name', [{ source: 'bad name!', target: '/a' }], /neither an absolute host directory nor a volume name/],
    ['a relative host path', [{ source: './rel', target: '/a' }], /neither an absolute host directory nor a volume name/],
    ['a directory inside the Roost home', [{ source: home.root, target: '/a' }], /inside the Roost home/],
  ];

  it.each(cases)('refuses %s with INVALID_ARGUMENT, before any VM starts', async (_, volumes, message) => {
    const before = (await runtime.list()).length;
    const vms = qemusOf(home.root).length;
    const err = await home.create({ volumes }).then(
      () => null,
      (e: unknown) => e,
    );
    expect(isRoostError(err)).toBe(true);
    expect(err).toMatchObject({ code: 'INVALID_ARGUMENT', message: expect.stringMatching(message) });
    expect((await runtime.list()).length).toBe(before);
    expect(qemusOf(home.root).length).toBe(vms);
    // No named volume was made for a create that failed.
    await expect(runtime.volumes.get('vol')).rejects.toMatchObject({ code: 'NOT_FOUND' });
  });

  it('fails a create whose mount fails in the guest (a file where the directory goes), and kills the VM', async () => {
    const live = qemusOf(home.root).length;
    const err = await home.create({ volumes: [{ source: hostDir, target: '/etc/passwd' }] }).then(
      () => null,
      (e: unknown) => e,
    );
    expect(err).toMatchObject({ code: 'BOOT_FAILED', message: expect.stringMatching(/cannot mount volume .* at \/etc\/passwd in the guest/) });
    expect(qemusOf(home.root).length).toBe(live);
    const failed = (await runtime.list({ status: 'failed' })).find((i) => i.volumes?.[0]?.target === '/etc/passwd');
    expect(failed?.reason).toMatch(/cannot mount volume/);
    await (await runtime.get(failed!.id)).remove();
  });
});
