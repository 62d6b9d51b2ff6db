import { mkdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { closeStateDbs, databaseRefusal, stateDb } from './db.js';
import { homeContents } from './db-check.js';

// The database is never made afresh over a home that holds state, and a file that is not Roost's is never used.

let home: string;
const dbPath = () => join(home, 'roost.db');

beforeEach(async () => {
  home = await mkdtemp(join(tmpdir(), 'roost-dbcheck-'));
});

afterEach(async () => {
  closeStateDbs();
  await rm(home, { recursive: true, force: true });
});

function refusedWith(condition: string): unknown {
  return expect.objectContaining({
    code: 'INVALID_STATE',
    message: expect.stringContaining('roost doctor --repair') as unknown,
    details: expect.objectContaining({ condition }) as unknown,
  });
}

describe('stateDb refuses what it must not replace or misread', () => {
  it('makes a new database in a new home, and in a home of caches only', () => {
    mkdirSync(join(home, 'cache', 'kernel'), { recursive: true });
    expect(homeContents(home)).toEqual([]);
    const db = stateDb(home);
    expect(db.pragma('user_version', { simple: true })).toBeGreaterThan(0);
  });

  it('takes an empty file in a home that holds nothing as a new database', () => {
    writeFileSync(dbPath(), '');
    expect(() => stateDb(home)).not.toThrow();
  });

  it('refuses an empty database beside sandbox directories, and leaves the file as it is', () => {
    mkdirSync(join(home, 'sandboxes', 'a1b2c3d4e5f6'), { recursive: true });
    writeFileSync(dbPath(), '');
    expect(() => stateDb(home)).toThrow(refusedWith('empty') as Error);
    expect(statSync(dbPath()).size).toBe(0);
    expect(databaseRefusal(home)?.condition).toBe('empty');
  });

  it('refuses a missing database beside snapshots, image blobs or volumes, and creates nothing', () => {
    mkdirSync(join(home, 'snapshots', '0123456789ab'), { recursive: true });
    expect(() => stateDb(home)).toThrow(refusedWith('missing') as Error);
    expect(() => statSync(dbPath())).toThrow();
    expect(homeContents(home)).toEqual(['1 snapshot']);
    mkdirSync(join(home, 'images', 'blobs', 'sha256'), { recursive: true });
    writeFileSync(join(home, 'images', 'blobs', 'sha256', 'ab'.repeat(32)), 'x');
    mkdirSync(join(home, 'volumes', 'data1', 'data'), { recursive: true });
    expect(homeContents(home)).toEqual(['1 snapshot', '1 image blob', '1 volume']);
  });

  it('lets a home of Roost before SQLite (sandbox.json records) be imported', () => {
    mkdirSync(join(home, 'sandboxes', 'a1b2c3d4e5f6'), { recursive: true });
    writeFileSync(join(home, 'sandboxes', 'a1b2c3d4e5f6', 'sandbox.json'), '{}');
    expect(() => stateDb(home)).not.toThrow();
  });

  it('refuses a file of garbage bytes as not a database, unchanged', () => {
    const garbage = Buffer.alloc(8192, 'garbage ');
    writeFileSync(dbPath(), garbage);
    expect(() => stateDb(home)).toThrow(refusedWith('not-a-database') as Error);
    expect(readFileSync(dbPath()).equals(garbage)).toBe(true);
    expect(databaseRefusal(home)?.condition).toBe('not-a-database');
  });

  it("refuses another program's SQLite database, and does not even switch its journal mode", () => {
    const other = new Database(dbPath());
    other.exec('CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT)');
    other.close();
    const before = readFileSync(dbPath());
    expect(() => stateDb(home)).toThrow(refusedWith('foreign') as Error);
    expect(readFileSync(dbPath()).equals(before)).toBe(true);
    expect(databaseRefusal(home)?.error.message).toContain('customers');
  });

  it('refuses a database whose schema version promises tables it lacks', () => {
    const other = new Database(dbPath());
    other.exec('CREATE TABLE images (id TEXT)');
    other.pragma('user_version = 3');
    other.close();
    expect(() => stateDb(home)).toThrow(refusedWith('foreign') as Error);
  });

  it('refuses a database from a newer Roost, telling to upgrade', () => {
    const db = stateDb(home);
    db.pragma('user_version = 999');
    closeStateDbs();
    expect(() => stateDb(home)).toThrow(
      expect.objectContaining({ code: 'INVALID_STATE', message: expect.stringContaining('upgrade Roost') as unknown }) as Error,
    );
    expect(databaseRefusal(home)?.condition).toBe('newer');
  });

  it('opens its own database again, in a home full of state', () => {
    stateDb(home);
    closeStateDbs();
    mkdirSync(join(home, 'sandboxes', 'a1b2c3d4e5f6'), { recursive: true });
    expect(() => stateDb(home)).not.toThrow();
    expect(databaseRefusal(home)).toBeNull();
  });
});
