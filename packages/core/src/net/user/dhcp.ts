/*
 * A DHCP server for one client, for guests that run their own DHCP client
 * (the Roost agent configures eth0 statically). DISCOVER gets an OFFER,
 * REQUEST for the one address an ACK (anything else a NAK), INFORM an ACK
 * without a lease; RELEASE and DECLINE need no answer.
 */

export interface DhcpConfig {
  /** Our address (server identifier, router). Unsigned IPv4 values. */
  server: number;
  client: number;
  router: number;
  dns: number;
  prefix: number;
  mtu: number;
  leaseSeconds: number;
}

const BOOTP_MIN = 240;
const MAGIC = 0x63825363;
const DISCOVER = 1;
const OFFER = 2;
const REQUEST = 3;
const ACK = 5;
const NAK = 6;
const INFORM = 8;

/** The reply to a DHCP message from the guest (a UDP payload), or null when none is due or the message is malformed. */
export function dhcpReply(request: Buffer, config: DhcpConfig): Buffer | null {
  if (request.length < BOOTP_MIN || request[0] !== 1 || request[1] !== 1 || request[2] !== 6) return null;
  if (request.readUInt32BE(236) !== MAGIC) return null;
  let type = 0;
  let requested: number | undefined;
  let serverId: number | undefined;
  for (let p = BOOTP_MIN; p < request.length;) {
    const code = request[p]!;
    if (code === 255) break;
    if (code === 0) {
      p++;
      continue;
    }
    if (p + 1 >= request.length) return null;
    const len = request[p + 1]!;
    if (p + 2 + len > request.length) return null;
    if (code === 53 && len === 1) type = request[p + 2]!;
    else if (code === 50 && len === 4) requested = request.readUInt32BE(p + 2);
    else if (code === 54 && len === 4) serverId = request.readUInt32BE(p + 2);
    p += 2 + len;
  }
  const ciaddr = request.readUInt32BE(12);
  switch (type) {
    case DISCOVER:
      return build(request, config, OFFER, config.client, true);
    case REQUEST: {
      // A REQUEST naming another server is meant for it.
      if (serverId !== undefined && serverId !== config.server) return null;
      const wanted = requested ?? ciaddr;
      return wanted === config.client ? build(request, config, ACK, config.client, true) : build(request, config, NAK, 0, false);
    }
    case INFORM:
      return build(request, config, ACK, 0, false);
    default:
      return null;
  }
}

function build(request: Buffer, config: DhcpConfig, type: number, yiaddr: number, withLease: boolean): Buffer {
  const options: number[] = [53, 1, type, 54, 4, ...bytes(config.server)];
  if (type !== NAK) {
    if (withLease) {
      options.push(51, 4, ...bytes(config.leaseSeconds));
      options.push(58, 4, ...bytes(Math.floor(config.leaseSeconds / 2)));
      options.push(59, 4, ...bytes(Math.floor((config.leaseSeconds * 7) / 8)));
    }
    const mask = config.prefix === 0 ? 0 : (0xffffffff << (32 - config.prefix)) >>> 0;
    options.push(1, 4, ...bytes(mask));
    options.push(3, 4, ...bytes(config.router));
    options.push(6, 4, ...bytes(config.dns));
    options.push(26, 2, (config.mtu >> 8) & 0xff, config.mtu & 0xff);
  }
  options.push(255);
  // BOOTP replies are at least 300 bytes (some clients insist).
  const reply = Buffer.alloc(Math.max(300, BOOTP_MIN + options.length));
  reply[0] = 2; // BOOTREPLY
  reply[1] = 1;
  reply[2] = 6;
  request.copy(reply, 4, 4, 8); // xid
  request.copy(reply, 10, 10, 12); // flags
  if (type === ACK && !withLease) request.copy(reply, 12, 12, 16); // ciaddr, for INFORM
  reply.writeUInt32BE(yiaddr >>> 0, 16);
  request.copy(reply, 24, 24, 44); // giaddr, chaddr
  reply.writeUInt32BE(MAGIC, 236);
  Buffer.from(options).copy(reply, BOOTP_MIN);
  return reply;
}

function bytes(v: number): number[] {
  return [(v >>> 24) & 0xff, (v >>> 16) & 0xff, (v >>> 8) & 0xff, v & 0xff];
}
