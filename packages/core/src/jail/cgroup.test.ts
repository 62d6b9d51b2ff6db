import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, statSync, symlinkSync, utimesSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { isRoostError } from '@roost/api';
import { cgroupSupport, createSandboxCgroup, openSandboxCgroup, sweepSandboxCgroups, type CgroupLimits, type SandboxCgroup } from './cgroup.js';

const MiB = 1024 * 1024;
const ID = '0123456789ab';
const LIMITS: CgroupLimits = { cpus: 2, memoryBytes: 256 * MiB, pids: 512, ioWeight: 200 };

/** The control files a kernel shows in a new cgroup, per controller (v2, in the one directory). */
const V2_FILES: Record<string, Record<string, string>> = {
  core: { 'cgroup.procs': '', 'cgroup.controllers': '', 'cgroup.subtree_control': '', 'cgroup.events': 'populated 0\nfrozen 0\n' },
  cpu: { 'cpu.max': 'max 100000\n', 'cpu.stat': 'usage_usec 1234\nuser_usec 1000\nsystem_usec 234\n', 'cpu.weight': '100\n' },
  memory: {
    'memory.max': 'max\n',
    'memory.current': '4096\n',
    'memory.peak': '8192\n',
    'memory.swap.max': 'max\n',
    'memory.events': 'low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\noom_group_kill 0\n',
  },
  pids: { 'pids.max': 'max\n', 'pids.current': '2\n' },
  io: { 'io.weight': 'default 100\n' },
};

/** The control files of a new v1 cgroup, per controller hierarchy. */
const V1_FILES: Record<string, Record<string, string>> = {
  cpu: { 'cpu.cfs_period_us': '100000\n', 'cpu.cfs_quota_us': '-1\n', 'cpu.shares': '1024\n', 'cpu.stat': 'nr_periods 0\n' },
  cpuacct: { 'cpuacct.usage': '5000999\n', 'cpuacct.stat': 'user 0\nsystem 0\n' },
  memory: {
    'memory.limit_in_bytes': '9223372036854771712\n',
    'memory.memsw.limit_in_bytes': '9223372036854771712\n',
    'memory.usage_in_bytes': '65536\n',
    'memory.max_usage_in_bytes': '131072\n',
    'memory.oom_control': 'oom_kill_disable 0\nunder_oom 0\noom_kill 2\n',
  },
  pids: { 'pids.max': 'max\n', 'pids.current': '1\n', 'pids.events': 'max 0\n' },
  blkio: { 'blkio.weight': '500\n', 'blkio.throttle.io_serviced': 'Total 0\n' },
  cpuset: { 'cpuset.cpus': '\n', 'cpuset.mems': '\n' },
  devices: { 'devices.list': 'a *:* rwm\n' },
  freezer: { 'freezer.state': 'THAWED\n' },
};

function writeFiles(dir: string, files: Record<string, string>): void {
  mkdirSync(dir, { recursive: true });
  for (const [name, text] of Object.entries(files)) writeFileSync(join(dir, name), text);
}

/**
 * A fake unified (v2) hierarchy at `root` offering `controllers`. `mkcg`
 * stands in for the kernel: in a real cgroupfs mkdir makes the control files,
 * here the test makes them before the code under test finds the directory.
 */
function fakeV2(root: string, controllers = ['cpuset', 'cpu', 'io', 'memory', 'hugetlb', 'pids']) {
  const mkcg = (rel: string, omit: string[] = []) => {
    const dir = join(root, rel);
    writeFiles(dir, { ...V2_FILES.core, 'cgroup.controllers': `${controllers.join(' ')}\n` });
    for (const c of controllers) writeFiles(dir, V2_FILES[c] ?? {});
    for (const name of omit) rmSync(join(dir, name), { force: true });
    return dir;
  };
  writeFiles(root, { ...V2_FILES.core, 'cgroup.controllers': `${controllers.join(' ')}\n`, 'cpu.stat': 'usage_usec 0\n' });
  return { mkcg };
}

