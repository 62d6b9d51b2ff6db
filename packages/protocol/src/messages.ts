import { ErrorCode, Fd, MAX_ENTROPY, MAX_NONCE, NET_CONFIG_LEN, MAX_PAYLOAD, MessageType, Tag } from './constants.js';
import { ProtocolError } from './errors.js';
import { encodeFrame } from './frame.js';
import { TlvReader, TlvWriter } from './tlv.js';

/** HELLO as the host sends it. */
export interface HostHello {
  version: number;
  flags: number;
  timeNs: bigint;
  entropy: Uint8Array;
  nonce: Uint8Array;
  /** The guest's network (NET_CONFIG_LEN bytes, see encodeNetConfig); absent: no NIC to configure. */
  net?: Uint8Array | undefined;
}

/** HELLO as the agent answers it. */
export interface AgentHello {
  version: number;
  agentVersion: string;
  maxPayload: number;
  nonce: Buffer;
  /** Capability bits; undefined when the agent sent no CAPABILITIES (one older than the TLV). */
  capabilities?: number | undefined;
}

/** An EXEC request. */
export interface ExecRequest {
  args: string[];
  env?: string[];
  cwd?: string;
  user?: string;
  pty?: boolean;
  rows?: number;
  cols?: number;
  timeoutMs?: number;
  stdin?: boolean;
  window?: number;
}

/**
 * A CALL request: one of the agent's built-in file operations
 * (docs/PROTOCOL.md, "Calls"). `flags` are CallFlags bits.
 */
export interface CallRequest {
  op: string;
  args: string[];
  user?: string;
  cwd?: string;
  stdin?: boolean;
  window?: number;
  timeoutMs?: number;
  mode?: number;
  flags?: number;
  depth?: number;
  size?: bigint;
}

/** How an exec ended. Exactly one of exitCode and signal is set. */
export interface ExecExit {
  exitCode: number | null;
  signal: number | null;
  timedOut: boolean;
}

export interface WireError {
  code: number;
  message: string;
}

/**
 * The agent's answer to FREEZE or THAW: `errno` 0 on success, else the Linux
 * errno (EOPNOTSUPP for a FREEZE when the sandbox has no disk to freeze) and
 * a `message` saying what failed.
 */
export interface FreezeResult {
  errno: number;
  message?: string;
}

// ---- encoders ---------------------------------------------------------------

export function encodeHostHello(h: HostHello): Buffer {
  if (h.entropy.length > MAX_ENTROPY) throw new RangeError(`entropy over ${MAX_ENTROPY} bytes`);
  if (h.nonce.length > MAX_NONCE) throw new RangeError(`nonce over ${MAX_NONCE} bytes`);
  const tlv = new TlvWriter()
    .u32(Tag.VERSION, h.version)
    .u32(Tag.FLAGS, h.flags)
    .u64(Tag.TIME_NS, h.timeNs)
    .bytes(Tag.ENTROPY, h.entropy)
    .bytes(Tag.NONCE, h.nonce);
  if (h.net) {
    if (h.net.length !== NET_CONFIG_LEN) throw new RangeError(`network configuration of ${h.net.length} bytes, not ${NET_CONFIG_LEN}`);
    tlv.bytes(Tag.NET, h.net);
  }
  return encodeFrame(0, MessageType.HELLO, tlv.finish());
}

/** The guest's eth0 as HELLO's NET carries it. Addresses are dotted quads, the MAC `aa:bb:cc:dd:ee:ff`. */
export interface NetConfig {
  mac: string;
  mtu: number;
  address: string;
  prefix: number;
  gateway: string;
  dns: string;
}

export function encodeNetConfig(c: NetConfig): Buffer {
  const b = Buffer.alloc(NET_CONFIG_LEN);
  const mac = c.mac.split(':').map((x) => parseInt(x, 16));
  if (mac.length !== 6 || mac.some((x) => !(x >= 0 && x <= 255))) throw new RangeError(`bad MAC ${c.mac}`);
  b.set(mac, 0);
  b.writeUInt16BE(c.mtu, 6);
  const quad = (s: string, at: number) => {
    const o = s.split('.').map(Number);
    if (o.length !== 4 || o.some((x) => !Number.isInteger(x) || x < 0 || x > 255)) throw new RangeError(`bad IPv4 address ${s}`);
    b.set(o, at);
  };
  quad(c.address, 8);
  b.writeUInt8(c.prefix, 12);
  quad(c.gateway, 13);
  quad(c.dns, 17);
  return b;
}

