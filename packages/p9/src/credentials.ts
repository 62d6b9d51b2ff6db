/**
 * What a client needs to mount a remote export: the `--credentials-out`
 * file of `roost volume serve`. A small JSON document, written 0600:
 *
 *   { "version": 1, "url": "roost://HOST:PORT/EXPORT", "token": "roost_vt_...",
 *     "fingerprint": "sha256:<hex>", "readOnly": false, "ca": "-----BEGIN CERTIFICATE-----..." }
 *
 * `fingerprint` pins the server's certificate; `ca` (PEM) verifies it
 * against a CA instead (or as well). At least one of them is required.
 */
import { Errno } from './constants.js';
import { P9Error } from './errors.js';
import { normalizeFingerprint, writePrivateFile } from './remote-tls.js';

/** A remote export's address and the secrets to reach it. */
export interface RemoteCredentials {
  /** `roost://HOST:PORT/EXPORT` (an IPv6 host in brackets; the export name percent-encoded). */
  url: string;
  /** The export's token (`roost_vt_...`). Keep it out of logs and argv. */
  token: string;
  /** `sha256:<hex>` of the server's DER certificate, pinned. */
  fingerprint?: string;
  /** Whether the token grants read-only access. */
  readOnly: boolean;
  /** CA certificates (PEM) to verify the server with, instead of or beside the fingerprint. */
  ca?: string;
}

/** A `roost://` URL taken apart. */
export interface RemoteAddress {
  host: string;
  port: number;
  /** The export name (Tattach's aname). */
  exportName: string;
}

const bad = (message: string): P9Error => new P9Error(Errno.EINVAL, message);

/** Parses `roost://HOST:PORT/EXPORT`; EINVAL saying what is wrong. */
export function parseRemoteUrl(url: string): RemoteAddress {
  const m = /^roost:\/\/(\[[0-9a-fA-F:.]+\]|[^/:[\]@]+):(\d{1,5})\/([^/?#]*)$/.exec(url);
  if (m === null) throw bad(`"${url.slice(0, 200)}" is not a remote volume URL (expected roost://HOST:PORT/EXPORT)`);
  const port = Number(m[2]);
  if (port < 1 || port > 65535) throw bad(`port ${m[2]} of ${url} is out of range`);
  let exportName: string;
  try {
    exportName = decodeURIComponent(m[3]!);
  } catch {
    throw bad(`the export name in ${url} is not valid percent-encoding`);
  }
  const host = m[1]!.startsWith('[') ? m[1]!.slice(1, -1) : m[1]!;
  return { host, port, exportName };
}

/** `roost://HOST:PORT/EXPORT`. */
export function formatRemoteUrl(address: RemoteAddress): string {
  const host = address.host.includes(':') ? `[${address.host}]` : address.host;
  return `roost://${host}:${address.port}/${encodeURIComponent(address.exportName)}`;
}

/**
 * Parses a credentials document (JSON). Throws P9Error(EINVAL) naming the
 * field that is wrong (never quoting the token); `source` (a file name)
 * prefixes the message.
 */
export function parseCredentials(text: string, source = 'credentials'): RemoteCredentials {
  const fail = (what: string): P9Error => bad(`${source}: ${what}`);
  let doc: unknown;
  try {
    doc = JSON.parse(text);
  } catch (err) {
    throw fail(`not JSON (${(err as Error).message})`);
  }
  if (typeof doc !== 'object' || doc === null || Array.isArray(doc)) throw fail('expected a JSON object');
  const d = doc as Record<string, unknown>;
  if (d.version !== undefined && d.version !== 1) throw fail(`version ${JSON.stringify(d.version)} is not supported (expected 1)`);
  if (typeof d.url !== 'string') throw fail('"url" is missing (expected roost://HOST:PORT/EXPORT)');
  try {
    parseRemoteUrl(d.url);
  } catch (err) {
    throw fail((err as Error).message);
  }
  if (typeof d.token !== 'string' || !/^roost_vt_[A-Za-z0-9_-]{20,200}$/.test(d.token)) throw fail('"token" is missing or not a volume token (roost_vt_...)');
  let fingerprint: string | undefined;
  if (d.fingerprint !== undefined) {
    if (typeof d.fingerprint !== 'string' || normalizeFingerprint(d.fingerprint) === null) throw fail('"fingerprint" is not sha256:<64 hex digits>');
    fingerprint = normalizeFingerprint(d.fingerprint)!;
  }
  if (d.ca !== undefined && (typeof d.ca !== 'string' || !d.ca.includes('-----BEGIN CERTIFICATE-----'))) throw fail('"ca" is not a PEM certificate');
  if (fingerprint === undefined && d.ca === undefined) throw fail('neither "fingerprint" nor "ca": the server could not be authenticated');
  if (d.readOnly !== undefined && typeof d.readOnly !== 'boolean') throw fail('"readOnly" is not a boolean');
  return {
    url: d.url,
    token: d.token,
    readOnly: d.readOnly === true,
    ...(fingerprint !== undefined ? { fingerprint } : {}),
    ...(typeof d.ca === 'string' ? { ca: d.ca } : {}),
  };
}

/** The credentials document (JSON, ending with a newline). */
export function formatCredentials(c: RemoteCredentials): string {
  return (
    JSON.stringify(
      {
        version: 1,
        url: c.url,
        token: c.token,
        ...(c.fingerprint !== undefined ? { fingerprint: c.fingerprint } : {}),
        readOnly: c.readOnly,
        ...(c.ca !== undefined ? { ca: c.ca } : {}),
      },
      null,
      2,
    ) + '\n'
  );
}

/** Writes a credentials file, mode 0600, atomically (a 0600 temporary file, created exclusively, renamed over `file`). */
export function writeCredentials(file: string, c: RemoteCredentials): void {
  writePrivateFile(file, formatCredentials(c));
}
