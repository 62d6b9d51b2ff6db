/**
 * One TLS connection to a remote 9P server, shared by every export of that
 * server the process mounts (a registry keyed by host:port and the pinned
 * identity, reference counted), with reconnection.
 *
 * Reconnection: when the connection drops, operations wait (each at most its
 * backend's `outageTimeoutMs` from the start of the outage, then EIO; once an
 * outage is older than that, new operations fail at once until the
 * connection is back). The connection is dialled again with back-off (50 ms
 * doubling to 2 s, with jitter); on success every export is authenticated
 * and attached again with its own token, every open file is walked to again
 * by its path and reopened with its open flags (without O_CREAT, O_EXCL,
 * O_TRUNC) on the same fid number, and only then do waiting operations run
 * again. A file that is gone, or whose qid changed (another file now has
 * its name), is stale: its operations fail with ESTALE. An export whose
 * token is now refused fails with EACCES.
 *
 * Which operations are retried after a drop is decided by each one
 * (remote-backend.ts): an operation is retried from its start unless it had
 * sent a change that is not idempotent (see {@link Attempt.mutate}), in
 * which case it fails with EIO, since the change may or may not have been
 * made.
 *
 * Liveness: a connection with requests in flight that receives nothing for
 * `livenessMs` (20 s) is taken as dead and dropped (TCP keepalive alone
 * takes minutes), so no request waits forever on a silent peer.
 */
import { isIP } from 'node:net';
import { connect as tlsConnect, type ConnectionOptions, type TLSSocket } from 'node:tls';
import type { Path } from './backend.js';
import { P9Client, type Request } from './client.js';
import { Errno, MAX_MSIZE, MAX_WALK_ELEMENTS, OpenFlag } from './constants.js';
import { P9Error, toErrno } from './errors.js';
import { ALPN_9P } from './remote-server.js';
import { fingerprintsEqual, peerFingerprint, untrustedPeer } from './remote-tls.js';
import type { Qid, RMessage } from './wire.js';

/** Where a remote server is and how it is authenticated. */
export interface RemoteTarget {
  host: string;
  port: number;
  /** The server certificate's pinned fingerprint (`sha256:<hex>`). */
  fingerprint?: string;
  /** CA certificates (PEM) to verify the server with (host name checked too). */
  ca?: string;
}

/** Tunables of a connection. */
export interface RemoteConnectionOptions {
  /** A dial (TCP + TLS handshake) that takes longer fails (default 10 s). */
  connectTimeoutMs?: number;
  /** Requests in flight with nothing received for this long: the connection is dropped (default 20 s). */
  livenessMs?: number;
}

/** The connection dropped under a request (internal: turned into a retry or EIO). */
export class Disconnected extends Error {
  override readonly name = 'Disconnected';
}

/** One attached export on a connection. */
export interface Attachment {
  readonly exportName: string;
  readonly token: string;
  readonly rootFid: number;
  /** Set when a reconnect could not attach it again (its token refused): every operation fails with it. */
  error: P9Error | undefined;
  /** Its open files, reopened after a reconnect. */
  readonly handles: Set<OpenFile>;
}

/** What a reconnect needs to reopen an open file. */
export interface OpenFile {
  readonly fid: number;
  path: Path;
  readonly flags: number;
  readonly qid: Qid;
  /** Set when a reconnect found the file gone (ESTALE). */
  stale: number | undefined;
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms).unref());

/** Rejects a client's non-9P failures (the stream ended) as Disconnected. */
function wrap(err: unknown): never {
  if (err instanceof P9Error) throw err;
  throw new Disconnected((err as Error).message);
}

/** One try of an operation on one connection generation. */
export class Attempt {
  /** Set once a change that must not be repeated was sent. */
  unsafe = false;
  readonly #temps: number[] = [];

  constructor(
    readonly conn: RemoteConnection,
    readonly client: P9Client,
  ) {}

