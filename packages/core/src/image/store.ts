import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { Readable } from 'node:stream';
import { lstat, mkdir, readdir, readFile, rm, stat, statfs } from 'node:fs/promises';
import { freemem } from 'node:os';
import { join } from 'node:path';
import type Database from 'better-sqlite3';
import { diskFullError, RoostError } from '../errors.js';
import { HomeLayout, roostHome } from '../home.js';
import { stateDb } from '../state/db.js';
import { EventLog } from '../state/events.js';
import { SandboxRecords } from '../state/sandboxes.js';
import { openDockerArchive, openOciLayout, writeOciLayout, type ExportFormat, type LocalImageSource } from './archive.js';
import { CredentialStore } from './auth.js';
import { isAlive } from '../proc.js';
import type { BuildCacheEntry, PushResult } from '@roost/api';
import { BlobStore, parseDigest } from './blobs.js';
import { MediaType, parseManifest, type Descriptor, type ImageConfig, type ImageSource, type PullProgress } from './manifest.js';
import { pullImage, type PulledImage } from './pull.js';
import { mountSources, pushDestination, pushImage, type PushImageOptions } from './push.js';
import { formatImageReference, parseImageReference, withDefaultTag, type ImageReference } from './reference.js';
import { RegistryClient, RegistrySource } from './registry.js';
import { buildRootfs, ROOTFS_FORMAT } from './rootfs.js';

/** What the store knows about one image. */
export interface ImageInfo {
  /** The platform manifest's digest: the image's identity. */
  id: string;
  /** Fully qualified names pointing at it (`docker.io/library/alpine:3.20`, `host:5000/app@sha256:...`). */
  tags: string[];
  /** Bytes stored for it (manifest, config, layers as downloaded); shared layers count for each image. */
  size: number;
  /** The config blob's digest (what Docker calls the image id). */
  configDigest: string;
  /** The layer blobs, bottom first. */
  layers: Descriptor[];
  config: ImageConfig;
  /** The index it was chosen from (multi-platform images), if any. */
  indexDigest?: string;
  created?: string;
  addedAt: string;
  /** Where it came from: a reference or an archive path. */
  source: string;
  /** Bytes of its built root filesystem, once a sandbox has used it. */
  rootfsSize?: number;
}

export interface PullOptions {
  signal?: AbortSignal;
  onProgress?: (p: PullProgress) => void;
  /** Concurrent layer downloads (default 3). */
  concurrency?: number;
}

export interface ImportOptions {
  signal?: AbortSignal;
  onProgress?: (p: PullProgress) => void;
  /** Which image of a multi-image archive (a ref name in the layout, or a RepoTag); default: the only one. */
  name?: string;
  /** Tag the imported image as this reference (default: the names in the archive). */
  tag?: string;
}

interface ImageRow {
  id: string;
  manifest_media_type: string;
  config_digest: string;
  config_json: string;
  index_digest: string | null;
  size: number;
  created: string | null;
  added_at: string;
  source: string;
  rootfs_size: number | null;
}

/**
 * The image store of a Roost home: blobs by digest under `images/blobs`, an
 * index of images, tags and layers in SQLite, and one read-only root
 * filesystem per image under `images/rootfs`, built on first use. Layers
 * shared between images are stored once. Safe to use from several processes.
 */
export class ImageStore {
  readonly blobs: BlobStore;
  readonly #layout: HomeLayout;
  readonly #db: Database.Database;
  readonly #client: RegistryClient;
  readonly #events: EventLog;
  readonly #sandboxRecords: SandboxRecords;

