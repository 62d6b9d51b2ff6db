import { existsSync, mkdirSync } from 'node:fs';
import { dirname, join } from 'node:path';
import Database from 'better-sqlite3';
import { diskFullAt } from '../disk-space.js';
import { RoostError } from '../errors.js';
import { chmodIfThere, PRIVATE_DIR, PRIVATE_FILE } from './private.js';
import { checkDatabaseFile, checkTables, isNotADatabase, refusal, type DatabaseRefusal } from './db-check.js';

/**
 * Numbered schema migrations, applied in order inside one transaction each;
 * `PRAGMA user_version` records the last one applied. Never edit a migration
 * that has shipped: add the next one.
 */
const MIGRATIONS: readonly string[] = [
  // 1: the image index. Blobs live on disk by digest; these tables say what they are and who uses them.
  `
  CREATE TABLE images (
    id TEXT PRIMARY KEY,                 -- the platform manifest's digest
    manifest_media_type TEXT NOT NULL,
    config_digest TEXT NOT NULL,
    config_json TEXT NOT NULL,           -- the parts of the image config Roost honors (ImageConfig)
    index_digest TEXT,                   -- the index it was chosen from, if any
    size INTEGER NOT NULL,               -- bytes of manifest, config and layers as stored
    created TEXT,                        -- from the image config
    added_at TEXT NOT NULL,
    source TEXT NOT NULL,                -- where it came from: a registry reference, or an archive path
    rootfs_size INTEGER                  -- bytes of the built root filesystem image, once built
  );
  CREATE TABLE tags (
    name TEXT PRIMARY KEY,               -- fully qualified: registry/repository:tag
    image_id TEXT NOT NULL REFERENCES images(id) ON DELETE CASCADE,
    updated_at TEXT NOT NULL
  );
  CREATE INDEX tags_image ON tags(image_id);
  CREATE TABLE layers (
    digest TEXT PRIMARY KEY,             -- the blob as stored (compressed)
    diff_id TEXT NOT NULL,               -- the uncompressed tar
    size INTEGER NOT NULL,
    media_type TEXT NOT NULL
  );
  CREATE TABLE image_layers (
    image_id TEXT NOT NULL REFERENCES images(id) ON DELETE CASCADE,
    position INTEGER NOT NULL,
    layer_digest TEXT NOT NULL REFERENCES layers(digest),
    PRIMARY KEY (image_id, position)
  );
  CREATE INDEX image_layers_layer ON image_layers(layer_digest);
  `,
  // 2: sandboxes, events and settings (the control plane). A sandbox's whole record is JSON; the columns
  // beside it are what queries need (status lists, image in-use checks).
  `
  CREATE TABLE sandboxes (
    id TEXT PRIMARY KEY,
    status TEXT NOT NULL,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    pid INTEGER,
    image_id TEXT,                       -- no foreign key: an image may be force-removed under a sandbox
    info_json TEXT NOT NULL              -- the SandboxInfo
  );
  CREATE INDEX sandboxes_status ON sandboxes(status);
  CREATE INDEX sandboxes_image ON sandboxes(image_id);
  CREATE TABLE events (
    id INTEGER PRIMARY KEY AUTOINCREMENT, -- never reused: it is the SSE event id clients resume from
    time TEXT NOT NULL,
    type TEXT NOT NULL,
    sandbox_id TEXT,
    image_id TEXT,
    data_json TEXT NOT NULL
  );
  CREATE INDEX events_sandbox ON events(sandbox_id, id);
  CREATE TABLE settings (
    key TEXT PRIMARY KEY,
    value_json TEXT NOT NULL
  );
  `,
  // 3: named volumes. Their data is a directory under the home (path); which sandboxes mount one is in
  // the sandboxes' records (info_json: volumes[].source is the volume's name).
  `
  CREATE TABLE volumes (
    name TEXT PRIMARY KEY,
    path TEXT NOT NULL,                  -- the directory the guests see: <home>/volumes/<name>/data
    created_at TEXT NOT NULL,
    labels_json TEXT NOT NULL
  );
  `,
  // 4: snapshots and templates. A snapshot's files live in <home>/snapshots/<id>; which sandboxes were
  // restored from one is in their records (info_json: snapshot), which snapshots are layered on one is parent_id.
  `
  CREATE TABLE snapshots (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    kind TEXT NOT NULL,                  -- user, fork or template
    parent_id TEXT,                      -- the snapshot whose disk this one's disk is layered on
    created_at TEXT NOT NULL,
    info_json TEXT NOT NULL              -- the SnapshotInfo (without dependents) and its manifest
  );
  CREATE INDEX snapshots_parent ON snapshots(parent_id);
  CREATE TABLE templates (
    name TEXT PRIMARY KEY,
    spec_json TEXT NOT NULL,             -- the TemplateInfo without snapshot
    snapshot_id TEXT,                    -- its warm snapshot, once built
    created_at TEXT NOT NULL
  );
  `,
  // 5: bridge-mode address leases. A pool is one bridge (network) and its subnet; an address and a MAC are
  // leased to one sandbox at a time (the UNIQUE constraints hold even if the allocator were wrong).
  `
  CREATE TABLE leases (
    network TEXT NOT NULL,               -- the bridge whose subnet the address is from
    sandbox_id TEXT NOT NULL,
    address INTEGER NOT NULL,            -- IPv4, as an unsigned 32-bit number
    mac TEXT NOT NULL,
    created_at TEXT NOT NULL,
    PRIMARY KEY (network, sandbox_id),
    UNIQUE (network, address),
    UNIQUE (network, mac)
  );
  `,
  // 6: the jail's uids. Each sandbox's QEMU runs as its own uid (and the gid of the same number), from the
  // configured range; a uid is held by one sandbox at a time (the keys hold even if the allocator were wrong).
  // Other homes on the host are kept off it by a claim file (jail/ids.ts), not by this table.
  `
  CREATE TABLE jail_ids (
    uid INTEGER PRIMARY KEY,             -- also the gid
    sandbox_id TEXT NOT NULL UNIQUE,
    created_at TEXT NOT NULL
  );
  `,
  // 7: warm pools. Members are sandboxes labelled roost.pool=<name> (their records say which); this is the pool's
  // desired state and its counters. A source is a template name or a snapshot id: exactly one is set.
  `
  CREATE TABLE pools (
    name TEXT PRIMARY KEY,
    template TEXT,
    snapshot_id TEXT,
    size INTEGER NOT NULL,
    max_size INTEGER NOT NULL,
    handed_over INTEGER NOT NULL DEFAULT 0,
    fallbacks INTEGER NOT NULL DEFAULT 0,
    created_at TEXT NOT NULL,
    last_error_json TEXT                 -- the PoolError of the last failed refill, null once one succeeds
  );
  `,
  // 8: deployments. Replicas are sandboxes labelled roost.deployment=<name> (and the revision they were made from);
  // this is the desired state: the spec (defaults applied), the one before it (rollback), and the generations.
  `
  CREATE TABLE deployments (
    name TEXT PRIMARY KEY,
    spec_json TEXT NOT NULL,
    previous_spec_json TEXT,             -- the spec before the last change of the replica template, for rollback
    generation INTEGER NOT NULL,         -- +1 with every change of the spec
    observed_generation INTEGER NOT NULL DEFAULT 0, -- the generation the replicas last matched
    ports_json TEXT NOT NULL DEFAULT '{}', -- host ports chosen for spec ports given without one, kept across owners
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    last_error_json TEXT
  );
  `,
  // 9: the image builder's cache. A step's key (its parent chain, the instruction and the digests of what it
  // reads) -> the layer it made (null: it changed no file). The layer's blob is kept while its row is.
  `
  CREATE TABLE build_cache (
    key TEXT PRIMARY KEY,
    layer_digest TEXT,
    diff_id TEXT,
    size INTEGER,
    media_type TEXT,
    step TEXT NOT NULL,                  -- the instruction, for roost images ls --all
    created_at TEXT NOT NULL,
    used_at TEXT NOT NULL
  );
  `,
  // 10: volumes served by Roost's own 9P server: a quota per named volume, and remote volumes (another
  // host's `roost volume serve`; their token is in <home>/volumes/<name>/remote.credentials, 0600, never here).
  `
  ALTER TABLE volumes ADD COLUMN quota_bytes INTEGER;  -- the most bytes its files may hold; NULL: no limit
  ALTER TABLE volumes ADD COLUMN remote_json TEXT;     -- {url, fingerprint, readOnly} of a remote volume; NULL: local
  `,
];

