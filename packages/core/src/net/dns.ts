import { createSocket } from 'node:dgram';
import { getServers, promises as dnsPromises } from 'node:dns';
import { ipv4ToInt, isIpv4 } from '@roost/api';
import { HOST_NAME, type EgressFilter } from './policy.js';

/*
 * The sandbox's DNS server: answers A queries through the host's resolver
 * (so /etc/hosts works) subject to the egress policy, AAAA with nothing
 * (sandboxes have IPv4 only), and forwards other types to the host's
 * nameserver when the policy's default is allow. Shared by user mode
 * (10.0.2.3:53) and bridge mode (the gateway's port 53).
 */

/** An A record a resolver found, TTL in seconds. */
export interface ResolvedAddress {
  address: string;
  ttl: number;
}

/** Resolves a name to IPv4 addresses. Rejects with an error whose `code` is ENOTFOUND (no such name) or ENODATA (no A records) for those outcomes. */
export type Resolve4 = (name: string) => Promise<ResolvedAddress[]>;

/** Counts one caller's (one sandbox's) lookups in flight, so a guest cannot queue unbounded work on the host. */
export class DnsLimit {
  inFlight = 0;
  constructor(readonly max = 64) {}
}

export interface AnswerDnsOptions {
  filter: EgressFilter;
  /** Default: the host's getaddrinfo (dns.lookup, all IPv4 addresses) with a TTL of 60 s. */
  resolve4?: Resolve4;
  /** The name of the host and the address the guest reaches it at (answered only when a `host` rule allows it). */
  hostName?: { name: typeof HOST_NAME; address: string };
  /** Called with a name the policy does not let the sandbox resolve (it gets NXDOMAIN). */
  onDenied?: (name: string) => void;
  /** Aborting makes the call resolve to null (nothing to send). */
  signal?: AbortSignal;
  /** This caller's in-flight budget; past it queries get SERVFAIL. Default: a budget shared by every caller that passes none. */
  limit?: DnsLimit;
  /** Where to forward non-A/AAAA queries (default: the host's first IPv4 nameserver); null: never forward. */
  upstream?: { address: string; port: number } | null;
  /** Forwarding timeout, default 2000 ms. */
  forwardTimeoutMs?: number;
}

const TYPE_A = 1;
const TYPE_AAAA = 28;
const CLASS_IN = 1;
const RCODE_NOERROR = 0;
const RCODE_SERVFAIL = 2;
const RCODE_NXDOMAIN = 3;
const RCODE_NOTIMP = 4;
const RCODE_REFUSED = 5;
/** Without EDNS a UDP answer must fit in 512 bytes; extra addresses are left off rather than setting TC. */
const MAX_UDP_ANSWER = 512;
const DEFAULT_TTL_S = 60;
const MAX_TTL_S = 86_400;

const sharedLimit = new DnsLimit();

interface DnsQuestion {
  id: number;
  flags: number;
  opcode: number;
  /** Lower-case, no trailing dot; '' for the root. */
  name: string;
  /** False when a label holds bytes a host name cannot (answered NXDOMAIN, never passed to a resolver). */
  nameIsValid: boolean;
  type: number;
  class: number;
  /** Offset just past the question. */
  end: number;
}

/**
 * Answers one DNS query (a UDP payload). Resolves to the response, or null
 * when there is nothing to send back (not a well-formed query with exactly
 * one question, or aborted). Never throws, whatever the bytes.
 */
export async function answerDnsQuery(query: Buffer, options: AnswerDnsOptions): Promise<Buffer | null> {
  try {
    return await answer(query, options);
  } catch {
    return null;
  }
}

async function answer(query: Buffer, options: AnswerDnsOptions): Promise<Buffer | null> {
  const q = parseQuery(query);
  if (q === null || options.signal?.aborted === true) return null;
  if (q.opcode !== 0) return respond(query, q, RCODE_NOTIMP);
  if (!q.nameIsValid) return respond(query, q, RCODE_NXDOMAIN);
  const { filter } = options;
  if (!filter.allowsName(q.name)) {
    options.onDenied?.(q.name);
    return respond(query, q, RCODE_NXDOMAIN);
  }
  if (q.name === HOST_NAME || q.name.endsWith('.roost.internal') || q.name === 'roost.internal') {
    // Our own zone: never asked of the host's resolver.
    if (q.name !== HOST_NAME || options.hostName === undefined) return respond(query, q, RCODE_NXDOMAIN);
    if (q.type !== TYPE_A || q.class !== CLASS_IN) return respond(query, q, RCODE_NOERROR);
    return respond(query, q, RCODE_NOERROR, [{ address: ipv4ToInt(options.hostName.address), ttl: DEFAULT_TTL_S }]);
  }
  const forwardable = filter.policy.default === 'allow';
  if (q.class !== CLASS_IN || (q.type !== TYPE_A && q.type !== TYPE_AAAA)) {
    return forwardable ? withLimit(options, query, q, () => forward(query, q, options)) : respond(query, q, RCODE_REFUSED);
  }
  if (q.type === TYPE_AAAA || q.name === '') return respond(query, q, q.name === '' ? RCODE_NXDOMAIN : RCODE_NOERROR);
  return withLimit(options, query, q, () => resolveA(query, q, options));
}

