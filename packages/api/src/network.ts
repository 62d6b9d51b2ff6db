import { z } from 'zod';
import { RoostError } from './errors.js';

/*
 * Networking: modes, published ports and egress policy, with the parsers the
 * CLI, the daemon and the runtime share. Sandboxes have IPv4 only.
 */

/** `none`: no NIC; `user`: user-mode NAT run by Roost on the host (the default); `bridge`: a TAP on a Linux bridge with a leased address (root). */
export const NetworkModeSchema = z.enum(['none', 'user', 'bridge']);
export type NetworkMode = z.infer<typeof NetworkModeSchema>;

export const PortProtocolSchema = z.enum(['tcp', 'udp']);
export type PortProtocol = z.infer<typeof PortProtocolSchema>;

const port = z.number().int().min(1).max(65535);

/** A port to publish, as the API takes it: guest port, and optionally the host address, host port (0 or absent: a free one) and protocol. */
export const PortMappingSchema = z
  .object({
    guestPort: port,
    /** Absent or 0: a free port, chosen by the host. */
    hostPort: z.number().int().min(0).max(65535).optional(),
    /** The host address to listen on (default 127.0.0.1). */
    hostIp: z.string().optional(),
    protocol: PortProtocolSchema.optional(),
  })
  .strict()
  .meta({ id: 'PortMapping' });
export type PortMapping = z.infer<typeof PortMappingSchema>;

/** A port mapping as a string (`8080:80`, `127.0.0.1::80`, `53/udp`) or an object. */
export const PortSpecSchema = z.union([z.string().min(1), PortMappingSchema]);
export type PortSpec = z.infer<typeof PortSpecSchema>;

/** A published port: where the host listens, and the guest port it leads to. */
export const PortBindingSchema = z
  .object({
    guestPort: port,
    hostPort: port,
    hostIp: z.string(),
    protocol: PortProtocolSchema,
  })
  .meta({ id: 'PortBinding' });
export type PortBinding = z.infer<typeof PortBindingSchema>;

/**
 * Which connections the sandbox may open. A matching `deny` rule denies, else
 * a matching `allow` rule allows, else `default` decides. Rules are
 * `TARGET[:PORTS][/PROTO]`: TARGET an address (`1.2.3.4`), a CIDR
 * (`10.0.0.0/8`), a host name (`example.com`, `*.example.com`), `*` or
 * `host` (the host itself); PORTS `443`, `8000-8999` or `80,443`; PROTO
 * `tcp` or `udp`. The host and link-local addresses (169.254.0.0/16, cloud
 * metadata) are reached only through a rule that names them.
 */
export const EgressPolicySchema = z
  .object({
    default: z.enum(['allow', 'deny']),
    allow: z.array(z.string().min(1)).max(256).optional(),
    deny: z.array(z.string().min(1)).max(256).optional(),
  })
  .strict()
  .meta({ id: 'EgressPolicy' });
export type EgressPolicyInput = z.infer<typeof EgressPolicySchema>;

/** An egress policy with its rule lists filled in. */
export interface EgressPolicy {
  default: 'allow' | 'deny';
  allow: string[];
  deny: string[];
}

/** What the API accepts for egress: `allow` (everything), `deny` (nothing) or a policy. */
export const EgressSpecSchema = z.union([z.enum(['allow', 'deny']), EgressPolicySchema]);
export type EgressSpec = z.infer<typeof EgressSpecSchema>;

/** A sandbox's network, as recorded. */
export const NetworkInfoSchema = z
  .object({
    mode: NetworkModeSchema,
    /** The guest's MAC, address, prefix length, gateway and DNS server (absent with mode none). */
    mac: z.string().optional(),
    address: z.string().optional(),
    prefix: z.number().int().optional(),
    gateway: z.string().optional(),
    dns: z.string().optional(),
    /** The bridge, in bridge mode. */
    bridge: z.string().optional(),
    ports: z.array(PortBindingSchema),
    egress: EgressPolicySchema.required(),
  })
  .meta({ id: 'NetworkInfo' });
export type NetworkInfo = z.infer<typeof NetworkInfoSchema>;

/** Traffic counters of a sandbox's NIC since it started: "in" is into the guest, "out" is from it. */
export const NetworkStatsSchema = z
  .object({
    bytesIn: z.number().int(),
    packetsIn: z.number().int(),
    bytesOut: z.number().int(),
    packetsOut: z.number().int(),
    /** Connections (and DNS names) the egress policy denied. */
    denied: z.number().int(),
  })
  .meta({ id: 'NetworkStats' });
export type NetworkStats = z.infer<typeof NetworkStatsSchema>;

/** A connection the egress policy refused. */
export interface DeniedConnection {
  protocol: 'tcp' | 'udp' | 'dns';
  address?: string;
  port?: number;
  /** The DNS name, for `dns`. */
  name?: string;
}

export const ZERO_NETWORK_STATS: Readonly<NetworkStats> = Object.freeze({ bytesIn: 0, packetsIn: 0, bytesOut: 0, packetsOut: 0, denied: 0 });

// ---- addresses --------------------------------------------------------------

