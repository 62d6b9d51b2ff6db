import { existsSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import type { SandboxStatus } from '@roost/api';
import { isRoostError, RoostError } from '../errors.js';
import { Runtime } from '../runtime.js';
import { closeStateDbs, stateDb } from '../state/db.js';
import { FakeVmm, type FakeVm, writeFakeAssets } from '../vmm/fake.js';
import { registerVmm } from '../vmm/registry.js';

// The sandbox lifecycle against a fake VMM (vmm/fake.ts): no QEMU, no kernel.
// The records, events, agent connection, boot and snapshot code are the real ones.

let home: string;
let vmm: FakeVmm;
let runtime: Runtime;

/** A home with assets that exist (their contents are never read by the fake). */
async function makeHome(): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'roost-unit-'));
  writeFakeAssets(join(dir, 'cache'));
  return dir;
}

function vmOf(id: string): FakeVm {
  const vm = vmm.vmOf(join(home, 'sandboxes', id));
  if (!vm) throw new Error(`no running fake VM for ${id}`);
  return vm;
}

async function events(id: string): Promise<string[]> {
  const out: string[] = [];
  const ac = new AbortController();
  setTimeout(() => ac.abort(), 50);
  for await (const e of runtime.events({ after: 0, sandboxId: id, signal: ac.signal })) out.push(e.type);
  return out;
}

async function until(check: () => boolean, ms = 2_000): Promise<void> {
  const end = Date.now() + ms;
  while (!check()) {
    if (Date.now() > end) throw new Error('condition not met in time');
    await new Promise((r) => setTimeout(r, 5));
  }
}

const small = { network: 'none', memoryMiB: 64 } as const;

beforeEach(async () => {
  home = await makeHome();
  vmm = new FakeVmm();
  runtime = await Runtime.open({ home, vmm });
});

afterEach(async () => {
  await runtime.close();
  closeStateDbs();
  await rm(home, { recursive: true, force: true });
});

