/**
 * One file of a build context, as listed (never following symlinks), and
 * reading its contents safely: the file opened is the one listed, not a
 * symlink or another file put in its place since.
 */
import { closeSync, constants, fstatSync, openSync, readSync, type Stats } from 'node:fs';
import { open } from 'node:fs/promises';
import { Readable } from 'node:stream';
import { RoostError } from '../errors.js';

/** What kind of file an entry is (sockets, FIFOs and devices are not listed: a context has no use for them). */
export type ContextEntryType = 'file' | 'directory' | 'symlink';

/** One file, directory or symlink of the build context, as lstat saw it when the context was listed. */
export interface ContextEntry {
  /** Relative to the context root, `/`-separated, cleaned (`src/main.c`); `.` for the root itself. */
  path: string;
  /** The absolute host path it was listed at. */
  hostPath: string;
  type: ContextEntryType;
  /** Permission bits, setuid/setgid/sticky included (`mode & 0o7777`). */
  mode: number;
  uid: number;
  gid: number;
  /** Bytes, for a file (0 otherwise). */
  size: number;
  /** Modification time, ms since the epoch (not part of content digests). */
  mtimeMs: number;
  /** Status change time, ms since the epoch (only for the hash cache's key). */
  ctimeMs: number;
  /** Inode and device, for the hash cache's key and for finding hard links. */
  ino: number;
  dev: number;
  /** Hard link count. */
  nlink: number;
  /** The symlink's target as stored (never followed when listing), or null. */
  linkTarget: string | null;
}

/** A context entry picked by a COPY/ADD source, with where it lands under the destination. */
export interface CopyEntry extends ContextEntry {
  /**
   * Where it lands, relative to the destination: `''` for the destination
   * itself (a copied directory, whose metadata a newly made destination
   * takes, as Docker), a path inside it for a directory's contents, or the
   * source's base name for a file (the engine writes a single file to the
   * destination itself when the destination is not a directory).
   */
  target: string;
}

/** The entry type of an lstat result, or null for what a context does not carry. */
export function entryType(stats: Stats): ContextEntryType | null {
  if (stats.isFile()) return 'file';
  if (stats.isDirectory()) return 'directory';
  if (stats.isSymbolicLink()) return 'symlink';
  return null;
}

/** An entry from its path and lstat result. */
export function makeEntry(path: string, hostPath: string, stats: Stats, type: ContextEntryType, linkTarget: string | null): ContextEntry {
  return {
    path,
    hostPath,
    type,
    mode: stats.mode & 0o7777,
    uid: stats.uid,
    gid: stats.gid,
    size: type === 'file' ? stats.size : 0,
    mtimeMs: stats.mtimeMs,
    ctimeMs: stats.ctimeMs,
    ino: stats.ino,
    dev: stats.dev,
    nlink: stats.nlink,
    linkTarget,
  };
}

const CHUNK = 256 * 1024;

/**
 * The contents of a file entry as a stream, read in chunks (a huge file is
 * never in memory whole). The file is opened without following a symlink
 * and must still be the file listed (same inode, device and size); anything
 * else fails the stream with INVALID_STATE. Opening is lazy: nothing
 * happens until the stream is read.
 */
export function openEntry(entry: ContextEntry): Readable {
  if (entry.type !== 'file') throw new RoostError('INVALID_ARGUMENT', `${entry.path} is a ${entry.type}, not a file: it has no contents to read`);
  return Readable.from(readEntry(entry), { objectMode: false });
}

async function* readEntry(entry: ContextEntry): AsyncGenerator<Buffer> {
  let handle;
  try {
    handle = await open(entry.hostPath, constants.O_RDONLY | constants.O_NOFOLLOW);
  } catch (err) {
    throw changed(entry, (err as NodeJS.ErrnoException).code === 'ELOOP' ? 'it is now a symlink' : (err as Error).message, err);
  }
  try {
    const stats = await handle.stat();
    if (!stats.isFile() || stats.ino !== entry.ino || stats.dev !== entry.dev) throw changed(entry, 'another file is at its path now');
    if (stats.size !== entry.size) throw changed(entry, `its size is ${stats.size} bytes now, not ${entry.size}`);
    let position = 0;
    while (position < entry.size) {
      const buffer = Buffer.allocUnsafe(Math.min(CHUNK, entry.size - position));
      const { bytesRead } = await handle.read(buffer, 0, buffer.length, position);
      if (bytesRead === 0) throw changed(entry, 'it became shorter while being read');
      position += bytesRead;
      yield bytesRead === buffer.length ? buffer : buffer.subarray(0, bytesRead);
    }
  } finally {
    await handle.close();
  }
}

/** Files up to this size may be read whole and synchronously ({@link readSmallEntrySync}). */
export const SMALL_FILE_BYTES = 64 * 1024;

/**
 * A small file entry's contents read at once, synchronously, with the same
 * checks as {@link openEntry} (no symlink followed, same inode, device and
 * size). For hashing many small files fast: the caller bounds how long it
 * blocks between yields.
 */
export function readSmallEntrySync(entry: ContextEntry): Buffer {
  if (entry.type !== 'file' || entry.size > SMALL_FILE_BYTES) throw new RoostError('INVALID_ARGUMENT', `${entry.path} is not a small file`);
  let fd: number;
  try {
    fd = openSync(entry.hostPath, constants.O_RDONLY | constants.O_NOFOLLOW);
  } catch (err) {
    throw changed(entry, (err as NodeJS.ErrnoException).code === 'ELOOP' ? 'it is now a symlink' : (err as Error).message, err);
  }
  try {
    const stats = fstatSync(fd);
    if (!stats.isFile() || stats.ino !== entry.ino || stats.dev !== entry.dev) throw changed(entry, 'another file is at its path now');
    if (stats.size !== entry.size) throw changed(entry, `its size is ${stats.size} bytes now, not ${entry.size}`);
    const buffer = Buffer.allocUnsafe(entry.size);
    let position = 0;
    while (position < entry.size) {
      const n = readSync(fd, buffer, position, entry.size - position, position);
      if (n === 0) throw changed(entry, 'it became shorter while being read');
      position += n;
    }
    return buffer;
  } finally {
    closeSync(fd);
  }
}

function changed(entry: ContextEntry, why: string, cause?: unknown): RoostError {
  return new RoostError('INVALID_STATE', `the build context changed while the build read it: ${entry.path}: ${why}`, { details: { path: entry.path }, cause });
}