const IPV4_RE = /^(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})$/;

/** True for a dotted-quad IPv4 address. */
export function isIpv4(text: string): boolean {
  const m = IPV4_RE.exec(text);
  return m !== null && m.slice(1).every((o) => Number(o) <= 255 && (o.length === 1 || o[0] !== '0'));
}

/** `1.2.3.4` -> its 32-bit value (unsigned). */
export function ipv4ToInt(text: string): number {
  if (!isIpv4(text))
    throw new RoostError('INVALID_ARGUMENT', `"${text}" is not an IPv4 address (like 10.0.0.1)${text.includes(':') ? ': sandboxes have IPv4 only' : ''}`);
  return text.split('.').reduce((n, o) => n * 256 + Number(o), 0);
}

/** A 32-bit value -> `1.2.3.4`. */
export function intToIpv4(n: number): string {
  return [n >>> 24, (n >>> 16) & 255, (n >>> 8) & 255, n & 255].join('.');
}

export interface Cidr {
  /** The network address (host bits zero), unsigned. */
  address: number;
  prefix: number;
}

/** The netmask of a prefix length, unsigned. */
export function prefixMask(prefix: number): number {
  return prefix === 0 ? 0 : (0xffffffff << (32 - prefix)) >>> 0;
}

/** `10.0.0.0/8` or `1.2.3.4` (a /32). Host bits must be zero. */
export function parseCidr(text: string): Cidr {
  const slash = text.indexOf('/');
  const addr = slash < 0 ? text : text.slice(0, slash);
  const prefixText = slash < 0 ? '32' : text.slice(slash + 1);
  if (!isIpv4(addr) || !/^\d{1,2}$/.test(prefixText) || Number(prefixText) > 32) {
    throw new RoostError(
      'INVALID_ARGUMENT',
      `"${text}" is not an IPv4 CIDR: write an address with a prefix length, like 10.0.0.0/8 or 192.168.1.7/32${text.includes(':') ? ' (sandboxes have IPv4 only)' : ''}`,
    );
  }
  const prefix = Number(prefixText);
  const address = ipv4ToInt(addr);
  const network = (address & prefixMask(prefix)) >>> 0;
  if (network !== address) {
    throw new RoostError('INVALID_ARGUMENT', `"${text}" has bits set past its prefix length: did you mean ${intToIpv4(network)}/${prefix}?`);
  }
  return { address, prefix };
}

/** True if `address` (unsigned) is in `cidr`. */
export function cidrContains(cidr: Cidr, address: number): boolean {
  return (address & prefixMask(cidr.prefix)) >>> 0 === cidr.address;
}

/** True if `inner` lies wholly inside `outer`. */
export function cidrWithin(inner: Cidr, outer: Cidr): boolean {
  return inner.prefix >= outer.prefix && cidrContains(outer, inner.address);
}

/** `a.b.c.d/n` */
export function formatCidr(c: Cidr): string {
  return `${intToIpv4(c.address)}/${c.prefix}`;
}

// ---- ports --------------------------------------------------------------------

function parsePortNumber(text: string, what: string, allowZero = false): number {
  if (!/^\d{1,5}$/.test(text) || Number(text) > 65535 || (!allowZero && Number(text) === 0)) {
    throw new RoostError('INVALID_ARGUMENT', `${what} "${text}" is not a port: use a number from 1 to 65535`);
  }
  return Number(text);
}

/**
 * Parses a published port the way `docker run -p` writes it:
 * `[HOST_IP:][HOST_PORT:]GUEST_PORT[/PROTO]`. `8080:80` listens on
 * 127.0.0.1:8080; `127.0.0.1::80` and `80` on a free port; `0.0.0.0:8080:80`
 * on every interface.
 */
export function parsePortSpec(text: string): PortMapping {
  const invalid = (why: string) =>
    new RoostError(
      'INVALID_ARGUMENT',
      `port mapping "${text}" ${why}: write [HOST_IP:][HOST_PORT:]GUEST_PORT[/tcp|udp], like 8080:80, 127.0.0.1::80 or 5353:53/udp`,
    );
  let rest = text.trim();
  let protocol: PortProtocol | undefined;
  const slash = rest.lastIndexOf('/');
  if (slash >= 0) {
    const p = rest.slice(slash + 1).toLowerCase();
    if (p !== 'tcp' && p !== 'udp') throw invalid(`has protocol "${p}"`);
    protocol = p;
    rest = rest.slice(0, slash);
  }
  const parts = rest.split(':');
  if (parts.length > 3 || parts.some((p, i) => p === '' && !(parts.length === 3 && i === 1))) throw invalid('is malformed');
  const guestText = parts[parts.length - 1]!;
  const guestPort = parsePortNumber(guestText, `guest port in "${text}":`);
  const hostPortText = parts.length >= 2 ? parts[parts.length - 2]! : '';
  const hostPort = hostPortText === '' ? 0 : parsePortNumber(hostPortText, `host port in "${text}":`, true);
  const hostIp = parts.length === 3 ? parts[0]! : undefined;
  if (hostIp !== undefined && !isIpv4(hostIp)) throw invalid(`has host address "${hostIp}", which is not an IPv4 address`);
  return { guestPort, ...(hostPort ? { hostPort } : {}), ...(hostIp ? { hostIp } : {}), ...(protocol ? { protocol } : {}) };
}

