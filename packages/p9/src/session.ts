/**
 * A 9P2000.L session: the protocol state of one client (negotiated msize,
 * fids, open files, directory cursors, locks) and the processing of its
 * requests. A session is not a connection: it is attached to a byte stream
 * (any Duplex: a TCP socket, a unix socket, a relay of a guest's channel),
 * and can be detached from it and attached to another while keeping all of
 * its state, or saved (session-snapshot.ts) and rebuilt in a fresh process.
 *
 * Requests run concurrently: each frame starts its operation at once and
 * its reply goes out when the operation ends, in any order. What may run
 * beside what is decided per fid (fids.ts, and each operation's comment).
 *
 * Tflush: a request still waiting for a fid lock is cancelled: it has no
 * effect and gets no reply. A request already running finishes, its reply
 * is sent, and the Rflush follows it (the Linux client then takes the
 * reply as the result, as 9P's flush(5) asks: "if a response to the flushed
 * request is received before the Rflush, the client must honor it"). Either
 * way the Rflush comes after the flushed request is over, so the tag can be
 * reused at once.
 *
 * Bounds: at most `maxInflight` requests run at once, holding at most
 * `maxInflightBytes` (their frames and the replies they may make); past
 * that, frames wait, and the stream is not read until some finish. No new
 * request starts, and the stream is not read, while the peer does not take
 * replies (write backpressure). So a session holds at most those requests
 * and their replies, one chunk of frames and one partial frame. Fids are
 * bounded by `maxFids`.
 * A frame that breaks the protocol (bad size, bad encoding, unknown type,
 * a tag in use) ends the session: the peer cannot be resynchronised.
 */
import { randomUUID } from 'node:crypto';
import type { Duplex } from 'node:stream';
import { Errno, MAX_MSIZE, MIN_MSIZE, NOTAG, PRE_VERSION_MAX_FRAME, VERSION_9P2000_L } from './constants.js';
import type { Authenticator } from './auth.js';
import type { OpContext } from './context.js';
import { P9Error, toErrno } from './errors.js';
import type { Export } from './export.js';
import { Cancelled, FidTable, type Fid } from './fids.js';
import { FrameReader } from './frames.js';
import { releaseFid } from './ops-util.js';
import { runOp } from './ops.js';
import { decode, DecodeError, encode, type Message, type MessageOf, type RMessage, type TMessage } from './wire.js';

/** Where a session finds its exports. */
export interface SessionHost {
  /** The export `aname` names; throws P9Error(ENOENT) when there is none. */
  exportFor(aname: string): Export;
  /** Told when a session has closed. */
  sessionClosed?(session: Session): void;
}

/** Bounds of one session. */
export interface SessionOptions {
  /** Most fids at once (default 65,536); past it Twalk/Tattach/Txattrwalk get EMFILE. */
  maxFids?: number;
  /** Most requests processed at once (default 256). */
  maxInflight?: number;
  /**
   * Most bytes the requests in flight may hold: their frames plus the
   * replies they may make (a Tread's or Treaddir's count). Default 16 MiB.
   * One request is always let through, whatever its size.
   */
  maxInflightBytes?: number;
  /** Largest msize agreed to (default and maximum 1 MiB). */
  maxMsize?: number;
  /**
   * Serve Tauth and require a valid afid at Tattach (servers reached over a
   * network). Without it, Tauth is EOPNOTSUPP and Tattach takes afid NOFID.
   */
  auth?: Authenticator;
}

/** Why `attach()` returned. */
export type AttachEnd = 'detached' | 'disconnected' | 'closed';

interface Request {
  tag: number;
  abort: AbortController;
  done: Promise<void>;
  /** What it counts against maxInflightBytes. */
  bytes: number;
}

const TREAD = 116;
const TREADDIR = 40;

/** The bytes a request may hold: its frame, plus the data a Tread or Treaddir may answer (read from the frame, capped at msize). */
function requestCost(frame: Buffer, msize: number): number {
  const type = frame.readUInt8(4);
  // Both are fid[4] offset[8] count[4] after the header.
  if ((type === TREAD || type === TREADDIR) && frame.length >= 23) return frame.length + Math.min(frame.readUInt32LE(19), msize);
  return frame.length + 64;
}

