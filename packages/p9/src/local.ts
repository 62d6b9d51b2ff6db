/**
 * The local-directory backend: an export is a host directory.
 *
 * - Path safety: every operation goes through SafeRoot (local-paths.ts):
 *   names are checked, directories are reached one O_NOFOLLOW component at
 *   a time, and the final call acts on `/proc/self/fd/<dir>/<name>` without
 *   following a symlink. Guest symlinks (and device nodes, FIFOs and
 *   sockets) are plain files typed by attributes, as QEMU's mapped-xattr
 *   stores them; host symlinks are never followed; opening either fails with ELOOP. Only regular files and
 *   directories are opened (never a host FIFO or device: every open is
 *   O_NONBLOCK and checked with fstat).
 * - Ownership: mapped-xattr (local-attrs.ts). Host files are created 0644
 *   and directories 0755 (less the process umask), owned by the server's
 *   user.
 * - Quota: optional, in bytes (quota.ts); ENOSPC when reached.
 *
 * Path work is synchronous (a few microseconds per call, and it keeps each
 * operation atomic with respect to the tree); reads, writes and fsync of
 * open files run on libuv's thread pool so requests overlap.
 */
import {
  closeSync,
  constants as C,
  fdatasync,
  fstatSync,
  fsync,
  ftruncateSync,
  linkSync,
  lstatSync,
  lutimesSync,
  mkdirSync,
  openSync,
  read,
  readlinkSync,
  readSync,
  renameSync,
  rmdirSync,
  statfsSync,
  writeSync,
  unlinkSync,
  write,
  futimesSync,
  type BigIntStats,
} from 'node:fs';
import { promisify } from 'node:util';
import type { Attr, Backend, Credentials, FileHandle, Name, Path, SetAttrRequest, StatFs, Timespec } from './backend.js';
import { Errno, MAX_SYMLINK, OpenFlag, S_IFBLK, S_IFCHR, S_IFDIR, S_IFIFO, S_IFLNK, S_IFMT, S_IFREG, S_IFSOCK } from './constants.js';
import { P9Error } from './errors.js';
import { LocalDirReader } from './local-dir.js';
import {
  attrOf,
  getGuestXattr,
  listGuestXattrs,
  readMapped,
  readMappedMode,
  removeGuestXattr,
  setGuestXattr,
  writeMapped,
  qidOf,
  type Mapped,
} from './local-attrs.js';
import { procFd, SafeRoot, type SafeRootOptions } from './local-paths.js';
import { Quota } from './quota.js';
import type { Qid } from './wire.js';

const readAsync = promisify(read);
const writeAsync = promisify(write);
const fsyncAsync = promisify(fsync);
const fdatasyncAsync = promisify(fdatasync);

/** Options of {@link LocalBackend}. */
export interface LocalBackendOptions extends SafeRootOptions {
  /** The most bytes the export may hold (regular files' sizes); none by default. */
  quotaBytes?: number | bigint;
}

/** Host open flags for the guest's access mode and the flags that are safe to pass on. */
function hostOpenFlags(flags: number): number {
  const acc = flags & OpenFlag.ACCMODE;
  let host = acc === OpenFlag.WRONLY ? C.O_WRONLY : acc === OpenFlag.RDWR ? C.O_RDWR : C.O_RDONLY;
  if (flags & OpenFlag.APPEND) host |= C.O_APPEND;
  if (flags & OpenFlag.DSYNC) host |= C.O_DSYNC;
  if (flags & OpenFlag.SYNC) host |= C.O_SYNC;
  // Never follow, never block on a FIFO swapped in, never take a terminal.
  return host | C.O_NOFOLLOW | C.O_NONBLOCK | C.O_NOCTTY;
}

function isWritable(flags: number): boolean {
  const acc = flags & OpenFlag.ACCMODE;
  return acc === OpenFlag.WRONLY || acc === OpenFlag.RDWR;
}

const MAX_OFFSET = BigInt(Number.MAX_SAFE_INTEGER);

