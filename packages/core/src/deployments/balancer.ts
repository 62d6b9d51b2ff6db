import net from 'node:net';
import type { Duplex } from 'node:stream';
import { RoostError } from '../errors.js';

/*
 * A deployment's service port (issue 19): one host listener whose TCP
 * connections are spread over the healthy replicas. A connection is only
 * relayed once its replica accepted it: a replica that refuses (it died a
 * moment ago) is skipped for the next one, so a client sees no failure as
 * long as one replica is up. A replica taken out of the set is drained: it
 * gets no new connections, and its open ones end by themselves or are cut
 * at the drain's deadline.
 */

/** A replica as the balancer reaches it. */
export interface BalancerBackend {
  readonly id: string;
  /** A new connection to the replica's port: a Duplex that emits 'connect' once accepted, or an error (ECONNREFUSED, ...); half-open allowed (net.connect's `allowHalfOpen`). */
  connect(): Duplex;
}

/** How a new connection picks its replica. */
export type BalanceStrategy = 'round-robin' | 'least-connections';

/** Options of `ServiceBalancer`. */
export interface ServiceBalancerOptions {
  host: string;
  /** 0: a free port. */
  port: number;
  strategy?: BalanceStrategy;
  /** How long a replica may take to accept a connection before the next one is tried. */
  connectTimeoutMs?: number;
}

/** What `stats()` reports. */
export interface BalancerStats {
  /** Connections being relayed now, by replica id (draining ones included). */
  open: Record<string, number>;
  /** Connections relayed since the start, by replica id. */
  served: Record<string, number>;
  /** Connections closed because no replica accepted them. */
  refused: number;
}

interface Member {
  backend: BalancerBackend;
  /** The client sockets relayed to it. */
  conns: Set<net.Socket>;
  served: number;
  draining: boolean;
}

const DEFAULT_CONNECT_TIMEOUT_MS = 2_000;

/**
 * One service port. Single-threaded (the event loop): `setBackends` and
 * `drain` may be called at any time, connections in flight keep the
 * replica they were given.
 */
export class ServiceBalancer {
  readonly #options: Required<ServiceBalancerOptions>;
  readonly #members = new Map<string, Member>();
  /** The ids taking new connections, in the order given. */
  #active: string[] = [];
  #next = 0;
  #refused = 0;
  #server: net.Server | null = null;
  #address: { host: string; port: number } | null = null;

  constructor(options: ServiceBalancerOptions) {
    this.#options = { strategy: 'round-robin', connectTimeoutMs: DEFAULT_CONNECT_TIMEOUT_MS, ...options };
  }

