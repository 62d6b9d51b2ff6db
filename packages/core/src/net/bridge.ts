import { createSocket } from 'node:dgram';
import { execFileSync } from 'node:child_process';
import { accessSync, constants, existsSync, readFileSync } from 'node:fs';
import { readFile, writeFile } from 'node:fs/promises';
import { delimiter, join } from 'node:path';
import { cidrContains, formatCidr, intToIpv4, ipv4ToInt, parseCidr, parseEgressRule, prefixMask, ZERO_NETWORK_STATS, type NetworkStats } from '@roost/api';
import { RoostError } from '../errors.js';
import { answerDnsQuery, DnsLimit, type Resolve4 } from './dns.js';
import { HOST_NAME, type EgressFilter } from './policy.js';
import { macForAddress } from './ipam.js';
import { allowLearned, checkInterfaceName, ensureBridgeFirewall, hostCommand, mustRun, teardownBridgeFirewall, type HostNetOptions } from './iptables.js';

/*
 * Bridge mode's host plumbing: the Linux bridge with the gateway address,
 * IPv4 forwarding, a TAP per sandbox, TAP counters, and DNS on the gateway.
 * The packet filter is in iptables.ts. Everything here needs root
 * (CAP_NET_ADMIN) and is idempotent: safe to run twice, and after a crash
 * left half of it done.
 */

export { applyEgress, removeEgress, allowLearned, pruneLearned, deniedCount, type BridgeSandbox, type HostNetOptions } from './iptables.js';

/** CAP_NET_ADMIN's bit in /proc/self/status CapEff. */
const CAP_NET_ADMIN = 12n;

/** The commands bridge mode runs, each with its Debian package. */
const REQUIRED_COMMANDS: ReadonlyArray<[string, string]> = [
  ['ip', 'iproute2'],
  ['iptables', 'iptables'],
  ['iptables-restore', 'iptables'],
  ['ebtables', 'iptables'],
];

function hasNetAdmin(): boolean {
  try {
    const hex = /^CapEff:\s*([0-9a-f]+)$/m.exec(readFileSync('/proc/self/status', 'utf8'))?.[1];
    if (hex !== undefined) return ((BigInt(`0x${hex}`) >> CAP_NET_ADMIN) & 1n) === 1n;
  } catch {
    // no /proc: fall back on the user id
  }
  return process.getuid?.() === 0;
}

function onPath(command: string): boolean {
  for (const dir of (process.env.PATH ?? '').split(delimiter)) {
    if (dir === '') continue;
    try {
      accessSync(join(dir, command), constants.X_OK);
      return true;
    } catch {
      // not here
    }
  }
  return false;
}

/**
 * Throws unless this process can run bridge mode: PERMISSION_DENIED without
 * CAP_NET_ADMIN, SETUP_REQUIRED when a command or /dev/net/tun is missing.
 */
export function checkBridgePrivileges(): void {
  if (!hasNetAdmin()) {
    throw new RoostError(
      'PERMISSION_DENIED',
      "bridge networking needs root (CAP_NET_ADMIN) to create the bridge and TAP devices: run as root (e.g. `sudo roost serve`), or use network mode 'user'",
    );
  }
  const missing = REQUIRED_COMMANDS.filter(([cmd]) => !onPath(cmd));
  if (missing.length > 0) {
    const packages = [...new Set(missing.map(([, pkg]) => pkg))];
    throw new RoostError(
      'SETUP_REQUIRED',
      `bridge networking needs ${missing.map(([cmd]) => `\`${cmd}\``).join(', ')}, not found on PATH: install the Debian package${packages.length > 1 ? 's' : ''} ${packages.join(' ')} (\`apt-get install ${packages.join(' ')}\`), or use network mode 'user'`,
      { details: { missing: missing.map(([cmd]) => cmd), packages } },
    );
  }
  if (!existsSync('/dev/net/tun')) {
    throw new RoostError(
      'SETUP_REQUIRED',
      "bridge networking needs /dev/net/tun for TAP devices, and this host has none: load the tun module (`modprobe tun`), or use network mode 'user'",
    );
  }
}

