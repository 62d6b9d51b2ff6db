import { existsSync, mkdirSync, readFileSync, readdirSync, rmSync, statSync, truncateSync, utimesSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { afterAll, describe, expect, it } from 'vitest';
import type { DoctorReport, SandboxInfo } from '@roost/api';
import { serve } from '@roost/server';
import { ApiClient } from './api-client.js';
import { alive, eventually, runRoost, TestHome, type CliResult } from './helpers.js';

// A damaged roost.db beside a running detached sandbox, through the CLI and real QEMU:
// the database is refused (nothing is removed), and `roost doctor --repair` rebuilds the
// records so the VM is managed again.

const home = new TestHome();
afterAll(() => home.cleanup());

function roost(args: string[]): Promise<CliResult> {
  return runRoost(args, { env: home.env });
}

const dbFile = () => join(home.root, 'roost.db');

async function ps(): Promise<SandboxInfo[]> {
  const r = await roost(['ps', '-a', '--json']);
  expect(r).toMatchObject({ code: 0 });
  return JSON.parse(r.stdout) as SandboxInfo[];
}

async function runDetached(): Promise<{ id: string; pid: number }> {
  const r = await roost(['run', '-d', '--', 'sleep', '600']);
  expect(r).toMatchObject({ code: 0 });
  const id = r.stdout.trim();
  const info = (await ps()).find((s) => s.id === id)!;
  expect(info.status).toBe('running');
  return { id, pid: info.pid! };
}

/** The CLI refuses the home with the doctor's name, and prints no stack. */
function expectRefused(r: CliResult): void {
  expect(r.code).toBe(125);
  expect(r.stderr).toContain('roost doctor --repair');
  expect(r.stderr).not.toMatch(/^\s+at /m);
}

describe('roost doctor', () => {
  it('brings back a running detached sandbox after roost.db was truncated', async () => {
    const { id, pid } = await runDetached();
    const dir = join(home.root, 'sandboxes', id);
    const wrote = await roost(['exec', id, '--', 'sh', '-c', 'echo kept-across-doctor > /root/kept.txt && sync']);
    expect(wrote).toMatchObject({ code: 0 });
    const diskBefore = statSync(join(dir, 'disk.qcow2')).size;

    truncateSync(dbFile(), 0);
    expectRefused(await roost(['ps']));
    expectRefused(await roost(['rm', '-f', id]));
    // Nothing was removed or killed by the refused commands.
    expect(alive(pid)).toBe(true);
    expect(statSync(join(dir, 'disk.qcow2')).size).toBeGreaterThanOrEqual(diskBefore);
    expect(statSync(dbFile()).size).toBe(0);

    const check = await roost(['doctor']);
    expect(check.code).toBe(1);
    expect(check.stdout).toContain('database empty');
    expect(check.stdout).toContain(`sandbox ${id} has no record`);
    expect(statSync(dbFile()).size).toBe(0);

    const repair = await roost(['doctor', '--repair', '--json']);
    expect(repair.code).toBe(0);
    const report = JSON.parse(repair.stdout) as DoctorReport;
    expect(report).toMatchObject({ ok: true, vms: 1, database: { condition: 'empty' } });
    expect(report.findings.map((f) => [f.kind, f.repaired])).toEqual([
      ['database', true],
      ['dir-without-record', true],
    ]);
    expect(statSync(report.database.movedTo!).size).toBe(0);

    const info = (await ps()).find((s) => s.id === id);
    expect(info).toMatchObject({ status: 'running', pid, detached: true });
    const read = await roost(['exec', id, '--', 'cat', '/root/kept.txt']);
    expect(read).toMatchObject({ code: 0, stdout: 'kept-across-doctor\n' });
    expect((await roost(['doctor'])).stdout).toContain('nothing to repair');

    expect(await roost(['rm', '-f', id])).toMatchObject({ code: 0 });
    await eventually(() => !alive(pid), 10_000, 'the VM to exit');
    expect(existsSync(dir)).toBe(false);
  });

  it('moves a database of garbage bytes aside, and re-adopts from its QEMU process a VM that lost its witness too', async () => {
    const { id, pid } = await runDetached();
    const before = (await ps()).find((s) => s.id === id)!;
    rmSync(join(home.root, 'sandboxes', id, 'record.json'));
    writeFileSync(dbFile(), Buffer.alloc(32 * 1024, 'this is no database. '));
    expectRefused(await roost(['ps']));
    const repair = await roost(['doctor', '--repair']);
    expect(repair.code).toBe(0);
    expect(repair.stdout).toContain('database not-a-database');
    const moved = readdirSync(home.root).filter((f) => f.startsWith('roost.db.broken-') && f.endsWith('Z'));
    expect(moved.some((f) => readFileSync(join(home.root, f), 'utf8').startsWith('this is no database'))).toBe(true);
    expect(repair.stdout).toContain(`VM process ${pid} runs in`);
    // What its command line says: resources and accelerator; the rest was only in the record.
    expect((await ps()).find((s) => s.id === id)).toMatchObject({
      status: 'running',
      pid,
      detached: true,
      cpus: before.cpus,
      memoryMiB: before.memoryMiB,
      diskSizeMiB: before.diskSizeMiB,
      accel: before.accel,
    });
    expect(await roost(['exec', id, '--', 'true'])).toMatchObject({ code: 0 });
    expect(await roost(['rm', '-f', id])).toMatchObject({ code: 0 });
    await eventually(() => !alive(pid), 10_000, 'the VM to exit');
  });

  it("refuses another program's SQLite database, and doctor keeps it aside", async () => {
    // The home holds nothing now: only what the refused file is matters.
    for (const f of ['roost.db', 'roost.db-wal', 'roost.db-shm']) rmSync(join(home.root, f), { force: true });
    const other = new Database(dbFile());
    other.exec("CREATE TABLE accounts (id INTEGER PRIMARY KEY, owner TEXT); INSERT INTO accounts (owner) VALUES ('someone')");
    other.close();
    const r = await roost(['ps']);
    expectRefused(r);
    expect(r.stderr).toContain("is not Roost's (it has tables accounts)");
    const repair = await roost(['doctor', '--repair', '--json']);
    expect(repair.code).toBe(0);
    const report = JSON.parse(repair.stdout) as DoctorReport;
    expect(report.database.condition).toBe('foreign');
    const kept = new Database(report.database.movedTo!, { readonly: true });
    expect(kept.prepare('SELECT owner FROM accounts').get()).toEqual({ owner: 'someone' });
    kept.close();
    expect(await ps()).toEqual([]);
  });

  it('goes through the daemon that owns the home (POST /v1/doctor), and moves what nothing describes to lost+found', async () => {
    const daemon = await serve({ home: home.root });
    try {
      const api = new ApiClient({ socketPath: daemon.socketPath }, daemon.token);
      const clean = await api.post<DoctorReport>('/v1/doctor');
      expect(clean).toMatchObject({ status: 200, body: { ok: true, findings: [], database: { condition: 'ok' } } });
      expect((await api.post('/v1/doctor', { repair: 'yes' })).status).toBe(400);

      // A directory nothing describes (no record, no witness, no VM): reported, then moved to lost+found.
      const stray = join(home.root, 'sandboxes', '0123456789ab');
      mkdirSync(stray, { recursive: true });
      writeFileSync(join(stray, 'notes.txt'), 'left by hand');
      // Left alone for a while: beside a running runtime, a fresh one may be a create or remove in progress.
      const past = new Date(Date.now() - 5 * 60_000);
      utimesSync(stray, past, past);
      const check = await roost(['doctor']);
      expect(check.code).toBe(1);
      expect(check.stdout).toContain('dir-without-record');
      const repaired = await api.post<DoctorReport>('/v1/doctor', { repair: true });
      expect(repaired.body).toMatchObject({ ok: true, findings: [{ kind: 'dir-without-record', id: '0123456789ab', repaired: true }] });
      expect(readFileSync(join(home.root, 'lost+found', 'sandboxes', '0123456789ab', 'notes.txt'), 'utf8')).toBe('left by hand');
      expect((await roost(['doctor'])).stdout).toContain('nothing to repair');
    } finally {
      await daemon.close();
    }
  });
});
