/**
 * What an operation sees of its session and request: the fid table, msize,
 * the exports, and fid locking tied to the request (so a Tflush cancels a
 * request still waiting for a fid). The session implements it; operations
 * import only this, so neither imports the other.
 */
import type { Authenticator } from './auth.js';
import type { Export } from './export.js';
import type { Fid, FidTable } from './fids.js';

/** One request's view of its session. */
export interface OpContext {
  /** The session's id (lock owners are scoped by it). */
  readonly sessionId: string;
  /** The negotiated msize. */
  readonly msize: number;
  /** The session's fids. */
  readonly fids: FidTable;
  /** The session's authenticator: Tauth is served, and Tattach needs an afid (none: Tauth is EOPNOTSUPP). */
  readonly auth: Authenticator | undefined;
  /** The export `aname` names (Tattach), or throws ENOENT. */
  exportFor(aname: string): Export;
  /**
   * Takes the fids' locks (shared or exclusive, in the order given), checks
   * each fid is still in the table and usable, runs `fn`, and releases them.
   * Rejects with Cancelled when the request is flushed while waiting.
   */
  withFids<T>(locks: ReadonlyArray<readonly [Fid, boolean]>, fn: () => Promise<T>): Promise<T>;
}
