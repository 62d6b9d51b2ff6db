/**
 * Ownership and modes as QEMU's `security_model=mapped-xattr` keeps them:
 * the host file is plain (0644/0755, owned by the server's user) and the
 * guest's view is in extended attributes on it:
 *
 *   user.virtfs.uid   u32 little-endian
 *   user.virtfs.gid   u32 little-endian
 *   user.virtfs.mode  u32 little-endian, file type and permission bits
 *   user.virtfs.rdev  u64 little-endian (device files QEMU made)
 *
 * An attribute that is missing falls back to the host's value, as QEMU
 * does, so a directory first served by QEMU reads the same here, and one
 * made on the host shows its host owner and mode. Symlinks cannot carry
 * `user.` attributes on Linux: they show their host owner and 0777.
 *
 * QEMU in mapped mode stored guest symlinks as regular files holding the
 * target with an S_IFLNK mode attribute; such files are shown (and read) as
 * symlinks too, so volumes QEMU wrote keep working. Guest-made symlinks are
 * real symlinks here.
 *
 * The guest's own extended attributes: `user.*` are stored as they are,
 * `system.posix_acl_{access,default}` under `user.virtfs.system.…` (as QEMU
 * does); `user.virtfs.*` is hidden from the guest and refused; other
 * namespaces (security., trusted.) read as absent and cannot be set, so the
 * host's own labels never reach the guest.
 */
import type { BigIntStats } from 'node:fs';
import { getAttributeSync, listAttributesSync, removeAttributeSync, setAttributeSync } from '@napi-rs/xattr';
import type { Attr } from './backend.js';
import { Errno, QidType, S_IFBLK, S_IFCHR, S_IFDIR, S_IFIFO, S_IFLNK, S_IFMT, S_IFREG, S_IFSOCK } from './constants.js';
import { P9Error } from './errors.js';
import type { Qid } from './wire.js';

const XA_UID = 'user.virtfs.uid';
const XA_GID = 'user.virtfs.gid';
const XA_MODE = 'user.virtfs.mode';
const XA_RDEV = 'user.virtfs.rdev';
const VIRTFS_PREFIX = 'user.virtfs.';
const ACL_NAMES = new Set(['system.posix_acl_access', 'system.posix_acl_default']);

/** The guest's owner, mode and device number of one file (host values where no attribute is set). */
export interface Mapped {
  uid: number;
  gid: number;
  mode: number;
  rdev: bigint;
}

/** The xattr errors of a path that cannot carry them (a symlink) or a file system without them. */
function isUnsupported(err: unknown): boolean {
  const message = (err as Error).message ?? '';
  return /not permitted|not supported|os error (1|95)\b/i.test(message);
}

/** Reads a u32 attribute, or undefined when absent or malformed. */
function readU32(path: Buffer, name: string): number | undefined {
  const v = getAttributeSync(pathString(path), name);
  return v !== null && v.length >= 4 ? v.readUInt32LE(0) : undefined;
}

/**
 * @napi-rs/xattr takes paths as strings (UTF-8). Our /proc paths are
 * `/proc/self/fd/N/<name>`; a name that is not valid UTF-8 cannot be passed,
 * so such entries fall back to host ownership (reads) or EILSEQ-like EINVAL
 * (writes).
 */
function pathString(path: Buffer): string {
  const s = path.toString('utf8');
  if (!Buffer.from(s, 'utf8').equals(path)) throw new P9Error(Errno.EINVAL, 'name is not UTF-8: no extended attributes');
  return s;
}

