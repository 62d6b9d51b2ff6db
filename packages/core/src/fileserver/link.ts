/**
 * The host end of a VM's 9P relay port (`roost.p9`, docs/PROTOCOL.md "The
 * 9P relay port"): mux frames in both directions, one byte stream per
 * volume channel, and the control exchanges that make the port quiet for
 * a snapshot (QUIESCE/QUIESCED, BARRIER/BARRIER_ACK, RESUME).
 */
import { Duplex } from 'node:stream';
import type { Socket } from 'node:net';
import { decodeMuxHello, encodeMuxFrame, MUX_HEADER, MUX_MAX_PAYLOAD, MuxKind, MuxParser, type MuxFrame } from '@roost/protocol';

/** A DATA frame's header alone (its payload is written after it, uncopied). */
function dataHeader(channel: number, length: number): Buffer {
  const h = Buffer.alloc(MUX_HEADER);
  h.writeUInt32LE(length, 0);
  h.writeUInt16LE(channel, 4);
  h[6] = MuxKind.DATA;
  return h;
}

/** One volume's 9P byte stream inside the port: what a p9 Session attaches to. */
export class ChannelStream extends Duplex {
  #wanted = true;

  constructor(
    readonly link: RelayLink,
    readonly channel: number,
  ) {
    super({ allowHalfOpen: false, readableHighWaterMark: 4 << 20, writableHighWaterMark: 4 << 20 });
  }

  /** Whether the reader wants more (else the link stops reading the port). */
  get wanted(): boolean {
    return this.#wanted;
  }

  /** @internal Bytes from the guest. */
  deliver(payload: Buffer): void {
    this.#wanted = this.push(payload);
  }

  override _read(): void {
    this.#wanted = true;
    this.link.wantMore();
  }

  override _write(chunk: Buffer, _encoding: BufferEncoding, callback: (error?: Error | null) => void): void {
    this.link.sendData(this.channel, chunk, callback);
  }

  /** Takes the bytes received and not yet read (the session let go of the stream). */
  drain(): Buffer {
    const parts: Buffer[] = [];
    let chunk: Buffer | null;
    while ((chunk = this.read() as Buffer | null) !== null) parts.push(chunk);
    return Buffer.concat(parts);
  }
}

/** What the link tells its owner. */
export interface RelayLinkEvents {
  /** DATA for a channel that has no stream yet: return one to take it, or null to refuse (the relay gets EOF). */
  open(channel: number): ChannelStream | null;
  /** The guest closed a channel (unmounted). */
  eof(channel: number): void;
  /** The relay (re)announced itself. */
  hello(quiesced: boolean, channels: number[]): void;
  /** The port is gone (QEMU exited) or broke the protocol. */
  closed(error?: Error): void;
}

/** A VM's relay port, over the socket QEMU serves it on. */
export class RelayLink {
  readonly #socket: Socket;
  readonly #events: RelayLinkEvents;
  readonly #parser = new MuxParser();
  readonly #streams = new Map<number, ChannelStream>();
  readonly #waiters = new Map<number, Array<(frame: MuxFrame) => void>>();
  #paused = false;
  #closed = false;

