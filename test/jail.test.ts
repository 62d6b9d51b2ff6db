import { existsSync, readdirSync, readFileSync, readlinkSync, realpathSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Runtime, type Sandbox } from '@roost/core';
import { alive, eventually, TestHome } from './helpers.js';

// Every sandbox's QEMU runs in Roost's jail (docs/security.md). Two sandboxes
// of one home are booted once and examined from the host; a second home's
// runtime has no memory overhead allowance (its VM is ended by its cgroup's
// limit), a third runs unconfined (`jail: false`).
const root = process.getuid?.() === 0;
const home = new TestHome();
const oomHome = new TestHome();
const openHome = new TestHome();
let a: Sandbox;
let b: Sandbox;

/** A line of /proc/<pid>/status, e.g. `Uid` -> "2000000000 2000000000 ...". */
function status(pid: number, key: string): string {
  const line = readFileSync(`/proc/${pid}/status`, 'utf8')
    .split('\n')
    .find((l) => l.startsWith(`${key}:`));
  if (line === undefined) throw new Error(`no ${key} in /proc/${pid}/status`);
  return line.slice(key.length + 1).trim();
}

/** A file of a sandbox's cgroup for a controller: v2 has one directory, v1 one per controller. */
function cgroupFile(id: string, controller: string, v1: string, v2: string): string {
  const unified = existsSync('/sys/fs/cgroup/cgroup.controllers');
  return readFileSync(unified ? `/sys/fs/cgroup/roost/${id}/${v2}` : `/sys/fs/cgroup/${controller}/roost/${id}/${v1}`, 'utf8').trim();
}

/** CPU seconds a process has used (user + system). */
function cpuSeconds(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return (Number(fields[11]) + Number(fields[12])) / 100;
}

async function sh(s: Sandbox, cmd: string): Promise<string> {
  const r = await s.commands.run(cmd);
  if (r.exitCode !== 0) throw new Error(`${cmd}: exit ${r.exitCode}: ${r.stderr}`);
  return r.stdout;
}

