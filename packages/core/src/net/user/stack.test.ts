import { randomBytes } from 'node:crypto';
import { createServer, type Server, type Socket } from 'node:net';
import { Duplex } from 'node:stream';
import { afterEach, describe, expect, it } from 'vitest';
import { intToIpv4, ipv4ToInt, type DeniedConnection } from '@roost/api';
import { EgressFilter } from '../policy.js';
import { internetChecksum, onesComplementSum, pseudoHeaderSum } from './checksum.js';
import { createUserNetFilter, UserNet, USER_NET } from './index.js';

/*
 * The stack driven by crafted frames through an in-memory link: what a
 * guest kernel would send, checked byte by byte on the way back.
 */

const GUEST_MAC = Buffer.from([0x52, 0x54, 0x00, 0x12, 0x34, 0x56]);
const GATEWAY_MAC = Buffer.from([0x52, 0x55, 0x0a, 0x00, 0x02, 0x02]);
const BROADCAST = Buffer.alloc(6, 0xff);
const GUEST = ipv4ToInt(USER_NET.guest);
const GATEWAY = ipv4ToInt(USER_NET.gateway);
const DNS = ipv4ToInt(USER_NET.dns);

const SYN = 0x02;
const RST = 0x04;
const PSH = 0x08;
const ACK = 0x10;
const FIN = 0x01;

// ---- frames the "guest" sends -----------------------------------------------------------

function eth(type: number, payload: Buffer, src = GUEST_MAC, dst = GATEWAY_MAC): Buffer {
  const h = Buffer.alloc(14);
  dst.copy(h, 0);
  src.copy(h, 6);
  h.writeUInt16BE(type, 12);
  return Buffer.concat([h, payload]);
}

function ipv4(src: number, dst: number, protocol: number, payload: Buffer, opts: { fragment?: number } = {}): Buffer {
  const h = Buffer.alloc(20);
  h[0] = 0x45;
  h.writeUInt16BE(20 + payload.length, 2);
  h.writeUInt16BE(opts.fragment ?? 0x4000, 6);
  h[8] = 64;
  h[9] = protocol;
  h.writeUInt32BE(src >>> 0, 12);
  h.writeUInt32BE(dst >>> 0, 16);
  h.writeUInt16BE(internetChecksum(h, 0, 20), 10);
  return Buffer.concat([h, payload]);
}

function l4Checksum(src: number, dst: number, protocol: number, seg: Buffer, offset: number): Buffer {
  seg.writeUInt16BE(0, offset);
  seg.writeUInt16BE(internetChecksum(seg, 0, seg.length, pseudoHeaderSum(src, dst, protocol, seg.length)), offset);
  return seg;
}

interface TcpOut {
  srcPort: number;
  dstPort: number;
  seq: number;
  ack?: number;
  flags: number;
  window?: number;
  data?: Buffer;
  mss?: number;
  wscale?: number;
  dst?: number;
}

function tcpFrame(t: TcpOut): Buffer {
  const options: number[] = [];
  if (t.mss !== undefined) options.push(2, 4, t.mss >> 8, t.mss & 255);
  if (t.wscale !== undefined) options.push(1, 3, 3, t.wscale);
  while (options.length % 4) options.push(1);
  const h = Buffer.alloc(20 + options.length);
  h.writeUInt16BE(t.srcPort, 0);
  h.writeUInt16BE(t.dstPort, 2);
  h.writeUInt32BE(t.seq >>> 0, 4);
  h.writeUInt32BE((t.ack ?? 0) >>> 0, 8);
  h[12] = (h.length / 4) << 4;
  h[13] = t.flags;
  h.writeUInt16BE(t.window ?? 65535, 14);
  Buffer.from(options).copy(h, 20);
  const dst = t.dst ?? GATEWAY;
  const seg = l4Checksum(GUEST, dst, 6, Buffer.concat([h, t.data ?? Buffer.alloc(0)]), 16);
  return eth(0x0800, ipv4(GUEST, dst, 6, seg));
}

function udpFrame(srcPort: number, dst: number, dstPort: number, data: Buffer, src = GUEST): Buffer {
  const h = Buffer.alloc(8);
  h.writeUInt16BE(srcPort, 0);
  h.writeUInt16BE(dstPort, 2);
  h.writeUInt16BE(8 + data.length, 4);
  const seg = l4Checksum(src, dst, 17, Buffer.concat([h, data]), 6);
  return eth(0x0800, ipv4(src, dst, 17, seg), GUEST_MAC, dst === 0xffffffff ? BROADCAST : GATEWAY_MAC);
}

// ---- frames the stack sends, parsed and checked ----------------------------------------------

interface Parsed {
  dstMac: Buffer;
  type: number;
  raw: Buffer;
  ip?: { src: number; dst: number; protocol: number; payload: Buffer; fragment: number };
  tcp?: { srcPort: number; dstPort: number; seq: number; ack: number; flags: number; window: number; data: Buffer; mss?: number; wscale?: number };
  udp?: { srcPort: number; dstPort: number; data: Buffer };
  icmp?: { type: number; code: number; rest: Buffer };
}