function toPosition(offset: bigint, count: number): number {
  if (offset + BigInt(count) > MAX_OFFSET) throw new P9Error(Errno.EFBIG);
  return Number(offset);
}

function toSeconds(t: Timespec | 'now'): number {
  if (t === 'now') return Date.now() / 1000;
  return Number(t.sec) + Number(t.nsec) / 1e9;
}

function inodeKey(st: BigIntStats): string {
  return `${st.dev}:${st.ino}`;
}

/** A host directory served over 9P. */
export class LocalBackend implements Backend {
  /** The checked walk below the export root. */
  readonly root: SafeRoot;
  /** The export's quota, when it has one. */
  readonly quota: Quota | undefined;
  readonly #devs = new Map<bigint, number>();

  /** Opens `dir` as an export. Throws when it is not a directory or /proc is missing. */
  constructor(
    readonly dir: string,
    options: LocalBackendOptions = {},
  ) {
    this.root = new SafeRoot(dir, options);
    this.#devs.set(this.root.dev, 0);
    if (options.quotaBytes !== undefined) {
      this.quota = new Quota(BigInt(options.quotaBytes));
      this.quota.rescan(dir);
    }
  }

  /** The qid of an entry from its lstat and guest mode. */
  qid(st: BigIntStats, mode: number): Qid {
    let index = this.#devs.get(st.dev);
    if (index === undefined) {
      index = this.#devs.size;
      this.#devs.set(st.dev, index);
    }
    return qidOf(st, mode, index);
  }

