import { randomBytes } from 'node:crypto';
import { mkdirSync, readdirSync, renameSync } from 'node:fs';
import { rm } from 'node:fs/promises';
import { join } from 'node:path';
import type Database from 'better-sqlite3';
import { CreateVolumeRequestSchema, parseInput, VolumeNameSchema, type CreateVolumeRequest, type VolumeInfo, type VolumesApi } from '@roost/api';
import { Errno, P9Error, parseCredentials, RemoteBackend, writeCredentials, type RemoteCredentials } from '@roost/p9';
import { rethrowDiskFull, RoostError, throwIfDiskFull } from './errors.js';
import { roostHome } from './home.js';
import { stateDb } from './state/db.js';
import { EventLog } from './state/events.js';

interface VolumeRow {
  name: string;
  path: string;
  created_at: string;
  labels_json: string;
  quota_bytes: number | null;
  remote_json: string | null;
}

/** A remote volume's credentials file, in its directory. */
const REMOTE_CREDENTIALS = 'remote.credentials';

/** How long checking a remote volume's credentials may take. */
const REMOTE_CHECK_MS = 15_000;

/**
 * Parses a remote volume's credentials and connects with them once: bad
 * input and a server that refuses fail the create, not a sandbox later.
 */
async function checkRemote(text: string): Promise<RemoteCredentials> {
  let creds: RemoteCredentials;
  try {
    creds = parseCredentials(text, 'remote');
  } catch (e) {
    throw new RoostError('INVALID_ARGUMENT', `${(e as Error).message} (the credentials file \`roost volume serve\` wrote)`, { details: { field: 'remote' } });
  }
  let backend: RemoteBackend | undefined;
  const timer = new Promise<never>((_, reject) => setTimeout(() => reject(new Error(`no answer within ${REMOTE_CHECK_MS} ms`)), REMOTE_CHECK_MS).unref());
  try {
    backend = await Promise.race([RemoteBackend.connect(creds, { outageTimeoutMs: REMOTE_CHECK_MS }), timer]);
  } catch (e) {
    const errno = e instanceof P9Error ? e.errno : undefined;
    const why = (e as Error).message;
    if (errno === Errno.EACCES || errno === Errno.EPERM)
      throw new RoostError('PERMISSION_DENIED', `${creds.url} refused these credentials: ${why}`, { details: { url: creds.url } });
    throw new RoostError('UNAVAILABLE', `cannot reach the volume server ${creds.url}: ${why}`, { details: { url: creds.url } });
  }
  await backend.close().catch(() => {});
  return creds;
}

/** Directories of volumes being removed start with this (a volume name cannot: it starts with a letter or digit). */
const TRASH_PREFIX = '.removing-';

/**
 * The named volumes of a Roost home: each is a directory
 * (`<home>/volumes/<name>/data`) recorded in the home's database, mounted
 * into sandboxes by Roost's 9P file server, and kept after the sandboxes that used it
 * are gone. A volume is created by `create`, or on first use by a sandbox
 * that names it. Safe to use from several processes (and beside a running
 * runtime): the checks and changes that must agree are SQLite transactions.
 */
export class Volumes implements VolumesApi {
  /** `<home>/volumes`. */
  readonly root: string;
  readonly #db: Database.Database;
  readonly #events: EventLog;

  constructor(options: { home?: string } = {}) {
    const home = roostHome(options.home);
    this.root = join(home, 'volumes');
    this.#db = stateDb(home);
    this.#events = new EventLog(this.#db);
  }

