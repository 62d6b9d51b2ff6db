import { describe, expect, it } from 'vitest';
import { ipv4ToInt, isRoostError } from '@roost/api';
import { EgressFilter } from './policy.js';

const ip = ipv4ToInt;
const HOST = ip('127.0.0.1');
const BRIDGE_GATEWAY = ip('10.88.0.1');

function filter(def: 'allow' | 'deny', allow: string[] = [], deny: string[] = [], now?: () => number): EgressFilter {
  return new EgressFilter({ default: def, allow, deny }, { hostAddresses: [HOST, BRIDGE_GATEWAY], ...(now ? { now } : {}) });
}

describe('EgressFilter.check', () => {
  it('applies the default when no rule matches', () => {
    expect(filter('allow').check(ip('1.2.3.4'), 443, 'tcp')).toEqual({ allowed: true });
    expect(filter('deny').check(ip('1.2.3.4'), 443, 'tcp')).toEqual({ allowed: false });
  });

  it('lets a deny rule win over an allow rule and names the rule', () => {
    const f = filter('allow', ['10.0.0.0/8'], ['10.1.0.0/16:22/tcp']);
    expect(f.check(ip('10.1.2.3'), 22, 'tcp')).toEqual({ allowed: false, rule: '10.1.0.0/16:22/tcp' });
    expect(f.check(ip('10.1.2.3'), 22, 'udp')).toEqual({ allowed: true, rule: '10.0.0.0/8' });
    expect(f.check(ip('10.1.2.3'), 23, 'tcp')).toEqual({ allowed: true, rule: '10.0.0.0/8' });
  });

  it('matches ports, ranges, lists and protocols', () => {
    const f = filter('deny', ['1.2.3.4:80,443/tcp', '5.6.7.0/24:8000-8999', '*:53/udp']);
    expect(f.check(ip('1.2.3.4'), 443, 'tcp').allowed).toBe(true);
    expect(f.check(ip('1.2.3.4'), 443, 'udp').allowed).toBe(false);
    expect(f.check(ip('1.2.3.4'), 444, 'tcp').allowed).toBe(false);
    expect(f.check(ip('5.6.7.9'), 8000, 'udp').allowed).toBe(true);
    expect(f.check(ip('5.6.7.9'), 8999, 'tcp').allowed).toBe(true);
    expect(f.check(ip('5.6.7.9'), 9000, 'tcp').allowed).toBe(false);
    expect(f.check(ip('9.9.9.9'), 53, 'udp')).toEqual({ allowed: true, rule: '*:53/udp' });
    expect(f.check(ip('9.9.9.9'), 53, 'tcp').allowed).toBe(false);
  });

  it('keeps the host out of default allow, `*` and wide CIDRs; a host rule lets it in', () => {
    for (const f of [filter('allow'), filter('deny', ['*']), filter('deny', ['0.0.0.0/0']), filter('deny', ['10.0.0.0/8'])]) {
      expect(f.check(HOST, 8080, 'tcp').allowed).toBe(false);
      expect(f.check(BRIDGE_GATEWAY, 8080, 'tcp').allowed).toBe(false);
    }
    const withHost = filter('deny', ['host:8080']);
    expect(withHost.check(HOST, 8080, 'tcp')).toEqual({ allowed: true, rule: 'host:8080' });
    expect(withHost.check(BRIDGE_GATEWAY, 8080, 'tcp').allowed).toBe(true);
    expect(withHost.check(HOST, 8081, 'tcp').allowed).toBe(false);
    // The host rule does not reach other addresses.
    expect(withHost.check(ip('1.2.3.4'), 8080, 'tcp').allowed).toBe(false);
    expect(filter('allow', ['host'], ['host:22']).check(HOST, 22, 'tcp').allowed).toBe(false);
  });

  it('keeps link-local (cloud metadata) and loopback out unless a CIDR inside them names them', () => {
    const metadata = ip('169.254.169.254');
    expect(filter('allow').check(metadata, 80, 'tcp').allowed).toBe(false);
    expect(filter('allow', ['0.0.0.0/0', '*']).check(metadata, 80, 'tcp').allowed).toBe(false);
    expect(filter('allow', ['169.254.0.0/15']).check(metadata, 80, 'tcp').allowed).toBe(false);
    expect(filter('deny', ['169.254.169.254']).check(metadata, 80, 'tcp').allowed).toBe(true);
    expect(filter('deny', ['169.254.0.0/16:80']).check(metadata, 80, 'tcp').allowed).toBe(true);
    expect(filter('deny', ['127.0.0.1']).check(HOST, 80, 'tcp').allowed).toBe(true);
    expect(filter('deny', ['127.0.0.0/8']).check(ip('127.0.0.2'), 80, 'tcp').allowed).toBe(true);
  });

  it('lets deny `*` and deny host shut everything or the host', () => {
    expect(filter('allow', ['host'], ['*']).check(HOST, 80, 'tcp').allowed).toBe(false);
    expect(filter('allow', [], ['host']).check(HOST, 80, 'tcp').allowed).toBe(false);
    expect(filter('allow', [], ['host']).check(ip('1.1.1.1'), 80, 'tcp').allowed).toBe(true);
  });

  it('rejects a rule that does not parse with INVALID_ARGUMENT', () => {
    let caught: unknown;
    try {
      filter('deny', ['10.0.0.0/33']);
    } catch (err) {
      caught = err;
    }
    expect(isRoostError(caught, 'INVALID_ARGUMENT')).toBe(true);
  });
});