  #lstat(p: Buffer): BigIntStats {
    return lstatSync(p, { bigint: true });
  }

  async lookup(dir: Path, name: Name): Promise<Qid> {
    const p = this.root.child(dir, name);
    const st = this.#lstat(p);
    return this.qid(st, readMappedMode(p, st));
  }

  async getattr(path: Path): Promise<Attr> {
    const p = this.root.entry(path);
    const st = this.#lstat(p);
    const mapped = readMapped(p, st);
    return attrOf(st, mapped, this.qid(st, mapped.mode));
  }

  async setattr(path: Path | null, request: SetAttrRequest, handle?: FileHandle): Promise<void> {
    const local = handle instanceof LocalHandle ? handle : undefined;
    let p: Buffer | undefined;
    try {
      if (path === null) throw new P9Error(Errno.ENOENT, 'the file was removed');
      p = this.root.entry(path);
      this.#lstat(p);
    } catch (err) {
      // An open file that was unlinked: what can be done through its descriptor still is.
      if (local === undefined) throw err;
      p = undefined;
    }
    if (request.size !== undefined) {
      if (local?.writable) local.truncate(request.size);
      else if (p !== undefined) {
        const fd = openSync(p, C.O_WRONLY | C.O_NOFOLLOW | C.O_NONBLOCK);
        try {
          const st = fstatSync(fd, { bigint: true });
          if ((Number(st.mode) & S_IFMT) !== S_IFREG) throw new P9Error(Errno.EINVAL);
          this.quota?.resize(inodeKey(st), st.size, request.size);
          ftruncateSync(fd, Number(request.size));
        } finally {
          closeSync(fd);
        }
      } else throw new P9Error(Errno.EBADF);
    }
    if (request.mode !== undefined || request.uid !== undefined || request.gid !== undefined) {
      if (p !== undefined) {
        const st = this.#lstat(p);
        // Symlinks cannot carry the attributes: their owner and mode stay the host's.
        if ((Number(st.mode) & S_IFMT) !== S_IFLNK) {
          const current = readMapped(p, st);
          const mode = request.mode === undefined ? undefined : (current.mode & S_IFMT) | (request.mode & 0o7777);
          // A file first seen without attributes gets all three, so its guest view is whole from now on.
          writeMapped(p, { uid: request.uid ?? current.uid, gid: request.gid ?? current.gid, mode: mode ?? current.mode });
          local?.updateMapped({ uid: request.uid ?? current.uid, gid: request.gid ?? current.gid, mode: mode ?? current.mode });
        }
      } else local?.updateMapped({ uid: request.uid, gid: request.gid, mode: request.mode });
    }
    if (request.atime !== undefined || request.mtime !== undefined) {
      const st = p !== undefined ? this.#lstat(p) : fstatSync(local!.fd, { bigint: true });
      const atime = request.atime === undefined ? Number(st.atimeNs) / 1e9 : toSeconds(request.atime);
      const mtime = request.mtime === undefined ? Number(st.mtimeNs) / 1e9 : toSeconds(request.mtime);
      if (p !== undefined) lutimesSync(p, atime, mtime);
      else futimesSync(local!.fd, atime, mtime);
    }
  }

  /** Opens the entry at `p` (a /proc path): a regular file or a directory, nothing else. */
  #openAt(p: Buffer, flags: number, parentQid: () => Qid): LocalHandle {
    const st = this.#lstat(p);
    const type = Number(st.mode) & S_IFMT;
    if (type === S_IFLNK) throw new P9Error(Errno.ELOOP);
    if (type === S_IFDIR) {
      if (isWritable(flags)) throw new P9Error(Errno.EISDIR);
      const fd = openSync(p, C.O_RDONLY | C.O_DIRECTORY | C.O_NOFOLLOW | C.O_NONBLOCK);
      return this.#handle(fd, p, flags, S_IFDIR, parentQid);
    }
    if (type !== S_IFREG) throw new P9Error(Errno.EPERM, 'only regular files and directories are served');
    // A symlink, device, FIFO or socket the guest made (mapped): the guest's kernel handles those itself, never by opening them here.
    const mappedType = readMappedMode(p, st) & S_IFMT;
    if (mappedType === S_IFLNK) throw new P9Error(Errno.ELOOP);
    if (mappedType !== S_IFREG) throw new P9Error(Errno.ENXIO);
    if (flags & OpenFlag.DIRECTORY) throw new P9Error(Errno.ENOTDIR);
    const fd = openSync(p, hostOpenFlags(flags));
    return this.#handle(fd, p, flags, S_IFREG, parentQid);
  }

  /** Wraps a descriptor just opened at `p`, checking it is still the type that was checked before opening. */
  #handle(fd: number, p: Buffer, flags: number, type: number, parentQid: () => Qid): LocalHandle {
    try {
      const st = fstatSync(fd, { bigint: true });
      if ((Number(st.mode) & S_IFMT) !== type) throw new P9Error(Errno.EAGAIN, 'the file changed while it was opened');
      const mapped = readMapped(p, st);
      const qid = this.qid(st, mapped.mode);
      const handle = new LocalHandle(this, fd, qid, type === S_IFDIR ? parentQid() : qid, flags, inodeKey(st), mapped);
      if (handle.writable) this.quota?.track(handle.key, st.size);
      if (flags & OpenFlag.TRUNC && handle.writable) handle.truncate(0n);
      return handle;
    } catch (err) {
      closeSync(fd);
      throw err;
    }
  }

  #parentQid(path: Path): () => Qid {
    return () => {
      if (path.length === 0) {
        const st = fstatSync(this.root.fd, { bigint: true });
        return this.qid(st, Number(st.mode));
      }
      const st = this.#lstat(this.root.entry(path.slice(0, -1)));
      return this.qid(st, Number(st.mode));
    };
  }

  async open(path: Path, flags: number): Promise<FileHandle> {
    return this.#openAt(this.root.entry(path), flags, this.#parentQid(path));
  }

  async create(dir: Path, name: Name, flags: number, mode: number, cred: Credentials): Promise<FileHandle> {
    const p = this.root.child(dir, name);
    const host = hostOpenFlags(flags);
    let fd: number;
    try {
      fd = openSync(p, host | C.O_CREAT | C.O_EXCL, 0o644);
    } catch (err) {
      // lcreate is the create half of open(O_CREAT): without O_EXCL an entry made meanwhile is opened.
      if ((err as NodeJS.ErrnoException).code === 'EEXIST' && !(flags & OpenFlag.EXCL))
        return this.#openAt(p, flags & ~OpenFlag.CREATE, () => this.qid(this.#lstat(p), 0));
      throw err;
    }
    try {
      writeMapped(p, { uid: cred.uid, gid: cred.gid, mode: S_IFREG | (mode & 0o7777) });
    } catch (err) {
      closeSync(fd);
      unlinkSync(p);
      throw err;
    }
    return this.#handle(fd, p, flags & ~OpenFlag.TRUNC, S_IFREG, () => this.qid(this.#lstat(p), 0));
  }

  async mkdir(dir: Path, name: Name, mode: number, cred: Credentials): Promise<Qid> {
    const p = this.root.child(dir, name);
    mkdirSync(p, 0o755);
    try {
      writeMapped(p, { uid: cred.uid, gid: cred.gid, mode: S_IFDIR | (mode & 0o7777) });
    } catch (err) {
      rmdirSync(p);
      throw err;
    }
    const st = this.#lstat(p);
    return this.qid(st, Number(st.mode));
  }

  /**
   * As QEMU's mapped-xattr does: a plain 0644 file holding the target, typed
   * a symlink by its mode attribute. The host never sees a symlink a guest
   * made (nothing on the host can follow one), and the guest sees a symlink.
   */
  async symlink(dir: Path, name: Name, target: Buffer, cred: Credentials): Promise<Qid> {
    if (target.length === 0 || target.includes(0)) throw new P9Error(Errno.EINVAL);
    if (target.length > MAX_SYMLINK) throw new P9Error(Errno.ENAMETOOLONG);
    return this.#mappedFile(dir, name, S_IFLNK | 0o777, cred, undefined, target);
  }

  /**
   * Device nodes, FIFOs and sockets, as QEMU's mapped-xattr makes them: a
   * plain empty 0644 file whose mode (and device number) attributes give
   * the guest its type. The guest's kernel acts on them itself (its own
   * devices, its own pipes); the host only ever sees an empty file.
   */
  async mknod(dir: Path, name: Name, mode: number, rdev: bigint, cred: Credentials): Promise<Qid> {
    const type = mode & S_IFMT;
    if (![S_IFCHR, S_IFBLK, S_IFIFO, S_IFSOCK, S_IFREG].includes(type)) throw new P9Error(Errno.EINVAL);
    return this.#mappedFile(dir, name, type === S_IFREG ? S_IFREG | (mode & 0o7777) : mode, cred, type === S_IFCHR || type === S_IFBLK ? rdev : undefined);
  }

  /** Creates `name` as a plain file (0644, holding `content`) with the guest's mode, owner and device number in attributes. */
  #mappedFile(dir: Path, name: Name, mode: number, cred: Credentials, rdev?: bigint, content?: Buffer): Qid {
    const p = this.root.child(dir, name);
    const fd = openSync(p, C.O_WRONLY | C.O_CREAT | C.O_EXCL | C.O_NOFOLLOW | C.O_NONBLOCK, 0o644);
    const key = inodeKey(fstatSync(fd, { bigint: true }));
    let charged = 0n;
    try {
      if (content !== undefined) {
        this.quota?.resize(key, 0n, BigInt(content.length));
        charged = BigInt(content.length);
        writeSync(fd, content, 0, content.length, 0);
      }
      writeMapped(p, { uid: cred.uid, gid: cred.gid, mode, ...(rdev !== undefined ? { rdev } : {}) });
    } catch (err) {
      closeSync(fd);
      unlinkSync(p);
      this.quota?.removed(key, charged);
      throw err;
    }
    closeSync(fd);
    const st = this.#lstat(p);
    return this.qid(st, mode);
  }

  async link(target: Path, dir: Path, name: Name): Promise<void> {
    if (target.length === 0) throw new P9Error(Errno.EPERM);
    const from = this.root.entry(target);
    const to = this.root.child(dir, name);
    const st = this.#lstat(from);
    if ((Number(st.mode) & S_IFMT) === S_IFDIR) throw new P9Error(Errno.EPERM);
    // link(2) does not follow `from` when it is a symlink: the link is to the symlink itself.
    linkSync(from, to);
  }

  async rename(oldDir: Path, oldName: Name, newDir: Path, newName: Name): Promise<void> {
    const from = this.root.child(oldDir, oldName);
    const to = this.root.child(newDir, newName);
    if (this.quota !== undefined) {
      const src = this.#lstat(from);
      let dst: BigIntStats | undefined;
      try {
        dst = this.#lstat(to);
      } catch {
        dst = undefined;
      }
      renameSync(from, to);
      if (dst !== undefined && inodeKey(dst) !== inodeKey(src) && (Number(dst.mode) & S_IFMT) === S_IFREG && dst.nlink === 1n) {
        this.quota.removed(inodeKey(dst), dst.size);
      }
    } else renameSync(from, to);
    this.root.invalidate([...oldDir, oldName]);
    this.root.invalidate([...newDir, newName]);
  }

  async unlink(dir: Path, name: Name, isDir: boolean): Promise<void> {
    const p = this.root.child(dir, name);
    const st = this.#lstat(p);
    const type = Number(st.mode) & S_IFMT;
    if (isDir) rmdirSync(p);
    else {
      if (type === S_IFDIR) throw new P9Error(Errno.EISDIR);
      unlinkSync(p);
      if (type === S_IFREG && st.nlink === 1n) this.quota?.removed(inodeKey(st), st.size);
    }
    this.root.invalidate([...dir, name]);
  }

  async readlink(path: Path): Promise<Buffer> {
    const p = this.root.entry(path);
    const st = this.#lstat(p);
    const type = Number(st.mode) & S_IFMT;
    if (type === S_IFLNK) return readlinkSync(p, { encoding: 'buffer' });
    // A symlink QEMU's mapped mode stored as a file holding its target.
    if (type === S_IFREG && (readMappedMode(p, st) & S_IFMT) === S_IFLNK) {
      const fd = openSync(p, C.O_RDONLY | C.O_NOFOLLOW | C.O_NONBLOCK);
      try {
        const buf = Buffer.alloc(MAX_SYMLINK);
        const n = readSync(fd, buf, 0, MAX_SYMLINK, 0);
        return buf.subarray(0, n);
      } finally {
        closeSync(fd);
      }
    }
    throw new P9Error(Errno.EINVAL);
  }

  async statfs(_path: Path): Promise<StatFs> {
    const s = statfsSync(procFd(this.root.fd), { bigint: true });
    const out: StatFs = {
      fsType: Number(s.type & 0xffffffffn),
      bsize: Number(s.bsize),
      blocks: s.blocks,
      bfree: s.bfree,
      bavail: s.bavail,
      files: s.files,
      ffree: s.ffree,
      fsid: 0n,
      namelen: 255,
    };
    if (this.quota !== undefined) {
      const bsize = s.bsize > 0n ? s.bsize : 4096n;
      const free = this.quota.limit > this.quota.used ? (this.quota.limit - this.quota.used) / bsize : 0n;
      out.blocks = this.quota.limit / bsize;
      out.bfree = free < s.bfree ? free : s.bfree;
      out.bavail = free < s.bavail ? free : s.bavail;
    }
    return out;
  }

  async getxattr(path: Path, name: string): Promise<Buffer> {
    return getGuestXattr(this.root.entry(path), name);
  }

  async listxattr(path: Path): Promise<string[]> {
    return listGuestXattrs(this.root.entry(path));
  }

  async setxattr(path: Path, name: string, value: Buffer, flags: number): Promise<void> {
    setGuestXattr(this.root.entry(path), name, value, flags);
  }

  async removexattr(path: Path, name: string): Promise<void> {
    removeGuestXattr(this.root.entry(path), name);
  }

  async close(): Promise<void> {
    this.root.close();
  }
}