/**
 * A fake v1 layout at `root` like this machine's: one hierarchy per controller
 * (or `cpu,cpuacct` with `cpu` and `cpuacct` symlinks to it), a named `systemd`
 * one, and an empty v2 mount at `unified`.
 */
function fakeV1(root: string, options: { combinedCpu?: boolean; unifiedControllers?: string; hierarchies?: string[] } = {}) {
  const hierarchies = options.hierarchies ?? ['blkio', 'cpu', 'cpuacct', 'cpuset', 'devices', 'freezer', 'memory', 'pids'];
  const mount = (c: string) => (options.combinedCpu && (c === 'cpu' || c === 'cpuacct') ? 'cpu,cpuacct' : c);
  for (const c of hierarchies) {
    writeFiles(join(root, mount(c)), {
      'cgroup.procs': '',
      tasks: '',
      'cgroup.clone_children': '0\n',
      ...(c === 'memory' ? { 'memory.oom_control': 'oom_kill 0\n' } : {}),
    });
  }
  if (options.combinedCpu) {
    symlinkSync('cpu,cpuacct', join(root, 'cpu'));
    symlinkSync('cpu,cpuacct', join(root, 'cpuacct'));
  }
  writeFiles(join(root, 'systemd'), { 'cgroup.procs': '', tasks: '' });
  writeFiles(join(root, 'unified'), { 'cgroup.controllers': options.unifiedControllers ?? '', 'cgroup.procs': '', 'cgroup.subtree_control': '' });
  const mkcg = (rel: string, omit: string[] = []) => {
    for (const c of hierarchies) {
      const dir = join(root, mount(c), rel);
      writeFiles(dir, { 'cgroup.procs': '', tasks: '', ...V1_FILES[c] });
      for (const name of omit) rmSync(join(dir, name), { force: true });
    }
  };
  return { mkcg };
}

function expectRoostError(fn: () => unknown, code: string, message?: RegExp): void {
  let caught: unknown;
  try {
    fn();
  } catch (err) {
    caught = err;
  }
  expect(isRoostError(caught), String(caught)).toBe(true);
  expect((caught as { code: string }).code).toBe(code);
  if (message) expect((caught as Error).message).toMatch(message);
}

const read = (path: string) => readFileSync(path, 'utf8');