/** The TAP device of a sandbox: `rt-` and its 12-hex-digit id (15 characters, the most an interface name has). */
export function tapName(sandboxId: string): string {
  if (!/^[0-9a-f]{12}$/.test(sandboxId)) throw new RoostError('INVALID_ARGUMENT', `"${sandboxId}" is not a sandbox id (12 hex digits)`);
  return `rt-${sandboxId}`;
}

interface LinkInfo {
  ifname: string;
  address?: string;
  linkinfo?: { info_kind?: string; info_data?: { type?: string; nf_call_iptables?: number }; info_slave_data?: { isolated?: boolean } };
  master?: string;
}

/** The link named `name` (`ip -d -j link show`), or null when there is none. */
async function link(name: string, opts: HostNetOptions): Promise<LinkInfo | null> {
  const r = await hostCommand('ip', ['-d', '-j', 'link', 'show', 'dev', name], opts);
  if (r.code !== 0) {
    if (/does not exist|cannot find device/i.test(r.stderr)) return null;
    throw new RoostError('NETWORK', `\`ip link show dev ${name}\` failed: ${r.stderr.trim()}`);
  }
  return (JSON.parse(r.stdout) as LinkInfo[])[0] ?? null;
}

/** Sets a /proc/sys file of the namespace the commands run in, unless it already holds `value` (/proc/sys may be read-only in a container). */
async function writeSysctl(path: string, value: string, opts: HostNetOptions): Promise<void> {
  try {
    if (opts.netns === undefined) {
      if ((await readFile(path, 'utf8')).trim() === value) return;
      await writeFile(path, value);
    } else {
      // /proc/sys/net is per network namespace: write it from inside that namespace.
      await mustRun('sh', ['-c', '[ "$(cat "$0")" = "$1" ] || printf %s "$1" > "$0"', path, value], opts);
    }
  } catch (e) {
    if (e instanceof RoostError) throw e;
    throw new RoostError('NETWORK', `cannot set ${path} to ${value}: ${(e as Error).message}`, { cause: e });
  }
}

/** The bridge's subnet and gateway, checked. */
function bridgeAddress(config: { name: string; subnet: string; gateway: string }): { subnet: string; gateway: string; prefix: number } {
  const cidr = parseCidr(config.subnet);
  const gateway = ipv4ToInt(config.gateway);
  const broadcast = (cidr.address | ~prefixMask(cidr.prefix)) >>> 0;
  if (cidr.prefix > 30 || !cidrContains(cidr, gateway) || gateway === cidr.address || gateway === broadcast) {
    throw new RoostError(
      'INVALID_ARGUMENT',
      `bridge ${config.name}: the gateway ${config.gateway} is not a host address of the subnet ${config.subnet} (a subnet of /30 or larger)`,
    );
  }
  return { subnet: formatCidr(cidr), gateway: intToIpv4(gateway), prefix: cidr.prefix };
}

/** What ensureBridge set up. */
export interface BridgeSetup {
  /**
   * True: frames between sandboxes on the bridge pass iptables
   * (br_netfilter), so peers reach each other as their egress policies
   * allow. False: this host has no br_netfilter; the bridge ports are
   * isolated and sandboxes cannot reach each other at all.
   */
  peersFiltered: boolean;
}

/*
 * Peer traffic. Frames between two TAPs are bridged, never routed, so
 * without help they pass no iptables chain and no egress policy. Two ways
 * to filter them were measured (Linux 6.18, Debian iptables 1.8.9):
 * - ebtables alone: it matches addresses, protocol and ports, but neither
 *   TCP flags nor connection state, so it cannot tell a deny-all sandbox's
 *   answer to a peer's connection from a connection of its own: such a
 *   sandbox could either serve no peer or reach every peer's open ports,
 *   and a denied connection could only be dropped (no ICMP), not rejected.
 * - br_netfilter: bridged IPv4 goes through the iptables hooks, with
 *   conntrack, `-i BRIDGE` matching, REJECT (the guest's connect() fails
 *   at once with EHOSTUNREACH) and the REJECT counters deniedCount reads.
 * Roost uses br_netfilter, turned on for its bridge alone with the bridge
 * option nf_call_iptables (Linux 5.3+), not the namespace-wide sysctl
 * net.bridge.bridge-nf-call-iptables, so other bridges (Docker's,
 * libvirt's) keep what they had. When the host has no br_netfilter (and it
 * cannot be loaded), bridge ports are isolated instead: sandboxes reach the
 * host and, through it, what their policies allow, never each other.
 */

