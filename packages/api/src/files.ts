import { z } from 'zod';
import { nameSchema } from './names.js';

/*
 * The files API (`sandbox.files`) and volumes, shared by the embedded runtime
 * and the remote client. Paths are guest paths, resolved inside the
 * sandbox's root; relative ones against `/`. Every operation runs with the
 * rights of `user` (default: the sandbox's user, as commands do).
 */

export const EntryTypeSchema = z.enum(['file', 'dir', 'symlink', 'other']);
export type EntryType = z.infer<typeof EntryTypeSchema>;

/** One file system entry, as `stat` (lstat) sees it. */
export const EntryInfoSchema = z
  .object({
    /** Its path in the guest. */
    path: z.string(),
    /** Its base name. */
    name: z.string(),
    type: EntryTypeSchema,
    /** Size in bytes (for a symlink, the length of its target). */
    size: z.number().int().nonnegative(),
    /** Permission bits, `0o7777` at most. */
    mode: z.number().int().min(0).max(0o7777),
    uid: z.number().int().nonnegative(),
    gid: z.number().int().nonnegative(),
    /** Modification time, ISO 8601. */
    mtime: z.string(),
    /** A symlink's target. */
    symlinkTarget: z.string().optional(),
  })
  .meta({ id: 'EntryInfo' });
export type EntryInfo = z.infer<typeof EntryInfoSchema>;

/** What `files.write` wrote: the file, and whether it is new (else it replaced one). */
export const WriteInfoSchema = EntryInfoSchema.extend({ created: z.boolean() }).meta({ id: 'WriteInfo' });
export type WriteInfo = z.infer<typeof WriteInfoSchema>;

export const FileEventTypeSchema = z.enum(['create', 'write', 'remove', 'rename', 'chmod', 'overflow']);
export type FileEventType = z.infer<typeof FileEventTypeSchema>;

/** One change seen by `files.watch`. */
export const FileEventSchema = z
  .object({
    type: FileEventTypeSchema,
    /** The path that changed (for `rename`, the new name). */
    path: z.string(),
    /** For `rename`, the old name, when the kernel reported both in one pair. */
    oldPath: z.string().optional(),
    isDir: z.boolean(),
  })
  .meta({ id: 'FileEvent' });
export type FileEvent = z.infer<typeof FileEventSchema>;

/** Options every file operation takes. */
export interface FileOptions {
  /** A user name, a uid, `uid:gid` or `name:group` (default: the sandbox's user). */
  user?: string | number;
  signal?: AbortSignal;
}

export type ReadFormat = 'text' | 'bytes' | 'stream';

/** Options of the reads that bring guest data to the host (`read`, `readArchive`). */
export interface ReadOptions extends FileOptions {
  /**
   * The most bytes the guest may send (for `readArchive`, bytes of the
   * archive). Default: the sandbox's disk size, so a copy out costs the host
   * no more than the guest could hold. More is RESOURCE_EXHAUSTED (with
   * `details.maxBytes`) and the read is stopped: a stream ends with the
   * error, nothing partial is returned.
   */
  maxBytes?: number;
}

/** What `files.write` accepts: the whole contents, or a stream of it (never held whole in memory). */
export type WriteData = string | Uint8Array | AsyncIterable<Uint8Array | string>;

/** Options of `files.write`. */
export interface WriteOptions extends FileOptions {
  /** Permission bits of the file (default: those of the file it replaces, else 0o644). */
  mode?: number;
  /** Fail with ALREADY_EXISTS instead of replacing an existing file (default false). */
  noReplace?: boolean;
}

/** A running watch: an async iterable of events; `close()` (or disposing it) ends it. */
export interface FileWatchApi extends AsyncIterable<FileEvent>, AsyncDisposable {
  close(): Promise<void>;
}

/**
 * `sandbox.files`. Errors are RoostErrors whose `details` carry `errno`
 * (`ENOENT`, `EACCES`, ...) and `path`: NOT_FOUND for a missing path,
 * PERMISSION_DENIED, ALREADY_EXISTS, INVALID_STATE for a directory where a
 * file was expected (and the like), RESOURCE_EXHAUSTED for a full disk.
 *
 * Concurrency (every method): each call is its own stream to the guest and
 * runs in its own process there; calls are not serialized with each other
 * or with commands, so two calls on one path race as two processes would
 * (a write still replaces the file whole). They wait while the sandbox is paused.
 */
