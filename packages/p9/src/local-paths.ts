/**
 * Path safety for the local backend: every name the client gives is turned
 * into an operation on one checked directory, never into a host path the
 * kernel would resolve through symlinks.
 *
 * Node has neither openat(2) nor openat2(RESOLVE_BENEATH). What it has is
 * enough when combined with /proc:
 *
 * - The export root is opened once, `O_PATH | O_DIRECTORY`.
 * - A directory inside is reached one component at a time:
 *   `open("/proc/self/fd/<parent>/<name>", O_PATH | O_DIRECTORY | O_NOFOLLOW)`.
 *   `/proc/self/fd/<parent>` is a "magic link": the kernel jumps straight to
 *   the inode the descriptor holds (no path is re-read), then resolves the
 *   single component `name` in it. O_NOFOLLOW makes a symlink there fail
 *   (ELOOP), O_DIRECTORY makes anything but a directory fail (ENOTDIR). So
 *   the descriptor reached is a directory inside the export, whatever the
 *   names were and whatever was swapped in meanwhile.
 * - An operation on an entry is done on `/proc/self/fd/<dir>/<name>` with
 *   calls that do not follow a final symlink: lstat, open with O_NOFOLLOW,
 *   mkdir, symlink, link (Linux's link(2) does not follow oldpath), rename,
 *   unlink, rmdir, lutimes, readlink, and the l*xattr calls. The process
 *   umask and the O_NOFOLLOW open are the only protection a create needs:
 *   an O_CREAT open never follows with O_NOFOLLOW, and O_EXCL fails on any
 *   existing entry.
 * - Names are checked before they get here (sanitizeName): no `/`, no NUL,
 *   not empty, not `.` or `..`. `..` is resolved by the server from the fid's
 *   recorded path and never reaches the host, so it stops at the root.
 *
 * Directory descriptors are cached (an LRU of `cacheSize` entries) keyed by
 * their path from the root, so a deep path does not cost one open per
 * component per request. A cached descriptor is valid only until the caller
 * next yields (it may be closed by a later eviction): callers use them
 * synchronously. Renames and removals made through this backend drop the
 * entries they affect at once; entries older than `cacheTtlMs` are walked
 * again, which bounds how long a directory renamed by another host process
 * is still reached under its old name.
 *
 * What remains: a host process (not the guest) that moves a directory out of
 * the export while it is cached, or while a request walks through it, has
 * that request act in the directory's new place for up to `cacheTtlMs`.
 * The guest itself cannot cause that: all its renames stay inside the export.
 * Hard links are made from a checked directory entry to a checked directory
 * entry, so they cannot name a file outside the export; a file that a host
 * user hard-links into the export from outside is, of course, shared.
 */
import { closeSync, constants as fsConstants, fstatSync, openSync } from 'node:fs';
import { Errno, MAX_NAME } from './constants.js';
import type { Name, Path } from './backend.js';
import { P9Error } from './errors.js';

/** O_PATH (Linux): a descriptor that names a file without opening it for I/O. */
export const O_PATH = 0o10000000;
const DIR_FLAGS = O_PATH | fsConstants.O_DIRECTORY | fsConstants.O_NOFOLLOW;

/**
 * Checks one name from the client. Throws EINVAL for `/`, NUL, empty, `.`
 * and `..` (callers resolve `..` themselves), ENAMETOOLONG over NAME_MAX.
 */
export function sanitizeName(name: Buffer): Name {
  if (name.length === 0 || name.includes(0x2f) || name.includes(0)) throw new P9Error(Errno.EINVAL, 'bad name');
  if ((name.length === 1 && name[0] === 0x2e) || (name.length === 2 && name[0] === 0x2e && name[1] === 0x2e)) throw new P9Error(Errno.EINVAL, 'bad name');
  if (name.length > MAX_NAME) throw new P9Error(Errno.ENAMETOOLONG);
  return name;
}

/** The cache key of a path: its names joined with `/` (names have none), as latin1 so any byte survives. */
export function pathKey(path: Path): string {
  return path.map((n) => n.toString('latin1')).join('/');
}

const PROC_FD = '/proc/self/fd/';

/** `/proc/self/fd/<fd>` (the magic link of a descriptor). */
export function procFd(fd: number): string {
  return `${PROC_FD}${fd}`;
}

/** `/proc/self/fd/<fd>/<name>` as bytes (any name bytes kept). */
export function procEntry(fd: number, name: Name): Buffer {
  return Buffer.concat([Buffer.from(`${PROC_FD}${fd}/`), name]);
}

interface CachedDir {
  fd: number;
  at: number;
}

/** Options of {@link SafeRoot}. */
export interface SafeRootOptions {
  /** Directory descriptors kept open (default 256). */
  cacheSize?: number;
  /** Age after which a cached directory is walked again (default 1000 ms). */
  cacheTtlMs?: number;
}

