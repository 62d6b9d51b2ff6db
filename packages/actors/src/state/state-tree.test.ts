import { isRoostError } from '@roost/api';
import { describe, expect, it } from 'vitest';
import { NodeCache } from './node-cache.js';
import { EMPTY_LEAF_BODY, INLINE_VALUE_MAX, childrenOf, sha256 } from './node-format.js';
import { EMPTY_ROOT, StateTree, stateSize, type NewNode, type NodeSource } from './state-tree.js';

/** A seeded PRNG (mulberry32). */
function rng(seed: number): (n: number) => number {
  let a = seed >>> 0;
  return (n) => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return Math.floor((((t ^ (t >>> 14)) >>> 0) / 4294967296) * n);
  };
}

function bytes(rand: (n: number) => number, len: number): Buffer {
  const b = Buffer.allocUnsafe(len);
  for (let i = 0; i < len; i++) b[i] = rand(256);
  return b;
}

/** A node source in memory that checks what commits give it. */
class MemSource implements NodeSource {
  readonly nodes = new Map<string, Buffer>([[EMPTY_ROOT.toString('hex'), EMPTY_LEAF_BODY]]);
  get(hash: Buffer): Buffer | undefined {
    return this.nodes.get(hash.toString('hex'));
  }
  add(nodes: NewNode[]): void {
    for (const n of nodes) {
      expect(sha256(n.body).equals(n.hash)).toBe(true);
      expect(n.children.map((c) => c.toString('hex'))).toEqual(childrenOf(n.hash, n.body).map((c) => c.toString('hex')));
      for (const c of n.children) expect(this.nodes.has(c.toString('hex'))).toBe(true);
      this.nodes.set(n.hash.toString('hex'), n.body);
    }
  }
}

function modelEntries(model: Map<string, Buffer>): Array<[string, string]> {
  return [...model]
    .map(([k, v]) => [Buffer.from(k, 'hex'), v] as const)
    .sort((a, b) => Buffer.compare(a[0], b[0]))
    .map(([k, v]) => [k.toString('hex'), v.toString('hex')]);
}

function treeEntries(tree: StateTree): Array<[string, string]> {
  return tree.entries().map(([k, v]) => [k.toString('hex'), v.toString('hex')]);
}

function modelSize(model: Map<string, Buffer>): { entries: number; bytes: number } {
  let total = 0;
  for (const [k, v] of model) total += k.length / 2 + v.length;
  return { entries: model.size, bytes: total };
}

/** The root of a set built from scratch in one order. */
function rootOf(pairs: Array<[Buffer, Buffer]>): Buffer {
  const tree = new StateTree(new MemSource(), EMPTY_ROOT, new NodeCache());
  for (const [k, v] of pairs) tree.set(k, v);
  return tree.commit().root;
}

