import { randomBytes } from 'node:crypto';
import { readdir, rm, stat } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import type Database from 'better-sqlite3';
import type { SnapshotInfo, SnapshotKind, VolumeMount } from '@roost/api';
import type { Assets } from '../assets.js';
import { RoostError } from '../errors.js';
import type { HomeLayout } from '../home.js';
import { readWitness, removeWitness, writeWitness } from '../state/witness.js';
import { hashFile, ramChecksum } from './memory.js';
import { isAlive } from '../proc.js';
import { tempOwner } from '../state/sweep.js';

/** The snapshot directory's layout version; a snapshot of another format is refused. */
export const SNAPSHOT_FORMAT = 1;

/** What a snapshot was made with and of, checked before it is restored. */
export interface SnapshotManifest {
  format: number;
  /** The build that must restore it: QEMU, the kernel and initramfs (by their cache keys) and the agent. */
  qemuVersion: string;
  kernel: string;
  initramfs: string;
  agentHash: string;
  accel: 'kvm' | 'tcg';
  /** The NIC's network mode (absent in snapshots from before networking: none). The NIC is one of the saved devices. */
  network?: 'none' | 'user' | 'bridge';
  /** The source's MAC (a user-mode copy keeps it). */
  mac?: string;
  /** The read-only root filesystem image the guest had (its page cache holds parts of it). */
  rootfs: { path: string; size: number };
  files: {
    memory: { size: number; checksum: string };
    state: { size: number; sha256: string };
    disk: { size: number; sha256: string };
    /** The volumes' 9P sessions (fileserver FileServerState), when the source mounted volumes. */
    volumes?: { size: number; sha256: string };
  };
  /** The source's volumes: a restored copy mounts the same sources (absent: none). */
  volumes?: VolumeMount[];
}

/** A snapshot as stored: its info (dependents are computed) and manifest. */
export interface SnapshotRecord extends Omit<SnapshotInfo, 'dependents'> {
  manifest: SnapshotManifest;
}

/**
 * A snapshot's files. `overlay.qcow2` is an empty qcow2 layer over `disk.qcow2`
 * that each restore copies as its disk (cheaper than running qemu-img).
 */
export const SNAPSHOT_FILES = {
  memory: 'memory',
  state: 'state',
  disk: 'disk.qcow2',
  overlay: 'overlay.qcow2',
  manifest: 'manifest.json',
  volumes: 'volumes.json',
} as const;

const SNAPSHOT_WITNESS = 'roost.snapshot';

/** Writes a snapshot's witness (its whole record) into its directory, before the directory is renamed into place. */
export function writeSnapshotWitness(dir: string, rec: SnapshotRecord): void {
  writeWitness(dir, SNAPSHOT_WITNESS, rec);
}

/** The record a snapshot directory's witness holds, if it is readable and for that directory. */
export function readSnapshotWitness(dir: string, id: string): SnapshotRecord | null {
  return readWitness(dir, SNAPSHOT_WITNESS, (r) => {
    const v = r as Partial<SnapshotRecord> | null;
    if (!v || v.id !== id || typeof v.name !== 'string' || typeof v.kind !== 'string' || typeof v.createdAt !== 'string') return null;
    if (!v.manifest || typeof v.manifest !== 'object' || !v.manifest.files) return null;
    return v as SnapshotRecord;
  });
}

/**
 * Why a snapshot was not made by this build (the VMM's version, kernel,
 * initramfs, agent), or null when it was.
 */
export function buildMismatch(rec: SnapshotRecord, assets: Assets, vmmVersion: string): string | null {
  const m = rec.manifest;
  if (m.format !== SNAPSHOT_FORMAT) return `it has format ${m.format}, this Roost reads ${SNAPSHOT_FORMAT}`;
  const now = { ...buildIdentity(assets), qemuVersion: vmmVersion };
  if (m.qemuVersion !== now.qemuVersion) return `it was made by ${m.qemuVersion}, this host runs ${now.qemuVersion}: take it again`;
  if (m.kernel !== now.kernel) return `it was made with guest kernel ${m.kernel}, the current build is ${now.kernel}: take it again`;
  if (m.initramfs !== now.initramfs || m.agentHash !== now.agentHash)
    return `it was made with guest agent ${m.agentHash}, the current build is ${now.agentHash}: take it again`;
  return null;
}