async function withLimit(options: AnswerDnsOptions, query: Buffer, q: DnsQuestion, work: () => Promise<Buffer | null>): Promise<Buffer | null> {
  const limit = options.limit ?? sharedLimit;
  if (limit.inFlight >= limit.max) return respond(query, q, RCODE_SERVFAIL);
  limit.inFlight++;
  try {
    return await untilAborted(work(), options.signal);
  } finally {
    limit.inFlight--;
  }
}

async function resolveA(query: Buffer, q: DnsQuestion, options: AnswerDnsOptions): Promise<Buffer> {
  const resolve4 = options.resolve4 ?? lookupHost;
  let found: ResolvedAddress[];
  try {
    found = await resolve4(q.name);
  } catch (err) {
    const code = (err as { code?: unknown } | null)?.code;
    if (code === 'ENOTFOUND') return respond(query, q, RCODE_NXDOMAIN);
    if (code === 'ENODATA') return respond(query, q, RCODE_NOERROR);
    return respond(query, q, RCODE_SERVFAIL);
  }
  const room = Math.max(0, Math.floor((MAX_UDP_ANSWER - q.end) / 16));
  const answers: AnswerRecord[] = [];
  for (const r of found) {
    if (answers.length >= room) break;
    if (typeof r?.address !== 'string' || !isIpv4(r.address)) continue;
    const address = ipv4ToInt(r.address);
    if (answers.some((a) => a.address === address)) continue;
    const ttl = Number.isFinite(r.ttl) ? Math.min(MAX_TTL_S, Math.max(0, Math.floor(r.ttl))) : DEFAULT_TTL_S;
    answers.push({ address, ttl });
  }
  if (answers.length > 0) {
    options.filter.learn(
      q.name,
      answers.map((a) => a.address),
      Math.min(...answers.map((a) => a.ttl)),
    );
  }
  return respond(query, q, RCODE_NOERROR, answers);
}

/**
 * getaddrinfo runs on libuv's thread pool (4 threads by default), which the
 * process's file system work shares: at most this many guest lookups hold a
 * thread at once, process-wide, so guests that flood a slow resolver cannot
 * stall the daemon's disk I/O. The rest wait here (each sandbox's DnsLimit
 * bounds how many).
 */
const MAX_POOL_LOOKUPS = 2;
let poolLookups = 0;
const waitingLookups: Array<() => void> = [];

async function lookupHost(name: string): Promise<ResolvedAddress[]> {
  // A finishing lookup hands its slot straight to the next waiter, so the count never overshoots.
  if (poolLookups >= MAX_POOL_LOOKUPS) await new Promise<void>((resolve) => waitingLookups.push(resolve));
  else poolLookups++;
  try {
    const found = await dnsPromises.lookup(name, { family: 4, all: true });
    return found.map((a) => ({ address: a.address, ttl: DEFAULT_TTL_S }));
  } finally {
    const next = waitingLookups.shift();
    if (next) next();
    else poolLookups--;
  }
}

/** The host's first IPv4 nameserver (`dns.getServers()` writes `a.b.c.d` or `a.b.c.d:port`). */
function defaultUpstream(): { address: string; port: number } | null {
  for (const server of getServers()) {
    const m = /^(\d+\.\d+\.\d+\.\d+)(?::(\d+))?$/.exec(server);
    if (m && isIpv4(m[1]!)) return { address: m[1]!, port: m[2] === undefined ? 53 : Number(m[2]) };
  }
  return null;
}

