import { existsSync, readdirSync, readFileSync, rmSync, statSync, truncateSync, utimesSync, writeFileSync } from 'node:fs';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import type { DoctorReport } from '@roost/api';
import { Runtime } from './runtime.js';
import { closeStateDbs, stateDb } from './state/db.js';
import { WITNESS_FILE } from './state/witness.js';
import { FakeVmm, writeFakeAssets } from './vmm/fake.js';

// roost doctor and recovery on a fake VMM (vmm/fake.ts): no QEMU. The
// records, witnesses, database checks and the doctor are the real ones.

let home: string;
let vmm: FakeVmm;
let runtime: Runtime | null;

async function makeHome(): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'roost-doctor-'));
  writeFakeAssets(join(dir, 'cache'));
  return dir;
}

const small = { network: 'none', memoryMiB: 64 } as const;
const dbFile = () => join(home, 'roost.db');
const kinds = (r: DoctorReport) => r.findings.map((f) => f.kind).sort();

async function open(): Promise<Runtime> {
  runtime = await Runtime.open({ home, vmm });
  return runtime;
}

async function close(): Promise<void> {
  await runtime?.close();
  runtime = null;
  closeStateDbs();
}

/** A detached sandbox running in the fake VMM, its runtime closed (the home is nobody's). */
async function detachedSandbox(): Promise<{ id: string; pid: number }> {
  const rt = await open();
  const sb = await rt.create({ ...small, detached: true, labels: { app: 'web' } });
  const found = { id: sb.id, pid: sb.vmPid! };
  await close();
  return found;
}

beforeEach(async () => {
  home = await makeHome();
  vmm = new FakeVmm();
  runtime = null;
});

afterEach(async () => {
  await close();
  for (const vm of vmm.started) vm.kill();
  await rm(home, { recursive: true, force: true });
});

describe('a truncated database beside a running detached sandbox', () => {
  it('is refused, checked without a change, then repaired: the VM is re-adopted with its record', async () => {
    const { id, pid } = await detachedSandbox();
    truncateSync(dbFile(), 0);

    await expect(Runtime.open({ home, vmm })).rejects.toMatchObject({ code: 'INVALID_STATE', message: expect.stringContaining('roost doctor --repair') });
    // Nothing was removed by the refused open.
    expect(existsSync(join(home, 'sandboxes', id, 'disk.qcow2'))).toBe(true);

    const check = await Runtime.doctor({ home, vmm });
    expect(check).toMatchObject({ repair: false, ok: false, vms: 1, database: { condition: 'empty' } });
    expect(kinds(check)).toEqual(['database', 'dir-without-record']);
    expect(check.findings.every((f) => !f.repaired)).toBe(true);
    expect(statSync(dbFile()).size).toBe(0);

    const repaired = await Runtime.doctor({ home, vmm, repair: true });
    expect(repaired).toMatchObject({ repair: true, ok: true, database: { condition: 'empty' } });
    const moved = repaired.database.movedTo!;
    expect(statSync(moved).size).toBe(0); // kept, never deleted
    expect(kinds(repaired)).toEqual(['database', 'dir-without-record']);
    closeStateDbs();

    const rt = await open();
    const sb = await rt.get(id);
    expect(sb.info).toMatchObject({ status: 'running', pid, detached: true, labels: { app: 'web' } });
    expect(sb.vmPid).toBe(pid);
    expect(await sb.ping()).toBeGreaterThanOrEqual(0);
    const events: string[] = [];
    const ac = new AbortController();
    setTimeout(() => ac.abort(), 50);
    for await (const e of rt.events({ after: 0, sandboxId: id, signal: ac.signal })) events.push(e.type);
    expect(events).toContain('sandbox.recovered');
    // Healthy now.
    expect((await rt.doctor()).findings).toEqual([]);
    await sb.remove({ force: true });
    expect(existsSync(join(home, 'sandboxes', id))).toBe(false);
  });

  it('re-adopts a VM whose directory has neither record nor witness, from the process alone', async () => {
    const { id, pid } = await detachedSandbox();
    rmSync(join(home, 'sandboxes', id, WITNESS_FILE));
    truncateSync(dbFile(), 0);
    const report = await Runtime.doctor({ home, vmm, repair: true });
    expect(report.findings.find((f) => f.kind === 'vm-without-record')).toMatchObject({ id, repaired: true });
    closeStateDbs();
    const sb = await (await open()).get(id);
    expect(sb.info).toMatchObject({ status: 'running', pid, detached: true, memoryMiB: 64, cpus: 1 });
    expect(await sb.ping()).toBeGreaterThanOrEqual(0);
  });

  it('records stopped sandboxes again from their witnesses, and moves what nothing describes to lost+found', async () => {
    const rt = await open();
    const stopped = await rt.create({ ...small, detached: true });
    await stopped.stop();
    await close();
    const stray = join(home, 'sandboxes', '0123456789ab');
    await mkdir(stray);
    await writeFile(join(stray, 'disk.qcow2'), 'user data');
    truncateSync(dbFile(), 0);
    const report = await Runtime.doctor({ home, vmm, repair: true });
    expect(report.ok).toBe(true);
    expect(report.findings.find((f) => f.id === '0123456789ab')?.message).toContain('lost+found');
    expect(readFileSync(join(home, 'lost+found', 'sandboxes', '0123456789ab', 'disk.qcow2'), 'utf8')).toBe('user data');
    closeStateDbs();
    expect((await (await open()).get(stopped.id)).info).toMatchObject({ status: 'stopped', pid: null });
  });
});

