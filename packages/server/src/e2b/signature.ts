import { createHash, timingSafeEqual } from 'node:crypto';

/*
 * Signed /files URLs (docs/e2b-wire.md §3.6): `sandbox.downloadUrl()` and
 * `uploadUrl()` carry `signature=v1_<sha256>` (and `signature_expiration`)
 * instead of the access token, so that a browser or curl can use them.
 * The signature is over `path:op:user:token[:expiration]`.
 */

/** What a signed URL allows: GET /files is `read`, POST /files is `write`. */
export type FileOperation = 'read' | 'write';

/** E2B's v1 signature of a file operation under a sandbox's access token. */
export function fileSignature(path: string, op: FileOperation, user: string, token: string, expiration?: number): string {
  const raw = expiration === undefined ? `${path}:${op}:${user}:${token}` : `${path}:${op}:${user}:${token}:${expiration}`;
  return 'v1_' + createHash('sha256').update(raw, 'utf8').digest('base64').replace(/=+$/, '');
}

/** A signed URL's claims: its signature and what it was computed over (but the token). */
export interface SignedFileRequest {
  signature: string;
  path: string;
  user: string;
  expiration: number | undefined;
}

/** The signature claims of a /files URL, or null when it carries no signature (an expiration that is not a number: null too). */
export function signedRequest(url: URL): SignedFileRequest | null {
  const signature = url.searchParams.get('signature');
  if (!signature?.startsWith('v1_')) return null;
  const exp = url.searchParams.get('signature_expiration');
  const expiration = exp === null ? undefined : Number(exp);
  if (expiration !== undefined && !Number.isSafeInteger(expiration)) return null;
  return { signature, path: url.searchParams.get('path') ?? '', user: url.searchParams.get('username') ?? '', expiration };
}

/** True when the claims were signed with `token` for `op` and have not expired. Constant time in the signature. */
export function verifySignature(req: SignedFileRequest, op: FileOperation, token: string, nowMs = Date.now()): boolean {
  if (req.expiration !== undefined && req.expiration < Math.floor(nowMs / 1000)) return false;
  const expected = Buffer.from(fileSignature(req.path, op, req.user, token, req.expiration));
  const given = Buffer.from(req.signature);
  return expected.length === given.length && timingSafeEqual(expected, given);
}
