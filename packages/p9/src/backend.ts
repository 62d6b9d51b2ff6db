/**
 * What the server needs from a file store. The server owns fids, sessions,
 * the protocol, read-only exports and locks; a backend only does file
 * operations on paths the server has already made safe (every name checked
 * by sanitizeName, no `.` or `..`, relative to the export root).
 *
 * Concurrency: the server may call any method while other calls are in
 * flight, from any number of sessions, except that it never calls a
 * FileHandle's method after (or while) calling its `close`. A backend must
 * keep each call atomic with respect to the tree (the local backend does its
 * path work synchronously, and yields only for data transfers on an open
 * descriptor). Methods reject with P9Error (or a Node system error, mapped by
 * its `code`).
 */
import type { Qid } from './wire.js';

/** One path component, as bytes (checked: no `/`, no NUL, not empty, not `.` or `..`). */
export type Name = Buffer;
/** A path from the export root, one checked component per element ([] is the root). */
export type Path = readonly Name[];

/** Seconds and nanoseconds. */
export interface Timespec {
  sec: bigint;
  nsec: bigint;
}

/** The attributes Rgetattr reports (the guest's view: mapped uid/gid/mode). */
export interface Attr {
  qid: Qid;
  /** File type and permission bits. */
  mode: number;
  uid: number;
  gid: number;
  nlink: bigint;
  rdev: bigint;
  size: bigint;
  blksize: bigint;
  blocks: bigint;
  atime: Timespec;
  mtime: Timespec;
  ctime: Timespec;
}

/** A Tsetattr as a backend sees it: only the fields to change are set. */
export interface SetAttrRequest {
  /** Permission bits (the file type is kept). */
  mode?: number;
  uid?: number;
  gid?: number;
  size?: bigint;
  atime?: Timespec | 'now';
  mtime?: Timespec | 'now';
}

/** Rstatfs's fields. */
export interface StatFs {
  fsType: number;
  bsize: number;
  blocks: bigint;
  bfree: bigint;
  bavail: bigint;
  files: bigint;
  ffree: bigint;
  fsid: bigint;
  namelen: number;
}

/** The guest's identity on a create: uid from its attach, gid from the request. */
export interface Credentials {
  uid: number;
  gid: number;
}

/** One directory entry. `offset` is the cookie to continue after it. */
export interface DirEntry {
  qid: Qid;
  /** d_type. */
  type: number;
  name: Name;
  offset: bigint;
}

/** An open file or directory. */
export interface FileHandle {
  /** The file's qid when it was opened. */
  readonly qid: Qid;
  /** Whether it is a directory (readdir) or not (read/write). */
  readonly isDir: boolean;
  /** Reads up to `count` bytes at `offset` (fewer at the end of the file). May run beside other reads and writes. */
  read(offset: bigint, count: number): Promise<Buffer>;
  /** Writes at `offset` (the end with O_APPEND); returns the count written (short at the quota). May run beside others. */
  write(offset: bigint, data: Buffer): Promise<number>;
  /** Entries from cookie `offset` (0 is the start) whose encoding fits `maxBytes`. Never called twice at once on one handle. */
  readdir(offset: bigint, maxBytes: number): Promise<DirEntry[]>;
  /** Flushes the file to stable storage. */
  fsync(datasync: boolean): Promise<void>;
  /** The attributes of the open file (works after the file was unlinked). */
  getattr(): Promise<Attr>;
  /** Releases the handle. Called once, after every other call on it has settled. */
  close(): Promise<void>;
}

/** A file store the server exports. */
export interface Backend {
  /** The qid of `name` in directory `dir` (not following a symlink). */
  lookup(dir: Path, name: Name): Promise<Qid>;
  /** The attributes of `path`. */
  getattr(path: Path): Promise<Attr>;
  /**
   * Changes attributes. `handle`, when the client named an open fid, is the
   * open file (for ftruncate, and for a file whose path is gone: then `path`
   * is null).
   */
  setattr(path: Path | null, request: SetAttrRequest, handle?: FileHandle): Promise<void>;
  /** Opens `path` with Linux open flags (never following a symlink; O_CREAT/O_EXCL ignored). */
  open(path: Path, flags: number): Promise<FileHandle>;
  /** Creates and opens `name` in `dir`. */
  create(dir: Path, name: Name, flags: number, mode: number, cred: Credentials): Promise<FileHandle>;
  /** Creates directory `name` in `dir`. */
  mkdir(dir: Path, name: Name, mode: number, cred: Credentials): Promise<Qid>;
  /** Creates symlink `name` in `dir` pointing at `target` (stored, never followed by the server). */
  symlink(dir: Path, name: Name, target: Buffer, cred: Credentials): Promise<Qid>;
  /**
   * Creates a device node, FIFO or socket (`mode` has its type; `rdev` is
   * the device number, glibc's makedev encoding). Optional: without it
   * Tmknod is EPERM.
   */
  mknod?(dir: Path, name: Name, mode: number, rdev: bigint, cred: Credentials): Promise<Qid>;
  /** Makes `name` in `dir` a hard link to `target`. */
  link(target: Path, dir: Path, name: Name): Promise<void>;
  /** Renames `oldName` in `oldDir` to `newName` in `newDir` (replacing as rename(2) does). */
  rename(oldDir: Path, oldName: Name, newDir: Path, newName: Name): Promise<void>;
  /** Removes `name` from `dir`: a directory when `dir` is true (rmdir), else a non-directory. */
  unlink(dir: Path, name: Name, isDir: boolean): Promise<void>;
  /** The target of symlink `path`. */
  readlink(path: Path): Promise<Buffer>;
  /** File system statistics (with the quota applied, if any). */
  statfs(path: Path): Promise<StatFs>;
  /** One extended attribute's value (ENODATA when absent). */
  getxattr(path: Path, name: string): Promise<Buffer>;
  /** The names of the extended attributes the guest may see. */
  listxattr(path: Path): Promise<string[]>;
  /** Sets an extended attribute (flags: XattrFlag). */
  setxattr(path: Path, name: string, value: Buffer, flags: number): Promise<void>;
  /** Removes an extended attribute. */
  removexattr(path: Path, name: string): Promise<void>;
  /** Releases the backend's resources (called when the export is closed). */
  close(): Promise<void>;
}