describe('StateTree', () => {
  it('matches a Map under thousands of random operations, commits and rollbacks', () => {
    const rand = rng(42);
    const source = new MemSource();
    const tree = new StateTree(source, EMPTY_ROOT, new NodeCache(256 * 1024));
    let model = new Map<string, Buffer>();
    let committed = new Map(model);
    // A small pool of keys (so sets overwrite and deletes hit) and fresh random keys of 1..1024 bytes.
    const pool = Array.from({ length: 300 }, (_, i) => (i < 40 ? Buffer.from([i]) : bytes(rand, 1 + rand(i < 280 ? 24 : 1024))));
    const randomKey = (): Buffer => (rand(4) === 0 ? bytes(rand, 1 + rand(1024)) : (pool[rand(pool.length)] as Buffer));
    const randomValue = (): Buffer => {
      const r = rand(10);
      return bytes(rand, r < 6 ? rand(40) : r < 8 ? INLINE_VALUE_MAX - 2 + rand(5) : 257 + rand(20_000));
    };
    for (let op = 0; op < 6000; op++) {
      const r = rand(100);
      if (r < 55) {
        const k = randomKey();
        const v = randomValue();
        tree.set(k, v);
        model.set(k.toString('hex'), v);
      } else if (r < 80) {
        const k = randomKey();
        expect(tree.delete(k)).toBe(model.delete(k.toString('hex')));
      } else if (r < 95) {
        const k = randomKey();
        expect(tree.get(k)?.toString('hex')).toBe(model.get(k.toString('hex'))?.toString('hex'));
      } else if (r < 99) {
        const { root, nodes } = tree.commit();
        source.add(nodes);
        committed = new Map(model);
        expect(tree.committedRoot.equals(root)).toBe(true);
        expect(stateSize(source, root, new NodeCache())).toEqual(modelSize(model));
      } else {
        tree.rollback();
        model = new Map(committed);
      }
      expect(tree.size).toEqual(modelSize(model));
    }
    expect(treeEntries(tree)).toEqual(modelEntries(model));
    const { root, nodes } = tree.commit();
    source.add(nodes);
    // Every node a commit references reached the source: a fresh tree with no cache reads it all.
    const fresh = new StateTree(source, root, new NodeCache(0));
    expect(treeEntries(fresh)).toEqual(modelEntries(model));
    for (const [k, v] of model) expect(fresh.get(Buffer.from(k, 'hex'))?.equals(v)).toBe(true);
    // Canonical: the same set built from scratch has the same root.
    expect(rootOf([...model].map(([k, v]) => [Buffer.from(k, 'hex'), v])).equals(root)).toBe(true);
  });

  it('is history independent: the same set in any order, via deletes, has one root', () => {
    const rand = rng(7);
    const pairs: Array<[Buffer, Buffer]> = Array.from({ length: 600 }, (_, i) => [Buffer.from(`key-${i}`), bytes(rand, i % 50 === 0 ? 1000 : rand(30))]);
    const a = rootOf(pairs);
    const shuffled = [...pairs];
    for (let i = shuffled.length - 1; i > 0; i--) {
      const j = rand(i + 1);
      [shuffled[i], shuffled[j]] = [shuffled[j] as [Buffer, Buffer], shuffled[i] as [Buffer, Buffer]];
    }
    expect(rootOf(shuffled).equals(a)).toBe(true);

    // Through extra keys and other values, deleted or overwritten again, committing on the way.
    const source = new MemSource();
    const tree = new StateTree(source, EMPTY_ROOT, new NodeCache());
    for (let i = 0; i < shuffled.length; i++) {
      const [k, v] = shuffled[i] as [Buffer, Buffer];
      tree.set(k, Buffer.from('other'));
      tree.set(Buffer.from(`extra-${i}`), v);
      if (i % 97 === 0) source.add(tree.commit().nodes);
      tree.set(k, v);
    }
    for (let i = 0; i < shuffled.length; i++) expect(tree.delete(Buffer.from(`extra-${i}`))).toBe(true);
    expect(tree.commit().root.equals(a)).toBe(true);

    for (const [k] of pairs) expect(tree.delete(k)).toBe(true);
    expect(tree.delete(Buffer.from('key-0'))).toBe(false);
    const empty = tree.commit();
    expect(empty.root.equals(EMPTY_ROOT)).toBe(true);
    expect(tree.size).toEqual({ entries: 0, bytes: 0 });
    expect(tree.entries()).toEqual([]);
  });

  it('shares structure: one change in a 10,000-key tree makes O(depth) new nodes', () => {
    const source = new MemSource();
    const tree = new StateTree(source, EMPTY_ROOT, new NodeCache());
    for (let i = 0; i < 10_000; i++) tree.set(Buffer.from(`k${i}`), Buffer.from(`v${i}`));
    const first = tree.commit();
    source.add(first.nodes);
    expect(first.nodes.length).toBeGreaterThan(1000);

    tree.set(Buffer.from('k5000'), Buffer.from('changed'));
    const one = tree.commit();
    source.add(one.nodes);
    expect(one.nodes.length).toBeGreaterThanOrEqual(3);
    expect(one.nodes.length).toBeLessThanOrEqual(5);

    tree.delete(Buffer.from('k17'));
    tree.set(Buffer.from('new'), Buffer.from('x'));
    expect(tree.commit().nodes.length).toBeLessThanOrEqual(10);

    // Setting a value that is already there changes nothing.
    tree.set(Buffer.from('k1'), Buffer.from('v1'));
    expect(tree.dirty).toBe(false);
    expect(tree.commit().nodes).toEqual([]);
  });

  it('keeps a long value in its own node, not re-hashed when another key of its leaf changes', () => {
    const source = new MemSource();
    const tree = new StateTree(source, EMPTY_ROOT, new NodeCache());
    const big = Buffer.alloc(100_000, 7);
    tree.set(Buffer.from('big'), big);
    tree.set(Buffer.from('twin'), big);
    const first = tree.commit();
    source.add(first.nodes);
    // One value node for the two keys, and the leaf referencing it once.
    expect(first.nodes.length).toBe(2);
    expect(first.nodes[1]?.children.length).toBe(1);
    tree.set(Buffer.from('small'), Buffer.from('s'));
    const second = tree.commit();
    expect(second.nodes.length).toBe(1);
    expect(second.nodes[0]?.body.length).toBeLessThan(200);
    source.add(second.nodes);
    const fresh = new StateTree(source, second.root, new NodeCache(0));
    expect(fresh.get(Buffer.from('twin'))?.equals(big)).toBe(true);
    expect(fresh.size).toEqual({ entries: 3, bytes: 3 + 100_000 + 4 + 100_000 + 5 + 1 });
  });

  it('keeps size and stateSize through sets, overwrites and deletes', () => {
    const source = new MemSource();
    const tree = new StateTree(source, EMPTY_ROOT, new NodeCache());
    expect(tree.size).toEqual({ entries: 0, bytes: 0 });
    expect(stateSize(source, EMPTY_ROOT)).toEqual({ entries: 0, bytes: 0 });
    for (let i = 0; i < 100; i++) tree.set(Buffer.from(`key${i}`), Buffer.alloc(i * 10));
    const bytesOf = (n: number): number => Array.from({ length: n }, (_, i) => `key${i}`.length + i * 10).reduce((a, b) => a + b, 0);
    expect(tree.size).toEqual({ entries: 100, bytes: bytesOf(100) });
    tree.set(Buffer.from('key0'), Buffer.alloc(5));
    tree.set(Buffer.from('key99'), Buffer.alloc(1));
    const expected = { entries: 100, bytes: bytesOf(100) + 5 - 990 + 1 };
    expect(tree.size).toEqual(expected);
    const { root, nodes } = tree.commit();
    source.add(nodes);
    expect(stateSize(source, root, new NodeCache())).toEqual(expected);
    for (let i = 50; i < 100; i++) tree.delete(Buffer.from(`key${i}`));
    tree.delete(Buffer.from('nope'));
    expect(tree.size).toEqual({ entries: 50, bytes: bytesOf(50) + 5 });
    tree.rollback();
    expect(tree.size).toEqual(expected);
  });

  it('refuses keys and values out of bounds', () => {
    const tree = new StateTree(new MemSource(), EMPTY_ROOT, new NodeCache());
    const code = (f: () => void): string | undefined => {
      try {
        f();
      } catch (err) {
        return isRoostError(err) ? err.code : 'other';
      }
      return undefined;
    };
    expect(code(() => tree.set(Buffer.alloc(0), Buffer.alloc(1)))).toBe('INVALID_ARGUMENT');
    expect(code(() => tree.set(Buffer.alloc(1025), Buffer.alloc(1)))).toBe('INVALID_ARGUMENT');
    expect(code(() => tree.set(Buffer.alloc(1), Buffer.alloc(1024 * 1024 + 1)))).toBe('INVALID_ARGUMENT');
    tree.set(Buffer.alloc(1024, 1), Buffer.alloc(1024 * 1024));
    expect(tree.get(Buffer.alloc(1025))).toBeUndefined();
    expect(tree.delete(Buffer.alloc(0))).toBe(false);
    // Buffers are copied in: changing the caller's buffer afterwards changes nothing.
    const key = Buffer.from('k');
    const value = Buffer.from('v');
    tree.set(key, value);
    key[0] = 0x6a;
    value[0] = 0x77;
    expect(tree.get(Buffer.from('k'))?.toString()).toBe('v');
  });
});