/** The schema version this build writes. A database from a newer Roost is refused rather than misread. */
export const SCHEMA_VERSION = MIGRATIONS.length;

const open = new Map<string, Database.Database>();

/** Options of `stateDb`. */
export interface StateDbOptions {
  /**
   * Make a new database even though the home holds sandboxes, snapshots,
   * images or volumes (only `roost doctor --repair`, which rebuilds the
   * records from them, asks for this).
   */
  fresh?: boolean;
}

/**
 * The Roost home's SQLite database (`<home>/roost.db`), opened once per
 * process in WAL mode, migrated to the current schema. Several processes
 * may use one home at a time: writers wait for each other (busy timeout).
 *
 * A database is never made afresh over a home that holds what it should
 * describe, and never one that is not Roost's used: a missing or empty
 * file beside sandbox directories, snapshots, image blobs or volumes, a
 * file that is not a SQLite database, one with another program's tables,
 * or one from a newer Roost is refused (INVALID_STATE, naming `roost
 * doctor`), and nothing in it is changed.
 */
export function stateDb(home: string, options: StateDbOptions = {}): Database.Database {
  const path = join(home, 'roost.db');
  const existing = open.get(path);
  if (existing?.open) return existing;
  if (!options.fresh) {
    const refused = checkDatabaseFile(home);
    if (refused) throw refused.error;
  }
  mkdirSync(dirname(path), { recursive: true, mode: PRIVATE_DIR });
  let db: Database.Database | undefined;
  try {
    db = new Database(path, { timeout: 10_000 });
    // Looked at before anything is written (the journal mode is a write): a foreign file stays as it was.
    const refused = inspectDatabase(db, path);
    if (refused) throw refused.error;
    db.pragma('journal_mode = WAL');
    db.pragma('synchronous = NORMAL');
    db.pragma('foreign_keys = ON');
    migrate(db);
    // Private whatever the umask; SQLite makes -wal and -shm with the database file's mode.
    for (const f of [path, `${path}-wal`, `${path}-shm`]) chmodIfThere(f, PRIVATE_FILE);
  } catch (e) {
    db?.close();
    if (e instanceof RoostError) throw e;
    // On a full disk SQLite cannot even make its shared-memory file (-shm) to read: say so, not "disk I/O error".
    const full = diskFullAt(e, path);
    if (full) throw full;
    if (isNotADatabase(e)) throw refusal('not-a-database', path, 'is not a SQLite database, or is damaged', e).error;
    throw new RoostError('INTERNAL', `cannot open the Roost database ${path}: ${(e as Error).message}`, { cause: e });
  }
  open.set(path, db);
  return db;
}

