/**
 * A VM's file server: Roost's 9P server (`@roost/p9`) serving the
 * sandbox's volumes over the VM's relay port, one session per volume
 * channel, and the quiesce that makes the port quiet for a snapshot. Runs
 * in a process of its own (main.ts); the owner's commands come over a
 * control socket (serveControl).
 */
import { readFileSync } from 'node:fs';
import { rm } from 'node:fs/promises';
import net from 'node:net';
import { LocalBackend, P9Server, parseCredentials, RemoteBackend, serializeSession, type Backend, type ExportOptions, type Session } from '@roost/p9';
import { MuxKind } from '@roost/protocol';
import { exportName, type ControlAnswer, type ControlRequest, type FileServerConfig, type FileServerState, type SavedChannel } from './config.js';
import { RelayLink, type ChannelStream } from './link.js';

/** How long a remote volume's operations wait through an outage before they fail with EIO in the guest. */
const REMOTE_OUTAGE_MS = 30_000;

/** How long QEMU's port socket may take to appear (QEMU creates it at start; the jailer before). */
const CONNECT_TIMEOUT_MS = 60_000;

export function log(message: string): void {
  process.stderr.write(`${new Date().toISOString()} roost-files[${process.pid}]: ${message}\n`);
}

interface Channel {
  session: Session;
  stream: ChannelStream | null;
  /** Guest bytes the session had not read when it was detached (go first on the next attach). */
  unread: Buffer;
}

/** The sessions of one VM's volumes. */
export class FileServer {
  readonly #config: FileServerConfig;
  readonly #server: P9Server;
  readonly #channels = new Map<number, Channel>();
  #link: RelayLink | null = null;
  #quiesced = false;
  #busy: Promise<unknown> = Promise.resolve();

  readonly #onEnd: () => void;

  private constructor(config: FileServerConfig, exports: Record<string, ExportOptions>, onEnd: () => void) {
    this.#config = config;
    this.#onEnd = onEnd;
    this.#server = new P9Server({ exports });
  }

  /**
   * Opens every export: a local directory, or a remote volume (connected
   * now: a server that cannot be reached, or refuses the token, fails the
   * start with its reason). `onEnd`: the VM closed its port (the process exits then).
   */
  static async create(config: FileServerConfig, onEnd: () => void = () => process.exit(0)): Promise<FileServer> {
    const exports: Record<string, ExportOptions> = {};
    const opened: Backend[] = [];
    try {
      for (const e of config.exports) {
        let backend: Backend;
        if (e.remote !== undefined) {
          const credentials = parseCredentials(readFileSync(e.remote, 'utf8'), e.remote);
          backend = await RemoteBackend.connect(credentials, { outageTimeoutMs: REMOTE_OUTAGE_MS });
        } else backend = new LocalBackend(e.path, e.quotaBytes === undefined ? {} : { quotaBytes: e.quotaBytes });
        opened.push(backend);
        exports[exportName(e.channel)] = { backend, readOnly: e.readOnly };
      }
    } catch (err) {
      await Promise.allSettled(opened.map((b) => b.close()));
      throw err;
    }
    return new FileServer(config, exports, onEnd);
  }

  /** Rebuilds the sessions a snapshot saved: the guest's mounts go on where they were. */
  async restore(path: string): Promise<void> {
    const state = JSON.parse(readFileSync(path, 'utf8')) as FileServerState;
    if (state.format !== 1) throw new Error(`unknown file server state format ${String(state.format)}`);
    for (const saved of state.channels) {
      const session = await this.#server.restoreSession(saved.session);
      this.#channels.set(saved.channel, { session, stream: null, unread: Buffer.from(saved.unread, 'base64') });
    }
    // The guest's relay was quiesced when the snapshot was taken.
    this.#quiesced = true;
  }

  async connect(): Promise<void> {
    const deadline = Date.now() + CONNECT_TIMEOUT_MS;
    for (;;) {
      try {
        const socket = await new Promise<net.Socket>((resolve, reject) => {
          const s = net.connect(this.#config.socket, () => resolve(s));
          s.once('error', reject);
        });
        this.#link = new RelayLink(socket, {
          open: (channel) => this.#open(channel),
          eof: (channel) => void this.#eof(channel),
          hello: (quiesced, channels) => log(`relay ${quiesced ? 'quiesced' : 'running'}, channels [${channels.join(', ')}]`),
          closed: (err) => void this.#shutdown(err ? `the port broke: ${err.message}` : 'the VM closed its port'),
        });
        // Sessions rebuilt from a snapshot take their channels now, then the guest goes on.
        for (const [channel, ch] of this.#channels) this.#attach(channel, ch);
        if (this.#quiesced) {
          this.#quiesced = false;
          this.#link.send(0, MuxKind.RESUME);
        }
        return;
      } catch (err) {
        if (Date.now() > deadline) throw new Error(`cannot connect to ${this.#config.socket}: ${(err as Error).message}`);
        if (this.#config.vmPid !== undefined && !processExists(this.#config.vmPid)) throw new Error(`the VM (pid ${this.#config.vmPid}) is gone`);
        await new Promise((r) => setTimeout(r, 20));
      }
    }
  }

  /** A guest's first bytes on a channel: a new session when the channel is a volume. */
  #open(channel: number): ChannelStream | null {
    if (!this.#config.exports.some((e) => e.channel === channel)) {
      log(`the guest opened channel ${channel}, which is no volume`);
      return null;
    }
    const ch: Channel = { session: this.#server.createSession(), stream: null, unread: Buffer.alloc(0) };
    this.#channels.set(channel, ch);
    return this.#attach(channel, ch);
  }

  #attach(channel: number, ch: Channel): ChannelStream {
    const stream = this.#link!.renew(channel);
    ch.stream = stream;
    if (ch.unread.length > 0) stream.deliver(ch.unread);
    ch.unread = Buffer.alloc(0);
    void ch.session.attach(stream).then((end) => {
      if (end === 'closed' && this.#channels.get(channel) === ch) {
        // A protocol error ended the session: the guest's mount is over.
        this.#channels.delete(channel);
        this.#link?.endChannel(channel);
      }
    });
    return stream;
  }