describe('sandbox cgroups on a fake v2 tree', () => {
  let root: string;
  beforeEach(() => {
    root = mkdtempSync(join(tmpdir(), 'roost-cgroup-v2-'));
  });
  afterEach(() => rmSync(root, { recursive: true, force: true }));

  it('finds v2 with its controllers, and none when cpu, memory or pids is missing', () => {
    fakeV2(root);
    expect(cgroupSupport(root)).toEqual({ version: 2, controllers: ['cpu', 'cpuset', 'hugetlb', 'io', 'memory', 'pids'] });
    const bare = mkdtempSync(join(tmpdir(), 'roost-cgroup-bare-'));
    try {
      fakeV2(bare, ['cpu', 'memory']);
      expect(cgroupSupport(bare)).toBeNull();
      expectRoostError(() => createSandboxCgroup(ID, LIMITS, { root: bare }), 'UNAVAILABLE', /cpu, memory and pids/);
      expect(cgroupSupport(join(bare, 'nothing-here'))).toBeNull();
    } finally {
      rmSync(bare, { recursive: true, force: true });
    }
  });

  it('enables the controllers, writes every limit and reads them back', () => {
    const { mkcg } = fakeV2(root);
    mkcg('roost');
    const dir = mkcg(`roost/${ID}`);
    const cg = createSandboxCgroup(ID, LIMITS, { root });
    expect(cg.version).toBe(2);
    expect(cg.name).toBe(`roost/${ID}`);
    expect(cg.dirs).toEqual([dir]);
    expect(read(join(root, 'cgroup.subtree_control'))).toBe('+cpu +memory +pids +io');
    expect(read(join(root, 'roost', 'cgroup.subtree_control'))).toBe('+cpu +memory +pids +io');
    expect(read(join(dir, 'cpu.max'))).toBe('200000 100000');
    expect(read(join(dir, 'memory.max'))).toBe(String(256 * MiB));
    expect(read(join(dir, 'memory.swap.max'))).toBe('0');
    expect(read(join(dir, 'pids.max'))).toBe('512');
    expect(read(join(dir, 'io.weight'))).toBe('default 200');
    expect(cg.limits).toEqual(LIMITS);
    expect(cg.stats()).toEqual({ memoryBytes: 4096, memoryPeakBytes: 8192, cpuUsageUsec: 1234, oomKills: 1, pids: 2 });
  });

  it('writes subtree_control only for controllers not on yet', () => {
    const { mkcg } = fakeV2(root);
    writeFileSync(join(root, 'cgroup.subtree_control'), 'cpu io memory pids\n');
    mkcg('roost');
    writeFileSync(join(root, 'roost', 'cgroup.subtree_control'), 'cpu memory\n');
    mkcg(`roost/${ID}`);
    createSandboxCgroup(ID, LIMITS, { root });
    expect(read(join(root, 'cgroup.subtree_control'))).toBe('cpu io memory pids\n');
    expect(read(join(root, 'roost', 'cgroup.subtree_control'))).toBe('+pids +io');
  });

  it('skips io.weight and memory.swap.max where the host has neither', () => {
    const { mkcg } = fakeV2(root, ['cpu', 'memory', 'pids']);
    mkcg('roost');
    const dir = mkcg(`roost/${ID}`, ['memory.swap.max']);
    const cg = createSandboxCgroup(ID, LIMITS, { root });
    expect(read(join(root, 'cgroup.subtree_control'))).toBe('+cpu +memory +pids');
    expect(existsSync(join(dir, 'memory.swap.max'))).toBe(false);
    expect(existsSync(join(dir, 'io.weight'))).toBe(false);
    expect(cg.limits).toEqual({ cpus: 2, memoryBytes: 256 * MiB, pids: 512 });
  });

  it('makes the directories, and names the file when a controller file is missing', () => {
    fakeV2(root);
    writeFiles(join(root, 'roost'), { 'cgroup.controllers': 'cpu io memory pids\n', 'cgroup.subtree_control': '' });
    // A plain mkdir makes no control files: as on a kernel where cpu is not enabled for the cgroup.
    expectRoostError(() => createSandboxCgroup(ID, LIMITS, { root }), 'VMM', new RegExp(`${join(root, 'roost', ID, 'cpu.max')} is missing`));
    expect(existsSync(join(root, 'roost', ID))).toBe(true);
  });

  it('reuses an empty cgroup but refuses one with tasks in it', () => {
    const { mkcg } = fakeV2(root);
    mkcg('roost');
    const dir = mkcg(`roost/${ID}`);
    writeFileSync(join(dir, 'cgroup.procs'), '4242\n');
    expectRoostError(() => createSandboxCgroup(ID, LIMITS, { root }), 'ALREADY_EXISTS', /4242/);
    writeFileSync(join(dir, 'cgroup.procs'), '');
    const longAgo = new Date(Date.now() - 3_600_000);
    utimesSync(dir, longAgo, longAgo);
    expect(createSandboxCgroup(ID, { ...LIMITS, cpus: 1 }, { root }).limits.cpus).toBe(1);
    // Reused, it is new to a sweep: another runtime must not take it for a leftover between its making and its VM's start.
    expect(Date.now() - statSync(dir).mtimeMs).toBeLessThan(60_000);
    expect(sweepSandboxCgroups(() => true, { root })).toEqual([]);
  });

  it('validates the id and the limits', () => {
    fakeV2(root);
    expectRoostError(() => createSandboxCgroup('../etc', LIMITS, { root }), 'INVALID_ARGUMENT', /sandbox id/);
    expectRoostError(() => createSandboxCgroup('0123456789AB', LIMITS, { root }), 'INVALID_ARGUMENT');
    for (const bad of [
      { cpus: 0 },
      { cpus: 1.5 },
      { memoryBytes: 16 * MiB - 1 },
      { memoryBytes: Number.NaN },
      { pids: 15 },
      { ioWeight: 0 },
      { ioWeight: 10_001 },
      { ioWeight: 2.5 },
    ]) {
      const field = Object.keys(bad)[0]!;
      expectRoostError(() => createSandboxCgroup(ID, { ...LIMITS, ...bad }, { root }), 'INVALID_ARGUMENT', new RegExp(field));
    }
    expect(existsSync(join(root, 'roost'))).toBe(false);
  });

  it('opens an existing cgroup with its limits, and null for one that does not exist', () => {
    const { mkcg } = fakeV2(root);
    mkcg('roost');
    const dir = mkcg(`roost/${ID}`);
    createSandboxCgroup(ID, LIMITS, { root });
    const cg = openSandboxCgroup(ID, { root });
    expect(cg?.dirs).toEqual([dir]);
    expect(cg?.limits).toEqual(LIMITS);
    expect(openSandboxCgroup('ffffffffffff', { root })).toBeNull();
    writeFileSync(join(dir, 'cpu.max'), 'max 100000\n');
    writeFileSync(join(dir, 'memory.max'), 'max\n');
    expect(openSandboxCgroup(ID, { root })?.limits).toMatchObject({ cpus: Infinity, memoryBytes: Infinity });
  });

  it('removes the cgroup once no task is left, and reports false while one is', async () => {
    const { mkcg } = fakeV2(root);
    mkcg('roost');
    const dir = mkcg(`roost/${ID}`);
    const cg = createSandboxCgroup(ID, LIMITS, { root });
    writeFileSync(join(dir, 'cgroup.procs'), '4242\n');
    const started = Date.now();
    expect(await cg.remove({ timeoutMs: 100 })).toBe(false);
    expect(Date.now() - started).toBeGreaterThanOrEqual(100);
    expect(existsSync(dir)).toBe(true);
    setTimeout(() => writeFileSync(join(dir, 'cgroup.procs'), ''), 50);
    expect(await cg.remove({ timeoutMs: 2000 })).toBe(true);
    expect(existsSync(dir)).toBe(false);
    expect(existsSync(join(root, 'roost'))).toBe(true);
    expect(await cg.remove()).toBe(true);
  });

  it('sweeps the empty cgroups of sandboxes it is not told to keep', () => {
    const { mkcg } = fakeV2(root);
    mkcg('roost');
    const [kept, stale, busy] = ['aaaaaaaaaaaa', 'bbbbbbbbbbbb', 'cccccccccccc'];
    for (const id of [kept, stale, busy]) mkcg(`roost/${id}`);
    mkcg('roost/not-a-sandbox');
    writeFileSync(join(root, 'roost', busy, 'cgroup.procs'), '4242\n');
    // Another home's (kept): empty and made two minutes ago, a leftover no one else removes; its busy twin stays.
    const [old, oldBusy] = ['dddddddddddd', 'eeeeeeeeeeee'];
    for (const id of [old, oldBusy]) mkcg(`roost/${id}`);
    writeFileSync(join(root, 'roost', oldBusy, 'cgroup.procs'), '4243\n');
    const twoMinutesAgo = new Date(Date.now() - 120_000);
    for (const id of [old, oldBusy]) utimesSync(join(root, 'roost', id), twoMinutesAgo, twoMinutesAgo);
    expect(sweepSandboxCgroups((id) => id !== stale, { root })).toEqual([`roost/${stale}`, `roost/${old}`]);
    expect(existsSync(join(root, 'roost', kept))).toBe(true);
    expect(existsSync(join(root, 'roost', stale))).toBe(false);
    expect(existsSync(join(root, 'roost', busy))).toBe(true);
    expect(existsSync(join(root, 'roost', old))).toBe(false);
    expect(existsSync(join(root, 'roost', oldBusy))).toBe(true);
    expect(existsSync(join(root, 'roost', 'not-a-sandbox'))).toBe(true);
    expect(sweepSandboxCgroups(() => false, { root: join(root, 'nothing-here') })).toEqual([]);
  });
});

