import type Database from 'better-sqlite3';
import type { SandboxInfo } from '@roost/api';
import { RoostError } from '../errors.js';

/**
 * Sandbox records in the home's database. The whole SandboxInfo is one JSON
 * column; status, pid and image are columns too, for queries. Writes are
 * synchronous (better-sqlite3): a record is on disk before the caller acts on it.
 */
export class SandboxRecords {
  readonly #db: Database.Database;
  readonly #put: Database.Statement;
  readonly #get: Database.Statement;
  readonly #resolve: Database.Statement;

  constructor(db: Database.Database) {
    this.#db = db;
    this.#put = db.prepare(
      `INSERT INTO sandboxes (id, status, created_at, updated_at, pid, image_id, info_json) VALUES (@id, @status, @createdAt, @updatedAt, @pid, @imageId, @json)
       ON CONFLICT(id) DO UPDATE SET status = @status, updated_at = @updatedAt, pid = @pid, image_id = @imageId, info_json = @json`,
    );
    this.#get = db.prepare('SELECT info_json FROM sandboxes WHERE id = ?');
    this.#resolve = db.prepare("SELECT id FROM sandboxes WHERE id >= ? AND id < ? || 'g' LIMIT 2");
  }

  get db(): Database.Database {
    return this.#db;
  }

  get(id: string): SandboxInfo | undefined {
    const row = this.#get.get(id) as { info_json: string } | undefined;
    return row ? (JSON.parse(row.info_json) as SandboxInfo) : undefined;
  }

  /** Every record, newest first. */
  all(): SandboxInfo[] {
    const rows = this.#db.prepare('SELECT info_json FROM sandboxes ORDER BY created_at DESC, id').all() as { info_json: string }[];
    return rows.map((r) => JSON.parse(r.info_json) as SandboxInfo);
  }

  put(info: SandboxInfo): void {
    this.#put.run({
      id: info.id,
      status: info.status,
      createdAt: info.createdAt,
      updatedAt: new Date().toISOString(),
      pid: info.pid,
      imageId: info.image?.id ?? null,
      json: JSON.stringify(info),
    });
  }

  delete(id: string): void {
    this.#db.prepare('DELETE FROM sandboxes WHERE id = ?').run(id);
  }

  /** A full id from an id or a unique prefix of one. */
  resolve(id: string, home: string): string {
    if (!/^[0-9a-f]{1,12}$/.test(id)) throw new RoostError('INVALID_ARGUMENT', `"${id}" is not a sandbox id (12 hex digits, or a unique prefix)`);
    const rows = this.#resolve.all(id, id) as { id: string }[];
    if (rows.length === 0) throw new RoostError('NOT_FOUND', `no sandbox ${id} in ${home} (see \`roost ps -a\`)`);
    if (rows.length > 1) throw new RoostError('INVALID_ARGUMENT', `"${id}" matches more than one sandbox: give more of the id`);
    return rows[0]!.id;
  }

  /** Sandbox id -> image id, for every sandbox that runs an image. */
  imageUsers(): Map<string, string> {
    const rows = this.#db.prepare('SELECT id, image_id FROM sandboxes WHERE image_id IS NOT NULL').all() as { id: string; image_id: string }[];
    return new Map(rows.map((r) => [r.id, r.image_id]));
  }
}
