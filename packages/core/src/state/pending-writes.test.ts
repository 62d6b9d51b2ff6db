import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import type Database from 'better-sqlite3';
import { closeStateDbs, stateDb } from './db.js';
import { EventLog } from './events.js';
import { isStorageFailure, pendingWrites } from './pending-writes.js';

// A real roost.db whose disk "fills": PRAGMA max_page_count caps the file at its current size, so SQLite
// answers SQLITE_FULL exactly as on a full filesystem; raising it is freeing space.

let home: string;
let db: Database.Database;
let events: EventLog;

function diskFull(full: boolean): void {
  if (full) {
    db.pragma('wal_checkpoint(TRUNCATE)');
    db.pragma(`max_page_count = ${db.pragma('page_count', { simple: true }) as number}`);
  } else db.pragma('max_page_count = 1073741823');
}

/** Data too big for the room left on a page: writing it needs new pages. */
const big = { pad: 'x'.repeat(8192) };

/** Fills the last free pages, so the next insert needs a new one. */
function fillPages(): void {
  for (;;) {
    try {
      db.prepare('INSERT INTO filler VALUES (?)').run(Buffer.alloc(2048));
    } catch (e) {
      if (isStorageFailure(e)) return;
      throw e;
    }
  }
}

beforeEach(async () => {
  home = await mkdtemp(join(tmpdir(), 'roost-pending-'));
  db = stateDb(home);
  events = new EventLog(db);
  db.exec('CREATE TABLE filler (b BLOB)');
});

afterEach(async () => {
  closeStateDbs();
  await rm(home, { recursive: true, force: true });
});

describe('PendingWrites: what the disk could not take is kept, in order, and written when it can', () => {
  it('keeps events on SQLITE_FULL and writes them first, in order with their own times, once a write succeeds', async () => {
    events.append('sandbox.created', { sandboxId: 'a' });
    diskFull(true);
    fillPages();
    expect(() => events.append('sandbox.started', { sandboxId: 'a', data: big })).toThrow(/full/);
    events.appendOrKeep('exec.started', { sandboxId: 'a', data: { n: 1, ...big } });
    events.appendOrKeep('exec.exited', { sandboxId: 'a', data: { n: 1 } });
    expect(pendingWrites(db).size).toBe(2);
    const keptAt = new Date().toISOString();
    await new Promise((r) => setTimeout(r, 5));
    expect(events.list().map((e) => e.type)).toEqual(['sandbox.created']);

    diskFull(false);
    events.appendOrKeep('exec.started', { sandboxId: 'a', data: { n: 2 } });
    expect(pendingWrites(db).size).toBe(0);
    const all = events.list();
    expect(all.map((e) => [e.type, e.data.n ?? null])).toEqual([
      ['sandbox.created', null],
      ['exec.started', 1],
      ['exec.exited', 1],
      ['exec.started', 2],
    ]);
    // The kept ones carry the time they happened, not the time they were written.
    expect(all[2]!.time <= keptAt).toBe(true);
  });

  it('flushes on its own (the retry timer) and through a plain append', async () => {
    diskFull(true);
    fillPages();
    events.appendOrKeep('exec.exited', { sandboxId: 'a', data: { n: 1, ...big } });
    expect(pendingWrites(db).size).toBe(1);
    diskFull(false);
    events.append('image.pulled', { imageId: 'i' });
    expect(events.list().map((e) => e.type)).toEqual(['exec.exited', 'image.pulled']);

    diskFull(true);
    fillPages();
    events.appendOrKeep('exec.exited', { sandboxId: 'a', data: { n: 2, ...big } });
    expect(pendingWrites(db).size).toBe(1);
    diskFull(false);
    const end = Date.now() + 3_000;
    while (pendingWrites(db).size > 0 && Date.now() < end) await new Promise((r) => setTimeout(r, 50));
    expect(pendingWrites(db).size).toBe(0);
    expect(events.list().at(-1)).toMatchObject({ type: 'exec.exited', data: { n: 2 } });
  });

  it('throws other failures, and a kept write that can never succeed does not hold up the rest', () => {
    const queue = pendingWrites(db);
    expect(() => queue.write(() => db.exec('INSERT INTO no_such_table VALUES (1)'))).toThrow(/no such table/);
    expect(queue.size).toBe(0);
    diskFull(true);
    fillPages();
    events.appendOrKeep('exec.started', { sandboxId: 'a', data: big });
    expect(queue.write(() => db.exec('INSERT INTO no_such_table VALUES (1)'))).toBe(false);
    events.appendOrKeep('exec.exited', { sandboxId: 'a' });
    expect(queue.size).toBe(3);
    diskFull(false);
    expect(queue.flush()).toBe(true);
    expect(events.list().map((e) => e.type)).toEqual(['exec.started', 'exec.exited']);
  });
});