export interface FilesApi {
  /** Reads a file: as text (UTF-8, the default), bytes, or a stream read as it is consumed. */
  read(path: string, options?: ReadOptions & { format?: 'text' }): Promise<string>;
  read(path: string, options: ReadOptions & { format: 'bytes' }): Promise<Uint8Array>;
  read(path: string, options: ReadOptions & { format: 'stream' }): Promise<AsyncIterable<Uint8Array>>;
  /**
   * Writes a file, creating missing parent directories. The new contents
   * replace the old only once all of them arrived: a failed or aborted write
   * leaves the old file (or none) in place.
   */
  write(path: string, data: WriteData, options?: WriteOptions): Promise<WriteInfo>;
  /** Entries below a directory, `depth` levels deep (default 1), sorted by path. Symlinks are not followed. */
  list(path: string, options?: FileOptions & { depth?: number }): Promise<EntryInfo[]>;
  /** Describes one path (a symlink itself, unless `follow`). */
  stat(path: string, options?: FileOptions & { follow?: boolean }): Promise<EntryInfo>;
  /** True when the path exists (a dangling symlink exists). */
  exists(path: string, options?: FileOptions): Promise<boolean>;
  /** Creates a directory and missing parents (default mode 0o755). Resolves false if it already existed. */
  makeDir(path: string, options?: FileOptions & { mode?: number }): Promise<boolean>;
  /** Removes a file, a symlink (never its target) or a directory with everything below it (`recursive`, default true). Not atomic: what a concurrent writer adds below the directory meanwhile may stay. */
  remove(path: string, options?: FileOptions & { recursive?: boolean }): Promise<void>;
  /** Renames (moves) a path; replaces an existing target unless `noReplace` (one renameat2 in the guest: atomic). */
  rename(from: string, to: string, options?: FileOptions & { noReplace?: boolean }): Promise<EntryInfo>;
  /** Watches a directory (inotify in the guest). Resolves once the watch is in place. */
  watch(path: string, options?: FileOptions & { recursive?: boolean }): Promise<FileWatchApi>;
  /** A tar stream (POSIX pax) of a file or directory, entries named `basename(path)/...`; at most `maxBytes` (default: the sandbox's disk size). */
  readArchive(path: string, options?: ReadOptions): Promise<AsyncIterable<Uint8Array>>;
  /** Extracts a tar stream into a directory (created if missing); as root, owners are kept. */
  writeArchive(dir: string, tar: Uint8Array | AsyncIterable<Uint8Array>, options?: FileOptions): Promise<void>;
}

// ---- volumes -------------------------------------------------------------------

const volumeName = nameSchema('volume');
export const VolumeNameSchema = volumeName;

/**
 * The most volumes one sandbox mounts. They share one channel to Roost's
 * file server (a virtio-serial port), so no device slot bounds them; this
 * bounds what one guest's mounts may ask of the server.
 */
export const MAX_VOLUMES = 32;

/**
 * A volume mounted into a sandbox: a host directory (an absolute `source`)
 * or a named volume (a `source` that is a volume name; created on first use).
 */
export const VolumeMountSchema = z
  .object({
    source: z.string().min(1),
    /** Absolute guest path. */
    target: z.string().regex(/^\//, 'the guest path must be absolute'),
    readOnly: z.boolean().optional(),
  })
  .strict()
  .meta({ id: 'VolumeMount' });
export type VolumeMount = z.infer<typeof VolumeMountSchema>;

/** A named volume: a directory under the Roost home, kept after the sandboxes that used it go. */
export const VolumeInfoSchema = z
  .object({
    name: z.string(),
    /** Its directory on the host. */
    path: z.string(),
    createdAt: z.string(),
    labels: z.record(z.string(), z.string()),
    /** Ids of sandboxes (not removed) that mount it. */
    usedBy: z.array(z.string()),
    /** The most bytes its files may hold (guests get ENOSPC past it); absent: no limit. */
    quotaBytes: z.number().int().positive().optional(),
    /** A remote volume: served by another host's `roost volume serve` (its token is never shown). */
    remote: z
      .object({
        /** `roost://HOST:PORT/EXPORT`. */
        url: z.string(),
        /** The server certificate's pinned SHA-256 fingerprint. */
        fingerprint: z.string(),
        /** The token only reads. */
        readOnly: z.boolean(),
      })
      .optional(),
  })
  .meta({ id: 'VolumeInfo' });
export type VolumeInfo = z.infer<typeof VolumeInfoSchema>;

export const CreateVolumeRequestSchema = z
  .object({
    name: volumeName,
    labels: z.record(z.string(), z.string().max(256)).optional(),
    /** The most bytes the volume's files may hold (guests get ENOSPC past it). Not for a remote volume (its server sets limits). */
    quotaBytes: z.number().int().positive().max(Number.MAX_SAFE_INTEGER).optional(),
    /**
     * A remote volume: the credentials document `roost volume serve
     * --credentials-out` wrote (URL, token, certificate fingerprint). Kept
     * in a 0600 file under the Roost home; the token is never shown again.
     */
    remote: z.string().min(1).max(65536).optional(),
  })
  .strict()
  .meta({ id: 'CreateVolumeRequest' });
export type CreateVolumeRequest = z.infer<typeof CreateVolumeRequestSchema>;

/**
 * `runtime.volumes`.
 *
 * Concurrency: calls may overlap; create and remove are SQLite transactions,
 * so a volume is never removed while a sandbox being created takes it.
 */
export interface VolumesApi {
  /** Creates a named volume; ALREADY_EXISTS if the name is taken. */
  create(request: CreateVolumeRequest): Promise<VolumeInfo>;
  get(name: string): Promise<VolumeInfo>;
  list(): Promise<VolumeInfo[]>;
  /** Removes a volume and its data; INVALID_STATE while a sandbox that is not removed mounts it. */
  remove(name: string): Promise<void>;
}