const BR_NETFILTER_SYSCTLS = ['iptables', 'ip6tables', 'arptables'].map((t) => `/proc/sys/net/bridge/bridge-nf-call-${t}`);

/** Whether br_netfilter is loaded: its sysctls are in every network namespace then (per namespace since Linux 5.3). */
async function brNetfilterLoaded(opts: HostNetOptions): Promise<boolean> {
  const sysctl = BR_NETFILTER_SYSCTLS[0]!;
  if (opts.netns === undefined) return existsSync(sysctl);
  // /proc/sys/net shows the namespace of whoever looks: look from inside it.
  return (await hostCommand('test', ['-e', sysctl], opts)).code === 0;
}

/**
 * Makes the bridge pass its bridged IPv4 frames through iptables, loading
 * br_netfilter if need be; false when this host has no br_netfilter.
 */
async function filterBridgedTraffic(bridge: LinkInfo, opts: HostNetOptions): Promise<boolean> {
  if (!(await brNetfilterLoaded(opts))) {
    const loaded = await hostCommand('modprobe', ['br_netfilter'], opts).then(
      (r) => r.code === 0,
      () => false,
    ); // no modprobe: not loadable
    if (!loaded || !(await brNetfilterLoaded(opts))) return false;
    // Loading it turns the sysctls on, for every bridge: in this namespace, other bridges keep what they had before
    // (no filtering of bridged frames); ours has its own option. Best effort: other namespaces are not ours to change.
    for (const sysctl of BR_NETFILTER_SYSCTLS) await writeSysctl(sysctl, '0', opts).catch(() => {});
  }
  if (bridge.linkinfo?.info_data?.nf_call_iptables !== 1)
    await mustRun('ip', ['link', 'set', 'dev', bridge.ifname, 'type', 'bridge', 'nf_call_iptables', '1'], opts);
  return true;
}

/** Whether the bridge's peer traffic passes iptables: br_netfilter loaded and the bridge's nf_call_iptables on. */
async function bridgePeersFiltered(bridge: string, opts: HostNetOptions): Promise<boolean> {
  const info = await link(bridge, opts);
  if (info?.linkinfo?.info_kind !== 'bridge') throw new RoostError('INVALID_STATE', `there is no bridge ${bridge}: set it up first (ensureBridge)`);
  return info.linkinfo.info_data?.nf_call_iptables === 1 && (await brNetfilterLoaded(opts));
}

async function setPortIsolation(port: string, isolated: boolean, opts: HostNetOptions): Promise<void> {
  await mustRun('ip', ['link', 'set', 'dev', port, 'type', 'bridge_slave', 'isolated', isolated ? 'on' : 'off'], opts);
}

/**
 * The bridge, up, with the gateway address (and no other IPv4 or IPv6
 * address, so guests reach the host only as the packet filter allows),
 * IPv4 forwarding on (`net.ipv4.ip_forward`, which is per network
 * namespace), its NAT and filter chains (ensureBridgeFirewall), and its
 * peer traffic filtered by iptables when the host has br_netfilter (ports
 * isolated otherwise: see BridgeSetup). Ports already on the bridge are
 * brought in line.
 */