describe('sandbox lifecycle on a fake VMM', () => {
  it('creates, stops, starts and removes, recording each step before acting', async () => {
    const sb = await runtime.create(small);
    expect(sb.status).toBe('running');
    expect(sb.info.agentVersion).toBe('fake-agent 1');
    expect(sb.vmPid).toBe(vmOf(sb.id).pid);
    expect(existsSync(join(sb.dir, 'disk.qcow2'))).toBe(true);

    const first = vmOf(sb.id);
    await sb.stop();
    expect(sb.status).toBe('stopped');
    expect(sb.info.reason).toBe('stopped');
    // The agent powered the VM off: it was neither asked to quit nor killed.
    expect(first.calls).not.toContain('kill');
    expect(first.calls).not.toContain('quit');

    await sb.start();
    expect(sb.status).toBe('running');
    expect(vmm.started).toHaveLength(2);
    await sb.kill();
    expect(sb.status).toBe('stopped');
    expect(sb.info.reason).toBe('killed');

    await sb.remove();
    await expect(runtime.get(sb.id)).rejects.toMatchObject({ code: 'NOT_FOUND' });
    expect(existsSync(sb.dir)).toBe(false);
    expect(await events(sb.id)).toEqual(['sandbox.created', 'sandbox.started', 'sandbox.exited', 'sandbox.started', 'sandbox.exited', 'sandbox.deleted']);
  });

  it('pauses and resumes through the VMM, and refuses both in the wrong state', async () => {
    const sb = await runtime.create(small);
    await sb.pause();
    expect(sb.status).toBe('paused');
    expect(await sb.vmStatus()).toBe('paused');
    await sb.pause(); // a paused one is left as is
    await sb.resume();
    expect(sb.status).toBe('running');
    expect(await sb.vmStatus()).toBe('running');
    expect(vmOf(sb.id).calls.filter((c) => c === 'pause' || c === 'resume')).toEqual(['pause', 'resume']);
    await sb.stop();
    await expect(sb.pause()).rejects.toMatchObject({ code: 'INVALID_STATE' });
    await expect(sb.resume()).rejects.toMatchObject({ code: 'INVALID_STATE' });
    await expect(sb.vmStatus()).rejects.toMatchObject({ code: 'INVALID_STATE' });
  });

  it('stops a paused sandbox by letting it run to power off', async () => {
    const sb = await runtime.create(small);
    const vm = vmOf(sb.id);
    await sb.pause();
    await sb.stop();
    expect(sb.status).toBe('stopped');
    expect(vm.calls).toContain('resume');
    expect(vm.calls).not.toContain('kill');
  });

  it('records a VM that exits on its own as failed', async () => {
    const sb = await runtime.create(small);
    vmOf(sb.id).powerOff();
    await until(() => sb.status === 'failed');
    expect(sb.info.reason).toMatch(/the VM exited unexpectedly|the guest agent went away/);
    await expect(sb.commands.run('true')).rejects.toMatchObject({ code: 'INVALID_STATE' });
  });

  it('fails a guest that breaks the protocol, and kills its VM', async () => {
    vmm.guest = 'garbage';
    const sb = await runtime.create(small);
    const vm = vmOf(sb.id);
    await until(() => sb.status === 'failed');
    expect(sb.info.reason).toMatch(/broke the agent protocol/);
    await until(() => vm.hasExited);
    expect(vm.calls).toContain('kill');
  });

  it('takes snapshots: the guest is frozen around a save of the paused VM, and left running', async () => {
    const sb = await runtime.create(small);
    const vm = vmOf(sb.id);
    const snap = await sb.snapshot({ name: 'snap-1' });
    expect(snap).toMatchObject({ name: 'snap-1', kind: 'user', frozen: true, sourceSandbox: sb.id, memoryMiB: 64 });
    expect(vm.calls.filter((c) => c !== 'release')).toEqual(['pause', 'saveState', 'resume']);
    expect(vm.frozen).toBe(false);
    expect(sb.status).toBe('running');
    expect(await sb.vmStatus()).toBe('running');
    await expect(sb.snapshot({ name: 'snap-1' })).rejects.toMatchObject({ code: 'ALREADY_EXISTS' });
    await expect(sb.snapshot({ name: '-bad' })).rejects.toMatchObject({ code: 'INVALID_ARGUMENT' });

    // A paused sandbox is let run for the freeze, and paused again after.
    await sb.pause();
    await sb.snapshot({ name: 'snap-2' });
    expect(sb.status).toBe('paused');
    expect(await sb.vmStatus()).toBe('paused');

    // A restore has the snapshot's resources; giving one is INVALID_ARGUMENT.
    await expect(runtime.create({ snapshot: 'snap-1', cpus: 2 })).rejects.toMatchObject({ code: 'INVALID_ARGUMENT' });
    const copy = await runtime.create({ snapshot: 'snap-1' });
    expect(copy.status).toBe('running');
    expect(copy.info).toMatchObject({ snapshot: snap.id, memoryMiB: 64 });
    expect(vmOf(copy.id).config.restore?.memory).toBe(join(home, 'snapshots', snap.id, 'memory'));
    // The snapshot has a dependent now.
    await expect(runtime.snapshots.remove('snap-1')).rejects.toSatisfy(isRoostError);
    await copy.remove({ force: true });
    await runtime.snapshots.remove('snap-1');
    expect((await runtime.snapshots.list()).map((s) => s.name)).toEqual(['snap-2']);
  });

  it('snapshots a sandbox whose agent predates capabilities unfrozen, and says what it cannot do', async () => {
    vmm.guest = 'old';
    const sb = await runtime.create(small);
    expect(sb.info.agentVersion).toBe('fake-agent 0');
    const snap = await sb.snapshot({ name: 'old-1' });
    // No FREEZE was sent (the fake drops the link if it is): the snapshot is taken as on a freeze timeout.
    expect(snap).toMatchObject({ name: 'old-1', frozen: false });
    expect(sb.status).toBe('running');
    await expect(sb.files.read('/etc/hostname')).rejects.toMatchObject({ code: 'AGENT', details: { capability: 'CALL' } });
    expect(await sb.ping()).toBeGreaterThanOrEqual(0);
  });

  it('refuses to snapshot a stopped sandbox', async () => {
    const sb = await runtime.create(small);
    await sb.stop();
    await expect(sb.snapshot()).rejects.toMatchObject({ code: 'INVALID_STATE' });
  });

  it("refuses a snapshot name that is another snapshot's id: an id keeps meaning its snapshot", async () => {
    const sb = await runtime.create(small);
    const first = await sb.snapshot({ name: 'first' });
    await expect(sb.snapshot({ name: first.id })).rejects.toMatchObject({ code: 'INVALID_ARGUMENT', message: expect.stringMatching(/may not look like ids/) });
    expect((await runtime.snapshots.get(first.id)).name).toBe('first');
    await expect(runtime.volumes.create({ name: '0123456789ab' })).rejects.toMatchObject({ code: 'INVALID_ARGUMENT' });
  });

  it('a template whose build fails with --warm is not created; a lazy one stays defined', async () => {
    vmm.guest = 'exit';
    await expect(runtime.templates.create({ name: 'broken', warm: true, timeoutMs: 5_000 })).rejects.toMatchObject({ code: 'BOOT_FAILED' });
    expect(await runtime.templates.list()).toEqual([]);
    expect((await runtime.snapshots.list()).filter((x) => x.kind === 'template')).toEqual([]);
    // The name is free again, and a template defined without building is kept as defined.
    await runtime.templates.create({ name: 'broken' });
    expect((await runtime.templates.list()).map((t) => [t.name, t.snapshot])).toEqual([['broken', null]]);
  });

  it('says how to get out of a state: a command in a stopped sandbox names start, a paused one resume', async () => {
    const sb = await runtime.create(small);
    await sb.pause();
    await expect(sb.pause()).resolves.toBeUndefined();
    await sb.resume();
    await sb.stop();
    const start = new RegExp(`is stopped.*: cannot .*start it first \\(\`roost start ${sb.id}\`, or \`sandbox.start\\(\\)\`\\)`);
    await expect(sb.commands.run('true')).rejects.toMatchObject({ code: 'INVALID_STATE', message: expect.stringMatching(start) });
    await expect(sb.files.read('/etc/hostname')).rejects.toMatchObject({ code: 'INVALID_STATE', message: expect.stringMatching(start) });
    await expect(sb.snapshot()).rejects.toMatchObject({ message: expect.stringMatching(start) });
    await expect(sb.pause()).rejects.toMatchObject({ message: expect.stringMatching(start) });
  });

  it('forks copies that depend on a fork snapshot removed with the last of them', async () => {
    const sb = await runtime.create({ ...small, labels: { team: 'a' } });
    const copies = await sb.fork({ count: 2 });
    expect(copies).toHaveLength(2);
    for (const c of copies) expect(c.info).toMatchObject({ status: 'running', labels: { team: 'a' } });
    const forkSnap = (await runtime.snapshots.list()).find((s) => s.kind === 'fork');
    expect(forkSnap).toBeDefined();
    await copies[0]!.remove({ force: true });
    expect((await runtime.snapshots.list()).some((s) => s.id === forkSnap!.id)).toBe(true);
    await copies[1]!.remove({ force: true });
    expect(await runtime.snapshots.list()).toEqual([]);
    await expect(sb.fork({ count: 0 })).rejects.toMatchObject({ code: 'INVALID_ARGUMENT' });
  });
});

