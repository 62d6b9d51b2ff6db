/**
 * `roost volume serve`: a directory or a named volume served to other Roost
 * hosts as a remote volume (9P2000.L over TLS 1.3, docs/p9.md "Remote
 * volumes"). The CLI is a thin adapter over {@link serveVolume}.
 *
 *   await using served = await serveVolume({ source: 'models', listen: '0.0.0.0:7564' });
 *   console.log(served.url, served.fingerprint, served.credentialsPath);
 *
 * State under the home, in `<home>/volume-serve/` (0700): the generated
 * certificate (`tls/server.key` 0600, `tls/server.crt`) and, unless the
 * caller names another file, `<export>.credentials` (0600). The token is
 * written only to the credentials file, never returned in a message or
 * printed. A credentials file that already holds a token for the same
 * export, certificate and mode keeps it, so clients survive a restart of
 * the server.
 */
import { mkdirSync, readFileSync, statSync } from 'node:fs';
import { hostname } from 'node:os';
import { basename, isAbsolute, join } from 'node:path';
import {
  certificateFingerprint,
  formatRemoteUrl,
  LocalBackend,
  loadOrCreateCertificate,
  newToken,
  parseCredentials,
  parseRemoteUrl,
  RemoteServer,
  writeCredentials,
  type RemoteCredentials,
  type ServerCertificate,
} from '@roost/p9';
import { RoostError } from '../errors.js';
import { roostHome } from '../home.js';
import { Volumes } from '../volumes.js';

/** Options of {@link serveVolume}. */
export interface ServeVolumeOptions {
  /** The Roost home (state and named volumes); `$ROOST_HOME` or `~/.roost` by default. */
  home?: string;
  /** A named volume of the home, or an absolute host directory. */
  source: string;
  /** `ADDR:PORT` (`[v6addr]:PORT`); port 0 picks a free one. */
  listen: string;
  /** Serve read-only: the export refuses every change, and the token is a read-only one. */
  readOnly?: boolean;
  /** Where to write the client's credentials (0600). Default `<home>/volume-serve/<export>.credentials`. */
  credentialsOut?: string;
  /** A certificate to present instead of the generated one (PEM files; `caFile` is put in the credentials for clients to verify with). */
  tls?: { certFile: string; keyFile: string; caFile?: string };
  /** The host name clients use in the URL (default: the listen address, or this machine's host name when it listens on all addresses). */
  advertise?: string;
}

/** A running volume server. */
export interface VolumeServer {
  /** `roost://HOST:PORT/EXPORT`, what clients connect to. */
  readonly url: string;
  /** `sha256:<hex>` of the certificate presented. */
  readonly fingerprint: string;
  /** The credentials file written (0600): the token is there and nowhere else. */
  readonly credentialsPath: string;
  readonly exportName: string;
  /** The directory served. */
  readonly directory: string;
  readonly readOnly: boolean;
  /** The address bound. */
  readonly address: { host: string; port: number };
  /** Connection and session counts. */
  stats(): { connections: number; sessions: number; open: number };
  /** Cuts every client connection (clients reconnect and go on where they were); returns how many were cut. */
  dropConnections(): number;
  /** Stops serving: drops connections, closes the export. */
  close(): Promise<void>;
  [Symbol.asyncDispose](): Promise<void>;
}

/** `ADDR:PORT` or `[v6]:PORT`. */
export function parseListen(listen: string): { host: string; port: number } {
  const m = /^(?:\[([0-9a-fA-F:.]+)\]|([^:[\]]+)):(\d{1,5})$/.exec(listen);
  const port = Number(m?.[3]);
  if (m === null || port > 65535)
    throw new RoostError('INVALID_ARGUMENT', `--listen ${listen}: expected ADDR:PORT (for example 0.0.0.0:7564, 127.0.0.1:0 or [::1]:7564)`, {
      details: { field: 'listen' },
    });
  return { host: m[1] ?? m[2]!, port };
}

/** An export name from a directory's base name: letters, digits, `.`, `_`, `-`. */
function exportNameOf(dir: string): string {
  const name = basename(dir).replace(/[^A-Za-z0-9._-]/g, '-');
  return name === '' || name === '.' || name === '..' ? 'volume' : name;
}

/** The directory and export name `source` stands for. */
async function resolveSource(home: string, source: string): Promise<{ directory: string; exportName: string }> {
  if (isAbsolute(source)) {
    let isDir = false;
    try {
      isDir = statSync(source).isDirectory();
    } catch {
      throw new RoostError('NOT_FOUND', `the directory ${source} does not exist`, { details: { field: 'source' } });
    }
    if (!isDir) throw new RoostError('INVALID_ARGUMENT', `${source} is not a directory`, { details: { field: 'source' } });
    return { directory: source, exportName: exportNameOf(source) };
  }
  if (source.includes('/'))
    throw new RoostError('INVALID_ARGUMENT', `${source}: give an absolute directory or the name of a volume (see \`roost volume ls\`)`, {
      details: { field: 'source' },
    });
  const info = await new Volumes({ home }).get(source);
  return { directory: info.path, exportName: info.name };
}