export async function ensureBridge(config: { name: string; subnet: string; gateway: string }, opts: HostNetOptions = {}): Promise<BridgeSetup> {
  checkInterfaceName(config.name, 'bridge');
  const { subnet, gateway, prefix } = bridgeAddress(config);
  const name = config.name;
  let existing = await link(name, opts);
  if (existing === null) {
    const r = await hostCommand('ip', ['link', 'add', 'name', name, 'type', 'bridge'], opts);
    existing = await link(name, opts); // another process may have made it first: then it is there now
    if (existing === null) throw new RoostError('NETWORK', `cannot create the bridge ${name}: ${r.stderr.trim()}`);
  }
  if (existing.linkinfo?.info_kind !== 'bridge') {
    throw new RoostError(
      'INVALID_STATE',
      `the network interface ${name} exists and is not a bridge: choose another bridge name, or remove it (\`ip link del ${name}\`)`,
    );
  }
  // A bridge without a MAC of its own takes its ports' lowest, changing as TAPs come and go, and every guest's
  // ARP entry for the gateway goes stale: give it a fixed one (the leases' scheme, for the gateway's address).
  const mac = macForAddress(ipv4ToInt(gateway));
  if (existing.address !== mac) await mustRun('ip', ['link', 'set', 'dev', name, 'address', mac], opts);
  const ipv6 = `/proc/sys/net/ipv6/conf/${name}/disable_ipv6`;
  if (opts.netns !== undefined || existsSync(ipv6)) await writeSysctl(ipv6, '1', opts).catch(() => {}); // IPv6 may be off altogether
  const want = `${gateway}/${prefix}`;
  const shown = JSON.parse(await mustRun('ip', ['-j', '-4', 'addr', 'show', 'dev', name], opts)) as Array<{
    addr_info?: Array<{ local: string; prefixlen: number }>;
  }>;
  const have = (shown[0]?.addr_info ?? []).map((a) => `${a.local}/${a.prefixlen}`);
  for (const a of have) if (a !== want) await mustRun('ip', ['addr', 'del', a, 'dev', name], opts);
  if (!have.includes(want)) {
    const r = await hostCommand('ip', ['addr', 'add', want, 'dev', name], opts);
    if (r.code !== 0 && !/exists/i.test(r.stderr)) throw new RoostError('NETWORK', `cannot give the bridge ${name} the address ${want}: ${r.stderr.trim()}`);
  }
  await mustRun('ip', ['link', 'set', 'dev', name, 'up'], opts);
  await writeSysctl('/proc/sys/net/ipv4/ip_forward', '1', opts);
  // The chains first: bridged frames are sent to them, and ports opened to each other, only once they are in place.
  await ensureBridgeFirewall({ name, subnet }, opts);
  const peersFiltered = await filterBridgedTraffic(existing, opts);
  const ports = JSON.parse(await mustRun('ip', ['-d', '-j', 'link', 'show', 'master', name], opts)) as LinkInfo[];
  for (const port of ports) {
    if (port.linkinfo?.info_slave_data?.isolated !== !peersFiltered) await setPortIsolation(port.ifname, !peersFiltered, opts);
  }
  return { peersFiltered };
}

/**
 * Removes the bridge, its chains and the egress chains of sandboxes on it.
 * IPv4 forwarding stays on (other things on the host may use it); TAP
 * devices stay (deleteTap removes them, with their sandboxes).
 */
export async function teardownBridge(name: string, opts: HostNetOptions = {}): Promise<void> {
  checkInterfaceName(name, 'bridge');
  await teardownBridgeFirewall(name, opts);
  const existing = await link(name, opts);
  if (existing?.linkinfo?.info_kind === 'bridge') await mustRun('ip', ['link', 'del', 'dev', name], opts);
}

/**
 * A TAP device attached to `bridge` and up, for QEMU to open (`-netdev
 * tap,ifname=NAME`). An existing TAP of that name is reused. The bridge
 * must be set up (ensureBridge); its port is isolated only when the bridge
 * cannot filter peer traffic (see attachToBridge).
 */
export async function createTap(name: string, bridge: string, opts: HostNetOptions = {}): Promise<void> {
  checkInterfaceName(name, 'TAP');
  checkInterfaceName(bridge, 'bridge');
  let existing = await link(name, opts);
  if (existing === null) {
    const r = await hostCommand('ip', ['tuntap', 'add', 'dev', name, 'mode', 'tap'], opts);
    existing = await link(name, opts);
    if (existing === null) throw new RoostError('NETWORK', `cannot create the TAP device ${name}: ${r.stderr.trim()}`);
  }
  if (existing.linkinfo?.info_kind !== 'tun' || existing.linkinfo.info_data?.type !== 'tap') {
    throw new RoostError('INVALID_STATE', `the network interface ${name} exists and is not a TAP device: remove it (\`ip link del ${name}\`)`);
  }
  await attachToBridge(name, bridge, opts);
}

