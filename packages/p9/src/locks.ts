/**
 * POSIX byte-range locks (fcntl F_SETLK/F_GETLK, and flock, which the Linux
 * client sends as a whole-file POSIX lock), kept by the server for one
 * export and shared by all its sessions, so two guests mounting one volume
 * exclude each other. Node cannot take fcntl locks on the host, so host
 * processes do not see them: they are the guests' locks.
 *
 * The server never waits for a lock: a conflicting request gets BLOCKED,
 * and the Linux client retries blocking requests (F_SETLKW) itself.
 *
 * An owner is one process of one client of one session
 * (`session \0 client_id \0 proc_id`). A session's locks go when the session
 * closes (not when it is only detached from a transport).
 */
import { Errno, LockStatus, LockType } from './constants.js';
import { P9Error } from './errors.js';

const END = 0xffffffffffffffffn;

/** One held range. `end` is exclusive (END for "to the end of the file"). */
export interface HeldLock {
  owner: string;
  type: number;
  start: bigint;
  end: bigint;
  procId: number;
  clientId: string;
}

/** A lock that conflicts with a test, in Rgetlock's terms. */
export interface LockConflict {
  type: number;
  start: bigint;
  length: bigint;
  procId: number;
  clientId: string;
}

/** The lock owner key of a client process in a session. */
export function lockOwner(session: string, clientId: string, procId: number): string {
  return `${session}\0${clientId}\0${procId}`;
}

function rangeEnd(start: bigint, length: bigint): bigint {
  return length === 0n || start + length > END ? END : start + length;
}

function overlaps(a: { start: bigint; end: bigint }, start: bigint, end: bigint): boolean {
  return a.start < end && start < a.end;
}

/** The locks of one export, by file (qid path). */
export class LockTable {
  readonly #files = new Map<bigint, HeldLock[]>();
  #count = 0;

  /** @param maxLocks the most ranges held at once in this export (ENOLCK past it). */
  constructor(readonly maxLocks = 65536) {}

  /** Ranges held now (for tests of the bounds). */
  get count(): number {
    return this.#count;
  }

  /** The first lock of another owner that conflicts with `type` over the range, if any. */
  test(file: bigint, owner: string, type: number, start: bigint, length: bigint): LockConflict | null {
    const end = rangeEnd(start, length);
    for (const l of this.#files.get(file) ?? []) {
      if (l.owner === owner || !overlaps(l, start, end)) continue;
      if (type === LockType.WRLCK || l.type === LockType.WRLCK) {
        return { type: l.type, start: l.start, length: l.end === END ? 0n : l.end - l.start, procId: l.procId, clientId: l.clientId };
      }
    }
    return null;
  }

  /** Sets (RDLCK/WRLCK) or clears (UNLCK) a range for `owner`. Returns SUCCESS or BLOCKED. */
  lock(file: bigint, owner: string, type: number, start: bigint, length: bigint, procId: number, clientId: string): number {
    if (type !== LockType.RDLCK && type !== LockType.WRLCK && type !== LockType.UNLCK) throw new P9Error(Errno.EINVAL);
    if (type !== LockType.UNLCK && this.test(file, owner, type, start, length) !== null) return LockStatus.BLOCKED;
    const end = rangeEnd(start, length);
    const held = this.#files.get(file) ?? [];
    const kept: HeldLock[] = [];
    for (const l of held) {
      if (l.owner !== owner || !overlaps(l, start, end)) {
        kept.push(l);
        continue;
      }
      // The owner's range is replaced where the new one covers it: keep the parts outside.
      if (l.start < start) kept.push({ ...l, end: start });
      if (l.end > end) kept.push({ ...l, start: end });
    }
    if (type !== LockType.UNLCK) kept.push({ owner, type, start, end, procId, clientId });
    const delta = kept.length - held.length;
    if (delta > 0 && this.#count + delta > this.maxLocks) throw new P9Error(Errno.ENOLCK);
    this.#count += delta;
    if (kept.length === 0) this.#files.delete(file);
    else this.#files.set(file, kept);
    return LockStatus.SUCCESS;
  }

  /** Drops every lock of owners whose key starts with `prefix` (a session ending). */
  releaseOwners(prefix: string): void {
    for (const [file, held] of this.#files) {
      const kept = held.filter((l) => !l.owner.startsWith(prefix));
      this.#count -= held.length - kept.length;
      if (kept.length === 0) this.#files.delete(file);
      else this.#files.set(file, kept);
    }
  }

  /** The locks held by owners whose key starts with `prefix`, with their file. */
  heldBy(prefix: string): Array<HeldLock & { file: bigint }> {
    const out: Array<HeldLock & { file: bigint }> = [];
    for (const [file, held] of this.#files) for (const l of held) if (l.owner.startsWith(prefix)) out.push({ ...l, file });
    return out;
  }

  /** Puts back a lock from a saved session (no conflict check: it was held when saved). */
  restore(file: bigint, lock: HeldLock): void {
    const held = this.#files.get(file) ?? [];
    held.push(lock);
    this.#files.set(file, held);
    this.#count++;
  }
}
