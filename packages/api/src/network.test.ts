import { describe, expect, it } from 'vitest';
import { RoostError } from './errors.js';
import { hostForPort } from './sandbox.js';
import type { SandboxInfo } from './schemas.js';
import { cidrContains, intToIpv4, ipv4ToInt, normalizeEgress, normalizePortSpec, parseCidr, parseEgressRule, parsePortSpec } from './network.js';

function invalid(f: () => unknown): RoostError {
  try {
    f();
  } catch (e) {
    expect(e).toBeInstanceOf(RoostError);
    expect((e as RoostError).code).toBe('INVALID_ARGUMENT');
    return e as RoostError;
  }
  throw new Error('expected INVALID_ARGUMENT');
}

describe('addresses', () => {
  it('converts IPv4 addresses both ways', () => {
    expect(ipv4ToInt('10.0.2.15')).toBe(0x0a00020f);
    expect(ipv4ToInt('255.255.255.255')).toBe(0xffffffff);
    expect(intToIpv4(0xc0a80101)).toBe('192.168.1.1');
    for (const bad of ['1.2.3', '256.1.1.1', '01.2.3.4', 'a.b.c.d', '::1', '']) invalid(() => ipv4ToInt(bad));
  });

  it('parses CIDRs and refuses host bits past the prefix, saying what was meant', () => {
    expect(parseCidr('10.0.0.0/8')).toEqual({ address: 0x0a000000, prefix: 8 });
    expect(parseCidr('1.2.3.4')).toEqual({ address: 0x01020304, prefix: 32 });
    expect(parseCidr('0.0.0.0/0')).toEqual({ address: 0, prefix: 0 });
    expect(invalid(() => parseCidr('10.0.0.1/8')).message).toContain('did you mean 10.0.0.0/8');
    expect(invalid(() => parseCidr('10.0.0.0/33')).message).toContain('not an IPv4 CIDR');
    expect(invalid(() => parseCidr('fd00::/8')).message).toContain('IPv4 only');
    expect(cidrContains(parseCidr('192.168.0.0/16'), ipv4ToInt('192.168.7.9'))).toBe(true);
    expect(cidrContains(parseCidr('192.168.0.0/16'), ipv4ToInt('192.169.0.1'))).toBe(false);
    expect(cidrContains(parseCidr('0.0.0.0/0'), ipv4ToInt('8.8.8.8'))).toBe(true);
  });
});

describe('port specs', () => {
  it('reads docker -p forms', () => {
    expect(parsePortSpec('8080:80')).toEqual({ guestPort: 80, hostPort: 8080 });
    expect(parsePortSpec('127.0.0.1::80')).toEqual({ guestPort: 80, hostIp: '127.0.0.1' });
    expect(parsePortSpec('0.0.0.0:8080:80/udp')).toEqual({ guestPort: 80, hostPort: 8080, hostIp: '0.0.0.0', protocol: 'udp' });
    expect(parsePortSpec('53/udp')).toEqual({ guestPort: 53, protocol: 'udp' });
    expect(normalizePortSpec('80')).toEqual({ guestPort: 80, hostPort: 0, hostIp: '127.0.0.1', protocol: 'tcp' });
    expect(normalizePortSpec({ guestPort: 22, hostPort: 2222 })).toEqual({ guestPort: 22, hostPort: 2222, hostIp: '127.0.0.1', protocol: 'tcp' });
  });

  it('refuses bad ports with the form to use', () => {
    for (const bad of ['0', '70000', '8080:0', 'x:80', '1:2:3:4', '80/sctp', ':80', 'localhost:8080:80', '']) {
      expect(invalid(() => parsePortSpec(bad)).message).toMatch(/port|GUEST_PORT/);
    }
    expect(invalid(() => parsePortSpec('8080:99999')).message).toContain('from 1 to 65535');
  });
});

describe('egress rules', () => {
  it('parses every target kind with ports and protocol', () => {
    expect(parseEgressRule('10.0.0.0/8')).toEqual({ text: '10.0.0.0/8', target: { kind: 'cidr', address: 0x0a000000, prefix: 8 } });
    expect(parseEgressRule('1.2.3.4:443/tcp')).toEqual({
      text: '1.2.3.4:443/tcp',
      target: { kind: 'cidr', address: 0x01020304, prefix: 32 },
      ports: [[443, 443]],
      protocol: 'tcp',
    });
    expect(parseEgressRule('Example.COM:80,8000-8999')).toEqual({
      text: 'Example.COM:80,8000-8999',
      target: { kind: 'name', name: 'example.com', wildcard: false },
      ports: [
        [80, 80],
        [8000, 8999],
      ],
    });
    expect(parseEgressRule('*.npmjs.org').target).toEqual({ kind: 'name', name: 'npmjs.org', wildcard: true });
    expect(parseEgressRule('*:53/udp')).toEqual({ text: '*:53/udp', target: { kind: 'any' }, ports: [[53, 53]], protocol: 'udp' });
    expect(parseEgressRule('host:8080').target).toEqual({ kind: 'host' });
  });

  it('refuses bad rules with the grammar', () => {
    expect(invalid(() => parseEgressRule('10.0.0.1/8')).message).toContain('did you mean 10.0.0.0/8');
    expect(invalid(() => parseEgressRule('example.com:0')).message).toContain('from 1 to 65535');
    expect(invalid(() => parseEgressRule('example.com:90-80')).message).toContain('ends before it starts');
    expect(invalid(() => parseEgressRule('exa mple.com')).message).toContain('TARGET[:PORTS]');
    expect(invalid(() => parseEgressRule('fe80::1')).message).toContain('IPv6');
    expect(invalid(() => parseEgressRule('1.2.3.4/40')).message).toContain('CIDR');
  });

  it('normalizes specs and checks every rule', () => {
    expect(normalizeEgress(undefined)).toEqual({ default: 'allow', allow: [], deny: [] });
    expect(normalizeEgress('deny')).toEqual({ default: 'deny', allow: [], deny: [] });
    expect(normalizeEgress({ default: 'deny', allow: ['host:8080'] })).toEqual({ default: 'deny', allow: ['host:8080'], deny: [] });
    invalid(() => normalizeEgress({ default: 'allow', deny: ['not a rule'] }));
  });
});

describe('getHost', () => {
  const base = {
    id: 'abcdef012345',
    status: 'running',
    createdAt: '',
    cpus: 1,
    memoryMiB: 256,
    diskSizeMiB: 4096,
    detached: false,
    accel: 'tcg',
    pid: 1,
    env: {},
    labels: {},
    execs: 0,
  } as const;
  it('answers from published ports, or the bridge address', () => {
    const info: SandboxInfo = {
      ...base,
      network: {
        mode: 'user',
        ports: [{ guestPort: 80, hostPort: 40123, hostIp: '0.0.0.0', protocol: 'tcp' }],
        egress: { default: 'allow', allow: [], deny: [] },
      },
    };
    expect(hostForPort(info, 80)).toBe('127.0.0.1:40123');
    expect(() => hostForPort(info, 81)).toThrow(/not published: publish it with/);
    expect(() => hostForPort(info, 80, 'udp')).toThrow(RoostError);
    const bridged: SandboxInfo = { ...base, network: { mode: 'bridge', address: '10.88.0.5', ports: [], egress: { default: 'allow', allow: [], deny: [] } } };
    expect(hostForPort(bridged, 5432)).toBe('10.88.0.5:5432');
    expect(() => hostForPort({ ...base }, 80)).toThrow(/no network/);
  });
});