/** One client's 9P2000.L session. */
export class Session {
  /** A unique id (lock owners are scoped by it; kept across save and rebuild). */
  readonly id: string;
  readonly fids: FidTable;
  readonly maxInflight: number;
  readonly maxInflightBytes: number;
  readonly maxMsize: number;
  readonly auth: Authenticator | undefined;
  /** The error that ended the session, if a protocol error did. */
  error: Error | undefined;

  #msize = 0;
  readonly #reader = new FrameReader(PRE_VERSION_MAX_FRAME);
  readonly #inflight = new Map<number, Request>();
  #inflightBytes = 0;
  /** Frames received and not yet started. */
  #backlog: Buffer[] = [];
  /** Replies made while no stream was attached, sent on the next attach. */
  #outbox: Buffer[] = [];
  #versioning = false;
  #stream: Duplex | null = null;
  #unbind: ((end: AttachEnd) => void) | null = null;
  #writeBlocked = false;
  #detaching = false;
  #closed = false;
  #idle: Array<() => void> = [];

  constructor(
    readonly host: SessionHost,
    options: SessionOptions = {},
    id?: string,
  ) {
    this.id = id ?? randomUUID();
    this.fids = new FidTable(options.maxFids ?? 65536);
    this.maxInflight = Math.max(1, options.maxInflight ?? 256);
    this.maxInflightBytes = options.maxInflightBytes ?? 16 << 20;
    this.maxMsize = Math.min(options.maxMsize ?? MAX_MSIZE, MAX_MSIZE);
    this.auth = options.auth;
  }

  /** The negotiated msize (0 before Tversion). */
  get msize(): number {
    return this.#msize;
  }

  /** Requests in flight now. */
  get inflight(): number {
    return this.#inflight.size;
  }

  /** Whether a stream is attached. */
  get attached(): boolean {
    return this.#stream !== null;
  }

  /** Whether the session has ended (closed, or ended by a protocol error). */
  get closed(): boolean {
    return this.#closed;
  }

