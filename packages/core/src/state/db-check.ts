import { existsSync, readdirSync, statSync } from 'node:fs';
import { join } from 'node:path';
import type { DatabaseCondition } from '@roost/api';
import { RoostError } from '../errors.js';

/** The tables of Roost's schema, each from the migration (user_version) that makes it. */
export const ROOST_TABLES: Readonly<Record<string, number>> = {
  images: 1,
  tags: 1,
  layers: 1,
  image_layers: 1,
  sandboxes: 2,
  events: 2,
  settings: 2,
  volumes: 3,
  snapshots: 4,
  templates: 4,
  leases: 5,
  jail_ids: 6,
  pools: 7,
  deployments: 8,
  build_cache: 9,
};

const ID_PATTERN = /^[0-9a-f]{12}$/;

/**
 * What a home holds that its database describes: sandbox directories (not
 * those of Roost before SQLite, which carry their own `sandbox.json` and are
 * imported), snapshot directories, image blobs and named volumes. Empty for
 * a new home. A database must never be made afresh over any of these.
 */
export function homeContents(home: string): string[] {
  const held: string[] = [];
  const list = (dir: string) => {
    try {
      return readdirSync(dir);
    } catch {
      return [];
    }
  };
  const sandboxes = list(join(home, 'sandboxes')).filter((d) => ID_PATTERN.test(d) && !existsSync(join(home, 'sandboxes', d, 'sandbox.json')));
  if (sandboxes.length) held.push(`${sandboxes.length} sandbox director${sandboxes.length > 1 ? 'ies' : 'y'}`);
  const snapshots = list(join(home, 'snapshots')).filter((d) => ID_PATTERN.test(d));
  if (snapshots.length) held.push(`${snapshots.length} snapshot${snapshots.length > 1 ? 's' : ''}`);
  const blobs = list(join(home, 'images', 'blobs')).flatMap((alg) => list(join(home, 'images', 'blobs', alg)).filter((f) => /^[0-9a-f]{32,}$/.test(f)));
  if (blobs.length) held.push(`${blobs.length} image blob${blobs.length > 1 ? 's' : ''}`);
  const volumes = list(join(home, 'volumes')).filter((d) => !d.startsWith('.'));
  if (volumes.length) held.push(`${volumes.length} volume${volumes.length > 1 ? 's' : ''}`);
  return held;
}

/** A refused database: why, as a condition doctor reports, and the error stateDb throws. */
export interface DatabaseRefusal {
  condition: Exclude<DatabaseCondition, 'ok'>;
  error: RoostError;
}

/** The INVALID_STATE error for a database that cannot be used as it is, saying what to do. */
export function refusal(condition: DatabaseRefusal['condition'], path: string, what: string, cause?: unknown): DatabaseRefusal {
  const todo =
    condition === 'newer'
      ? 'upgrade Roost'
      : 'run `roost doctor` to see what the home holds, and `roost doctor --repair` to move this file aside (it is kept) and rebuild the records from the sandbox and snapshot directories and the running VMs';
  return {
    condition,
    error: new RoostError('INVALID_STATE', `the Roost database ${path} ${what}: ${todo}`, {
      details: { path, condition },
      ...(cause !== undefined ? { cause } : {}),
    }),
  };
}

/**
 * Checks the database file before SQLite opens it: a missing or empty
 * file is a new database only when the home holds nothing a database
 * should describe. Null when SQLite may open (or create) it.
 */
export function checkDatabaseFile(home: string): DatabaseRefusal | null {
  const path = join(home, 'roost.db');
  let size: number | null = null;
  try {
    size = statSync(path).size;
  } catch {
    size = null;
  }
  if (size !== null && size > 0) return null;
  const held = homeContents(home);
  if (held.length === 0) return null;
  const what = `is ${size === null ? 'missing' : 'empty (0 bytes)'}, but the home holds ${held.join(', ')}`;
  return refusal(size === null ? 'missing' : 'empty', path, what);
}

/**
 * Checks an open database's tables: a database whose tables are not
 * Roost's (another program's SQLite file), or that lacks tables its
 * schema version must have, is refused. Null when it is Roost's.
 */
export function checkTables(path: string, tables: readonly string[], userVersion: number): DatabaseRefusal | null {
  const own = tables.filter((t) => !t.startsWith('sqlite_'));
  const foreign = own.filter((t) => !(t in ROOST_TABLES));
  if (foreign.length > 0) {
    return refusal('foreign', path, `is not Roost's (it has tables ${foreign.slice(0, 5).join(', ')}${foreign.length > 5 ? ', ...' : ''})`);
  }
  const missing = Object.entries(ROOST_TABLES)
    .filter(([t, v]) => v <= userVersion && !own.includes(t))
    .map(([t]) => t);
  if (missing.length > 0) return refusal('foreign', path, `lacks tables its schema version ${userVersion} has (${missing.join(', ')})`);
  return null;
}

/** True for SQLite's errors about a file that is not a database or is damaged. */
export function isNotADatabase(e: unknown): boolean {
  const code = (e as { code?: string }).code;
  return code === 'SQLITE_NOTADB' || code === 'SQLITE_CORRUPT';
}
