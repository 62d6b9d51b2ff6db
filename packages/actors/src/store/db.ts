import { chmodSync, existsSync } from 'node:fs';
import Database from 'better-sqlite3';
import { RoostError } from '@roost/api';
import { createNodeTables } from '../state/index.js';

/*
 * The actors' database (`<home>/actors.db`): modules, actors, references,
 * state versions and nodes, mailboxes (timers included) and the history of
 * handled messages. One writer: the main thread of the runtime that owns
 * the home; worker threads open it read-only. WAL with synchronous=NORMAL:
 * a commit survives the process being killed (not a power cut), as roost.db.
 */

/** Numbered migrations, one transaction each; `PRAGMA user_version` records the last applied. Never edit one that shipped. */
const MIGRATIONS: readonly string[] = [
  `
  CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;
  CREATE TABLE modules (
    digest TEXT PRIMARY KEY,             -- sha256: of the bytes as deployed
    size INTEGER NOT NULL,
    bytes BLOB NOT NULL,                 -- as deployed
    prepared BLOB NOT NULL,              -- fuel metering injected (what runs)
    info_json TEXT NOT NULL,             -- imports, exports, grants needed, memory
    created_at TEXT NOT NULL
  );
  CREATE TABLE actors (
    id TEXT PRIMARY KEY,
    name TEXT UNIQUE,
    parent TEXT,
    module TEXT NOT NULL REFERENCES modules(digest),
    grants_json TEXT NOT NULL,
    limits_json TEXT NOT NULL,
    keep_versions INTEGER NOT NULL,
    created_at TEXT NOT NULL,
    version INTEGER NOT NULL,
    root BLOB NOT NULL,
    state_entries INTEGER NOT NULL,
    state_bytes INTEGER NOT NULL,
    clock INTEGER NOT NULL,              -- Lamport clock
    nonce INTEGER NOT NULL,              -- children created so far (their ids derive from it)
    handled INTEGER NOT NULL,
    failed INTEGER NOT NULL,
    ticks INTEGER NOT NULL,
    last_error_json TEXT
  );
  CREATE INDEX actors_module ON actors(module);
  CREATE TABLE actor_refs (
    actor TEXT NOT NULL,
    ref INTEGER NOT NULL,
    target TEXT NOT NULL,
    PRIMARY KEY (actor, ref)
  ) WITHOUT ROWID;
  CREATE INDEX actor_refs_target ON actor_refs(actor, target);
  CREATE TABLE versions (
    actor TEXT NOT NULL,
    version INTEGER NOT NULL,
    root BLOB NOT NULL,
    message INTEGER,
    at TEXT NOT NULL,
    pinned INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (actor, version)
  ) WITHOUT ROWID;
  CREATE TABLE mailbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, -- never reused: the history is keyed by it
    actor TEXT NOT NULL,
    kind TEXT NOT NULL,                  -- message | init | timer
    sender TEXT NOT NULL,                -- an actor id, or '' (from outside, or a timer)
    time INTEGER NOT NULL,               -- logical time (the sender's clock)
    due_at INTEGER NOT NULL,             -- wall-clock ms it may be handled from (timers)
    reply INTEGER NOT NULL,              -- 1: a caller waits for the reply
    body BLOB NOT NULL
  );
  CREATE INDEX mailbox_order ON mailbox(actor, time, sender, seq);
  CREATE INDEX mailbox_due ON mailbox(due_at);
  CREATE TABLE history (
    seq INTEGER PRIMARY KEY,
    actor TEXT NOT NULL,
    kind TEXT NOT NULL,
    sender TEXT NOT NULL,
    size INTEGER NOT NULL,
    ok INTEGER NOT NULL,
    error_json TEXT,
    version INTEGER,
    ticks INTEGER NOT NULL,
    reply_size INTEGER,
    reply BLOB,                          -- the first 4 KiB
    logs_json TEXT NOT NULL,
    at TEXT NOT NULL
  );
  CREATE INDEX history_actor ON history(actor, seq);
  `,
];

/** Opens (creating or migrating) the actors' database for writing. */
export function openActorsDb(path: string): Database.Database {
  const fresh = !existsSync(path);
  let db: Database.Database;
  try {
    db = new Database(path);
  } catch (e) {
    throw new RoostError('INTERNAL', `cannot open the actors' database ${path}: ${(e as Error).message}`, { cause: e });
  }
  try {
    if (fresh) chmodSync(path, 0o600);
    db.pragma('journal_mode = WAL');
    db.pragma('synchronous = NORMAL');
    db.pragma('foreign_keys = OFF');
    db.pragma('busy_timeout = 5000');
    const current = db.pragma('user_version', { simple: true }) as number;
    if (current > MIGRATIONS.length) {
      throw new RoostError('INVALID_STATE', `${path} was written by a newer Roost (schema ${current}, this one knows ${MIGRATIONS.length})`);
    }
    for (let v = current; v < MIGRATIONS.length; v++) {
      db.transaction(() => {
        db.exec(MIGRATIONS[v]!);
        if (v === 0) createNodeTables(db);
        db.pragma(`user_version = ${v + 1}`);
      })();
    }
    return db;
  } catch (e) {
    db.close();
    if (e instanceof RoostError) throw e;
    throw new RoostError('INTERNAL', `cannot use the actors' database ${path}: ${(e as Error).message}`, { cause: e });
  }
}

/** A read-only connection for a worker thread (it sees what the writer committed). */
export function openActorsDbReadOnly(path: string): Database.Database {
  const db = new Database(path, { readonly: true, fileMustExist: true });
  db.pragma('busy_timeout = 5000');
  return db;
}