/** Why an open database is not Roost's (or from a newer Roost), or null when it is (or is new). Writes nothing. */
export function inspectDatabase(db: Database.Database, path: string): DatabaseRefusal | null {
  let version: number;
  let tables: string[];
  try {
    version = db.pragma('user_version', { simple: true }) as number;
    tables = db.prepare("SELECT name FROM sqlite_master WHERE type = 'table'").pluck().all() as string[];
  } catch (e) {
    if (isNotADatabase(e)) return refusal('not-a-database', path, 'is not a SQLite database, or is damaged', e);
    throw e;
  }
  if (version > SCHEMA_VERSION) {
    return refusal('newer', path, `has schema version ${version}, newer than this Roost (${SCHEMA_VERSION})`);
  }
  return checkTables(path, tables, version);
}

/**
 * Why the database of `home` cannot be used as it is (see `stateDb`), or
 * null when it can (or does not exist in a home that holds nothing).
 * Opens it read-only, if at all: nothing is changed.
 */
export function databaseRefusal(home: string): DatabaseRefusal | null {
  const refused = checkDatabaseFile(home);
  if (refused) return refused;
  const path = join(home, 'roost.db');
  if (!existsSync(path)) return null;
  if (open.get(path)?.open) return inspectDatabase(open.get(path)!, path);
  let db: Database.Database;
  try {
    db = new Database(path, { readonly: true, fileMustExist: true });
  } catch (e) {
    if (isNotADatabase(e)) return refusal('not-a-database', path, 'is not a SQLite database, or is damaged', e);
    throw e;
  }
  try {
    return inspectDatabase(db, path);
  } finally {
    db.close();
  }
}

/** A database of the current schema in memory (what a check compares a home with when its own is refused). */
export function memoryStateDb(): Database.Database {
  const db = new Database(':memory:');
  migrate(db);
  return db;
}

function migrate(db: Database.Database): void {
  const current = db.pragma('user_version', { simple: true }) as number;
  for (let v = current; v < SCHEMA_VERSION; v++) {
    // BEGIN IMMEDIATE: two processes opening a new home at once migrate one after the other.
    db.transaction(() => {
      const now = db.pragma('user_version', { simple: true }) as number;
      if (now > v) return;
      db.exec(MIGRATIONS[v]!);
      db.pragma(`user_version = ${v + 1}`);
    }).immediate();
  }
}

/** Closes every database this process opened (tests, and a daemon shutting down). */
export function closeStateDbs(): void {
  for (const db of open.values()) if (db.open) db.close();
  open.clear();
}
