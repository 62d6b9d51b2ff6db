import { createSocket, type Socket as UdpSocket } from 'node:dgram';
import { connect as netConnect } from 'node:net';
import type { Duplex } from 'node:stream';
import { intToIpv4, RoostError, type DeniedConnection, type NetworkStats } from '@roost/api';
import { answerDnsQuery, DnsLimit, type Resolve4 } from '../dns.js';
import { HOST_NAME, type EgressFilter } from '../policy.js';
import { BROADCAST, DNS, GATEWAY, GUEST, hostAddressOf, isRoutable, USER_NET } from './addressing.js';
import { onesComplementSum, pseudoHeaderSum } from './checksum.js';
import { dhcpReply } from './dhcp.js';
import { flowError, GuestTcpStream, HostSocketPeer, type FlowError } from './peers.js';
import { arpReply, icmpEchoReply, icmpUnreachable, parseArp, udpFrames } from './replies.js';
import { parseSynOptions, resetFor, TcpConnection, type TcpContext, type TcpSegment } from './tcp.js';
import {
  BROADCAST_MAC,
  ETH_HEADER,
  ETHERTYPE_ARP,
  ETHERTYPE_IPV4,
  FrameBuilder,
  FrameReader,
  l4ChecksumValid,
  LENGTH_PREFIX,
  MAX_FRAME,
  parseIpv4,
  parseMac,
  PROTO_ICMP,
  PROTO_TCP,
  PROTO_UDP,
  TCP_ACK,
  TCP_RST,
  TCP_SYN,
  type Ipv4View,
} from './wire.js';

/** How a UserNet is set up: the guest MAC it starts with, the egress filter, and hooks for DNS, refusals and logs. */
export interface UserNetOptions {
  /** The guest NIC's MAC, until a frame from the guest says otherwise (a restored copy may keep an old one). */
  guestMac: string;
  /** The egress policy. Its "host" must be 127.0.0.1 (see createUserNetFilter). */
  filter: EgressFilter;
  /** A-record resolver for the guest's DNS queries (default: the host's getaddrinfo). */
  resolve4?: Resolve4;
  /** A connection, datagram or DNS name the policy refused (counted in stats.denied too). */
  onDenied?: (denied: DeniedConnection) => void;
  /** Diagnostics (dropped links, host socket errors); default: nothing. */
  log?: (msg: string) => void;
  /** Timeout of host-side connects for the guest's connections, default 10 s. */
  connectTimeoutMs?: number;
  /** Timeout of connectTcp()'s handshake with the guest, default 5 s. */
  guestConnectTimeoutMs?: number;
  /** Where non-A/AAAA DNS queries go (default: the host's first nameserver); null: nowhere. Mainly for tests. */
  dnsUpstream?: { address: string; port: number } | null;
}

const MAX_TCP_FLOWS = 1024;
/** Host connects in progress at once: a SYN flood must not become a connect flood. */
const MAX_CONNECTING = 128;
const MAX_UDP_FLOWS = 256;
const MAX_GATEWAY_UDP_FLOWS = 1024;
const UDP_IDLE_MS = 60_000;
/** Buffer bytes of all TCP connections together in each direction, and the bounds of one connection's share. */
const TCP_TOTAL_BUFFER = 64 * 1024 * 1024;
const TCP_MAX_BUFFER = 2 * 1024 * 1024;
const TCP_MIN_BUFFER = 64 * 1024;
/** Past this many bytes queued on the link, connections stop sending data until it drains. */
const LINK_HIGH_WATER = 1024 * 1024;
const TICK_MS = 100;
/** How long a lone data segment from the guest waits for company before its ACK goes out. */
const DELAYED_ACK_MS = 10;
const EPHEMERAL_FIRST = 49152;

interface UdpNatFlow {
  key: string;
  socket: UdpSocket;
  guestPort: number;
  /** The destination as the guest sees it, and where the host socket sends. */
  remoteAddress: number;
  remotePort: number;
  hostAddress: string;
  lastActive: number;
}

