import { mkdirSync, mkdtempSync, readFileSync, readdirSync, readlinkSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it, onTestFinished } from 'vitest';
import type { Runtime, Sandbox } from '@roost/core';
import { alive, eventually, expectCode, fileServersOf, qemusOf, TestHome } from './helpers.js';

// Volumes are served by Roost's own 9P server (a file server process per VM),
// so sandboxes that mount them can be snapshotted, restored and forked. One
// source sandbox (`src`) mounts a host directory and a named volume, and runs
// writers that hold files open on both while snapshots are taken.
const home = new TestHome();
const scratch = mkdtempSync(join(tmpdir(), 'roost-volsnap-'));
const hostDir = join(scratch, 'host');
let runtime: Runtime;
let src: Sandbox;

async function sh(s: Sandbox, cmd: string): Promise<string> {
  const r = await s.commands.run(cmd);
  if (r.exitCode !== 0) throw new Error(`${cmd}: exit ${r.exitCode}: ${r.stderr}`);
  return r.stdout;
}

/** Lines of a file the writers append numbers to. */
function lines(path: string): number[] {
  return readFileSync(path, 'utf8')
    .split('\n')
    .filter(Boolean)
    .map((l) => Number(l.split(' ')[1]));
}

/**
 * Starts a writer in `s` that holds `file` open (fd 3) and appends `TAG N`
 * every 20 ms; it exits (and says why in /tmp/TAG.err) on the first failed
 * write. Returns its pid.
 */
async function startWriter(s: Sandbox, tag: string, file: string): Promise<string> {
  await sh(
    s,
    `setsid sh -c 'exec 3>>${file}; i=0; while :; do i=$((i+1)); echo "${tag} $i" >&3 || { echo "write failed at $i" > /tmp/${tag}.err; exit 1; }; sleep 0.02; done' </dev/null >/dev/null 2>&1 & echo $! > /tmp/${tag}.pid`,
  );
  return (await sh(s, `cat /tmp/${tag}.pid`)).trim();
}

beforeAll(async () => {
  mkdirSync(hostDir);
  runtime = await home.runtime();
  src = await home.create({
    volumes: [
      { source: hostDir, target: '/mnt/host' },
      { source: 'snapvol', target: '/data' },
    ],
  });
});

afterAll(async () => {
  await home.cleanup();
  rmSync(scratch, { recursive: true, force: true });
});

