import { statfsSync } from 'node:fs';
import { diskFullError, type RoostError } from './errors.js';

/** Less room than this (bytes, for this user) counts as a full filesystem. */
const NEARLY_FULL_BYTES = 2 ** 20;

/** True when the filesystem holding `path` has less than 1 MiB left for this user. */
export function nearlyFull(path: string): boolean {
  try {
    const st = statfsSync(path);
    return st.bavail * st.bsize < NEARLY_FULL_BYTES;
  } catch {
    return false;
  }
}

/**
 * diskFullError of `err`; and also, for a failure that does not say why
 * (SQLite's SQLITE_IOERR "disk I/O error" when it cannot make its shared
 * memory file, QEMU's "An IO error has occurred"), the full-disk error when
 * the filesystem holding `path` has no room left. Null otherwise.
 */
export function diskFullAt(err: unknown, path: string): RoostError | null {
  const full = diskFullError(err, path);
  if (full) return full;
  return nearlyFull(path) ? diskFullError({ code: 'ENOSPC', cause: err }, path) : null;
}
