/**
 * TLS pieces of remote volumes: the server's certificate (given, or
 * self-signed on first start and kept in a state directory), and
 * fingerprints (`sha256:<hex>` of the DER certificate) to pin it.
 *
 * Certificates are generated with the `selfsigned` package (ECDSA P-256
 * through Node's WebCrypto, no OpenSSL binary needed).
 */
import { createHash, timingSafeEqual, X509Certificate } from 'node:crypto';
import { chmodSync, closeSync, mkdirSync, openSync, readFileSync, renameSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import type { TLSSocket } from 'node:tls';
import { Errno } from './constants.js';
import { P9Error } from './errors.js';

/** A server certificate and its key, PEM. */
export interface ServerCertificate {
  key: string;
  cert: string;
  /** CA certificates clients verify the chain against (none when pinned by fingerprint). */
  ca?: string;
  /** `sha256:<hex>` of the DER certificate. */
  fingerprint: string;
}

/** `sha256:<64 hex digits>` of a DER certificate, or of the first certificate of a PEM text. */
export function certificateFingerprint(cert: Buffer | string): string {
  const der = typeof cert === 'string' ? new X509Certificate(cert).raw : cert;
  return `sha256:${createHash('sha256').update(der).digest('hex')}`;
}

/** A fingerprint in the canonical form (`sha256:` + lowercase hex; colons and `SHA256:` accepted), or null when it is not one. */
export function normalizeFingerprint(text: string): string | null {
  const m = /^sha256:([0-9a-f:]+)$/i.exec(text.trim());
  if (m === null) return null;
  const hex = m[1]!.replace(/:/g, '').toLowerCase();
  return /^[0-9a-f]{64}$/.test(hex) ? `sha256:${hex}` : null;
}

/** Whether two canonical fingerprints are equal (constant time). */
export function fingerprintsEqual(a: string, b: string): boolean {
  const x = Buffer.from(a);
  const y = Buffer.from(b);
  return x.length === y.length && timingSafeEqual(x, y);
}

/** The fingerprint of the certificate a TLS peer presented, or null when it presented none. */
export function peerFingerprint(socket: TLSSocket): string | null {
  const cert = socket.getPeerCertificate();
  if (cert === null || typeof cert !== 'object' || !Buffer.isBuffer(cert.raw)) return null;
  return certificateFingerprint(cert.raw);
}

/** Writes `data` to `file` with mode 0600 atomically (a 0600 temporary file renamed over it). */
export function writePrivateFile(file: string, data: string): void {
  const tmp = `${file}.${process.pid}.${Date.now()}.tmp`;
  const fd = openSync(tmp, 'wx', 0o600);
  try {
    writeSync(fd, data);
  } finally {
    closeSync(fd);
  }
  chmodSync(tmp, 0o600);
  renameSync(tmp, file);
}

/**
 * The certificate kept in `stateDir` (`server.key`, 0600, and `server.crt`),
 * made on the first call: self-signed, ECDSA P-256, valid ten years, with
 * `altNames` (host names or IP addresses) as subject alternative names.
 * Clients pin it by fingerprint, so the names are informative only.
 */
export async function loadOrCreateCertificate(stateDir: string, altNames: string[] = []): Promise<ServerCertificate & { created: boolean }> {
  const keyFile = join(stateDir, 'server.key');
  const certFile = join(stateDir, 'server.crt');
  try {
    const key = readFileSync(keyFile, 'utf8');
    const cert = readFileSync(certFile, 'utf8');
    return { key, cert, fingerprint: certificateFingerprint(cert), created: false };
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
  }
  mkdirSync(stateDir, { recursive: true, mode: 0o700 });
  const names = [...new Set(['localhost', '127.0.0.1', ...altNames])];
  // Loaded when a certificate is made (once per server state directory): it is heavy, and most processes never need it.
  const { generate } = await import('selfsigned');
  const pems = await generate([{ name: 'commonName', value: 'roost volume server' }], {
    keyType: 'ec',
    curve: 'P-256',
    algorithm: 'sha256',
    notBeforeDate: new Date(Date.now() - 60_000),
    notAfterDate: new Date(Date.now() + 10 * 365 * 86_400_000),
    extensions: [
      { name: 'basicConstraints', cA: false },
      { name: 'keyUsage', digitalSignature: true, critical: true },
      { name: 'extKeyUsage', serverAuth: true },
      { name: 'subjectAltName', altNames: names.map((n) => (/^[\d.]+$|:/.test(n) ? { type: 7 as const, ip: n } : { type: 2 as const, value: n })) },
    ],
  });
  // The key first: a certificate without its key would be kept and fail every start.
  writePrivateFile(keyFile, pems.private);
  writePrivateFile(certFile, pems.cert);
  return { key: pems.private, cert: pems.cert, fingerprint: certificateFingerprint(pems.cert), created: true };
}

/** A P9Error for a TLS peer that is not the one expected. */
export function untrustedPeer(message: string): P9Error {
  return new P9Error(Errno.EACCES, message);
}