/** The build identity of the current assets, as a manifest records it. */
export function buildIdentity(assets: Assets): { kernel: string; initramfs: string; agentHash: string } {
  return { kernel: basename(dirname(assets.kernel)), initramfs: basename(assets.initramfs), agentHash: assets.agentHash };
}

/**
 * The snapshots of a home: records in SQLite (`snapshots`), files in
 * `<home>/snapshots/<id>/`. A snapshot's files are written to a temporary
 * directory and renamed into place before its record is inserted, so a
 * record always has whole files. Each directory holds its record's
 * witness (`record.json`), so a directory without a record (a crash in
 * between, or a lost database) is recorded again by `sweep`; one without
 * either is removed.
 */
export class SnapshotStore {
  readonly #db: Database.Database;
  readonly #layout: HomeLayout;
  /** Snapshots whose files were checked in this process, by id, with the files' identity when checked. */
  readonly #verified = new Map<string, string>();
  /** The VMM's build (QEMU's `--version`), recorded with every snapshot. */
  readonly vmmVersion: () => Promise<string>;

  constructor(db: Database.Database, layout: HomeLayout, vmmVersion: () => Promise<string>) {
    this.#db = db;
    this.#layout = layout;
    this.vmmVersion = vmmVersion;
  }

  /** Why `rec` was not made by this build, or null when it was (see `buildMismatch`). */
  async mismatch(rec: SnapshotRecord, assets: Assets): Promise<string | null> {
    return buildMismatch(rec, assets, await this.vmmVersion());
  }

  dir(id: string): string {
    return this.#layout.snapshot(id);
  }

  newId(): string {
    for (;;) {
      const id = randomBytes(6).toString('hex');
      if (!this.find(id)) return id;
    }
  }

  /**
   * By id, else by exact name. New names cannot look like ids (nameSchema in
   * @roost/api); an id-like name an older home kept never shadows an id.
   */
  find(nameOrId: string): SnapshotRecord | undefined {
    const row = this.#db.prepare('SELECT info_json FROM snapshots WHERE name = ? OR id = ? ORDER BY id = ? DESC LIMIT 1').get(nameOrId, nameOrId, nameOrId) as
      { info_json: string } | undefined;
    return row ? (JSON.parse(row.info_json) as SnapshotRecord) : undefined;
  }

  get(nameOrId: string): SnapshotRecord {
    const rec = this.find(nameOrId);
    if (!rec) throw new RoostError('NOT_FOUND', `no snapshot ${nameOrId} (see \`roost snapshots ls\`)`, { details: { snapshot: nameOrId } });
    return rec;
  }

  all(): SnapshotRecord[] {
    const rows = this.#db.prepare('SELECT info_json FROM snapshots ORDER BY created_at DESC, id').all() as { info_json: string }[];
    return rows.map((r) => JSON.parse(r.info_json) as SnapshotRecord);
  }

