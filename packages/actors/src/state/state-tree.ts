/**
 * The actors' state tree: a versioned map of byte keys to byte values, as a
 * Merkle HAMT over sha256(key) (16-way branches, one nibble per level; a
 * subtree of at most LEAF_MAX entries is one leaf). The form is canonical, so
 * the root hash depends only on the key/value set (history independence), and
 * versions share every unchanged node. Node format: node-format.ts.
 */
import { RoostError } from '@roost/api';
import { NodeCache } from './node-cache.js';
import {
  EMPTY_LEAF_BODY,
  EMPTY_ROOT,
  INLINE_VALUE_MAX,
  LEAF_MAX,
  MAX_DEPTH,
  MAX_KEY_BYTES,
  MAX_VALUE_BYTES,
  NODE_BRANCH,
  NODE_LEAF,
  corrupt,
  decodeTreeNode,
  decodeValue,
  encodeBranch,
  encodeLeaf,
  encodeValue,
  entryBytes,
  leafChildren,
  nibble,
  sha256,
  type LeafEntry,
  type LeafNode,
  type TreeNode,
} from './node-format.js';

export { EMPTY_ROOT } from './node-format.js';

/** Where the tree reads nodes it does not hold. Synchronous. */
export interface NodeSource {
  /** The body of the node with this hash, or undefined if there is none. */
  get(hash: Buffer): Buffer | undefined;
}

/** A node a commit created: its hash, its encoding, and the distinct hashes it references. */
export interface NewNode {
  hash: Buffer;
  body: Buffer;
  children: Buffer[];
}

/** The cache trees use when given none: one per thread (module instance). */
export const sharedNodeCache = new NodeCache();

type Ref = Buffer | TreeNode;

/** Returned by a delete that found nothing. */
const MISSING = Symbol('missing');

/** Loads and decodes a leaf or branch, through the cache, checking its hash. */
function loadNode(source: NodeSource, cache: NodeCache, hash: Buffer): TreeNode {
  const cached = cache.get(hash);
  if (cached !== undefined) {
    if (Buffer.isBuffer(cached)) throw corrupt(hash, 'a value node where a leaf or branch belongs');
    return cached;
  }
  let body = source.get(hash);
  if (body === undefined) {
    if (!hash.equals(EMPTY_ROOT)) {
      throw new RoostError('INTERNAL', `state node ${hash.toString('hex')} is missing: the actors' database is damaged; restore it from a backup`, {
        details: { hash: hash.toString('hex') },
      });
    }
    body = EMPTY_LEAF_BODY;
  } else if (!sha256(body).equals(hash)) {
    throw corrupt(hash, 'hash mismatch');
  }
  const node = decodeTreeNode(hash, body);
  cache.set(hash, node, body.length);
  return node;
}

/** The entries and bytes of a committed root, reading only the root node. */
export function stateSize(source: NodeSource, root: Buffer, cache: NodeCache = sharedNodeCache): { entries: number; bytes: number } {
  return sizeOf(loadNode(source, cache, root));
}

function sizeOf(node: TreeNode): { entries: number; bytes: number } {
  return node.kind === NODE_LEAF ? { entries: node.entries.length, bytes: node.bytes } : { entries: node.count, bytes: node.bytes };
}

function keyHashOf(entry: LeafEntry): Buffer {
  return (entry.keyHash ??= sha256(entry.key));
}

/** Index of `key` in sorted entries, or -(insertion point) - 1. */
function search(entries: LeafEntry[], key: Buffer): number {
  let lo = 0;
  let hi = entries.length - 1;
  while (lo <= hi) {
    const mid = (lo + hi) >> 1;
    const c = Buffer.compare((entries[mid] as LeafEntry).key, key);
    if (c === 0) return mid;
    if (c < 0) lo = mid + 1;
    else hi = mid - 1;
  }
  return -lo - 1;
}

function newLeaf(entries: LeafEntry[]): LeafNode {
  let bytes = 0;
  for (const e of entries) bytes += entryBytes(e);
  return { kind: NODE_LEAF, entries, bytes, hash: undefined };
}

/** The canonical subtree at `depth` of sorted entries. */
function build(entries: LeafEntry[], depth: number): TreeNode {
  if (entries.length <= LEAF_MAX || depth >= MAX_DEPTH) return newLeaf(entries);
  const buckets: LeafEntry[][] = [];
  for (let i = 0; i < 16; i++) buckets.push([]);
  let bytes = 0;
  for (const e of entries) {
    (buckets[nibble(keyHashOf(e), depth)] as LeafEntry[]).push(e);
    bytes += entryBytes(e);
  }
  const children = buckets.map((b) => (b.length === 0 ? undefined : build(b, depth + 1)));
  return { kind: NODE_BRANCH, children, count: entries.length, bytes, hash: undefined };
}

/**
 * A working copy of one version: reads through to the source, writes kept in
 * memory until commit. Keys are 1..1024 bytes, values 0..1 MiB. Buffers
 * passed in are copied; buffers returned are shared with the tree and its
 * cache: do not modify them. Not thread-safe; synchronous.
 */