  /**
   * Creates a named volume: an empty directory, or with `remote`, a volume
   * another host serves (`roost volume serve`): its credentials are checked
   * by connecting (PERMISSION_DENIED for a refused token or a certificate
   * that is not the pinned one, UNAVAILABLE for a server that cannot be
   * reached) and kept in a 0600 file; the token is never shown again.
   * ALREADY_EXISTS when the name is taken.
   */
  async create(request: CreateVolumeRequest): Promise<VolumeInfo> {
    const req = parseInput(CreateVolumeRequestSchema, request, 'volume') as CreateVolumeRequest;
    checkName(req.name);
    let remote: RemoteCredentials | undefined;
    if (req.remote !== undefined) {
      if (req.quotaBytes !== undefined)
        throw new RoostError('INVALID_ARGUMENT', 'quotaBytes: a remote volume has the limits its server sets', { details: { field: 'quotaBytes' } });
      remote = await checkRemote(req.remote);
    }
    try {
      return this.#db
        .transaction(() => {
          if (this.#row(req.name))
            throw new RoostError('ALREADY_EXISTS', `volume ${req.name} already exists (see \`roost volume ls\`)`, { details: { name: req.name } });
          return this.#insert(req.name, req.labels ?? {}, req.quotaBytes, remote);
        })
        .immediate();
    } catch (e) {
      rethrowDiskFull(e, this.#db.name);
    }
  }

  /** @internal Where a remote volume's credentials are (0600). */
  _credentialsPath(name: string): string {
    return join(this.root, name, REMOTE_CREDENTIALS);
  }

  /** A volume by name; NOT_FOUND when there is none. */
  async get(name: string): Promise<VolumeInfo> {
    checkName(name);
    const row = this.#row(name);
    if (!row) throw notFound(name);
    return this.#info(row, this.#users().get(name) ?? []);
  }

  /** Every volume, by name. */
  async list(): Promise<VolumeInfo[]> {
    const rows = this.#db.prepare('SELECT * FROM volumes ORDER BY name').all() as VolumeRow[];
    const users = this.#users();
    return rows.map((r) => this.#info(r, users.get(r.name) ?? []));
  }

  /**
   * Removes a volume and its data. INVALID_STATE, naming them, while
   * sandboxes that are not removed (stopped ones included) mount it.
   */
  async remove(name: string): Promise<void> {
    checkName(name);
    const trash = join(this.root, `${TRASH_PREFIX}${randomBytes(6).toString('hex')}`);
    const moved = this.#db
      .transaction(() => {
        const row = this.#row(name);
        if (!row) throw notFound(name);
        const users = this.#users().get(name) ?? [];
        if (users.length > 0) {
          throw new RoostError(
            'INVALID_STATE',
            `volume ${name} is mounted by sandbox${users.length > 1 ? 'es' : ''} ${users.join(', ')}: remove ${users.length > 1 ? 'them' : 'it'} first`,
            {
              details: { name, sandboxes: users },
            },
          );
        }
        this.#db.prepare('DELETE FROM volumes WHERE name = ?').run(name);
        this.#events.append('volume.removed', { data: { name } });
        // Moved aside inside the transaction: a volume of the same name made right after gets a fresh directory,
        // never this one's data, and a crash before the delete below leaves trash that `sweep` removes.
        try {
          renameSync(join(this.root, name), trash);
          return true;
        } catch (e) {
          if ((e as NodeJS.ErrnoException).code === 'ENOENT') return false;
          throw new RoostError('INTERNAL', `cannot remove the directory of volume ${name}: ${(e as Error).message}`, { cause: e });
        }
      })
      .immediate();
    if (moved) await rm(trash, { recursive: true, force: true });
  }

  /** The directory a volume's guests see. */
  dataPath(name: string): string {
    return join(this.root, name, 'data');
  }

  /**
   * @internal A volume for a sandbox to mount: the existing one, or a new
   * one (with its `volume.created` event). Synchronous, so the sandbox's
   * record and its volumes are written in one transaction: a concurrent
   * `remove` sees either both or neither.
   */
  _ensure(name: string): VolumeInfo {
    checkName(name);
    return this.#db.transaction(() => {
      const row = this.#row(name);
      if (row) {
        // Made again if it went missing on the host (someone removed it by hand): the guest must mount something.
        if (row.remote_json === null) mkdirSync(row.path, { recursive: true, mode: 0o755 });
        return this.#info(row, []);
      }
      return this.#insert(name, {});
    })();
  }

  /** Removes what interrupted removals left (called when a runtime opens). */
  async sweep(): Promise<void> {
    let entries: string[];
    try {
      entries = readdirSync(this.root);
    } catch {
      return;
    }
    for (const e of entries) if (e.startsWith(TRASH_PREFIX)) await rm(join(this.root, e), { recursive: true, force: true });
  }

  // ---- internals -------------------------------------------------------------

  #row(name: string): VolumeRow | undefined {
    return this.#db.prepare('SELECT * FROM volumes WHERE name = ?').get(name) as VolumeRow | undefined;
  }

