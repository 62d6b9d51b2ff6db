import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import type { SandboxInfo, SandboxStatus } from '@roost/api';
import { closeStateDbs, stateDb } from '../state/db.js';
import { EventLog } from '../state/events.js';
import { SandboxRecords } from '../state/sandboxes.js';
import { canTransition, isLive, SandboxRecord, STATUS_TRANSITIONS } from './record.js';

const STATUSES: SandboxStatus[] = ['creating', 'running', 'paused', 'stopping', 'stopped', 'failed'];

let home: string;
let records: SandboxRecords;
let events: EventLog;

function info(status: SandboxStatus): SandboxInfo {
  return {
    id: 'a1b2c3d4e5f6',
    status,
    createdAt: new Date().toISOString(),
    startedAt: null,
    stoppedAt: null,
    cpus: 1,
    memoryMiB: 64,
    diskSizeMiB: 64,
    detached: false,
    accel: 'tcg',
    pid: null,
    env: {},
    labels: {},
    execs: 0,
  };
}

beforeEach(async () => {
  home = await mkdtemp(join(tmpdir(), 'roost-record-'));
  const db = stateDb(home);
  records = new SandboxRecords(db);
  events = new EventLog(db);
});

afterEach(async () => {
  closeStateDbs();
  await rm(home, { recursive: true, force: true });
});

describe('status transitions', () => {
  it('has a row for every status, and only live statuses reach stopping', () => {
    expect(Object.keys(STATUS_TRANSITIONS).sort()).toEqual([...STATUSES].sort());
    for (const from of STATUSES) expect(canTransition(from, 'stopping')).toBe(isLive(from));
  });

  it('lets a stopped or failed sandbox only boot again (or record a boot killed midway)', () => {
    expect(STATUSES.filter((to) => to !== 'stopped' && canTransition('stopped', to))).toEqual(['creating', 'failed']);
    expect(STATUSES.filter((to) => to !== 'failed' && canTransition('failed', to))).toEqual(['creating']);
  });

  it('writes a save and its event in one transaction, and refuses a change the table does not allow', () => {
    const rec = new SandboxRecord({ records, events }, info('creating'));
    rec.save({}, 'sandbox.created');
    rec.save({ status: 'running', pid: 42 }, 'sandbox.started', { data: { pid: 42 } });
    expect(records.get(rec.id)).toMatchObject({ status: 'running', pid: 42 });
    rec.save({ status: 'stopped', pid: null });
    expect(() => rec.save({ status: 'paused' }, 'sandbox.paused')).toThrow(expect.objectContaining({ code: 'INTERNAL' }));
    // Nothing of the refused save was written.
    expect(records.get(rec.id)?.status).toBe('stopped');
    expect(events.list().map((e) => e.type)).toEqual(['sandbox.created', 'sandbox.started']);
  });

  it('records an exit once, and nothing after the record is deleted', () => {
    const rec = new SandboxRecord({ records, events }, info('running'));
    rec.exited('failed', 'gone');
    rec.exited('stopped', 'again');
    expect(records.get(rec.id)).toMatchObject({ status: 'failed', reason: 'gone' });
    rec.delete();
    rec.save({ status: 'creating' });
    rec.event('exec.exited', {});
    expect(records.get(rec.id)).toBeUndefined();
    expect(events.list().map((e) => e.type)).toEqual(['sandbox.failed', 'sandbox.deleted']);
  });
});