  constructor(socket: Socket, events: RelayLinkEvents) {
    this.#socket = socket;
    this.#events = events;
    socket.on('data', (chunk: Buffer) => this.#onData(chunk));
    socket.on('close', () => this.#close());
    socket.on('error', (err) => this.#close(err));
  }

  get closed(): boolean {
    return this.#closed;
  }

  /** The stream of `channel`, made if needed. */
  stream(channel: number): ChannelStream {
    let s = this.#streams.get(channel);
    if (s === undefined || s.destroyed) {
      s = new ChannelStream(this, channel);
      this.#streams.set(channel, s);
    }
    return s;
  }

  /** Replaces a channel's stream with a fresh one (after a session let go of the old). */
  renew(channel: number): ChannelStream {
    this.#streams.get(channel)?.destroy();
    this.#streams.delete(channel);
    const fresh = this.stream(channel);
    this.wantMore();
    return fresh;
  }

  /** Ends a channel from the host: the relay closes the guest's socket. */
  endChannel(channel: number): void {
    this.#streams.get(channel)?.destroy();
    this.#streams.delete(channel);
    this.send(channel, MuxKind.EOF);
    // It may have been the stream that stopped the port.
    this.wantMore();
  }

  /** Sends a control frame. */
  send(channel: number, kind: number, payload?: Buffer): void {
    if (this.#closed) return;
    this.#socket.write(encodeMuxFrame(channel, kind, payload));
  }

  /** Waits for the next frame of `kind` from the relay (control kinds), at most `timeoutMs`. */
  next(kind: number, timeoutMs: number, what: string): Promise<MuxFrame> {
    return new Promise((resolve, reject) => {
      if (this.#closed) return reject(new Error('the relay port is closed'));
      const list = this.#waiters.get(kind) ?? [];
      const done = (frame: MuxFrame): void => {
        clearTimeout(timer);
        resolve(frame);
      };
      const timer = setTimeout(() => {
        const i = list.indexOf(done);
        if (i >= 0) list.splice(i, 1);
        reject(new Error(`the guest's 9P relay did not answer ${what} within ${timeoutMs} ms`));
      }, timeoutMs);
      list.push(done);
      this.#waiters.set(kind, list);
    });
  }

  /** @internal DATA from a channel stream, in pieces the relay takes; `callback` once the socket took the last. */
  sendData(channel: number, chunk: Buffer, callback: (error?: Error | null) => void): void {
    if (this.#closed) return callback(new Error('the relay port is closed'));
    const socket = this.#socket;
    socket.cork();
    for (let off = 0; off < chunk.length; off += MUX_MAX_PAYLOAD) {
      const piece = chunk.subarray(off, Math.min(chunk.length, off + MUX_MAX_PAYLOAD));
      const last = off + MUX_MAX_PAYLOAD >= chunk.length;
      socket.write(dataHeader(channel, piece.length));
      if (last) socket.write(piece, (err) => callback(err ?? null));
      else socket.write(piece);
    }
    socket.uncork();
  }

  /** @internal A stream wants bytes again: read the port if every stream does. */
  wantMore(): void {
    if (!this.#paused) return;
    for (const s of this.#streams.values()) if (!s.wanted && !s.destroyed) return;
    this.#paused = false;
    this.#socket.resume();
  }

  close(): void {
    this.#socket.destroy();
  }

  #onData(chunk: Buffer): void {
    let frames: MuxFrame[];
    try {
      frames = this.#parser.feed(chunk);
    } catch (err) {
      this.#socket.destroy();
      this.#close(err as Error);
      return;
    }
    for (const f of frames) this.#frame(f);
  }

  #frame(f: MuxFrame): void {
    switch (f.kind) {
      case MuxKind.DATA: {
        let s = this.#streams.get(f.channel);
        if (s === undefined || s.destroyed) {
          const opened = this.#events.open(f.channel);
          if (opened === null) {
            this.send(f.channel, MuxKind.EOF);
            return;
          }
          s = opened;
        }
        s.deliver(f.payload);
        if (!s.wanted && !this.#paused) {
          // Backpressure: a session that holds enough work stops the port (every channel; the relay bounds its side too).
          this.#paused = true;
          this.#socket.pause();
        }
        return;
      }
      case MuxKind.EOF: {
        const s = this.#streams.get(f.channel);
        this.#streams.delete(f.channel);
        s?.push(null);
        this.#events.eof(f.channel);
        // A stream gone while it held the port stopped would stop every other channel for good.
        this.wantMore();
        return;
      }
      case MuxKind.HELLO: {
        try {
          const hello = decodeMuxHello(f.payload);
          this.#events.hello(hello.quiesced, hello.channels);
        } catch {
          // A malformed HELLO says nothing the server acts on.
        }
        return;
      }
      default: {
        const list = this.#waiters.get(f.kind);
        const w = list?.shift();
        w?.(f);
      }
    }
  }

  #close(err?: Error): void {
    if (this.#closed) return;
    this.#closed = true;
    for (const s of this.#streams.values()) s.destroy();
    this.#streams.clear();
    this.#waiters.clear();
    this.#events.closed(err);
  }
}