export class StateTree {
  readonly #source: NodeSource;
  readonly #cache: NodeCache;
  #committed: Buffer;
  #root: Ref;
  /** Set by the recursive writers: the change in entries and bytes below, and whether anything changed. */
  #dCount = 0;
  #dBytes = 0;
  #changed = false;

  /** `cache`: decoded nodes shared between trees [sharedNodeCache, 32 MiB]. */
  constructor(source: NodeSource, root: Buffer, cache: NodeCache = sharedNodeCache) {
    if (root.length !== 32) throw new RoostError('INVALID_ARGUMENT', `a state root is 32 bytes, not ${root.length}`);
    this.#source = source;
    this.#cache = cache;
    this.#committed = Buffer.from(root);
    this.#root = this.#committed;
  }

  /** The last committed root (the one rollback goes back to). */
  get committedRoot(): Buffer {
    return this.#committed;
  }

  /** True when there are uncommitted changes. */
  get dirty(): boolean {
    return !Buffer.isBuffer(this.#root) && this.#root.hash === undefined;
  }

  /** Entries, and the sum of their key and value bytes: O(1). */
  get size(): { entries: number; bytes: number } {
    return sizeOf(this.#resolve(this.#root, 0));
  }

  get(key: Buffer): Buffer | undefined {
    if (key.length < 1 || key.length > MAX_KEY_BYTES) return undefined;
    const kh = sha256(key);
    let node = this.#resolve(this.#root, 0);
    let depth = 0;
    while (node.kind === NODE_BRANCH) {
      const child = node.children[nibble(kh, depth)];
      if (child === undefined) return undefined;
      node = this.#resolve(child, ++depth);
    }
    const i = search(node.entries, key);
    return i < 0 ? undefined : this.#valueOf(node.entries[i] as LeafEntry);
  }

  set(key: Buffer, value: Buffer): void {
    if (key.length < 1 || key.length > MAX_KEY_BYTES) throw new RoostError('INVALID_ARGUMENT', `a state key is 1 to ${MAX_KEY_BYTES} bytes, not ${key.length}`);
    if (value.length > MAX_VALUE_BYTES) throw new RoostError('INVALID_ARGUMENT', `a state value is at most ${MAX_VALUE_BYTES} bytes, not ${value.length}`);
    const entry: LeafEntry = { key: Buffer.from(key), valueLen: value.length, value: Buffer.from(value), valueHash: undefined, keyHash: sha256(key) };
    this.#changed = true;
    this.#dCount = 0;
    this.#dBytes = 0;
    const root = this.#setIn(this.#root, 0, entry);
    if (this.#changed) this.#root = root;
  }

  delete(key: Buffer): boolean {
    if (key.length < 1 || key.length > MAX_KEY_BYTES) return false;
    const out = this.#deleteIn(this.#root, 0, sha256(key), key);
    if (out === MISSING) return false;
    this.#root = out ?? newLeaf([]);
    return true;
  }

  /** Every entry, sorted by key. */
  entries(): Array<[Buffer, Buffer]> {
    const all: LeafEntry[] = [];
    this.#collect(this.#root, 0, all);
    all.sort((a, b) => Buffer.compare(a.key, b.key));
    return all.map((e) => [e.key, this.#valueOf(e)]);
  }

  /**
   * Hashes the changed nodes: the new root and the new nodes (child before
   * parent, each once), each with the distinct hashes it references. Writes
   * nothing; the tree continues from the new root.
   */
  commit(): { root: Buffer; nodes: NewNode[] } {
    const root = this.#root;
    if (Buffer.isBuffer(root)) return { root, nodes: [] };
    const nodes: NewNode[] = [];
    const hash = root.hash ?? this.#commitNode(root, nodes, new Set());
    this.#committed = hash;
    this.#root = root;
    return { root: hash, nodes };
  }

  /** Drops uncommitted changes (back to the last commit's root). */
  rollback(): void {
    this.#root = this.#committed;
  }

  #resolve(ref: Ref, depth: number): TreeNode {
    if (!Buffer.isBuffer(ref)) return ref;
    const node = loadNode(this.#source, this.#cache, ref);
    if (node.kind === NODE_LEAF && node.entries.length > LEAF_MAX && depth < MAX_DEPTH) {
      throw corrupt(ref, `leaf of ${node.entries.length} entries at depth ${depth}`);
    }
    return node;
  }

  #valueOf(entry: LeafEntry): Buffer {
    if (entry.value !== undefined) return entry.value;
    const hash = entry.valueHash as Buffer;
    const cached = this.#cache.get(hash);
    if (cached !== undefined) {
      if (!Buffer.isBuffer(cached)) throw corrupt(hash, 'a leaf or branch where a value node belongs');
      return cached;
    }
    const body = this.#source.get(hash);
    if (body === undefined) throw new RoostError('INTERNAL', `state value node ${hash.toString('hex')} is missing: the actors' database is damaged`);
    if (!sha256(body).equals(hash)) throw corrupt(hash, 'hash mismatch');
    const value = decodeValue(hash, body, entry.valueLen);
    this.#cache.set(hash, value, body.length);
    return value;
  }

  /** Sets `entry` below `ref`; returns the new node (ref's node itself, and #changed false, when the value was already there). */
  #setIn(ref: Ref, depth: number, entry: LeafEntry): TreeNode {
    const node = this.#resolve(ref, depth);
    if (node.kind === NODE_LEAF) {
      const i = search(node.entries, entry.key);
      const old = i >= 0 ? (node.entries[i] as LeafEntry) : undefined;
      if (old !== undefined && old.valueLen <= INLINE_VALUE_MAX && old.value !== undefined && old.value.equals(entry.value as Buffer)) {
        this.#changed = false;
        return node;
      }
      const out = node.hash === undefined ? node : { ...node, entries: node.entries.slice(), hash: undefined };
      if (old !== undefined) {
        out.entries[i] = entry;
        this.#dBytes = entry.valueLen - old.valueLen;
      } else {
        out.entries.splice(-i - 1, 0, entry);
        this.#dCount = 1;
        this.#dBytes = entryBytes(entry);
      }
      out.bytes += this.#dBytes;
      return out.entries.length > LEAF_MAX && depth < MAX_DEPTH ? build(out.entries, depth) : out;
    }
    const n = nibble(entry.keyHash as Buffer, depth);
    const child = node.children[n];
    let next: TreeNode;
    if (child === undefined) {
      next = newLeaf([entry]);
      this.#dCount = 1;
      this.#dBytes = entryBytes(entry);
    } else {
      next = this.#setIn(child, depth + 1, entry);
      if (!this.#changed) return node;
    }
    const out = node.hash === undefined ? node : { ...node, children: node.children.slice(), hash: undefined };
    out.children[n] = next;
    out.count += this.#dCount;
    out.bytes += this.#dBytes;
    return out;
  }

  /** Deletes `key` below `ref`: MISSING if absent, undefined if the subtree is now empty, else its new node. */
  #deleteIn(ref: Ref, depth: number, kh: Buffer, key: Buffer): TreeNode | undefined | typeof MISSING {
    const node = this.#resolve(ref, depth);
    if (node.kind === NODE_LEAF) {
      const i = search(node.entries, key);
      if (i < 0) return MISSING;
      this.#dBytes = entryBytes(node.entries[i] as LeafEntry);
      if (node.entries.length === 1) return undefined;
      const out = node.hash === undefined ? node : { ...node, entries: node.entries.slice(), hash: undefined };
      out.entries.splice(i, 1);
      out.bytes -= this.#dBytes;
      return out;
    }
    const n = nibble(kh, depth);
    const child = node.children[n];
    if (child === undefined) return MISSING;
    const next = this.#deleteIn(child, depth + 1, kh, key);
    if (next === MISSING) return MISSING;
    const out = node.hash === undefined ? node : { ...node, children: node.children.slice(), hash: undefined };
    out.children[n] = next;
    out.count -= 1;
    out.bytes -= this.#dBytes;
    if (out.count > LEAF_MAX) return out;
    // Collapse: a subtree of at most LEAF_MAX entries is one leaf.
    const entries: LeafEntry[] = [];
    this.#collect(out, depth, entries);
    entries.sort((a, b) => Buffer.compare(a.key, b.key));
    return newLeaf(entries);
  }

  #collect(ref: Ref, depth: number, out: LeafEntry[]): void {
    const node = this.#resolve(ref, depth);
    if (node.kind === NODE_LEAF) {
      out.push(...node.entries);
      return;
    }
    for (const child of node.children) if (child !== undefined) this.#collect(child, depth + 1, out);
  }

  /** Hashes an uncommitted node and its uncommitted descendants, appending them (children first) to `nodes`. */
  #commitNode(node: TreeNode, nodes: NewNode[], seen: Set<string>): Buffer {
    let body: Buffer;
    let children: Buffer[];
    if (node.kind === NODE_LEAF) {
      for (const e of node.entries) {
        if (e.valueLen <= INLINE_VALUE_MAX || e.valueHash !== undefined) continue;
        const value = e.value as Buffer;
        const vbody = encodeValue(value);
        const vhash = sha256(vbody);
        // Two keys may hold the same long value: its node goes out once.
        const vkey = vhash.toString('latin1');
        if (!seen.has(vkey)) nodes.push({ hash: vhash, body: vbody, children: [] });
        seen.add(vkey);
        this.#cache.set(vhash, vbody.subarray(1), vbody.length);
        e.valueHash = vhash;
        e.value = undefined;
      }
      body = encodeLeaf(node);
      children = leafChildren(node);
    } else {
      children = [];
      for (let i = 0; i < 16; i++) {
        const child = node.children[i];
        if (child === undefined) continue;
        const hash = Buffer.isBuffer(child) ? child : (child.hash ?? this.#commitNode(child, nodes, seen));
        node.children[i] = hash;
        children.push(hash);
      }
      body = encodeBranch(node);
    }
    const hash = sha256(body);
    node.hash = hash;
    // Leaves and branches of one commit are distinct (their key sets are disjoint and not empty).
    nodes.push({ hash, body, children });
    this.#cache.set(hash, node, body.length);
    return hash;
  }
}
