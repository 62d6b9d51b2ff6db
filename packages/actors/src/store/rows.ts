import Database from 'better-sqlite3';
import { replyFields, type ActorErrorInfo, type ActorGrants, type ActorMessageRecord, type ActorVersion, type ResolvedActorLimits } from '@roost/api';

/*
 * The rows of the actors' database and the statements the main thread uses
 * on them. Only the main thread writes.
 */

export interface ActorRow {
  id: string;
  name: string | null;
  parent: string | null;
  module: string;
  grants: ActorGrants;
  limits: ResolvedActorLimits;
  keepVersions: number;
  createdAt: string;
  version: number;
  root: Buffer;
  stateEntries: number;
  stateBytes: number;
  clock: number;
  nonce: number;
  handled: number;
  failed: number;
  ticks: number;
  lastError: ActorErrorInfo | null;
}

interface RawActor {
  id: string;
  name: string | null;
  parent: string | null;
  module: string;
  grants_json: string;
  limits_json: string;
  keep_versions: number;
  created_at: string;
  version: number;
  root: Buffer;
  state_entries: number;
  state_bytes: number;
  clock: number;
  nonce: number;
  handled: number;
  failed: number;
  ticks: number;
  last_error_json: string | null;
}

export function actorFromRaw(r: RawActor): ActorRow {
  return {
    id: r.id,
    name: r.name,
    parent: r.parent,
    module: r.module,
    grants: JSON.parse(r.grants_json) as ActorGrants,
    limits: JSON.parse(r.limits_json) as ResolvedActorLimits,
    keepVersions: r.keep_versions,
    createdAt: r.created_at,
    version: r.version,
    root: r.root,
    stateEntries: r.state_entries,
    stateBytes: r.state_bytes,
    clock: r.clock,
    nonce: r.nonce,
    handled: r.handled,
    failed: r.failed,
    ticks: r.ticks,
    lastError: r.last_error_json ? (JSON.parse(r.last_error_json) as ActorErrorInfo) : null,
  };
}

export interface ModuleInfoJson {
  imports: string[];
  exports: string[];
  grantsNeeded: string[];
  memory: { initialPages: number; maximumPages: number | null };
}

export interface HistoryRaw {
  seq: number;
  actor: string;
  kind: 'message' | 'init' | 'timer';
  sender: string;
  size: number;
  ok: number;
  error_json: string | null;
  version: number | null;
  ticks: number;
  reply_size: number | null;
  reply: Buffer | null;
  logs_json: string;
  at: string;
}

/** A history row as the API gives it. */
export function historyRecord(r: HistoryRaw): ActorMessageRecord {
  const rec: ActorMessageRecord = {
    seq: r.seq,
    actor: r.actor,
    kind: r.kind,
    from: r.sender === '' ? null : r.sender,
    size: r.size,
    ok: r.ok === 1,
    error: r.error_json ? (JSON.parse(r.error_json) as ActorErrorInfo) : null,
    version: r.version,
    ticks: r.ticks,
    replySize: r.reply_size,
    logs: JSON.parse(r.logs_json) as string[],
    at: r.at,
  };
  return r.reply ? { ...rec, ...replyFields(r.reply) } : rec;
}

export function versionFromRaw(r: { version: number; root: Buffer; message: number | null; at: string; pinned: number }): ActorVersion {
  return { version: r.version, root: r.root.toString('hex'), message: r.message, at: r.at, pinned: r.pinned === 1 };
}