/** The mapped attributes of the entry at `path` (a /proc path), over `st` (its lstat). */
export function readMapped(path: Buffer, st: BigIntStats): Mapped {
  const hostMode = Number(st.mode);
  const mapped: Mapped = { uid: Number(st.uid), gid: Number(st.gid), mode: hostMode, rdev: st.rdev };
  if ((hostMode & S_IFMT) === S_IFLNK) {
    mapped.mode = S_IFLNK | 0o777;
    return mapped;
  }
  try {
    const uid = readU32(path, XA_UID);
    const gid = readU32(path, XA_GID);
    const mode = readU32(path, XA_MODE);
    if (uid !== undefined) mapped.uid = uid;
    if (gid !== undefined) mapped.gid = gid;
    if (mode !== undefined) mapped.mode = mergeMode(hostMode, mode);
    const type = mapped.mode & S_IFMT;
    if (mode !== undefined && (type === S_IFCHR || type === S_IFBLK)) {
      const v = getAttributeSync(pathString(path), XA_RDEV);
      if (v !== null && v.length >= 8) mapped.rdev = v.readBigUInt64LE(0);
    }
  } catch (err) {
    if ((err instanceof P9Error && err.errno === Errno.EINVAL) || isUnsupported(err)) return mapped;
    throw xattrError(err);
  }
  return mapped;
}

/** The guest's file type and mode bits only (one attribute read, for walks): the host's except for QEMU's typed regular files. */
export function readMappedMode(path: Buffer, st: BigIntStats): number {
  const hostMode = Number(st.mode);
  if ((hostMode & S_IFMT) !== S_IFREG) return hostMode;
  try {
    const mode = readU32(path, XA_MODE);
    return mode === undefined ? hostMode : mergeMode(hostMode, mode);
  } catch (err) {
    if ((err instanceof P9Error && err.errno === Errno.EINVAL) || isUnsupported(err)) return hostMode;
    throw xattrError(err);
  }
}

/**
 * The guest's mode from the host mode and the stored one: permission bits
 * from the attribute; the type from the host, except that a regular host
 * file may stand for a symlink, device, FIFO or socket QEMU made.
 */
function mergeMode(hostMode: number, stored: number): number {
  const hostType = hostMode & S_IFMT;
  const storedType = stored & S_IFMT;
  let type = hostType;
  if (hostType === S_IFREG && [S_IFLNK, S_IFCHR, S_IFBLK, S_IFIFO, S_IFSOCK].includes(storedType)) type = storedType;
  return type | (stored & 0o7777);
}

/** Writes the guest's owner/mode attributes that are given. Symlinks are skipped (they cannot carry them). */
export function writeMapped(path: Buffer, change: { uid?: number; gid?: number; mode?: number; rdev?: bigint }): void {
  const p = pathString(path);
  const u32 = (v: number): Buffer => {
    const b = Buffer.alloc(4);
    b.writeUInt32LE(v >>> 0);
    return b;
  };
  try {
    if (change.uid !== undefined) setAttributeSync(p, XA_UID, u32(change.uid));
    if (change.gid !== undefined) setAttributeSync(p, XA_GID, u32(change.gid));
    if (change.mode !== undefined) setAttributeSync(p, XA_MODE, u32(change.mode));
    if (change.rdev !== undefined) {
      const b = Buffer.alloc(8);
      b.writeBigUInt64LE(change.rdev);
      setAttributeSync(p, XA_RDEV, b);
    }
  } catch (err) {
    throw xattrError(err);
  }
}

/** The qid of a file from its lstat and mapped mode; `devIndex` tells devices apart inside one export. */
export function qidOf(st: BigIntStats, mode: number, devIndex: number): Qid {
  const type = mode & S_IFMT;
  const qtype = type === S_IFDIR ? QidType.DIR : type === S_IFLNK ? QidType.SYMLINK : QidType.FILE;
  // The version changes when the file does, as QEMU's (mtime ^ size << 8), folded to 32 bits.
  const version = Number(((st.mtimeNs / 1_000_000n) ^ (st.size << 8n)) & 0xffffffffn);
  const path = devIndex === 0 ? st.ino : (BigInt(devIndex) << 48n) | (st.ino & 0xffffffffffffn);
  return { type: qtype, version, path };
}

