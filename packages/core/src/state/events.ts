import { EventEmitter } from 'node:events';
import type Database from 'better-sqlite3';
import type { EventType, RoostEvent } from '@roost/api';
import { pendingWrites } from './pending-writes.js';

/** What an event is about, and what it says. */
export interface EventInput {
  sandboxId?: string | undefined;
  imageId?: string | undefined;
  data?: Record<string, unknown>;
  /** When it happened (default: now); a write kept while the disk was full is written later with its own time. */
  time?: string | undefined;
}

/** Options of `EventLog.follow`. */
export interface FollowOptions {
  /** Start after this event id (default: only events from now on). */
  after?: number;
  types?: readonly EventType[];
  sandboxId?: string;
  signal?: AbortSignal;
}

interface EventRow {
  id: number;
  time: string;
  type: EventType;
  sandbox_id: string | null;
  image_id: string | null;
  data_json: string;
}

/** Events kept in the database; older ones are pruned when a runtime opens. */
const KEEP_EVENTS = 100_000;
/** Rows read per query while following. */
const PAGE = 500;
/** How often a follower looks for events written by other processes (the CLI beside a daemon). */
const POLL_MS = 1_000;

/** Wakes followers in this process when any EventLog on the same database appends. */
const wakers = new Map<string, EventEmitter>();

/**
 * The event log of a Roost home: every event is a row with an increasing id
 * before anyone hears of it, so a follower that went away resumes from the
 * last id it saw and misses nothing. Followers read from the table (woken
 * by appends in this process, polling for other processes), so a slow one
 * costs no memory and cannot hold up the writers.
 */
export class EventLog {
  readonly #db: Database.Database;
  readonly #waker: EventEmitter;
  readonly #insert: Database.Statement;
  readonly #page: Database.Statement;

  constructor(db: Database.Database) {
    this.#db = db;
    let waker = wakers.get(db.name);
    if (!waker) {
      waker = new EventEmitter();
      waker.setMaxListeners(0);
      wakers.set(db.name, waker);
    }
    this.#waker = waker;
    this.#insert = db.prepare('INSERT INTO events (time, type, sandbox_id, image_id, data_json) VALUES (?, ?, ?, ?, ?)');
    this.#page = db.prepare('SELECT * FROM events WHERE id > ? ORDER BY id LIMIT ?');
  }

  /** Records an event; returns it with its id. Call it inside a transaction to make it atomic with a state change. */
  append(type: EventType, input: EventInput = {}): RoostEvent {
    // Writes kept while the disk was full go first: events stay in the order they happened.
    const pending = pendingWrites(this.#db);
    if (pending.size > 0) pending.flush();
    const time = input.time ?? new Date().toISOString();
    const data = input.data ?? {};
    const r = this.#insert.run(time, type, input.sandboxId ?? null, input.imageId ?? null, JSON.stringify(data));
    const event: RoostEvent = { id: Number(r.lastInsertRowid), time, type, data };
    if (input.sandboxId) event.sandboxId = input.sandboxId;
    if (input.imageId) event.imageId = input.imageId;
    // Followers read the table; a wake inside a transaction that then rolls back only costs a query.
    queueMicrotask(() => this.#waker.emit('append'));
    return event;
  }

  /**
   * Records an event, or keeps it in memory while the disk cannot take it
   * (see PendingWrites) and writes it once it can, in order with every other
   * write. For events whose loss would be worse than their delay (`exec.exited`).
   */
  appendOrKeep(type: EventType, input: EventInput = {}): void {
    const kept = { ...input, time: input.time ?? new Date().toISOString() };
    pendingWrites(this.#db).write(() => this.append(type, kept));
  }

  /**
   * The newest `limit` events whose `data[key]` is `value` and whose type
   * starts with one of `typePrefixes` (e.g. a deployment's), oldest first.
   */
  latest(options: { typePrefixes: readonly string[]; key: string; value: string; limit: number }): RoostEvent[] {
    const types = options.typePrefixes.map(() => 'type LIKE ?').join(' OR ');
    const rows = this.#db
      .prepare(`SELECT * FROM events WHERE (${types}) AND json_extract(data_json, ?) = ? ORDER BY id DESC LIMIT ?`)
      .all(...options.typePrefixes.map((p) => `${p.replace(/[%_]/g, '')}%`), `$.${options.key}`, options.value, options.limit) as EventRow[];
    return rows.reverse().map(toEvent);
  }

  /** The newest event id (0 when there is none). */
  lastId(): number {
    const row = this.#db.prepare('SELECT MAX(id) AS id FROM events').get() as { id: number | null };
    return row.id ?? 0;
  }

  /** Events with an id above `after`, oldest first. */
  list(after = 0, limit = PAGE): RoostEvent[] {
    return (this.#page.all(after, limit) as EventRow[]).map(toEvent);
  }

  /** Persisted events after `options.after`, then new ones as they come, until the signal aborts. */
  async *follow(options: FollowOptions = {}): AsyncGenerator<RoostEvent> {
    const { signal } = options;
    let last = options.after ?? this.lastId();
    const types = options.types && options.types.length > 0 ? new Set(options.types) : null;
    let wake: (() => void) | null = null;
    let pending = false;
    const onAppend = () => {
      pending = true;
      wake?.();
    };
    this.#waker.on('append', onAppend);
    const onAbort = () => wake?.();
    signal?.addEventListener('abort', onAbort);
    try {
      while (!signal?.aborted) {
        pending = false;
        const rows = this.#page.all(last, PAGE) as EventRow[];
        for (const row of rows) {
          last = row.id;
          if (types && !types.has(row.type)) continue;
          if (options.sandboxId && row.sandbox_id !== options.sandboxId) continue;
          yield toEvent(row);
          if (signal?.aborted) return;
        }
        if (rows.length === PAGE || pending) continue;
        await new Promise<void>((resolve) => {
          // Not unref'd: a follower keeps its process alive, as an open stream does, until its signal aborts or it is returned.
          const timer = setTimeout(resolve, POLL_MS);
          wake = () => {
            clearTimeout(timer);
            resolve();
          };
        });
        wake = null;
      }
    } finally {
      this.#waker.off('append', onAppend);
      signal?.removeEventListener('abort', onAbort);
    }
  }

  /** Drops all but the newest KEEP_EVENTS events. */
  prune(keep = KEEP_EVENTS): number {
    const r = this.#db.prepare('DELETE FROM events WHERE id <= (SELECT MAX(id) FROM events) - ?').run(keep);
    return r.changes;
  }
}

function toEvent(row: EventRow): RoostEvent {
  const e: RoostEvent = { id: row.id, time: row.time, type: row.type, data: JSON.parse(row.data_json) as Record<string, unknown> };
  if (row.sandbox_id) e.sandboxId = row.sandbox_id;
  if (row.image_id) e.imageId = row.image_id;
  return e;
}