export function encodeAgentHello(h: AgentHello): Buffer {
  const tlv = new TlvWriter()
    .u32(Tag.VERSION, h.version)
    .string(Tag.AGENT_VERSION, h.agentVersion)
    .u32(Tag.MAX_PAYLOAD, h.maxPayload)
    .bytes(Tag.NONCE, h.nonce);
  if (h.capabilities !== undefined) tlv.u32(Tag.CAPABILITIES, h.capabilities);
  return encodeFrame(0, MessageType.HELLO, tlv.finish());
}

export function encodeError(stream: number, e: WireError): Buffer {
  return encodeFrame(stream, MessageType.ERROR, new TlvWriter().u32(Tag.CODE, e.code).string(Tag.MESSAGE, e.message).finish());
}

/** Encodes EXEC; throws RangeError when argv + env do not fit one frame. */
export function encodeExec(stream: number, r: ExecRequest): Buffer {
  if (r.args.length === 0) throw new RangeError('exec needs at least one argument');
  const tlv = new TlvWriter();
  for (const a of r.args) tlv.string(Tag.ARG, a);
  for (const e of r.env ?? []) tlv.string(Tag.ENV, e);
  if (r.cwd !== undefined) tlv.string(Tag.CWD, r.cwd);
  if (r.user !== undefined) tlv.string(Tag.USER, r.user);
  if (r.pty) tlv.u32(Tag.PTY, 1);
  if (r.rows !== undefined) tlv.u32(Tag.ROWS, r.rows);
  if (r.cols !== undefined) tlv.u32(Tag.COLS, r.cols);
  if (r.timeoutMs !== undefined) tlv.u32(Tag.TIMEOUT_MS, r.timeoutMs);
  tlv.u32(Tag.STDIN, r.stdin ? 1 : 0);
  if (r.window !== undefined) tlv.u32(Tag.WINDOW, r.window);
  if (tlv.size > MAX_PAYLOAD) throw new RangeError(`command, arguments and environment take ${tlv.size} bytes; at most ${MAX_PAYLOAD} fit`);
  return encodeFrame(stream, MessageType.EXEC, tlv.finish());
}

/** Encodes CALL; throws RangeError when the request does not fit one frame. */
export function encodeCall(stream: number, r: CallRequest): Buffer {
  if (r.op.length === 0) throw new RangeError('a call needs an operation');
  const tlv = new TlvWriter().string(Tag.OP, r.op);
  for (const a of r.args) tlv.string(Tag.ARG, a);
  if (r.user !== undefined) tlv.string(Tag.USER, r.user);
  if (r.cwd !== undefined) tlv.string(Tag.CWD, r.cwd);
  tlv.u32(Tag.STDIN, r.stdin ? 1 : 0);
  if (r.window !== undefined) tlv.u32(Tag.WINDOW, r.window);
  if (r.timeoutMs !== undefined) tlv.u32(Tag.TIMEOUT_MS, r.timeoutMs);
  if (r.mode !== undefined) tlv.u32(Tag.MODE, r.mode);
  if (r.flags !== undefined) tlv.u32(Tag.CALL_FLAGS, r.flags);
  if (r.depth !== undefined) tlv.u32(Tag.DEPTH, r.depth);
  if (r.size !== undefined) tlv.u64(Tag.SIZE, r.size);
  if (tlv.size > MAX_PAYLOAD) throw new RangeError(`the call's operands take ${tlv.size} bytes; at most ${MAX_PAYLOAD} fit`);
  return encodeFrame(stream, MessageType.CALL, tlv.finish());
}

export function encodeStarted(stream: number, pid: number, stdinWindow: number): Buffer {
  return encodeFrame(stream, MessageType.STARTED, new TlvWriter().u32(Tag.PID, pid).u32(Tag.STDIN_WINDOW, stdinWindow).finish());
}

export function encodeExit(stream: number, e: ExecExit): Buffer {
  const tlv = new TlvWriter();
  if (e.exitCode !== null) tlv.u32(Tag.EXIT_CODE, e.exitCode);
  if (e.signal !== null) tlv.u32(Tag.EXIT_SIGNAL, e.signal);
  if (e.timedOut) tlv.u32(Tag.TIMED_OUT, 1);
  return encodeFrame(stream, MessageType.EXIT, tlv.finish());
}

/** Encodes DATA; `data` must be at most MAX_PAYLOAD - 1 bytes. */
export function encodeData(stream: number, fd: Fd, data: Uint8Array): Buffer {
  const p = Buffer.allocUnsafe(1 + data.length);
  p[0] = fd;
  p.set(data, 1);
  return encodeFrame(stream, MessageType.DATA, p);
}