/** Sends the raw query to the upstream nameserver; its answer goes back as is (SERVFAIL when none comes in time). */
async function forward(query: Buffer, q: DnsQuestion, options: AnswerDnsOptions): Promise<Buffer> {
  const upstream = options.upstream === undefined ? defaultUpstream() : options.upstream;
  if (upstream === null) return respond(query, q, RCODE_SERVFAIL);
  const timeoutMs = options.forwardTimeoutMs ?? 2000;
  const reply = await new Promise<Buffer | null>((resolve) => {
    const socket = createSocket('udp4');
    let settled = false;
    const finish = (result: Buffer | null) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      options.signal?.removeEventListener('abort', onAbort);
      try {
        socket.close();
      } catch {
        // already closed
      }
      resolve(result);
    };
    const onAbort = () => finish(null);
    const timer = setTimeout(() => finish(null), timeoutMs);
    options.signal?.addEventListener('abort', onAbort, { once: true });
    socket.on('error', () => finish(null));
    socket.on('message', (msg, rinfo) => {
      if (rinfo.address !== upstream.address || rinfo.port !== upstream.port) return;
      if (msg.length < 12 || msg.readUInt16BE(0) !== q.id || (msg[2]! & 0x80) === 0) return;
      finish(msg);
    });
    socket.send(query, upstream.port, upstream.address, (err) => {
      if (err) finish(null);
    });
  });
  return reply ?? respond(query, q, RCODE_SERVFAIL);
}

function untilAborted<T>(work: Promise<T>, signal: AbortSignal | undefined): Promise<T | null> {
  if (signal === undefined) return work;
  if (signal.aborted) return Promise.resolve(null);
  return new Promise<T | null>((resolve, reject) => {
    const onAbort = () => resolve(null);
    signal.addEventListener('abort', onAbort, { once: true });
    work.then(
      (v) => {
        signal.removeEventListener('abort', onAbort);
        resolve(v);
      },
      (e: unknown) => {
        signal.removeEventListener('abort', onAbort);
        reject(e instanceof Error ? e : new Error(String(e)));
      },
    );
  });
}

/** Parses a query with exactly one question; null for anything else (responses, truncated or compressed questions, junk). */
function parseQuery(buf: Buffer): DnsQuestion | null {
  if (buf.length < 12 || buf.length > 65535) return null;
  const flags = buf.readUInt16BE(2);
  if ((flags & 0x8000) !== 0) return null;
  // One question, no answers; additional records (an EDNS OPT) are allowed and not echoed.
  if (buf.readUInt16BE(4) !== 1 || buf.readUInt16BE(6) !== 0) return null;
  const labels: string[] = [];
  let valid = true;
  let pos = 12;
  let wireLength = 1;
  for (;;) {
    if (pos >= buf.length) return null;
    const len = buf[pos]!;
    pos++;
    if (len === 0) break;
    // 0x40.. are compression pointers and reserved kinds: not in a query's question.
    if (len > 63) return null;
    wireLength += len + 1;
    if (wireLength > 255 || pos + len > buf.length) return null;
    const label = buf.toString('latin1', pos, pos + len).toLowerCase();
    if (!/^[a-z0-9_-]+$/.test(label)) valid = false;
    labels.push(label);
    pos += len;
  }
  if (pos + 4 > buf.length) return null;
  return {
    id: buf.readUInt16BE(0),
    flags,
    opcode: (flags >> 11) & 0xf,
    name: labels.join('.'),
    nameIsValid: valid,
    type: buf.readUInt16BE(pos),
    class: buf.readUInt16BE(pos + 2),
    end: pos + 4,
  };
}

interface AnswerRecord {
  address: number;
  ttl: number;
}

function respond(query: Buffer, q: DnsQuestion, rcode: number, answers: AnswerRecord[] = []): Buffer {
  const out = Buffer.alloc(q.end + answers.length * 16);
  out.writeUInt16BE(q.id, 0);
  // QR, the query's opcode and RD, RA (we recurse), rcode.
  out.writeUInt16BE(0x8000 | (q.opcode << 11) | (q.flags & 0x0100) | 0x0080 | rcode, 2);
  out.writeUInt16BE(1, 4);
  out.writeUInt16BE(answers.length, 6);
  query.copy(out, 12, 12, q.end);
  let pos = q.end;
  for (const a of answers) {
    out.writeUInt16BE(0xc00c, pos); // name: pointer to the question's
    out.writeUInt16BE(TYPE_A, pos + 2);
    out.writeUInt16BE(CLASS_IN, pos + 4);
    out.writeUInt32BE(a.ttl, pos + 6);
    out.writeUInt16BE(4, pos + 10);
    out.writeUInt32BE(a.address >>> 0, pos + 12);
    pos += 16;
  }
  return out;
}