function parse(frame: Buffer): Parsed {
  const out: Parsed = { dstMac: frame.subarray(0, 6), type: frame.readUInt16BE(12), raw: frame };
  if (out.type !== 0x0800) return out;
  const ip = frame.subarray(14);
  expect(onesComplementSum(ip, 0, 20)).toBe(0xffff);
  const total = ip.readUInt16BE(2);
  expect(total).toBe(ip.length);
  const payload = ip.subarray(20, total);
  const src = ip.readUInt32BE(12);
  const dst = ip.readUInt32BE(16);
  out.ip = { src, dst, protocol: ip[9]!, payload, fragment: ip.readUInt16BE(6) };
  if (ip[9] === 6) {
    expect(onesComplementSum(payload, 0, payload.length, pseudoHeaderSum(src, dst, 6, payload.length))).toBe(0xffff);
    const doff = (payload[12]! >> 4) * 4;
    const tcp: NonNullable<Parsed['tcp']> = {
      srcPort: payload.readUInt16BE(0),
      dstPort: payload.readUInt16BE(2),
      seq: payload.readUInt32BE(4),
      ack: payload.readUInt32BE(8),
      flags: payload[13]!,
      window: payload.readUInt16BE(14),
      data: payload.subarray(doff),
    };
    for (let p = 20; p < doff;) {
      const kind = payload[p]!;
      if (kind === 0) break;
      if (kind === 1) {
        p++;
        continue;
      }
      if (kind === 2) tcp.mss = payload.readUInt16BE(p + 2);
      if (kind === 3) tcp.wscale = payload[p + 2]!;
      p += payload[p + 1]!;
    }
    out.tcp = tcp;
  } else if (ip[9] === 17) {
    if (payload.readUInt16BE(6) !== 0 && (out.ip.fragment & 0x3fff) === 0) {
      expect(onesComplementSum(payload, 0, payload.length, pseudoHeaderSum(src, dst, 17, payload.length))).toBe(0xffff);
    }
    out.udp = { srcPort: payload.readUInt16BE(0), dstPort: payload.readUInt16BE(2), data: payload.subarray(8) };
  } else if (ip[9] === 1) {
    expect(onesComplementSum(payload, 0, payload.length)).toBe(0xffff);
    out.icmp = { type: payload[0]!, code: payload[1]!, rest: payload.subarray(4) };
  }
  return out;
}

/** The QEMU side of the stream: frames in with the 4-byte prefix, frames out parsed. */
class FakeLink extends Duplex {
  readonly received: Parsed[] = [];
  #waiters: (() => void)[] = [];
  #taken = 0;

  override _write(chunk: Buffer, _e: BufferEncoding, callback: () => void): void {
    let p = 0;
    while (p < chunk.length) {
      const n = chunk.readUInt32BE(p);
      this.received.push(parse(chunk.subarray(p + 4, p + 4 + n)));
      p += 4 + n;
    }
    for (const w of this.#waiters.splice(0)) w();
    callback();
  }

  override _read(): void {}

  send(frame: Buffer): void {
    const prefix = Buffer.alloc(4);
    prefix.writeUInt32BE(frame.length);
    this.push(Buffer.concat([prefix, frame]));
  }

  /** The next frame (after those already taken) that matches, waiting up to `ms`. */
  async next(match: (f: Parsed) => boolean = () => true, ms = 2000): Promise<Parsed> {
    const deadline = Date.now() + ms;
    for (;;) {
      for (let i = this.#taken; i < this.received.length; i++) {
        if (match(this.received[i]!)) {
          this.#taken = i + 1;
          return this.received[i]!;
        }
      }
      const left = deadline - Date.now();
      if (left <= 0) throw new Error('no matching frame arrived');
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, left);
        this.#waiters.push(() => {
          clearTimeout(t);
          resolve();
        });
      });
    }
  }

  /** True when no frame matching arrives within `ms`. */
  async silent(match: (f: Parsed) => boolean = () => true, ms = 200): Promise<boolean> {
    try {
      await this.next(match, ms);
      return false;
    } catch {
      return true;
    }
  }
}

const isTcp = (port: number) => (f: Parsed) => f.tcp !== undefined && f.tcp.dstPort === port;

// ---- fixtures ---------------------------------------------------------------------------------

const cleanups: (() => void | Promise<void>)[] = [];
afterEach(async () => {
  // In order: the network first, so host servers see their connections close.
  for (const c of cleanups.splice(0)) await c();
});