export function encodeEof(stream: number, fd: Fd): Buffer {
  return encodeFrame(stream, MessageType.EOF, Buffer.of(fd));
}

export function encodeCredit(stream: number, fd: Fd, bytes: number): Buffer {
  const p = Buffer.allocUnsafe(5);
  p[0] = fd;
  p.writeUInt32BE(bytes, 1);
  return encodeFrame(stream, MessageType.CREDIT, p);
}

export function encodeSignal(stream: number, signo: number): Buffer {
  const p = Buffer.allocUnsafe(4);
  p.writeUInt32BE(signo);
  return encodeFrame(stream, MessageType.SIGNAL, p);
}

export function encodeResize(stream: number, rows: number, cols: number): Buffer {
  const p = Buffer.allocUnsafe(4);
  p.writeUInt16BE(rows, 0);
  p.writeUInt16BE(cols, 2);
  return encodeFrame(stream, MessageType.RESIZE, p);
}

export function encodePing(payload: Uint8Array): Buffer {
  return encodeFrame(0, MessageType.PING, payload);
}

export function encodePoweroff(): Buffer {
  return encodeFrame(0, MessageType.POWEROFF);
}

/** FREEZE (host → agent): sync and freeze the sandbox's disk before a snapshot. */
export function encodeFreeze(): Buffer {
  return encodeFrame(0, MessageType.FREEZE);
}

/** THAW (host → agent): thaw the disk after a snapshot. */
export function encodeThaw(): Buffer {
  return encodeFrame(0, MessageType.THAW);
}

/** The agent's answer to FREEZE or THAW: a frame of the same type on stream 0. */
export function encodeFreezeResult(type: typeof MessageType.FREEZE | typeof MessageType.THAW, r: FreezeResult): Buffer {
  const tlv = new TlvWriter().u32(Tag.ERRNO, r.errno);
  if (r.message !== undefined) tlv.string(Tag.MESSAGE, r.message);
  return encodeFrame(0, type, tlv.finish());
}

// ---- decoders (every one validates; a bad payload throws ProtocolError) -----

export function decodeAgentHello(payload: Uint8Array): AgentHello {
  const r = new TlvReader(payload);
  const version = r.u32(Tag.VERSION);
  if (version === undefined) throw new ProtocolError('HELLO without VERSION');
  return {
    version,
    agentVersion: r.string(Tag.AGENT_VERSION, 256) ?? 'unknown',
    maxPayload: r.u32(Tag.MAX_PAYLOAD) ?? MAX_PAYLOAD,
    nonce: r.bytes(Tag.NONCE, MAX_NONCE) ?? Buffer.alloc(0),
    capabilities: r.u32(Tag.CAPABILITIES),
  };
}

export function decodeHostHello(payload: Uint8Array): HostHello {
  const r = new TlvReader(payload);
  const version = r.u32(Tag.VERSION);
  if (version === undefined) throw new ProtocolError('HELLO without VERSION');
  return {
    version,
    flags: r.u32(Tag.FLAGS) ?? 0,
    timeNs: r.u64(Tag.TIME_NS) ?? 0n,
    entropy: r.bytes(Tag.ENTROPY, MAX_ENTROPY) ?? Buffer.alloc(0),
    nonce: r.bytes(Tag.NONCE, MAX_NONCE) ?? Buffer.alloc(0),
    net: r.bytes(Tag.NET, NET_CONFIG_LEN),
  };
}

export function decodeError(payload: Uint8Array): WireError {
  const r = new TlvReader(payload);
  return { code: r.u32(Tag.CODE) ?? ErrorCode.INTERNAL, message: r.string(Tag.MESSAGE, 4096) ?? '' };
}

/** The payload of the agent's FREEZE or THAW answer. */
export function decodeFreezeResult(payload: Uint8Array): FreezeResult {
  const r = new TlvReader(payload);
  const errno = r.u32(Tag.ERRNO);
  if (errno === undefined) throw new ProtocolError('FREEZE/THAW answer without ERRNO');
  const message = r.string(Tag.MESSAGE, 4096);
  return message === undefined ? { errno } : { errno, message };
}

export function decodeExec(payload: Uint8Array): ExecRequest {
  const r = new TlvReader(payload);
  const args = r.strings(Tag.ARG);
  if (args.length === 0) throw new ProtocolError('EXEC without ARG');
  const out: ExecRequest = { args, env: r.strings(Tag.ENV), stdin: r.u32(Tag.STDIN) === 1, pty: r.u32(Tag.PTY) === 1 };
  const cwd = r.string(Tag.CWD);
  if (cwd !== undefined) out.cwd = cwd;
  const user = r.string(Tag.USER);
  if (user !== undefined) out.user = user;
  const rows = r.u32(Tag.ROWS);
  if (rows !== undefined) out.rows = rows;
  const cols = r.u32(Tag.COLS);
  if (cols !== undefined) out.cols = cols;
  const timeoutMs = r.u32(Tag.TIMEOUT_MS);
  if (timeoutMs !== undefined) out.timeoutMs = timeoutMs;
  const window = r.u32(Tag.WINDOW);
  if (window !== undefined) out.window = window;
  return out;
}

