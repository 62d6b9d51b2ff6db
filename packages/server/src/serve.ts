import { randomBytes } from 'node:crypto';
import { constants as fsConstants } from 'node:fs';
import { chmod, lstat, mkdir, open, rename, unlink, writeFile } from 'node:fs/promises';
import { createServer, type RequestListener, type Server } from 'node:http';
import { connect, isIP } from 'node:net';
import { getRequestListener } from '@hono/node-server';
import { apiTokenPath, daemonSocketPath, RoostError, type McpSettings } from '@roost/api';
import { Runtime, roostHome } from '@roost/core';
import { createApp, type AppLimits } from './app.js';
import { E2bControl } from './e2b/control.js';
import { E2bRouter, parseE2bDomain } from './e2b/router.js';
import { VERSION } from './version.js';

/** Limits of the daemon: its HTTP face's and the runtime's. */
export interface ServeLimits extends AppLimits {
  /** Sandboxes booting at once (more: 429). */
  maxConcurrentCreates?: number;
  /** Sandboxes with a VM at once (more: 429). */
  maxSandboxes?: number;
}

/** Options of `serve`. */
export interface ServeOptions {
  /** Roost home (default $ROOST_HOME or ~/.roost, or the home of `runtime`). */
  home?: string;
  /** Serve this open runtime (embedding the API in a program that already owns the home) instead of opening one; close() leaves it open. */
  runtime?: Runtime;
  /** The unix socket (default `roost.sock` in the home), made with mode 0600. */
  socket?: string;
  /** Also listen on TCP (host default 127.0.0.1; port 0 picks a free one). */
  tcp?: { host?: string; port: number };
  /** The bearer token (default: the home's `api-token` file, made on first start). */
  token?: string;
  /** Accept requests without a token. Refused with a TCP listener on anything but a loopback address. */
  noAuth?: boolean;
  limits?: ServeLimits;
  /** Limits of the MCP sessions at /mcp (default: the environment's; see docs/mcp.md). */
  mcp?: McpSettings;
  /**
   * E2B's face. `domain`: of the sandbox hosts behind the SDK's
   * `getHost(port)` (`<port>-<id>.<domain>`), routed on the TCP listener;
   * default `localhost:<its port>`. Needs `tcp`. See docs/e2b.md, "Ports".
   */
  e2b?: { domain?: string };
}

/** A running daemon. */
export interface ServeHandle {
  readonly home: string;
  /** The unix socket it listens on. */
  readonly socketPath: string;
  /** `http://host:port` of the TCP listener, when there is one. */
  readonly url: string | null;
  /** The domain of E2B's sandbox hosts (`localhost:7423`), routed on the TCP listener; null without one. */
  readonly e2bDomain: string | null;
  /** The bearer token clients must send. */
  readonly token: string;
  /** Stops listening, ends the streams, kills the commands it started and closes the runtime (non-detached sandboxes stop). */
  close(): Promise<void>;
}

/** True for addresses only this machine can reach. */
export function isLoopback(host: string): boolean {
  const h = host.replace(/^\[|\]$/g, '').toLowerCase();
  return h === 'localhost' || h === '::1' || /^127\.\d{1,3}\.\d{1,3}\.\d{1,3}$/.test(h) || /^::ffff:127\./.test(h);
}

/** How long close() lets requests in flight finish before it cuts their connections. */
const CLOSE_GRACE_MS = 2_000;

/**
 * Runs the daemon: opens the runtime of a home (taking its lock), and
 * serves the REST API on a unix socket and, when asked, on TCP. Every
 * request needs the bearer token (generated into the home on first start).
 */