/**
 * Makes an existing interface (a sandbox's TAP; tests use a veth) a port
 * of `bridge`, up. When the bridge's peer traffic passes iptables
 * (BridgeSetup.peersFiltered) the port is not isolated, so sandboxes reach
 * each other as their policies allow; otherwise it is isolated, since
 * nothing would enforce their policies between them. INVALID_STATE when
 * the bridge is not there.
 */
export async function attachToBridge(port: string, bridge: string, opts: HostNetOptions = {}): Promise<void> {
  checkInterfaceName(port, 'bridge port');
  checkInterfaceName(bridge, 'bridge');
  const isolated = !(await bridgePeersFiltered(bridge, opts));
  const existing = await link(port, opts);
  if (existing === null) throw new RoostError('NOT_FOUND', `there is no network interface ${port} to attach to the bridge ${bridge}`);
  if (existing.master !== bridge) await mustRun('ip', ['link', 'set', 'dev', port, 'master', bridge], opts);
  await setPortIsolation(port, isolated, opts);
  await mustRun('ip', ['link', 'set', 'dev', port, 'up'], opts);
}

/** Deletes a TAP device; one that is not there is fine. */
export async function deleteTap(name: string, opts: HostNetOptions = {}): Promise<void> {
  checkInterfaceName(name, 'TAP');
  const r = await hostCommand('ip', ['link', 'del', 'dev', name], opts);
  if (r.code !== 0 && (await link(name, opts)) !== null) throw new RoostError('NETWORK', `cannot delete the TAP device ${name}: ${r.stderr.trim()}`);
}

/**
 * A TAP's traffic counters (/sys/class/net/TAP/statistics): what the TAP
 * receives is what the guest sent (out), what it transmits went into the
 * guest (in). Zeros when the TAP is gone. `denied` is 0: see deniedCount.
 */