  constructor(options: { home?: string; client?: RegistryClient } = {}) {
    this.#layout = new HomeLayout(roostHome(options.home));
    this.blobs = new BlobStore(join(this.#layout.root, 'images', 'blobs'));
    this.#db = stateDb(this.#layout.root);
    this.#client = options.client ?? new RegistryClient({ credentials: this.credentials });
    this.#events = new EventLog(this.#db);
    this.#sandboxRecords = new SandboxRecords(this.#db);
  }

  /** Registry credentials: `roost login` first, then Docker's config. */
  get credentials(): CredentialStore {
    return new CredentialStore({ roostAuthFile: join(this.#layout.root, 'auth.json') });
  }

  get client(): RegistryClient {
    return this.#client;
  }

  /**
   * Pulls an image from its registry (layers already stored are not fetched
   * again) and tags it with the reference. Returns the image.
   */
  async pull(reference: string, options: PullOptions = {}): Promise<ImageInfo> {
    const ref = parseImageReference(reference);
    const source = new RegistrySource(this.#client, ref);
    try {
      const pulled = await this.#copy(source, ref.digest ?? ref.tag ?? 'latest', formatImageReference(ref), options);
      const info = this.#record(pulled, [nameFor(ref, pulled)], formatImageReference(ref));
      this.#events.append('image.pulled', { imageId: info.id, data: { reference: formatImageReference(ref), tags: info.tags, size: info.size } });
      return info;
    } catch (e) {
      // Blobs and layers say which directory is full; the index's write is roost.db.
      throw diskFullError(e, this.#db.name) ?? e;
    } finally {
      await source.close?.();
    }
  }

  /**
   * Imports from an OCI image layout (a directory or a tar of one) or a
   * `docker save` archive. Tags: `options.tag`, else the names the archive
   * gives. Returns the image.
   */
  async import(path: string, options: ImportOptions = {}): Promise<ImageInfo> {
    const source = await openArchive(path);
    try {
      const digest = source.resolve(options.name);
      const pulled = await this.#copy(source, digest, source.description, options);
      const names = options.tag
        ? [formatImageReference(withDefaultTag(parseImageReference(options.tag)))]
        : source
            .refs()
            .filter((r) => r.digest === digest && r.name !== undefined)
            .map((r) => tryQualify(r.name!))
            .filter((n): n is string => n !== null);
      const info = this.#record(pulled, names, `archive:${path}`);
      this.#events.append('image.pulled', { imageId: info.id, data: { archive: path, tags: info.tags, size: info.size } });
      return info;
    } catch (e) {
      throw diskFullError(e, this.#db.name) ?? e;
    } finally {
      await source.close?.();
    }
  }

  /**
   * Pushes a stored image (by name, digest or id) to a registry:
   * `options.destination` (`REGISTRY/REPO[:TAG]`), else the image's own
   * name. The manifest goes as stored, so the pushed digest is the image id.
   * Blobs the repository has are skipped; blobs that an image of this store
   * was pulled from or pushed to another repository of the same registry
   * with are mounted from there when the registry agrees. NOT_FOUND for an
   * image not stored; see pushImage for the rest.
   */
  async push(reference: string, options: PushImageOptions & { destination?: string } = {}): Promise<PushResult> {
    const image = this.inspect(reference);
    const destination = pushDestination(reference, image, options.destination);
    const row = this.#row(image.id)!;
    const manifestBytes = await readFile(this.blobs.path(image.id)).catch((e: unknown) => {
      throw new RoostError('IMAGE', `the manifest of image ${image.id} is missing from the store: pull or build the image again`, { cause: e });
    });
    const parsed = parseManifest(manifestBytes, row.manifest_media_type);
    if (parsed.kind !== 'manifest') throw new RoostError('INTERNAL', `stored manifest ${image.id} is an index`);
    const pushedTo = this.#pushDestinations();
    const result = await pushImage(
      this.#client,
      {
        imageId: image.id,
        manifestBytes,
        manifestMediaType: row.manifest_media_type,
        config: parsed.manifest.config,
        layers: parsed.manifest.layers,
        blobPath: (d) => this.blobs.path(d),
        mountFrom: (d) =>
          mountSources(
            destination,
            this.#imagesHolding(d).flatMap((id) => [...(pushedTo.get(id) ?? []), this.#row(id)?.source ?? '']),
          ),
      },
      destination,
      options,
    );
    this.#events.append('image.pushed', {
      imageId: image.id,
      data: { reference, destination: result.destination, manifestDigest: result.manifestDigest, blobs: result.blobs, bytes: result.bytes },
    });
    return result;
  }

  /**
   * Records an image whose layer blobs are in the store already (an image
   * builder's): the manifest and config are stored, verified like a pull's,
   * and the image tagged with `names`. Returns the image.
   */
  async addLocal(
    image: { manifestBytes: Buffer; configBytes: Buffer; description: string },
    names: string[],
    options: { event?: boolean; signal?: AbortSignal } = {},
  ): Promise<ImageInfo> {
    const blobs = this.blobs;
    const configDigest = `sha256:${createHash('sha256').update(image.configBytes).digest('hex')}`;
    const source: ImageSource = {
      description: image.description,
      getManifest: async () => ({ bytes: image.manifestBytes, mediaType: MediaType.ociManifest }),
      openBlob: async (d) => (d.digest === configDigest ? Readable.from([image.configBytes]) : createReadStream(blobs.path(d.digest))),
    };
    try {
      const pulled = await this.#copy(source, 'built', image.description, options.signal ? { signal: options.signal } : {});
      const info = this.#record(pulled, names, image.description);
      if (options.event !== false) this.#events.append('image.built', { imageId: info.id, data: { tags: info.tags, size: info.size } });
      return info;
    } catch (e) {
      throw diskFullError(e, this.#db.name) ?? e;
    }
  }

  /** The image's own config document (the OCI or Docker config JSON, as stored). */
  async rawConfig(reference: string): Promise<Record<string, unknown>> {
    const row = this.#row(this.inspect(reference).id)!;
    return JSON.parse(await readFile(this.blobs.path(row.config_digest), 'utf8')) as Record<string, unknown>;
  }

  /** The image's layers in order, with their diff ids. */
  layersOf(reference: string): { layers: Descriptor[]; diffIds: string[] } {
    const row = this.#row(this.inspect(reference).id)!;
    return { layers: this.#layers(row.id), diffIds: (JSON.parse(row.config_json) as ImageConfig).diffIds };
  }

  /** Writes an image out as an OCI layout directory, an OCI archive (tar) or a `docker save` archive. */
  async export(reference: string, dest: string, options: { format?: ExportFormat; signal?: AbortSignal } = {}): Promise<void> {
    const image = this.inspect(reference);
    const layers = this.#layers(image.id);
    const manifestBytes = await readFile(this.blobs.path(image.id));
    const row = this.#row(image.id)!;
    const parsed = parseManifest(manifestBytes, row.manifest_media_type);
    if (parsed.kind !== 'manifest') throw new RoostError('INTERNAL', `stored manifest ${image.id} is an index`);
    const name = image.tags.find((t) => !t.includes('@'));
    await writeOciLayout(
      {
        ...(name ? { name } : {}),
        manifestBytes,
        manifestMediaType: row.manifest_media_type,
        manifestDigest: image.id,
        config: parsed.manifest.config,
        layers,
        blobPath: (d) => this.blobs.path(d),
      },
      dest,
      { format: options.format ?? 'oci-archive', ...(options.signal ? { signal: options.signal } : {}) },
    );
  }

  /** Every image, newest first. */
  list(): ImageInfo[] {
    const rows = this.#db.prepare('SELECT * FROM images ORDER BY added_at DESC').all() as ImageRow[];
    return rows.map((r) => this.#info(r));
  }

  /** An image by name (`alpine`, `host:5000/app:1`), digest, or id prefix (12+ hex digits); undefined when absent. */
  find(reference: string): ImageInfo | undefined {
    const row = this.#lookup(reference);
    return row ? this.#info(row) : undefined;
  }

  /** Like `find`, but a missing image is NOT_FOUND. */
  inspect(reference: string): ImageInfo {
    const info = this.find(reference);
    if (!info) throw new RoostError('NOT_FOUND', `no image ${reference} in the store (see \`roost images ls\`; \`roost pull ${reference}\` fetches it)`);
    return info;
  }

  /** Adds a name for an image. */
  tag(reference: string, name: string): void {
    const image = this.inspect(reference);
    const full = formatImageReference(withDefaultTag(parseImageReference(name)));
    this.#db
      .prepare(
        'INSERT INTO tags (name, image_id, updated_at) VALUES (?, ?, ?) ON CONFLICT(name) DO UPDATE SET image_id = excluded.image_id, updated_at = excluded.updated_at',
      )
      .run(full, image.id, new Date().toISOString());
  }

  /**
   * Removes a name; the image itself goes once no name points at it, with
   * the blobs and root filesystem nothing else uses. By id, every name goes.
   * An image a sandbox uses is refused (INVALID_STATE) unless `force`: its
   * sandboxes keep working, since the root filesystem is only unlinked.
   */
  async remove(reference: string, options: { force?: boolean } = {}): Promise<{ untagged: string[]; deleted: string[] }> {
    const row = this.#lookup(reference);
    if (!row) throw new RoostError('NOT_FOUND', `no image ${reference} in the store (see \`roost images ls\`)`);
    const tags = this.#tags(row.id);
    const byName = this.#tagFor(reference);
    const untag = byName && tags.length > 1 ? [byName] : tags;
    const goes = untag.length === tags.length;
    if (goes && !options.force) {
      const users = this.#sandboxesUsing(row.id);
      if (users.length > 0) {
        throw new RoostError(
          'INVALID_STATE',
          `image ${reference} is used by sandbox${users.length > 1 ? 'es' : ''} ${users.join(', ')}: remove ${users.length > 1 ? 'them' : 'it'} first, or use force`,
        );
      }
    }
    const del = this.#db.prepare('DELETE FROM tags WHERE name = ?');
    this.#db.transaction(() => untag.forEach((t) => del.run(t)))();
    if (!goes) return { untagged: untag, deleted: [] };
    const deleted = await this.#deleteImages([row.id]);
    for (const id of deleted) this.#events.append('image.deleted', { imageId: id, data: { reference, untagged: untag } });
    return { untagged: untag, deleted };
  }

  /**
   * The steps the image builder's cache knows (the build_cache table, which
   * the builder fills and `prune` clears), most recently used first.
   */
  buildCache(): BuildCacheEntry[] {
    const rows = this.#db.prepare('SELECT key, step, layer_digest, size, created_at, used_at FROM build_cache ORDER BY used_at DESC, key').all() as {
      key: string;
      step: string;
      layer_digest: string | null;
      size: number | null;
      created_at: string;
      used_at: string;
    }[];
    return rows.map((r) => ({
      key: r.key,
      step: r.step,
      layer: r.layer_digest,
      size: r.layer_digest === null ? null : r.size,
      createdAt: r.created_at,
      usedAt: r.used_at,
    }));
  }

  /** The home's directory of temp trees (`<home>/tmp`): names carrying their writer's pid are swept once it is gone. */
  get tmpDir(): string {
    return join(this.#layout.root, 'tmp');
  }

  /**
   * Removes images nothing names (or, with `all`, every image no sandbox
   * uses), then any blob and root filesystem no image references (leftovers
   * of interrupted pulls included), and clears the build cache. Returns what
   * went, the bytes freed and the build cache entries cleared.
   */
  async prune(options: { all?: boolean } = {}): Promise<{ deleted: string[]; reclaimedBytes: number; buildCacheEntries: number }> {
    const inUse = new Set(this.#imagesInUse());
    const candidates = (
      options.all
        ? (this.#db.prepare('SELECT id FROM images').all() as { id: string }[])
        : (this.#db.prepare('SELECT id FROM images WHERE id NOT IN (SELECT image_id FROM tags)').all() as { id: string }[])
    )
      .map((r) => r.id)
      .filter((id) => !inUse.has(id));
    if (options.all) {
      const del = this.#db.prepare('DELETE FROM tags WHERE image_id = ?');
      this.#db.transaction(() => candidates.forEach((id) => del.run(id)))();
    }
    let reclaimedBytes = 0;
    // The build cache goes too: its layers are freed below unless an image uses them.
    const buildCacheEntries = this.#db.prepare('DELETE FROM build_cache').run().changes;
    const deleted = await this.#deleteImages(candidates, (n) => (reclaimedBytes += n));
    for (const id of deleted) this.#events.append('image.deleted', { imageId: id, data: { pruned: true } });
    reclaimedBytes += await this.#sweep();
    return { deleted, reclaimedBytes, buildCacheEntries };
  }

  /**
   * The image's read-only root filesystem, built on first use (layers
   * applied, erofs written) and shared by every sandbox of the image.
   */
  async rootfs(imageId: string, options: { signal?: AbortSignal; onProgress?: (line: string) => void } = {}): Promise<string> {
    const row = this.#row(imageId);
    if (!row) throw new RoostError('NOT_FOUND', `no image ${imageId} in the store`);
    const path = this.#rootfsPath(imageId);
    if (await stat(path).catch(() => null)) return path;
    const layers = this.#layers(imageId);
    for (const l of layers) {
      if (!(await this.blobs.has(l.digest, l.size))) {
        throw new RoostError('IMAGE', `layer ${l.digest} of image ${imageId} is missing from the store: pull the image again`);
      }
    }
    const config = JSON.parse(row.config_json) as ImageConfig;
    const build = (scratch: string) =>
      buildRootfs({
        blobs: this.blobs,
        layers,
        diffIds: config.diffIds,
        out: path,
        scratch,
        ...(options.signal ? { signal: options.signal } : {}),
        onProgress: (s) => options.onProgress?.(s.what === 'mkfs' ? 'writing the root filesystem' : `applying layer ${s.layer}/${s.of}`),
      });
    const onDisk = join(this.#layout.root, 'tmp');
    const inMemory = await memoryScratch(layers.reduce((n, l) => n + l.size, 0));
    let result: Awaited<ReturnType<typeof build>>;
    try {
      result = await build(inMemory ?? onDisk);
    } catch (e) {
      // The estimate was wrong (an image that compresses very well), or the
      // tmpfs cannot hold the image's xattrs: build on disk instead.
      if (!inMemory || !(e instanceof RoostError) || (e.details.errno !== 'ENOSPC' && e.details.errno !== 'ENOTSUP')) throw e;
      result = await build(onDisk);
    }
    const built = result;
    this.#db.prepare('UPDATE images SET rootfs_size = ? WHERE id = ?').run(built.size, imageId);
    return path;
  }

  // ---- internals -------------------------------------------------------------

  async #copy(source: ImageSource, tagOrDigest: string, image: string, options: PullOptions): Promise<PulledImage> {
    return pullImage(source, tagOrDigest, this.blobs, {
      image,
      ...(options.signal ? { signal: options.signal } : {}),
      ...(options.onProgress ? { onProgress: options.onProgress } : {}),
      ...(options.concurrency ? { concurrency: options.concurrency } : {}),
    });
  }

  #record(pulled: PulledImage, names: string[], source: string): ImageInfo {
    const now = new Date().toISOString();
    const { manifest, config } = pulled;
    const size = pulled.manifestBytes.length + manifest.config.size + manifest.layers.reduce((n, l) => n + l.size, 0);
    const db = this.#db;
    db.transaction(() => {
      db.prepare(
        `INSERT INTO images (id, manifest_media_type, config_digest, config_json, index_digest, size, created, added_at, source)
         VALUES (@id, @mt, @cd, @cj, @idx, @size, @created, @now, @source)
         ON CONFLICT(id) DO UPDATE SET index_digest = COALESCE(excluded.index_digest, images.index_digest)`,
      ).run({
        id: pulled.manifestDigest,
        mt: pulled.manifestMediaType,
        cd: manifest.config.digest,
        cj: JSON.stringify(config),
        idx: pulled.indexDigest ?? null,
        size,
        created: config.created ?? null,
        now,
        source,
      });
      const layer = db.prepare('INSERT INTO layers (digest, diff_id, size, media_type) VALUES (?, ?, ?, ?) ON CONFLICT(digest) DO NOTHING');
      const link = db.prepare('INSERT INTO image_layers (image_id, position, layer_digest) VALUES (?, ?, ?) ON CONFLICT DO NOTHING');
      manifest.layers.forEach((l, i) => {
        layer.run(l.digest, config.diffIds[i]!, l.size, l.mediaType);
        link.run(pulled.manifestDigest, i, l.digest);
      });
      const tag = db.prepare(
        'INSERT INTO tags (name, image_id, updated_at) VALUES (?, ?, ?) ON CONFLICT(name) DO UPDATE SET image_id = excluded.image_id, updated_at = excluded.updated_at',
      );
      for (const n of names) tag.run(n, pulled.manifestDigest, now);
    }).immediate();
    return this.inspect(pulled.manifestDigest);
  }

  #lookup(reference: string): ImageRow | undefined {
    const byId = this.#db.prepare('SELECT * FROM images WHERE id = ? OR index_digest = ? LIMIT 1');
    if (/^(sha256|sha512):[0-9a-f]+$/.test(reference)) {
      parseDigest(reference);
      return byId.get(reference, reference) as ImageRow | undefined;
    }
    if (/^[0-9a-f]{12,64}$/.test(reference)) {
      const rows = this.#db.prepare("SELECT * FROM images WHERE id LIKE 'sha256:' || ? || '%'").all(reference) as ImageRow[];
      if (rows.length > 1) throw new RoostError('INVALID_ARGUMENT', `"${reference}" matches ${rows.length} images: give more of the id`);
      if (rows[0]) return rows[0];
    }
    const name = this.#tagFor(reference);
    if (name)
      return this.#db.prepare('SELECT images.* FROM images JOIN tags ON tags.image_id = images.id WHERE tags.name = ?').get(name) as ImageRow | undefined;
    const ref = parseImageReference(reference);
    // A pinned reference whose digest we hold under another name still resolves.
    return ref.digest ? (byId.get(ref.digest, ref.digest) as ImageRow | undefined) : undefined;
  }

  /** The stored tag a user's reference means, if it is a name and one is stored. */
  #tagFor(reference: string): string | undefined {
    let ref: ImageReference;
    try {
      ref = parseImageReference(reference);
    } catch {
      return undefined;
    }
    const name = formatImageReference(ref.digest ? { registry: ref.registry, repository: ref.repository, digest: ref.digest } : withDefaultTag(ref));
    return (this.#db.prepare('SELECT name FROM tags WHERE name = ?').get(name) as { name: string } | undefined)?.name;
  }

  /** Images whose config or one of whose layers is this blob. */
  #imagesHolding(digest: string): string[] {
    const rows = this.#db
      .prepare('SELECT id FROM images WHERE config_digest = ? UNION SELECT image_id AS id FROM image_layers WHERE layer_digest = ?')
      .all(digest, digest) as { id: string }[];
    return rows.map((r) => r.id);
  }

  /** Where each image was pushed to, newest first (from the `image.pushed` events still kept). */
  #pushDestinations(): Map<string, string[]> {
    const rows = this.#db.prepare("SELECT image_id, data_json FROM events WHERE type = 'image.pushed' ORDER BY id DESC").all() as {
      image_id: string | null;
      data_json: string;
    }[];
    const out = new Map<string, string[]>();
    for (const r of rows) {
      const destination = (JSON.parse(r.data_json) as { destination?: unknown }).destination;
      if (r.image_id === null || typeof destination !== 'string') continue;
      out.set(r.image_id, [...(out.get(r.image_id) ?? []), destination]);
    }
    return out;
  }

  #row(id: string): ImageRow | undefined {
    return this.#db.prepare('SELECT * FROM images WHERE id = ?').get(id) as ImageRow | undefined;
  }

  #tags(id: string): string[] {
    return (this.#db.prepare('SELECT name FROM tags WHERE image_id = ? ORDER BY name').all(id) as { name: string }[]).map((r) => r.name);
  }

  #layers(id: string): Descriptor[] {
    return this.#db
      .prepare(
        'SELECT l.digest, l.size, l.media_type AS mediaType FROM image_layers il JOIN layers l ON l.digest = il.layer_digest WHERE il.image_id = ? ORDER BY il.position',
      )
      .all(id) as Descriptor[];
  }

  #info(row: ImageRow): ImageInfo {
    return {
      id: row.id,
      tags: this.#tags(row.id),
      size: row.size,
      configDigest: row.config_digest,
      layers: this.#layers(row.id),
      config: JSON.parse(row.config_json) as ImageConfig,
      ...(row.index_digest ? { indexDigest: row.index_digest } : {}),
      ...(row.created ? { created: row.created } : {}),
      addedAt: row.added_at,
      source: row.source,
      ...(row.rootfs_size !== null ? { rootfsSize: row.rootfs_size } : {}),
    };
  }

  #rootfsPath(imageId: string): string {
    return join(this.#layout.root, 'images', 'rootfs', `${parseDigest(imageId).hex}.${ROOTFS_FORMAT}`);
  }

  /**
   * Deletes image rows (and their tags), then the files no remaining image
   * references: layers, config, manifest, root filesystem. Rows first, in one
   * transaction, so a crash in between leaves only unreferenced files, which
   * `prune` sweeps.
   */
  async #deleteImages(ids: string[], freed: (bytes: number) => void = () => {}): Promise<string[]> {
    if (ids.length === 0) return [];
    const db = this.#db;
    const orphans: string[] = [];
    db.transaction(() => {
      for (const id of ids) {
        const row = this.#row(id);
        if (!row) continue;
        const layers = this.#layers(id).map((l) => l.digest);
        db.prepare('DELETE FROM images WHERE id = ?').run(id);
        for (const l of layers) {
          const still = db.prepare('SELECT 1 FROM image_layers WHERE layer_digest = ? LIMIT 1').get(l);
          if (!still) {
            db.prepare('DELETE FROM layers WHERE digest = ?').run(l);
            // A layer the build cache remembers stays (`prune` clears the cache first).
            if (!db.prepare('SELECT 1 FROM build_cache WHERE layer_digest = ? LIMIT 1').get(l)) orphans.push(l);
          }
        }
        if (!db.prepare('SELECT 1 FROM images WHERE config_digest = ? LIMIT 1').get(row.config_digest)) orphans.push(row.config_digest);
        orphans.push(id);
      }
    }).immediate();
    for (const d of orphans) {
      const st = await stat(this.blobs.path(d)).catch(() => null);
      if (st) freed(st.size);
      await this.blobs.remove(d);
    }
    for (const id of ids) {
      const p = this.#rootfsPath(id);
      const st = await stat(p).catch(() => null);
      if (st) freed(st.size);
      await rm(p, { force: true });
    }
    return ids;
  }

  /** Removes blobs and root filesystems that no image references, and temp files of dead processes. */
  async #sweep(): Promise<number> {
    let freed = 0;
    await this.blobs.sweepTemp();
    const referenced = new Set<string>();
    for (const r of this.#db.prepare('SELECT id, config_digest FROM images').all() as { id: string; config_digest: string }[]) {
      referenced.add(r.id);
      referenced.add(r.config_digest);
    }
    for (const r of this.#db.prepare('SELECT digest FROM layers').all() as { digest: string }[]) referenced.add(r.digest);
    // The image builder's cached layers stay while the cache remembers them (`prune` clears it first).
    for (const r of this.#db.prepare('SELECT layer_digest FROM build_cache WHERE layer_digest IS NOT NULL').all() as { layer_digest: string }[])
      referenced.add(r.layer_digest);
    for (const d of await this.blobs.list()) {
      if (referenced.has(d)) continue;
      const st = await stat(this.blobs.path(d)).catch(() => null);
      freed += st?.size ?? 0;
      await this.blobs.remove(d);
    }
    // Unpacked trees of builds whose process died.
    for (const scratch of [join(this.#layout.root, 'tmp'), MEMORY_SCRATCH]) {
      for (const f of await readdir(scratch).catch(() => [] as string[])) {
        if (f.startsWith('tree-') && !writerAlive(f)) await rm(join(scratch, f), { recursive: true, force: true });
      }
    }
    const rootfsDir = join(this.#layout.root, 'images', 'rootfs');
    const ids = new Set([...referenced].filter((d) => d.startsWith('sha256:')).map((d) => parseDigest(d).hex));
    for (const f of await readdir(rootfsDir).catch(() => [] as string[])) {
      const hex = f.split('.')[0] ?? '';
      if (ids.has(hex) && f === `${hex}.${ROOTFS_FORMAT}`) continue;
      if (f.includes('.tmp-') && writerAlive(f)) continue;
      const st = await stat(join(rootfsDir, f)).catch(() => null);
      freed += st?.size ?? 0;
      await rm(join(rootfsDir, f), { force: true, recursive: true });
    }
    return freed;
  }

  /** Images some sandbox record of this home runs. */
  #imagesInUse(): string[] {
    return [...this.#sandboxRecords.imageUsers().values()];
  }

  /** Sandboxes whose record runs this image. */
  #sandboxesUsing(imageId: string): string[] {
    return [...this.#sandboxRecords.imageUsers()].filter(([, image]) => image === imageId).map(([id]) => id);
  }
}

/** The name an image pulled by `ref` is stored under: its tag, or `repo@digest` for a pinned pull. */
function nameFor(ref: ImageReference, pulled: PulledImage): string {
  if (ref.tag && !ref.digest) return formatImageReference(ref);
  return formatImageReference({ registry: ref.registry, repository: ref.repository, digest: ref.digest ?? pulled.manifestDigest });
}

/**
 * A name from an archive, qualified. A bare word is dropped: OCI's
 * `ref.name` is often only a tag (`1.0`), which names no repository.
 */
function tryQualify(name: string): string | null {
  if (!name.includes('/') && !name.includes(':')) return null;
  try {
    return formatImageReference(withDefaultTag(parseImageReference(name)));
  } catch {
    return null;
  }
}

/** OCI layout (directory or tar) or docker-save archive, told apart by their contents. */
async function openArchive(path: string): Promise<LocalImageSource> {
  const st = await stat(path).catch(() => null);
  if (!st) throw new RoostError('NOT_FOUND', `${path} does not exist`);
  if (st.isDirectory()) return openOciLayout(path);
  try {
    return await openOciLayout(path);
  } catch (e) {
    if (!(e instanceof RoostError) || e.code !== 'IMAGE') throw e;
    try {
      return await openDockerArchive(path);
    } catch (e2) {
      throw new RoostError('IMAGE', `${path} is neither an OCI image layout nor a docker save archive: ${(e2 as Error).message}`, { cause: e2 });
    }
  }
}

/** Where root filesystems are unpacked when memory allows: a tmpfs (one directory per user). */
const MEMORY_SCRATCH = `/dev/shm/roost-${process.getuid?.() ?? 0}`;
const TMPFS_MAGIC = 0x01021994;

/**
 * A tmpfs directory to unpack an image into, when it has room for the
 * estimated tree (four times the compressed layers) twice over and the
 * host has that much memory available; null otherwise. Creating files on
 * tmpfs is about twenty times faster than on a journaled disk (measured:
 * Debian minbase, 0.23 s against 5 s for tar -x), and the tree lives only
 * while mkfs.erofs reads it.
 */
async function memoryScratch(compressedBytes: number): Promise<string | null> {
  if (process.env.ROOST_UNPACK_IN_MEMORY === '0') return null;
  const need = compressedBytes * 4 * 2;
  try {
    const fs = await statfs('/dev/shm');
    if (fs.type !== TMPFS_MAGIC || fs.bavail * fs.bsize < need || freemem() < need) return null;
    await mkdir(MEMORY_SCRATCH, { mode: 0o700 }).catch((e: NodeJS.ErrnoException) => {
      if (e.code !== 'EEXIST') throw e;
    });
    // /dev/shm is world-writable: use the directory only if it is really ours
    // (not a symlink or another user's), or someone could edit a tree before it is sealed.
    const st = await lstat(MEMORY_SCRATCH);
    if (!st.isDirectory() || st.uid !== process.getuid?.() || (st.mode & 0o077) !== 0) return null;
    return MEMORY_SCRATCH;
  } catch {
    return null;
  }
}

/** Whether the process that named a scratch file (`tree-<pid>-…`, `….tmp-<pid>-…`) still runs. */
function writerAlive(name: string): boolean {
  const pid = Number(/(?:^tree|\.tmp)-(\d+)-/.exec(name)?.[1]);
  return pid > 0 && isAlive(pid);
}