export async function serve(options: ServeOptions = {}): Promise<ServeHandle> {
  const home = options.runtime?.home ?? roostHome(options.home);
  const host = options.tcp?.host ?? '127.0.0.1';
  if (options.tcp) {
    const { port } = options.tcp;
    if (!Number.isInteger(port) || port < 0 || port > 65535) throw new RoostError('INVALID_ARGUMENT', `tcp port: ${port} is not a port (0-65535)`);
    if (options.noAuth && !isLoopback(host)) {
      throw new RoostError('INVALID_ARGUMENT', `refusing to serve ${host} without a token: only the unix socket and loopback addresses may run without auth`);
    }
  }
  const e2bDomain = options.e2b?.domain === undefined ? undefined : parseE2bDomain(options.e2b.domain);
  if (e2bDomain && !options.tcp) throw new RoostError('INVALID_ARGUMENT', 'an E2B domain needs a TCP listener (--tcp): its sandbox hosts are routed there');
  await mkdir(home, { recursive: true, mode: 0o700 });
  const token = options.token ?? (await loadOrCreateToken(home));
  if (!/^[\x21-\x7e]{16,}$/.test(token)) throw new RoostError('INVALID_ARGUMENT', 'token: at least 16 printable characters without spaces');
  const socketPath = options.socket ?? daemonSocketPath(home);

  const limits = options.limits ?? {};
  // A runtime the caller opened is served as it is, and stays open after close().
  const ownsRuntime = !options.runtime;
  const runtime =
    options.runtime ??
    (await Runtime.open({
      home,
      owner: 'roost serve',
      ...(limits.maxConcurrentCreates !== undefined ? { maxConcurrentCreates: limits.maxConcurrentCreates } : {}),
      ...(limits.maxSandboxes !== undefined ? { maxSandboxes: limits.maxSandboxes } : {}),
    }));
  const shutdown = new AbortController();
  const servers: Server[] = [];
  let url: string | null = null;
  let router: E2bRouter | null = null;
  const e2b = new E2bControl(runtime);
  try {
    const app = createApp({
      runtime,
      token: options.noAuth ? null : token,
      version: VERSION,
      limits,
      shutdown: shutdown.signal,
      ...(options.mcp ? { mcp: options.mcp } : {}),
      e2b,
      url: () => url,
    });
    const fetchListener = getRequestListener(app.fetch);
    // The adapter's listener handles its own failures: its promise is only when it is done.
    const appListener: RequestListener = (req, res) => void fetchListener(req, res);
    const newServer = (listener: RequestListener) => {
      const server = createServer(listener);
      // Stdin streams and event streams are long requests by design.
      server.requestTimeout = 0;
      servers.push(server);
      return server;
    };
    await listenUnix(newServer(appListener), socketPath);
    if (options.tcp) {
      // E2B's sandbox hosts are routed here only (./e2b/router.ts), once the port (for the default domain) is known.
      const server = newServer((req, res) => (router ?? { listener: appListener }).listener(req, res));
      await new Promise<void>((resolve, reject) => {
        server.once('error', reject);
        server.listen(options.tcp!.port, host, () => {
          server.off('error', reject);
          resolve();
        });
      });
      const addr = server.address();
      const port = typeof addr === 'object' && addr ? addr.port : options.tcp.port;
      url = `http://${isIP(host) === 6 ? `[${host}]` : host}:${port}`;
      router = new E2bRouter({ domain: e2bDomain ?? `localhost:${port}`, sandboxes: e2b, app: appListener });
      router.attach(server);
      e2b.domain = router.domain;
    }
  } catch (e) {
    await Promise.allSettled(servers.map(closeServer));
    if (ownsRuntime) await runtime.close();
    throw e;
  }

  let closed: Promise<void> | null = null;
  return {
    home,
    socketPath,
    url,
    e2bDomain: e2b.domain,
    token,
    close() {
      closed ??= (async () => {
        shutdown.abort();
        // Upgraded connections are the router's, not the server's: cut them, or the server would wait for them.
        router?.close();
        await Promise.allSettled(servers.map(closeServer));
        if (ownsRuntime) await runtime.close();
        await unlink(socketPath).catch(() => {});
      })();
      return closed;
    },
  };
}