/** An open file or directory of the local backend. */
export class LocalHandle implements FileHandle {
  readonly writable: boolean;
  readonly append: boolean;
  readonly isDir: boolean;
  #dir: LocalDirReader | undefined;
  #closed = false;

  constructor(
    readonly backend: LocalBackend,
    /** The host descriptor (a regular file or an O_RDONLY directory). */
    readonly fd: number,
    readonly qid: Qid,
    /** The qid `..` shows (a directory's parent; the root's own). */
    readonly parentQid: Qid,
    readonly flags: number,
    /** `dev:ino`, the quota's key. */
    readonly key: string,
    /** The guest's owner and mode when opened (for getattr after an unlink). */
    private mapped: Mapped,
  ) {
    this.isDir = (mapped.mode & S_IFMT) === S_IFDIR;
    this.writable = !this.isDir && isWritable(flags);
    this.append = (flags & OpenFlag.APPEND) !== 0;
  }

  /** Keeps the cached guest attributes in step with a setattr. */
  updateMapped(change: { uid?: number | undefined; gid?: number | undefined; mode?: number | undefined }): void {
    if (change.uid !== undefined) this.mapped.uid = change.uid;
    if (change.gid !== undefined) this.mapped.gid = change.gid;
    if (change.mode !== undefined) this.mapped.mode = (this.mapped.mode & S_IFMT) | (change.mode & 0o7777);
  }

