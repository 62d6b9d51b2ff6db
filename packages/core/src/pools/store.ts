import type Database from 'better-sqlite3';
import type { PoolError } from '@roost/api';
import { RoostError } from '../errors.js';
import type { EventLog } from '../state/events.js';

/** A pool's row: what it keeps ready, from what, and its counters. */
export interface PoolRecord {
  name: string;
  /** The template its members restore (null: a snapshot pool). */
  template: string | null;
  /** The snapshot id its members restore (null: a template pool). */
  snapshotId: string | null;
  size: number;
  maxSize: number;
  handedOver: number;
  fallbacks: number;
  createdAt: string;
  lastError: PoolError | null;
}

interface Row {
  name: string;
  template: string | null;
  snapshot_id: string | null;
  size: number;
  max_size: number;
  handed_over: number;
  fallbacks: number;
  created_at: string;
  last_error_json: string | null;
}

/**
 * The `pools` table: each change is written with its event in one
 * transaction. One runtime owns a home at a time, so its Pools object is the
 * only writer. Concurrency: synchronous calls, each its own transaction.
 */
export class PoolStore {
  readonly #db: Database.Database;
  readonly #events: EventLog;

  constructor(db: Database.Database, events: EventLog) {
    this.#db = db;
    this.#events = events;
  }

  /** Inserts a new pool with its `pool.created` event; ALREADY_EXISTS when the name is taken. */
  insert(rec: Omit<PoolRecord, 'handedOver' | 'fallbacks' | 'lastError'>): void {
    try {
      this.#db.transaction(() => {
        this.#db
          .prepare('INSERT INTO pools (name, template, snapshot_id, size, max_size, created_at) VALUES (?, ?, ?, ?, ?, ?)')
          .run(rec.name, rec.template, rec.snapshotId, rec.size, rec.maxSize, rec.createdAt);
        this.#events.append('pool.created', {
          data: { pool: rec.name, template: rec.template, snapshotId: rec.snapshotId, size: rec.size, maxSize: rec.maxSize },
        });
      })();
    } catch (e) {
      if ((e as { code?: string }).code === 'SQLITE_CONSTRAINT_PRIMARYKEY') {
        throw new RoostError('ALREADY_EXISTS', `a pool named ${rec.name} exists already: choose another name or remove it (\`roost pool rm ${rec.name}\`)`, {
          details: { pool: rec.name },
        });
      }
      throw e;
    }
  }

  get(name: string): PoolRecord | undefined {
    const row = this.#db.prepare('SELECT * FROM pools WHERE name = ?').get(name) as Row | undefined;
    return row ? toRecord(row) : undefined;
  }

  /** Every pool, by name. */
  all(): PoolRecord[] {
    return (this.#db.prepare('SELECT * FROM pools ORDER BY name').all() as Row[]).map(toRecord);
  }

  /** Sets a pool's size with a `pool.resized` event (false: no such pool). */
  setSize(name: string, size: number): boolean {
    return this.#db.transaction(() => {
      const before = this.get(name);
      if (!before) return false;
      this.#db.prepare('UPDATE pools SET size = ? WHERE name = ?').run(size, name);
      this.#events.append('pool.resized', { data: { pool: name, size, previous: before.size } });
      return true;
    })();
  }

  /** Deletes a pool's row with a `pool.removed` event (false: no such pool). */
  delete(name: string): boolean {
    return this.#db.transaction(() => {
      const changes = this.#db.prepare('DELETE FROM pools WHERE name = ?').run(name).changes;
      if (changes > 0) this.#events.append('pool.removed', { data: { pool: name } });
      return changes > 0;
    })();
  }

  /** Counts a create from the pool: a member handed over (`warm`), or a fallback restore. */
  counted(name: string, warm: boolean): void {
    this.#db.prepare(`UPDATE pools SET ${warm ? 'handed_over = handed_over + 1' : 'fallbacks = fallbacks + 1'} WHERE name = ?`).run(name);
  }

  /** Records the last refill's failure, or clears it (null). */
  setError(name: string, error: PoolError | null): void {
    this.#db.prepare('UPDATE pools SET last_error_json = ? WHERE name = ?').run(error ? JSON.stringify(error) : null, name);
  }
}

function toRecord(row: Row): PoolRecord {
  return {
    name: row.name,
    template: row.template,
    snapshotId: row.snapshot_id,
    size: row.size,
    maxSize: row.max_size,
    handedOver: row.handed_over,
    fallbacks: row.fallbacks,
    createdAt: row.created_at,
    lastError: row.last_error_json ? (JSON.parse(row.last_error_json) as PoolError) : null,
  };
}