describe('databases that are not Roost', () => {
  it('moves a file of garbage bytes aside and rebuilds', async () => {
    const { id } = await detachedSandbox();
    writeFileSync(dbFile(), Buffer.alloc(16384, 'not sqlite '));
    await expect(Runtime.open({ home, vmm })).rejects.toMatchObject({ code: 'INVALID_STATE' });
    const report = await Runtime.doctor({ home, vmm, repair: true });
    expect(report.database.condition).toBe('not-a-database');
    expect(readFileSync(report.database.movedTo!, 'utf8').startsWith('not sqlite')).toBe(true);
    closeStateDbs();
    expect((await (await open()).get(id)).status).toBe('running');
  });

  it("moves another program's database aside, with its WAL", async () => {
    const { id } = await detachedSandbox();
    for (const f of readdirSync(home)) if (f.startsWith('roost.db')) rmSync(join(home, f));
    const other = new Database(dbFile());
    other.exec('CREATE TABLE notes (body TEXT); INSERT INTO notes VALUES (1)');
    other.close();
    const report = await Runtime.doctor({ home, vmm, repair: true });
    expect(report.database.condition).toBe('foreign');
    const kept = new Database(report.database.movedTo!, { readonly: true });
    expect(kept.prepare('SELECT count(*) AS n FROM notes').get()).toEqual({ n: 1 });
    kept.close();
    closeStateDbs();
    expect((await (await open()).get(id)).status).toBe('running');
  });

  it('never touches a database from a newer Roost', async () => {
    stateDb(home).pragma('user_version = 999');
    closeStateDbs();
    const report = await Runtime.doctor({ home, vmm, repair: true });
    expect(report).toMatchObject({ ok: false, database: { condition: 'newer' } });
    expect(report.database.movedTo).toBeUndefined();
    expect(report.findings[0]?.message).toContain('upgrade Roost');
  });
});

