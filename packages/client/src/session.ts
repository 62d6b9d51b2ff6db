import { isRoostError, RoostError, SESSION_HEADER, sleep, type Session } from '@roost/api';
import type { StreamingResponse, Transport } from './http.js';

/**
 * This client's session on the daemon: the owner of the sandboxes it makes
 * that are not detached (see @roost/api's sessions.ts). Opened on first
 * use; its stream is held open without keeping the process alive, so when
 * the process ends, however it ends, the daemon sees the connection close
 * and ends those sandboxes after its grace period. A stream that drops
 * while the client is open is resumed (within the daemon's grace period);
 * a session the daemon has ended is replaced by a new one on next use.
 *
 * Concurrency: any number of `header()` calls at once share one opening.
 */
export class SessionLink {
  readonly #transport: Transport;
  #current: Promise<{ id: string; stream: StreamingResponse; graceMs: number }> | null = null;
  /** The session `#current` resolved to, once it has. */
  #opened: { id: string; stream: StreamingResponse } | null = null;
  #closed = false;

  constructor(transport: Transport) {
    this.#transport = transport;
  }

  /** The header that puts a create (or fork) in this client's session, opening the session first if needed. */
  async header(): Promise<Record<string, string>> {
    if (this.#closed) throw new RoostError('ABORTED', 'the client was closed');
    const current = (this.#current ??= this.#open());
    try {
      return { [SESSION_HEADER]: (await current).id };
    } catch (e) {
      if (this.#current === current) this.#current = null;
      throw e;
    }
  }

  /**
   * Ends the session on the daemon (its sandboxes end before this resolves)
   * and drops its stream. A daemon that does not answer in time ends it when
   * it sees the stream close.
   */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    const current = this.#current;
    this.#current = null;
    const session = await current?.catch(() => null);
    if (!session) return;
    try {
      await this.#transport.json('DELETE', `/v1/sessions/${session.id}`, { timeoutMs: 30_000, what: 'ending the session' });
    } catch {
      // Gone already, or the daemon is: it ends the session itself when the stream closes.
    } finally {
      session.stream.abort(new RoostError('ABORTED', 'the client was closed'));
    }
  }

  /**
   * Forgets the session `id` names when the daemon said it has ended (a
   * daemon restarted meanwhile): the next `header()` opens a new one.
   */
  forget(id: string): void {
    const open = this.#opened;
    if (!open || open.id !== id) return;
    this.#current = null;
    this.#opened = null;
    open.stream.abort(new RoostError('ABORTED', `session ${id} has ended`));
  }

  async #open(resume?: string): Promise<{ id: string; stream: StreamingResponse; graceMs: number }> {
    const request = () =>
      this.#transport.stream('POST', '/v1/sessions', {
        accept: 'application/x-ndjson',
        ...(resume ? { headers: { [SESSION_HEADER]: resume } } : {}),
        what: resume ? `resuming session ${resume}` : 'opening a session',
      });
    // Opening (or resuming) twice is harmless: a kept-alive socket the daemon had just closed is retried once.
    const stream = await request().catch((e: unknown) => {
      if ((e as { retryable?: boolean }).retryable) return request();
      throw e;
    });
    // Held open for the life of the client, not of the process.
    stream.res.socket?.unref();
    const first = await new Promise<Session>((resolve, reject) => {
      let buf = '';
      const onData = (chunk: Buffer) => {
        buf += chunk.toString('utf8');
        const nl = buf.indexOf('\n');
        if (nl < 0) return;
        cleanup();
        try {
          resolve(JSON.parse(buf.slice(0, nl)) as Session);
        } catch (e) {
          reject(new RoostError('INTERNAL', 'opening a session: the daemon answered with something other than a session line', { cause: e }));
        }
      };
      const onEnd = () => {
        cleanup();
        reject(new RoostError('UNAVAILABLE', 'opening a session: the daemon closed the stream before naming the session'));
      };
      const cleanup = () => {
        stream.res.off('data', onData);
        stream.res.off('end', onEnd);
        stream.res.off('close', onEnd);
      };
      stream.res.on('data', onData);
      stream.res.once('end', onEnd);
      stream.res.once('close', onEnd);
    });
    const session = { id: first.id, stream, graceMs: first.graceMs };
    this.#opened = session;
    // Keepalive lines are read and dropped; when the stream ends, the session is resumed while the client is open.
    stream.res.on('data', () => {});
    stream.res.once('close', () => void this.#dropped(session));
    return session;
  }

  /** The stream of `session` ended: resume it (retrying within its grace period), or forget it. */
  async #dropped(session: { id: string; graceMs: number }): Promise<void> {
    const mine = this.#current;
    if (this.#closed || !mine) return;
    const deadline = Date.now() + session.graceMs;
    let delay = 100;
    for (;;) {
      if (this.#closed || this.#current !== mine) return;
      try {
        const resumed = this.#open(session.id);
        await resumed;
        if (this.#closed || this.#current !== mine) {
          void resumed.then((s) => s.stream.abort(new RoostError('ABORTED', 'the client was closed')));
          return;
        }
        this.#current = resumed;
        return;
      } catch (e) {
        // Ended by the daemon (or a new daemon that never knew it): its sandboxes are gone; the next use opens a new session.
        if (isRoostError(e, 'NOT_FOUND') || Date.now() + delay > deadline) {
          if (this.#current === mine) this.#current = null;
          return;
        }
      }
      await sleep(delay, this.#transport.closedSignal).catch(() => {});
      delay = Math.min(delay * 2, 1_000);
    }
  }
}
