import { ZERO_NETWORK_STATS } from '@roost/api';
import type { NetworkStats, PortBinding, PortMapping, PortProtocol, PortSpec } from '@roost/api';
import { RoostError } from '../errors.js';
import type { BridgeNetwork } from '../net/bridge-network.js';
import { SandboxNet } from '../net/sandbox-net.js';
import type { VmHandle } from '../vmm/types.js';
import type { SandboxRecord } from './record.js';

/**
 * A sandbox's network across its VM runs: the published ports (bound before
 * each run's VM starts), the user-mode stack or bridge TAP of the run this
 * process serves, and the record of both.
 */
export class SandboxNetwork {
  readonly #record: SandboxRecord;
  readonly #bridge: () => Promise<BridgeNetwork>;
  /** The network of the VM run this process serves (null while stopped, or without a NIC). */
  #net: SandboxNet | null = null;
  /** Settles when the last network closed has let go of its host devices (a bridge TAP). */
  #closed: Promise<void> = Promise.resolve();
  /** Ports asked for at create, bound at the first boot. */
  #pendingPorts: Required<PortMapping>[] | null = null;

  constructor(record: SandboxRecord, bridge: () => Promise<BridgeNetwork>) {
    this.#record = record;
    this.#bridge = bridge;
  }

  /** The network of the current run (null without one). */
  get current(): SandboxNet | null {
    return this.#net;
  }

  /** The ports to bind at the first boot (the create's). */
  setPendingPorts(ports: Required<PortMapping>[]): void {
    this.#pendingPorts = ports;
  }

  /** The guest's network configuration for HELLO (absent: no NIC served here). */
  helloConfig(): Uint8Array | undefined {
    return this.#net?.helloConfig();
  }

  /**
   * Makes the network of a VM run (before the VM starts, or when a runtime
   * attaches to a running VM): binds the published ports, and in bridge mode
   * sets up the TAP and its rules. Null without a NIC. `lenient`: a port
   * another program took meanwhile is dropped (with a `port.removed` event)
   * instead of failing.
   */
  async open(lenient = false): Promise<SandboxNet | null> {
    this.close(false);
    // A TAP of the last run may still be going away: it must be gone before this run makes it again.
    await this.#closed;
    const record = this.#record;
    const network = record.info.network;
    if (!network || network.mode === 'none') return null;
    const bridge = network.mode === 'bridge' ? await this.#bridge() : null;
    const snet = new SandboxNet(record.id, network, { denied: (d) => record.event('network.denied', { ...d }) }, bridge);
    const wanted = this.#pendingPorts ?? network.ports.map((p) => ({ ...p }));
    // A runtime attaching to a running VM keeps what it can: a port another program took meanwhile is dropped.
    const ports = await snet.prepare(
      wanted,
      lenient ? (p, e) => record.event('port.removed', { ...p, reason: e instanceof Error ? e.message : String(e) }) : undefined,
    );
    this.#pendingPorts = null;
    this.#net = snet;
    record.save({ network: { ...network, ports } });
    return snet;
  }

  /** Ends this process's part of the network: ports and the user-mode stack; `vmGone` also takes down a bridge TAP. */
  close(vmGone: boolean): void {
    const snet = this.#net;
    this.#net = null;
    if (snet) this.#closed = snet.close({ vmGone });
  }

  /** Settles once the last closed network has let go of its host devices. */
  closed(): Promise<void> {
    return this.#closed;
  }

  /**
   * Serves the network of a running VM this runtime attached to (QEMU takes
   * the new connection; connections the guest had open through the old
   * runtime are gone) and binds its published ports. Never fails: commands
   * still work without it, and the guest's network stays down until a
   * runtime attaches again (its stats read zero).
   */
  async attach(vm: VmHandle): Promise<void> {
    try {
      const snet = await this.open(true);
      await snet?.attach(vm.paths, { vmExited: () => vm.hasExited, timeoutMs: 5_000 });
    } catch {
      this.close(false);
    }
  }

  /** Traffic through the NIC since this run started here, and denied connections. */
  async stats(): Promise<NetworkStats> {
    return this.#net ? this.#net.stats() : { ...ZERO_NETWORK_STATS };
  }

  /** Publishes a port of the running VM (INVALID_STATE without a NIC, or while stopped). */
  async addPort(spec: PortSpec): Promise<PortBinding> {
    const record = this.#record;
    const snet = this.#net;
    if (!snet) {
      const mode = record.info.network?.mode ?? 'none';
      throw new RoostError(
        'INVALID_STATE',
        mode === 'none'
          ? `sandbox ${record.id} has no network (mode 'none'): it cannot publish ports`
          : `sandbox ${record.id} is ${record.status}: ports are published while it runs (start it first)`,
      );
    }
    const binding = await snet.addPort(spec);
    record.save({ network: { ...snet.info, ports: snet.ports } }, 'port.added', { data: { ...binding } });
    return binding;
  }

  /** Unpublishes a host port (every binding of it when no address is named); NOT_FOUND if none matches. */
  removePort(port: number | { hostPort: number; hostIp?: string; protocol?: PortProtocol }): void {
    const record = this.#record;
    const want = typeof port === 'number' ? { hostPort: port } : port;
    const match = (record.info.network?.ports ?? []).filter(
      (p) => p.hostPort === want.hostPort && (want.hostIp === undefined || p.hostIp === want.hostIp) && p.protocol === (want.protocol ?? 'tcp'),
    );
    if (match.length === 0)
      throw new RoostError(
        'NOT_FOUND',
        `sandbox ${record.id} does not publish host port ${want.hostPort}/${want.protocol ?? 'tcp'}${want.hostIp ? ` on ${want.hostIp}` : ''}`,
      );
    for (const b of match) this.#net?.removePort(b);
    const ports = (record.info.network?.ports ?? []).filter((p) => !match.includes(p));
    record.save({ network: { ...record.info.network!, ports } }, 'port.removed', { data: { ...match[0]! } });
  }
}