/** The SQL of every statement the main thread runs. */
const SQL = {
  metaGet: 'SELECT value FROM meta WHERE key = ?',
  metaSet: 'INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value',
  moduleInsert: 'INSERT OR IGNORE INTO modules (digest, size, bytes, prepared, info_json, created_at) VALUES (?, ?, ?, ?, ?, ?)',
  moduleGet: 'SELECT digest, size, info_json, created_at FROM modules WHERE digest = ?',
  moduleList: 'SELECT digest, size, info_json, created_at FROM modules ORDER BY created_at, digest',
  moduleDelete: 'DELETE FROM modules WHERE digest = ?',
  moduleUsers: 'SELECT count(*) FROM actors WHERE module = ?',
  actorGet: 'SELECT * FROM actors WHERE id = ?',
  actorByName: 'SELECT * FROM actors WHERE name = ?',
  actorByPrefix: "SELECT id FROM actors WHERE id LIKE ? || '%' LIMIT 2",
  actorIds: 'SELECT id FROM actors ORDER BY created_at, id',
  actorExists: 'SELECT 1 FROM actors WHERE id = ?',
  actorInsert: `INSERT INTO actors (id, name, parent, module, grants_json, limits_json, keep_versions, created_at, version, root,
         state_entries, state_bytes, clock, nonce, handled, failed, ticks, last_error_json)
       VALUES (@id, @name, @parent, @module, @grants_json, @limits_json, @keep_versions, @created_at, @version, @root,
         @state_entries, @state_bytes, @clock, @nonce, 0, 0, 0, NULL)`,
  actorUpdate: `UPDATE actors SET version = @version, root = @root, state_entries = @state_entries, state_bytes = @state_bytes,
         clock = @clock, nonce = @nonce, handled = @handled, failed = @failed, ticks = @ticks, last_error_json = @last_error_json
       WHERE id = @id`,
  actorDelete: 'DELETE FROM actors WHERE id = ?',
  refsOf: 'SELECT ref, target FROM actor_refs WHERE actor = ? ORDER BY ref',
  refMax: 'SELECT max(ref) FROM actor_refs WHERE actor = ?',
  refInsert: 'INSERT OR IGNORE INTO actor_refs (actor, ref, target) VALUES (?, ?, ?)',
  refsDelete: 'DELETE FROM actor_refs WHERE actor = ?',
  versionInsert: 'INSERT INTO versions (actor, version, root, message, at, pinned) VALUES (?, ?, ?, ?, ?, 0)',
  versionGet: 'SELECT version, root, message, at, pinned FROM versions WHERE actor = ? AND version = ?',
  versionList: 'SELECT version, root, message, at, pinned FROM versions WHERE actor = ? ORDER BY version',
  versionsUnpinned: 'SELECT count(*) FROM versions WHERE actor = ? AND pinned = 0',
  versionOldest: 'SELECT version, root FROM versions WHERE actor = ? AND pinned = 0 ORDER BY version LIMIT 1',
  versionDelete: 'DELETE FROM versions WHERE actor = ? AND version = ?',
  versionPin: 'UPDATE versions SET pinned = 1 WHERE actor = ? AND version = ?',
  versionRoots: 'SELECT root FROM versions WHERE actor = ?',
  versionsDelete: 'DELETE FROM versions WHERE actor = ?',
  mailInsert: 'INSERT INTO mailbox (actor, kind, sender, time, due_at, reply, body) VALUES (?, ?, ?, ?, ?, ?, ?)',
  mailBatch: 'SELECT seq, kind, sender, time, reply, body FROM mailbox WHERE actor = ? AND due_at <= ? ORDER BY time, sender, seq LIMIT ?',
  mailDelete: 'DELETE FROM mailbox WHERE seq = ?',
  mailCount: 'SELECT count(*) FROM mailbox WHERE actor = ?',
  mailCounts: 'SELECT actor, count(*) AS n FROM mailbox GROUP BY actor',
  mailDue: 'SELECT DISTINCT actor FROM mailbox WHERE due_at <= ?',
  mailNextDue: 'SELECT min(due_at) FROM mailbox WHERE due_at > ?',
  mailSeqsOf: 'SELECT seq FROM mailbox WHERE actor = ?',
  mailDeleteOf: 'DELETE FROM mailbox WHERE actor = ?',
  historyInsert: `INSERT INTO history (seq, actor, kind, sender, size, ok, error_json, version, ticks, reply_size, reply, logs_json, at)
       VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
  historyAfter: 'SELECT * FROM history WHERE actor = ? AND seq > ? ORDER BY seq LIMIT ?',
  historyLast: 'SELECT * FROM (SELECT * FROM history WHERE actor = ? ORDER BY seq DESC LIMIT ?) ORDER BY seq',
  historyPrune: 'DELETE FROM history WHERE actor = ? AND seq < (SELECT seq FROM history WHERE actor = ? ORDER BY seq DESC LIMIT 1 OFFSET ?)',
  historyDeleteOf: 'DELETE FROM history WHERE actor = ?',
} as const;

/** The statements whose result is their first column. */
const PLUCKED: ReadonlySet<string> = new Set([
  'metaGet',
  'moduleUsers',
  'actorByPrefix',
  'actorIds',
  'actorExists',
  'refMax',
  'versionsUnpinned',
  'versionRoots',
  'mailCount',
  'mailDue',
  'mailNextDue',
  'mailSeqsOf',
]);

/** Every statement the main thread runs, prepared once. */
export type Statements = { [K in keyof typeof SQL]: Database.Statement };

export function statements(db: Database.Database): Statements {
  const out: Partial<Record<keyof typeof SQL, Database.Statement>> = {};
  for (const name of Object.keys(SQL) as Array<keyof typeof SQL>) {
    const st = db.prepare(SQL[name]);
    out[name] = PLUCKED.has(name) ? st.pluck() : st;
  }
  return out as Statements;
}