describe('boot failures on a fake VMM', () => {
  it('a VM that exits while it boots is BOOT_FAILED with its console, and leaves no sandbox', async () => {
    vmm.guest = 'exit';
    const err = await runtime.create(small).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(RoostError);
    expect((err as RoostError).code).toBe('BOOT_FAILED');
    expect((err as RoostError).message).toMatch(/fake kernel: panic/);
    // The VM had started: the record is kept, failed, for `roost logs`.
    const [info] = await runtime.list();
    expect(info).toMatchObject({ status: 'failed' });
  });

  it('an agent that never answers is BOOT_FAILED after the boot timeout', async () => {
    vmm.guest = 'silent';
    const started = Date.now();
    const err = await runtime.create({ ...small, timeoutMs: 300 }).catch((e: unknown) => e);
    expect(err).toMatchObject({ code: 'BOOT_FAILED' });
    expect((err as Error).message).toMatch(/did not boot within 300 ms: raise the boot timeout \(timeoutMs\)/);
    // No file is named (a failed create's directory may be gone): the console's tail is in the message and details.
    expect((err as Error).message).not.toMatch(/console\.log/);
    expect(err).toMatchObject({ details: { option: 'timeoutMs', timeoutMs: 300, console: expect.any(Array) } });
    expect(Date.now() - started).toBeLessThan(5_000);
    expect(vmm.started[0]!.calls).toContain('kill');
    expect((await runtime.list())[0]?.status).toBe('failed');
  });

  it('an aborted create is ABORTED', async () => {
    vmm.guest = 'silent';
    const ac = new AbortController();
    setTimeout(() => ac.abort(), 50);
    await expect(runtime.create({ ...small, signal: ac.signal })).rejects.toMatchObject({ code: 'ABORTED' });
  });

  it('a start that fails to boot records failed, and a later start boots', async () => {
    const sb = await runtime.create(small);
    await sb.stop();
    vmm.guest = 'exit';
    await expect(sb.start()).rejects.toMatchObject({ code: 'BOOT_FAILED' });
    expect(sb.status).toBe('failed');
    vmm.guest = 'answer';
    await sb.start();
    expect(sb.status).toBe('running');
  });

  it('bad options fail before anything is recorded', async () => {
    await expect(runtime.create({ ...small, cpus: 0 })).rejects.toMatchObject({ code: 'INVALID_ARGUMENT' });
    await expect(runtime.create({ ...small, volumes: [{ source: '/nonexistent-dir-for-roost', target: '/data' }] })).rejects.toMatchObject({
      code: 'INVALID_ARGUMENT',
    });
    await expect(runtime.create({ network: 'none', snapshot: 'nope' })).rejects.toMatchObject({ code: 'NOT_FOUND' });
    expect(await runtime.list()).toEqual([]);
    expect(vmm.started).toEqual([]);
  });
});

