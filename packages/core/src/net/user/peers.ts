/**
 * The two ends a guest TCP connection can be relayed to: a host socket
 * (the guest connected out) or a Duplex handed to the runtime (the runtime
 * connected in, for port forwarding).
 */
import type { Socket } from 'node:net';
import { Duplex } from 'node:stream';
import type { TcpCloseReason, TcpConnection, TcpPeer } from './tcp.js';

/** An Error with a Node-style `code` (ECONNREFUSED, ETIMEDOUT, ...), as net.Socket's errors have. */
export type FlowError = Error & { code: string };

/** Makes a FlowError. */
export function flowError(code: string, message: string): FlowError {
  return Object.assign(new Error(message), { code });
}

/** Relays one guest connection to a host socket. */
export class HostSocketPeer implements TcpPeer {
  readonly #afterWrite: () => void;

  constructor(
    readonly conn: TcpConnection,
    readonly socket: Socket,
    readonly log: (msg: string) => void,
  ) {
    this.#afterWrite = () => {
      try {
        if (conn.state === 'established') conn.windowMaybeOpened();
      } catch (err) {
        log(`tcp window update failed: ${String(err)}`);
      }
    };
    socket.on('data', (chunk: Buffer) => {
      try {
        if (!conn.send(chunk)) socket.pause();
      } catch (err) {
        log(`tcp relay failed: ${String(err)}`);
        socket.destroy();
      }
    });
    socket.on('end', () => {
      try {
        conn.end();
      } catch (err) {
        log(`tcp relay end failed: ${String(err)}`);
      }
    });
  }

  onEstablished(): void {}

  onData(data: Buffer): void {
    if (!this.socket.destroyed && this.socket.writable) this.socket.write(data, this.#afterWrite);
  }

  pendingBytes(): number {
    return this.socket.writableLength;
  }

  onFin(): void {
    if (!this.socket.destroyed) this.socket.end();
  }

  onSendSpace(): void {
    if (!this.socket.destroyed) this.socket.resume();
  }

  onClose(reason: TcpCloseReason): void {
    // A clean close needs nothing: both directions have ended and the socket closes itself once flushed.
    if (reason !== undefined && !this.socket.destroyed) this.socket.resetAndDestroy();
  }

  /** The host side failed after connecting: the guest gets RST. */
  onSocketError(err: Error): void {
    if (this.conn.state !== 'closed') {
      this.log(`tcp connection to ${this.socket.remoteAddress ?? '?'}:${this.socket.remotePort ?? '?'}: ${err.message}`);
      this.conn.abort('ECONNRESET');
    }
  }

  /** The host socket is gone; unless the TCP close is already under way, the guest gets RST. */
  onSocketClose(): void {
    const conn = this.conn;
    if (conn.state === 'closed' || conn.state === 'connecting') return;
    // Closed without an error: the host's FIN was relayed and ours forwarded; the guest's ACK of our FIN finishes the connection.
    if (this.socket.readableEnded && this.socket.writableFinished) return;
    conn.abort('ECONNRESET');
  }
}

/** The Duplex of UserNet.connectTcp. */
export class GuestTcpStream extends Duplex implements TcpPeer {
  conn: TcpConnection | null = null;
  guestPort = 0;
  #established = false;
  #heldWrite: { chunk: Buffer; callback: (err?: Error | null) => void } | null = null;
  #heldFinal: ((err?: Error | null) => void) | null = null;
  #waitingForSpace: ((err?: Error | null) => void) | null = null;

  constructor() {
    // Not autoDestroy: both ends finishing here (our FIN queued, theirs read) is not the end of the
    // connection while queued bytes are still on their way to the guest; destroy() would reset it
    // and drop them. The stream is destroyed when the connection is gone (onClose).
    super({ allowHalfOpen: true, autoDestroy: false, readableHighWaterMark: 256 * 1024, writableHighWaterMark: 256 * 1024 });
  }

  onEstablished(): void {
    this.#established = true;
    this.emit('connect');
    const held = this.#heldWrite;
    this.#heldWrite = null;
    if (held) this.#writeNow(held.chunk, held.callback);
    const final = this.#heldFinal;
    this.#heldFinal = null;
    if (final) this._final(final);
  }

  onData(data: Buffer): void {
    this.push(data);
  }

  pendingBytes(): number {
    return this.readableLength;
  }

  onFin(): void {
    this.push(null);
  }

  onSendSpace(): void {
    const callback = this.#waitingForSpace;
    this.#waitingForSpace = null;
    callback?.();
  }

  onClose(reason: TcpCloseReason): void {
    const error = reason === undefined ? null : this.#error(reason);
    for (const callback of [this.#waitingForSpace, this.#heldWrite?.callback, this.#heldFinal])
      callback?.(error ?? flowError('EPIPE', 'the connection is closed'));
    this.#waitingForSpace = null;
    this.#heldWrite = null;
    this.#heldFinal = null;
    if (error !== null) this.destroy(error);
    // A clean close: what the guest sent is still readable here until the consumer has it.
    else if (this.readableEnded) this.destroy();
    else this.once('end', () => this.destroy());
  }

  #error(reason: Exclude<TcpCloseReason, undefined>): FlowError {
    const what = `guest port ${this.guestPort}`;
    switch (reason) {
      case 'ECONNREFUSED':
        return flowError(reason, `connection to ${what} refused: nothing listens there`);
      case 'ETIMEDOUT':
        return flowError(reason, `connection to ${what} timed out: the guest did not answer`);
      case 'ECONNRESET':
        return flowError(reason, `connection to ${what} was reset`);
    }
  }

  override _write(chunk: Buffer, _encoding: BufferEncoding, callback: (err?: Error | null) => void): void {
    if (!this.#established) {
      this.#heldWrite = { chunk, callback };
      return;
    }
    this.#writeNow(chunk, callback);
  }

  #writeNow(chunk: Buffer, callback: (err?: Error | null) => void): void {
    const conn = this.conn;
    if (conn === null || conn.state === 'closed') {
      callback(flowError('EPIPE', `the connection to guest port ${this.guestPort} is closed`));
      return;
    }
    if (conn.send(chunk)) callback();
    else this.#waitingForSpace = callback;
  }

  override _final(callback: (err?: Error | null) => void): void {
    if (!this.#established) {
      this.#heldFinal = callback;
      return;
    }
    this.conn?.end();
    callback();
  }

  override _read(): void {
    const conn = this.conn;
    if (conn !== null && conn.state === 'established') conn.windowMaybeOpened();
  }

  override _destroy(err: Error | null, callback: (err?: Error | null) => void): void {
    const conn = this.conn;
    if (conn !== null && conn.state !== 'closed') conn.abort('ECONNRESET');
    callback(err);
  }
}
