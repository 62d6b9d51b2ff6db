import { createSocket } from 'node:dgram';
import { randomBytes } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { ipv4ToInt } from '@roost/api';
import { answerDnsQuery, DnsLimit, type Resolve4 } from './dns.js';
import { EgressFilter } from './policy.js';

function query(name: string, type = 1, id = 0x4242, extra?: Buffer): Buffer {
  const labels = name === '' ? [] : name.split('.');
  const parts: Buffer[] = [Buffer.from([id >> 8, id & 255, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, extra ? 1 : 0])];
  for (const l of labels) parts.push(Buffer.from([l.length]), Buffer.from(l, 'latin1'));
  parts.push(Buffer.from([0, type >> 8, type & 255, 0, 1]));
  if (extra) parts.push(extra);
  return Buffer.concat(parts);
}

interface Parsed {
  id: number;
  qr: boolean;
  rcode: number;
  ancount: number;
  addresses: string[];
  ttls: number[];
}

function parse(r: Buffer): Parsed {
  const ancount = r.readUInt16BE(6);
  let p = 12;
  while (r[p] !== 0) p += r[p]! + 1;
  p += 5;
  const addresses: string[] = [];
  const ttls: number[] = [];
  for (let i = 0; i < ancount; i++) {
    expect(r.readUInt16BE(p)).toBe(0xc00c);
    expect(r.readUInt16BE(p + 2)).toBe(1);
    ttls.push(r.readUInt32BE(p + 6));
    addresses.push([...r.subarray(p + 12, p + 16)].join('.'));
    p += 16;
  }
  expect(p).toBe(r.length);
  return { id: r.readUInt16BE(0), qr: (r[2]! & 0x80) !== 0, rcode: r[3]! & 15, ancount, addresses, ttls };
}

const hostAddresses = [ipv4ToInt('127.0.0.1')];
const resolver: Resolve4 = async (name) => {
  if (name === 'example.com')
    return [
      { address: '93.184.216.34', ttl: 300 },
      { address: '93.184.216.35', ttl: 100 },
    ];
  if (name === 'empty.example') throw Object.assign(new Error('no data'), { code: 'ENODATA' });
  if (name === 'broken.example') throw Object.assign(new Error('try again'), { code: 'EAI_AGAIN' });
  throw Object.assign(new Error('not found'), { code: 'ENOTFOUND' });
};

