import { ProtocolError, WatchEvent, decodeEventRecord, type EventRecord } from '@roost/protocol';
import type { FileEvent, FileWatchApi } from '@roost/api';
import { RoostError } from '../errors.js';
import type { Call } from './call.js';
import { isDirMode } from './entry-info.js';

/* `files.watch`: the guest's inotify events of one CALL, as an async iterable of FileEvents. */

/** How long a `renamed from` event waits for its `renamed to` partner before it is reported alone. */
const RENAME_PAIR_MS = 50;

/** A running `files.watch`. */
export class FileWatch implements FileWatchApi {
  #path: string;
  #call: Call | null = null;
  #queue: { record: EventRecord; bytes: number }[] = [];
  #ready = false;
  #readyWaiter: { resolve: () => void; reject: (e: RoostError) => void } | null = null;
  #closed = false;
  #ended = false;
  #error: RoostError | null = null;
  #iterating = false;
  #wake: (() => void) | null = null;
  /** Credit owed for records that came before attach() (none in practice: records arrive in later ticks). */
  #owed = 0;

  constructor(path: string) {
    this.#path = path;
  }

  /** @internal Called inside the frame's dispatch: throws ProtocolError on a bad record. */
  onRecord(payload: Buffer, bytes: number): void {
    const record = decodeEventRecord(payload);
    if (!this.#ready) {
      if (record.event !== WatchEvent.READY) throw new ProtocolError(`watch sent event ${record.event} before READY`);
      this.#ready = true;
      this.#grant(bytes);
      this.#readyWaiter?.resolve();
      return;
    }
    if (this.#closed) {
      this.#grant(bytes);
      return;
    }
    this.#queue.push({ record, bytes });
    this.#wake?.();
  }

  /** @internal Resolves with this watch once READY came; rejects with the call's error if it ended first. */
  attach(call: Call): Promise<FileWatchApi> {
    this.#call = call;
    if (this.#owed > 0) call.grant(this.#owed);
    this.#owed = 0;
    call.done.then(
      () => this.#end(null),
      (e: RoostError) => this.#end(e),
    );
    if (this.#ready) return Promise.resolve(this);
    return new Promise<FileWatchApi>((resolve, reject) => {
      this.#readyWaiter = { resolve: () => resolve(this), reject };
    });
  }

  #end(err: RoostError | null): void {
    this.#ended = true;
    this.#error = this.#closed ? null : err;
    if (!this.#ready) {
      this.#readyWaiter?.reject(err ?? new RoostError('AGENT', `watch ${this.#path}: the guest ended the watch before it was in place`));
      this.#readyWaiter = null;
    }
    this.#wake?.();
  }

  /** Stops watching (SIGTERM to the guest's watcher); iteration ends cleanly. Resolves once the watcher has ended. */
  async close(): Promise<void> {
    if (!this.#closed) {
      this.#closed = true;
      this.#grant(this.#queue.splice(0).reduce((n, q) => n + q.bytes, 0));
      this.#wake?.();
    }
    await this.#call?.cancel(null);
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }

  async *[Symbol.asyncIterator](): AsyncIterator<FileEvent> {
    if (this.#iterating) throw new RoostError('INVALID_STATE', 'this watch is already being iterated');
    this.#iterating = true;
    let finished = false;
    try {
      for (;;) {
        if (this.#closed) {
          finished = true;
          return;
        }
        const item = this.#take();
        if (item) {
          const r = item.record;
          if (r.event === WatchEvent.RENAME_FROM) {
            // Its partner comes right after it when the move stayed inside the watched tree.
            if (this.#queue.length === 0 && !this.#ended) await this.#waitFor(RENAME_PAIR_MS);
            if (this.#closed) continue;
            const next = this.#queue[0];
            if (next && next.record.event === WatchEvent.RENAME_TO) {
              this.#take();
              yield { type: 'rename', path: next.record.path, oldPath: r.path, isDir: isDir(r) || isDir(next.record) };
            } else {
              yield { type: 'remove', path: r.path, isDir: isDir(r) };
            }
            continue;
          }
          const ev = toFileEvent(r, this.#path);
          if (ev) yield ev;
          continue;
        }
        if (this.#ended) {
          finished = true;
          if (this.#error) throw this.#error;
          return;
        }
        await this.#waitFor();
      }
    } finally {
      this.#iterating = false;
      // A reader that breaks out stops the watch.
      if (!finished) void this.close();
    }
  }

  #take(): { record: EventRecord; bytes: number } | undefined {
    const item = this.#queue.shift();
    if (item) this.#grant(item.bytes);
    return item;
  }

  #grant(bytes: number): void {
    if (bytes <= 0) return;
    if (this.#call) this.#call.grant(bytes);
    else this.#owed += bytes;
  }

  #waitFor(ms?: number): Promise<void> {
    return new Promise<void>((resolve) => {
      const timer = ms === undefined ? undefined : setTimeout(done, ms);
      function done(): void {
        if (timer) clearTimeout(timer);
        resolve();
      }
      this.#wake = () => {
        this.#wake = null;
        done();
      };
    });
  }
}

function isDir(r: EventRecord): boolean {
  return isDirMode(r.stMode);
}

function toFileEvent(r: EventRecord, watched: string): FileEvent | null {
  switch (r.event) {
    case WatchEvent.CREATE:
      return { type: 'create', path: r.path, isDir: isDir(r) };
    case WatchEvent.WRITE:
      return { type: 'write', path: r.path, isDir: isDir(r) };
    case WatchEvent.REMOVE:
      return { type: 'remove', path: r.path, isDir: isDir(r) };
    case WatchEvent.RENAME_TO:
      return { type: 'rename', path: r.path, isDir: isDir(r) };
    case WatchEvent.CHMOD:
      return { type: 'chmod', path: r.path, isDir: isDir(r) };
    case WatchEvent.OVERFLOW:
      return { type: 'overflow', path: r.path || watched, isDir: false };
    default:
      return null; // READY again, or an event a newer agent added
  }
}