  /** Inserts a volume and makes its directory; call inside a transaction. */
  #insert(name: string, labels: Record<string, string>, quotaBytes?: number, remote?: RemoteCredentials): VolumeInfo {
    // A remote volume's "path" is its URL: nothing of it is on this host but its credentials.
    const path = remote ? remote.url : this.dataPath(name);
    const remoteInfo = remote ? { url: remote.url, fingerprint: remote.fingerprint ?? '', readOnly: remote.readOnly } : null;
    const createdAt = new Date().toISOString();
    this.#db
      .prepare('INSERT INTO volumes (name, path, created_at, labels_json, quota_bytes, remote_json) VALUES (?, ?, ?, ?, ?, ?)')
      .run(name, path, createdAt, JSON.stringify(labels), quotaBytes ?? null, remoteInfo ? JSON.stringify(remoteInfo) : null);
    try {
      // The volume's own directory is private to the host user; its data is what guests see.
      mkdirSync(this.root, { recursive: true, mode: 0o700 });
      mkdirSync(join(this.root, name), { recursive: true, mode: 0o700 });
      if (remote) writeCredentials(this._credentialsPath(name), remote);
      else mkdirSync(path, { recursive: true, mode: 0o755 });
    } catch (e) {
      throwIfDiskFull(e, path);
      throw new RoostError('INTERNAL', `cannot create the directory of volume ${name} (${path}): ${(e as Error).message}`, { cause: e });
    }
    this.#events.append('volume.created', { data: { name, path, labels, ...(remoteInfo ? { remote: remoteInfo } : {}) } });
    return this.#info(this.#row(name)!, []);
  }

  /** Volume name -> ids of the sandboxes (any status: removed ones have no record) whose records mount it. */
  #users(): Map<string, string[]> {
    const rows = this.#db
      .prepare(
        `SELECT s.id AS id, json_extract(v.value, '$.source') AS source
         FROM sandboxes s, json_each(s.info_json, '$.volumes') v
         ORDER BY s.created_at, s.id`,
      )
      .all() as { id: string; source: unknown }[];
    const out = new Map<string, string[]>();
    for (const r of rows) {
      // Host directories are absolute paths; anything else is a volume name.
      if (typeof r.source !== 'string' || r.source.startsWith('/')) continue;
      const ids = out.get(r.source) ?? [];
      if (!ids.includes(r.id)) ids.push(r.id);
      out.set(r.source, ids);
    }
    return out;
  }

  #info(row: VolumeRow, usedBy: string[]): VolumeInfo {
    return {
      name: row.name,
      path: row.path,
      createdAt: row.created_at,
      labels: JSON.parse(row.labels_json) as Record<string, string>,
      usedBy,
      ...(row.quota_bytes !== null ? { quotaBytes: row.quota_bytes } : {}),
      ...(row.remote_json !== null ? { remote: JSON.parse(row.remote_json) as NonNullable<VolumeInfo['remote']> } : {}),
    };
  }
}

function checkName(name: string): void {
  const r = VolumeNameSchema.safeParse(name);
  if (!r.success)
    throw new RoostError('INVALID_ARGUMENT', `"${String(name).slice(0, 200)}" is not a volume name: ${r.error.issues[0]?.message ?? 'invalid'}`, {
      details: { field: 'name' },
    });
}

function notFound(name: string): RoostError {
  return new RoostError('NOT_FOUND', `no volume ${name} (see \`roost volume ls\`)`, { details: { name } });
}
