import type { Duplex } from 'node:stream';
import { randomBytes } from 'node:crypto';
import dgram from 'node:dgram';
import net from 'node:net';
import {
  ipv4ToInt,
  normalizeEgress,
  normalizePortSpec,
  ZERO_NETWORK_STATS,
  type DeniedConnection,
  type EgressSpec,
  type NetworkInfo,
  type NetworkMode,
  type NetworkStats,
  type PortBinding,
  type PortMapping,
  type PortSpec,
} from '@roost/api';
import { encodeNetConfig } from '@roost/protocol';
import { RoostError } from '../errors.js';
import { connectWithRetry } from '../vmm/connect.js';
import type { VmNic, VmPaths } from '../vmm/types.js';
import type { BridgeNetwork } from './bridge-network.js';
import { EgressFilter } from './policy.js';
import { bindingKey, PortForwarder, type ForwardBackend } from './ports.js';
import { createUserNetFilter, USER_NET, UserNet } from './user/index.js';

/** What a create asks of the network. */
export interface NetworkRequest {
  network?: NetworkMode | undefined;
  ports?: PortSpec[] | undefined;
  egress?: EgressSpec | undefined;
}

/** A locally administered unicast MAC (02:...): what user-mode sandboxes get. */
function randomMac(): string {
  const b = randomBytes(4);
  return ['02', '52', ...[...b].map((x) => x.toString(16).padStart(2, '0'))].join(':');
}

/**
 * Checks a create's network options (bad input fails before anything
 * starts) and returns the record's network, without published ports
 * (bound at boot) and, in bridge mode, without an address (leased then).
 */
export function planNetwork(req: NetworkRequest): { info: NetworkInfo; ports: Required<PortMapping>[] } {
  const mode = req.network ?? 'user';
  const egress = normalizeEgress(req.egress);
  const ports = (req.ports ?? []).map((p) => normalizePortSpec(p));
  if (mode === 'none' && (ports.length > 0 || req.egress !== undefined)) {
    throw new RoostError(
      'INVALID_ARGUMENT',
      `a sandbox with network 'none' has no NIC, so it cannot publish ports or have an egress policy: use network 'user' (the default)`,
    );
  }
  const seen = new Set<string>();
  for (const p of ports) {
    if (p.hostPort === 0) continue;
    const key = bindingKey(p);
    if (seen.has(key)) throw new RoostError('INVALID_ARGUMENT', `host port ${key} is published twice: each host port leads to one guest port`);
    seen.add(key);
  }
  if (mode === 'none') return { info: { mode, ports: [], egress }, ports };
  if (mode === 'user') {
    return {
      info: { mode, mac: randomMac(), address: USER_NET.guest, prefix: USER_NET.prefix, gateway: USER_NET.gateway, dns: USER_NET.dns, ports: [], egress },
      ports,
    };
  }
  return { info: { mode, ports: [], egress }, ports };
}

/** The interface MTU: large under the user-mode stack (fewer packets under TCG), Ethernet's on a bridge. */
function mtuFor(mode: NetworkMode): number {
  return mode === 'user' ? USER_NET.mtu : 1500;
}

/** The most `network.denied` events a sandbox makes per second; the rest are counted (`suppressed` on the next event). */
const DENIED_EVENTS_PER_SECOND = 10;

/** What a sandbox's network reports to its owner. */
export interface SandboxNetEvents {
  denied(data: DeniedConnection & { suppressed?: number }): void;
}

/**
 * A sandbox's network while its VM runs in this process: the user-mode
 * stack (or its bridge plumbing), its published ports and its counters.
 * Made at each boot (or when a runtime attaches to a running VM), closed when
 * the VM stops or the runtime lets it go.
 */
export class SandboxNet {
  readonly info: NetworkInfo;
  readonly #forwarder: PortForwarder;
  readonly #events: SandboxNetEvents;
  readonly #bridge: BridgeNetwork | null;
  readonly #sandboxId: string;
  #user: UserNet | null = null;
  #link: net.Socket | null = null;
  #filter: EgressFilter | null = null;
  #closed = false;
  #deniedWindowStart = 0;
  #deniedInWindow = 0;
  #suppressed = 0;

  constructor(sandboxId: string, info: NetworkInfo, events: SandboxNetEvents, bridge: BridgeNetwork | null) {
    if (info.mode === 'none') throw new RoostError('INTERNAL', 'no SandboxNet without a NIC');
    if (info.mode === 'bridge' && !bridge) throw new RoostError('INTERNAL', 'bridge mode without its bridge');
    this.#sandboxId = sandboxId;
    this.info = info;
    this.#events = events;
    this.#bridge = bridge;
    this.#forwarder = new PortForwarder(() => this.#backend());
  }