  /** The negotiated msize. */
  get msize(): number {
    return this.client.msize;
  }

  /** A request whose repetition is harmless (a read, a lookup, setting an attribute to a value). */
  async rpc<K extends RMessage['type']>(request: Request, expect: K): Promise<Extract<RMessage, { type: K }>> {
    return this.conn.track(this.client.rpc(request, expect)).catch(wrap);
  }

  /**
   * A change that must not be made twice (create, mkdir, rename, unlink, an
   * append): once sent, a dropped connection fails the operation with EIO
   * instead of retrying it.
   */
  async mutate<K extends RMessage['type']>(request: Request, expect: K): Promise<Extract<RMessage, { type: K }>> {
    this.unsafe = true;
    return this.rpc(request, expect);
  }

  /** A new fid walked from `from` through `path` (16 names per Twalk); released with the attempt unless kept. */
  async walk(from: number, path: Path): Promise<number> {
    return (await this.walkTo(from, path)).fid;
  }

  /** {@link walk}, with the qid of the last name (undefined for an empty path). */
  async walkTo(from: number, path: Path): Promise<{ fid: number; qid: Qid | undefined }> {
    const fid = this.conn.allocFid();
    let at = 0;
    let src = from;
    let qid: Qid | undefined;
    do {
      const names = path.slice(at, at + MAX_WALK_ELEMENTS);
      let r: { qids: Qid[] };
      try {
        r = await this.rpc({ type: 'Twalk', fid: src, newfid: fid, names: [...names] }, 'Rwalk');
      } catch (err) {
        // A first walk that failed made no fid (and a dropped connection took every fid with it);
        // after a later one the fid is already among the temporaries.
        if (src !== fid) this.conn.freeFid(fid);
        throw err;
      }
      if (r.qids.length !== names.length) {
        // A partial walk: newfid is not made (or, walking onto itself, stays where it was).
        if (src !== fid) this.conn.freeFid(fid);
        throw new P9Error(Errno.ENOENT);
      }
      if (src !== fid) this.#temps.push(fid);
      qid = r.qids[r.qids.length - 1] ?? qid;
      src = fid;
      at += names.length;
    } while (at < path.length);
    return { fid, qid };
  }

  /** Keeps `fid` past the attempt (an open file's). */
  keep(fid: number): void {
    const i = this.#temps.indexOf(fid);
    if (i !== -1) this.#temps.splice(i, 1);
  }

  /** Clunks (in the background) the fids walked and not kept. */
  release(): void {
    for (const fid of this.#temps.splice(0)) this.conn.clunkLater(this.client, fid);
  }
}

/** A connection to one remote server. */
export class RemoteConnection {
  refs = 0;
  readonly key: string;
  readonly attachments = new Set<Attachment>();
  #client: P9Client | null = null;
  #closed = false;
  #outageSince: number | null = null;
  #waiters = new Set<() => void>();
  #nextFid = 1;
  readonly #freeFids: number[] = [];
  #inflight = 0;
  #lastReceive = Date.now();
  #watchdog: NodeJS.Timeout | undefined;
  /** TLS connections made (the first and every reconnect). */
  dials = 0;

  constructor(
    readonly target: RemoteTarget,
    readonly options: RemoteConnectionOptions = {},
  ) {
    this.key = connectionKey(target);
  }

  /** Dials for the first time; rejects (no retry) when the server cannot be reached or is not the one pinned. */
  async open(): Promise<void> {
    this.#use(await this.#dial());
  }

  /** A fid number not in use on this connection. */
  allocFid(): number {
    return this.#freeFids.pop() ?? this.#nextFid++;
  }

  /** Returns a fid number (its fid is already gone on the server, or never existed). */
  freeFid(fid: number): void {
    this.#freeFids.push(fid);
  }

