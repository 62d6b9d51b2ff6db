import { randomBytes } from 'node:crypto';
import { EventEmitter } from 'node:events';
import { connect, type Socket } from 'node:net';
import {
  CONTROL_STREAM,
  DEFAULT_WINDOW,
  Fd,
  FrameDecoder,
  HEADER_SIZE,
  MAX_PAYLOAD,
  MAX_STREAMS,
  MessageType,
  ProtocolError,
  VERSION,
  agentInfo,
  decodeAgentHello,
  decodeCredit,
  decodeData,
  decodeEof,
  decodeError,
  decodeExit,
  decodeFreezeResult,
  decodeStarted,
  encodeCall,
  encodeCredit,
  encodeData,
  encodeEof,
  encodeExec,
  encodeFreeze,
  encodeHostHello,
  encodePing,
  encodePoweroff,
  encodeResize,
  encodeSignal,
  encodeThaw,
  type AgentHello,
  type AgentInfo,
  type CallRequest,
  type CapabilityName,
  type ExecExit,
  type ExecRequest,
  type Frame,
  type FreezeResult,
  type WireError,
} from '@roost/protocol';
import { RoostError } from '../errors.js';
import { connectWithRetry } from '../vmm/connect.js';

/** How long the agent may stay silent while the host waits on it before a PING goes out. */
const KEEPALIVE_IDLE_MS = 5_000;
/** How long a PING may go unanswered before the agent is declared unresponsive. */
const KEEPALIVE_TIMEOUT_MS = 30_000;
/** Bytes we accept before the handshake completes (stale output of an earlier connection). */
const MAX_PREHANDSHAKE = 8 << 20;
/** Largest HELLO we will believe. */
const MAX_HELLO = 1024;
/** FREEZE/THAW requests whose answer is still owed after they timed out, at most. */
const MAX_LATE_FS_ANSWERS = 16;

/** A FREEZE or THAW sent to the agent, answered in order. `settle` is null once the caller stopped waiting (timeout). */
interface FsRequest {
  type: typeof MessageType.FREEZE | typeof MessageType.THAW;
  settle: ((r: FreezeResult | RoostError) => void) | null;
}

export interface ConnectOptions {
  /** HELLO flags (see HelloFlags). */
  flags: number;
  /** Gives up after this long (the boot timeout on a fresh VM). */
  timeoutMs: number;
  signal?: AbortSignal | undefined;
  /** Stops retrying once this reports true (the VM has exited). */
  vmExited?: () => boolean;
  /** The guest's network configuration (encodeNetConfig), sent with every HELLO. */
  net?: Uint8Array | undefined;
}

/** Callbacks of one exec stream. All are called in frame order. */
export interface ExecListener {
  started(pid: number): void;
  data(fd: Fd, chunk: Uint8Array): void;
  eof(fd: Fd): void;
  exit(exit: ExecExit): void;
  /** The stream failed: an agent ERROR on it, or the connection ended. Nothing follows. */
  failed(err: RoostError): void;
}

/**
 * The host end of one connection to a guest agent (docs/PROTOCOL.md).
 *
 * Everything the guest sends is untrusted: frame sizes, stream ids, credit and
 * payloads are checked, and any violation ends the connection with a
 * 'violation' event rather than an exception in the caller. Emits 'close'
 * (once, with the reason) when the connection is gone for any reason.
 */
export class AgentConnection extends EventEmitter {
  readonly hello: AgentHello;
  /**
   * The agent's version and the capabilities it announced in its HELLO.
   * FREEZE, THAW, CALL and NET are only sent to an agent that announced
   * them; otherwise the method refuses with an AGENT error naming the
   * missing capability and the agent's version.
   */
  readonly agent: AgentInfo;
  #socket: Socket;
  #decoder = new FrameDecoder();
  #streams = new Map<number, ExecChannel>();
  /** Ids of streams the host gave up on: late frames for them are dropped, not violations. */
  #abandoned = new Set<number>();
  #nextStream = 1;
  #closed: RoostError | null = null;
  #closedByHost = false;
  #pings = new Map<string, () => void>();
  /** FREEZE/THAW requests not answered yet, oldest first (the agent answers in order). */
  #fsRequests: FsRequest[] = [];
  #lastHeard = Date.now();
  #keepalive: NodeJS.Timeout;
  #pingSentAt = 0;
  #livenessHeld = false;
  /** A new session asked for on this connection (`renew`): its nonce, and how it ends. */
  #renewal: { nonce: Buffer; settle: (e: RoostError | null) => void } | null = null;

