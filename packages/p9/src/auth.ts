/**
 * Authentication for servers reached over a network (remote volumes): 9P's
 * own Tauth. The client sends Tauth(afid, uname, aname), writes its token to
 * the afid with Twrite, then Tattach(fid, afid, uname, aname); the server
 * checks the token against the export `aname` names when the Tattach comes.
 *
 * A server without an Authenticator (the one local VMs use) refuses Tauth
 * with EOPNOTSUPP and attaches with afid NOFID, as before. A server with one
 * refuses every Tattach without a valid afid (EACCES).
 */
import { createHash, randomBytes, timingSafeEqual } from 'node:crypto';

/** What a valid token grants. */
export interface Grant {
  /** Attach read-only: every change is EROFS, even on a read-write export. */
  readOnly: boolean;
}

/** Checks the tokens clients present (a session's `auth` option). */
export interface Authenticator {
  /** The grant of `token` for export `aname`, or null when it grants nothing. Must not log the token. */
  check(aname: string, token: Buffer): Grant | null;
}

/** The prefix of every volume token (so a leaked one is recognisable by scanners). */
export const TOKEN_PREFIX = 'roost_vt_';

/** A new token: `roost_vt_` + 32 random bytes in base64url. */
export function newToken(): string {
  return TOKEN_PREFIX + randomBytes(32).toString('base64url');
}

const digest = (token: Buffer | string): Buffer => createHash('sha256').update(token).digest();

/**
 * Tokens per export, held as SHA-256 digests only (a heap dump does not
 * reveal them), compared in constant time.
 */
export class TokenAuthenticator implements Authenticator {
  readonly #tokens = new Map<string, Array<{ hash: Buffer; readOnly: boolean }>>();

  /** Accepts `token` for export `aname` with `grant`. */
  add(aname: string, token: string, grant: Grant): void {
    const list = this.#tokens.get(aname) ?? [];
    list.push({ hash: digest(token), readOnly: grant.readOnly });
    this.#tokens.set(aname, list);
  }

  /** Makes a new token for export `aname` and accepts it. */
  issue(aname: string, grant: Grant): string {
    const token = newToken();
    this.add(aname, token, grant);
    return token;
  }

  /** Stops accepting `token` (for any export). */
  revoke(token: string): void {
    const hash = digest(token);
    for (const [aname, list] of this.#tokens) {
      this.#tokens.set(
        aname,
        list.filter((t) => !timingSafeEqual(t.hash, hash)),
      );
    }
  }

  check(aname: string, token: Buffer): Grant | null {
    const hash = digest(token);
    let grant: Grant | null = null;
    // Every entry is compared, so the time taken does not say which matched.
    for (const t of this.#tokens.get(aname) ?? []) if (timingSafeEqual(t.hash, hash) && grant === null) grant = { readOnly: t.readOnly };
    return grant;
  }
}