  /** Truncates (or extends) the file, charged to the quota. */
  truncate(size: bigint): void {
    const st = fstatSync(this.fd, { bigint: true });
    this.backend.quota?.resize(this.key, st.size, size);
    ftruncateSync(this.fd, Number(size));
  }

  async read(offset: bigint, count: number): Promise<Buffer> {
    if (this.isDir) throw new P9Error(Errno.EISDIR);
    if ((this.flags & OpenFlag.ACCMODE) === OpenFlag.WRONLY) throw new P9Error(Errno.EBADF);
    const position = toPosition(offset, 0);
    const buf = Buffer.allocUnsafe(count);
    const { bytesRead } = await readAsync(this.fd, buf, 0, count, position);
    return bytesRead === count ? buf : buf.subarray(0, bytesRead);
  }

  async write(offset: bigint, data: Buffer): Promise<number> {
    if (!this.writable) throw new P9Error(Errno.EBADF);
    let position: number | null = toPosition(offset, data.length);
    const quota = this.backend.quota;
    if (quota !== undefined && data.length > 0) {
      const start = this.append ? fstatSync(this.fd, { bigint: true }).size : offset;
      const end = quota.reserve(this.key, start, start + BigInt(data.length));
      data = data.subarray(0, Number(end - start));
    }
    if (this.append) position = null;
    const { bytesWritten } = await writeAsync(this.fd, data, 0, data.length, position);
    return bytesWritten;
  }

  async readdir(offset: bigint, maxBytes: number): Promise<DirEntryList> {
    if (!this.isDir) throw new P9Error(Errno.ENOTDIR);
    this.#dir ??= new LocalDirReader((st) => this.backend.qid(st, Number(st.mode)), this.fd, this.qid, this.parentQid);
    return this.#dir.read(offset, maxBytes);
  }

  async fsync(datasync: boolean): Promise<void> {
    await (datasync ? fdatasyncAsync(this.fd) : fsyncAsync(this.fd));
  }

  async getattr(): Promise<Attr> {
    const st = fstatSync(this.fd, { bigint: true });
    const mode = (Number(st.mode) & S_IFMT) | (this.mapped.mode & 0o7777);
    return attrOf(st, { ...this.mapped, mode }, this.backend.qid(st, mode));
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    this.#dir?.close();
    if (this.writable && this.backend.quota !== undefined) {
      try {
        const st = fstatSync(this.fd, { bigint: true });
        this.backend.quota.untrack(this.key, st.size, st.nlink);
      } catch {
        this.backend.quota.untrack(this.key, 0n, 0n);
      }
    }
    closeSync(this.fd);
  }
}

type DirEntryList = Awaited<ReturnType<FileHandle['readdir']>>;
