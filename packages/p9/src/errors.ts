/**
 * The one error of the server and its backends: a Linux errno for Rlerror.
 * Errors from Node's fs calls carry their errno name in `code`; they map
 * through the host's errno table (this runs on Linux, and so does the
 * guest, so the numbers agree).
 */
import { constants as osConstants } from 'node:os';
import { Errno } from './constants.js';

/** An operation that fails with `errno` (sent to the client as Rlerror). */
export class P9Error extends Error {
  override readonly name = 'P9Error';
  constructor(
    /** The Linux errno. */
    readonly errno: number,
    message?: string,
  ) {
    super(message ?? errnoName(errno));
  }
}

/** Shorthand: `throw fail('ENOENT')`. */
export function fail(code: keyof typeof Errno, message?: string): P9Error {
  return new P9Error(Errno[code], message ?? code);
}

const NAMES = new Map<number, string>();
for (const [name, value] of Object.entries(osConstants.errno)) if (!NAMES.has(value)) NAMES.set(value, name);

/** The errno's name ('ENOENT'), or `errno N`. */
export function errnoName(errno: number): string {
  return NAMES.get(errno) ?? `errno ${errno}`;
}

/**
 * The errno an error stands for: a P9Error's own, a Node system error's
 * (by its `code`), EIO for anything else (a bug, reported as an I/O error
 * rather than crashing the session).
 */
export function toErrno(err: unknown): number {
  if (err instanceof P9Error) return err.errno;
  if (typeof err === 'object' && err !== null) {
    const code = (err as { code?: unknown }).code;
    if (typeof code === 'string') {
      const n = (osConstants.errno as Record<string, number | undefined>)[code];
      if (n !== undefined) return n;
    }
    const errno = (err as { errno?: unknown }).errno;
    if (typeof errno === 'number' && errno < 0 && errno > -4096) return -errno;
  }
  return Errno.EIO;
}
