import { RoostError } from './errors.js';

/** errno names of a full filesystem or quota. */
const DISK_FULL_ERRNOS = new Set(['ENOSPC', 'EDQUOT']);
/** What tools (qemu-img, mkfs, tar) print for them. */
const DISK_FULL_MESSAGE = /No space left on device|Disk quota exceeded|database or disk is full/;

/**
 * The errno name of a full disk if `err` (or an error in its `cause` chain)
 * is one: an fs error with ENOSPC or EDQUOT, SQLite's SQLITE_FULL, a tool
 * that said so, or a RoostError whose details say so. Null otherwise.
 */
export function diskFullErrno(err: unknown): string | null {
  for (let e = err, depth = 0; e !== null && typeof e === 'object' && depth < 8; e = (e as { cause?: unknown }).cause, depth++) {
    const { code, message } = e as { code?: unknown; message?: unknown };
    if (e instanceof RoostError) {
      // A guest's ENOSPC (details.errno of a file operation) is the guest's disk, not the host's: only the cause counts.
      if (e.code === 'RESOURCE_EXHAUSTED' && e.details.resource === 'disk') return typeof e.details.errno === 'string' ? e.details.errno : 'ENOSPC';
      continue;
    }
    if (typeof code === 'string' && DISK_FULL_ERRNOS.has(code)) return code;
    if (code === 'SQLITE_FULL') return 'ENOSPC';
    if (typeof message === 'string' && DISK_FULL_MESSAGE.test(message)) return /quota/i.test(message) ? 'EDQUOT' : 'ENOSPC';
  }
  return null;
}

/**
 * The RoostError of a full host disk for `err`, or null when `err` is not
 * one: RESOURCE_EXHAUSTED, "the disk holding <path> is full: free space and
 * retry", details `{ resource: 'disk', errno, path }` (HTTP 507). `path` is
 * what was being written (the home, a snapshot, a blob); an fs error's own
 * path is used when none is given. A RoostError that is already one is
 * returned as it is. Use it wherever the host writes: one classification,
 * one message.
 */
export function diskFullError(err: unknown, path?: string): RoostError | null {
  if (err instanceof RoostError && err.code === 'RESOURCE_EXHAUSTED' && err.details.resource === 'disk') return err;
  const errno = diskFullErrno(err);
  if (!errno) return null;
  const where = path ?? (typeof (err as { path?: unknown }).path === 'string' ? (err as { path: string }).path : undefined);
  const disk = where ? `the disk holding ${where}` : "the host's disk";
  const message = errno === 'EDQUOT' ? `${disk} is over its quota: free space and retry` : `${disk} is full: free space and retry`;
  return new RoostError('RESOURCE_EXHAUSTED', message, { cause: err, details: { resource: 'disk', errno, ...(where ? { path: where } : {}) } });
}

/** Throws the full-disk error of `err` (see diskFullError) if it is one, else `err` itself. */
export function rethrowDiskFull(err: unknown, path?: string): never {
  throw diskFullError(err, path) ?? err;
}

/** Throws the full-disk error of `err` (see diskFullError) if it is one; returns otherwise. */
export function throwIfDiskFull(err: unknown, path?: string): void {
  const full = diskFullError(err, path);
  if (full) throw full;
}
