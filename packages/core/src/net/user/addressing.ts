import { networkInterfaces } from 'node:os';
import { ipv4ToInt, isIpv4, type EgressPolicy } from '@roost/api';
import { EgressFilter } from '../policy.js';

/** The fixed addressing of user mode (like slirp's): the guest, the gateway (= the host) and our DNS server. */
export const USER_NET = {
  subnet: '10.0.2.0/24',
  prefix: 24,
  guest: '10.0.2.15',
  gateway: '10.0.2.2',
  dns: '10.0.2.3',
  mtu: 65520,
  gatewayMac: '52:55:0a:00:02:02',
} as const;

/** The address connections to the gateway are made to on the host. */
export const USER_NET_HOST_ADDRESS = '127.0.0.1';

/**
 * An egress filter for user mode. "The host" is 127.0.0.1 (where
 * connections to the gateway go) and the host's own IPv4 addresses as of
 * now (a guest could otherwise reach services on 0.0.0.0 by the host's LAN
 * address under default allow).
 */
export function createUserNetFilter(policy: EgressPolicy): EgressFilter {
  const own: number[] = [];
  for (const addresses of Object.values(networkInterfaces())) {
    for (const a of addresses ?? []) if (a.family === 'IPv4' && isIpv4(a.address)) own.push(ipv4ToInt(a.address));
  }
  return new EgressFilter(policy, { hostAddresses: [ipv4ToInt(USER_NET_HOST_ADDRESS), ...own] });
}

/** USER_NET's addresses as numbers, for the packet handlers. */
export const GUEST = ipv4ToInt(USER_NET.guest);
export const GATEWAY = ipv4ToInt(USER_NET.gateway);
export const DNS = ipv4ToInt(USER_NET.dns);
export const HOST_LOOPBACK = ipv4ToInt(USER_NET_HOST_ADDRESS);
export const BROADCAST = 0xffffffff;
const SUBNET = ipv4ToInt('10.0.2.0');
const SUBNET_MASK = 0xffffff00;

/** True for a destination the guest may reach through us: not our subnet (but the gateway), broadcast, multicast or "this network". */
export function isRoutable(dst: number): boolean {
  if (dst === GATEWAY) return true;
  if ((dst & SUBNET_MASK) >>> 0 === SUBNET) return false;
  const first = dst >>> 24;
  return first !== 0 && first < 224;
}

/** Where a connection to `dst` goes on the host: the gateway is the host's loopback. */
export function hostAddressOf(dst: number): number {
  return dst === GATEWAY ? HOST_LOOPBACK : dst;
}
