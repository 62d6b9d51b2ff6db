import type Database from 'better-sqlite3';

/** A write to the database: statements run inside one transaction. */
export type Write = () => void;

/** The most writes kept while the disk cannot take them; beyond it the oldest are dropped (and counted). */
export const MAX_PENDING_WRITES = 100_000;
/** How often kept writes are tried again while no other write comes. */
const RETRY_MS = 1_000;

/**
 * True for a failure of the database's disk rather than of the statement:
 * SQLite's SQLITE_FULL (the disk or a quota is full) and SQLITE_IOERR_*
 * (the write failed). Writes that failed so can succeed later, unchanged.
 */
export function isStorageFailure(err: unknown): boolean {
  const code = (err as { code?: unknown } | null)?.code;
  return typeof code === 'string' && (code === 'SQLITE_FULL' || code.startsWith('SQLITE_IOERR'));
}

/**
 * The writes of one database connection that its disk could not take (see
 * isStorageFailure), kept in memory in their order, and written, in that
 * order, before the next write that can be (or by a retry every second).
 * Records and events go through it, so an `exec.exited` that happens while
 * the host's disk is full is written once space returns, not lost. A
 * process that exits before then loses what it kept (its records are
 * reconciled with the VMs when the home is next opened).
 */
export class PendingWrites {
  readonly #db: Database.Database;
  readonly #queue: Write[] = [];
  #timer: NodeJS.Timeout | null = null;
  /** Writes dropped because more than MAX_PENDING_WRITES waited. */
  dropped = 0;

  constructor(db: Database.Database) {
    this.#db = db;
  }

  /** Writes waiting for the disk. */
  get size(): number {
    return this.#queue.length;
  }

  /**
   * Runs `write` in a transaction, after the writes still kept. When the
   * disk cannot take them (or it), it is kept with them and false is
   * returned; any other failure is thrown. Inside a caller's transaction
   * it is part of that transaction (its failure is the caller's), and the
   * kept writes wait (a rollback there would lose them).
   */
  write(write: Write): boolean {
    if (this.#db.inTransaction) {
      write();
      return true;
    }
    if (!this.flush()) {
      this.#keep(write);
      return false;
    }
    try {
      this.#db.transaction(write)();
      return true;
    } catch (e) {
      if (!isStorageFailure(e)) throw e;
      this.#keep(write);
      return false;
    }
  }

  /**
   * Writes what was kept, in order, in one transaction; true once nothing
   * waits. Storage failures leave it all kept; other failures (a kept write
   * the database now refuses) drop that write and go on.
   */
  flush(): boolean {
    if (this.#queue.length === 0) return true;
    if (!this.#db.open || this.#db.inTransaction) return false;
    try {
      this.#db.transaction(() => {
        for (const w of this.#queue) {
          try {
            this.#db.transaction(w)();
          } catch (e) {
            if (isStorageFailure(e)) throw e;
            // A write that can never succeed (a constraint): it must not hold up the rest.
          }
        }
      })();
    } catch (e) {
      if (!isStorageFailure(e)) throw e;
      this.#arm();
      return false;
    }
    this.#queue.length = 0;
    this.#disarm();
    return true;
  }

  /** Stops retrying (the connection is closing); what is kept is lost. */
  close(): void {
    this.#disarm();
  }

  #keep(write: Write): void {
    this.#queue.push(write);
    if (this.#queue.length > MAX_PENDING_WRITES) {
      this.#queue.shift();
      this.dropped++;
    }
    this.#arm();
  }

  #arm(): void {
    if (this.#timer) return;
    this.#timer = setInterval(() => {
      if (!this.#db.open) this.#disarm();
      else if (!this.#db.inTransaction) this.flush();
    }, RETRY_MS);
    this.#timer.unref();
  }

  #disarm(): void {
    if (this.#timer) clearInterval(this.#timer);
    this.#timer = null;
  }
}

const byDb = new WeakMap<Database.Database, PendingWrites>();

/** The one PendingWrites of a database connection (records, events and stores share it, so their order holds). */
export function pendingWrites(db: Database.Database): PendingWrites {
  let p = byDb.get(db);
  if (!p) {
    p = new PendingWrites(db);
    byDb.set(db, p);
  }
  return p;
}
