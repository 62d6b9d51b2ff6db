/**
 * The network face of a P9Server for remote volumes: 9P2000.L over TLS 1.3
 * (TCP), a 9P session per connection, every attach authenticated with a
 * per-export token through Tauth (auth.ts).
 *
 *   const cert = await loadOrCreateCertificate(stateDir);
 *   const server = new RemoteServer({ exports: { data: { backend: new LocalBackend(dir) } }, certificate: cert });
 *   const token = server.tokens.issue('data', { readOnly: false });
 *   const { port } = await server.listen(7564, '0.0.0.0');
 *
 * Frames are plain 9P2000.L frames on the TLS stream (one stream per
 * connection): the same frames a QUIC transport would carry on a stream, so
 * one can be added beside this later. ALPN `roost-9p` is offered.
 */
import type { AddressInfo } from 'node:net';
import { createServer, type Server, type TLSSocket } from 'node:tls';
import { TokenAuthenticator } from './auth.js';
import type { ExportOptions } from './export.js';
import type { ServerCertificate } from './remote-tls.js';
import { P9Server } from './server.js';
import type { SessionOptions } from './session.js';

/** The ALPN protocol name of 9P over TLS. */
export const ALPN_9P = 'roost-9p';

/** Options of {@link RemoteServer}. */
export interface RemoteServerOptions {
  /** Exports by name (the URL's EXPORT, Tattach's aname). */
  exports: Record<string, ExportOptions>;
  /** The certificate and key to present. */
  certificate: Pick<ServerCertificate, 'key' | 'cert'>;
  /** Bounds of each session (`auth` is the server's own). */
  session?: Omit<SessionOptions, 'auth'>;
  /** Most connections at once (default 128); more are refused. */
  maxConnections?: number;
  /** A connection that does not finish its TLS handshake within this is dropped (default 10 s). */
  handshakeTimeoutMs?: number;
}

/** Counts, for operators and tests. */
export interface RemoteServerStats {
  /** TCP connections accepted. */
  connections: number;
  /** TLS handshakes completed. */
  handshakes: number;
  /** Connections on which the peer sent 9P bytes (a session was started). */
  sessions: number;
  /** Connections open now. */
  open: number;
}

/** A 9P2000.L server on TLS 1.3 with per-export tokens. */
export class RemoteServer {
  /** The tokens accepted, by export. Issue one per client (or per mount). */
  readonly tokens = new TokenAuthenticator();
  readonly p9: P9Server;
  readonly #sockets = new Set<TLSSocket>();
  readonly #stats = { connections: 0, handshakes: 0, sessions: 0 };
  #tls: Server | undefined;
  readonly #options: RemoteServerOptions;

  constructor(options: RemoteServerOptions) {
    this.#options = options;
    this.p9 = new P9Server({ exports: options.exports, session: { ...options.session, auth: this.tokens } });
  }

  /** Listens on `host:port` (port 0 picks one). Resolves with the address bound. */
  async listen(port: number, host = '127.0.0.1'): Promise<{ host: string; port: number }> {
    if (this.#tls !== undefined) throw new Error('already listening');
    const server = createServer(
      {
        key: this.#options.certificate.key,
        cert: this.#options.certificate.cert,
        minVersion: 'TLSv1.3',
        ALPNProtocols: [ALPN_9P],
        handshakeTimeout: this.#options.handshakeTimeoutMs ?? 10_000,
      },
      (socket) => this.#accept(socket),
    );
    server.maxConnections = this.#options.maxConnections ?? 128;
    // A failed handshake (a client that does not trust us, a scanner) is that connection's business only.
    server.on('tlsClientError', () => undefined);
    server.on('connection', () => this.#stats.connections++);
    this.#tls = server;
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(port, host, () => {
        server.off('error', reject);
        resolve();
      });
    });
    const address = server.address() as AddressInfo;
    return { host: address.address, port: address.port };
  }

  #accept(socket: TLSSocket): void {
    this.#stats.handshakes++;
    socket.setNoDelay(true);
    socket.setKeepAlive(true, 15_000);
    this.#sockets.add(socket);
    socket.once('close', () => this.#sockets.delete(socket));
    socket.on('error', () => undefined);
    // The session starts with the peer's first 9P byte: a client that leaves
    // after the handshake (a pinned fingerprint that did not match) never had one.
    socket.once('data', (chunk: Buffer) => {
      socket.pause();
      socket.unshift(chunk);
      this.#stats.sessions++;
      void this.p9.serve(socket);
    });
  }

  /** Counts of connections and sessions. */
  get stats(): RemoteServerStats {
    return { ...this.#stats, open: this.#sockets.size };
  }

  /** Drops every connection now (clients reconnect); for operators and tests. The listener stays. */
  dropConnections(): number {
    const n = this.#sockets.size;
    for (const s of this.#sockets) s.destroy();
    return n;
  }

  /** Stops listening, drops every connection and closes the exports' backends. */
  async close(): Promise<void> {
    const tls = this.#tls;
    this.#tls = undefined;
    const closed = tls === undefined ? Promise.resolve() : new Promise<void>((resolve) => tls.close(() => resolve()));
    this.dropConnections();
    await this.p9.close();
    await closed;
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }
}