  /**
   * Serves requests from `stream` until it ends ('disconnected'), `detach()`
   * is called ('detached') or the session closes ('closed'). The session
   * keeps its state in every case but the last; the stream is the caller's
   * (the session destroys it only on a protocol error).
   */
  attach(stream: Duplex): Promise<AttachEnd> {
    if (this.#closed) return Promise.resolve('closed');
    if (this.#stream !== null) throw new Error('session is already attached to a stream');
    this.#stream = stream;
    this.#detaching = false;
    const onData = (chunk: Buffer): void => this.#onData(chunk);
    const onEnd = (): void => finish('disconnected');
    const onDrain = (): void => {
      this.#writeBlocked = false;
      this.#pump();
    };
    const finish = (end: AttachEnd): void => {
      if (this.#stream !== stream) return;
      stream.off('data', onData);
      stream.off('end', onEnd);
      stream.off('close', onEnd);
      stream.off('error', onEnd);
      stream.off('drain', onDrain);
      this.#stream = null;
      this.#unbind = null;
      this.#writeBlocked = false;
      resolve(end);
    };
    let resolve!: (end: AttachEnd) => void;
    const ended = new Promise<AttachEnd>((r) => (resolve = r));
    this.#unbind = finish;
    stream.on('data', onData);
    stream.on('end', onEnd);
    stream.on('close', onEnd);
    stream.on('error', onEnd);
    stream.on('drain', onDrain);
    // Replies that finished while no stream was attached go first.
    const outbox = this.#outbox;
    this.#outbox = [];
    for (const reply of outbox) this.#write(reply);
    this.#pump();
    return ended;
  }

  /**
   * Stops taking requests from the attached stream, waits until none is in
   * flight and their replies are written, and lets go of the stream. Frames
   * already received wait in the session for the next attach. After it the
   * session is quiescent and can be saved (serializeSession).
   */
  async detach(): Promise<void> {
    if (this.#stream === null) return this.#whenIdle();
    this.#detaching = true;
    this.#stream.pause();
    await this.#whenIdle();
    this.#unbind?.('detached');
  }

  /**
   * Ends the session: stops reading, lets running requests finish (their
   * replies are dropped), clunks every fid and releases its locks. The
   * stream, if attached, is let go (not destroyed).
   */
  async close(): Promise<void> {
    if (this.#closed) return this.#whenIdle();
    this.#closed = true;
    this.#backlog = [];
    this.#outbox = [];
    this.#stream?.pause();
    for (const req of this.#inflight.values()) req.abort.abort();
    await this.#whenIdle();
    this.#unbind?.('closed');
    await this.#reset();
    this.host.sessionClosed?.(this);
  }

  /** Clunks every fid and drops the session's locks (Tversion, close). */
  async #reset(): Promise<void> {
    const ctx = this.#context(null);
    const exports = new Set<Export>();
    for (const fid of [...this.fids.values()]) {
      exports.add(fid.export_);
      await releaseFid(ctx, fid);
    }
    for (const ex of exports) ex.locks.releaseOwners(`${this.id}\0`);
  }

  #whenIdle(): Promise<void> {
    if (this.#inflight.size === 0) return Promise.resolve();
    return new Promise((resolve) => this.#idle.push(resolve));
  }

  #onData(chunk: Buffer): void {
    if (this.#closed) return;
    let frames: Buffer[];
    try {
      frames = this.#reader.push(chunk);
    } catch (err) {
      this.#protocolError(err as Error);
      return;
    }
    for (const f of frames) this.#backlog.push(f);
    this.#pump();
  }

  /** Starts waiting frames while the bounds allow, and reads the stream only when none wait. */
  #pump(): void {
    while (this.#backlog.length > 0 && !this.#closed && !this.#detaching && !this.#versioning && this.#stream !== null) {
      if (this.#inflight.size >= this.maxInflight || this.#writeBlocked) break;
      const frame = this.#backlog[0]!;
      const cost = frame.length >= 7 ? requestCost(frame, this.#msize) : 0;
      if (this.#inflight.size > 0 && this.#inflightBytes + cost > this.maxInflightBytes) break;
      this.#backlog.shift();
      this.#handle(frame, cost);
    }
    const stream = this.#stream;
    if (stream === null || this.#closed || this.#detaching) return;
    const busy = this.#backlog.length > 0 || this.#inflight.size >= this.maxInflight || this.#writeBlocked || this.#versioning;
    if (busy) stream.pause();
    else stream.resume();
  }

  #handle(frame: Buffer, cost: number): void {
    let m: Message;
    try {
      m = decode(frame);
    } catch (err) {
      this.#protocolError(err as Error);
      return;
    }
    if (m.type[0] !== 'T') return this.#protocolError(new DecodeError(`${m.type} sent to the server`));
    if (m.type === 'Tversion') return this.#version(m);
    if (this.#msize === 0) return this.#protocolError(new DecodeError(`${m.type} before Tversion`));
    if (m.tag === NOTAG || this.#inflight.has(m.tag)) return this.#protocolError(new DecodeError(`tag ${m.tag} is in use`));
    if (m.type === 'Tflush') return this.#flush(m);
    this.#start(m as TMessage, cost);
  }

  #start(m: TMessage, cost: number): void {
    const req: Request = { tag: m.tag, abort: new AbortController(), done: Promise.resolve(), bytes: cost };
    this.#inflight.set(m.tag, req);
    this.#inflightBytes += cost;
    req.done = runOp(this.#context(req), m).then(
      (reply) => this.#finish(req, reply),
      (err: unknown) => this.#finish(req, err instanceof Cancelled ? null : { type: 'Rlerror', tag: m.tag, ecode: toErrno(err) }),
    );
  }

  /** A request is over: its reply (if it has one) is sent, then anything waiting for it (a flush) runs. */
  #finish(req: Request, reply: RMessage | null): void {
    this.#inflight.delete(req.tag);
    this.#inflightBytes -= req.bytes;
    if (reply !== null && !this.#closed) this.#reply(reply);
    if (this.#inflight.size === 0) {
      const idle = this.#idle;
      this.#idle = [];
      for (const resolve of idle) resolve();
    }
    this.#pump();
  }

  /** Tflush: cancels `oldtag` if it still waits, and answers after it is over. */
  #flush(m: MessageOf<'Tflush'>): void {
    const req: Request = { tag: m.tag, abort: new AbortController(), done: Promise.resolve(), bytes: 0 };
    const old = this.#inflight.get(m.oldtag);
    this.#inflight.set(m.tag, req);
    const rflush: RMessage = { type: 'Rflush', tag: m.tag };
    if (old === undefined) {
      req.done = Promise.resolve().then(() => this.#finish(req, rflush));
      return;
    }
    old.abort.abort();
    req.done = old.done.then(() => this.#finish(req, rflush));
  }

  /**
   * Tversion: waits for every request in flight, clunks every fid (as the
   * protocol asks), then agrees on the smaller msize. Anything but
   * 9P2000.L, or an msize under MIN_MSIZE, gets version "unknown".
   */
  #version(m: MessageOf<'Tversion'>): void {
    this.#versioning = true;
    const req: Request = { tag: m.tag, abort: new AbortController(), done: Promise.resolve(), bytes: 0 };
    req.done = this.#whenIdle()
      .then(() => {
        this.#inflight.set(m.tag, req);
        return this.#reset();
      })
      .then(() => {
        const msize = Math.min(m.msize, this.maxMsize);
        const ok = m.version.startsWith(VERSION_9P2000_L) && msize >= MIN_MSIZE;
        this.#msize = ok ? msize : 0;
        this.#reader.maxFrame = ok ? msize : PRE_VERSION_MAX_FRAME;
        this.#versioning = false;
        this.#finish(req, { type: 'Rversion', tag: m.tag, msize: ok ? msize : Math.min(m.msize, this.maxMsize), version: ok ? VERSION_9P2000_L : 'unknown' });
      });
  }

  #context(req: Request | null): OpContext {
    return {
      sessionId: this.id,
      msize: this.#msize,
      fids: this.fids,
      auth: this.auth,
      exportFor: (aname) => this.host.exportFor(aname),
      withFids: (locks, fn) => this.#withFids(req, locks, fn),
    };
  }

  /** Takes fid locks in fid order (so two-fid operations cannot deadlock), checks the fids are still there, runs `fn`. */
  async #withFids<T>(req: Request | null, locks: ReadonlyArray<readonly [Fid, boolean]>, fn: () => Promise<T>): Promise<T> {
    const wanted = new Map<Fid, boolean>();
    for (const [fid, exclusive] of locks) wanted.set(fid, (wanted.get(fid) ?? false) || exclusive);
    const order = [...wanted].sort((a, b) => a[0].id - b[0].id);
    const releases: Array<() => void> = [];
    try {
      for (const [fid, exclusive] of order) releases.push(await fid.lock.acquire(exclusive, req?.abort.signal));
      for (const [fid] of order) if (!this.fids.has(fid.id) || this.fids.get(fid.id) !== fid) throw new P9Error(Errno.EBADF, `fid ${fid.id} was clunked`);
      return await fn();
    } finally {
      for (const release of releases) release();
    }
  }

  #reply(reply: RMessage): void {
    let frame = encode(reply);
    if (frame.length > Math.max(this.#msize, PRE_VERSION_MAX_FRAME)) frame = encode({ type: 'Rlerror', tag: reply.tag, ecode: Errno.ERANGE });
    // A stream that is going away (destroyed, its 'close' not emitted yet) would lose the reply.
    if (this.#stream === null || this.#stream.destroyed || !this.#stream.writable) this.#outbox.push(frame);
    else this.#write(frame);
  }

  #write(frame: Buffer): void {
    const stream = this.#stream!;
    if (!stream.write(frame)) this.#writeBlocked = true;
  }

  /** Ends the session on a frame that breaks the protocol; the stream is destroyed (the peer is misbehaving). */
  #protocolError(err: Error): void {
    if (this.#closed) return;
    this.error = err;
    const stream = this.#stream;
    void this.close().finally(() => stream?.destroy());
  }

  // --- For session-snapshot.ts: saving and rebuilding. Not for other callers. ---

  /** @internal The frames and bytes held and not started, taken out (the session must be detached). */
  takeUnstarted(): { frames: Buffer[]; partial: Buffer; replies: Buffer[] } {
    const out = { frames: this.#backlog, partial: this.#reader.takePartial(), replies: this.#outbox };
    this.#backlog = [];
    this.#outbox = [];
    return out;
  }

  /** @internal Puts back what takeUnstarted took (the same session after saving, or a rebuilt one). */
  putUnstarted(msize: number, frames: Buffer[], partial: Buffer, replies: Buffer[]): void {
    this.#msize = msize;
    this.#reader.maxFrame = msize === 0 ? PRE_VERSION_MAX_FRAME : msize;
    this.#backlog.push(...frames);
    this.#outbox.push(...replies);
    if (partial.length > 0) {
      const frames2 = this.#reader.push(partial);
      this.#backlog.push(...frames2);
    }
  }
}
