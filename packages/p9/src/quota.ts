/**
 * A byte quota for one export: the sum of its regular files' sizes (each
 * inode once), measured when the export is opened and kept up to date by
 * the backend's own writes, truncates and removals. A write that would pass
 * the limit is cut short at it, and one that cannot write a byte fails with
 * ENOSPC, which is what the guest sees.
 *
 * Files open for writing are tracked by inode: the size accounted for each
 * ("accounted") only grows with writes past it, so two writers extending
 * the same file are not charged twice, and it is reconciled with the file's
 * real size (fstat) when the last handle closes. Changes made by other host
 * processes are seen at the next `rescan()`.
 */
import { lstatSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { Errno } from './constants.js';
import { P9Error } from './errors.js';

interface Tracked {
  accounted: bigint;
  handles: number;
}

/** The usage and limit of one export. */
export class Quota {
  #used = 0n;
  readonly #open = new Map<string, Tracked>();

  /** @param limit bytes the export may hold. */
  constructor(readonly limit: bigint) {}

  /** Bytes in use, as accounted. */
  get used(): bigint {
    return this.#used;
  }

  /** Measures the export's usage from scratch (regular files, each inode once; symlinks not followed). */
  rescan(root: string): void {
    const seen = new Map<string, bigint>();
    let total = 0n;
    const walk = (dir: string): void => {
      let entries;
      try {
        entries = readdirSync(dir, { withFileTypes: true });
      } catch {
        return;
      }
      for (const e of entries) {
        const p = join(dir, e.name);
        if (e.isDirectory()) walk(p);
        else if (e.isFile()) {
          try {
            const st = lstatSync(p, { bigint: true });
            const key = `${st.dev}:${st.ino}`;
            if (seen.has(key)) continue;
            seen.set(key, st.size);
            total += st.size;
          } catch {
            // Gone meanwhile.
          }
        }
      }
    };
    walk(root);
    this.#used = total;
    // Open files: what was just counted is what their close will reconcile from.
    for (const [key, t] of this.#open) t.accounted = seen.get(key) ?? 0n;
  }

  /** A file was opened for writing with `size` bytes. */
  track(key: string, size: bigint): void {
    const t = this.#open.get(key);
    if (t !== undefined) t.handles++;
    else this.#open.set(key, { accounted: size, handles: 1 });
  }

  /**
   * Charges a write ending at `end` to open file `key`; returns the end the
   * write may go to (at most `end`). Throws ENOSPC when not one byte fits.
   */
  reserve(key: string, start: bigint, end: bigint): bigint {
    const t = this.#open.get(key);
    if (t === undefined || end <= t.accounted) return end;
    const growth = end - t.accounted;
    const room = this.limit - this.#used;
    if (growth <= room) {
      this.#used += growth;
      t.accounted = end;
      return end;
    }
    const allowedEnd = t.accounted + (room > 0n ? room : 0n);
    if (allowedEnd <= start) throw new P9Error(Errno.ENOSPC);
    this.#used += allowedEnd - t.accounted;
    t.accounted = allowedEnd;
    return allowedEnd;
  }

  /** Charges a size change from `oldSize` to `newSize` (truncate); ENOSPC when growth does not fit. */
  resize(key: string, oldSize: bigint, newSize: bigint): void {
    const t = this.#open.get(key);
    const from = t !== undefined ? t.accounted : oldSize;
    const delta = newSize - from;
    if (delta > 0n && this.#used + delta > this.limit) throw new P9Error(Errno.ENOSPC);
    this.#used += delta;
    if (t !== undefined) t.accounted = newSize;
  }

  /** The last link of a regular file of `size` bytes was removed. */
  removed(key: string, size: bigint): void {
    const t = this.#open.get(key);
    // An open file keeps its blocks until its last close (reconciled in untrack).
    if (t !== undefined) return;
    this.#used -= size;
    if (this.#used < 0n) this.#used = 0n;
  }

  /** A handle of `key` closed; `size` is the file's real size then, `nlink` its links (0 when removed). */
  untrack(key: string, size: bigint, nlink: bigint): void {
    const t = this.#open.get(key);
    if (t === undefined) return;
    if (--t.handles > 0) return;
    this.#open.delete(key);
    this.#used += (nlink > 0n ? size : 0n) - t.accounted;
    if (this.#used < 0n) this.#used = 0n;
  }
}