/** The export root and the checked walk below it. */
export class SafeRoot {
  /** The root's O_PATH descriptor. */
  readonly fd: number;
  /** The root's device and inode, to tell the export's own files from mounts inside it. */
  readonly dev: bigint;
  readonly ino: bigint;
  readonly #cache = new Map<string, CachedDir>();
  readonly #cacheSize: number;
  readonly #ttl: number;
  #toClose: number[] = [];
  #trimQueued = false;
  #closed = false;

  constructor(root: string, options: SafeRootOptions = {}) {
    this.#cacheSize = Math.max(1, options.cacheSize ?? 256);
    this.#ttl = options.cacheTtlMs ?? 1000;
    this.fd = openSync(root, O_PATH | fsConstants.O_DIRECTORY);
    const st = fstatSync(this.fd, { bigint: true });
    this.dev = st.dev;
    this.ino = st.ino;
    // The whole scheme needs /proc: check it once, loudly.
    try {
      const probe = openSync(`${procFd(this.fd)}/.`, DIR_FLAGS);
      closeSync(probe);
    } catch (err) {
      closeSync(this.fd);
      throw new Error(`the 9P local backend needs /proc/self/fd (is /proc mounted?): ${(err as Error).message}`, { cause: err });
    }
  }

  /**
   * The O_PATH descriptor of directory `path`. Valid until the caller next
   * yields to the event loop. Throws ENOTDIR/ELOOP/ENOENT (from the host)
   * when a component is not a directory, is a symlink, or is missing.
   */
  dir(path: Path): number {
    if (this.#closed) throw new P9Error(Errno.EBADF, 'backend closed');
    if (path.length === 0) return this.fd;
    const now = Date.now();
    // The longest fresh cached prefix.
    let depth = path.length;
    let fd = this.fd;
    const keys: string[] = [];
    let key = '';
    for (let i = 0; i < path.length; i++) {
      key = i === 0 ? path[0]!.toString('latin1') : `${key}/${path[i]!.toString('latin1')}`;
      keys.push(key);
    }
    for (depth = path.length; depth > 0; depth--) {
      const hit = this.#cache.get(keys[depth - 1]!);
      if (hit === undefined) continue;
      if (now - hit.at > this.#ttl) {
        this.#drop(keys[depth - 1]!);
        continue;
      }
      // Refresh its LRU position.
      this.#cache.delete(keys[depth - 1]!);
      this.#cache.set(keys[depth - 1]!, hit);
      fd = hit.fd;
      break;
    }
    for (let i = depth; i < path.length; i++) {
      const next = openSync(procEntry(fd, path[i]!), DIR_FLAGS);
      this.#cache.set(keys[i]!, { fd: next, at: now });
      fd = next;
    }
    this.#scheduleTrim();
    return fd;
  }

  /**
   * The /proc path of the entry `path` names, for a call that does not
   * follow a final symlink: `<parent dir>/<last name>`, or `<root>/.` for the
   * root. Valid until the caller next yields.
   */
  entry(path: Path): Buffer {
    if (path.length === 0) return Buffer.from(`${procFd(this.fd)}/.`);
    return procEntry(this.dir(path.slice(0, -1)), path[path.length - 1]!);
  }

  /** The /proc path of `name` in directory `dir`. Valid until the caller next yields. */
  child(dir: Path, name: Name): Buffer {
    return procEntry(this.dir(dir), name);
  }

  /** Forgets cached descriptors of `path` and everything below it (after a rename or removal). */
  invalidate(path: Path): void {
    const key = pathKey(path);
    if (key === '') {
      for (const k of [...this.#cache.keys()]) this.#drop(k);
      return;
    }
    for (const k of [...this.#cache.keys()]) if (k === key || k.startsWith(`${key}/`)) this.#drop(k);
  }

  #drop(key: string): void {
    const hit = this.#cache.get(key);
    if (hit === undefined) return;
    this.#cache.delete(key);
    // Closed later: a caller may still hold it in this synchronous stretch.
    this.#toClose.push(hit.fd);
    this.#scheduleTrim();
  }

  #scheduleTrim(): void {
    if (this.#trimQueued) return;
    this.#trimQueued = true;
    // After the current synchronous stretch (and every caller's use of a returned descriptor) ends.
    setImmediate(() => this.#trim());
  }

  #trim(): void {
    this.#trimQueued = false;
    while (this.#cache.size > this.#cacheSize) {
      const oldest = this.#cache.keys().next().value as string;
      const hit = this.#cache.get(oldest)!;
      this.#cache.delete(oldest);
      this.#toClose.push(hit.fd);
    }
    for (const fd of this.#toClose) closeQuietly(fd);
    this.#toClose = [];
  }

  /** Descriptors held (root + cache), for tests of the bounds. */
  get openDescriptors(): number {
    return 1 + this.#cache.size + this.#toClose.length;
  }

  /** Closes the root and every cached descriptor. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    for (const hit of this.#cache.values()) closeQuietly(hit.fd);
    this.#cache.clear();
    for (const fd of this.#toClose) closeQuietly(fd);
    this.#toClose = [];
    closeQuietly(this.fd);
  }
}

function closeQuietly(fd: number): void {
  try {
    closeSync(fd);
  } catch {
    // Already closed: nothing to release.
  }
}