describe('recovery at open', () => {
  it('writes the witness of a record that has none (a home from before witnesses)', async () => {
    const { id } = await detachedSandbox();
    rmSync(join(home, 'sandboxes', id, WITNESS_FILE));
    await open();
    expect(JSON.parse(readFileSync(join(home, 'sandboxes', id, WITNESS_FILE), 'utf8'))).toMatchObject({
      kind: 'roost.sandbox',
      record: { id, status: 'running' },
    });
  });

  it('records a directory again from its witness when its row is gone', async () => {
    const { id, pid } = await detachedSandbox();
    const db = new Database(dbFile());
    db.prepare('DELETE FROM sandboxes WHERE id = ?').run(id);
    db.close();
    const sb = await (await open()).get(id);
    expect(sb.info).toMatchObject({ status: 'running', pid });
  });

  it('keeps the directory of a live VM that nothing records, and removes one no VM uses', async () => {
    const { id } = await detachedSandbox();
    rmSync(join(home, 'sandboxes', id, WITNESS_FILE));
    const db = new Database(dbFile());
    db.prepare('DELETE FROM sandboxes WHERE id = ?').run(id);
    db.close();
    const empty = join(home, 'sandboxes', '0123456789ab');
    await mkdir(empty);
    const rt = await open();
    expect(existsSync(join(home, 'sandboxes', id, 'disk.qcow2'))).toBe(true);
    expect(existsSync(empty)).toBe(false);
    expect(await rt.list()).toEqual([]);

    // The runtime's own doctor finds the VM, and adopts it on repair.
    const check = await rt.doctor();
    expect(check.findings).toMatchObject([{ kind: 'vm-without-record', id, repaired: false }]);
    const repaired = await rt.doctor({ repair: true });
    expect(repaired).toMatchObject({ ok: true, findings: [{ kind: 'vm-without-record', id, repaired: true }] });
    const sb = await rt.get(id);
    expect(sb.status).toBe('running');
    expect(await sb.ping()).toBeGreaterThanOrEqual(0);
  });

  it('beside a running runtime, moves only directories left alone for a while', async () => {
    const rt = await open();
    const fresh = join(home, 'sandboxes', '0123456789ab');
    const old = join(home, 'sandboxes', '0123456789ac');
    await mkdir(fresh, { recursive: true });
    await mkdir(old, { recursive: true });
    const past = new Date(Date.now() - 5 * 60_000);
    utimesSync(old, past, past);
    const report = await rt.doctor({ repair: true });
    expect(report.findings.filter((f) => f.kind === 'dir-without-record').map((f) => [f.id, f.repaired])).toEqual([
      ['0123456789ab', false],
      ['0123456789ac', true],
    ]);
    expect(existsSync(fresh)).toBe(true);
    expect(existsSync(join(home, 'lost+found', 'sandboxes', '0123456789ac'))).toBe(true);
  });

  it('re-records a snapshot whose row is gone from its witness', async () => {
    const rt = await open();
    const sb = await rt.create(small);
    const snap = await sb.snapshot({ name: 'keep-me' });
    await sb.remove({ force: true });
    await close();
    const db = new Database(dbFile());
    db.prepare('DELETE FROM snapshots WHERE id = ?').run(snap.id);
    db.close();
    const again = await open();
    expect((await again.snapshots.get('keep-me')).id).toBe(snap.id);
    // Removing it removes its witness first: nothing brings it back.
    await again.snapshots.remove('keep-me');
    await close();
    expect(existsSync(join(home, 'snapshots', snap.id))).toBe(false);
    await expect((await open()).snapshots.get('keep-me')).rejects.toMatchObject({ code: 'NOT_FOUND' });
  });

  it('reports a record whose VM runs while it says stopped, and re-adopts the VM on repair', async () => {
    const { id, pid } = await detachedSandbox();
    const db = new Database(dbFile());
    const row = db.prepare('SELECT info_json FROM sandboxes WHERE id = ?').get(id) as { info_json: string };
    const info = { ...JSON.parse(row.info_json), status: 'stopped', pid: null };
    db.prepare("UPDATE sandboxes SET status = 'stopped', pid = NULL, info_json = ? WHERE id = ?").run(JSON.stringify(info), id);
    db.close();
    const check = await Runtime.doctor({ home, vmm });
    expect(check.findings).toMatchObject([{ kind: 'status-mismatch', id, repaired: false }]);
    await Runtime.doctor({ home, vmm, repair: true });
    closeStateDbs();
    expect((await (await open()).get(id)).info).toMatchObject({ status: 'running', pid });
  });
});
