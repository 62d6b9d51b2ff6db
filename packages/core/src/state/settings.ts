import type Database from 'better-sqlite3';

/** Runtime settings of a home (limits, defaults), kept in its database as JSON values. */
export class Settings {
  readonly #db: Database.Database;

  constructor(db: Database.Database) {
    this.#db = db;
  }

  get<T>(key: string): T | undefined {
    const row = this.#db.prepare('SELECT value_json FROM settings WHERE key = ?').get(key) as { value_json: string } | undefined;
    return row ? (JSON.parse(row.value_json) as T) : undefined;
  }

  set(key: string, value: unknown): void {
    if (value === undefined) {
      this.#db.prepare('DELETE FROM settings WHERE key = ?').run(key);
      return;
    }
    this.#db
      .prepare('INSERT INTO settings (key, value_json) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value_json = excluded.value_json')
      .run(key, JSON.stringify(value));
  }

  all(): Record<string, unknown> {
    const rows = this.#db.prepare('SELECT key, value_json FROM settings ORDER BY key').all() as { key: string; value_json: string }[];
    return Object.fromEntries(rows.map((r) => [r.key, JSON.parse(r.value_json) as unknown]));
  }
}