export function decodeCall(payload: Uint8Array): CallRequest {
  const r = new TlvReader(payload);
  const op = r.string(Tag.OP);
  if (op === undefined || op.length === 0) throw new ProtocolError('CALL without OP');
  const out: CallRequest = { op, args: r.strings(Tag.ARG), stdin: r.u32(Tag.STDIN) === 1 };
  const user = r.string(Tag.USER);
  if (user !== undefined) out.user = user;
  const cwd = r.string(Tag.CWD);
  if (cwd !== undefined) out.cwd = cwd;
  const window = r.u32(Tag.WINDOW);
  if (window !== undefined) out.window = window;
  const timeoutMs = r.u32(Tag.TIMEOUT_MS);
  if (timeoutMs !== undefined) out.timeoutMs = timeoutMs;
  const mode = r.u32(Tag.MODE);
  if (mode !== undefined) out.mode = mode;
  const flags = r.u32(Tag.CALL_FLAGS);
  if (flags !== undefined) out.flags = flags;
  const depth = r.u32(Tag.DEPTH);
  if (depth !== undefined) out.depth = depth;
  const size = r.u64(Tag.SIZE);
  if (size !== undefined) out.size = size;
  return out;
}

export function decodeStarted(payload: Uint8Array): { pid: number; stdinWindow: number } {
  const r = new TlvReader(payload);
  const pid = r.u32(Tag.PID);
  if (pid === undefined) throw new ProtocolError('STARTED without PID');
  return { pid, stdinWindow: r.u32(Tag.STDIN_WINDOW) ?? 0 };
}

export function decodeExit(payload: Uint8Array): ExecExit {
  const r = new TlvReader(payload);
  const exitCode = r.u32(Tag.EXIT_CODE);
  const signal = r.u32(Tag.EXIT_SIGNAL);
  if ((exitCode === undefined) === (signal === undefined)) throw new ProtocolError('EXIT needs exactly one of EXIT_CODE and EXIT_SIGNAL');
  if (exitCode !== undefined && exitCode > 255) throw new ProtocolError(`EXIT_CODE ${exitCode} out of range`);
  if (signal !== undefined && (signal < 1 || signal > 64)) throw new ProtocolError(`EXIT_SIGNAL ${signal} out of range`);
  return { exitCode: exitCode ?? null, signal: signal ?? null, timedOut: r.u32(Tag.TIMED_OUT) === 1 };
}

/** DATA payload: [fd][bytes]. */
export function decodeData(payload: Uint8Array): { fd: Fd; data: Uint8Array } {
  if (payload.length < 1) throw new ProtocolError('DATA without fd');
  return { fd: checkFd(payload[0]!), data: payload.subarray(1) };
}

export function decodeEof(payload: Uint8Array): Fd {
  if (payload.length !== 1) throw new ProtocolError(`EOF payload of ${payload.length} bytes`);
  return checkFd(payload[0]!);
}

export function decodeCredit(payload: Uint8Array): { fd: Fd; bytes: number } {
  if (payload.length !== 5) throw new ProtocolError(`CREDIT payload of ${payload.length} bytes`);
  const b = Buffer.from(payload.buffer, payload.byteOffset, payload.length);
  return { fd: checkFd(b[0]!), bytes: b.readUInt32BE(1) };
}

export function decodeSignal(payload: Uint8Array): number {
  if (payload.length !== 4) throw new ProtocolError(`SIGNAL payload of ${payload.length} bytes`);
  return Buffer.from(payload.buffer, payload.byteOffset, 4).readUInt32BE(0);
}

export function decodeResize(payload: Uint8Array): { rows: number; cols: number } {
  if (payload.length !== 4) throw new ProtocolError(`RESIZE payload of ${payload.length} bytes`);
  const b = Buffer.from(payload.buffer, payload.byteOffset, 4);
  return { rows: b.readUInt16BE(0), cols: b.readUInt16BE(2) };
}

function checkFd(fd: number): Fd {
  if (fd !== Fd.STDIN && fd !== Fd.STDOUT && fd !== Fd.STDERR) throw new ProtocolError(`invalid fd ${fd}`);
  return fd;
}