describe('EgressFilter names and learned addresses', () => {
  it('resolves every name with default allow except denied ones', () => {
    const f = filter('allow', [], ['evil.com', '*.tracker.net', 'partial.com:25']);
    expect(f.allowsName('example.com')).toBe(true);
    expect(f.allowsName('EVIL.com.')).toBe(false);
    expect(f.allowsName('a.tracker.net')).toBe(false);
    expect(f.allowsName('tracker.net')).toBe(true);
    // A deny rule for some ports leaves the name resolvable.
    expect(f.allowsName('partial.com')).toBe(true);
  });

  it('resolves only listed names with default deny', () => {
    const f = filter('deny', ['example.com:443', '*.github.com']);
    expect(f.allowsName('example.com')).toBe(true);
    expect(f.allowsName('www.example.com')).toBe(false);
    expect(f.allowsName('api.github.com')).toBe(true);
    expect(f.allowsName('github.com')).toBe(false);
    expect(f.allowsName('other.org')).toBe(false);
    expect(filter('deny', ['*:443']).allowsName('anything.org')).toBe(true);
  });

  it('resolves host.roost.internal only with a host rule', () => {
    expect(filter('allow').allowsName('host.roost.internal')).toBe(false);
    expect(filter('deny', ['host:8080']).allowsName('host.roost.internal')).toBe(true);
    expect(filter('allow', ['host'], ['host']).allowsName('host.roost.internal')).toBe(false);
  });

  it('allows the addresses a listed name resolved to, on that rule’s ports, until the TTL ends', () => {
    let now = 1_000_000;
    const f = filter('deny', ['example.com:443/tcp', '*.cdn.net'], [], () => now);
    f.learn('example.com', [ip('93.184.216.34')], 120);
    expect(f.check(ip('93.184.216.34'), 443, 'tcp')).toEqual({ allowed: true, rule: 'example.com:443/tcp' });
    expect(f.check(ip('93.184.216.34'), 80, 'tcp').allowed).toBe(false);
    expect(f.check(ip('93.184.216.34'), 443, 'udp').allowed).toBe(false);
    // A name no rule lists teaches nothing.
    f.learn('other.org', [ip('5.5.5.5')], 120);
    expect(f.check(ip('5.5.5.5'), 443, 'tcp').allowed).toBe(false);
    f.learn('img.cdn.net', [ip('7.7.7.7')], 5);
    now += 59_000;
    // TTLs under 60 s count as 60 s.
    expect(f.check(ip('7.7.7.7'), 80, 'udp').allowed).toBe(true);
    now += 2_000;
    expect(f.check(ip('7.7.7.7'), 80, 'udp').allowed).toBe(false);
    expect(f.check(ip('93.184.216.34'), 443, 'tcp').allowed).toBe(true);
    now += 60_000;
    expect(f.check(ip('93.184.216.34'), 443, 'tcp').allowed).toBe(false);
  });

  it('never learns the host, loopback or link-local from DNS', () => {
    const f = filter('deny', ['rebind.example']);
    f.learn('rebind.example', [HOST, ip('169.254.169.254'), ip('127.0.0.53'), BRIDGE_GATEWAY], 300);
    expect(f.learnedCount).toBe(0);
    expect(f.check(HOST, 80, 'tcp').allowed).toBe(false);
    expect(f.check(ip('169.254.169.254'), 80, 'tcp').allowed).toBe(false);
  });

  it('keeps at most maxLearned entries, dropping the oldest', () => {
    const f = new EgressFilter({ default: 'deny', allow: ['*.example.com'], deny: [] }, { hostAddresses: [HOST], maxLearned: 3 });
    for (let i = 1; i <= 5; i++) f.learn(`h${i}.example.com`, [ip(`1.1.1.${i}`)], 300);
    expect(f.learnedCount).toBe(3);
    expect(f.check(ip('1.1.1.1'), 80, 'tcp').allowed).toBe(false);
    expect(f.check(ip('1.1.1.2'), 80, 'tcp').allowed).toBe(false);
    expect(f.check(ip('1.1.1.5'), 80, 'tcp').allowed).toBe(true);
  });

  it('hands learned addresses to a new policy for the names it still allows', () => {
    const old = filter('deny', ['a.example', 'b.example']);
    old.learn('a.example', [ip('2.2.2.2')], 300);
    old.learn('b.example', [ip('3.3.3.3')], 300);
    const next = filter('deny', ['a.example:443']);
    next.inheritLearned(old);
    expect(next.check(ip('2.2.2.2'), 443, 'tcp').allowed).toBe(true);
    expect(next.check(ip('2.2.2.2'), 80, 'tcp').allowed).toBe(false);
    expect(next.check(ip('3.3.3.3'), 443, 'tcp').allowed).toBe(false);
  });
});
