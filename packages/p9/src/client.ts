/**
 * A small 9P2000.L client over a byte stream: the tests' driver, and the
 * start of the relays and remote volumes that will forward a guest's 9P.
 * It multiplexes requests by tag and matches replies; it does no caching.
 */
import type { Duplex } from 'node:stream';
import { Errno, MAX_MSIZE, NOFID, NOTAG, VERSION_9P2000_L } from './constants.js';
import { P9Error } from './errors.js';
import { FrameReader } from './frames.js';
import { decode, encode, type MessageOf, type RMessage, type TMessage } from './wire.js';

type Pending = { resolve: (m: RMessage) => void; reject: (e: Error) => void };

/** Distributes `Omit` over a union. */
type DistributiveOmit<T, K extends PropertyKey> = T extends unknown ? Omit<T, K> : never;

/** A T-message without its tag (the client picks it). */
export type Request = DistributiveOmit<TMessage, 'tag'>;

/** A 9P2000.L client on one stream. */
export class P9Client {
  readonly #pending = new Map<number, Pending>();
  readonly #reader = new FrameReader(MAX_MSIZE);
  #nextTag = 0;
  #closed: Error | null = null;
  /** The negotiated msize. */
  msize = 0;

  constructor(readonly stream: Duplex) {
    stream.on('data', (chunk: Buffer) => {
      try {
        for (const frame of this.#reader.push(chunk)) this.#onFrame(frame);
      } catch (err) {
        this.#fail(err as Error);
        stream.destroy();
      }
    });
    const end = (): void => this.#fail(new Error('connection closed'));
    stream.on('end', end);
    stream.on('close', end);
    stream.on('error', (err) => this.#fail(err));
  }

  #onFrame(frame: Buffer): void {
    const m = decode(frame) as RMessage;
    const p = this.#pending.get(m.tag);
    if (p === undefined) return;
    this.#pending.delete(m.tag);
    p.resolve(m);
  }

  #fail(err: Error): void {
    if (this.#closed !== null) return;
    this.#closed = err;
    for (const p of this.#pending.values()) p.reject(err);
    this.#pending.clear();
  }

  /** A free tag. */
  #tag(): number {
    for (let i = 0; i < 0xffff; i++) {
      const tag = this.#nextTag;
      this.#nextTag = (this.#nextTag + 1) % 0xffff;
      if (!this.#pending.has(tag)) return tag;
    }
    throw new Error('no free tag');
  }

  /** Sends a request with `tag` (or a free one) and resolves with its reply, whatever it is (Rlerror included). */
  send(request: Request, tag?: number): { tag: number; reply: Promise<RMessage> } {
    if (this.#closed !== null) return { tag: -1, reply: Promise.reject(this.#closed) };
    const t = tag ?? (request.type === 'Tversion' ? NOTAG : this.#tag());
    const reply = new Promise<RMessage>((resolve, reject) => this.#pending.set(t, { resolve, reject }));
    this.stream.write(encode({ ...request, tag: t } as TMessage));
    return { tag: t, reply };
  }

  /**
   * Sends a request and resolves with its reply; an Rlerror rejects with
   * P9Error. When `signal` aborts first, a Tflush is sent and the call
   * rejects with the signal's reason once the server has answered the flush
   * (so the tag is free again); a reply that beats the Rflush is honoured.
   */
  async rpc<K extends RMessage['type']>(request: Request, expect?: K, signal?: AbortSignal): Promise<Extract<RMessage, { type: K }>> {
    signal?.throwIfAborted();
    const sent = this.send(request);
    let reply: RMessage;
    if (signal === undefined) reply = await sent.reply;
    else {
      const onAbort = (): void => {
        const flush = this.send({ type: 'Tflush', oldtag: sent.tag });
        void flush.reply.then(
          () => {
            const p = this.#pending.get(sent.tag);
            if (p === undefined) return;
            this.#pending.delete(sent.tag);
            p.reject(signal.reason as Error);
          },
          () => undefined,
        );
      };
      signal.addEventListener('abort', onAbort, { once: true });
      try {
        reply = await sent.reply;
      } finally {
        signal.removeEventListener('abort', onAbort);
      }
    }
    if (reply.type === 'Rlerror') throw new P9Error(reply.ecode);
    if (expect !== undefined && reply.type !== expect) throw new P9Error(Errno.EPROTO, `expected ${expect}, got ${reply.type}`);
    return reply as Extract<RMessage, { type: K }>;
  }

  /** Tversion for 9P2000.L. */
  async version(msize = MAX_MSIZE): Promise<MessageOf<'Rversion'>> {
    const r = await this.rpc({ type: 'Tversion', msize, version: VERSION_9P2000_L }, 'Rversion');
    this.msize = r.msize;
    return r;
  }

  /** Tattach of `fid` to export `aname` as guest uid `uid` (with `afid` from {@link authenticate} on a server that asks for it). */
  attach(fid: number, aname = '', uid = 0, afid = NOFID): Promise<MessageOf<'Rattach'>> {
    return this.rpc({ type: 'Tattach', fid, afid, uname: '', aname, nUname: uid }, 'Rattach');
  }

  /**
   * Tauth of `afid` for export `aname`, then the token written to it: the
   * afid to pass to {@link attach} (and clunk after it).
   */
  async authenticate(afid: number, aname: string, token: string | Buffer, uid = 0): Promise<number> {
    await this.rpc({ type: 'Tauth', afid, uname: '', aname, nUname: uid }, 'Rauth');
    const data = typeof token === 'string' ? Buffer.from(token) : token;
    await this.rpc({ type: 'Twrite', fid: afid, offset: 0n, data }, 'Rwrite');
    return afid;
  }

  /** Twalk from `fid` to `newfid` through `names` ('a/b' strings are split). */
  walk(fid: number, newfid: number, names: string[] | string): Promise<MessageOf<'Rwalk'>> {
    const list = typeof names === 'string' ? names.split('/').filter((n) => n !== '') : names;
    return this.rpc({ type: 'Twalk', fid, newfid, names: list.map((n) => Buffer.from(n)) }, 'Rwalk');
  }

  /** Tclunk. */
  clunk(fid: number): Promise<MessageOf<'Rclunk'>> {
    return this.rpc({ type: 'Tclunk', fid }, 'Rclunk');
  }

  /** Ends the connection; pending requests reject. */
  close(): void {
    this.stream.destroy();
    this.#fail(new Error('client closed'));
  }
}
