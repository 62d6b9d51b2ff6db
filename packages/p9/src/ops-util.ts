/**
 * Small pieces the operations share: the read-only check, fid checks,
 * releasing a fid, and the commit of an extended-attribute writer.
 */
import type { Path } from './backend.js';
import type { OpContext } from './context.js';
import { Errno, MAX_XATTR_NAME } from './constants.js';
import { P9Error, toErrno } from './errors.js';
import type { Fid } from './fids.js';

/** EROFS on a read-only export, or for a fid attached with a read-only token. */
export function writable(fid: Fid): void {
  if (fid.export_.readOnly || fid.readOnly) throw new P9Error(Errno.EROFS);
}

/** A fid that names a file (not an xattr fid), usable. */
export function fileFid(fid: Fid): Fid {
  fid.checkUsable();
  if (fid.xattr !== undefined) throw new P9Error(Errno.EBADF, 'an extended-attribute fid');
  if (fid.auth !== undefined) throw new P9Error(Errno.EBADF, 'an authentication fid');
  return fid;
}

/** A fid that is not open yet (lopen, lcreate, xattrcreate need one). */
export function unopened(fid: Fid): Fid {
  fileFid(fid);
  if (fid.handle !== undefined) throw new P9Error(Errno.EINVAL, 'fid already open');
  return fid;
}

/** The two fids of a two-fid operation must be in one export. */
export function sameExport(a: Fid, b: Fid): void {
  if (a.export_ !== b.export_) throw new P9Error(Errno.EXDEV);
}

/** The parent path and name of a fid's file (EBUSY for the export root). */
export function parentOf(fid: Fid): { parent: Path; name: Buffer } {
  const path = fid.node.livePath();
  if (path.length === 0) throw new P9Error(Errno.EBUSY, 'the export root');
  return { parent: path.slice(0, -1), name: path[path.length - 1]! };
}

/** An extended-attribute name from the client: not empty, at most XATTR_NAME_MAX, no NUL. */
export function xattrName(name: Buffer): string {
  if (name.length > MAX_XATTR_NAME) throw new P9Error(Errno.ERANGE);
  if (name.includes(0)) throw new P9Error(Errno.EINVAL);
  return name.toString('utf8');
}

/**
 * Releases a fid: out of the table, its open file closed, and an
 * extended-attribute writer committed (setxattr, or removexattr for an
 * empty value, as QEMU does). Returns the commit's error, if any, for the
 * Rclunk; the fid is gone either way.
 */
export async function releaseFid(ctx: OpContext, fid: Fid): Promise<P9Error | undefined> {
  ctx.fids.delete(fid);
  const handle = fid.handle;
  fid.handle = undefined;
  if (handle !== undefined) await handle.close().catch(() => undefined);
  const x = fid.xattr;
  fid.xattr = undefined;
  if (x?.kind !== 'write' || fid.stale !== undefined) return undefined;
  if (x.written !== x.size) return new P9Error(Errno.EINVAL, 'extended attribute value not fully written');
  try {
    const path = fid.node.livePath();
    if (x.size === 0) await fid.export_.backend.removexattr(path, x.name);
    else await fid.export_.backend.setxattr(path, x.name, x.data, x.flags);
    return undefined;
  } catch (err) {
    return err instanceof P9Error ? err : new P9Error(toErrno(err), (err as Error).message);
  }
}
