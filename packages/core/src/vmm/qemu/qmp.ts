import { EventEmitter } from 'node:events';
import { connect, type Socket } from 'node:net';
import { RoostError } from '../../errors.js';
import type { VmIoError } from '../types.js';

/** A QMP event as QEMU sends it. */
export interface QmpEvent {
  event: string;
  data?: Record<string, unknown>;
  timestamp?: { seconds: number; microseconds: number };
}

const MAX_LINE = 1 << 20;

/**
 * A QMP (QEMU Machine Protocol) client over a unix socket: one JSON object a
 * line, commands matched to replies by id. Emits 'event' (QmpEvent) and
 * 'close'. QMP lives on the host side of the VM, so a guest cannot write to
 * it; lines are still bounded.
 */
export class QmpClient extends EventEmitter {
  #socket: Socket;
  #buffer = '';
  #nextId = 1;
  #pending = new Map<string, { resolve: (v: unknown) => void; reject: (e: Error) => void }>();
  #closed = false;

  private constructor(socket: Socket) {
    super();
    this.#socket = socket;
    socket.setEncoding('utf8');
    socket.on('data', (chunk: string) => this.#onData(chunk));
    socket.on('error', () => {});
    socket.on('close', () => this.#onClose());
  }

  /** Connects, reads the greeting and enters command mode. */
  static async connect(path: string, signal?: AbortSignal): Promise<QmpClient> {
    const socket = await new Promise<Socket>((resolve, reject) => {
      const s = connect(path);
      s.once('connect', () => resolve(s));
      s.once('error', reject);
    });
    const client = new QmpClient(socket);
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => reject(new RoostError('VMM', 'QEMU sent no QMP greeting within 10 s')), 10_000);
      const onAbort = () => reject(new RoostError('ABORTED', 'QMP connect aborted'));
      signal?.addEventListener('abort', onAbort, { once: true });
      if (signal?.aborted) onAbort();
      client.once('greeting', () => {
        clearTimeout(timer);
        signal?.removeEventListener('abort', onAbort);
        resolve();
      });
      client.once('close', () => reject(new RoostError('VMM', 'QEMU closed QMP before its greeting')));
    }).catch((e: unknown) => {
      client.close();
      throw e;
    });
    await client.execute('qmp_capabilities');
    return client;
  }

  /** Holds the event loop only while a command waits for its reply. */
  #updateRef(): void {
    if (this.#pending.size > 0) this.#socket.ref();
    else this.#socket.unref();
  }

  /** Runs a QMP command and returns its `return` value. */
  execute<T = unknown>(command: string, args?: Record<string, unknown>, timeoutMs = 10_000): Promise<T> {
    if (this.#closed) return Promise.reject(new RoostError('VMM', `QMP is closed; cannot run ${command}`));
    const id = String(this.#nextId++);
    return new Promise<T>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.#pending.delete(id);
        this.#updateRef();
        reject(new RoostError('TIMEOUT', `QMP command ${command} got no answer within ${timeoutMs} ms`));
      }, timeoutMs);
      this.#pending.set(id, {
        resolve: (v) => {
          clearTimeout(timer);
          resolve(v as T);
        },
        reject: (e) => {
          clearTimeout(timer);
          reject(e);
        },
      });
      this.#updateRef();
      this.#socket.write(JSON.stringify({ execute: command, ...(args ? { arguments: args } : {}), id }) + '\n');
    });
  }

  close(): void {
    this.#socket.destroy();
  }

  get closed(): boolean {
    return this.#closed;
  }

  #onData(chunk: string): void {
    this.#buffer += chunk;
    if (this.#buffer.length > MAX_LINE && !this.#buffer.includes('\n')) {
      this.#socket.destroy(new Error('QMP line too long'));
      return;
    }
    let nl: number;
    while ((nl = this.#buffer.indexOf('\n')) >= 0) {
      const line = this.#buffer.slice(0, nl).trim();
      this.#buffer = this.#buffer.slice(nl + 1);
      if (!line) continue;
      let msg: Record<string, unknown>;
      try {
        msg = JSON.parse(line) as Record<string, unknown>;
      } catch {
        continue;
      }
      if ('QMP' in msg) this.emit('greeting', msg);
      else if ('event' in msg) this.emit('event', msg as unknown as QmpEvent);
      else if (typeof msg.id === 'string') {
        const p = this.#pending.get(msg.id);
        if (!p) continue;
        this.#pending.delete(msg.id);
        this.#updateRef();
        if ('error' in msg) {
          const err = msg.error as { class?: string; desc?: string };
          p.reject(new RoostError('VMM', `QMP: ${err.desc ?? 'error'} (${err.class ?? 'unknown'})`));
        } else p.resolve(msg.return);
      }
    }
  }

  #onClose(): void {
    this.#closed = true;
    for (const p of this.#pending.values()) p.reject(new RoostError('VMM', 'QMP connection closed (QEMU exited)'));
    this.#pending.clear();
    this.emit('close');
  }
}

/**
 * The host disk error of a `BLOCK_IO_ERROR` event that stopped the VM (a
 * drive with `werror=stop`/`rerror=stop`), or null for any other event
 * (errors reported to the guest, or ignored, do not stop it).
 */
export function ioErrorOf(event: QmpEvent): VmIoError | null {
  if (event.event !== 'BLOCK_IO_ERROR' || event.data?.action !== 'stop') return null;
  const reason = typeof event.data.reason === 'string' ? event.data.reason : 'I/O error';
  return { nospace: event.data.nospace === true, message: reason };
}

/**
 * The host disk error a VM is stopped on (status `io-error`), from the
 * devices' I/O status (`query-block`); null when it is not stopped on one.
 * For a client that connects after the event was sent.
 */
export async function stoppedOnIoError(qmp: QmpClient): Promise<VmIoError | null> {
  const status = await qmp.execute<{ status: string }>('query-status');
  if (status.status !== 'io-error') return null;
  const devices = await qmp.execute<{ device: string; 'io-status'?: string }[]>('query-block');
  const failed = devices.find((d) => d['io-status'] === 'nospace' || d['io-status'] === 'failed');
  const nospace = failed?.['io-status'] === 'nospace';
  return { nospace, message: nospace ? 'No space left on device' : 'I/O error' };
}
