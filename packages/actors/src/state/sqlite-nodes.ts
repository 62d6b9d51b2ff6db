/**
 * The state trees' node store in SQLite: one row per node (by content hash),
 * with an exact reference count: refs(node) = the stored nodes that reference
 * it + the retains of it as a root not yet released. A node at 0 is deleted.
 */
import { RoostError } from '@roost/api';
import type Database from 'better-sqlite3';
import { EMPTY_LEAF_BODY, EMPTY_ROOT, childrenOf, corrupt } from './node-format.js';
import type { NewNode, NodeSource } from './state-tree.js';

/** Creates the node table if missing (called by the actors' database setup). */
export function createNodeTables(db: Database.Database): void {
  db.exec('CREATE TABLE IF NOT EXISTS state_nodes (hash BLOB PRIMARY KEY, body BLOB NOT NULL, refs INTEGER NOT NULL) WITHOUT ROWID');
}

function missing(hash: Buffer, what: string): RoostError {
  return new RoostError('INTERNAL', `state node ${hash.toString('hex')} is missing (${what}): the actors' database is damaged; restore it from a backup`, {
    details: { hash: hash.toString('hex') },
  });
}

/** A pending change of one node's reference count. */
interface Delta {
  hash: Buffer;
  d: number;
}

/**
 * The nodes of every actor's state tree in one SQLite database. Synchronous;
 * `retain`, `release` and `advance` run inside the caller's transaction (a
 * version's nodes and its reference are written with the rest of its commit).
 *
 * Each call nets the reference changes it makes before writing them: a
 * commit's new branch references the same 15 siblings its old version did,
 * so `advance` (retain the new root, release the old) writes only the nodes
 * that come and go.
 */
export class SqliteNodes implements NodeSource {
  readonly #get: Database.Statement<[Buffer], Buffer>;
  readonly #insert: Database.Statement<[Buffer, Buffer, number]>;
  readonly #addRefs: Database.Statement<[number, Buffer], number>;
  readonly #deleteAt: Database.Statement<[Buffer, number], Buffer>;

  constructor(db: Database.Database) {
    this.#get = db.prepare<[Buffer], Buffer>('SELECT body FROM state_nodes WHERE hash = ?').pluck();
    this.#insert = db.prepare<[Buffer, Buffer, number]>('INSERT OR IGNORE INTO state_nodes (hash, body, refs) VALUES (?, ?, ?)');
    this.#addRefs = db.prepare<[number, Buffer], number>('UPDATE state_nodes SET refs = refs + ? WHERE hash = ? RETURNING refs').pluck();
    this.#deleteAt = db.prepare<[Buffer, number], Buffer>('DELETE FROM state_nodes WHERE hash = ? AND refs = ? RETURNING body').pluck();
  }

  get(hash: Buffer): Buffer | undefined {
    return this.#get.get(hash);
  }

  /**
   * Stores a commit's new nodes (children before parents, as `commit` gives
   * them; `children` as `childrenOf(body)` gives them): a node stored for the
   * first time adds one reference to each of its children, one already there
   * is left as it is, and one nothing references is not stored. Then adds
   * one reference to `root`.
   */
  retain(root: Buffer, nodes: NewNode[]): void {
    this.#apply(nodes, root, undefined);
  }

  /**
   * Removes one reference from `root`; a node left with none is deleted and
   * releases its children, and so on (iteratively). Returns the number of
   * nodes deleted.
   */
  release(root: Buffer): number {
    return this.#apply([], undefined, root);
  }

  /** `retain(root, nodes)` then `release(previous)`, in fewer writes. Returns the number of nodes deleted. */
  advance(previous: Buffer, root: Buffer, nodes: NewNode[]): number {
    return this.#apply(nodes, root, previous);
  }

  #apply(nodes: NewNode[], plus: Buffer | undefined, minus: Buffer | undefined): number {
    const deltas = new Map<string, Delta>();
    const add = (hash: Buffer, d: number): string => {
      const key = hash.toString('latin1');
      const e = deltas.get(key);
      if (e === undefined) deltas.set(key, { hash, d });
      else e.d += d;
      return key;
    };
    if (plus !== undefined) {
      add(plus, 1);
      if (plus.equals(EMPTY_ROOT)) nodes = [...nodes, { hash: EMPTY_ROOT, body: EMPTY_LEAF_BODY, children: [] }];
    }
    // Parents first: when a node comes, every new parent of the batch has counted itself in its delta,
    // so a node stored for the first time is stored with its final count.
    for (let i = nodes.length - 1; i >= 0; i--) {
      const node = nodes[i] as NewNode;
      const key = node.hash.toString('latin1');
      const e = deltas.get(key);
      if (e === undefined || e.d <= 0) continue;
      if (this.#insert.run(node.hash, node.body, e.d).changes !== 1) continue; // there already: an update below
      deltas.delete(key);
      for (const child of node.children) add(child, 1);
    }
    // Then the releases, cascading; they net with the references just added (siblings a new node shares with an old one).
    const negative: string[] = [];
    if (minus !== undefined) negative.push(add(minus, -1));
    let deleted = 0;
    for (let key = negative.pop(); key !== undefined; key = negative.pop()) {
      const e = deltas.get(key);
      if (e === undefined || e.d >= 0) continue;
      deltas.delete(key);
      const body = this.#deleteAt.get(e.hash, -e.d);
      if (body === undefined) {
        const refs = this.#addRefs.get(e.d, e.hash);
        if (refs === undefined) throw missing(e.hash, e.hash === minus ? 'a root being released' : 'a child of a released node');
        if (refs < 0) throw corrupt(e.hash, `reference count ${refs}`);
        continue;
      }
      deleted++;
      for (const child of childrenOf(e.hash, body)) negative.push(add(child, -1));
    }
    for (const e of deltas.values()) {
      if (e.d > 0 && this.#addRefs.get(e.d, e.hash) === undefined) {
        throw missing(e.hash, e.hash === plus ? 'a root being retained' : 'a child of a stored node');
      }
    }
    return deleted;
  }
}