describe.skipIf(!root)('the jail (as root)', () => {
  beforeAll(async () => {
    await home.runtime();
    [a, b] = await Promise.all([home.create({ cpus: 1, memoryMiB: 256 }), home.create({ cpus: 1, memoryMiB: 256, detached: true })]);
  });

  afterAll(async () => {
    await Promise.allSettled([home.cleanup(), oomHome.cleanup(), openHome.cleanup()]);
  });

  it('runs each QEMU as its own unprivileged uid, without capabilities, under seccomp', () => {
    const pa = a.info.pid!;
    const pb = b.info.pid!;
    const [uidA, gidA] = [status(pa, 'Uid').split(/\s+/), status(pa, 'Gid').split(/\s+/)];
    const uidB = status(pb, 'Uid').split(/\s+/);
    expect(new Set(uidA).size).toBe(1); // real, effective, saved and fs uid alike
    expect(Number(uidA[0])).toBeGreaterThan(0);
    expect(uidA[0]).not.toBe(uidB[0]);
    expect(gidA[0]).toBe(uidA[0]);
    expect(status(pa, 'Groups')).toBe('');
    for (const cap of ['CapInh', 'CapPrm', 'CapEff', 'CapAmb', 'CapBnd']) expect(status(pa, cap)).toBe('0000000000000000');
    expect(status(pa, 'NoNewPrivs')).toBe('1');
    expect(status(pa, 'Seccomp')).toBe('2');
    // What the record and `roost inspect` say.
    expect(a.info.confinement).toMatchObject({ jailed: true, uid: Number(uidA[0]), gid: Number(gidA[0]), cgroup: `roost/${a.id}` });
    expect(a.info.confinement?.limits).toMatchObject({ cpus: 1, pids: expect.any(Number) as number });
    expect(a.info.confinement!.limits!.memoryBytes).toBeGreaterThan(256 * 2 ** 20);
  });

  it('gives QEMU a root of its own: no host files, no other sandbox, no database', () => {
    const pid = a.info.pid!;
    const jail = `/proc/${pid}/root`;
    expect(readdirSync(jail).sort()).toEqual(expect.arrayContaining(['dev']));
    expect(existsSync(`${jail}/etc/passwd`)).toBe(false);
    expect(existsSync(`${jail}/etc`)).toBe(false);
    expect(existsSync(`${jail}/proc/1`)).toBe(false);
    expect(existsSync(join(jail, home.root, 'roost.db'))).toBe(false);
    expect(existsSync(join(jail, realpathSync(home.root), 'roost.db'))).toBe(false);
    expect(existsSync(join(jail, b.dir))).toBe(false);
    expect(existsSync(join(jail, a.dir, 'disk.qcow2'))).toBe(false);
    expect(readdirSync(`${jail}/dev`).sort()).toEqual(['null', 'urandom']);
    // Its own namespaces: mount, PID, IPC, UTS and network all differ from this process's.
    for (const ns of ['mnt', 'ipc', 'uts', 'net', 'pid']) expect(readlinkSync(`/proc/${pid}/ns/${ns}`)).not.toBe(readlinkSync(`/proc/self/ns/${ns}`));
    // It is PID 1 of its PID namespace, and its network namespace has only a loopback device.
    expect(status(pid, 'NSpid').split(/\s+/)).toEqual([String(pid), '1']);
    expect(readFileSync(`/proc/${pid}/net/dev`, 'utf8')).not.toMatch(/eth|ens|roost|tap/);
  });

  it('puts QEMU in a cgroup of its own with the limits, and limits its files and core dumps', () => {
    const pid = a.info.pid!;
    const cgroups = readFileSync(`/proc/${pid}/cgroup`, 'utf8');
    expect(cgroups).toContain(`/roost/${a.id}`);
    const limits = a.info.confinement!.limits!;
    expect(Number(cgroupFile(a.id, 'memory', 'memory.limit_in_bytes', 'memory.max'))).toBe(limits.memoryBytes);
    expect(Number(cgroupFile(a.id, 'pids', 'pids.max', 'pids.max'))).toBe(limits.pids);
    const quota = existsSync('/sys/fs/cgroup/cgroup.controllers')
      ? cgroupFile(a.id, 'cpu', '', 'cpu.max').split(' ')[0]
      : cgroupFile(a.id, 'cpu', 'cpu.cfs_quota_us', '');
    expect(Number(quota)).toBe(100_000);
    const procLimits = readFileSync(`/proc/${pid}/limits`, 'utf8');
    expect(procLimits).toMatch(/Max core file size\s+0\s+0/);
    expect(procLimits).toMatch(/Max open files\s+16384\s+16384/);
  });

  it('holds a guest spinning two processes on one vCPU to about one core', async () => {
    const pid = a.info.pid!;
    const spin = a.commands.start(['sh', '-c', 'for i in 1 2; do (while :; do :; done) & done; sleep 6; kill 0']);
    const handle = await spin;
    await new Promise((r) => setTimeout(r, 1000));
    const t0 = performance.now();
    const c0 = cpuSeconds(pid);
    await new Promise((r) => setTimeout(r, 3000));
    const cores = (cpuSeconds(pid) - c0) / ((performance.now() - t0) / 1000);
    handle.kill('SIGKILL');
    await handle.wait().catch(() => {});
    expect(cores).toBeGreaterThan(0.5);
    expect(cores).toBeLessThan(1.15);
  });

  it('ends a VM whose QEMU exceeds its memory limit, with the reason, and its neighbour runs on', async () => {
    const oomRuntime = await Runtime.open({ home: oomHome.root, jail: { memoryOverheadMiB: 0 } });
    try {
      const c = await oomRuntime.create({ cpus: 1, memoryMiB: 256, timeoutMs: 60_000 });
      expect(c.info.confinement?.limits?.memoryBytes).toBe(256 * 2 ** 20);
      // Guest RAM in a tmpfs cannot be reclaimed: QEMU's guest memory plus its own passes 256 MiB.
      await c.commands
        .run('mkdir -p /mnt/fill && mount -t tmpfs -o size=240m none /mnt/fill && dd if=/dev/zero of=/mnt/fill/x bs=1M count=235')
        .catch(() => null);
      await eventually(() => c.status === 'failed', 30_000, 'the sandbox failed');
      expect(c.info.reason).toMatch(/out of memory/);
      expect(c.info.reason).toMatch(/256 MiB/);
      expect(await sh(a, 'echo alive')).toBe('alive\n');
    } finally {
      await oomRuntime.close();
    }
  });

  it('keeps a detached sandbox confined across a restart of its runtime', async () => {
    const pid = b.info.pid!;
    const uid = b.info.confinement?.uid;
    await home.release();
    expect(alive(pid)).toBe(true);
    const again = await home.runtime();
    const b2 = home.track(await again.get(b.id));
    expect(b2.status).toBe('running');
    expect(b2.info.confinement).toMatchObject({ jailed: true, uid });
    expect(await sh(b2, 'echo back')).toBe('back\n');
    const metrics = await again.metrics();
    expect(metrics.perSandbox.find((s) => s.id === b.id)).toMatchObject({ jailed: true, memoryLimitBytes: b.info.confinement!.limits!.memoryBytes });
    // Its uid goes back to the range when it is removed, and its cgroup with its VM.
    await b2.remove({ force: true });
    await eventually(() => !existsSync(`/sys/fs/cgroup/pids/roost/${b.id}`) && !existsSync(`/sys/fs/cgroup/roost/${b.id}`), 5000, 'the cgroup removed');
  });

  it('runs QEMU unconfined with jail: false, and says so', async () => {
    const open = await Runtime.open({ home: openHome.root, jail: false });
    try {
      const d = await open.create({ timeoutMs: 60_000 });
      expect(d.info.confinement).toEqual({ jailed: false });
      expect(status(d.info.pid!, 'Uid').split(/\s+/)[0]).toBe(String(process.getuid!()));
      const metrics = await open.metrics();
      expect(metrics.perSandbox.find((s) => s.id === d.id)).toMatchObject({ jailed: false, memoryLimitBytes: null });
      await d.remove({ force: true });
    } finally {
      await open.close();
    }
  });
});
