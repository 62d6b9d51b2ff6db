import dgram from 'node:dgram';
import net from 'node:net';
import type { Duplex } from 'node:stream';
import type { PortBinding, PortMapping } from '@roost/api';
import { RoostError } from '../errors.js';

/** How published ports reach the guest: the user-mode stack, or the guest's own address on the bridge. */
export interface ForwardBackend {
  /** A TCP connection to `guestPort` in the guest. */
  connectTcp(guestPort: number): Duplex;
  /** A UDP flow to `guestPort`: datagrams sent, replies handed to `onMessage`. */
  openUdpFlow(guestPort: number, onMessage: (data: Buffer) => void): { send(data: Buffer): void; close(): void };
}

/** UDP flows per published port (one per client address), and how long an idle one lives. */
const MAX_UDP_FLOWS = 256;
const UDP_FLOW_IDLE_MS = 60_000;

interface Listener {
  binding: PortBinding;
  close(): void;
}

/** `ip:port/proto`, the key of a host listener. */
export function bindingKey(b: { hostIp: string; hostPort: number; protocol: string }): string {
  return `${b.hostIp}:${b.hostPort}/${b.protocol}`;
}

/**
 * The host side of a sandbox's published ports: a listener per port, each
 * connection or datagram relayed to the guest through the backend. Lives in
 * the process that owns the sandbox (the daemon under `roost serve`).
 */
export class PortForwarder {
  readonly #listeners = new Map<string, Listener>();
  readonly #backend: () => ForwardBackend | null;

  /** `backend` is asked per connection: null while the guest is not reachable (the connection is closed). */
  constructor(backend: () => ForwardBackend | null) {
    this.#backend = backend;
  }

