import type { TreeNode } from './node-format.js';

/** Approximate heap bytes of a cached entry beyond its body (objects, map slot, key string). */
const ENTRY_OVERHEAD = 160;

/**
 * A cache of decoded state nodes (leaves and branches) and long values, keyed
 * by hash, bounded in bytes. Content-addressed, so one cache may serve every
 * tree and every node source of a thread. Cached nodes are committed, hence
 * immutable: never modify what `get` returns. Not thread-safe (one per worker
 * thread).
 *
 * Approximately least-recently-used, in two generations of half the bound
 * each: new and recently read entries go to the young one; when it is full it
 * becomes the old one, and the old one is dropped whole. O(1) per operation
 * (a Map kept in LRU order by delete-and-reinsert degrades: V8 walks the
 * holes those leave at its front on every eviction).
 */
export class NodeCache {
  readonly maxBytes: number;
  #young = new Map<string, { value: TreeNode | Buffer; size: number }>();
  #old = new Map<string, { value: TreeNode | Buffer; size: number }>();
  #youngBytes = 0;
  #oldBytes = 0;
  /** Reads served from the cache, and reads that were not. */
  hits = 0;
  misses = 0;

  /** `maxBytes`: the bound on the approximate memory held [32 MiB]. */
  constructor(maxBytes = 32 * 1024 * 1024) {
    this.maxBytes = maxBytes;
  }

  /** The approximate bytes held. */
  get bytes(): number {
    return this.#youngBytes + this.#oldBytes;
  }

  get entries(): number {
    return this.#young.size + this.#old.size;
  }

  get(hash: Buffer): TreeNode | Buffer | undefined {
    const key = hash.toString('latin1');
    const young = this.#young.get(key);
    if (young !== undefined) {
      this.hits++;
      return young.value;
    }
    const old = this.#old.get(key);
    if (old === undefined) {
      this.misses++;
      return undefined;
    }
    this.hits++;
    this.#old.delete(key);
    this.#oldBytes -= old.size;
    this.#add(key, old);
    return old.value;
  }

  /** Caches a committed node or long value; `bodyBytes` is the length of its encoding. Something over an eighth of the cache is not kept. */
  set(hash: Buffer, value: TreeNode | Buffer, bodyBytes: number): void {
    const size = bodyBytes + ENTRY_OVERHEAD;
    if (size > this.maxBytes / 8) return;
    const key = hash.toString('latin1');
    if (this.#young.has(key)) return;
    const old = this.#old.get(key);
    if (old !== undefined) {
      this.#old.delete(key);
      this.#oldBytes -= old.size;
    }
    this.#add(key, { value, size });
  }

  clear(): void {
    this.#young.clear();
    this.#old.clear();
    this.#youngBytes = 0;
    this.#oldBytes = 0;
  }

  #add(key: string, entry: { value: TreeNode | Buffer; size: number }): void {
    if (this.#youngBytes + entry.size > this.maxBytes / 2) {
      this.#old = this.#young;
      this.#oldBytes = this.#youngBytes;
      this.#young = new Map();
      this.#youngBytes = 0;
    }
    this.#young.set(key, entry);
    this.#youngBytes += entry.size;
  }
}
