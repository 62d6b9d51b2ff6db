import { execFileSync } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync, statfsSync, symlinkSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { CommandHandleApi, RoostEvent } from '@roost/api';
import { RoostClient, type RemoteSandbox } from '@roost/client';
import { roostHome, Runtime } from '@roost/core';
import { closeStateDbs } from '@roost/core/internal';
import { serve, type ServeHandle } from '@roost/server';
import { ApiClient } from './api-client.js';
import { eventually, fillFilesystem, qemusOf, runRoost } from './helpers.js';

/*
 * A Roost home on a full filesystem (a small tmpfs, mounted as root), with a
 * real VM, through `roost serve` (responses checked against
 * docs/openapi.json), the SDK and the CLI:
 * - a guest write the host cannot complete pauses the sandbox with the
 *   reason (QEMU's werror=stop), instead of an I/O error in the guest;
 *   resuming on a disk still full pauses it again; once space is freed,
 *   resume completes the write and the guest's filesystem is intact;
 * - what happened while SQLite could not write (the pause, an exec) is in
 *   the event log afterwards, in order;
 * - a snapshot on a full home is RESOURCE_EXHAUSTED / 507, and the CLI says
 *   so without a stack trace; `rm -f` removes the VM and the record.
 */

type Json = Record<string, unknown>;
type Info = { id: string; status: string; reason?: string };

const asRoot = process.getuid?.() === 0;
const MiB = 2 ** 20;

let mount = '';
let mounted = false;
let daemon: ServeHandle | undefined;
let api: ApiClient;
let client: RoostClient;
let id = '';
const filler = () => join(mount, 'filler');

/** Fills the filesystem of the home (through `path`, a file on it) but for `leaveBytes`. */
function fill(path: string, leaveBytes = 0): void {
  fillFilesystem(mount, path, leaveBytes);
}

function free(): number {
  const st = statfsSync(mount);
  return st.bavail * st.bsize;
}

async function status(): Promise<Info> {
  const r = await api.get<Info>(`/v1/sandboxes/${id}`);
  expect(r.status).toBe(200);
  return r.body;
}

async function sh(cmd: string): Promise<Json> {
  const r = await api.post<Json>(`/v1/sandboxes/${id}/exec`, { cmd }, { headers: { accept: 'application/json' } });
  expect(r.status, cmd).toBe(200);
  return r.body;
}

async function eventsOf(sandboxId: string): Promise<RoostEvent[]> {
  const out: RoostEvent[] = [];
  const ac = new AbortController();
  const timer = setTimeout(() => ac.abort(), 1_500);
  try {
    for await (const e of client.events({ after: 0, sandboxId, signal: ac.signal })) out.push(e);
  } catch (e) {
    if (!ac.signal.aborted) throw e;
  } finally {
    clearTimeout(timer);
  }
  return out;
}

beforeAll(async () => {
  if (!asRoot) return;
  mount = mkdtempSync(join(tmpdir(), 'roost-full-'));
  execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=48m,mode=0700', 'roost-full-disk', mount]);
  mounted = true;
  // The built kernel, agent and root filesystems are shared by path (as test/helpers.ts does): only the sandbox is on the tmpfs.
  symlinkSync(process.env.ROOST_TEST_CACHE ?? join(roostHome(), 'cache'), join(mount, 'cache'));
  daemon = await serve({ home: mount });
  api = new ApiClient({ socketPath: daemon.socketPath }, daemon.token);
  client = new RoostClient({ host: `unix://${daemon.socketPath}`, token: daemon.token });
  const created = await api.post<Info>('/v1/sandboxes', { network: 'none', memoryMiB: 128, timeoutMs: 60_000, detached: true });
  expect(created.status).toBe(201);
  id = created.body.id;
});

afterAll(async () => {
  api?.close();
  await client?.close().catch(() => {});
  await daemon?.close().catch(() => {});
  if (mount) {
    for (const pid of qemusOf(mount)) {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        // gone
      }
    }
    await eventually(() => qemusOf(mount).length === 0, 10_000, 'no QEMU process left').catch(() => {});
  }
  // This process's connection to the home's roost.db keeps the mount busy.
  closeStateDbs();
  if (mounted) {
    try {
      execFileSync('umount', [mount]);
    } catch {
      execFileSync('umount', ['-l', mount]);
    }
  }
  if (mount) rmSync(mount, { recursive: true, force: true });
});

