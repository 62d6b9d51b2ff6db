import { isRoostError } from '@roost/api';
import { describe, expect, it } from 'vitest';
import { NodeCache } from './node-cache.js';
import { EMPTY_LEAF_BODY, EMPTY_ROOT, NODE_BRANCH, NODE_LEAF, NODE_VALUE, childrenOf, decodeTreeNode, decodeValue, sha256 } from './node-format.js';
import { StateTree, type NewNode } from './state-tree.js';

const H = Buffer.alloc(32, 0xab);

function errorOf(f: () => unknown): string | undefined {
  try {
    f();
  } catch (err) {
    if (!isRoostError(err)) return `not a RoostError: ${String(err)}`;
    expect(err.message).toContain(H.toString('hex'));
    return err.code;
  }
  return undefined;
}

/** Some committed nodes of every kind: leaves with inline and long values, branches, value nodes. */
function sampleNodes(): NewNode[] {
  const tree = new StateTree({ get: () => undefined }, EMPTY_ROOT, new NodeCache());
  for (let i = 0; i < 40; i++) tree.set(Buffer.from(`key${i}`), Buffer.alloc(i % 7 === 0 ? 300 : i, i));
  return tree.commit().nodes;
}

describe('node format', () => {
  it('fixes the empty root and the kind bytes', () => {
    expect([NODE_LEAF, NODE_BRANCH, NODE_VALUE]).toEqual([1, 2, 3]);
    expect(EMPTY_LEAF_BODY).toEqual(Buffer.from([1, 0]));
    expect(EMPTY_ROOT.toString('hex')).toBe(sha256(Buffer.from([1, 0])).toString('hex'));
  });

  it('decodes what it encodes, and refuses malformed bodies with INTERNAL naming the hash', () => {
    const leaf = (...parts: number[][]): Buffer => Buffer.from([NODE_LEAF, ...parts.flat()]);
    const bad: Buffer[] = [
      Buffer.alloc(0),
      Buffer.from([9]),
      Buffer.from([NODE_VALUE, 1, 2]),
      leaf([1]), // one entry, nothing after
      leaf([1, 0, 0]), // empty key
      leaf([1, 1, 0x61, 2, 0x78]), // value cut short
      leaf([1, 1, 0x61, 0]), // fine
      leaf([1, 1, 0x61, 0, 9]), // trailing byte
      leaf([2, 1, 0x62, 0, 1, 0x61, 0]), // keys not ascending
      leaf([2, 1, 0x61, 0, 1, 0x61, 0]), // duplicate keys
      leaf([1, 0x81, 0]), // non-minimal varint
      leaf([0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f]), // count too long
      leaf([1, 1, 0x61, 0x81, 0x80, 0x40]), // value over 1 MiB
      leaf([1, 1, 0x61, 0x81, 0x02]), // long value without its hash
      Buffer.from([NODE_BRANCH, 0, 0, 9, 9]), // no children
      Buffer.from([NODE_BRANCH, 0x80, 0, 8, 8, ...H]), // 8 entries is a leaf
      Buffer.from([NODE_BRANCH, 0x80, 0, 9, 8, ...H]), // fewer bytes than entries
      Buffer.from([NODE_BRANCH, 0xc0, 0, 9, 9, ...H]), // two children, one hash
    ];
    const codes = bad.map((body) => errorOf(() => decodeTreeNode(H, body)));
    expect(codes).toEqual(bad.map((_, i) => (i === 6 ? undefined : 'INTERNAL')));
    expect(errorOf(() => decodeValue(H, Buffer.from([NODE_VALUE, 1, 2]), 3))).toBe('INTERNAL');
    expect(errorOf(() => decodeValue(H, Buffer.from([NODE_LEAF, 0]), 1))).toBe('INTERNAL');
    expect(errorOf(() => childrenOf(H, Buffer.from([NODE_BRANCH, 0x80])))).toBe('INTERNAL');
  });

  it('survives every truncation and random corruption of real nodes', () => {
    let seed = 99;
    const rand = (n: number): number => {
      seed = (seed * 1103515245 + 12345) % 2147483648;
      return seed % n;
    };
    for (const node of sampleNodes()) {
      if (node.body[0] !== NODE_VALUE) {
        const decoded = decodeTreeNode(node.hash, node.body);
        expect(decoded.hash).toBe(node.hash);
      }
      for (let len = 0; len < node.body.length; len++) {
        if (node.body[0] === NODE_VALUE && len > 0) continue; // any bytes are a value
        expect(errorOf(() => childrenOf(H, node.body.subarray(0, len)))).toBe('INTERNAL');
        expect(errorOf(() => decodeTreeNode(H, node.body.subarray(0, len)))).toBe('INTERNAL');
      }
      for (let i = 0; i < 200; i++) {
        const bad = Buffer.from(node.body);
        for (let j = 1 + rand(3); j > 0; j--) bad[rand(bad.length)] = rand(256);
        const code = errorOf(() => (bad[0] === NODE_VALUE ? childrenOf(H, bad) : decodeTreeNode(H, bad)));
        expect([undefined, 'INTERNAL']).toContain(code);
      }
    }
  });
});
