import { isRoostError } from '@roost/api';
import Database from 'better-sqlite3';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { NodeCache } from './node-cache.js';
import { childrenOf } from './node-format.js';
import { SqliteNodes, createNodeTables } from './sqlite-nodes.js';
import { EMPTY_ROOT, StateTree } from './state-tree.js';

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

function errorCode(f: () => unknown): string | undefined {
  try {
    f();
  } catch (err) {
    return isRoostError(err) ? err.code : `not a RoostError: ${String(err)}`;
  }
  return undefined;
}

describe('SqliteNodes', () => {
  let db: Database.Database;
  let store: SqliteNodes;

  beforeEach(() => {
    db = new Database(':memory:');
    createNodeTables(db);
    createNodeTables(db); // idempotent
    store = new SqliteNodes(db);
  });
  afterEach(() => db.close());

  const rows = (): Map<string, { body: Buffer; refs: number }> =>
    new Map(
      db
        .prepare<[], { hash: Buffer; body: Buffer; refs: number }>('SELECT hash, body, refs FROM state_nodes')
        .all()
        .map((r) => [r.hash.toString('hex'), { body: r.body, refs: r.refs }]),
    );

  /** The table must hold exactly the nodes reachable from `roots`, each with refs = stored parents + root retains. */
  function checkExact(roots: Buffer[]): void {
    const table = rows();
    const expected = new Map<string, number>();
    const stack = roots.map((r) => r.toString('hex'));
    const seen = new Set<string>();
    for (const r of stack) expected.set(r, (expected.get(r) ?? 0) + 1);
    for (let h = stack.pop(); h !== undefined; h = stack.pop()) {
      if (seen.has(h)) continue;
      seen.add(h);
      const row = table.get(h);
      expect(row, `node ${h} reachable from a retained root`).toBeDefined();
      for (const c of childrenOf(Buffer.from(h, 'hex'), (row as { body: Buffer }).body)) {
        const ch = c.toString('hex');
        expected.set(ch, (expected.get(ch) ?? 0) + 1);
        stack.push(ch);
      }
    }
    expect(new Set(table.keys())).toEqual(seen);
    for (const [h, row] of table) expect(row.refs, `refs of ${h}`).toBe(expected.get(h));
  }

  it('counts references exactly across many versions released in random order', () => {
    const rand = rng(1234);
    const tree = new StateTree(store, EMPTY_ROOT, new NodeCache(64 * 1024));
    const retained: Buffer[] = [];
    const commitVersion = db.transaction(() => {
      const { root, nodes } = tree.commit();
      store.retain(root, nodes);
      retained.push(root);
    });
    commitVersion(); // the empty tree
    for (let v = 0; v < 150; v++) {
      const ops = rand(3) === 0 ? 0 : 1 + rand(40); // some versions change nothing: a root retained twice
      for (let i = 0; i < ops; i++) {
        const key = Buffer.from(`k${rand(400)}`);
        if (rand(4) === 0) tree.delete(key);
        else tree.set(key, rand(8) === 0 ? Buffer.alloc(300 + rand(3), rand(2)) : Buffer.from(`v${rand(5)}`));
      }
      if (v % 50 === 49) {
        // Back to empty now and then: EMPTY_ROOT is retained like any root.
        for (const [k] of tree.entries()) tree.delete(k);
      }
      commitVersion();
    }
    checkExact(retained);
    const order = retained.map((r, i) => [r, rand(1_000_000) + i * 0] as const).sort((a, b) => a[1] - b[1]);
    let deleted = 0;
    for (let i = 0; i < order.length; i++) {
      const [root] = order[i] as readonly [Buffer, number];
      deleted += db.transaction(() => store.release(root))();
      retained.splice(
        retained.findIndex((r) => r === root),
        1,
      );
      if (i % 15 === 0) checkExact(retained);
    }
    expect(retained).toEqual([]);
    expect(rows().size).toBe(0);
    expect(deleted).toBeGreaterThan(100);
  });

  it('advances a chain of versions with exact counts, beside versions kept by others', () => {
    const rand = rng(99);
    const tree = new StateTree(store, EMPTY_ROOT, new NodeCache(64 * 1024));
    store.retain(EMPTY_ROOT, []);
    let current = EMPTY_ROOT;
    const kept: Buffer[] = [];
    for (let v = 0; v < 300; v++) {
      for (let i = rand(4); i > 0; i--) {
        const key = Buffer.from(`k${rand(200)}`);
        if (rand(3) === 0) tree.delete(key);
        else tree.set(key, rand(6) === 0 ? Buffer.alloc(400, rand(3)) : Buffer.from(`v${rand(3)}`));
      }
      const { root, nodes } = tree.commit();
      db.transaction(() => {
        if (v % 40 === 0) {
          // A snapshot: another version keeping this root.
          store.retain(root, nodes);
          kept.push(root);
          store.advance(current, root, []);
        } else store.advance(current, root, nodes);
      })();
      current = root;
      if (v % 25 === 0) checkExact([current, ...kept]);
    }
    checkExact([current, ...kept]);
    for (const root of kept) store.release(root);
    checkExact([current]);
    store.release(current);
    expect(rows().size).toBe(0);
  });

  it('keeps a root shared by two versions until both are released', () => {
    const tree = new StateTree(store, EMPTY_ROOT, new NodeCache());
    for (let i = 0; i < 50; i++) tree.set(Buffer.from(`key${i}`), Buffer.alloc(i * 20, i));
    const a = tree.commit();
    store.retain(a.root, a.nodes);
    // Another actor reaching the same state: same nodes, stored once, the root counted twice.
    const other = new StateTree(store, EMPTY_ROOT, new NodeCache());
    for (let i = 49; i >= 0; i--) other.set(Buffer.from(`key${i}`), Buffer.alloc(i * 20, i));
    const b = other.commit();
    expect(b.root.equals(a.root)).toBe(true);
    store.retain(b.root, b.nodes);
    checkExact([a.root, b.root]);
    const count = rows().size;
    expect(store.release(a.root)).toBe(0);
    expect(rows().size).toBe(count);
    expect(new StateTree(store, b.root, new NodeCache(0)).get(Buffer.from('key30'))?.equals(Buffer.alloc(600, 30))).toBe(true);
    expect(store.release(b.root)).toBe(count);
    expect(rows().size).toBe(0);
  });

  it('stores the empty tree like any node', () => {
    store.retain(EMPTY_ROOT, []);
    store.retain(EMPTY_ROOT, []);
    checkExact([EMPTY_ROOT, EMPTY_ROOT]);
    expect(store.release(EMPTY_ROOT)).toBe(0);
    expect(store.release(EMPTY_ROOT)).toBe(1);
    expect(rows().size).toBe(0);
    expect(errorCode(() => store.release(EMPTY_ROOT))).toBe('INTERNAL');
  });

  it('refuses a commit whose children are not stored, and unknown roots', () => {
    const tree = new StateTree(store, EMPTY_ROOT, new NodeCache());
    for (let i = 0; i < 20; i++) tree.set(Buffer.from(`key${i}`), Buffer.from('v'));
    const { root, nodes } = tree.commit();
    expect(errorCode(() => db.transaction(() => store.retain(root, nodes.slice(1)))())).toBe('INTERNAL');
    expect(rows().size).toBe(0);
    expect(errorCode(() => store.retain(Buffer.alloc(32, 1), []))).toBe('INTERNAL');
    expect(errorCode(() => store.release(Buffer.alloc(32, 1)))).toBe('INTERNAL');
  });

  it('gives RoostError INTERNAL for a corrupt node in the database', () => {
    const tree = new StateTree(store, EMPTY_ROOT, new NodeCache());
    for (let i = 0; i < 30; i++) tree.set(Buffer.from(`key${i}`), Buffer.alloc(i < 3 ? 1000 : 10, i));
    const { root, nodes } = tree.commit();
    store.retain(root, nodes);
    const update = db.prepare<[Buffer, Buffer]>('UPDATE state_nodes SET body = ? WHERE hash = ?');
    for (const node of nodes) {
      const bad = Buffer.from(node.body);
      bad[bad.length >> 1] = (bad[bad.length >> 1] ?? 0) ^ 0x40;
      update.run(bad, node.hash);
      // A fresh tree with no cache reads the corrupt node on its way to some key.
      const fresh = new StateTree(store, root, new NodeCache(0));
      expect(errorCode(() => fresh.entries())).toBe('INTERNAL');
      update.run(node.body, node.hash);
    }
    update.run(Buffer.from([2, 0]), root);
    expect(errorCode(() => db.transaction(() => store.release(root))())).toBe('INTERNAL');
    const missing = new StateTree(store, Buffer.alloc(32, 9), new NodeCache(0));
    expect(errorCode(() => missing.get(Buffer.from('key1')))).toBe('INTERNAL');
  });
});