describe.skipIf(!asRoot)('a Roost home on a full disk', () => {
  let writer: RemoteSandbox;
  let dd: CommandHandleApi;

  it('pauses the sandbox with the reason when a guest write cannot be completed, and again on a resume while still full', async () => {
    await sh('sync');
    fill(filler());
    expect(free()).toBeLessThan(64 * 1024);
    writer = await client.get(id);
    // 20 MiB of data the host must store in the sandbox's qcow2 (on the full tmpfs), then its checksum.
    dd = await writer.commands.start('dd if=/dev/urandom of=/root/x bs=1M count=20 conv=fsync 2>/dev/null && sha256sum /root/x > /root/x.sum && sync');
    await eventually(async () => (await status()).status === 'paused', 60_000, 'the sandbox paused');
    expect(await status()).toMatchObject({ status: 'paused', reason: 'host disk full' });

    // Resuming retries the write: the disk is still full, so it pauses again, same reason, and the answer says so (507).
    const resumed = await api.post<Json>(`/v1/sandboxes/${id}/resume`);
    expect(resumed.status).toBe(507);
    expect(resumed.body).toMatchObject({ error: { code: 'RESOURCE_EXHAUSTED', details: { resource: 'disk' } } });
    expect((resumed.body as { error: { message: string } }).error.message).toMatch(
      /^sandbox \w+ is paused again: the disk holding \S+ is full: free space and retry$/,
    );
    expect(await status()).toMatchObject({ status: 'paused', reason: 'host disk full' });
  });

  it('resumes once space is freed: the write completes and the guest filesystem is intact; the events are all there, in order', async () => {
    rmSync(filler());
    const resumed = await api.post<Info>(`/v1/sandboxes/${id}/resume`);
    expect(resumed.status).toBe(200);
    const result = await dd.wait();
    expect(result.exitCode, result.stderr).toBe(0);
    expect((await status()).status).toBe('running');
    expect((await status()).reason).toBeUndefined();
    const check = await sh(
      'sha256sum -c /root/x.sum && echo more > /root/y && cat /root/y && dmesg | grep -ci -e "i/o error" -e "EXT4-fs error" -e "remounting" || true',
    );
    expect(check).toMatchObject({ exitCode: 0 });
    expect(check.stdout).toBe('/root/x: OK\nmore\n0\n');

    const events = await eventsOf(id);
    const types = events.map((e) => e.type);
    const paused = events.filter((e) => e.type === 'sandbox.paused');
    expect(paused.length).toBeGreaterThanOrEqual(2);
    expect(paused[0]!.data).toMatchObject({ reason: 'host disk full' });
    expect(types.lastIndexOf('sandbox.resumed')).toBeGreaterThan(types.lastIndexOf('sandbox.paused'));
    // The dd's exec ended after the last resume, and nothing is out of order.
    const ddExit = events.findIndex((e) => e.type === 'exec.exited' && e.data.id === dd.id);
    expect(ddExit).toBeGreaterThan(types.lastIndexOf('sandbox.resumed'));
    expect(events.map((e) => e.id)).toEqual([...events.map((e) => e.id)].sort((a, b) => a - b));
    expect(events.map((e) => e.time)).toEqual([...events.map((e) => e.time)].sort());
  });

  it('a snapshot on a full home is RESOURCE_EXHAUSTED with HTTP 507, the CLI says so without a stack trace, and commands still run', async () => {
    await sh('sync');
    // Room for the guest's own small writes (the freeze's journal commit), not for its memory image.
    fill(filler(), 2 * MiB);
    const snap = await api.post<Json>(`/v1/sandboxes/${id}/snapshot`, { name: 'full' });
    expect(snap.status, JSON.stringify(snap.body)).toBe(507);
    const error = (snap.body as { error: { code: string; message: string; details: Json } }).error;
    expect(error.code).toBe('RESOURCE_EXHAUSTED');
    expect(error.message).toMatch(/^the disk holding \S+ is full: free space and retry$/);
    expect(error.details).toMatchObject({ resource: 'disk', errno: 'ENOSPC' });
    expect(await status()).toMatchObject({ status: 'running' });

    fill(filler());
    const cli = await runRoost(['snapshot', id, 'full2'], { env: { ...process.env, ROOST_HOME: mount } });
    expect(cli.code).toBe(125);
    expect(cli.stderr).toMatch(/is full: free space and retry/);
    expect(cli.stderr).not.toMatch(/\n\s+at /);

    // A command while nothing can be written to roost.db: it runs, and its events wait in memory.
    const echo = await sh('echo still here');
    expect(echo).toMatchObject({ exitCode: 0, stdout: 'still here\n' });
  });

  it('rm -f on a full home removes the VM and the record; what waited in memory was written first', async () => {
    const pid = (await status()) as Info & { pid: number };
    const cli = await runRoost(['rm', '-f', id], { env: { ...process.env, ROOST_HOME: mount } });
    expect(cli.stderr).not.toMatch(/\n\s+at /);
    expect(cli.code, cli.stderr).toBe(0);
    expect((await api.get(`/v1/sandboxes/${id}`)).status).toBe(404);
    expect(existsSync(join(mount, 'sandboxes', id))).toBe(false);
    await eventually(() => qemusOf(mount).length === 0, 10_000, 'the VM is gone');
    expect(pid.pid).toBeGreaterThan(0);

    const events = await eventsOf(id);
    const types = events.map((e) => e.type);
    expect(types.at(-1)).toBe('sandbox.deleted');
    // The `echo` run while the database was full: its start and exit were written before the deletion.
    expect(types.filter((t) => t === 'exec.exited').length).toBeGreaterThanOrEqual(3);

    // Without a daemon, on a home with no room at all: the CLI cannot even open roost.db (SQLite cannot make its
    // shared-memory file), and says why, without a stack trace; a new sandbox is refused the same way.
    await daemon!.close();
    daemon = undefined;
    closeStateDbs();
    fill(filler());
    for (const args of [
      ['ps', '-a'],
      ['run', '--network', 'none', '--', 'true'],
    ]) {
      const r = await runRoost(args, { env: { ...process.env, ROOST_HOME: mount } });
      expect(r.code, args.join(' ')).toBe(125);
      expect(r.stderr).toBe(`roost: the disk holding ${join(mount, 'roost.db')} is full: free space and retry\n`);
    }
    expect(qemusOf(mount)).toEqual([]);

    // A new runtime on the home, once there is room, finds no record.
    rmSync(filler());
    const runtime = await Runtime.open({ home: mount });
    try {
      expect((await runtime.list()).map((s) => s.id)).not.toContain(id);
    } finally {
      await runtime.close();
    }
  });
});