/**
 * The user-mode network of one sandbox: a small TCP/IP stack on the host
 * that speaks Ethernet with the guest over QEMU's stream netdev and turns
 * the guest's TCP connections and UDP datagrams into host sockets, so the
 * egress policy is enforced on the host for every flow. The guest is
 * 10.0.2.15/24; 10.0.2.2 is the host (its 127.0.0.1, when the policy has a
 * `host` rule), 10.0.2.3 the DNS server. ARP, ICMP echo (gateway and DNS
 * addresses), DHCP and DNS are answered here. IP fragments from the guest
 * are dropped (its MTU is 65520, so only UDP datagrams over 65492 bytes
 * fragment); UDP datagrams to the guest that exceed the MTU are fragmented.
 */
export class UserNet {
  /** Ethernet frames and bytes into ("in") and out of the guest, and refusals of the policy. */
  readonly stats: NetworkStats = { bytesIn: 0, packetsIn: 0, bytesOut: 0, packetsOut: 0, denied: 0 };
  readonly #options: UserNetOptions;
  #filter: EgressFilter;
  readonly #frames: FrameBuilder;
  readonly #ctx: TcpContext;
  #link: Duplex | null = null;
  #linkListeners: { data: (c: Buffer) => void; drain: () => void; close: () => void; error: (e: Error) => void } | null = null;
  #linkWritable = true;
  #corked = false;
  #inBatch = false;
  readonly #reader = new FrameReader(MAX_FRAME);
  readonly #tcp = new Map<string, TcpConnection>();
  #connecting = 0;
  readonly #udp = new Map<string, UdpNatFlow>();
  readonly #gatewayUdp = new Map<number, { guestPort: number; onMessage: (data: Buffer) => void }>();
  readonly #waitingForLink = new Set<TcpConnection>();
  readonly #ackQueue = new Set<TcpConnection>();
  #ackFlushScheduled = false;
  readonly #delayedAcks = new Set<TcpConnection>();
  #delayedAckTimer: NodeJS.Timeout | null = null;
  readonly #dnsLimit = new DnsLimit(64);
  readonly #lifetime = new AbortController();
  /** Runs while there are flows (timers of TCP, idle UDP mappings). */
  #tick: NodeJS.Timeout | null = null;
  #lastUdpSweep = 0;
  #closed = false;

