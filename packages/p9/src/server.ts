/**
 * The 9P2000.L server: named exports, and sessions over any byte stream.
 *
 *   const server = new P9Server({ exports: { '': { backend: new LocalBackend('/srv/vol') } } });
 *   await server.listen(5640);                 // TCP on 127.0.0.1, a session per connection
 *   // or, for a session that outlives its connection (a VM's):
 *   const session = server.createSession();
 *   await session.attach(stream);              // ... detach(), attach(other), serializeSession() ...
 *
 * The server holds the state shared by all sessions of an export (path
 * tree, locks) and enforces read-only exports.
 */
import { createServer, type AddressInfo, type Server, type Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import { Errno } from './constants.js';
import { P9Error } from './errors.js';
import { Export, type ExportOptions } from './export.js';
import { Session, type SessionHost, type SessionOptions } from './session.js';
import { restoreSession, type SessionSnapshot } from './session-snapshot.js';

/** Options of {@link P9Server}. */
export interface P9ServerOptions {
  /** Exports by name (Tattach's aname; "" is what a mount without `aname=` attaches to). */
  exports?: Record<string, ExportOptions>;
  /** Bounds of each session. */
  session?: SessionOptions;
}

/** A 9P2000.L file server. */
export class P9Server implements SessionHost {
  readonly #exports = new Map<string, Export>();
  readonly #sessions = new Set<Session>();
  readonly #listeners = new Set<Server>();
  readonly #sockets = new Set<Socket>();
  readonly #sessionOptions: SessionOptions;

  constructor(options: P9ServerOptions = {}) {
    this.#sessionOptions = options.session ?? {};
    for (const [name, ex] of Object.entries(options.exports ?? {})) this.addExport(name, ex);
  }

  /** Adds an export. Throws if the name is taken. */
  addExport(name: string, options: ExportOptions): Export {
    if (this.#exports.has(name)) throw new Error(`export ${JSON.stringify(name)} exists`);
    const ex = new Export(name, options);
    this.#exports.set(name, ex);
    return ex;
  }

  /** The export a client attaches to by `aname`. */
  exportFor(aname: string): Export {
    const ex = this.#exports.get(aname);
    if (ex === undefined) throw new P9Error(Errno.ENOENT, `no export ${JSON.stringify(aname)}`);
    return ex;
  }

  /** A new session, not attached to any stream yet; the caller closes it. */
  createSession(options?: SessionOptions): Session {
    return this.#track(new Session(this, { ...this.#sessionOptions, ...options }));
  }

  /** Rebuilds a saved session (see session-snapshot.ts); the caller attaches and closes it. */
  async restoreSession(snapshot: SessionSnapshot, options?: SessionOptions): Promise<Session> {
    return this.#track(await restoreSession(this, snapshot, { ...this.#sessionOptions, ...options }));
  }

  #track(session: Session): Session {
    this.#sessions.add(session);
    return session;
  }

  /** @internal A session closed: it is no longer the server's to close. */
  sessionClosed(session: Session): void {
    this.#sessions.delete(session);
  }

  /** Serves one connection with a session of its own, closed when the connection ends. */
  async serve(stream: Duplex, options?: SessionOptions): Promise<Session> {
    const session = this.createSession(options);
    await session.attach(stream);
    await session.close();
    if (!stream.destroyed) stream.destroy();
    return session;
  }

  /** Listens on TCP (127.0.0.1 unless `host` says otherwise), a session per connection. Resolves with the port. */
  async listen(port = 0, host = '127.0.0.1'): Promise<number> {
    const server = createServer((socket) => {
      socket.setNoDelay(true);
      this.#sockets.add(socket);
      socket.once('close', () => this.#sockets.delete(socket));
      void this.serve(socket);
    });
    this.#listeners.add(server);
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(port, host, () => {
        server.off('error', reject);
        resolve();
      });
    });
    return (server.address() as AddressInfo).port;
  }

  /** Sessions alive now. */
  get sessions(): ReadonlySet<Session> {
    return this.#sessions;
  }

  /** Stops listening, closes every session and connection, and closes the exports' backends. */
  async close(): Promise<void> {
    for (const server of this.#listeners) server.close();
    this.#listeners.clear();
    for (const socket of this.#sockets) socket.destroy();
    await Promise.all([...this.#sessions].map((s) => s.close()));
    for (const ex of this.#exports.values()) await ex.backend.close();
    this.#exports.clear();
  }
}