describe('a sandbox with volumes', () => {
  it('has no host directory in QEMU: its volumes come from a file server of its own', async () => {
    const [qemu] = qemusOf(home.root).filter((pid) => readFileSync(`/proc/${pid}/cmdline`, 'utf8').includes(src.id));
    expect(qemu).toBeDefined();
    const cmdline = readFileSync(`/proc/${qemu}/cmdline`, 'utf8').split('\0');
    expect(cmdline.join(' ')).not.toMatch(/fsdev|virtio-9p/);
    expect(cmdline.join(' ')).not.toContain(hostDir);
    const open = readdirSync(`/proc/${qemu}/fd`).map((fd) => {
      try {
        return readlinkSync(`/proc/${qemu}/fd/${fd}`);
      } catch {
        return '';
      }
    });
    expect(open.filter((p) => p.startsWith(hostDir) || p.includes('/volumes/'))).toEqual([]);
    expect(fileServersOf(home.root, src.id)).toHaveLength(1);
  });

  it('snapshots under load; the source goes on; a restored copy goes on writing through files its processes held open', async () => {
    const hostFile = join(hostDir, 'held.log');
    const srcWriter = await startWriter(src, 'src', '/mnt/host/held.log');
    await startWriter(src, 'named', '/data/held.log');
    await eventually(() => lines(hostFile).length > 5, 10_000, 'the writer is writing');
    const snap = await src.snapshot({ name: 'with-volumes' });
    expect(snap.sourceSandbox).toBe(src.id);
    expect(snap.volumes).toEqual(src.info.volumes);
    const copy = await home.create({ snapshot: 'with-volumes' });
    onTestFinished(() => copy.remove({ force: true }).catch(() => undefined));
    expect(copy.info.volumes).toEqual(src.info.volumes);
    // The writer restored with the copy is the same process, holding the same open file: its next lines land in the host file.
    expect((await copy.commands.run(`kill -0 ${srcWriter}`)).exitCode).toBe(0);
    const before = lines(hostFile).length;
    await eventually(() => lines(hostFile).length > before + 20, 15_000, 'both writers go on');
    // Neither writer failed a write: not the source's (it ran across the snapshot) nor the copy's (across the restore).
    for (const s of [src, copy]) {
      expect((await s.commands.run('cat /tmp/src.err /tmp/named.err')).stdout, s === src ? 'source' : 'copy').toBe('');
      expect((await s.commands.run(`kill -0 ${srcWriter}`)).exitCode).toBe(0);
    }
    // Both sandboxes' copies of the writer append to the one file: numbers past the snapshot point appear twice.
    const counts = new Map<number, number>();
    for (const n of lines(hostFile)) counts.set(n, (counts.get(n) ?? 0) + 1);
    expect([...counts.values()].some((c) => c === 2)).toBe(true);
    // The copy's own new files reach the host, and the source sees them.
    await sh(copy, 'echo from-copy > /mnt/host/copy.txt && mkdir -p /data/dir && echo x > /data/dir/f');
    expect(readFileSync(join(hostDir, 'copy.txt'), 'utf8')).toBe('from-copy\n');
    expect(await sh(src, 'cat /mnt/host/copy.txt /data/dir/f')).toBe('from-copy\nx\n');
    // Each VM has its own file server.
    expect(fileServersOf(home.root, copy.id)).toHaveLength(1);
    await copy.remove({ force: true });
    await eventually(() => fileServersOf(home.root, copy.id).length === 0, 10_000, "the copy's file server ends with its VM");
    await runtime.snapshots.remove('with-volumes');
  }, 120_000);

  it('forks: each copy has its own session over the same files, and a file held open across the fork stays usable', async () => {
    await sh(src, 'exec 4>/mnt/host/fork.txt; echo before >&4; sleep 30 </dev/null >/dev/null 2>&1 &');
    const [a, b] = await src.fork({ count: 2 });
    onTestFinished(() => Promise.allSettled([a!.remove({ force: true }), b!.remove({ force: true })]).then(() => undefined));
    // Everyone's writes meet in the one directory.
    await Promise.all([sh(a!, 'echo a > /mnt/host/a.txt'), sh(b!, 'echo b > /mnt/host/b.txt'), sh(src, 'echo s > /mnt/host/s.txt')]);
    for (const s of [a!, b!, src]) expect(await sh(s, 'cat /mnt/host/a.txt /mnt/host/b.txt /mnt/host/s.txt')).toBe('a\nb\ns\n');
    // The writer started before the fork runs in every copy, through the same open file.
    const n0 = lines(join(hostDir, 'held.log')).length;
    await eventually(() => lines(join(hostDir, 'held.log')).length > n0 + 30, 15_000, 'three writers append');
    for (const s of [a!, b!]) expect((await s.commands.run('cat /tmp/src.err')).stdout).toBe('');
    await a!.remove({ force: true });
    await b!.remove({ force: true });
    // The source's own mounts are untouched by its copies going away.
    expect(await sh(src, 'echo still > /data/still && cat /data/still')).toBe('still\n');
  }, 120_000);

  it("forks with volumes: 'copy': each copy has its own copies of the volumes as they were, open files included", async () => {
    await sh(src, 'echo before-fork > /data/copied.txt && echo before-fork > /mnt/host/copied.txt');
    await sh(
      src,
      'exec 5>>/data/held-copy.txt; echo line1 >&5; (exec 5>>/data/held-copy.txt; while :; do sleep 0.05; echo more >&5 || exit 1; done) </dev/null >/dev/null 2>&1 &',
    );
    const [a, b] = await src.fork({ count: 2, volumes: 'copy' });
    onTestFinished(() => Promise.allSettled([a!.remove({ force: true }), b!.remove({ force: true })]).then(() => undefined));
    expect(a!.info.volumes?.map((v) => v.target)).toEqual(['/mnt/host', '/data']);
    expect(a!.info.volumes?.[0]?.source).not.toBe(hostDir);
    for (const s of [a!, b!]) expect(await sh(s, 'cat /data/copied.txt /mnt/host/copied.txt')).toBe('before-fork\nbefore-fork\n');
    // What a copy writes is its own: not the source's, not its sibling's.
    await sh(a!, 'echo only-a > /data/copied.txt && echo only-a > /mnt/host/new-in-a.txt');
    expect(await sh(src, 'cat /data/copied.txt')).toBe('before-fork\n');
    expect(await sh(b!, 'cat /data/copied.txt')).toBe('before-fork\n');
    expect((await src.commands.run('cat /mnt/host/new-in-a.txt')).exitCode).not.toBe(0);
    // The appender restored in each copy writes to that copy's own file, and the source's own goes on.
    const lengthOf = async (s: Sandbox) => Number((await sh(s, 'wc -l < /data/held-copy.txt')).trim());
    const [a0, s0] = [await lengthOf(a!), await lengthOf(src)];
    await eventually(async () => (await lengthOf(a!)) > a0 + 5 && (await lengthOf(src)) > s0 + 5, 15_000, 'both appenders go on');
    // The copies' volumes are named volumes of their own, kept for the user until removed.
    const names = a!.info.volumes!.map((v) => v.source);
    for (const n of names) expect((await runtime.volumes.get(n)).labels).toEqual({ 'roost.fork.source': src.id });
    await a!.remove({ force: true });
    await b!.remove({ force: true });
    for (const n of [...names, ...b!.info.volumes!.map((v) => v.source)]) await runtime.volumes.remove(n);
  }, 120_000);

  it("a restore may mount other sources at the snapshot's targets; other targets are refused", async () => {
    const s = await home.create({ volumes: [{ source: 'remap-a', target: '/x' }], network: 'none' });
    onTestFinished(() => s.remove({ force: true }).catch(() => undefined));
    await sh(s, 'echo from-a > /x/f && cd /x');
    await s.snapshot({ name: 'remap' });
    const other = mkdtempSync(join(scratch, 'remap-'));
    writeFileSync(join(other, 'f'), 'from-other\n');
    const r = await home.create({ snapshot: 'remap', volumes: [{ source: other, target: '/x' }] });
    expect(await sh(r, 'cat /x/f')).toBe('from-other\n');
    expect(r.info.volumes).toEqual([{ source: other, target: '/x', readOnly: false }]);
    await expectCode(home.create({ snapshot: 'remap', volumes: [{ source: other, target: '/y' }] }), 'INVALID_ARGUMENT', /its guest's mounts \(\/x\)/);
    await r.remove({ force: true });
    await s.remove({ force: true });
    await runtime.snapshots.remove('remap');
  });

  it('a restore whose named volume was removed since fails, naming it, instead of mounting an empty one', async () => {
    const s = await home.create({ volumes: [{ source: 'ephemeral', target: '/e' }], network: 'none' });
    await sh(s, 'echo kept > /e/f');
    await s.snapshot({ name: 'with-ephemeral' });
    await s.remove({ force: true });
    await runtime.volumes.remove('ephemeral');
    await expectCode(home.create({ snapshot: 'with-ephemeral' }), 'NOT_FOUND', /mounts volume ephemeral at \/e, which was removed/);
    await expect(runtime.volumes.get('ephemeral')).rejects.toMatchObject({ code: 'NOT_FOUND' });
    await runtime.snapshots.remove('with-ephemeral');
  });

  it('a named volume with a quota: the guest gets ENOSPC past it, and the data before it is kept', async () => {
    await runtime.volumes.create({ name: 'small', quotaBytes: 1 << 20 });
    expect(await runtime.volumes.get('small')).toMatchObject({ quotaBytes: 1 << 20 });
    const s = await home.create({ volumes: [{ source: 'small', target: '/small' }], network: 'none' });
    onTestFinished(() => s.remove({ force: true }).catch(() => undefined));
    const r = await s.commands.run('dd if=/dev/zero of=/small/big bs=64k count=32; echo exit=$?; df -k /small | tail -1');
    expect(r.stderr).toMatch(/No space left on device/);
    // 16 blocks of 64 KiB fit; df shows the quota, full.
    expect(r.stdout).toMatch(/^exit=1\nroost\.v0\s+1024\s+1024\s+0\s+100%/);
    await sh(s, 'rm /small/big && head -c 500000 /dev/zero > /small/fits');
    expect(readFileSync(join((await runtime.volumes.get('small')).path, 'fits')).length).toBe(500000);
  });

  it('a file server that dies: operations on its volumes fail within seconds instead of hanging; the sandbox goes on', async () => {
    const s = await home.create({ volumes: [{ source: hostDir, target: '/h' }], network: 'none' });
    onTestFinished(() => s.remove({ force: true }).catch(() => undefined));
    writeFileSync(join(hostDir, 'alive.txt'), 'alive\n');
    expect(await sh(s, 'cat /h/alive.txt')).toBe('alive\n');
    const [server] = fileServersOf(home.root, s.id);
    process.kill(server!, 'SIGKILL');
    const t0 = Date.now();
    const r = await s.commands.run('cat /h/alive.txt; echo exit=$?', { timeoutMs: 60_000 });
    expect(r.stdout).toBe('exit=1\n');
    expect(r.stderr).toMatch(/alive\.txt/);
    expect(Date.now() - t0).toBeLessThan(30_000);
    expect(await sh(s, 'echo still-here')).toBe('still-here\n');
  }, 90_000);

  it('the file server of a detached sandbox outlives the runtime that made it, and ends with the VM', async () => {
    writeFileSync(join(hostDir, 'detached.txt'), 'hello\n');
    const d = await home.create({ detached: true, volumes: [{ source: hostDir, target: '/h' }], network: 'none' });
    const [server] = fileServersOf(home.root, d.id);
    expect(server).toBeDefined();
    // The runtime goes (the non-detached source with it); a new one finds the detached sandbox, its mounts live.
    await home.release();
    runtime = await home.runtime();
    const again = await runtime.get(d.id);
    expect(await sh(again, 'cat /h/detached.txt')).toBe('hello\n');
    expect(alive(server!)).toBe(true);
    await again.remove({ force: true });
    await eventually(() => !alive(server!), 10_000, 'the file server ends with its VM');
  });
});