/** Stops accepting, lets requests in flight finish for a moment, then cuts what is left. */
async function closeServer(server: Server): Promise<void> {
  if (!server.listening) return;
  let finished = false;
  const done = new Promise<void>((r) => server.close(() => r())).finally(() => (finished = true));
  // Streams end on shutdown a moment later, leaving kept-alive connections idle: close those as they appear.
  const deadline = Date.now() + CLOSE_GRACE_MS;
  while (!finished && Date.now() < deadline) {
    server.closeIdleConnections();
    await Promise.race([done, new Promise((r) => setTimeout(r, 20))]);
  }
  server.closeAllConnections();
  await done;
}

/**
 * Listens on a unix socket with mode 0600 from the start: bound under a
 * temporary name, restricted, then renamed into place. A socket file left
 * by a dead daemon is removed; one that answers is someone else's.
 */
async function listenUnix(server: Server, path: string): Promise<void> {
  await claimSocketPath(path);
  const tmp = `${path}.${process.pid}`;
  await unlink(tmp).catch(() => {});
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(tmp, () => {
      server.off('error', reject);
      resolve();
    });
  });
  try {
    await chmod(tmp, 0o600);
    await rename(tmp, path);
  } catch (e) {
    await closeServer(server);
    await unlink(tmp).catch(() => {});
    throw e;
  }
}

async function claimSocketPath(path: string): Promise<void> {
  let isSocket: boolean;
  try {
    isSocket = (await lstat(path)).isSocket();
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return;
    throw e;
  }
  if (!isSocket) throw new RoostError('INVALID_ARGUMENT', `${path} exists and is not a socket: choose another --socket, or remove it`);
  const answers = await new Promise<boolean>((resolve) => {
    const s = connect(path);
    s.once('connect', () => {
      s.destroy();
      resolve(true);
    });
    s.once('error', () => resolve(false));
  });
  if (answers) throw new RoostError('UNAVAILABLE', `a daemon already listens on ${path} (stop it first, or choose another --socket)`);
  await unlink(path);
}

/**
 * The home's API token: read from `api-token` (which must be the user's own
 * and not readable by others), or made on first start (32 random bytes,
 * hex, mode 0600, created exclusively so two starts agree on one token).
 */
export async function loadOrCreateToken(home: string): Promise<string> {
  const path = apiTokenPath(home);
  for (;;) {
    let fh;
    try {
      fh = await open(path, fsConstants.O_RDONLY | fsConstants.O_NOFOLLOW);
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      if (code === 'ELOOP') throw new RoostError('INVALID_STATE', `${path} is a symbolic link: remove it to have a new token made`);
      if (code !== 'ENOENT') throw e;
      const token = randomBytes(32).toString('hex');
      try {
        await writeFile(path, token + '\n', { mode: 0o600, flag: 'wx' });
        return token;
      } catch (w) {
        if ((w as NodeJS.ErrnoException).code === 'EEXIST') continue;
        throw w;
      }
    }
    try {
      const st = await fh.stat();
      if (!st.isFile()) throw new RoostError('INVALID_STATE', `${path} is not a file`);
      if ((st.mode & 0o077) !== 0) {
        throw new RoostError(
          'INVALID_STATE',
          `${path} is accessible to other users (mode ${(st.mode & 0o777).toString(8)}): \`chmod 600 ${path}\`, or delete it to have a new token made`,
        );
      }
      const uid = process.getuid?.();
      if (uid !== undefined && st.uid !== uid) throw new RoostError('INVALID_STATE', `${path} belongs to uid ${st.uid}, not to this user (${uid})`);
      const token = (await fh.readFile('utf8')).trim();
      if (!token) throw new RoostError('INVALID_STATE', `${path} is empty: delete it to have a new token made`);
      return token;
    } finally {
      await fh.close();
    }
  }
}