  private constructor(socket: Socket, hello: AgentHello, rest: Buffer) {
    super();
    this.#socket = socket;
    this.hello = hello;
    this.agent = agentInfo(hello);
    socket.on('data', (chunk: Buffer) => this.#onData(chunk));
    socket.on('error', () => {});
    socket.on('close', () => this.#end(new RoostError('AGENT', 'the guest agent connection closed (the VM stopped or the agent died)')));
    this.#keepalive = setInterval(() => this.#checkLiveness(), 1_000);
    this.#keepalive.unref();
    this.#updateRef();
    if (rest.length > 0) this.#onData(rest);
    socket.resume();
  }

  /**
   * Connects to the agent socket QEMU listens on and performs the handshake.
   * Retries until the socket accepts; the agent answers once the guest has
   * booted, so this also waits for the boot. With `net`, an agent that does
   * not announce the NET capability is refused (AGENT).
   */
  static async connect(path: string, options: ConnectOptions): Promise<AgentConnection> {
    const deadline = Date.now() + options.timeoutMs;
    const nonce = randomBytes(16);
    const socket = await connectSocket(path, deadline, options);
    try {
      socket.write(
        encodeHostHello({ version: VERSION, flags: options.flags, timeNs: BigInt(Date.now()) * 1_000_000n, entropy: randomBytes(64), nonce, net: options.net }),
      );
      const { hello, rest } = await awaitHello(socket, nonce, deadline, options);
      if (hello.version !== VERSION) {
        throw new RoostError(
          'AGENT',
          `the guest agent speaks protocol version ${hello.version}, this host ${VERSION}: run \`roost setup\` to rebuild the agent`,
        );
      }
      // NET rides in the HELLO itself, before the host can know: an agent that
      // does not announce it ignored it (an unknown tag), so the guest has no network.
      if (options.net && !agentInfo(hello).capabilities.includes('NET')) {
        throw missingCapability(agentInfo(hello), 'NET', "configure the sandbox's network");
      }
      return new AgentConnection(socket, hello, rest);
    } catch (e) {
      socket.destroy();
      throw e;
    }
  }

  /** Opens an exec stream. Throws INVALID_ARGUMENT when the request does not fit one frame. */
  exec(request: ExecRequest, listener: ExecListener): ExecChannel {
    return this.#open('command', request.window, (id, window) => encodeExec(id, { ...request, window }), listener);
  }

  /**
   * Opens a call stream: one of the agent's built-in file operations
   * (docs/PROTOCOL.md, "Calls"). On the wire it is an exec stream in every
   * other respect, so it has the same channel and listener. Throws
   * INVALID_ARGUMENT when the request does not fit one frame, and AGENT
   * (nothing sent) when the agent did not announce the CALL capability.
   */
  call(request: CallRequest, listener: ExecListener): ExecChannel {
    if (this.#closed) throw this.#closed;
    this.#require('CALL', 'run file operations');
    return this.#open('file operation', request.window, (id, window) => encodeCall(id, { ...request, window }), listener);
  }

  /** True when the agent announced `capability` in its HELLO. */
  supports(capability: CapabilityName): boolean {
    return this.agent.capabilities.includes(capability);
  }

  /** Throws the AGENT error of a capability the agent did not announce. */
  #require(capability: CapabilityName, what: string): void {
    if (!this.supports(capability)) throw missingCapability(this.agent, capability, what);
  }

  #open(what: string, requestedWindow: number | undefined, encode: (id: number, window: number) => Buffer, listener: ExecListener): ExecChannel {
    if (this.#closed) throw this.#closed;
    if (this.#streams.size >= MAX_STREAMS) {
      throw new RoostError(
        'INVALID_STATE',
        `this sandbox already runs ${MAX_STREAMS} commands and file operations over one connection; wait for some to finish`,
      );
    }
    const id = this.#allocStream();
    const window = requestedWindow ?? DEFAULT_WINDOW;
    let frame: Buffer;
    try {
      frame = encode(id, window);
    } catch (e) {
      throw new RoostError('INVALID_ARGUMENT', (e as Error).message, { cause: e });
    }
    const channel = new ExecChannel(this, id, window, listener, what);
    this.#streams.set(id, channel);
    this.#updateRef();
    this.#socket.write(frame);
    return channel;
  }

  /**
   * @internal Something above the frames (a call's records) broke the
   * protocol: ends the connection as a violation, like a bad frame.
   */
  reportViolation(reason: string): void {
    if (!this.#closed) this.#violation(reason);
  }

  /** Sends PING and resolves with the round trip in ms. */
  ping(timeoutMs = 5_000): Promise<number> {
    if (this.#closed) return Promise.reject(this.#closed);
    const payload = randomBytes(8);
    const key = payload.toString('hex');
    const start = performance.now();
    return new Promise<number>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.#pings.delete(key);
        reject(new RoostError('TIMEOUT', `the guest agent did not answer a ping within ${timeoutMs} ms`));
      }, timeoutMs);
      this.#pings.set(key, () => {
        clearTimeout(timer);
        resolve(performance.now() - start);
      });
      this.#socket.write(encodePing(payload));
    });
  }

  /**
   * Asks the agent to sync and freeze the sandbox's disk before a snapshot
   * (FREEZE, docs/PROTOCOL.md "Snapshots"): from then on, processes that
   * write to the disk block until `thaw()`. Resolves with the agent's answer:
   * `errno` 0 when frozen (or already frozen), EOPNOTSUPP (95) when the
   * sandbox has no disk to freeze (the guest still counts a snapshot as
   * pending), or another errno with a `message`. Rejects with TIMEOUT when no
   * answer comes within `timeoutMs`, INVALID_STATE while another freeze or
   * thaw awaits its answer, AGENT (nothing sent) when the agent did not
   * announce the FREEZE capability, and with the connection's error if it
   * ends first.
   */
  freeze(timeoutMs = 10_000): Promise<FreezeResult> {
    return this.#fsRequest(MessageType.FREEZE, timeoutMs);
  }

  /**
   * Thaws the disk after a snapshot (THAW): the source sandbox carries on.
   * Resolves with the agent's answer (`errno` 0 also when nothing was
   * frozen); rejects as `freeze()` does.
   */
  thaw(timeoutMs = 10_000): Promise<FreezeResult> {
    return this.#fsRequest(MessageType.THAW, timeoutMs);
  }

  #fsRequest(type: FsRequest['type'], timeoutMs: number): Promise<FreezeResult> {
    if (this.#closed) return Promise.reject(this.#closed);
    const name = type === MessageType.FREEZE ? 'freeze' : 'thaw';
    // THAW belongs to the same capability as FREEZE.
    if (!this.supports('FREEZE')) return Promise.reject(missingCapability(this.agent, 'FREEZE', `${name} the sandbox's disk`));
    if (this.#fsRequests.some((r) => r.settle !== null)) {
      return Promise.reject(new RoostError('INVALID_STATE', `cannot ${name} the sandbox's disk: a freeze or thaw is already waiting for the guest agent`));
    }
    if (this.#fsRequests.length >= MAX_LATE_FS_ANSWERS) {
      return Promise.reject(
        new RoostError(
          'AGENT',
          `cannot ${name} the sandbox's disk: the guest agent has not answered ${this.#fsRequests.length} earlier freeze or thaw requests`,
        ),
      );
    }
    return new Promise<FreezeResult>((resolve, reject) => {
      const request: FsRequest = { type, settle: null };
      const timer = setTimeout(() => {
        // The answer may still come; it is then dropped (the request stays queued until it does).
        request.settle = null;
        this.#updateRef();
        reject(new RoostError('TIMEOUT', `the guest agent did not answer ${name} within ${timeoutMs} ms`));
      }, timeoutMs);
      request.settle = (r) => {
        clearTimeout(timer);
        request.settle = null;
        if (r instanceof RoostError) reject(r);
        else resolve(r);
      };
      this.#fsRequests.push(request);
      this.#updateRef();
      this.#socket.write(type === MessageType.FREEZE ? encodeFreeze() : encodeThaw());
    });
  }

  /**
   * Starts a new session on this open connection (docs/PROTOCOL.md,
   * "Handshake": the agent treats every HELLO as the start of one): a new
   * HELLO with the host's clock now, fresh entropy (the agent reseeds its
   * CRNG), these `flags`, and `net`; resolves once the agent answers it,
   * which costs one round trip instead of a reconnection. INVALID_STATE
   * while streams are open (the agent would end their processes) or another
   * renewal waits; TIMEOUT without an answer within `timeoutMs`.
   */
  renew(options: { flags: number; net?: Uint8Array | undefined; timeoutMs?: number }): Promise<void> {
    if (this.#closed) return Promise.reject(this.#closed);
    if (this.#streams.size > 0) {
      return Promise.reject(new RoostError('INVALID_STATE', `cannot start a new agent session while ${this.#streams.size} commands or file operations run`));
    }
    if (this.#renewal) return Promise.reject(new RoostError('INVALID_STATE', 'a new agent session is being started already'));
    const timeoutMs = options.timeoutMs ?? 5_000;
    const nonce = randomBytes(16);
    return new Promise<void>((resolve, reject) => {
      const timer = setTimeout(
        () => this.#renewal?.settle(new RoostError('TIMEOUT', `the guest agent did not answer a new HELLO within ${timeoutMs} ms`)),
        timeoutMs,
      );
      this.#renewal = {
        nonce,
        settle: (e) => {
          clearTimeout(timer);
          this.#renewal = null;
          this.#updateRef();
          if (e) reject(e);
          else resolve();
        },
      };
      this.#updateRef();
      this.#socket.write(
        encodeHostHello({ version: VERSION, flags: options.flags, timeNs: BigInt(Date.now()) * 1_000_000n, entropy: randomBytes(64), nonce, net: options.net }),
      );
    });
  }

  /** Asks the agent to power the VM off. */
  poweroff(): void {
    if (!this.#closed) this.#socket.write(encodePoweroff());
  }

  /** Closes the connection (the agent sees a disconnect). */
  close(): void {
    this.#closedByHost = true;
    this.#socket.destroy();
    this.#end(new RoostError('AGENT', 'the connection to the guest agent was closed by the host'));
  }

  /** True when the host itself closed the connection (close()), as opposed to the guest or the VM going away. */
  get closedByHost(): boolean {
    return this.#closedByHost;
  }

  // ---- used by ExecChannel ---------------------------------------------------

  /** @internal */
  send(frame: Buffer): boolean {
    if (this.#closed) return false;
    return this.#socket.write(frame);
  }

  /** @internal Waits until the socket's write buffer drains (stdin backpressure). */
  drained(): Promise<void> {
    if (this.#closed || !this.#socket.writableNeedDrain) return Promise.resolve();
    return new Promise((resolve) => {
      const done = () => {
        this.#socket.off('drain', done);
        this.#socket.off('close', done);
        resolve();
      };
      this.#socket.once('drain', done);
      this.#socket.once('close', done);
    });
  }

  /** @internal */
  release(id: number, abandoned: boolean): void {
    this.#streams.delete(id);
    if (abandoned) {
      this.#abandoned.add(id);
      if (this.#abandoned.size > 4 * MAX_STREAMS) this.#abandoned.delete(this.#abandoned.values().next().value!);
    }
    this.#updateRef();
  }

  // ---- internals -------------------------------------------------------------

  #allocStream(): number {
    for (;;) {
      const id = this.#nextStream;
      this.#nextStream = this.#nextStream >= 0x7fffffff ? 1 : this.#nextStream + 1;
      if (!this.#streams.has(id)) {
        this.#abandoned.delete(id);
        return id;
      }
    }
  }

  /** Keep the process alive only while commands run, so a script that forgets a sandbox still exits. */
  #updateRef(): void {
    if (this.#streams.size > 0 || this.#pings.size > 0 || this.#renewal || this.#fsRequests.some((r) => r.settle !== null)) this.#socket.ref();
    else this.#socket.unref();
  }

  #onData(chunk: Buffer): void {
    if (this.#closed) return;
    this.#lastHeard = Date.now();
    this.#pingSentAt = 0;
    let frames: Frame[];
    try {
      frames = this.#decoder.push(chunk);
    } catch (e) {
      this.#violation((e as Error).message);
      return;
    }
    for (const f of frames) {
      try {
        this.#dispatch(f);
      } catch (e) {
        if (e instanceof ProtocolError) this.#violation(e.message);
        else this.#violation(`internal error handling a frame: ${(e as Error).message}`);
        return;
      }
      if (this.#closed) return;
    }
  }

  #dispatch(f: Frame): void {
    if (f.stream === CONTROL_STREAM) {
      switch (f.type) {
        case MessageType.PONG: {
          const done = this.#pings.get(Buffer.from(f.payload).toString('hex'));
          if (done) {
            this.#pings.delete(Buffer.from(f.payload).toString('hex'));
            done();
            this.#updateRef();
          }
          return;
        }
        case MessageType.ERROR:
          this.emit('agent-error', decodeError(f.payload));
          return;
        case MessageType.HELLO: {
          // The answer to `renew` carries its nonce; any other is a duplicate answer, harmless.
          const renewal = this.#renewal;
          if (!renewal) return;
          const hello = decodeAgentHello(f.payload);
          if (!hello.nonce.equals(renewal.nonce)) return;
          renewal.settle(
            hello.version === VERSION
              ? null
              : new RoostError('AGENT', `the guest agent answered a new session with protocol version ${hello.version}, not ${VERSION}`),
          );
          return;
        }
        case MessageType.FREEZE:
        case MessageType.THAW: {
          const name = f.type === MessageType.FREEZE ? 'FREEZE' : 'THAW';
          const head = this.#fsRequests[0];
          if (!head || head.type !== f.type) throw new ProtocolError(`a ${name} answer the host did not ask for`);
          const result = decodeFreezeResult(f.payload);
          this.#fsRequests.shift();
          head.settle?.(result);
          this.#updateRef();
          return;
        }
        default:
          throw new ProtocolError(`unexpected frame type 0x${f.type.toString(16)} on the control stream`);
      }
    }
    const channel = this.#streams.get(f.stream);
    if (!channel) {
      if (this.#abandoned.has(f.stream)) return;
      throw new ProtocolError(`frame type 0x${f.type.toString(16)} for stream ${f.stream}, which the host never opened`);
    }
    channel.handle(f);
  }

  #violation(reason: string): void {
    const err = new RoostError('AGENT', `the guest broke the agent protocol (${reason}); the sandbox is marked failed`, { details: { violation: reason } });
    this.emit('violation', err);
    this.#socket.destroy();
    this.#end(err);
  }

  /**
   * Suspends (or resumes) the liveness check: a paused VM cannot answer
   * pings. Resuming counts the guest as just heard from.
   */
  holdLiveness(hold: boolean): void {
    this.#livenessHeld = hold;
    this.#lastHeard = Date.now();
    this.#pingSentAt = 0;
  }

  #checkLiveness(): void {
    if (this.#closed || this.#livenessHeld || this.#streams.size === 0) return;
    const now = Date.now();
    if (this.#pingSentAt === 0 && now - this.#lastHeard > KEEPALIVE_IDLE_MS) {
      this.#pingSentAt = now;
      this.#socket.write(encodePing(randomBytes(8)));
    } else if (this.#pingSentAt !== 0 && now - this.#pingSentAt > KEEPALIVE_TIMEOUT_MS) {
      const err = new RoostError('AGENT', `the guest agent has not answered for ${Math.round((now - this.#lastHeard) / 1000)} s; the sandbox is marked failed`);
      this.emit('unresponsive', err);
      this.#socket.destroy();
      this.#end(err);
    }
  }

  #end(reason: RoostError): void {
    if (this.#closed) return;
    this.#closed = reason;
    clearInterval(this.#keepalive);
    for (const ch of [...this.#streams.values()]) ch.fail(reason);
    this.#streams.clear();
    this.#pings.clear();
    for (const r of this.#fsRequests.splice(0)) r.settle?.(reason);
    this.#renewal?.settle(reason);
    this.emit('close', reason);
  }
}

/**
 * One exec stream on a connection: credit bookkeeping in both directions and
 * the frames that control the process.
 */
export class ExecChannel {
  #conn: AgentConnection;
  #listener: ExecListener;
  /** Output bytes the agent may still send on fd 1 and fd 2 (what we granted minus what came). */
  #outCredit: [number, number];
  #stdinCredit = 0;
  #stdinWaiters: (() => void)[] = [];
  #started = false;
  #done = false;
  #what: string;

  /** `what` names the stream in errors ('command', 'file operation'). */
  constructor(
    conn: AgentConnection,
    readonly id: number,
    window: number,
    listener: ExecListener,
    what = 'command',
  ) {
    this.#conn = conn;
    this.#listener = listener;
    this.#outCredit = [window, window];
    this.#what = what;
  }

  /** @internal */
  handle(f: Frame): void {
    switch (f.type) {
      case MessageType.STARTED: {
        if (this.#started) throw new ProtocolError(`second STARTED on stream ${this.id}`);
        const s = decodeStarted(f.payload);
        this.#started = true;
        this.#addStdinCredit(s.stdinWindow);
        this.#listener.started(s.pid);
        return;
      }
      case MessageType.DATA: {
        const { fd, data } = decodeData(f.payload);
        if (fd === Fd.STDIN) throw new ProtocolError('the agent sent DATA on fd 0');
        const idx = fd - 1;
        if (data.length > this.#outCredit[idx]!) {
          throw new ProtocolError(`stream ${this.id} fd ${fd}: ${data.length} bytes sent with ${this.#outCredit[idx]} credit`);
        }
        this.#outCredit[idx]! -= data.length;
        if (data.length > 0) this.#listener.data(fd, data);
        return;
      }
      case MessageType.EOF: {
        const fd = decodeEof(f.payload);
        if (fd !== Fd.STDIN) this.#listener.eof(fd);
        return;
      }
      case MessageType.CREDIT: {
        const c = decodeCredit(f.payload);
        if (c.fd !== Fd.STDIN) throw new ProtocolError('the agent granted credit for an output fd');
        this.#addStdinCredit(c.bytes);
        return;
      }
      case MessageType.EXIT: {
        const exit = decodeExit(f.payload);
        this.#finish(false);
        this.#listener.exit(exit);
        return;
      }
      case MessageType.ERROR: {
        const e: WireError = decodeError(f.payload);
        this.#finish(false);
        this.#listener.failed(
          new RoostError('AGENT', `the guest agent refused the ${this.#what}: ${e.message || `error code ${e.code}`}`, { details: { agentCode: e.code } }),
        );
        return;
      }
      default:
        throw new ProtocolError(`unexpected frame type 0x${f.type.toString(16)} on exec stream ${this.id}`);
    }
  }

  /** Grants the agent `bytes` more output on `fd` (call as the consumer takes data). */
  grant(fd: Fd, bytes: number): void {
    if (this.#done || bytes <= 0) return;
    this.#outCredit[fd - 1]! += bytes;
    this.#conn.send(encodeCredit(this.id, fd, bytes));
  }

  /** Writes stdin, waiting for credit from the agent (backpressure from the process). */
  async writeStdin(data: Uint8Array): Promise<void> {
    let off = 0;
    while (off < data.length) {
      if (this.#done) throw new RoostError('INVALID_STATE', `the ${this.#what} has ended; its stdin is closed`);
      if (this.#stdinCredit === 0) {
        await new Promise<void>((r) => this.#stdinWaiters.push(r));
        continue;
      }
      const n = Math.min(this.#stdinCredit, data.length - off, MAX_PAYLOAD - 1);
      this.#stdinCredit -= n;
      this.#conn.send(encodeData(this.id, Fd.STDIN, data.subarray(off, off + n)));
      off += n;
      await this.#conn.drained();
    }
  }

  closeStdin(): void {
    if (!this.#done) this.#conn.send(encodeEof(this.id, Fd.STDIN));
  }

  signal(signo: number): void {
    if (!this.#done) this.#conn.send(encodeSignal(this.id, signo));
  }

  resize(rows: number, cols: number): void {
    if (!this.#done) this.#conn.send(encodeResize(this.id, rows, cols));
  }

  /** The host stops caring about this stream (late frames are dropped). */
  abandon(): void {
    this.#finish(true);
  }

  /** @internal The connection ended under this stream. */
  fail(err: RoostError): void {
    if (this.#done) return;
    this.#finish(false);
    this.#listener.failed(err);
  }

  #addStdinCredit(n: number): void {
    this.#stdinCredit = Math.min(this.#stdinCredit + n, 0x7fffffff);
    for (const w of this.#stdinWaiters.splice(0)) w();
  }

  #finish(abandoned: boolean): void {
    if (this.#done) return;
    this.#done = true;
    for (const w of this.#stdinWaiters.splice(0)) w();
    this.#conn.release(this.id, abandoned);
  }
}

// ---- connect + handshake ------------------------------------------------------

/** What a host says to an agent that did not announce a capability it needs. */
function missingCapability(agent: AgentInfo, capability: CapabilityName, what: string): RoostError {
  return new RoostError(
    'AGENT',
    `the guest agent (${agent.version}, protocol ${agent.protocolVersion}) does not announce the ${capability} capability, so the host cannot ${what}: ` +
      'the sandbox was booted with an older agent; stop and start it (or create a new one) to boot the agent `roost setup` built',
    { details: { capability, agentVersion: agent.version, capabilities: [...agent.capabilities] } },
  );
}

async function connectSocket(path: string, deadline: number, options: ConnectOptions): Promise<Socket> {
  const attempt = () =>
    new Promise<Socket>((resolve, reject) => {
      const s = connect(path);
      s.once('connect', () => {
        s.off('error', reject);
        // Errors surface as 'close'; a reset during the handshake must not be an uncaught exception.
        s.on('error', () => {});
        resolve(s);
      });
      s.once('error', reject);
    });
  try {
    return await connectWithRetry(attempt, {
      what: `the agent socket ${path}`,
      vmExited: options.vmExited,
      exitCode: 'BOOT_FAILED',
      signal: options.signal,
      deadline,
    });
  } catch (e) {
    if (e instanceof RoostError) throw e;
    throw new RoostError('AGENT', `cannot connect to ${path}: ${(e as Error).message}`, { cause: e });
  }
}

/**
 * Reads until the agent's HELLO carrying our nonce arrives. Anything before it
 * (output queued for an earlier connection) is skipped by scanning for a
 * plausible HELLO header whose payload holds the nonce.
 */
function awaitHello(socket: Socket, nonce: Buffer, deadline: number, options: ConnectOptions): Promise<{ hello: AgentHello; rest: Buffer }> {
  return new Promise((resolve, reject) => {
    let buf = Buffer.alloc(0);
    const cleanup = () => {
      clearTimeout(timer);
      clearInterval(exitPoll);
      socket.off('data', onData);
      socket.off('close', onClose);
      options.signal?.removeEventListener('abort', onAbort);
    };
    const fail = (e: RoostError) => {
      cleanup();
      reject(e);
    };
    const onData = (chunk: Buffer) => {
      buf = Buffer.concat([buf, chunk]);
      const found = findHello(buf, nonce);
      if (found) {
        cleanup();
        // Held until the AgentConnection has its own listener (it resumes).
        socket.pause();
        resolve(found);
      } else if (buf.length > MAX_PREHANDSHAKE) {
        fail(new RoostError('AGENT', `the guest sent ${buf.length} bytes without a valid handshake`));
      }
    };
    const onClose = () => fail(new RoostError('BOOT_FAILED', 'the VM closed the agent connection before the agent answered'));
    const onAbort = () => fail(new RoostError('ABORTED', 'waiting for the guest agent was aborted', { cause: options.signal?.reason }));
    const timer = setTimeout(() => fail(new RoostError('TIMEOUT', 'the guest agent did not answer the handshake in time')), Math.max(0, deadline - Date.now()));
    const exitPoll = setInterval(() => {
      if (options.vmExited?.()) fail(new RoostError('BOOT_FAILED', 'the VM exited before its agent answered'));
    }, 20);
    socket.on('data', onData);
    socket.once('close', onClose);
    options.signal?.addEventListener('abort', onAbort, { once: true });
    // An abort that came before the listener fires no event.
    if (options.signal?.aborted) onAbort();
  });
}

function findHello(buf: Buffer, nonce: Buffer): { hello: AgentHello; rest: Buffer } | null {
  for (let s = 0; s + HEADER_SIZE <= buf.length; s++) {
    if (buf[s + 8] !== MessageType.HELLO || buf.readUInt32BE(s + 4) !== CONTROL_STREAM) continue;
    const length = buf.readUInt32BE(s);
    if (length < 5 || length > MAX_HELLO || s + 4 + length > buf.length) continue;
    try {
      const hello = decodeAgentHello(buf.subarray(s + HEADER_SIZE, s + 4 + length));
      if (hello.nonce.equals(nonce)) return { hello, rest: Buffer.from(buf.subarray(s + 4 + length)) };
    } catch {
      // not a HELLO after all; keep scanning
    }
  }
  return null;
}