  /** Starts listening; resolves to the address (with the chosen port for 0). UNAVAILABLE if the port is taken, PERMISSION_DENIED for a privileged port, INVALID_ARGUMENT for an address not this host's. */
  async listen(): Promise<{ host: string; port: number }> {
    if (this.#address) return this.#address;
    // Half-open: a client that has sent its whole request (FIN) still gets the reply.
    const server = net.createServer({ noDelay: true, allowHalfOpen: true }, (client) => this.#accept(client));
    await new Promise<void>((resolve, reject) => {
      server.once('error', (e: NodeJS.ErrnoException) => {
        const where = `service port ${this.#options.host}:${this.#options.port}`;
        if (e.code === 'EADDRINUSE') reject(new RoostError('UNAVAILABLE', `${where} is in use by another program`, { cause: e }));
        else if (e.code === 'EACCES')
          reject(
            new RoostError('PERMISSION_DENIED', `${where}: binding it needs privileges (ports below 1024 do, for a user without CAP_NET_BIND_SERVICE)`, {
              cause: e,
            }),
          );
        else if (e.code === 'EADDRNOTAVAIL')
          reject(new RoostError('INVALID_ARGUMENT', `${where}: ${this.#options.host} is no address of this host`, { cause: e }));
        else reject(new RoostError('NETWORK', `${where}: ${e.message}`, { cause: e }));
      });
      server.listen(this.#options.port, this.#options.host, () => resolve());
    });
    server.on('error', () => {}); // after listening: per-connection errors are handled on the sockets
    this.#server = server;
    const addr = server.address() as net.AddressInfo;
    this.#address = { host: this.#options.host, port: addr.port };
    return this.#address;
  }

  /**
   * The replicas that take new connections. One left out is drained (its
   * open connections go on); one given again takes connections again.
   */
  setBackends(backends: readonly BalancerBackend[]): void {
    const ids = new Set(backends.map((b) => b.id));
    for (const b of backends) {
      const m = this.#members.get(b.id);
      if (m) {
        m.backend = b;
        m.draining = false;
      } else this.#members.set(b.id, { backend: b, conns: new Set(), served: 0, draining: false });
    }
    for (const [id, m] of this.#members) {
      if (ids.has(id)) continue;
      m.draining = true;
      if (m.conns.size === 0) this.#members.delete(id);
    }
    this.#active = backends.map((b) => b.id);
  }

  /**
   * Takes a replica out (if it is in) and waits until its open connections
   * have ended, cutting those left at `timeoutMs`.
   */
  async drain(id: string, timeoutMs: number): Promise<void> {
    const m = this.#members.get(id);
    if (!m) return;
    if (!m.draining) this.setBackends(this.#active.filter((a) => a !== id).map((a) => this.#members.get(a)!.backend));
    const deadline = Date.now() + timeoutMs;
    while (m.conns.size > 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
    for (const c of m.conns) c.destroy();
    this.#members.delete(id);
  }

  /** Changes how new connections pick their replica (connections open keep theirs). */
  setStrategy(strategy: BalanceStrategy): void {
    this.#options.strategy = strategy;
  }

  stats(): BalancerStats {
    const open: Record<string, number> = {};
    const served: Record<string, number> = {};
    for (const [id, m] of this.#members) {
      open[id] = m.conns.size;
      served[id] = m.served;
    }
    return { open, served, refused: this.#refused };
  }

  /** Stops listening and cuts every connection. */
  async close(): Promise<void> {
    const server = this.#server;
    this.#server = null;
    for (const m of this.#members.values()) for (const c of m.conns) c.destroy();
    this.#members.clear();
    this.#active = [];
    if (server) await new Promise<void>((r) => server.close(() => r()));
  }

  /** The replicas to try for a new connection, best first. */
  #candidates(): Member[] {
    const active = this.#active.map((id) => this.#members.get(id)).filter((m): m is Member => !!m && !m.draining);
    if (active.length === 0) return [];
    if (this.#options.strategy === 'least-connections') return [...active].sort((a, b) => a.conns.size - b.conns.size);
    const start = this.#next++ % active.length;
    return [...active.slice(start), ...active.slice(0, start)];
  }

  #accept(client: net.Socket): void {
    client.pause();
    client.on('error', () => {});
    const candidates = this.#candidates();
    const attempt = (i: number): void => {
      const m = candidates[i];
      if (!m || client.destroyed) {
        if (!client.destroyed) this.#refused++;
        client.destroy();
        return;
      }
      const upstream = m.backend.connect();
      let accepted = false;
      const timer = setTimeout(() => upstream.destroy(new Error('connect timeout')), this.#options.connectTimeoutMs);
      timer.unref();
      upstream.once('error', () => {
        clearTimeout(timer);
        // Refused before it was accepted: nothing was relayed yet, so the next replica can take it.
        if (!accepted) attempt(i + 1);
      });
      upstream.once('connect', () => {
        clearTimeout(timer);
        accepted = true;
        if (client.destroyed) {
          upstream.destroy();
          return;
        }
        m.conns.add(client);
        m.served++;
        const done = () => {
          m.conns.delete(client);
          if (m.draining && m.conns.size === 0 && this.#members.get(m.backend.id) === m) this.#members.delete(m.backend.id);
        };
        client.once('close', done);
        upstream.on('error', () => client.destroy());
        client.on('error', () => upstream.destroy());
        // The replica is done: what it sent is flushed to the client, then the client is let go.
        upstream.once('close', () => {
          if (!client.destroyed) client.end(() => client.destroy());
        });
        client.once('close', () => upstream.destroy());
        client.pipe(upstream);
        upstream.pipe(client);
        client.resume();
      });
    };
    attempt(0);
  }
}
