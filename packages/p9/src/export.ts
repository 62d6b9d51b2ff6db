/**
 * An export: a backend with the state every session of it shares (the
 * path tree, the lock table) and the server's policy for it (read-only).
 */
import type { Backend } from './backend.js';
import { LockTable } from './locks.js';
import { PathTree } from './tree.js';

/** How an export is served. */
export interface ExportOptions {
  /** The file store. */
  backend: Backend;
  /** Refuse every change with EROFS (enforced by the server, whatever the backend allows). */
  readOnly?: boolean;
  /** The most lock ranges held at once (default 65,536). */
  maxLocks?: number;
}

/** One export as the server holds it. */
export class Export {
  readonly backend: Backend;
  readonly readOnly: boolean;
  readonly tree = new PathTree();
  readonly locks: LockTable;

  constructor(
    /** The name clients attach to (Tattach's aname; "" is the default export). */
    readonly name: string,
    options: ExportOptions,
  ) {
    this.backend = options.backend;
    this.readOnly = options.readOnly ?? false;
    this.locks = new LockTable(options.maxLocks);
  }
}
