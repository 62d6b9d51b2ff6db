import type Database from 'better-sqlite3';
import type { LayerBlob } from './layer.js';

/** One cached step: the layer it made (null: it changed no file). */
export interface CachedStep {
  key: string;
  layer: LayerBlob | null;
  step: string;
  createdAt: string;
  usedAt: string;
}

interface Row {
  key: string;
  layer_digest: string | null;
  diff_id: string | null;
  size: number | null;
  media_type: string | null;
  step: string;
  created_at: string;
  used_at: string;
}

/**
 * The image builder's cache (`build_cache` in roost.db): a step's key ->
 * the layer it made. It survives restarts; the image store keeps the blobs
 * of its layers (see ImageStore's sweep) until `roost images prune` clears
 * it. Concurrency: synchronous calls, each its own statement.
 */
export class BuildCache {
  constructor(private readonly db: Database.Database) {}

  /** The cached result of a step, if any (and marks it used). */
  get(key: string): CachedStep | undefined {
    const row = this.db.prepare('SELECT * FROM build_cache WHERE key = ?').get(key) as Row | undefined;
    if (!row) return undefined;
    this.db.prepare('UPDATE build_cache SET used_at = ? WHERE key = ?').run(new Date().toISOString(), key);
    return toStep(row);
  }

  /** Remembers a step's layer; `at` is when the step ran (the image's history says so, also when the cache answers later). */
  put(key: string, layer: LayerBlob | null, step: string, at: string): void {
    const now = new Date().toISOString();
    this.db
      .prepare(
        `INSERT INTO build_cache (key, layer_digest, diff_id, size, media_type, step, created_at, used_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)
         ON CONFLICT(key) DO UPDATE SET layer_digest = excluded.layer_digest, diff_id = excluded.diff_id, size = excluded.size,
           media_type = excluded.media_type, created_at = excluded.created_at, used_at = excluded.used_at`,
      )
      .run(key, layer?.digest ?? null, layer?.diffId ?? null, layer?.size ?? null, layer?.mediaType ?? null, step, at, now);
  }

  /** Every cached step, newest use first. */
  all(): CachedStep[] {
    return (this.db.prepare('SELECT * FROM build_cache ORDER BY used_at DESC').all() as Row[]).map(toStep);
  }

  /** Forgets cached steps (all of them, or those whose layer blob is gone); returns how many. */
  clear(which: 'all' | ((step: CachedStep) => boolean) = 'all'): number {
    if (which === 'all') return this.db.prepare('DELETE FROM build_cache').run().changes;
    let n = 0;
    for (const s of this.all()) if (which(s)) n += this.db.prepare('DELETE FROM build_cache WHERE key = ?').run(s.key).changes;
    return n;
  }
}

function toStep(row: Row): CachedStep {
  return {
    key: row.key,
    layer:
      row.layer_digest === null
        ? null
        : { digest: row.layer_digest, diffId: row.diff_id!, size: row.size!, mediaType: row.media_type ?? 'application/vnd.oci.image.layer.v1.tar+gzip' },
    step: row.step,
    createdAt: row.created_at,
    usedAt: row.used_at,
  };
}