  list(): PortBinding[] {
    return [...this.#listeners.values()].map((l) => ({ ...l.binding }));
  }

  /** Starts listening; resolves to the binding (with the port the host chose for port 0). */
  async add(m: Required<PortMapping>): Promise<PortBinding> {
    if (m.hostPort !== 0 && this.#listeners.has(bindingKey(m))) {
      throw new RoostError('ALREADY_EXISTS', `host port ${m.hostIp}:${m.hostPort}/${m.protocol} is already published by this sandbox: remove it first`);
    }
    const listener = m.protocol === 'tcp' ? await this.#listenTcp(m) : await this.#listenUdp(m);
    this.#listeners.set(bindingKey(listener.binding), listener);
    return { ...listener.binding };
  }

  /** Stops a listener and closes its connections; false when there was none. */
  remove(b: { hostIp: string; hostPort: number; protocol: string }): boolean {
    const key = bindingKey(b);
    const l = this.#listeners.get(key);
    if (!l) return false;
    this.#listeners.delete(key);
    l.close();
    return true;
  }

  close(): void {
    for (const l of this.#listeners.values()) l.close();
    this.#listeners.clear();
  }

  async #listenTcp(m: Required<PortMapping>): Promise<Listener> {
    const sockets = new Set<net.Socket | Duplex>();
    // allowHalfOpen: a client that has sent all it has (FIN) still gets the guest's answer, and the
    // guest gets that FIN after the last byte (not the connection torn down under queued data).
    const server = net.createServer({ allowHalfOpen: true, noDelay: true }, (client) => {
      const backend = this.#backend();
      if (!backend) {
        client.destroy();
        return;
      }
      let guest: Duplex;
      try {
        guest = backend.connectTcp(m.guestPort);
      } catch {
        client.destroy();
        return;
      }
      sockets.add(client);
      sockets.add(guest);
      // Each direction ends with its FIN (pipe's end); either side failing resets both; each is
      // forgotten when it has closed.
      const abort = () => {
        client.destroy();
        guest.destroy();
      };
      client.on('error', abort);
      guest.on('error', abort);
      client.on('close', () => {
        sockets.delete(client);
        // Closed before the guest's side was done (the client reset, or its owner destroyed it).
        if (!guest.readableEnded) guest.destroy();
      });
      guest.on('close', () => sockets.delete(guest));
      client.pipe(guest);
      guest.pipe(client);
    });
    await listen(server, m);
    const address = server.address() as net.AddressInfo;
    return {
      binding: { guestPort: m.guestPort, hostPort: address.port, hostIp: m.hostIp, protocol: 'tcp' },
      close: () => {
        server.close();
        for (const s of sockets) s.destroy();
        sockets.clear();
      },
    };
  }

  async #listenUdp(m: Required<PortMapping>): Promise<Listener> {
    const socket = dgram.createSocket({ type: 'udp4', reuseAddr: false });
    const flows = new Map<string, { flow: { send(data: Buffer): void; close(): void }; timer: NodeJS.Timeout }>();
    const dropFlow = (key: string) => {
      const f = flows.get(key);
      if (!f) return;
      flows.delete(key);
      clearTimeout(f.timer);
      f.flow.close();
    };
    socket.on('message', (data, rinfo) => {
      const key = `${rinfo.address}:${rinfo.port}`;
      let f = flows.get(key);
      if (!f) {
        const backend = this.#backend();
        if (!backend) return;
        if (flows.size >= MAX_UDP_FLOWS) dropFlow(flows.keys().next().value!);
        const flow = backend.openUdpFlow(m.guestPort, (reply) => socket.send(reply, rinfo.port, rinfo.address, () => {}));
        f = { flow, timer: setTimeout(() => dropFlow(key), UDP_FLOW_IDLE_MS).unref() };
        flows.set(key, f);
      } else {
        f.timer.refresh();
      }
      f.flow.send(data);
    });
    socket.on('error', () => {});
    await new Promise<void>((resolve, reject) => {
      socket.once('error', (e) => reject(bindError(e as NodeJS.ErrnoException, m)));
      socket.bind(m.hostPort, m.hostIp, () => resolve());
    });
    socket.unref();
    return {
      binding: { guestPort: m.guestPort, hostPort: socket.address().port, hostIp: m.hostIp, protocol: 'udp' },
      close: () => {
        for (const key of [...flows.keys()]) dropFlow(key);
        socket.close();
      },
    };
  }
}

function listen(server: net.Server, m: Required<PortMapping>): Promise<void> {
  return new Promise((resolve, reject) => {
    server.once('error', (e) => reject(bindError(e as NodeJS.ErrnoException, m)));
    server.listen({ port: m.hostPort, host: m.hostIp, exclusive: true }, () => {
      server.removeAllListeners('error');
      server.on('error', () => {});
      // A published port must not keep the owner process alive on its own.
      server.unref();
      resolve();
    });
  });
}

function bindError(e: NodeJS.ErrnoException, m: Required<PortMapping>): RoostError {
  const where = `${m.hostIp}:${m.hostPort}/${m.protocol}`;
  switch (e.code) {
    case 'EADDRINUSE':
      return new RoostError(
        'UNAVAILABLE',
        `host port ${where} is already in use by another program: choose another port, or publish ${m.hostIp}::${m.guestPort}${m.protocol === 'udp' ? '/udp' : ''} for a free one`,
        { cause: e },
      );
    case 'EACCES':
      return new RoostError(
        'PERMISSION_DENIED',
        `host port ${where} needs privileges (ports below 1024 need root or CAP_NET_BIND_SERVICE): choose a port of 1024 or above`,
        { cause: e },
      );
    case 'EADDRNOTAVAIL':
      return new RoostError(
        'INVALID_ARGUMENT',
        `${m.hostIp} is not an address of this host: publish on 127.0.0.1 (the default), 0.0.0.0, or one of the host's addresses`,
        { cause: e },
      );
    default:
      return new RoostError('NETWORK', `cannot listen on ${where}: ${e.message}`, { cause: e });
  }
}