export function tapStats(tap: string, opts: HostNetOptions = {}): NetworkStats {
  checkInterfaceName(tap, 'TAP');
  const names = ['rx_bytes', 'rx_packets', 'tx_bytes', 'tx_packets'];
  const files = names.map((n) => `/sys/class/net/${tap}/statistics/${n}`);
  let values: number[];
  try {
    const text =
      opts.netns === undefined
        ? files.map((f) => readFileSync(f, 'utf8')).join('\n')
        : // sysfs shows the namespace of whoever mounted it: read it from inside the namespace.
          execFileSync('ip', ['netns', 'exec', opts.netns, 'cat', ...files], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'], timeout: 10_000 });
    values = text
      .split(/\s+/)
      .filter((s) => s !== '')
      .map(Number);
  } catch {
    return { ...ZERO_NETWORK_STATS };
  }
  const [rxBytes = 0, rxPackets = 0, txBytes = 0, txPackets = 0] = values;
  return { bytesIn: txBytes, packetsIn: txPackets, bytesOut: rxBytes, packetsOut: rxPackets, denied: 0 };
}

// ---- DNS on the gateway -----------------------------------------------------------------

/** Who asked, for serveBridgeDns. */
export interface BridgeDnsClient {
  filter: EgressFilter;
  /** Called with a name the policy does not let the sandbox resolve. */
  onDenied?: (name: string) => void;
  /**
   * The sandbox's id: when given, addresses its allowed names resolve to are
   * let through its iptables chains (allowLearned) before the answer is sent.
   */
  sandboxId?: string;
}

export interface BridgeDnsConfig {
  /** The address to answer on: the bridge's gateway. */
  gateway: string;
  /** Default 53. 0: any free port (tests). */
  port?: number;
  /** The sandbox whose lease is `sourceAddress`, or null to ignore the query. */
  lookup: (sourceAddress: string) => BridgeDnsClient | null;
  /** How names are resolved (default: the host's resolver; see answerDnsQuery). */
  resolve4?: Resolve4;
  /** Where learned addresses' iptables rules go (the socket itself is bound in this process's namespace). */
  netns?: string;
  /** Called when an answer could not be prepared or sent (the guest retries). */
  onError?: (err: unknown) => void;
}

/** A running DNS server. */
export interface BridgeDnsServer {
  /** The port it answers on. */
  port: number;
  close(): void;
}

/**
 * Answers the sandboxes' DNS queries on gateway:53 (UDP) with their egress
 * policies (answerDnsQuery); a query from an address no sandbox has is
 * ignored. Each sandbox gets its own in-flight budget.
 */
export function serveBridgeDns(config: BridgeDnsConfig): Promise<BridgeDnsServer> {
  ipv4ToInt(config.gateway);
  const socket = createSocket({ type: 'udp4', reuseAddr: false });
  const limits = new Map<string, DnsLimit>();
  const netOpts: HostNetOptions = config.netns === undefined ? {} : { netns: config.netns };
  socket.on('message', (query, peer) => {
    const client = config.lookup(peer.address);
    if (client === null) return;
    let limit = limits.get(peer.address);
    if (limit === undefined) limits.set(peer.address, (limit = new DnsLimit()));
    const grants: Array<Promise<void>> = [];
    const filter = client.sandboxId === undefined ? client.filter : learningFilter(client.filter, client.sandboxId, grants, netOpts);
    void (async () => {
      const response = await answerDnsQuery(query, {
        filter,
        hostName: { name: HOST_NAME, address: config.gateway },
        limit,
        ...(config.resolve4 ? { resolve4: config.resolve4 } : {}),
        ...(client.onDenied ? { onDenied: client.onDenied } : {}),
      });
      // The guest connects as soon as it has the answer: the addresses must be let through first.
      for (const r of await Promise.allSettled(grants)) if (r.status === 'rejected') config.onError?.(r.reason);
      if (response) socket.send(response, peer.port, peer.address, (err) => err && config.onError?.(err));
    })().catch((err: unknown) => config.onError?.(err));
  });
  return new Promise((resolve, reject) => {
    socket.once('error', (err: NodeJS.ErrnoException) => {
      reject(
        err.code === 'EADDRINUSE'
          ? new RoostError(
              'UNAVAILABLE',
              `cannot serve DNS on ${config.gateway}:${config.port ?? 53}: the port is in use: another Roost home (its leases are its own) or another DNS server uses this bridge; give this home a bridge of its own with ROOST_BRIDGE and ROOST_BRIDGE_SUBNET`,
              { cause: err },
            )
          : new RoostError('NETWORK', `cannot serve DNS on ${config.gateway}:${config.port ?? 53}: ${err.message}`, { cause: err }),
      );
    });
    socket.bind({ address: config.gateway, port: config.port ?? 53, exclusive: true }, () => {
      socket.removeAllListeners('error');
      socket.on('error', (err) => config.onError?.(err));
      resolve({
        port: socket.address().port,
        close: () => {
          try {
            socket.close();
          } catch {
            // already closed
          }
        },
      });
    });
  });
}

/**
 * The sandbox's filter, except that what it learns from an answer is also
 * put in the sandbox's iptables chain (for each allow rule listing the name,
 * on that rule's ports and protocol); the promises go to `grants`.
 */
function learningFilter(filter: EgressFilter, sandboxId: string, grants: Array<Promise<void>>, opts: HostNetOptions): EgressFilter {
  const rules = filter.policy.allow.map(parseEgressRule);
  const learn = (name: string, addresses: number[], ttlSeconds: number): void => {
    filter.learn(name, addresses, ttlSeconds);
    const n = name.toLowerCase().replace(/\.$/, '');
    const usable = addresses.filter((a) => !filter.isSpecial(a)).map(intToIpv4);
    if (usable.length === 0) return;
    for (const r of rules) {
      const t = r.target;
      if (t.kind !== 'name' || !(t.wildcard ? n.endsWith(`.${t.name}`) : n === t.name)) continue;
      grants.push(allowLearned({ id: sandboxId }, usable, r.ports, r.protocol, ttlSeconds, opts));
    }
  };
  // EgressFilter keeps its state in private fields: its methods must run on the real instance.
  return new Proxy(filter, {
    get(target, property) {
      if (property === 'learn') return learn;
      const value: unknown = Reflect.get(target, property, target);
      return typeof value === 'function' ? (value as (...args: unknown[]) => unknown).bind(target) : value;
    },
  });
}
