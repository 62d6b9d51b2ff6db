import { mkdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import type { SandboxInfo } from '@roost/api';
import { HomeLayout } from '../home.js';
import { SandboxRecord } from '../sandbox/record.js';
import { closeStateDbs, stateDb } from './db.js';
import { EventLog } from './events.js';
import { SandboxRecords } from './sandboxes.js';
import { SandboxWitnesses, WITNESS_FILE, witnessWanted } from './witness.js';

const ID = 'a1b2c3d4e5f6';
let home: string;
let witnesses: SandboxWitnesses;
let store: { records: SandboxRecords; events: EventLog; witnesses: SandboxWitnesses };

function info(): SandboxInfo {
  return {
    id: ID,
    status: 'creating',
    createdAt: new Date().toISOString(),
    startedAt: null,
    stoppedAt: null,
    cpus: 1,
    memoryMiB: 64,
    diskSizeMiB: 64,
    detached: true,
    accel: 'tcg',
    pid: null,
    env: { A: '1' },
    labels: { team: 'x' },
    execs: 0,
  };
}

const witnessPath = () => join(home, 'sandboxes', ID, WITNESS_FILE);
const written = () => (JSON.parse(readFileSync(witnessPath(), 'utf8')) as { writtenAt: string; record: SandboxInfo }).record;

beforeEach(async () => {
  home = await mkdtemp(join(tmpdir(), 'roost-witness-'));
  const db = stateDb(home);
  mkdirSync(join(home, 'sandboxes', ID), { recursive: true });
  witnesses = new SandboxWitnesses(new HomeLayout(home));
  store = { records: new SandboxRecords(db), events: new EventLog(db), witnesses };
});

afterEach(async () => {
  closeStateDbs();
  await rm(home, { recursive: true, force: true });
});

describe('sandbox witnesses', () => {
  it('follow every change of the record but an exec count, as a 0600 file', () => {
    const rec = new SandboxRecord(store, info());
    rec.created(undefined);
    expect(written()).toMatchObject({ id: ID, status: 'creating', labels: { team: 'x' } });
    expect(statSync(witnessPath()).mode & 0o777).toBe(0o600);
    rec.save({ pid: 4242 });
    rec.save({ status: 'running' }, 'sandbox.started');
    expect(written()).toMatchObject({ status: 'running', pid: 4242 });
    // An exec's count is a hot path: the witness lags on it.
    rec.save({ execs: 1 }, 'exec.started');
    expect(written().execs).toBe(0);
    expect(store.records.get(ID)?.execs).toBe(1);
    rec.exited('stopped', 'stopped');
    expect(written()).toMatchObject({ status: 'stopped', pid: null, execs: 1 });
    expect(witnesses.read(ID)).toEqual(store.records.get(ID));
    rec.delete();
    expect(witnesses.read(ID)).toBeNull();
  });

  it('are read only when whole, of their kind, and of their own directory', () => {
    expect(witnesses.read(ID)).toBeNull();
    witnesses.write(info());
    expect(witnesses.read(ID)?.id).toBe(ID);
    writeFileSync(witnessPath(), readFileSync(witnessPath(), 'utf8').slice(0, 40));
    expect(witnesses.read(ID)).toBeNull();
    writeFileSync(witnessPath(), JSON.stringify({ kind: 'roost.sandbox', format: 1, record: { ...info(), id: 'ffffffffffff' } }));
    expect(witnesses.read(ID)).toBeNull();
    writeFileSync(witnessPath(), JSON.stringify({ kind: 'roost.snapshot', format: 1, record: info() }));
    expect(witnesses.read(ID)).toBeNull();
    writeFileSync(witnessPath(), JSON.stringify({ kind: 'roost.sandbox', format: 1, record: { ...info(), status: 'sleeping' } }));
    expect(witnesses.read(ID)).toBeNull();
  });

  it('do not fail a save whose directory is gone (the database has the record)', () => {
    const rec = new SandboxRecord(store, { ...info(), id: '0000000000aa' });
    expect(() => rec.created(undefined)).not.toThrow();
    expect(store.records.get('0000000000aa')).toBeDefined();
  });

  it('know which changes are worth a rewrite', () => {
    expect(witnessWanted({})).toBe(true);
    expect(witnessWanted({ execs: 3 })).toBe(false);
    expect(witnessWanted({ execs: 3, status: 'running' })).toBe(true);
    expect(witnessWanted({ network: undefined })).toBe(true);
  });
});
