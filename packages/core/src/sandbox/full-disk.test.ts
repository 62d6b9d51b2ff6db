import { existsSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import type { RoostEvent } from '@roost/api';
import { Runtime } from '../runtime.js';
import { closeStateDbs, stateDb } from '../state/db.js';
import { pendingWrites } from '../state/pending-writes.js';
import { FakeVmm, type FakeVm, writeFakeAssets } from '../vmm/fake.js';

// A full host disk against the fake VMM: the VM stopping on a disk error (QEMU's werror=stop, which the
// fake imitates), and roost.db refusing writes (SQLITE_FULL, made real with PRAGMA max_page_count).
// The records, events, agent link and lifecycle code are the real ones; test/full-disk.test.ts does it with QEMU.

let home: string;
let vmm: FakeVmm;
let runtime: Runtime;

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

async function events(id: string): Promise<RoostEvent[]> {
  const out: RoostEvent[] = [];
  const ac = new AbortController();
  setTimeout(() => ac.abort(), 50);
  for await (const e of runtime.events({ after: 0, sandboxId: id, signal: ac.signal })) out.push(e);
  return out;
}

async function until(check: () => boolean, ms = 2_000): Promise<void> {
  const end = Date.now() + ms;
  while (!check()) {
    if (Date.now() > end) throw new Error('condition not met in time');
    await new Promise((r) => setTimeout(r, 5));
  }
}

/**
 * roost.db takes no more pages, and its tables' last pages are full (SQLITE_FULL on any insert), or it
 * takes them again. The filler rows are events of no sandbox, which the tests' event lists leave out.
 */
function dbFull(full: boolean): void {
  const db = stateDb(home);
  if (!full) {
    db.pragma('max_page_count = 1073741823');
    return;
  }
  db.pragma('wal_checkpoint(TRUNCATE)');
  db.pragma(`max_page_count = ${db.pragma('page_count', { simple: true }) as number}`);
  const insert = db.prepare("INSERT INTO events (time, type, data_json) VALUES ('2000-01-01T00:00:00.000Z', 'volume.created', ?)");
  for (const size of [2000, 200, 1]) {
    for (;;) {
      try {
        insert.run('x'.repeat(size));
      } catch {
        break;
      }
    }
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

describe('a full host disk on a fake VMM', () => {
  it('a VM stopped on a host disk error is paused with the reason and an event; resume retries, and pauses again while full', async () => {
    const sb = await runtime.create(small);
    const vm = vmOf(sb.id);
    vm.hostDiskFull = true;
    vm.guestWrites(3);
    await until(() => sb.status === 'paused');
    expect(sb.info.reason).toBe('host disk full');
    expect(await sb.vmStatus()).toBe('io-error');

    // Still full: the retried writes stop it again, same reason, and resume says so; nothing failed or was killed.
    const again = await sb.resume().catch((e: unknown) => e);
    expect(again).toMatchObject({ code: 'RESOURCE_EXHAUSTED', details: { resource: 'disk', path: join(sb.dir, 'disk.qcow2') } });
    expect((again as Error).message).toBe(`sandbox ${sb.id} is paused again: the disk holding ${join(sb.dir, 'disk.qcow2')} is full: free space and retry`);
    expect(sb.status).toBe('paused');
    expect(sb.info.reason).toBe('host disk full');
    expect(vm.calls).not.toContain('kill');

    vm.hostDiskFull = false;
    await sb.resume();
    await until(() => vm.writes === 3);
    expect(sb.status).toBe('running');
    expect(sb.info.reason).toBeUndefined();
    expect(await sb.ping()).toBeGreaterThanOrEqual(0);
    // The paused-again event came once, from resume (the VM's own report of the same stop added nothing).
    await new Promise((r) => setTimeout(r, 20));

    const all = await events(sb.id);
    expect(all.map((e) => e.type)).toEqual(['sandbox.created', 'sandbox.started', 'sandbox.paused', 'sandbox.resumed', 'sandbox.paused', 'sandbox.resumed']);
    expect(all[2]!.data).toMatchObject({ reason: 'host disk full', error: 'No space left on device', disk: join(sb.dir, 'disk.qcow2') });
  });

  it('many error reports of one stop make one pause; a user pause then a disk error records the reason', async () => {
    const sb = await runtime.create(small);
    const vm = vmOf(sb.id);
    vm.hostDiskFull = true;
    for (let i = 0; i < 5; i++) vm.guestWrites();
    await until(() => sb.status === 'paused');
    await new Promise((r) => setTimeout(r, 20));
    expect((await events(sb.id)).filter((e) => e.type === 'sandbox.paused')).toHaveLength(1);

    const other = await runtime.create(small);
    await other.pause();
    expect(other.info.reason).toBeUndefined();
    // An I/O request in flight when the user paused fails on the host afterwards.
    const otherVm = vmOf(other.id);
    otherVm.hostDiskFull = true;
    otherVm.guestWrites();
    await until(() => other.info.reason === 'host disk full');
    expect(other.status).toBe('paused');
  });

  it('while roost.db cannot be written, the pause is kept in memory and written in order once it can', async () => {
    const sb = await runtime.create(small);
    const vm = vmOf(sb.id);
    dbFull(true);
    vm.hostDiskFull = true;
    vm.guestWrites();
    await until(() => sb.status === 'paused');
    const db = stateDb(home);
    expect(pendingWrites(db).size).toBeGreaterThan(0);
    const row = db.prepare('SELECT status FROM sandboxes WHERE id = ?').get(sb.id) as { status: string };
    expect(row.status).toBe('running');
    // The runtime's view is the sandbox's real state (refresh does not read the stale row back).
    expect((await sb.refresh()).status).toBe('paused');
    expect((await runtime.list()).find((s) => s.id === sb.id)?.status).toBe('paused');

    dbFull(false);
    vm.hostDiskFull = false;
    await sb.resume();
    expect(pendingWrites(db).size).toBe(0);
    expect((db.prepare('SELECT status FROM sandboxes WHERE id = ?').get(sb.id) as { status: string }).status).toBe('running');
    expect((await events(sb.id)).map((e) => e.type)).toEqual(['sandbox.created', 'sandbox.started', 'sandbox.paused', 'sandbox.resumed']);
  });

  it('a sandbox cannot be created on a database that cannot record it: RESOURCE_EXHAUSTED, nothing left behind', async () => {
    dbFull(true);
    const err = await runtime.create(small).catch((e: unknown) => e);
    expect(err).toMatchObject({ code: 'RESOURCE_EXHAUSTED', details: { resource: 'disk', path: join(home, 'roost.db') } });
    expect((err as Error).message).toBe(`the disk holding ${join(home, 'roost.db')} is full: free space and retry`);
    expect(vmm.started).toHaveLength(0);
    expect(await runtime.list()).toEqual([]);
  });

  it('remove -f on a database that cannot be written removes the VM and its files, fails cleanly, and a retry removes the record', async () => {
    const sb = await runtime.create(small);
    const vm = vmOf(sb.id);
    vm.hostDiskFull = true;
    vm.guestWrites();
    await until(() => sb.status === 'paused');
    dbFull(true);
    const err = await sb.remove({ force: true }).catch((e: unknown) => e);
    expect(err).toMatchObject({ code: 'RESOURCE_EXHAUSTED', details: { resource: 'disk' } });
    expect((err as Error).message).toMatch(/is full: free space and retry \(sandbox \w+: its VM and files are removed, its record is not; remove it again\)$/);
    expect(vm.hasExited).toBe(true);
    expect(existsSync(sb.dir)).toBe(false);
    expect(sb.status).toBe('stopped');
    expect((await runtime.get(sb.id)).id).toBe(sb.id);

    dbFull(false);
    await sb.remove({ force: true });
    await expect(runtime.get(sb.id)).rejects.toMatchObject({ code: 'NOT_FOUND' });
    expect(stateDb(home).prepare('SELECT COUNT(*) AS n FROM sandboxes').get()).toEqual({ n: 0 });
    const types = (await events(sb.id)).map((e) => e.type);
    // The kill, kept while the database was full, was written before the deletion.
    expect(types.slice(-2)).toEqual(['sandbox.exited', 'sandbox.deleted']);
  });
});