function setup(opts: { allow?: string[]; deny?: string[]; def?: 'allow' | 'deny'; guestConnectTimeoutMs?: number } = {}) {
  const denied: DeniedConnection[] = [];
  const logs: string[] = [];
  const net = new UserNet({
    guestMac: '52:54:00:12:34:56',
    filter: createUserNetFilter({ default: opts.def ?? 'deny', allow: opts.allow ?? ['host'], deny: opts.deny ?? [] }),
    onDenied: (d) => denied.push(d),
    log: (m) => logs.push(m),
    resolve4: async (name) =>
      name === 'example.test' ? [{ address: '192.0.2.7', ttl: 60 }] : Promise.reject(Object.assign(new Error('x'), { code: 'ENOTFOUND' })),
    dnsUpstream: null,
    ...(opts.guestConnectTimeoutMs !== undefined ? { guestConnectTimeoutMs: opts.guestConnectTimeoutMs } : {}),
  });
  const link = new FakeLink();
  net.attach(link);
  cleanups.push(() => net.close());
  return { net, link, denied, logs };
}

async function hostServer(onConnection: (s: Socket) => void): Promise<{ server: Server; port: number }> {
  const server = createServer((s) => {
    s.on('error', () => {});
    onConnection(s);
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  cleanups.push(() => new Promise<void>((r) => server.close(() => r())));
  return { server, port: (server.address() as { port: number }).port };
}

/** Guest-side handshake to 10.0.2.2:port; returns the sequence state. */
async function handshake(link: FakeLink, port: number, srcPort = 40000, window = 65535, wscale: number | undefined = 7) {
  const isn = 1000;
  link.send(tcpFrame({ srcPort, dstPort: port, seq: isn, flags: SYN, mss: 65480, ...(wscale !== undefined ? { wscale } : {}), window }));
  const synAck = (await link.next(isTcp(srcPort))).tcp!;
  expect(synAck.flags).toBe(SYN | ACK);
  expect(synAck.ack).toBe(isn + 1);
  link.send(tcpFrame({ srcPort, dstPort: port, seq: isn + 1, ack: synAck.seq + 1, flags: ACK, window }));
  return { seq: isn + 1, ack: synAck.seq + 1, synAck, srcPort };
}

// ---- tests ------------------------------------------------------------------------------------

describe('UserNet link layer', () => {
  it('answers ARP for the gateway and DNS addresses, and learns the guest MAC', async () => {
    const { link } = setup();
    const newMac = Buffer.from([0x52, 0x54, 0x00, 0xaa, 0xbb, 0xcc]);
    const arp = (target: string, mac = GUEST_MAC) => {
      const a = Buffer.alloc(28);
      a.writeUInt16BE(1, 0);
      a.writeUInt16BE(0x0800, 2);
      a[4] = 6;
      a[5] = 4;
      a.writeUInt16BE(1, 6);
      mac.copy(a, 8);
      a.writeUInt32BE(GUEST, 14);
      a.writeUInt32BE(ipv4ToInt(target), 24);
      return eth(0x0806, a, mac, BROADCAST);
    };
    link.send(arp('10.0.2.2'));
    const reply = await link.next();
    expect(reply.type).toBe(0x0806);
    expect(reply.dstMac).toEqual(GUEST_MAC);
    const body = reply.raw.subarray(14);
    expect(body.readUInt16BE(6)).toBe(2);
    expect(body.subarray(8, 14)).toEqual(GATEWAY_MAC);
    expect(intToIpv4(body.readUInt32BE(14))).toBe('10.0.2.2');
    expect(body.subarray(18, 24)).toEqual(GUEST_MAC);
    link.send(arp('10.0.2.3'));
    expect(intToIpv4((await link.next()).raw.subarray(14).readUInt32BE(14))).toBe('10.0.2.3');
    link.send(arp('10.0.2.77'));
    expect(await link.silent()).toBe(true);
    // A restored copy with another MAC: replies follow the new one.
    link.send(arp('10.0.2.2', newMac));
    expect((await link.next()).dstMac).toEqual(newMac);
  });

  it('answers ICMP echo on 10.0.2.2 and 10.0.2.3, not elsewhere', async () => {
    const { link } = setup();
    const echo = (dst: number, id: number) => {
      const m = Buffer.concat([Buffer.from([8, 0, 0, 0, id >> 8, id & 255, 0, 1]), Buffer.from('ping payload')]);
      m.writeUInt16BE(internetChecksum(m, 0, m.length), 2);
      return eth(0x0800, ipv4(GUEST, dst, 1, m));
    };
    link.send(echo(GATEWAY, 7));
    const r = await link.next();
    expect(r.ip).toMatchObject({ src: GATEWAY, dst: GUEST, protocol: 1 });
    expect(r.icmp).toMatchObject({ type: 0, code: 0 });
    expect(r.icmp!.rest.subarray(4).toString()).toBe('ping payload');
    link.send(echo(DNS, 8));
    expect((await link.next()).ip!.src).toBe(DNS);
    link.send(echo(ipv4ToInt('8.8.8.8'), 9));
    expect(await link.silent()).toBe(true);
  });

  it('runs a DHCP handshake: DISCOVER, OFFER, REQUEST, ACK', async () => {
    const { link } = setup();
    const dhcp = (type: number, requested?: number) => {
      const m = Buffer.alloc(300);
      m[0] = 1;
      m[1] = 1;
      m[2] = 6;
      m.writeUInt32BE(0xdeadbeef, 4);
      GUEST_MAC.copy(m, 28);
      m.writeUInt32BE(0x63825363, 236);
      const opts = [
        53,
        1,
        type,
        ...(requested !== undefined ? [50, 4, requested >>> 24, (requested >>> 16) & 255, (requested >>> 8) & 255, requested & 255] : []),
        255,
      ];
      Buffer.from(opts).copy(m, 240);
      return udpFrame(68, 0xffffffff, 67, m, 0);
    };
    const options = (data: Buffer) => {
      const out = new Map<number, Buffer>();
      for (let p = 240; data[p] !== 255; p += 2 + data[p + 1]!) out.set(data[p]!, data.subarray(p + 2, p + 2 + data[p + 1]!));
      return out;
    };
    link.send(dhcp(1));
    const offer = (await link.next()).udp!;
    expect(offer).toMatchObject({ srcPort: 67, dstPort: 68 });
    expect(offer.data.readUInt32BE(4)).toBe(0xdeadbeef);
    expect(intToIpv4(offer.data.readUInt32BE(16))).toBe('10.0.2.15');
    let o = options(offer.data);
    expect(o.get(53)).toEqual(Buffer.from([2]));
    expect(intToIpv4(o.get(3)!.readUInt32BE(0))).toBe('10.0.2.2');
    expect(intToIpv4(o.get(6)!.readUInt32BE(0))).toBe('10.0.2.3');
    expect(intToIpv4(o.get(1)!.readUInt32BE(0))).toBe('255.255.255.0');
    expect(o.get(26)!.readUInt16BE(0)).toBe(65520);
    expect(o.get(51)!.readUInt32BE(0)).toBeGreaterThan(0);
    link.send(dhcp(3, GUEST));
    o = options((await link.next()).udp!.data);
    expect(o.get(53)).toEqual(Buffer.from([5]));
    link.send(dhcp(3, ipv4ToInt('10.0.2.99')));
    expect(options((await link.next()).udp!.data).get(53)).toEqual(Buffer.from([6]));
  });

  it('answers DNS on 10.0.2.3:53', async () => {
    const { link } = setup({ def: 'allow', allow: [] });
    const q = Buffer.from([0x12, 0x34, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 7, ...Buffer.from('example'), 4, ...Buffer.from('test'), 0, 0, 1, 0, 1]);
    link.send(udpFrame(5353, DNS, 53, q));
    const r = (await link.next()).udp!;
    expect(r).toMatchObject({ srcPort: 53, dstPort: 5353 });
    expect(r.data.readUInt16BE(0)).toBe(0x1234);
    expect(r.data.readUInt16BE(6)).toBe(1);
    expect([...r.data.subarray(-4)].join('.')).toBe('192.0.2.7');
  });
});

describe('UserNet TCP', () => {
  it('relays a connection to a 127.0.0.1 server through 10.0.2.2, data both ways, FIN both ways', async () => {
    const { net, link } = setup();
    const fromGuest: Buffer[] = [];
    let serverSocket: Socket | null = null;
    const ended = new Promise<void>((resolve) => {
      void hostServer((s) => {
        serverSocket = s;
        s.on('data', (d: Buffer) => fromGuest.push(d));
        s.on('end', () => resolve());
      }).then(({ port }) => (serverPort = port));
    });
    let serverPort = 0;
    while (serverPort === 0) await new Promise((r) => setTimeout(r, 5));

    const c = await handshake(link, serverPort);
    expect(c.synAck.mss).toBe(USER_NET.mtu - 40);
    expect(c.synAck.wscale).toBeGreaterThan(0);
    // guest -> host
    link.send(tcpFrame({ srcPort: c.srcPort, dstPort: serverPort, seq: c.seq, ack: c.ack, flags: ACK | PSH, data: Buffer.from('hello from the guest') }));
    const ackOfData = (await link.next(isTcp(c.srcPort))).tcp!;
    expect(ackOfData.ack).toBe(c.seq + 20);
    c.seq += 20;
    while (serverSocket === null || Buffer.concat(fromGuest).length < 20) await new Promise((r) => setTimeout(r, 5));
    expect(Buffer.concat(fromGuest).toString()).toBe('hello from the guest');
    // host -> guest
    (serverSocket as Socket).write('hello from the host');
    const data = (await link.next(isTcp(c.srcPort))).tcp!;
    expect(data.seq).toBe(c.ack);
    expect(data.ack).toBe(c.seq);
    expect(data.data.toString()).toBe('hello from the host');
    c.ack += data.data.length;
    link.send(tcpFrame({ srcPort: c.srcPort, dstPort: serverPort, seq: c.seq, ack: c.ack, flags: ACK }));
    // guest FIN -> host sees end; host end -> guest FIN
    link.send(tcpFrame({ srcPort: c.srcPort, dstPort: serverPort, seq: c.seq, ack: c.ack, flags: ACK | FIN }));
    await ended;
    expect((await link.next(isTcp(c.srcPort))).tcp!.ack).toBe(c.seq + 1);
    (serverSocket as Socket).end();
    const fin = (await link.next((f) => isTcp(c.srcPort)(f) && (f.tcp!.flags & FIN) !== 0)).tcp!;
    expect(fin.seq).toBe(c.ack);
    link.send(tcpFrame({ srcPort: c.srcPort, dstPort: serverPort, seq: c.seq + 1, ack: fin.seq + 1, flags: ACK }));
    for (let i = 0; i < 50 && net.flowCounts.tcp > 0; i++) await new Promise((r) => setTimeout(r, 10));
    expect(net.flowCounts.tcp).toBe(0);
  });

  it('answers a denied SYN with ICMP administratively prohibited, counts and reports it', async () => {
    const { net, link, denied } = setup({ def: 'deny', allow: [] });
    link.send(tcpFrame({ srcPort: 40001, dstPort: 443, seq: 5, flags: SYN, dst: ipv4ToInt('198.51.100.1') }));
    const r = await link.next();
    expect(r.icmp).toMatchObject({ type: 3, code: 13 });
    expect(r.ip).toMatchObject({ src: GATEWAY, dst: GUEST });
    // It quotes the SYN's IP header and first 8 bytes: ports and sequence number.
    const quoted = r.icmp!.rest.subarray(4);
    expect(intToIpv4(quoted.readUInt32BE(16))).toBe('198.51.100.1');
    expect(quoted.readUInt16BE(20)).toBe(40001);
    expect(quoted.readUInt32BE(24)).toBe(5);
    expect(net.stats.denied).toBe(1);
    expect(denied).toEqual([{ protocol: 'tcp', address: '198.51.100.1', port: 443 }]);
    // The host is denied too without a host rule.
    link.send(tcpFrame({ srcPort: 40002, dstPort: 22, seq: 5, flags: SYN }));
    expect((await link.next()).icmp).toMatchObject({ type: 3, code: 13 });
    expect(net.flowCounts.tcp).toBe(0);
  });

  it('answers a SYN to a closed host port with RST', async () => {
    const { link } = setup();
    const { server, port } = await hostServer(() => {});
    await new Promise<void>((r) => server.close(() => r()));
    link.send(tcpFrame({ srcPort: 40003, dstPort: port, seq: 77, flags: SYN }));
    const r = (await link.next(isTcp(40003))).tcp!;
    expect(r.flags & RST).toBeTruthy();
    expect(r.ack).toBe(78);
  });

  it('answers segments of unknown connections with RST', async () => {
    const { link } = setup();
    link.send(tcpFrame({ srcPort: 40004, dstPort: 80, seq: 1, ack: 12345, flags: ACK, data: Buffer.from('x') }));
    const r = (await link.next(isTcp(40004))).tcp!;
    expect(r.flags).toBe(RST);
    expect(r.seq).toBe(12345);
  });

  it('stops reading the host socket while the guest window is closed, and resumes', async () => {
    const { net, link } = setup();
    const payload = randomBytes(6 * 1024 * 1024);
    const { port } = await hostServer((s) => s.end(payload));
    const c = await handshake(link, port, 40005, 0, 0);
    // Zero window: nothing but probes.
    await new Promise((r) => setTimeout(r, 300));
    const early = link.received.filter((f) => isTcp(40005)(f) && f.tcp!.data.length > 0);
    expect(early).toEqual([]);
    expect(link.received.length).toBeLessThan(20);
    // Open the window: everything arrives, in order.
    const got: Buffer[] = [];
    let ack = c.ack;
    let fin = false;
    while (!fin) {
      link.send(tcpFrame({ srcPort: 40005, dstPort: port, seq: c.seq, ack, flags: ACK, window: 65535 }));
      const f = (await link.next(isTcp(40005))).tcp!;
      if (f.data.length > 0 && f.seq === ack) {
        got.push(Buffer.from(f.data));
        ack += f.data.length;
      }
      if (f.flags & FIN && f.seq + f.data.length === ack) {
        fin = true;
        ack += 1;
      }
    }
    expect(Buffer.concat(got).equals(payload)).toBe(true);
    link.send(tcpFrame({ srcPort: 40005, dstPort: port, seq: c.seq, ack, flags: ACK | FIN }));
    await link.next(isTcp(40005));
    for (let i = 0; i < 50 && net.flowCounts.tcp > 0; i++) await new Promise((r) => setTimeout(r, 10));
    expect(net.flowCounts.tcp).toBe(0);
  });

  it('drops data past the window it advertised and data out of order', async () => {
    const { link } = setup();
    const got: Buffer[] = [];
    const { port } = await hostServer((s) => s.on('data', (d: Buffer) => got.push(d)));
    const c = await handshake(link, port, 40006);
    link.send(tcpFrame({ srcPort: 40006, dstPort: port, seq: c.seq + 100, ack: c.ack, flags: ACK, data: Buffer.from('later') }));
    const dup = (await link.next(isTcp(40006))).tcp!;
    expect(dup.ack).toBe(c.seq);
    link.send(tcpFrame({ srcPort: 40006, dstPort: port, seq: c.seq, ack: c.ack, flags: ACK, data: Buffer.from('first') }));
    expect((await link.next(isTcp(40006))).tcp!.ack).toBe(c.seq + 5);
    await new Promise((r) => setTimeout(r, 50));
    expect(Buffer.concat(got).toString()).toBe('first');
  });

  it('retransmits unacknowledged data after a timeout', async () => {
    const { link } = setup();
    let socket: Socket | null = null;
    const { port } = await hostServer((s) => (socket = s));
    const c = await handshake(link, port, 40007);
    while (socket === null) await new Promise((r) => setTimeout(r, 5));
    (socket as Socket).write('lost once');
    const first = (await link.next(isTcp(40007))).tcp!;
    expect(first.data.toString()).toBe('lost once');
    // No ACK: the same bytes come again (RTO 1 s).
    const again = (await link.next(isTcp(40007), 3000)).tcp!;
    expect(again.seq).toBe(first.seq);
    expect(again.data.toString()).toBe('lost once');
    link.send(tcpFrame({ srcPort: 40007, dstPort: port, seq: c.seq, ack: c.ack + 9, flags: ACK }));
    expect(await link.silent(isTcp(40007), 1500)).toBe(true);
  });

  it('bounds flows under a SYN flood', async () => {
    const { net, link, logs } = setup();
    const { port } = await hostServer(() => {});
    for (let i = 0; i < 1200; i++) link.send(tcpFrame({ srcPort: 20000 + i, dstPort: port, seq: i, flags: SYN }));
    await new Promise((r) => setTimeout(r, 1500));
    expect(net.flowCounts.tcp).toBeLessThanOrEqual(1024);
    expect(net.flowCounts.tcp).toBeGreaterThan(100);
    const resets = link.received.filter((f) => f.tcp !== undefined && f.tcp.flags & RST).length;
    expect(resets).toBeGreaterThan(0);
    expect(logs.some((l) => /refusing a TCP connection/.test(l))).toBe(true);
    net.close();
    expect(net.flowCounts.tcp).toBe(0);
  }, 20_000);
});

describe('UserNet.connectTcp', () => {
  it('connects to a guest port: SYN, SYN-ACK, data both ways, backpressure, FIN', async () => {
    const { link, net } = setup();
    const stream = net.connectTcp(8080);
    const syn = (await link.next((f) => f.tcp?.dstPort === 8080)).tcp!;
    expect(syn.flags).toBe(SYN);
    expect(syn.mss).toBe(USER_NET.mtu - 40);
    let connected = false;
    stream.on('connect', () => (connected = true));
    const gw = syn.srcPort;
    const guestIsn = 5000;
    link.send(tcpFrame({ srcPort: 8080, dstPort: gw, seq: guestIsn, ack: syn.seq + 1, flags: SYN | ACK, mss: 1460, window: 4096 }));
    const ack = (await link.next((f) => f.tcp?.dstPort === 8080)).tcp!;
    expect(ack.flags).toBe(ACK);
    expect(ack.ack).toBe(guestIsn + 1);
    await new Promise((r) => setImmediate(r));
    expect(connected).toBe(true);

    // The guest's window (4096, unscaled: no window scale offered) caps what is in flight.
    const big = randomBytes(4 * 1024 * 1024);
    const accepted = stream.write(big);
    expect(accepted).toBe(false);
    await new Promise((r) => setTimeout(r, 50));
    const inFlight = link.received.filter((f) => f.tcp?.dstPort === 8080 && f.tcp.data.length > 0);
    expect(inFlight.reduce((n, f) => n + f.tcp!.data.length, 0)).toBe(4096);
    expect(Math.max(...inFlight.map((f) => f.tcp!.data.length))).toBe(1460);

    // Guest data reaches the stream.
    const read = new Promise<string>((resolve) => stream.once('data', (d: Buffer) => resolve(d.toString())));
    link.send(tcpFrame({ srcPort: 8080, dstPort: gw, seq: guestIsn + 1, ack: syn.seq + 1, flags: ACK | PSH, data: Buffer.from('from guest'), window: 0 }));
    expect(await read).toBe('from guest');
    // A guest FIN ends the readable side.
    const ended = new Promise<void>((resolve) => stream.once('end', () => resolve()));
    stream.resume();
    link.send(tcpFrame({ srcPort: 8080, dstPort: gw, seq: guestIsn + 11, ack: syn.seq + 1, flags: ACK | FIN, window: 0 }));
    await ended;
    stream.destroy();
    const rst = await link.next((f) => f.tcp?.dstPort === 8080 && (f.tcp.flags & RST) !== 0);
    expect(rst).toBeDefined();
  });

  it('fails with ECONNREFUSED when the guest answers RST, ETIMEDOUT when it is silent', async () => {
    const { link, net } = setup({ guestConnectTimeoutMs: 400 });
    const refused = net.connectTcp(9000);
    const syn = (await link.next((f) => f.tcp?.dstPort === 9000)).tcp!;
    link.send(tcpFrame({ srcPort: 9000, dstPort: syn.srcPort, seq: 0, ack: syn.seq + 1, flags: RST | ACK }));
    const err = await new Promise<NodeJS.ErrnoException>((resolve) => refused.once('error', resolve));
    expect(err.code).toBe('ECONNREFUSED');
    const silent = net.connectTcp(9001);
    const started = Date.now();
    const err2 = await new Promise<NodeJS.ErrnoException>((resolve) => silent.once('error', resolve));
    expect(err2.code).toBe('ETIMEDOUT');
    expect(Date.now() - started).toBeLessThan(1500);
  });
});

describe('UserNet UDP', () => {
  it('relays UDP to the host, denies by policy with ICMP, and carries forwarded flows', async () => {
    const { createSocket } = await import('node:dgram');
    const echo = createSocket('udp4');
    echo.on('message', (m, r) => echo.send(Buffer.concat([Buffer.from('re:'), m]), r.port, r.address));
    await new Promise<void>((r) => echo.bind(0, '127.0.0.1', r));
    cleanups.push(() => void echo.close());
    const { link, net, denied } = setup({ def: 'deny', allow: [`host:${echo.address().port}/udp`] });
    link.send(udpFrame(6000, GATEWAY, echo.address().port, Buffer.from('hi')));
    const r = (await link.next((f) => f.udp?.dstPort === 6000)).udp!;
    expect(r.srcPort).toBe(echo.address().port);
    expect(r.data.toString()).toBe('re:hi');
    expect(net.flowCounts.udp).toBe(1);

    link.send(udpFrame(6001, ipv4ToInt('198.51.100.2'), 53, Buffer.from('q')));
    expect((await link.next((f) => f.icmp !== undefined)).icmp).toMatchObject({ type: 3, code: 13 });
    expect(denied).toEqual([{ protocol: 'udp', address: '198.51.100.2', port: 53 }]);

    // A forwarded flow: datagrams in, replies to its source port out.
    const replies: string[] = [];
    const flow = net.openUdpFlow(5353, (d) => replies.push(d.toString()));
    flow.send(Buffer.from('query'));
    const inbound = await link.next((f) => f.udp?.dstPort === 5353);
    expect(inbound.ip!.src).toBe(GATEWAY);
    expect(inbound.udp!.data.toString()).toBe('query');
    link.send(udpFrame(5353, GATEWAY, inbound.udp!.srcPort, Buffer.from('answer')));
    await new Promise((r) => setTimeout(r, 20));
    expect(replies).toEqual(['answer']);
    flow.close();

    // Big datagrams to the guest are fragmented to fit the MTU.
    const big = net.openUdpFlow(5354, () => {});
    big.send(Buffer.alloc(65_500, 1));
    const frag = await link.next((f) => f.ip !== undefined && f.ip.protocol === 17 && (f.ip.fragment & 0x2000) !== 0);
    expect(frag.ip!.payload.length + 20).toBeLessThanOrEqual(USER_NET.mtu);
  });
});

describe('createUserNetFilter', () => {
  it('treats 127.0.0.1 and the host’s own addresses as the host', async () => {
    const { networkInterfaces } = await import('node:os');
    const own = Object.values(networkInterfaces())
      .flatMap((a) => a ?? [])
      .filter((a) => a.family === 'IPv4')
      .map((a) => ipv4ToInt(a.address));
    const open = createUserNetFilter({ default: 'allow', allow: [], deny: [] });
    const withHost = createUserNetFilter({ default: 'allow', allow: ['host'], deny: [] });
    for (const address of [ipv4ToInt('127.0.0.1'), ...own]) {
      expect(open.check(address, 80, 'tcp').allowed).toBe(false);
      expect(withHost.check(address, 80, 'tcp').allowed).toBe(true);
    }
    expect(open.check(ipv4ToInt('192.0.2.1'), 80, 'tcp').allowed).toBe(true);
  });
});

describe('UserNet against a hostile guest', () => {
  it('survives garbage frames, bad lengths and checksums without answering them', async () => {
    const { net, link, logs } = setup({ def: 'allow', allow: [] });
    for (let i = 0; i < 3000; i++) {
      const kind = i % 4;
      let f: Buffer;
      if (kind === 0) f = randomBytes(Math.floor(Math.random() * 200));
      else if (kind === 1) f = eth(0x0800, randomBytes(20 + Math.floor(Math.random() * 100)));
      else if (kind === 2) {
        // A valid-looking TCP frame with a random byte flipped.
        f = tcpFrame({ srcPort: 30000 + i, dstPort: 80, seq: i, flags: SYN, dst: ipv4ToInt('192.0.2.1') });
        const at = 14 + Math.floor(Math.random() * (f.length - 14));
        f[at] = f[at]! ^ (1 + Math.floor(Math.random() * 255));
      } else {
        f = eth(0x0800, ipv4(GUEST, GATEWAY, 6, Buffer.alloc(10)));
        f.writeUInt16BE(9999, 16); // IP total length past the frame
      }
      link.send(f);
    }
    await new Promise((r) => setTimeout(r, 300));
    expect(net.stats.packetsOut).toBe(3000);
    expect(logs.filter((l) => /failed/.test(l))).toEqual([]);
    // Still working.
    const m = Buffer.from([8, 0, 0, 0, 0, 1, 0, 1]);
    m.writeUInt16BE(internetChecksum(m, 0, 8), 2);
    link.send(eth(0x0800, ipv4(GUEST, GATEWAY, 1, m)));
    expect((await link.next((f) => f.icmp?.type === 0)).icmp).toBeDefined();
  });

  it('drops fragments and spoofed sources', async () => {
    const { link } = setup();
    const m = Buffer.from([8, 0, 0, 0, 0, 1, 0, 1]);
    m.writeUInt16BE(internetChecksum(m, 0, 8), 2);
    link.send(eth(0x0800, ipv4(GUEST, GATEWAY, 1, m, { fragment: 0x2000 })));
    link.send(eth(0x0800, ipv4(ipv4ToInt('10.0.2.16'), GATEWAY, 1, m)));
    expect(await link.silent()).toBe(true);
  });

  it('drops the link on a length prefix past 65535 + 14 bytes', async () => {
    const { net, link, logs } = setup();
    const closed = new Promise<void>((resolve) => link.once('close', () => resolve()));
    const prefix = Buffer.alloc(4);
    prefix.writeUInt32BE(65535 + 15);
    link.push(prefix);
    await closed;
    expect(logs.some((l) => /dropping the link/.test(l))).toBe(true);
    // A new link works.
    const next = new FakeLink();
    net.attach(next);
    const m = Buffer.from([8, 0, 0, 0, 0, 1, 0, 1]);
    m.writeUInt16BE(internetChecksum(m, 0, 8), 2);
    next.send(eth(0x0800, ipv4(GUEST, GATEWAY, 1, m)));
    expect((await next.next()).icmp?.type).toBe(0);
  });

  it('reassembles frames split across chunks at any byte', async () => {
    const { link } = setup();
    const m = Buffer.concat([Buffer.from([8, 0, 0, 0, 0, 1, 0, 1]), randomBytes(3000)]);
    m.writeUInt16BE(internetChecksum(m, 0, m.length), 2);
    const frame = eth(0x0800, ipv4(GUEST, GATEWAY, 1, m));
    const prefix = Buffer.alloc(4);
    prefix.writeUInt32BE(frame.length);
    const wire = Buffer.concat([prefix, frame, prefix, frame]);
    for (let i = 0; i < wire.length; i += 7) link.push(wire.subarray(i, i + 7));
    await link.next((f) => f.icmp?.type === 0);
    await link.next((f) => f.icmp?.type === 0);
  });

  it('counts frames into and out of the guest', async () => {
    const { net, link } = setup();
    const m = Buffer.from([8, 0, 0, 0, 0, 1, 0, 1]);
    m.writeUInt16BE(internetChecksum(m, 0, 8), 2);
    const frame = eth(0x0800, ipv4(GUEST, GATEWAY, 1, m));
    link.send(frame);
    await link.next();
    expect(net.stats).toMatchObject({ packetsOut: 1, bytesOut: frame.length, packetsIn: 1, bytesIn: frame.length, denied: 0 });
  });

  it('resets connections the new policy denies on setFilter', async () => {
    const { net, link } = setup();
    const { port } = await hostServer(() => {});
    await handshake(link, port, 40010);
    expect(net.flowCounts.tcp).toBe(1);
    net.setFilter(new EgressFilter({ default: 'deny', allow: [], deny: [] }, { hostAddresses: [ipv4ToInt('127.0.0.1')] }));
    const rst = (await link.next((f) => isTcp(40010)(f) && (f.tcp!.flags & RST) !== 0)).tcp!;
    expect(rst).toBeDefined();
    expect(net.flowCounts.tcp).toBe(0);
  });
});