  /** Clunks `fid` without waiting; its number is reused once the server has let it go. */
  clunkLater(client: P9Client, fid: number): void {
    if (client !== this.#client) {
      this.freeFid(fid);
      return;
    }
    void this.track(client.rpc({ type: 'Tclunk', fid }, 'Rclunk')).then(
      () => this.freeFid(fid),
      (err: unknown) => {
        // A clunk the server refused still frees the fid (9P: "the fid is clunked even if the remove fails");
        // on a dropped connection the session is gone, with its fids.
        if (err instanceof P9Error || client !== this.#client) this.freeFid(fid);
      },
    );
  }

  /** Counts a request in flight (for the liveness watchdog). */
  track<T>(p: Promise<T>): Promise<T> {
    if (this.#inflight++ === 0) this.#lastReceive = Date.now();
    return p.finally(() => this.#inflight--);
  }

  /**
   * Runs `fn` with an attempt on the live connection; after a drop, again
   * once the connection is back, unless the attempt had sent an unsafe
   * change (then EIO). Waits for the connection at most `outageTimeoutMs`
   * from the start of the outage (then EIO).
   */
  async run<T>(att: Attachment | null, outageTimeoutMs: number, fn: (a: Attempt) => Promise<T>): Promise<T> {
    for (;;) {
      const client = await this.#ready(outageTimeoutMs);
      if (att?.error !== undefined) throw att.error;
      const a = new Attempt(this, client);
      try {
        return await fn(a);
      } catch (err) {
        if (!(err instanceof Disconnected)) throw err;
        if (a.unsafe) throw new P9Error(Errno.EIO, 'the connection to the volume server dropped during a change; it may or may not have been made');
      } finally {
        a.release();
      }
    }
  }

  /** Authenticates and attaches export `exportName` with `token` (retried across a drop: nothing is kept before it succeeds). */
  async attach(exportName: string, token: string, outageTimeoutMs: number): Promise<Attachment> {
    return this.run(null, outageTimeoutMs, async (a) => {
      const rootFid = this.allocFid();
      try {
        await this.#attachOn(a.client, exportName, token, rootFid);
      } catch (err) {
        this.freeFid(rootFid);
        throw err;
      }
      const att: Attachment = { exportName, token, rootFid, error: undefined, handles: new Set() };
      this.attachments.add(att);
      return att;
    });
  }

  /** An open file is closed: its fid is clunked in the background (or only its number freed when the server has no such fid). */
  closeFid(fid: number, serverHasIt: boolean): void {
    if (serverHasIt && this.#client !== null) this.clunkLater(this.#client, fid);
    else this.freeFid(fid);
  }

  /** Lets go of an export (its root fid clunked in the background). */
  detach(att: Attachment): void {
    if (!this.attachments.delete(att)) return;
    if (this.#client !== null) this.clunkLater(this.#client, att.rootFid);
  }

  async #attachOn(client: P9Client, exportName: string, token: string, rootFid: number): Promise<void> {
    const afid = this.allocFid();
    try {
      await this.track(client.authenticate(afid, exportName, token)).catch(wrap);
      await this.track(client.attach(rootFid, exportName, 0, afid)).catch(wrap);
    } finally {
      // On this client even while it is not the live one yet (a reconnect attaches before it goes live):
      // its number is free only once that session let go of the fid, or lost it with the connection.
      void this.track(client.rpc({ type: 'Tclunk', fid: afid }, 'Rclunk')).then(
        () => this.freeFid(afid),
        () => this.freeFid(afid),
      );
    }
  }

  /** Waits until the connection is up; EIO past the outage's bound or once closed. */
  async #ready(outageTimeoutMs: number): Promise<P9Client> {
    for (;;) {
      if (this.#closed) throw new P9Error(Errno.EIO, 'the connection to the volume server is closed');
      if (this.#client !== null) return this.#client;
      const left = (this.#outageSince ?? Date.now()) + outageTimeoutMs - Date.now();
      if (left <= 0)
        throw new P9Error(Errno.EIO, `the volume server ${this.target.host}:${this.target.port} has been unreachable for over ${outageTimeoutMs} ms`);
      await new Promise<void>((resolve) => {
        const wake = (): void => {
          clearTimeout(timer);
          this.#waiters.delete(wake);
          resolve();
        };
        const timer = setTimeout(wake, left);
        this.#waiters.add(wake);
      });
    }
  }

  #wake(): void {
    for (const w of [...this.#waiters]) w();
  }

  /** TCP + TLS 1.3, the peer checked before any 9P byte, then Tversion. */
  async #dial(): Promise<P9Client> {
    const { host, port, fingerprint, ca } = this.target;
    const tlsOptions: ConnectionOptions = {
      host,
      port,
      minVersion: 'TLSv1.3',
      ALPNProtocols: [ALPN_9P],
      // Pinned by fingerprint (checked below) unless a CA is given, which then verifies the chain and the host name.
      rejectUnauthorized: ca !== undefined,
      ...(ca !== undefined ? { ca } : {}),
      ...(isIP(host) === 0 ? { servername: host } : {}),
    };
    this.dials++;
    const socket = await new Promise<TLSSocket>((resolve, reject) => {
      const s = tlsConnect(tlsOptions);
      const timer = setTimeout(() => s.destroy(new P9Error(Errno.EIO, `connecting to ${host}:${port} timed out`)), this.options.connectTimeoutMs ?? 10_000);
      s.once('secureConnect', () => {
        clearTimeout(timer);
        s.off('error', onError);
        resolve(s);
      });
      const onError = (err: Error): void => {
        clearTimeout(timer);
        reject(
          err instanceof P9Error
            ? err
            : new P9Error(toErrno(err) === Errno.EIO ? Errno.EIO : toErrno(err), `cannot reach the volume server ${host}:${port}: ${err.message}`),
        );
      };
      s.once('error', onError);
    });
    if (fingerprint !== undefined) {
      const seen = peerFingerprint(socket);
      if (seen === null || !fingerprintsEqual(seen, fingerprint)) {
        socket.destroy();
        throw untrustedPeer(`the volume server ${host}:${port} presented certificate ${seen ?? '(none)'}, not the pinned ${fingerprint}`);
      }
    }
    socket.setNoDelay(true);
    socket.setKeepAlive(true, 15_000);
    socket.on('data', () => (this.#lastReceive = Date.now()));
    const client = new P9Client(socket);
    try {
      await client.version(MAX_MSIZE);
    } catch (err) {
      client.close();
      throw err instanceof P9Error ? err : new P9Error(Errno.EIO, `the volume server ${host}:${port} did not answer Tversion: ${(err as Error).message}`);
    }
    return client;
  }

  /** Makes `client` the live one and watches it for its end. */
  #use(client: P9Client): void {
    this.#client = client;
    this.#outageSince = null;
    const lost = (): void => this.#lost(client);
    client.stream.once('close', lost);
    client.stream.once('end', lost);
    client.stream.once('error', lost);
    if (this.#watchdog === undefined) {
      const liveness = this.options.livenessMs ?? 20_000;
      this.#watchdog = setInterval(
        () => {
          if (this.#client !== null && this.#inflight > 0 && Date.now() - this.#lastReceive > liveness) this.#client.close();
        },
        Math.min(1000, liveness),
      ).unref();
    }
    this.#wake();
  }

  #lost(client: P9Client): void {
    if (this.#client !== client) return;
    client.close();
    this.#client = null;
    this.#outageSince = Date.now();
    if (!this.#closed) void this.#reconnect();
  }

  async #reconnect(): Promise<void> {
    let delay = 50;
    while (!this.#closed) {
      let client: P9Client | null = null;
      try {
        client = await this.#dial();
        await this.#restore(client);
        if (this.#closed) {
          client.close();
          return;
        }
        this.#use(client);
        return;
      } catch {
        client?.close();
      }
      await sleep(delay + Math.random() * delay * 0.2);
      delay = Math.min(delay * 2, 2000);
    }
  }

  /** Attaches every export again and reopens every open file on `client` (not yet the live one). */
  async #restore(client: P9Client): Promise<void> {
    for (const att of this.attachments) {
      if (att.error !== undefined) continue;
      try {
        await this.#attachOn(client, att.exportName, att.token, att.rootFid);
      } catch (err) {
        if (!(err instanceof P9Error)) throw err;
        att.error = new P9Error(err.errno, `export ${att.exportName} could not be attached again: ${err.message}`);
        for (const h of att.handles) h.stale = Errno.ESTALE;
        continue;
      }
      for (const h of [...att.handles]) {
        if (h.stale !== undefined) continue;
        await this.#reopen(client, att, h);
        // Closed while it was being reopened: the new session's fid is let go.
        if (!att.handles.has(h) && h.stale === undefined) void client.rpc({ type: 'Tclunk', fid: h.fid }).catch(() => undefined);
      }
    }
  }

  async #reopen(client: P9Client, att: Attachment, h: OpenFile): Promise<void> {
    const a = new Attempt(this, client);
    let walked = false;
    try {
      let at = 0;
      let src = att.rootFid;
      do {
        const names = h.path.slice(at, at + MAX_WALK_ELEMENTS);
        const r = await a.rpc({ type: 'Twalk', fid: src, newfid: h.fid, names: [...names] }, 'Rwalk');
        if (r.qids.length !== names.length) throw new P9Error(Errno.ENOENT);
        walked = true;
        src = h.fid;
        at += names.length;
      } while (at < h.path.length);
      const r = await a.rpc({ type: 'Tlopen', fid: h.fid, flags: h.flags & ~(OpenFlag.CREATE | OpenFlag.EXCL | OpenFlag.TRUNC) }, 'Rlopen');
      if (r.qid.path !== h.qid.path) throw new P9Error(Errno.ESTALE, 'another file has its name now');
    } catch (err) {
      if (!(err instanceof P9Error)) throw err;
      h.stale = Errno.ESTALE;
      // Its fid number stays reserved by the handle until it is closed; the server's fid is let go now.
      if (walked) void client.rpc({ type: 'Tclunk', fid: h.fid }).catch(() => undefined);
    }
  }

  /** Closes the connection: waiting and future operations fail with EIO. */
  close(): void {
    this.#closed = true;
    clearInterval(this.#watchdog);
    this.#client?.close();
    this.#client = null;
    this.#wake();
  }
}

/** The registry key: one connection per host:port and pinned identity. */
export function connectionKey(t: RemoteTarget): string {
  return `${t.host}:${t.port}#${t.fingerprint ?? ''}#${t.ca ?? ''}`;
}

const registry = new Map<string, Promise<RemoteConnection>>();
const entries = new WeakMap<RemoteConnection, Promise<RemoteConnection>>();

/** The shared connection to `target` (dialled on first use), with a reference taken; give it back with {@link releaseConnection}. */
export async function acquireConnection(target: RemoteTarget, options?: RemoteConnectionOptions): Promise<RemoteConnection> {
  const key = connectionKey(target);
  let entry = registry.get(key);
  if (entry === undefined) {
    const conn = new RemoteConnection(target, options);
    entry = conn.open().then(() => conn);
    entries.set(conn, entry);
    registry.set(key, entry);
    entry.catch(() => registry.get(key) === entry && registry.delete(key));
  }
  const conn = await entry;
  conn.refs++;
  return conn;
}

/** Gives back a reference; the last one closes the connection. */
export function releaseConnection(conn: RemoteConnection): void {
  if (--conn.refs > 0) return;
  if (registry.get(conn.key) === entries.get(conn)) registry.delete(conn.key);
  conn.close();
}