  /** What depends on a snapshot: sandboxes restored from it (not removed) and snapshots layered on it. */
  dependents(id: string): SnapshotInfo['dependents'] {
    const sandboxes = (
      this.#db.prepare("SELECT id FROM sandboxes WHERE json_extract(info_json, '$.snapshot') = ? ORDER BY created_at").all(id) as { id: string }[]
    ).map((r) => r.id);
    const snapshots = (this.#db.prepare('SELECT name FROM snapshots WHERE parent_id = ? ORDER BY created_at').all(id) as { name: string }[]).map((r) => r.name);
    return { sandboxes, snapshots };
  }

  info(rec: SnapshotRecord): SnapshotInfo {
    const info: Partial<SnapshotRecord> = { ...rec };
    delete info.manifest;
    return { ...(info as Omit<SnapshotRecord, 'manifest'>), dependents: this.dependents(rec.id) };
  }

  /** Records a snapshot whose files are in place; ALREADY_EXISTS if its name was taken meanwhile. */
  insert(rec: SnapshotRecord): void {
    try {
      this.#db
        .prepare('INSERT INTO snapshots (id, name, kind, parent_id, created_at, info_json) VALUES (?, ?, ?, ?, ?, ?)')
        .run(rec.id, rec.name, rec.kind, rec.parent, rec.createdAt, JSON.stringify(rec));
    } catch (e) {
      if ((e as { code?: string }).code === 'SQLITE_CONSTRAINT_UNIQUE') throw nameTaken(rec.name);
      throw e;
    }
  }

  /** Throws ALREADY_EXISTS when a snapshot has this name. */
  checkNameFree(name: string): void {
    if (this.#db.prepare('SELECT 1 FROM snapshots WHERE name = ?').get(name)) throw nameTaken(name);
  }

  /**
   * Removes a snapshot's record and files. INVALID_STATE, naming them, while
   * sandboxes restored from it exist or snapshots are layered on it.
   */
  async remove(nameOrId: string): Promise<SnapshotRecord> {
    const rec = this.get(nameOrId);
    const deleted = this.#db
      .transaction(() => {
        const deps = this.dependents(rec.id);
        if (deps.sandboxes.length > 0 || deps.snapshots.length > 0) {
          const what = [
            deps.sandboxes.length ? `sandbox${deps.sandboxes.length > 1 ? 'es' : ''} ${deps.sandboxes.join(', ')}` : '',
            deps.snapshots.length ? `snapshot${deps.snapshots.length > 1 ? 's' : ''} ${deps.snapshots.join(', ')}` : '',
          ].filter(Boolean);
          throw new RoostError(
            'INVALID_STATE',
            `snapshot ${rec.name} is in use by ${what.join(' and ')}: remove ${what.length > 1 || deps.sandboxes.length + deps.snapshots.length > 1 ? 'them' : 'it'} first`,
            {
              details: { snapshot: rec.name, ...deps },
            },
          );
        }
        return this.#db.prepare('DELETE FROM snapshots WHERE id = ?').run(rec.id).changes > 0;
      })
      .immediate();
    if (deleted) {
      this.#verified.delete(rec.id);
      removeWitness(this.dir(rec.id));
      await rm(this.dir(rec.id), { recursive: true, force: true });
    }
    return rec;
  }

  /**
   * Removes a snapshot of kind `fork` or `template` once nothing depends on
   * it and (for a template's) no template points at it any more; a no-op
   * otherwise. Called when a sandbox restored from it is removed.
   */
  async removeIfUnused(id: string): Promise<void> {
    const rec = this.find(id);
    if (!rec || rec.kind === 'user') return;
    if (rec.kind === 'template' && this.#db.prepare('SELECT 1 FROM templates WHERE snapshot_id = ?').get(id)) return;
    const deps = this.dependents(id);
    if (deps.sandboxes.length > 0 || deps.snapshots.length > 0) return;
    await this.remove(id).catch((e: unknown) => {
      if (!(e instanceof RoostError && (e.code === 'INVALID_STATE' || e.code === 'NOT_FOUND'))) throw e;
    });
  }

  /**
   * Snapshot directories without a record (a crash between writing the files
   * and recording them, or a lost database): recorded again from their
   * witness, or removed when they have none. Returns the ids recorded again.
   */
  async sweep(): Promise<string[]> {
    const names = await readdir(this.#layout.snapshots).catch(() => [] as string[]);
    const restored: string[] = [];
    for (const n of names) {
      const id = n.startsWith('.tmp-') ? null : n;
      if (id && this.#db.prepare('SELECT 1 FROM snapshots WHERE id = ?').get(id)) continue;
      // A snapshot being written by a live process (`.tmp-<pid>-<id>`) is not a leftover.
      const writer = id ? null : tempOwner(n);
      if (writer !== null && (writer === process.pid || isAlive(writer))) continue;
      if (id && this.restoreFromWitness(id)) {
        restored.push(id);
        continue;
      }
      await rm(join(this.#layout.snapshots, n), { recursive: true, force: true });
    }
    return restored;
  }

  /**
   * Records a snapshot directory from its witness; false when it has none.
   * A name taken meanwhile by another snapshot gets the id appended.
   */
  restoreFromWitness(id: string): boolean {
    const rec = readSnapshotWitness(this.dir(id), id);
    if (!rec) return false;
    const taken = this.#db.prepare('SELECT 1 FROM snapshots WHERE name = ?').get(rec.name);
    this.insert(taken ? { ...rec, name: `${rec.name}-${id}` } : rec);
    return true;
  }

  /** Notes that a snapshot's files are known good (it was just made by this process). */
  markVerified(id: string, identity: string): void {
    this.#verified.set(id, identity);
  }

  /**
   * Checks that a snapshot can be restored here: the same QEMU, kernel,
   * initramfs, agent, accelerator and root filesystem, and files that are
   * whole (sizes always; checksums once per process, again when a file changed).
   */
  async verify(rec: SnapshotRecord, assets: Assets, accel: 'kvm' | 'tcg', rootfs: string, signal?: AbortSignal): Promise<void> {
    const m = rec.manifest;
    const refuse = (why: string, reason: string) =>
      new RoostError('INVALID_STATE', `snapshot ${rec.name} cannot be restored: ${why}`, { details: { snapshot: rec.name, reason } });
    const mismatch = await this.mismatch(rec, assets);
    if (mismatch) throw refuse(mismatch, 'version');
    if (m.accel !== accel) throw refuse(`it was made under ${m.accel}, this host uses ${accel} (guest CPU state does not carry over)`, 'accel');
    const root = await stat(rootfs).catch(() => null);
    if (!root || root.size !== m.rootfs.size) throw refuse(`its root filesystem image changed (${rootfs})`, 'rootfs');
    const dir = this.dir(rec.id);
    const files: Array<readonly [string, number]> = [
      [SNAPSHOT_FILES.memory, m.files.memory.size],
      [SNAPSHOT_FILES.state, m.files.state.size],
      [SNAPSHOT_FILES.disk, m.files.disk.size],
    ];
    if (m.files.volumes) files.push([SNAPSHOT_FILES.volumes, m.files.volumes.size]);
    for (const [name, size] of files) {
      const st = await stat(join(dir, name)).catch(() => null);
      if (!st) throw refuse(`its file ${name} is missing`, 'corrupt');
      if (st.size !== size) throw refuse(`its file ${name} has ${st.size} bytes, ${size} were written (truncated or replaced)`, 'corrupt');
    }
    const identity = await this.identity(rec.id);
    if (this.#verified.get(rec.id) === identity) return;
    const [memory, state, disk, volumes] = await Promise.all([
      ramChecksum(join(dir, SNAPSHOT_FILES.memory), signal),
      hashFile(join(dir, SNAPSHOT_FILES.state), signal),
      hashFile(join(dir, SNAPSHOT_FILES.disk), signal),
      m.files.volumes ? hashFile(join(dir, SNAPSHOT_FILES.volumes), signal) : undefined,
    ]);
    if (m.files.volumes && volumes !== m.files.volumes.sha256) throw refuse("its volumes' saved sessions do not match their checksum (corrupt)", 'corrupt');
    if (memory !== m.files.memory.checksum) throw refuse('its memory image does not match its checksum (corrupt)', 'corrupt');
    if (state !== m.files.state.sha256) throw refuse('its device state does not match its checksum (corrupt)', 'corrupt');
    if (disk !== m.files.disk.sha256) throw refuse('its disk does not match its checksum (corrupt)', 'corrupt');
    this.#verified.set(rec.id, identity);
  }

  /** The identity `verify` compares (inode, size, times of the three files). */
  async identity(id: string): Promise<string> {
    const dir = this.dir(id);
    const ids: string[] = [];
    for (const name of [SNAPSHOT_FILES.memory, SNAPSHOT_FILES.state, SNAPSHOT_FILES.disk]) {
      const st = await stat(join(dir, name));
      ids.push(`${st.ino}:${st.size}:${st.mtimeMs}:${st.ctimeMs}`);
    }
    return ids.join('/');
  }
}

function nameTaken(name: string): RoostError {
  return new RoostError('ALREADY_EXISTS', `a snapshot named ${name} exists already: choose another name or remove it (\`roost snapshots rm ${name}\`)`, {
    details: { snapshot: name },
  });
}

export type { SnapshotKind };