  async #eof(channel: number): Promise<void> {
    const ch = this.#channels.get(channel);
    this.#channels.delete(channel);
    await ch?.session.close();
  }

  /** QUIESCE, wait until nothing is in transit either way, and save every session. */
  async quiesce(timeoutMs: number): Promise<FileServerState> {
    const link = this.#link;
    if (link === null || link.closed) throw new Error('the VM is not connected');
    if (this.#quiesced) throw new Error('already quiesced');
    const deadline = Date.now() + timeoutMs;
    const left = (): number => Math.max(1, deadline - Date.now());
    this.#quiesced = true;
    try {
      const quiesced = link.next(MuxKind.QUIESCED, left(), 'QUIESCE');
      link.send(0, MuxKind.QUIESCE);
      await quiesced;
      // Every byte the guest sent is here: let the sessions finish what they started (their replies go out).
      await withTimeout(Promise.all([...this.#channels.values()].map((ch) => ch.session.detach())), left(), 'the requests in flight to finish');
      for (const ch of this.#channels.values()) {
        ch.unread = Buffer.concat([ch.unread, ch.stream?.drain() ?? Buffer.alloc(0)]);
        ch.stream = null;
      }
      // Every reply reached the guest's sockets once the relay answers this.
      const ack = link.next(MuxKind.BARRIER_ACK, left(), 'BARRIER');
      link.send(0, MuxKind.BARRIER);
      await ack;
      const channels: SavedChannel[] = [];
      for (const [channel, ch] of this.#channels) channels.push({ channel, session: serializeSession(ch.session), unread: ch.unread.toString('base64') });
      return { format: 1, channels };
    } catch (err) {
      this.resume();
      throw err;
    }
  }

  /** Goes on after a quiesce (or its failure): sessions take their channels again, the relay reads again. */
  resume(): void {
    if (!this.#quiesced) return;
    this.#quiesced = false;
    const link = this.#link;
    if (link === null || link.closed) return;
    for (const [channel, ch] of this.#channels) if (ch.stream === null) this.#attach(channel, ch);
    link.send(0, MuxKind.RESUME);
  }

  /** One command at a time. */
  serialize<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.#busy.then(fn, fn);
    this.#busy = run.catch(() => {});
    return run;
  }

  get quiesced(): boolean {
    return this.#quiesced;
  }

  /** Ends every session and the port (tests; the process ends by exiting). */
  async close(): Promise<void> {
    this.#link?.close();
    await this.#server.close();
  }

  async #shutdown(why: string): Promise<void> {
    log(`${why}: ending`);
    await Promise.race([this.#server.close(), new Promise((r) => setTimeout(r, 5000))]);
    await rm(this.#config.control, { force: true });
    this.#onEnd();
  }
}

function processExists(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
}

function withTimeout<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms waiting for ${what}`)), ms);
    p.then(
      (v) => {
        clearTimeout(timer);
        resolve(v);
      },
      (e: unknown) => {
        clearTimeout(timer);
        reject(e as Error);
      },
    );
  });
}

/** The owner's commands, one JSON line each. A quiesce whose owner goes away is resumed (the guest never waits on a dead owner). */
export function serveControl(fs: FileServer, path: string): Promise<net.Server> {
  const server = net.createServer((socket) => {
    let buffered = '';
    let quiescedHere = false;
    socket.setEncoding('utf8');
    socket.on('data', (text: string) => {
      buffered += text;
      if (buffered.length > 1 << 20) return socket.destroy();
      let nl: number;
      while ((nl = buffered.indexOf('\n')) >= 0) {
        const line = buffered.slice(0, nl);
        buffered = buffered.slice(nl + 1);
        void fs
          .serialize(async (): Promise<ControlAnswer> => {
            const req = JSON.parse(line) as ControlRequest;
            if (req.op === 'ping') return { ok: true, pid: process.pid };
            if (req.op === 'resume') {
              quiescedHere = false;
              fs.resume();
              return { ok: true };
            }
            if (req.op === 'quiesce') {
              const state = await fs.quiesce(Math.min(Math.max(1, req.timeoutMs), 600_000));
              quiescedHere = true;
              return { ok: true, state };
            }
            throw new Error(`unknown command ${JSON.stringify((req as { op?: unknown }).op)}`);
          })
          .catch((e: unknown): ControlAnswer => ({ ok: false, error: e instanceof Error ? e.message : String(e) }))
          .then((answer) => socket.write(JSON.stringify(answer) + '\n'));
      }
    });
    socket.on('error', () => {});
    socket.on('close', () => {
      if (quiescedHere && fs.quiesced) void fs.serialize(async () => fs.resume());
    });
  });
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(path, () => resolve(server));
  });
}