describe('recovery on a fake VMM', () => {
  async function reopen(): Promise<void> {
    await runtime.close();
    runtime = await Runtime.open({ home, vmm });
  }

  it('re-attaches to a running detached sandbox, and continues one a dead runtime left paused', async () => {
    const sb = await runtime.create({ ...small, detached: true });
    const vm = vmOf(sb.id);
    // A runtime that died mid-snapshot leaves the VM stopped while the record says running.
    vm.state = 'paused';
    await reopen();
    const again = await runtime.get(sb.id);
    expect(again.status).toBe('running');
    expect(again.vmPid).toBe(vm.pid);
    expect(vm.state).toBe('running');
    expect(await again.ping()).toBeGreaterThanOrEqual(0);
    await again.stop();
    expect(again.status).toBe('stopped');
  });

  it('records a detached sandbox whose VM died meanwhile as failed', async () => {
    const sb = await runtime.create({ ...small, detached: true });
    await runtime.close();
    // Another process opens the home, and finds no VM with the recorded pid.
    runtime = await Runtime.open({ home, vmm: new FakeVmm() });
    const info = (await runtime.get(sb.id)).info;
    expect(info).toMatchObject({ status: 'failed', pid: null, reason: 'the VM process is gone (it crashed or was killed while no runtime watched it)' });
  });

  it('a closed runtime no longer writes the record of a detached sandbox whose VM dies later', async () => {
    const sb = await runtime.create({ ...small, detached: true });
    const vm = vmOf(sb.id);
    await runtime.close();
    // The home is nobody's now; the VM dies while no runtime watches it.
    vm.powerOff();
    await until(() => vm.hasExited);
    await new Promise((r) => setTimeout(r, 20));
    const row = stateDb(home).prepare('SELECT status FROM sandboxes WHERE id = ?').get(sb.id) as { status: string };
    expect(row.status).toBe('running');
    // The next runtime is the one that finds out, and says so.
    runtime = await Runtime.open({ home, vmm });
    expect((await runtime.get(sb.id)).info).toMatchObject({
      status: 'failed',
      reason: 'the VM process is gone (it crashed or was killed while no runtime watched it)',
    });
  });

  it('kills the VM of a record a dead runtime left creating before it recorded the pid', async () => {
    const sb = await runtime.create({ ...small, detached: true });
    const vm = vmOf(sb.id);
    await runtime.close();
    // As if the runtime died between starting the (detached) VM and recording its pid.
    stateDb(home)
      .prepare(`UPDATE sandboxes SET status = 'creating', pid = NULL, info_json = json_set(info_json, '$.status', 'creating', '$.pid', NULL) WHERE id = ?`)
      .run(sb.id);
    runtime = await Runtime.open({ home, vmm });
    await until(() => vm.hasExited);
    expect((await runtime.get(sb.id)).info).toMatchObject({ status: 'failed', pid: null, reason: 'the runtime exited while it booted' });
  });

  it('kills what a closing runtime owned, and reopens it as stopped', async () => {
    const sb = await runtime.create(small);
    const vm = vmOf(sb.id);
    await reopen();
    expect(vm.hasExited).toBe(true);
    expect((await runtime.get(sb.id)).info).toMatchObject({ status: 'stopped', reason: 'its runtime closed' });
  });
});

describe('VMM registry', () => {
  it('opens a runtime on a registered backend by name, and refuses unknown or taken names', async () => {
    const named = new FakeVmm();
    registerVmm('fake-unit', () => named);
    expect(() => registerVmm('fake-unit', () => named)).toThrow(expect.objectContaining({ code: 'ALREADY_EXISTS' }));
    await runtime.close();
    await expect(Runtime.open({ home, vmm: 'no-such-vmm' })).rejects.toMatchObject({ code: 'INVALID_ARGUMENT' });
    runtime = await Runtime.open({ home, vmm: 'fake-unit' });
    const sb = await runtime.create(small);
    expect(named.started).toHaveLength(1);
    expect(sb.status satisfies SandboxStatus).toBe('running');
  });
});