describe('sandbox cgroups on a fake v1 tree', () => {
  let root: string;
  beforeEach(() => {
    root = mkdtempSync(join(tmpdir(), 'roost-cgroup-v1-'));
  });
  afterEach(() => rmSync(root, { recursive: true, force: true }));

  it('finds v1 and ignores an empty unified mount', () => {
    fakeV1(root);
    expect(cgroupSupport(root)).toEqual({ version: 1, controllers: ['blkio', 'cpu', 'cpuacct', 'cpuset', 'devices', 'freezer', 'memory', 'pids'] });
  });

  it('uses v1 on a hybrid host whose controllers are on v1, and the unified mount when they are only there', () => {
    fakeV1(root, { unifiedControllers: 'cpu memory pids\n' });
    expect(cgroupSupport(root)?.version).toBe(1);
    const hybrid = mkdtempSync(join(tmpdir(), 'roost-cgroup-hybrid-'));
    try {
      fakeV1(hybrid, { hierarchies: ['devices', 'freezer'], unifiedControllers: 'cpu io memory pids\n' });
      expect(cgroupSupport(hybrid)).toEqual({ version: 2, controllers: ['cpu', 'io', 'memory', 'pids'] });
      fakeV2(join(hybrid, 'unified'), ['cpu', 'io', 'memory', 'pids']).mkcg(`roost/${ID}`);
      const cg = createSandboxCgroup(ID, LIMITS, { root: hybrid });
      expect(cg.dirs).toEqual([join(hybrid, 'unified', 'roost', ID)]);
      expect(cg.limits).toEqual(LIMITS);
    } finally {
      rmSync(hybrid, { recursive: true, force: true });
    }
  });

  it('writes every limit into its controller, one directory per hierarchy', () => {
    const { mkcg } = fakeV1(root);
    mkcg(`roost/${ID}`);
    const cg = createSandboxCgroup(ID, { ...LIMITS, ioWeight: 5000 }, { root });
    expect(cg.version).toBe(1);
    expect(cg.name).toBe(`roost/${ID}`);
    expect(cg.dirs.sort()).toEqual(['blkio', 'cpu', 'cpuacct', 'memory', 'pids'].map((c) => join(root, c, 'roost', ID)));
    const at = (c: string, file: string) => read(join(root, c, 'roost', ID, file));
    expect(at('cpu', 'cpu.cfs_period_us')).toBe('100000');
    expect(at('cpu', 'cpu.cfs_quota_us')).toBe('200000');
    expect(at('memory', 'memory.limit_in_bytes')).toBe(String(256 * MiB));
    expect(at('memory', 'memory.memsw.limit_in_bytes')).toBe(String(256 * MiB));
    expect(at('pids', 'pids.max')).toBe('512');
    expect(at('blkio', 'blkio.weight')).toBe('1000'); // blkio.weight's range is 10-1000
    expect(cg.limits).toEqual({ ...LIMITS, ioWeight: 1000 });
    expect(cg.stats()).toEqual({ memoryBytes: 65536, memoryPeakBytes: 131072, cpuUsageUsec: 5000, oomKills: 2, pids: 1 });
  });

  it('shares one directory between cpu and cpuacct mounted together, and skips files the host lacks', () => {
    const { mkcg } = fakeV1(root, { combinedCpu: true });
    mkcg(`roost/${ID}`, ['memory.memsw.limit_in_bytes', 'blkio.weight']);
    expect(cgroupSupport(root)?.controllers).toEqual(expect.arrayContaining(['cpu', 'cpuacct']));
    const cg = createSandboxCgroup(ID, LIMITS, { root });
    expect(cg.dirs.sort()).toEqual(['blkio', 'cpu,cpuacct', 'memory', 'pids'].map((c) => join(root, c, 'roost', ID)));
    expect(existsSync(join(root, 'memory', 'roost', ID, 'memory.memsw.limit_in_bytes'))).toBe(false);
    expect(cg.limits).toEqual({ cpus: 2, memoryBytes: 256 * MiB, pids: 512 });
    expect(cg.stats().cpuUsageUsec).toBe(5000);
  });

  it('uses blkio.bfq.weight where that is the weight file', () => {
    const { mkcg } = fakeV1(root);
    mkcg(`roost/${ID}`, ['blkio.weight']);
    writeFileSync(join(root, 'blkio', 'roost', ID, 'blkio.bfq.weight'), '100\n');
    expect(createSandboxCgroup(ID, LIMITS, { root }).limits.ioWeight).toBe(200);
    expect(read(join(root, 'blkio', 'roost', ID, 'blkio.bfq.weight'))).toBe('200');
  });

  it('opens, removes and sweeps across every hierarchy', async () => {
    const { mkcg } = fakeV1(root);
    mkcg(`roost/${ID}`);
    createSandboxCgroup(ID, LIMITS, { root });
    const cg = openSandboxCgroup(ID, { root })!;
    expect(cg.limits).toEqual(LIMITS);
    writeFileSync(join(root, 'pids', 'roost', ID, 'cgroup.procs'), '4242\n');
    expect(await cg.remove({ timeoutMs: 50 })).toBe(false);
    expect(existsSync(join(root, 'memory', 'roost', ID))).toBe(false);
    expect(existsSync(join(root, 'pids', 'roost', ID))).toBe(true);
    expect(openSandboxCgroup(ID, { root })).toBeNull();
    writeFileSync(join(root, 'pids', 'roost', ID, 'cgroup.procs'), '');
    mkcg('roost/bbbbbbbbbbbb');
    expect(sweepSandboxCgroups(() => false, { root })).toEqual([`roost/${ID}`, 'roost/bbbbbbbbbbbb']);
    for (const c of ['blkio', 'cpu', 'cpuacct', 'memory', 'pids']) expect(existsSync(join(root, c, 'roost', ID))).toBe(false);
  });
});