/** Rgetattr's attributes from an lstat and the mapped values. */
export function attrOf(st: BigIntStats, mapped: Mapped, qid: Qid): Attr {
  const ts = (ns: bigint) => ({ sec: ns / 1_000_000_000n, nsec: ns % 1_000_000_000n });
  return {
    qid,
    mode: mapped.mode,
    uid: mapped.uid,
    gid: mapped.gid,
    nlink: st.nlink,
    rdev: mapped.rdev,
    size: st.size,
    blksize: st.blksize,
    blocks: st.blocks,
    atime: ts(st.atimeNs),
    mtime: ts(st.mtimeNs),
    ctime: ts(st.ctimeNs),
  };
}

/** The host attribute name of a guest one, or a P9Error for names the guest may not use. */
export function hostXattrName(name: string, forWrite: boolean): string | null {
  if (name.startsWith(VIRTFS_PREFIX)) {
    if (forWrite) throw new P9Error(Errno.EACCES, 'user.virtfs.* is reserved');
    return null;
  }
  if (name.startsWith('user.')) return name;
  if (ACL_NAMES.has(name)) return `${VIRTFS_PREFIX}${name}`;
  if (forWrite) throw new P9Error(Errno.EOPNOTSUPP, `${name.split('.')[0] ?? name} attributes are not supported`);
  return null;
}

/** The guest's names among a host attribute list. */
export function guestXattrNames(hostNames: string[]): string[] {
  const out: string[] = [];
  for (const n of hostNames) {
    if (n.startsWith(VIRTFS_PREFIX)) {
      const rest = n.slice(VIRTFS_PREFIX.length);
      if (ACL_NAMES.has(rest)) out.push(rest);
    } else if (n.startsWith('user.')) out.push(n);
  }
  return out;
}

/** Gets a guest attribute (ENODATA when absent or hidden). */
export function getGuestXattr(path: Buffer, name: string): Buffer {
  const host = hostXattrName(name, false);
  if (host === null) throw new P9Error(Errno.ENODATA);
  try {
    const v = getAttributeSync(pathString(path), host);
    if (v === null) throw new P9Error(Errno.ENODATA);
    return v;
  } catch (err) {
    if (err instanceof P9Error) throw err;
    if (isUnsupported(err)) throw new P9Error(Errno.ENODATA);
    throw xattrError(err);
  }
}

/** Lists the guest's attributes. */
export function listGuestXattrs(path: Buffer): string[] {
  try {
    return guestXattrNames(listAttributesSync(pathString(path)));
  } catch (err) {
    if (err instanceof P9Error) throw err;
    if (isUnsupported(err)) return [];
    throw xattrError(err);
  }
}

/** Sets a guest attribute with setxattr(2)'s CREATE/REPLACE flags. */
export function setGuestXattr(path: Buffer, name: string, value: Buffer, flags: number): void {
  const host = hostXattrName(name, true)!;
  const p = pathString(path);
  try {
    if (flags & 3) {
      const exists = getAttributeSync(p, host) !== null;
      if (flags & 1 && exists) throw new P9Error(Errno.EEXIST);
      if (flags & 2 && !exists) throw new P9Error(Errno.ENODATA);
    }
    setAttributeSync(p, host, value);
  } catch (err) {
    throw xattrError(err);
  }
}

/** Removes a guest attribute. */
export function removeGuestXattr(path: Buffer, name: string): void {
  const host = hostXattrName(name, true)!;
  const p = pathString(path);
  try {
    if (getAttributeSync(p, host) === null) throw new P9Error(Errno.ENODATA);
    removeAttributeSync(p, host);
  } catch (err) {
    throw xattrError(err);
  }
}

/**
 * @napi-rs/xattr reports errors as "<strerror> (os error N)"; the errno is
 * that N. Anything else is EIO.
 */
export function xattrError(err: unknown): P9Error {
  if (err instanceof P9Error) return err;
  const m = /os error (\d+)/.exec((err as Error).message ?? '');
  return new P9Error(m ? Number(m[1]) : Errno.EIO, (err as Error).message);
}