/** A port mapping in either form, checked, with its defaults filled in (host port 0 = any). */
export function normalizePortSpec(spec: PortSpec): Required<PortMapping> {
  const m = typeof spec === 'string' ? parsePortSpec(spec) : PortMappingSchema.parse(spec);
  const hostIp = m.hostIp ?? '127.0.0.1';
  if (!isIpv4(hostIp))
    throw new RoostError(
      'INVALID_ARGUMENT',
      `host address "${hostIp}" of a published port is not an IPv4 address: use 127.0.0.1 (the default), 0.0.0.0 or an address of this host`,
    );
  return { guestPort: m.guestPort, hostPort: m.hostPort ?? 0, hostIp, protocol: m.protocol ?? 'tcp' };
}

// ---- egress rules -------------------------------------------------------------

export type EgressTarget =
  { kind: 'cidr'; address: number; prefix: number } | { kind: 'name'; name: string; wildcard: boolean } | { kind: 'any' } | { kind: 'host' };

export interface EgressRule {
  /** The rule as written. */
  text: string;
  target: EgressTarget;
  /** Inclusive port ranges; absent: every port. */
  ports?: Array<[number, number]>;
  /** Absent: tcp and udp. */
  protocol?: PortProtocol;
}

const LABEL_RE = /^(?!-)[a-z0-9-]{1,63}(?<!-)$/;

/** True for a DNS host name (letters, digits and hyphens in dot-separated labels). */
export function isHostName(name: string): boolean {
  if (name.length === 0 || name.length > 253) return false;
  return name.split('.').every((l) => LABEL_RE.test(l)) && !/^[\d.]+$/.test(name);
}

/** Parses one egress rule (see EgressPolicySchema for the grammar). */
export function parseEgressRule(text: string): EgressRule {
  const invalid = (why: string) =>
    new RoostError(
      'INVALID_ARGUMENT',
      `egress rule "${text}" ${why}: write TARGET[:PORTS][/tcp|udp], TARGET an address, a CIDR (10.0.0.0/8), a host name (example.com, *.example.com), * or host, PORTS like 443, 8000-8999 or 80,443`,
    );
  let rest = text.trim().toLowerCase();
  if (rest === '') throw invalid('is empty');
  let protocol: PortProtocol | undefined;
  const proto = /\/(tcp|udp)$/.exec(rest);
  if (proto) {
    protocol = proto[1] as PortProtocol;
    rest = rest.slice(0, -proto[0].length);
  }
  if (rest.split(':').length > 2) throw invalid('looks like IPv6 (sandboxes have IPv4 only)');
  let ports: Array<[number, number]> | undefined;
  const colon = rest.indexOf(':');
  if (colon >= 0) {
    const portText = rest.slice(colon + 1);
    rest = rest.slice(0, colon);
    if (portText === '') throw invalid('has an empty port list');
    ports = portText.split(',').map((p) => {
      const m = /^(\d+)(?:-(\d+))?$/.exec(p);
      if (!m) throw invalid(`has port "${p}"`);
      const lo = parsePortNumber(m[1]!, `egress rule "${text}": port`);
      const hi = m[2] === undefined ? lo : parsePortNumber(m[2], `egress rule "${text}": port`);
      if (hi < lo) throw invalid(`has the range ${p}, which ends before it starts`);
      return [lo, hi];
    });
  }
  let target: EgressTarget;
  if (rest === '*') target = { kind: 'any' };
  else if (rest === 'host') target = { kind: 'host' };
  else if (/^[\d./]+$/.test(rest)) {
    if (!/^[\d.]+(\/\d+)?$/.test(rest)) throw invalid('is not a valid address or CIDR');
    target = { kind: 'cidr', ...parseCidr(rest) };
  } else if (rest.startsWith('*.')) {
    const name = rest.slice(2).replace(/\.$/, '');
    if (!isHostName(name)) throw invalid(`has "${rest}", which is not a host name`);
    target = { kind: 'name', name, wildcard: true };
  } else {
    const name = rest.replace(/\.$/, '');
    if (!isHostName(name)) throw invalid(`has target "${rest}", which is not an address, CIDR or host name`);
    target = { kind: 'name', name, wildcard: false };
  }
  return { text, target, ...(ports ? { ports } : {}), ...(protocol ? { protocol } : {}) };
}

/** Checks an egress spec and returns it as a full policy (rules as written, each one parsed once to check it). */
export function normalizeEgress(spec: EgressSpec | undefined): EgressPolicy {
  if (spec === undefined || spec === 'allow') return { default: 'allow', allow: [], deny: [] };
  if (spec === 'deny') return { default: 'deny', allow: [], deny: [] };
  const policy = EgressPolicySchema.parse(spec);
  const allow = policy.allow ?? [];
  const deny = policy.deny ?? [];
  for (const r of [...allow, ...deny]) parseEgressRule(r);
  return { default: policy.default, allow, deny };
}