/** Why the real-cgroup tests cannot run here, or null when they can. */
function realSkipReason(): string | null {
  if (process.platform !== 'linux' || process.getuid?.() !== 0) return 'not root on Linux';
  if (!cgroupSupport()) return 'no usable cgroup under /sys/fs/cgroup';
  return null;
}
const realSkip = realSkipReason();
if (realSkip) console.warn(`cgroup.test.ts: skipping the tests against /sys/fs/cgroup: ${realSkip}`);

/** Waits for a child to end; its exit code and signal. */
function exited(child: ChildProcess): Promise<{ code: number | null; signal: NodeJS.Signals | null }> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve({ code: child.exitCode, signal: child.signalCode });
  return new Promise((resolve) => child.once('exit', (code, signal) => resolve({ code, signal })));
}

/** Moves a process into every directory of a cgroup, as the jailer does. */
function enter(cg: SandboxCgroup, pid: number): void {
  for (const dir of cg.dirs) writeFileSync(join(dir, 'cgroup.procs'), String(pid));
}

describe.skipIf(realSkip !== null)(`sandbox cgroups in the real /sys/fs/cgroup${realSkip ? ` (skipped: ${realSkip})` : ''}`, () => {
  const children: ChildProcess[] = [];
  const cgroups: SandboxCgroup[] = [];
  afterEach(async () => {
    for (const child of children.splice(0)) {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
      await exited(child);
    }
    for (const cg of cgroups.splice(0)) await cg.remove({ timeoutMs: 5000 });
  });

  it('confines a process with the limits set, counts it, and removes the cgroup when it ends', async () => {
    const id = randomBytes(6).toString('hex');
    const limits: CgroupLimits = { cpus: 1, memoryBytes: 64 * MiB, pids: 64, ioWeight: 300 };
    const cg = createSandboxCgroup(id, limits);
    cgroups.push(cg);
    expect(cg.name).toBe(`roost/${id}`);
    expect(cg.limits).toMatchObject({ cpus: 1, memoryBytes: 64 * MiB, pids: 64 });
    expect(openSandboxCgroup(id)?.limits).toEqual(cg.limits);

    const sleep = spawn('sleep', ['30'], { stdio: 'ignore', detached: false });
    children.push(sleep);
    enter(cg, sleep.pid!);
    const lines = read(`/proc/${sleep.pid}/cgroup`).trim().split('\n');
    for (const controller of ['memory', 'cpu', 'pids']) {
      const line = cg.version === 2 ? lines.find((l) => l.startsWith('0::')) : lines.find((l) => l.split(':')[1]!.split(',').includes(controller));
      expect(line, `${controller} in ${lines.join(' | ')}`).toMatch(new RegExp(`:/roost/${id}$`));
    }
    const file = (name: string) => read(cg.dirs.map((d) => join(d, name)).find((p) => existsSync(p))!).trim();
    if (cg.version === 2) {
      expect(file('cpu.max')).toBe('100000 100000');
      expect(file('memory.max')).toBe(String(64 * MiB));
    } else {
      expect(file('cpu.cfs_quota_us')).toBe('100000');
      expect(file('cpu.cfs_period_us')).toBe('100000');
      expect(file('memory.limit_in_bytes')).toBe(String(64 * MiB));
    }
    expect(file('pids.max')).toBe('64');
    const stats = cg.stats();
    for (const key of ['memoryBytes', 'memoryPeakBytes', 'cpuUsageUsec', 'oomKills', 'pids'] as const) expect(stats[key], key).toEqual(expect.any(Number));
    expect(stats.pids).toBe(1);
    expect(stats.oomKills).toBe(0);

    // Not gone while the process is in it; gone once it has ended.
    expect(await cg.remove({ timeoutMs: 50 })).toBe(false);
    sleep.kill('SIGKILL');
    await exited(sleep);
    expect(await cg.remove()).toBe(true);
    for (const dir of cg.dirs) expect(existsSync(dir)).toBe(false);
    expect(openSandboxCgroup(id)).toBeNull();
  });

  it('OOM-kills a process that allocates past its memory limit, and counts it', async () => {
    const id = randomBytes(6).toString('hex');
    const cg = createSandboxCgroup(id, { cpus: 1, memoryBytes: 32 * MiB, pids: 64 });
    cgroups.push(cg);
    // The shell waits for a line on stdin so the allocation starts only once it is in the cgroup.
    const python = existsSync('/usr/bin/python3') ? '/usr/bin/python3' : 'python3';
    const hog = spawn('sh', ['-c', `read go && exec ${python} -c 'b = b"x" * (100 << 20); print(len(b))'`], { stdio: ['pipe', 'pipe', 'inherit'] });
    children.push(hog);
    enter(cg, hog.pid!);
    hog.stdin!.end('go\n');
    expect(await exited(hog)).toEqual({ code: null, signal: 'SIGKILL' });
    expect(cg.stats().oomKills).toBeGreaterThanOrEqual(1);
    expect(cg.stats().memoryPeakBytes).toBeGreaterThan(16 * MiB);
    expect(await cg.remove()).toBe(true);
  });

  it('sweeps only the empty cgroups keep() rejects', async () => {
    const [stale, busy] = [randomBytes(6).toString('hex'), randomBytes(6).toString('hex')];
    const staleCg = createSandboxCgroup(stale, { cpus: 1, memoryBytes: 64 * MiB, pids: 64 });
    const busyCg = createSandboxCgroup(busy, { cpus: 1, memoryBytes: 64 * MiB, pids: 64 });
    cgroups.push(staleCg, busyCg);
    const sleep = spawn('sleep', ['30'], { stdio: 'ignore' });
    children.push(sleep);
    enter(busyCg, sleep.pid!);
    // Other sandboxes' cgroups on this host are kept: only these two are candidates.
    expect(sweepSandboxCgroups((id) => id !== stale && id !== busy)).toEqual([`roost/${stale}`]);
    for (const dir of staleCg.dirs) expect(existsSync(dir)).toBe(false);
    for (const dir of busyCg.dirs) expect(existsSync(dir)).toBe(true);
  });
});
