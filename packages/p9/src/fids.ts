/**
 * Fids: the client's handles on files. A fid names a node of an export's
 * path tree, may hold an open file, or may be an extended-attribute fid
 * (Txattrwalk's reader, Txattrcreate's writer).
 *
 * Each fid has a readers-writer lock. Operations that change the fid
 * itself (open, create, xattrcreate, clunk, remove, readdir's cursor) take
 * it exclusively; the others (read, write, getattr, fsync, walking from it,
 * ...) take it shared and may run at the same time on one fid. So a clunk
 * waits for the reads in flight on its fid and closes the descriptor only
 * after them, and a read never sees a descriptor closed under it.
 */
import type { FileHandle } from './backend.js';
import { Errno } from './constants.js';
import { P9Error } from './errors.js';
import type { Export } from './export.js';
import type { PathNode } from './tree.js';

/** The request was flushed while it waited: it ends without effect and without a reply. */
export class Cancelled extends Error {
  override readonly name = 'Cancelled';
}

interface Waiter {
  exclusive: boolean;
  resolve: () => void;
  reject: (err: Error) => void;
}

/** A FIFO readers-writer lock whose waits a flush can cancel. */
export class RwLock {
  #readers = 0;
  #writer = false;
  readonly #queue: Waiter[] = [];

  /** Waits for the lock; rejects with Cancelled if `signal` aborts first. Returns the release function. */
  async acquire(exclusive: boolean, signal?: AbortSignal): Promise<() => void> {
    if (signal?.aborted) throw new Cancelled();
    if (this.#queue.length === 0 && (exclusive ? !this.#writer && this.#readers === 0 : !this.#writer)) {
      this.#take(exclusive);
      return this.#releaser(exclusive);
    }
    await new Promise<void>((resolve, reject) => {
      const waiter: Waiter = { exclusive, resolve, reject };
      this.#queue.push(waiter);
      signal?.addEventListener(
        'abort',
        () => {
          const i = this.#queue.indexOf(waiter);
          if (i === -1) return;
          this.#queue.splice(i, 1);
          reject(new Cancelled());
          this.#wake();
        },
        { once: true },
      );
    });
    return this.#releaser(exclusive);
  }

  #take(exclusive: boolean): void {
    if (exclusive) this.#writer = true;
    else this.#readers++;
  }

  #releaser(exclusive: boolean): () => void {
    let done = false;
    return () => {
      if (done) return;
      done = true;
      if (exclusive) this.#writer = false;
      else this.#readers--;
      this.#wake();
    };
  }

  #wake(): void {
    while (this.#queue.length > 0) {
      const next = this.#queue[0]!;
      if (next.exclusive ? this.#writer || this.#readers > 0 : this.#writer) return;
      this.#queue.shift();
      this.#take(next.exclusive);
      next.resolve();
    }
  }

  /** Whether anything holds or waits for the lock. */
  get idle(): boolean {
    return !this.#writer && this.#readers === 0 && this.#queue.length === 0;
  }
}

/** Txattrwalk's result: the value (or name list) read with Tread. */
export interface XattrRead {
  kind: 'read';
  data: Buffer;
}

/** Txattrcreate's pending value, written with Twrite and set on Tclunk. */
export interface XattrWrite {
  kind: 'write';
  name: string;
  size: number;
  flags: number;
  data: Buffer;
  written: number;
}

/** Tauth's afid: the token the client writes to it, checked at Tattach. */
export interface AuthState {
  /** The export the client asked to authenticate for (Tauth's aname). */
  aname: string;
  /** The bytes written so far (bounded by MAX_TOKEN_BYTES). */
  token: Buffer;
}

/** The most bytes a client may write to an auth fid. */
export const MAX_TOKEN_BYTES = 512;

/** One fid. */
export class Fid {
  readonly lock = new RwLock();
  /** The open file, after Tlopen/Tlcreate. */
  handle: FileHandle | undefined;
  /** The flags it was opened with (kept to reopen it in a rebuilt session). */
  openFlags: number | undefined;
  /** The cookie the next Treaddir is expected to continue from (kept for a rebuilt session). */
  dirOffset = 0n;
  /** Set when this is an extended-attribute fid. */
  xattr: XattrRead | XattrWrite | undefined;
  /** An errno every operation but clunk fails with (a fid a rebuilt session could not restore). */
  stale: number | undefined;
  /** Set when this is an authentication fid (Tauth's afid). */
  auth: AuthState | undefined;

  constructor(
    readonly id: number,
    readonly export_: Export,
    public node: PathNode,
    /** The guest uid from Tattach, owner of what this fid creates. */
    readonly uid: number,
    /**
     * Attached with a read-only token: every change through it (and the
     * fids walked from it) is EROFS, whatever the export allows.
     */
    readonly readOnly = false,
  ) {}

  /** Throws the fid's stale errno, if it has one. */
  checkUsable(): void {
    if (this.stale !== undefined) throw new P9Error(this.stale);
  }
}

/** A session's fids, at most `max` of them. */
export class FidTable {
  readonly #fids = new Map<number, Fid>();

  constructor(readonly max: number) {}

  /** The fid `id`, or EBADF. */
  get(id: number): Fid {
    const fid = this.#fids.get(id);
    if (fid === undefined) throw new P9Error(Errno.EBADF, `unknown fid ${id}`);
    return fid;
  }

  /** Whether `id` is in use. */
  has(id: number): boolean {
    return this.#fids.has(id);
  }

  /** Checks `id` can be added: EBADF when in use, EMFILE at the bound. */
  checkFree(id: number): void {
    if (this.#fids.has(id)) throw new P9Error(Errno.EBADF, `fid ${id} is in use`);
    if (this.#fids.size >= this.max) throw new P9Error(Errno.EMFILE, `more than ${this.max} fids`);
  }

  /** Adds a fid (after checkFree). The fid holds a reference on its node. */
  add(fid: Fid): void {
    this.checkFree(fid.id);
    fid.export_.tree.ref(fid.node);
    this.#fids.set(fid.id, fid);
  }

  /** Removes a fid and drops its node reference (its handle is the caller's to close). */
  delete(fid: Fid): void {
    if (this.#fids.get(fid.id) !== fid) return;
    this.#fids.delete(fid.id);
    fid.export_.tree.unref(fid.node);
  }

  /** Moves a fid to another node (a walk onto itself, lcreate). */
  move(fid: Fid, node: PathNode): void {
    const tree = fid.export_.tree;
    tree.ref(node);
    const old = fid.node;
    fid.node = node;
    tree.unref(old);
  }

  /** Every fid. */
  values(): IterableIterator<Fid> {
    return this.#fids.values();
  }

  get size(): number {
    return this.#fids.size;
  }
}