describe('answerDnsQuery', () => {
  it('answers A queries through the resolver and teaches the filter', async () => {
    const filter = new EgressFilter({ default: 'deny', allow: ['example.com:443'], deny: [] }, { hostAddresses });
    const r = parse((await answerDnsQuery(query('Example.COM'), { filter, resolve4: resolver }))!);
    expect(r).toMatchObject({ id: 0x4242, qr: true, rcode: 0, addresses: ['93.184.216.34', '93.184.216.35'], ttls: [300, 100] });
    expect(filter.check(ipv4ToInt('93.184.216.35'), 443, 'tcp').allowed).toBe(true);
    expect(filter.check(ipv4ToInt('93.184.216.35'), 80, 'tcp').allowed).toBe(false);
  });

  it('accepts queries with an EDNS record', async () => {
    const filter = new EgressFilter({ default: 'allow', allow: [], deny: [] }, { hostAddresses });
    const opt = Buffer.from([0, 0, 41, 0x10, 0, 0, 0, 0, 0, 0, 0]);
    expect(parse((await answerDnsQuery(query('example.com', 1, 7, opt), { filter, resolve4: resolver }))!).addresses).toHaveLength(2);
  });

  it('gives NXDOMAIN for a name the policy does not list, and reports it', async () => {
    const filter = new EgressFilter({ default: 'deny', allow: ['example.com'], deny: [] }, { hostAddresses });
    const denied: string[] = [];
    let asked = false;
    const r = parse((await answerDnsQuery(query('unlisted.org'), { filter, resolve4: async () => ((asked = true), []), onDenied: (n) => denied.push(n) }))!);
    expect(r.rcode).toBe(3);
    expect(denied).toEqual(['unlisted.org']);
    expect(asked).toBe(false);
  });

  it('maps resolver outcomes: ENOTFOUND -> NXDOMAIN, ENODATA -> empty NOERROR, others -> SERVFAIL', async () => {
    const filter = new EgressFilter({ default: 'allow', allow: [], deny: [] }, { hostAddresses });
    expect(parse((await answerDnsQuery(query('nope.example'), { filter, resolve4: resolver }))!).rcode).toBe(3);
    expect(parse((await answerDnsQuery(query('empty.example'), { filter, resolve4: resolver }))!)).toMatchObject({ rcode: 0, ancount: 0 });
    expect(parse((await answerDnsQuery(query('broken.example'), { filter, resolve4: resolver }))!).rcode).toBe(2);
  });

  it('answers AAAA with an empty NOERROR', async () => {
    const filter = new EgressFilter({ default: 'allow', allow: [], deny: [] }, { hostAddresses });
    expect(parse((await answerDnsQuery(query('example.com', 28), { filter, resolve4: resolver }))!)).toMatchObject({ rcode: 0, ancount: 0 });
  });

  it('answers host.roost.internal only when the policy allows the host', async () => {
    const hostName = { name: 'host.roost.internal' as const, address: '10.0.2.2' };
    const withHost = new EgressFilter({ default: 'deny', allow: ['host:8080'], deny: [] }, { hostAddresses });
    expect(parse((await answerDnsQuery(query('host.roost.internal'), { filter: withHost, hostName }))!)).toMatchObject({ rcode: 0, addresses: ['10.0.2.2'] });
    const without = new EgressFilter({ default: 'allow', allow: [], deny: [] }, { hostAddresses });
    expect(parse((await answerDnsQuery(query('host.roost.internal'), { filter: without, hostName, resolve4: resolver }))!).rcode).toBe(3);
    expect(parse((await answerDnsQuery(query('other.roost.internal'), { filter: without, hostName, resolve4: resolver }))!).rcode).toBe(3);
  });

  it('forwards other types to the upstream with default allow, refuses them with default deny', async () => {
    const upstream = createSocket('udp4');
    upstream.on('message', (msg, rinfo) => {
      const reply = Buffer.from(msg);
      reply[2]! |= 0x80;
      upstream.send(reply, rinfo.port, rinfo.address);
    });
    await new Promise<void>((r) => upstream.bind(0, '127.0.0.1', r));
    try {
      const allow = new EgressFilter({ default: 'allow', allow: [], deny: [] }, { hostAddresses });
      const target = { address: '127.0.0.1', port: upstream.address().port };
      const q = query('example.com', 16);
      const r = (await answerDnsQuery(q, { filter: allow, upstream: target }))!;
      expect(r.readUInt16BE(0)).toBe(0x4242);
      expect(r.subarray(3)).toEqual(q.subarray(3));
      const deny = new EgressFilter({ default: 'deny', allow: ['example.com'], deny: [] }, { hostAddresses });
      expect(parse((await answerDnsQuery(q, { filter: deny, upstream: target }))!).rcode).toBe(5);
      // No answer in time: SERVFAIL.
      const silent = createSocket('udp4');
      await new Promise<void>((r) => silent.bind(0, '127.0.0.1', r));
      const started = Date.now();
      const slow = (await answerDnsQuery(q, { filter: allow, upstream: { address: '127.0.0.1', port: silent.address().port }, forwardTimeoutMs: 200 }))!;
      silent.close();
      expect(parse(slow).rcode).toBe(2);
      expect(Date.now() - started).toBeLessThan(2000);
    } finally {
      upstream.close();
    }
  });

  it('returns null for garbage and responses, whatever the bytes', async () => {
    const filter = new EgressFilter({ default: 'allow', allow: [], deny: [] }, { hostAddresses });
    const opts = { filter, resolve4: resolver, upstream: null };
    expect(await answerDnsQuery(Buffer.alloc(0), opts)).toBeNull();
    expect(await answerDnsQuery(Buffer.from('hello'), opts)).toBeNull();
    const response = query('example.com');
    response[2]! |= 0x80;
    expect(await answerDnsQuery(response, opts)).toBeNull();
    // A compression pointer in the question, a label running past the end, two questions.
    expect(await answerDnsQuery(Buffer.concat([query('').subarray(0, 12), Buffer.from([0xc0, 0x0c, 0, 1, 0, 1])]), opts)).toBeNull();
    expect(await answerDnsQuery(Buffer.concat([query('').subarray(0, 12), Buffer.from([40, 65, 65])]), opts)).toBeNull();
    const two = query('example.com');
    two.writeUInt16BE(2, 4);
    expect(await answerDnsQuery(two, opts)).toBeNull();
    for (let i = 0; i < 2000; i++) {
      const junk = randomBytes(Math.floor(Math.random() * 80));
      const reply = await answerDnsQuery(junk, opts);
      if (reply !== null) expect(reply.length).toBeGreaterThanOrEqual(12);
    }
  });

  it('answers odd names with NXDOMAIN without asking the resolver', async () => {
    const filter = new EgressFilter({ default: 'allow', allow: [], deny: [] }, { hostAddresses });
    let asked = false;
    const r = await answerDnsQuery(query('bad name.example'), { filter, resolve4: async () => ((asked = true), []) });
    expect(parse(r!).rcode).toBe(3);
    expect(asked).toBe(false);
  });

  it('gives SERVFAIL past the in-flight budget', async () => {
    const filter = new EgressFilter({ default: 'allow', allow: [], deny: [] }, { hostAddresses });
    const limit = new DnsLimit(2);
    const release: (() => void)[] = [];
    const slow: Resolve4 = () => new Promise((resolve) => release.push(() => resolve([{ address: '1.2.3.4', ttl: 60 }])));
    const pending = [
      answerDnsQuery(query('a.example'), { filter, resolve4: slow, limit }),
      answerDnsQuery(query('b.example'), { filter, resolve4: slow, limit }),
    ];
    const third = await answerDnsQuery(query('c.example'), { filter, resolve4: slow, limit });
    expect(parse(third!).rcode).toBe(2);
    for (const r of release) r();
    for (const p of pending) expect(parse((await p)!).rcode).toBe(0);
    expect(limit.inFlight).toBe(0);
  });

  it('resolves to null when aborted', async () => {
    const filter = new EgressFilter({ default: 'allow', allow: [], deny: [] }, { hostAddresses });
    const controller = new AbortController();
    const p = answerDnsQuery(query('a.example'), { filter, resolve4: () => new Promise(() => {}), signal: controller.signal });
    controller.abort();
    expect(await p).toBeNull();
  });
});
