import type { NetworkInfo, NetworkStats } from '@roost/api';
import {
  applyEgress,
  checkBridgePrivileges,
  createTap,
  deleteTap,
  deniedCount,
  ensureBridge,
  pruneLearned,
  removeEgress,
  serveBridgeDns,
  tapName,
  tapStats,
  type BridgeDnsServer,
} from './bridge.js';
import type { Ipam } from './ipam.js';
import type { EgressFilter } from './policy.js';

/** A bridge and its subnet. */
export interface BridgeConfig {
  /** The bridge device (at most 15 characters). */
  name: string;
  /** Its subnet (CIDR); sandboxes lease addresses from it. */
  subnet: string;
  /** The host's address on the bridge (default: the subnet's first). */
  gateway?: string;
}

/**
 * What the bridge needs of a sandbox's network while its TAP is attached:
 * its address, MAC and egress policy, its filter for DNS answers, and where
 * denied lookups are reported. (A SandboxNet is one; this keeps the bridge
 * from depending on it.)
 */
export interface BridgeAttachment {
  readonly info: NetworkInfo;
  filter(): EgressFilter;
  reportDenied(d: { protocol: 'dns'; name: string }): void;
}

/** How often expired DNS-learned rules are pruned. */
const PRUNE_INTERVAL_MS = 60_000;

/**
 * Bridge mode for one runtime: the bridge with NAT (set up idempotently: a
 * bridge left by a crashed runtime is taken over), the guests' DNS server on
 * the gateway address, address leases in SQLite, and per sandbox a TAP
 * (`rt-<id>`) with its egress rules. Needs root (CAP_NET_ADMIN).
 */
export class BridgeNetwork {
  readonly name: string;
  readonly gateway: string;
  readonly #ipam: Ipam;
  readonly #attached = new Map<string, BridgeAttachment>();
  #dns: BridgeDnsServer | null = null;
  #prune: NodeJS.Timeout | null = null;

  private constructor(ipam: Ipam) {
    this.#ipam = ipam;
    this.name = ipam.network;
    this.gateway = ipam.gateway;
  }

  /** Checks privileges, sets up the bridge of `ipam`'s pool and starts its DNS server. */
  static async open(ipam: Ipam): Promise<BridgeNetwork> {
    checkBridgePrivileges();
    const bridge = new BridgeNetwork(ipam);
    await ensureBridge({ name: ipam.network, subnet: ipam.subnet, gateway: ipam.gateway });
    bridge.#dns = await serveBridgeDns({
      gateway: ipam.gateway,
      lookup: (source) => {
        for (const [id, snet] of bridge.#attached) {
          if (snet.info.address === source) return { filter: snet.filter(), onDenied: (name) => snet.reportDenied({ protocol: 'dns', name }), sandboxId: id };
        }
        return null;
      },
    });
    bridge.#prune = setInterval(() => {
      for (const id of bridge.#attached.keys()) void pruneLearned({ id }).catch(() => {});
    }, PRUNE_INTERVAL_MS).unref();
    return bridge;
  }

  /** Leases the sandbox an address (its existing one, if it has one): the record's network fields. */
  lease(sandboxId: string): Pick<NetworkInfo, 'mac' | 'address' | 'prefix' | 'gateway' | 'dns' | 'bridge'> {
    const l = this.#ipam.lease(sandboxId);
    return { mac: l.mac, address: l.address, prefix: l.prefix, gateway: l.gateway, dns: l.gateway, bridge: this.name };
  }

  tapName(sandboxId: string): string {
    return tapName(sandboxId);
  }

  /** The sandbox's TAP on the bridge and its egress rules (again after a runtime restart: both idempotent). */
  async attachSandbox(sandboxId: string, snet: BridgeAttachment): Promise<void> {
    const tap = tapName(sandboxId);
    await createTap(tap, this.name);
    await applyEgress({ id: sandboxId, tap, address: snet.info.address!, mac: snet.info.mac!, bridge: this.name }, snet.info.egress, this.gateway);
    this.#attached.set(sandboxId, snet);
  }

  /** The VM is gone: its rules and TAP go (its lease stays until the sandbox is removed). */
  async detachSandbox(sandboxId: string): Promise<void> {
    this.#attached.delete(sandboxId);
    await removeEgress({ id: sandboxId });
    await deleteTap(tapName(sandboxId));
  }

  /** The TAP's counters (since it was made) and the packets its REJECT rules counted. */
  async stats(sandboxId: string): Promise<NetworkStats> {
    const s = tapStats(tapName(sandboxId));
    return { ...s, denied: await deniedCount({ id: sandboxId }).catch(() => 0) };
  }

  /** Stops the DNS server; the bridge, TAPs of running detached sandboxes and rules stay. */
  close(): void {
    this.#dns?.close();
    this.#dns = null;
    if (this.#prune) clearInterval(this.#prune);
    this.#attached.clear();
  }
}