  constructor(options: UserNetOptions) {
    this.#options = options;
    this.#filter = options.filter;
    this.#frames = new FrameBuilder(parseMac(options.guestMac), parseMac(USER_NET.gatewayMac));
    this.#ctx = {
      frames: this.#frames,
      transmit: (frame) => this.#transmit(frame),
      linkWritable: () => this.#link !== null && this.#linkWritable,
      waitForLink: (conn) => void this.#waitingForLink.add(conn),
      scheduleAck: (conn, delayed) => this.#scheduleAck(conn, delayed === true),
      bufferBudget: () => Math.max(TCP_MIN_BUFFER, Math.min(TCP_MAX_BUFFER, Math.floor(TCP_TOTAL_BUFFER / Math.max(1, this.#tcp.size)))),
      release: (conn) => {
        if (this.#tcp.get(conn.key) === conn) this.#tcp.delete(conn.key);
        this.#waitingForLink.delete(conn);
        this.#ackQueue.delete(conn);
        this.#delayedAcks.delete(conn);
      },
      now: () => Date.now(),
    };
  }

  #ensureTick(): void {
    if (this.#tick !== null || this.#closed) return;
    this.#tick = setInterval(() => this.#guard('tick', () => this.#onTick()), TICK_MS);
    this.#tick.unref();
  }

  /**
   * Serves QEMU's `-netdev stream` connection: frames with a 4-byte
   * big-endian length prefix. A new attach replaces the old link, and the
   * flows of the old one are reset.
   */
  attach(link: Duplex): void {
    if (this.#closed) {
      link.destroy();
      return;
    }
    this.#detach('a new link was attached');
    const listeners = {
      data: (chunk: Buffer) => this.#guard('link data', () => this.#onLinkData(link, chunk)),
      drain: () => this.#guard('link drain', () => this.#onLinkDrain()),
      close: () =>
        this.#guard('link close', () => {
          if (this.#link === link) this.#detach('the link closed');
        }),
      error: (err: Error) => this.#log(`network link error: ${err.message}`),
    };
    this.#link = link;
    this.#linkListeners = listeners;
    this.#linkWritable = true;
    link.on('data', listeners.data);
    link.on('drain', listeners.drain);
    link.on('close', listeners.close);
    link.on('error', listeners.error);
  }

  /**
   * Opens a TCP connection from the gateway (10.0.2.2, a fresh port) to
   * the guest's `guestPort`, for port forwarding. The Duplex emits
   * 'connect' once the guest accepts; it fails with code ECONNREFUSED when
   * the guest refuses and ETIMEDOUT when it does not answer. Writes wait
   * while the guest's window is full; a slow reader shrinks the window the
   * guest sees. end() sends FIN; the guest's FIN ends the readable side.
   */
  connectTcp(guestPort: number): Duplex {
    const stream = new GuestTcpStream();
    if (this.#closed || this.#tcp.size >= MAX_TCP_FLOWS) {
      const why = this.#closed ? 'the sandbox network is closed' : `the sandbox has ${MAX_TCP_FLOWS} TCP connections open`;
      process.nextTick(() => stream.destroy(flowError('ECONNREFUSED', `cannot connect to guest port ${guestPort}: ${why}`)));
      return stream;
    }
    let port = EPHEMERAL_FIRST + Math.floor(Math.random() * (65536 - EPHEMERAL_FIRST));
    while (this.#tcp.has(TcpConnection.keyOf(guestPort, GATEWAY, port))) port = port === 65535 ? EPHEMERAL_FIRST : port + 1;
    const conn = new TcpConnection(this.#ctx, GUEST, guestPort, GATEWAY, port, USER_NET.mtu, 'syn-sent');
    conn.peer = stream;
    stream.conn = conn;
    stream.guestPort = guestPort;
    this.#tcp.set(conn.key, conn);
    this.#ensureTick();
    this.#guard('connectTcp', () => conn.startConnect(this.#options.guestConnectTimeoutMs ?? 5000));
    return stream;
  }

  /**
   * A UDP flow from the gateway (10.0.2.2, a fresh source port) to the
   * guest's `guestPort`: send() delivers a datagram, the guest's replies
   * to that source port go to onMessage.
   */
  openUdpFlow(guestPort: number, onMessage: (data: Buffer) => void): { send(data: Buffer): void; close(): void } {
    if (this.#gatewayUdp.size >= MAX_GATEWAY_UDP_FLOWS) {
      throw new RoostError('RESOURCE_EXHAUSTED', `the sandbox has ${MAX_GATEWAY_UDP_FLOWS} forwarded UDP flows open: close some first`);
    }
    let port = EPHEMERAL_FIRST + Math.floor(Math.random() * (65536 - EPHEMERAL_FIRST));
    while (this.#gatewayUdp.has(port)) port = port === 65535 ? EPHEMERAL_FIRST : port + 1;
    const flow = { guestPort, onMessage };
    this.#gatewayUdp.set(port, flow);
    return {
      send: (data: Buffer) =>
        this.#guard('udp flow send', () => {
          if (this.#gatewayUdp.get(port) === flow) this.#sendUdp(GATEWAY, port, GUEST, guestPort, data);
        }),
      close: () => {
        if (this.#gatewayUdp.get(port) === flow) this.#gatewayUdp.delete(port);
      },
    };
  }

  /**
   * Replaces the egress policy. The new filter takes over the addresses
   * the old one learned from DNS (for names it still allows); open
   * connections the new policy denies are reset.
   */
  setFilter(filter: EgressFilter): void {
    if (filter === this.#filter) return;
    filter.inheritLearned(this.#filter);
    this.#filter = filter;
    for (const conn of [...this.#tcp.values()]) {
      if (conn.peer instanceof GuestTcpStream) continue;
      const hostAddress = hostAddressOf(conn.remoteAddress);
      if (!filter.check(hostAddress, conn.remotePort, 'tcp').allowed) conn.abort('ECONNRESET');
    }
    for (const flow of [...this.#udp.values()]) {
      const hostAddress = hostAddressOf(flow.remoteAddress);
      if (!filter.check(hostAddress, flow.remotePort, 'udp').allowed) this.#closeUdpFlow(flow);
    }
  }

  /** The current egress filter. */
  get filter(): EgressFilter {
    return this.#filter;
  }

  /** Open flows (tests, metrics). */
  get flowCounts(): { tcp: number; udp: number } {
    return { tcp: this.#tcp.size, udp: this.#udp.size };
  }

  /** Resets every flow, closes the link and the host sockets. Idempotent. */
  close(): void {
    if (this.#closed) return;
    for (const conn of [...this.#tcp.values()]) conn.abort('ECONNRESET');
    this.#flushAcks();
    this.#closed = true;
    if (this.#tick !== null) clearInterval(this.#tick);
    this.#tick = null;
    if (this.#delayedAckTimer !== null) clearTimeout(this.#delayedAckTimer);
    this.#delayedAckTimer = null;
    this.#lifetime.abort();
    this.#detach('the network was closed');
    for (const flow of [...this.#udp.values()]) this.#closeUdpFlow(flow);
    this.#gatewayUdp.clear();
  }

  // ---- the link ---------------------------------------------------------------------

  /** Forgets the link and the flows of the guest behind it. */
  #detach(why: string): void {
    const link = this.#link;
    if (link === null) return;
    this.#log(`network link detached: ${why}`);
    for (const conn of [...this.#tcp.values()]) conn.drop('ECONNRESET');
    for (const flow of [...this.#udp.values()]) this.#closeUdpFlow(flow);
    this.#waitingForLink.clear();
    this.#ackQueue.clear();
    this.#delayedAcks.clear();
    this.#reader.reset();
    const listeners = this.#linkListeners!;
    link.off('data', listeners.data);
    link.off('drain', listeners.drain);
    link.off('close', listeners.close);
    // Keep an error listener: a late error must not become an uncaught exception.
    link.on('error', () => {});
    link.off('error', listeners.error);
    this.#link = null;
    this.#linkListeners = null;
    if (this.#corked) {
      this.#corked = false;
      link.uncork();
    }
    link.destroy();
  }

  #onLinkData(link: Duplex, chunk: Buffer): void {
    if (this.#link !== link) return;
    this.#inBatch = true;
    let tooLong: number | null;
    try {
      tooLong = this.#reader.push(chunk, (frame) => {
        this.#guard('frame', () => this.#onFrame(frame));
        return this.#link === link;
      });
    } finally {
      this.#inBatch = false;
      this.#flushAcks();
    }
    if (tooLong !== null) {
      this.#log(`network link sent a frame of ${tooLong} bytes (more than ${MAX_FRAME}): dropping the link`);
      this.#detach('a frame was too long');
    }
  }

  #onLinkDrain(): void {
    this.#linkWritable = true;
    const waiting = [...this.#waitingForLink];
    this.#waitingForLink.clear();
    for (const conn of waiting) {
      conn.output();
      if (!this.#linkWritable) break;
    }
  }

  #transmit(frame: Buffer): void {
    const link = this.#link;
    if (link === null || this.#closed) return;
    this.stats.packetsIn++;
    this.stats.bytesIn += frame.length - LENGTH_PREFIX;
    if (!this.#corked) {
      // Frames made in one turn of the event loop go out in one writev.
      this.#corked = true;
      link.cork();
      process.nextTick(() => {
        if (this.#corked && this.#link === link) {
          this.#corked = false;
          link.uncork();
        }
      });
    }
    // Stop sending data past our mark, but only when write() says so too: then 'drain' is sure to follow.
    if (!link.write(frame) && link.writableLength >= LINK_HIGH_WATER) this.#linkWritable = false;
  }

  #scheduleAck(conn: TcpConnection, delayed: boolean): void {
    conn.ackPending = true;
    if (delayed) {
      this.#delayedAcks.add(conn);
      if (this.#delayedAckTimer === null) {
        this.#delayedAckTimer = setTimeout(() => {
          this.#delayedAckTimer = null;
          const due = [...this.#delayedAcks];
          this.#delayedAcks.clear();
          this.#guard('delayed ack', () => {
            for (const c of due) c.flushAck();
          });
        }, DELAYED_ACK_MS);
      }
      return;
    }
    this.#ackQueue.add(conn);
    if (!this.#inBatch && !this.#ackFlushScheduled) {
      this.#ackFlushScheduled = true;
      setImmediate(() => {
        this.#ackFlushScheduled = false;
        this.#guard('ack flush', () => this.#flushAcks());
      });
    }
  }

  #flushAcks(): void {
    if (this.#ackQueue.size === 0) return;
    const queue = [...this.#ackQueue];
    this.#ackQueue.clear();
    for (const conn of queue) conn.flushAck();
  }

  // ---- frames from the guest ----------------------------------------------------------

  #onFrame(frame: Buffer): void {
    this.stats.packetsOut++;
    this.stats.bytesOut += frame.length;
    if (frame.length < ETH_HEADER) return;
    // Only frames to us (or broadcast): the guest is alone on this wire.
    const toUs = frame.compare(this.#frames.gatewayMac, 0, 6, 0, 6) === 0 || frame.compare(BROADCAST_MAC, 0, 6, 0, 6) === 0;
    if (!toUs) return;
    const ethertype = frame.readUInt16BE(12);
    if (ethertype === ETHERTYPE_ARP) this.#onArp(frame);
    else if (ethertype === ETHERTYPE_IPV4) this.#onIpv4(frame);
  }

  #learnGuestMac(frame: Buffer, macOffset: number): void {
    if (frame.compare(this.#frames.guestMac, 0, 6, macOffset, macOffset + 6) !== 0) {
      const mac = Buffer.from(frame.subarray(macOffset, macOffset + 6));
      if ((mac[0]! & 1) === 0) this.#frames.guestMac = mac;
    }
  }

  #onArp(frame: Buffer): void {
    const request = parseArp(frame);
    if (request === null) return;
    if (request.senderIp === GUEST) this.#learnGuestMac(frame, request.senderMacOffset);
    const reply = arpReply(this.#frames, frame, request);
    if (reply !== null) this.#transmit(reply);
  }

  #onIpv4(frame: Buffer): void {
    const ip = parseIpv4(frame, ETH_HEADER);
    if (ip === null) return;
    if (ip.src === GUEST) this.#learnGuestMac(frame, 6);
    else if (!(ip.src === 0 && ip.protocol === PROTO_UDP)) return; // not the guest: spoofed (0.0.0.0 is a DHCP client)
    if (ip.fragment) return;
    switch (ip.protocol) {
      case PROTO_TCP:
        this.#onTcp(frame, ip);
        return;
      case PROTO_UDP:
        this.#onUdp(frame, ip);
        return;
      case PROTO_ICMP:
        this.#onIcmp(frame, ip);
        return;
    }
  }

  // ---- ICMP -----------------------------------------------------------------------------

  #onIcmp(frame: Buffer, ip: Ipv4View): void {
    const reply = icmpEchoReply(this.#frames, frame, ip);
    if (reply !== null) this.#transmit(reply);
  }

  /** Destination unreachable (type 3) about the guest's packet: code 13 administratively prohibited, 1 host, 3 port unreachable. */
  #sendUnreachable(frame: Buffer, ip: Ipv4View, code: number): void {
    this.#transmit(icmpUnreachable(this.#frames, frame, ip, code));
  }

  #deny(protocol: 'tcp' | 'udp', address: number, port: number): void {
    this.stats.denied++;
    const report = this.#options.onDenied;
    if (report) this.#guard('onDenied', () => report({ protocol, address: intToIpv4(address), port }));
  }

  // ---- UDP ------------------------------------------------------------------------------

  #onUdp(frame: Buffer, ip: Ipv4View): void {
    const l4 = ip.l4Start;
    if (ip.l4End - l4 < 8) return;
    const udpLength = frame.readUInt16BE(l4 + 4);
    if (udpLength < 8 || l4 + udpLength > ip.l4End) return;
    if (frame.readUInt16BE(l4 + 6) !== 0) {
      const initial = pseudoHeaderSum(ip.src, ip.dst, PROTO_UDP, udpLength);
      if (onesComplementSum(frame, l4, l4 + udpLength, initial) !== 0xffff) return;
    }
    const srcPort = frame.readUInt16BE(l4);
    const dstPort = frame.readUInt16BE(l4 + 2);
    const payload = frame.subarray(l4 + 8, l4 + udpLength);
    if (dstPort === 67 && (ip.dst === BROADCAST || ip.dst === GATEWAY)) {
      this.#onDhcp(payload);
      return;
    }
    if (ip.src !== GUEST) return;
    if (ip.dst === DNS) {
      if (dstPort === 53) this.#onDns(srcPort, payload);
      else this.#sendUnreachable(frame, ip, 3);
      return;
    }
    if (ip.dst === GATEWAY) {
      const flow = this.#gatewayUdp.get(dstPort);
      if (flow !== undefined && flow.guestPort === srcPort) {
        const onMessage = flow.onMessage;
        const data = Buffer.from(payload);
        this.#guard('udp flow onMessage', () => onMessage(data));
        return;
      }
    }
    if (!isRoutable(ip.dst)) return;
    const hostAddress = hostAddressOf(ip.dst);
    if (!this.#filter.check(hostAddress, dstPort, 'udp').allowed) {
      this.#deny('udp', ip.dst, dstPort);
      this.#sendUnreachable(frame, ip, 13);
      return;
    }
    const flow = this.#udpFlow(srcPort, ip.dst, dstPort, hostAddress);
    flow.socket.send(payload, dstPort, flow.hostAddress, (err) => {
      if (err) this.#log(`udp send to ${flow.hostAddress}:${dstPort} failed: ${err.message}`);
    });
  }

  #udpFlow(guestPort: number, remoteAddress: number, remotePort: number, hostAddress: number): UdpNatFlow {
    const key = `${guestPort}:${remoteAddress}:${remotePort}`;
    const now = Date.now();
    const existing = this.#udp.get(key);
    if (existing !== undefined) {
      existing.lastActive = now;
      // Keep the Map in least-recently-used order for eviction.
      this.#udp.delete(key);
      this.#udp.set(key, existing);
      return existing;
    }
    if (this.#udp.size >= MAX_UDP_FLOWS) {
      const oldest = this.#udp.values().next();
      if (oldest.done !== true) this.#closeUdpFlow(oldest.value);
    }
    const socket = createSocket('udp4');
    const flow: UdpNatFlow = { key, socket, guestPort, remoteAddress, remotePort, hostAddress: intToIpv4(hostAddress), lastActive: now };
    socket.on('message', (msg, rinfo) =>
      this.#guard('udp reply', () => {
        // Only the peer the guest talks to may answer through this mapping.
        if (this.#udp.get(key) !== flow || rinfo.address !== flow.hostAddress || rinfo.port !== remotePort) return;
        flow.lastActive = Date.now();
        this.#sendUdp(remoteAddress, remotePort, GUEST, guestPort, msg);
      }),
    );
    socket.on('error', (err) => this.#log(`udp flow to ${flow.hostAddress}:${remotePort}: ${err.message}`));
    this.#udp.set(key, flow);
    this.#ensureTick();
    return flow;
  }

  #closeUdpFlow(flow: UdpNatFlow): void {
    if (this.#udp.get(flow.key) === flow) this.#udp.delete(flow.key);
    try {
      flow.socket.close();
    } catch {
      // already closed
    }
  }

  /** A UDP datagram to the guest (fragmented when it is larger than the MTU allows). */
  #sendUdp(src: number, srcPort: number, dst: number, dstPort: number, payload: Buffer): void {
    for (const frame of udpFrames(this.#frames, src, srcPort, dst, dstPort, payload)) this.#transmit(frame);
  }

  #onDhcp(payload: Buffer): void {
    const reply = dhcpReply(payload, {
      server: GATEWAY,
      client: GUEST,
      router: GATEWAY,
      dns: DNS,
      prefix: USER_NET.prefix,
      mtu: USER_NET.mtu,
      leaseSeconds: 86_400,
    });
    if (reply === null) return;
    if (payload.length >= 34) this.#learnGuestMacFromDhcp(payload);
    this.#sendUdp(GATEWAY, 67, BROADCAST, 68, reply);
  }

  #learnGuestMacFromDhcp(payload: Buffer): void {
    const mac = payload.subarray(28, 34);
    if ((mac[0]! & 1) === 0 && !mac.equals(this.#frames.guestMac)) this.#frames.guestMac = Buffer.from(mac);
  }

  #onDns(guestPort: number, query: Buffer): void {
    const filter = this.#filter;
    const data = Buffer.from(query);
    void answerDnsQuery(data, {
      filter,
      resolve4: this.#options.resolve4,
      hostName: { name: HOST_NAME, address: USER_NET.gateway },
      onDenied: (name) => {
        this.stats.denied++;
        const report = this.#options.onDenied;
        if (report) this.#guard('onDenied', () => report({ protocol: 'dns', name }));
      },
      signal: this.#lifetime.signal,
      limit: this.#dnsLimit,
      ...(this.#options.dnsUpstream !== undefined ? { upstream: this.#options.dnsUpstream } : {}),
    }).then((reply) => {
      if (reply !== null && !this.#closed) this.#guard('dns reply', () => this.#sendUdp(DNS, 53, GUEST, guestPort, reply));
    });
  }

  // ---- TCP -------------------------------------------------------------------------------

  #onTcp(frame: Buffer, ip: Ipv4View): void {
    const l4 = ip.l4Start;
    const length = ip.l4End - l4;
    if (length < 20) return;
    const dataOffset = (frame[l4 + 12]! >> 4) * 4;
    if (dataOffset < 20 || dataOffset > length) return;
    if (!l4ChecksumValid(frame, ip)) return;
    const guestPort = frame.readUInt16BE(l4);
    const remotePort = frame.readUInt16BE(l4 + 2);
    const flags = frame[l4 + 13]!;
    const seg: TcpSegment = {
      seq: frame.readUInt32BE(l4 + 4),
      ack: frame.readUInt32BE(l4 + 8),
      flags,
      window: frame.readUInt16BE(l4 + 14),
      payload: frame.subarray(l4 + dataOffset, ip.l4End),
    };
    const key = TcpConnection.keyOf(guestPort, ip.dst, remotePort);
    const conn = this.#tcp.get(key);
    const isSyn = (flags & (TCP_SYN | TCP_ACK | TCP_RST)) === TCP_SYN;
    if (flags & TCP_SYN) Object.assign(seg, parseSynOptions(frame, l4 + 20, l4 + dataOffset));
    if (conn !== undefined) {
      if (!isSyn || conn.peer instanceof GuestTcpStream || conn.acceptsSyn(seg.seq)) {
        conn.onSegment(seg);
        return;
      }
      // A new SYN (another ISN) on a port we still track: the guest has moved on; so do we.
      conn.abort('ECONNRESET');
    }
    const reset = () => {
      const rst = resetFor(this.#frames, {
        guestAddress: GUEST,
        guestPort,
        remoteAddress: ip.dst,
        remotePort,
        seq: seg.seq,
        ack: seg.ack,
        flags,
        length: seg.payload.length,
      });
      if (rst !== null) this.#transmit(rst);
    };
    if (!isSyn) {
      reset();
      return;
    }
    if (!isRoutable(ip.dst)) {
      if (ip.dst === DNS) reset();
      return;
    }
    const hostAddress = hostAddressOf(ip.dst);
    if (!this.#filter.check(hostAddress, remotePort, 'tcp').allowed) {
      this.#deny('tcp', ip.dst, remotePort);
      this.#sendUnreachable(frame, ip, 13);
      return;
    }
    if (this.#tcp.size >= MAX_TCP_FLOWS || this.#connecting >= MAX_CONNECTING) {
      this.#log(`refusing a TCP connection to ${intToIpv4(ip.dst)}:${remotePort}: ${this.#tcp.size} connections open, ${this.#connecting} connecting`);
      reset();
      return;
    }
    this.#openOutbound(frame, ip, seg, guestPort, remotePort, hostAddress);
  }

  #openOutbound(frame: Buffer, ip: Ipv4View, seg: TcpSegment, guestPort: number, remotePort: number, hostAddress: number): void {
    const conn = new TcpConnection(this.#ctx, GUEST, guestPort, ip.dst, remotePort, USER_NET.mtu, 'connecting');
    conn.acceptSyn(seg);
    this.#tcp.set(conn.key, conn);
    this.#ensureTick();
    this.#connecting++;
    // What an ICMP error about the SYN must quote: its IP header and first 8 bytes.
    const synHead = Buffer.from(frame.subarray(ip.ipStart, Math.min(ip.l4End, ip.l4Start + 8)));
    const host = intToIpv4(hostAddress);
    const socket = netConnect({ host, port: remotePort, allowHalfOpen: true });
    const peer = new HostSocketPeer(conn, socket, (msg) => this.#log(msg));
    conn.peer = peer;
    let connecting = true;
    const settle = () => {
      if (!connecting) return false;
      connecting = false;
      clearTimeout(timer);
      this.#connecting--;
      return true;
    };
    const timer = setTimeout(() => {
      if (conn.state === 'connecting') socket.destroy(flowError('ETIMEDOUT', `connect to ${host}:${remotePort} timed out`));
    }, this.#options.connectTimeoutMs ?? 10_000);
    socket.once('connect', () =>
      this.#guard('tcp connect', () => {
        if (!settle() || conn.state !== 'connecting') return;
        socket.setNoDelay(true);
        conn.hostConnected();
      }),
    );
    socket.on('error', (err: FlowError) =>
      this.#guard('tcp socket error', () => {
        if (!settle()) {
          peer.onSocketError(err);
          return;
        }
        if (conn.state !== 'connecting') return;
        // The guest learns the real outcome: refused -> RST; unreachable or silent -> ICMP.
        if (this.#link !== null) {
          if (err.code === 'ECONNREFUSED') {
            const rst = resetFor(this.#frames, {
              guestAddress: GUEST,
              guestPort,
              remoteAddress: ip.dst,
              remotePort,
              seq: seg.seq,
              ack: 0,
              flags: TCP_SYN,
              length: 0,
            });
            if (rst !== null) this.#transmit(rst);
          } else {
            const code = err.code === 'ENETUNREACH' ? 0 : 1;
            const view: Ipv4View = { ...ip, ipStart: 0, l4Start: ip.l4Start - ip.ipStart, l4End: synHead.length };
            this.#sendUnreachable(synHead, view, code);
          }
        }
        conn.drop(err.code === 'ECONNREFUSED' ? 'ECONNREFUSED' : 'ETIMEDOUT');
      }),
    );
    socket.on('close', () =>
      this.#guard('tcp socket close', () => {
        settle();
        peer.onSocketClose();
      }),
    );
  }

  // ---- timers -----------------------------------------------------------------------

  #onTick(): void {
    const now = Date.now();
    for (const conn of this.#tcp.values()) conn.onTick(now);
    if (now - this.#lastUdpSweep >= 1000) {
      this.#lastUdpSweep = now;
      for (const flow of [...this.#udp.values()]) {
        if (now - flow.lastActive >= UDP_IDLE_MS) this.#closeUdpFlow(flow);
      }
    }
    this.#flushAcks();
    if (this.#tcp.size === 0 && this.#udp.size === 0 && this.#tick !== null) {
      clearInterval(this.#tick);
      this.#tick = null;
    }
  }

  #guard(what: string, fn: () => void): void {
    try {
      fn();
    } catch (err) {
      this.#log(`user-mode network: ${what} failed: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}`);
    }
  }

  #log(msg: string): void {
    try {
      this.#options.log?.(msg);
    } catch {
      // a logger must not take the stack down
    }
  }
}