function readPem(file: string, what: string): string {
  try {
    return readFileSync(file, 'utf8');
  } catch (err) {
    throw new RoostError('INVALID_ARGUMENT', `cannot read the ${what} ${file}: ${(err as Error).message}`, { cause: err });
  }
}

/** The token of an earlier credentials file for the same export, certificate and mode, if there is one. */
function earlierToken(file: string, exportName: string, fingerprint: string, readOnly: boolean): string | undefined {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch {
    return undefined;
  }
  try {
    const c = parseCredentials(text, file);
    return parseRemoteUrl(c.url).exportName === exportName && c.fingerprint === fingerprint && c.readOnly === readOnly ? c.token : undefined;
  } catch {
    return undefined;
  }
}

/**
 * Serves a directory or named volume over TLS 1.3 until `close()`. Writes
 * the credentials file a client needs (`RemoteBackend.connect(parseCredentials(text))`
 * in @roost/p9, or `roost volume create --remote FILE`).
 */
export async function serveVolume(options: ServeVolumeOptions): Promise<VolumeServer> {
  const home = roostHome(options.home);
  const listen = parseListen(options.listen);
  const readOnly = options.readOnly ?? false;
  const { directory, exportName } = await resolveSource(home, options.source);
  const stateDir = join(home, 'volume-serve');

  let certificate: ServerCertificate;
  if (options.tls !== undefined) {
    const cert = readPem(options.tls.certFile, 'certificate');
    const key = readPem(options.tls.keyFile, 'key');
    const ca = options.tls.caFile === undefined ? undefined : readPem(options.tls.caFile, 'CA certificate');
    try {
      certificate = { cert, key, fingerprint: certificateFingerprint(cert), ...(ca !== undefined ? { ca } : {}) };
    } catch (err) {
      throw new RoostError('INVALID_ARGUMENT', `${options.tls.certFile} is not a PEM certificate: ${(err as Error).message}`, { cause: err });
    }
  } else {
    try {
      certificate = await loadOrCreateCertificate(join(stateDir, 'tls'), listen.host === '0.0.0.0' || listen.host === '::' ? [hostname()] : [listen.host]);
    } catch (err) {
      throw new RoostError('INTERNAL', `cannot make or read the server certificate in ${join(stateDir, 'tls')}: ${(err as Error).message}`, { cause: err });
    }
  }

  const credentialsPath = options.credentialsOut ?? join(stateDir, `${exportName}.credentials`);
  const token = earlierToken(credentialsPath, exportName, certificate.fingerprint, readOnly) ?? newToken();
  const server = new RemoteServer({ exports: { [exportName]: { backend: new LocalBackend(directory), readOnly } }, certificate });
  server.tokens.add(exportName, token, { readOnly });
  let address: { host: string; port: number };
  try {
    address = await server.listen(listen.port, listen.host);
  } catch (err) {
    await server.close();
    const code = (err as NodeJS.ErrnoException).code;
    throw new RoostError(code === 'EADDRINUSE' ? 'UNAVAILABLE' : 'INVALID_ARGUMENT', `cannot listen on ${options.listen}: ${(err as Error).message}`, {
      cause: err,
    });
  }
  const wildcard = address.host === '0.0.0.0' || address.host === '::';
  const url = formatRemoteUrl({ host: options.advertise ?? (wildcard ? hostname() : address.host), port: address.port, exportName });
  const credentials: RemoteCredentials = {
    url,
    token,
    fingerprint: certificate.fingerprint,
    readOnly,
    ...(certificate.ca !== undefined ? { ca: certificate.ca } : {}),
  };
  try {
    if (options.credentialsOut === undefined) mkdirSync(stateDir, { recursive: true, mode: 0o700 });
    writeCredentials(credentialsPath, credentials);
  } catch (err) {
    await server.close();
    throw new RoostError('INVALID_ARGUMENT', `cannot write the credentials to ${credentialsPath}: ${(err as Error).message}`, { cause: err });
  }

  let closed: Promise<void> | undefined;
  const close = (): Promise<void> => (closed ??= server.close());
  return {
    url,
    fingerprint: certificate.fingerprint,
    credentialsPath,
    exportName,
    directory,
    readOnly,
    address,
    stats: () => {
      const s = server.stats;
      return { connections: s.connections, sessions: s.sessions, open: s.open };
    },
    dropConnections: () => server.dropConnections(),
    close,
    [Symbol.asyncDispose]: close,
  };
}