  /** The NIC QEMU gets. */
  nic(paths: VmPaths): VmNic {
    const mtu = mtuFor(this.info.mode);
    if (this.info.mode === 'bridge') return { kind: 'tap', ifname: this.#bridge!.tapName(this.#sandboxId), mac: this.info.mac!, mtu };
    return { kind: 'stream', socket: paths.netSocket, mac: this.info.mac!, mtu };
  }

  /** HELLO's NET value: how the agent configures eth0. */
  helloConfig(): Uint8Array {
    const i = this.info;
    return encodeNetConfig({ mac: i.mac!, mtu: mtuFor(i.mode), address: i.address!, prefix: i.prefix!, gateway: i.gateway!, dns: i.dns! });
  }

  /**
   * Before QEMU starts: binds the published ports (a port in use fails the
   * create before a VM is spent on it) and, in bridge mode, makes the TAP.
   */
  async prepare(ports: Required<PortMapping>[], onUnavailable?: (port: Required<PortMapping>, err: unknown) => void): Promise<PortBinding[]> {
    try {
      for (const p of ports) {
        try {
          await this.#forwarder.add(p);
        } catch (e) {
          if (!onUnavailable) throw e;
          onUnavailable(p, e);
        }
      }
      if (this.#bridge) await this.#bridge.attachSandbox(this.#sandboxId, this);
    } catch (e) {
      await this.close();
      throw e;
    }
    return this.#forwarder.list();
  }

  /** After QEMU starts: connects the user-mode stack to QEMU's socket. */
  async attach(paths: VmPaths, options: { vmExited: () => boolean; signal?: AbortSignal; timeoutMs: number }): Promise<void> {
    if (this.info.mode !== 'user') return;
    const link = await connectWithRetry(() => connectUnix(paths.netSocket), {
      what: paths.netSocket,
      vmExited: options.vmExited,
      signal: options.signal,
      deadline: Date.now() + options.timeoutMs,
    });
    if (this.#closed) {
      link.destroy();
      return;
    }
    // The link must not keep the owner alive on its own (as the VM does not).
    link.unref();
    this.#link = link;
    this.#user = new UserNet({
      guestMac: this.info.mac!,
      filter: this.filter(),
      onDenied: (d) => this.reportDenied(d),
    });
    this.#user.attach(link);
  }

  /**
   * The policy's filter. In user mode "the host" is 127.0.0.1 (the gateway
   * leads there) and the host's own addresses (else its LAN address would
   * reach services on 0.0.0.0 under default allow); on a bridge it is the
   * gateway (iptables treats every address of the host as the host).
   */
  filter(): EgressFilter {
    // One per VM run: the bridge's DNS server asks for it on every query.
    this.#filter ??=
      this.info.mode === 'user'
        ? createUserNetFilter(this.info.egress)
        : new EgressFilter(this.info.egress, { hostAddresses: [ipv4ToInt(this.info.gateway!)] });
    return this.#filter;
  }

  /** Rate-limited `network.denied` events (the counters stay exact). */
  reportDenied(d: DeniedConnection): void {
    const now = Date.now();
    if (now - this.#deniedWindowStart >= 1000) {
      this.#deniedWindowStart = now;
      this.#deniedInWindow = 0;
    }
    if (this.#deniedInWindow >= DENIED_EVENTS_PER_SECOND) {
      this.#suppressed++;
      return;
    }
    this.#deniedInWindow++;
    const suppressed = this.#suppressed;
    this.#suppressed = 0;
    this.#events.denied({ ...d, ...(suppressed ? { suppressed } : {}) });
  }

  get ports(): PortBinding[] {
    return this.#forwarder.list();
  }

  addPort(spec: PortSpec): Promise<PortBinding> {
    if (this.#closed) throw new RoostError('INVALID_STATE', 'the sandbox network is closed');
    return this.#forwarder.add(normalizePortSpec(spec));
  }

  /**
   * A TCP connection from the host to `guestPort` in the guest, the path a
   * published port takes (the user-mode stack, or the bridge address); it
   * emits 'connect' once the guest accepts, or an error (ECONNREFUSED, ...).
   */
  connectTcp(guestPort: number): Duplex {
    const backend = this.#backend();
    if (!backend) throw new RoostError('INVALID_STATE', 'the sandbox network is closed');
    return backend.connectTcp(guestPort);
  }

  removePort(b: { hostIp: string; hostPort: number; protocol: string }): boolean {
    return this.#forwarder.remove(b);
  }

  async stats(): Promise<NetworkStats> {
    if (this.#bridge) return this.#bridge.stats(this.#sandboxId);
    const s = this.#user?.stats ?? ZERO_NETWORK_STATS;
    return { bytesIn: s.bytesIn, packetsIn: s.packetsIn, bytesOut: s.bytesOut, packetsOut: s.packetsOut, denied: s.denied };
  }

  /**
   * Ends this process's part of the network: ports and the user-mode stack.
   * `vmGone`: the VM has exited, so a bridge TAP and its rules go too (the
   * lease stays until the sandbox is removed).
   */
  close(options: { vmGone: boolean } = { vmGone: true }): Promise<void> {
    if (this.#closed) return Promise.resolve();
    this.#closed = true;
    this.#forwarder.close();
    this.#user?.close();
    this.#user = null;
    this.#link?.destroy();
    this.#link = null;
    // A TAP and its rules outlive a failure to remove them only until the next attach (both idempotent).
    return this.#bridge && options.vmGone ? this.#bridge.detachSandbox(this.#sandboxId).catch(() => {}) : Promise.resolve();
  }

  #backend(): ForwardBackend | null {
    if (this.#closed) return null;
    if (this.info.mode === 'user') return this.#user;
    const address = this.info.address!;
    return {
      connectTcp: (guestPort) => net.connect({ host: address, port: guestPort, noDelay: true }),
      openUdpFlow: (guestPort, onMessage) => {
        const s = dgram.createSocket('udp4');
        s.on('message', (m) => onMessage(m));
        s.on('error', () => {});
        s.unref();
        return { send: (data) => s.send(data, guestPort, address), close: () => s.close() };
      },
    };
  }
}

function connectUnix(path: string): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const s = net.connect(path);
    s.once('connect', () => {
      s.removeListener('error', reject);
      resolve(s);
    });
    s.once('error', reject);
  });
}
