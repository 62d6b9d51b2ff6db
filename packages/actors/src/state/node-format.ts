/**
 * The nodes of the actors' state tree and their binary encoding (format 1).
 *
 * A node's hash is sha256 of its encoding; the first byte of the encoding is
 * the node's kind, and a new format gets new kind bytes (a decoder refuses
 * kinds it does not know). Integers are unsigned LEB128 varints, minimal
 * (at most 8 bytes, at most 2^53 - 1).
 *
 * - leaf   `0x01 count (klen key vlen (value | hash32))*`: entries sorted by key,
 *          strictly ascending; a value of at most INLINE_VALUE_MAX bytes is inline,
 *          a longer one is the 32-byte hash of its value node.
 * - branch `0x02 bitmap:u16be count bytes hash32*`: one child hash per bit set, in
 *          nibble order; count and bytes are the subtree's entries and key + value bytes.
 * - value  `0x03 bytes`: a value of more than INLINE_VALUE_MAX bytes.
 *
 * Decoders validate everything they read: a corrupt body is a RoostError
 * INTERNAL naming the node's hash, never an out-of-bounds read.
 */
import { hash as oneShotHash } from 'node:crypto';
import { RoostError } from '@roost/api';

export const NODE_LEAF = 0x01;
export const NODE_BRANCH = 0x02;
export const NODE_VALUE = 0x03;

export const HASH_BYTES = 32;
/** Keys are 1..MAX_KEY_BYTES bytes. */
export const MAX_KEY_BYTES = 1024;
/** Values are 0..MAX_VALUE_BYTES bytes. */
export const MAX_VALUE_BYTES = 1024 * 1024;
/** Values longer than this live in their own value node. */
export const INLINE_VALUE_MAX = 256;
/** A subtree of at most this many entries is one leaf. */
export const LEAF_MAX = 8;
/** Nibbles of sha256(key): below this depth a leaf holds any number of entries. */
export const MAX_DEPTH = 64;

/** One entry of a leaf. Immutable once its leaf is committed (decoded entries are shared through the cache). */
export interface LeafEntry {
  readonly key: Buffer;
  readonly valueLen: number;
  /** The value when inline, or a long value not yet committed (no valueHash yet). */
  value: Buffer | undefined;
  /** The hash of the value node of a long committed value. */
  valueHash: Buffer | undefined;
  /** sha256(key), computed when first needed. */
  keyHash: Buffer | undefined;
}

/** A leaf; `hash` undefined while it is a working copy's uncommitted (mutable) node. */
export interface LeafNode {
  readonly kind: typeof NODE_LEAF;
  entries: LeafEntry[];
  /** Sum of key and value bytes of the entries. */
  bytes: number;
  hash: Buffer | undefined;
}

/** A branch; a committed branch's children are hashes, an uncommitted one's may be nodes. */
export interface BranchNode {
  readonly kind: typeof NODE_BRANCH;
  /** 16 slots, one per nibble. */
  children: Array<Buffer | TreeNode | undefined>;
  count: number;
  bytes: number;
  hash: Buffer | undefined;
}

export type TreeNode = LeafNode | BranchNode;

export function sha256(data: Buffer): Buffer {
  return oneShotHash('sha256', data, 'buffer');
}

/** The encoding of the empty leaf, and the root hash of the empty tree. */
export const EMPTY_LEAF_BODY: Buffer = Buffer.from([NODE_LEAF, 0]);
export const EMPTY_ROOT: Buffer = sha256(EMPTY_LEAF_BODY);

/** Nibble `depth` (0..63) of a 32-byte hash. */
export function nibble(hash: Buffer, depth: number): number {
  const byte = hash[depth >> 1] ?? 0;
  return depth & 1 ? byte & 15 : byte >> 4;
}

export function entryBytes(entry: LeafEntry): number {
  return entry.key.length + entry.valueLen;
}

export function corrupt(hash: Buffer, what: string): RoostError {
  return new RoostError('INTERNAL', `state node ${hash.toString('hex')} is corrupt (${what}): the actors' database is damaged; restore it from a backup`, {
    details: { hash: hash.toString('hex') },
  });
}

function varintLength(n: number): number {
  let len = 1;
  while (n >= 128) {
    n = Math.floor(n / 128);
    len++;
  }
  return len;
}

function writeVarint(buf: Buffer, pos: number, n: number): number {
  while (n >= 128) {
    buf[pos++] = (n % 128) | 128;
    n = Math.floor(n / 128);
  }
  buf[pos++] = n;
  return pos;
}

export function encodeLeaf(node: LeafNode): Buffer {
  let len = 1 + varintLength(node.entries.length);
  for (const e of node.entries) {
    len += varintLength(e.key.length) + e.key.length + varintLength(e.valueLen) + (e.valueLen > INLINE_VALUE_MAX ? HASH_BYTES : e.valueLen);
  }
  const buf = Buffer.allocUnsafe(len);
  buf[0] = NODE_LEAF;
  let pos = writeVarint(buf, 1, node.entries.length);
  for (const e of node.entries) {
    pos = writeVarint(buf, pos, e.key.length);
    buf.set(e.key, pos);
    pos += e.key.length;
    pos = writeVarint(buf, pos, e.valueLen);
    const tail = e.valueLen > INLINE_VALUE_MAX ? e.valueHash : e.value;
    if (tail === undefined) throw new RoostError('INTERNAL', 'state tree: a leaf entry has no value or value hash to encode');
    buf.set(tail, pos);
    pos += tail.length;
  }
  return buf;
}

/** Encodes a branch whose children are all hashes. */
export function encodeBranch(node: BranchNode): Buffer {
  let bitmap = 0;
  let n = 0;
  for (let i = 0; i < 16; i++) {
    if (node.children[i] !== undefined) {
      bitmap |= 1 << (15 - i);
      n++;
    }
  }
  const buf = Buffer.allocUnsafe(3 + varintLength(node.count) + varintLength(node.bytes) + n * HASH_BYTES);
  buf[0] = NODE_BRANCH;
  buf.writeUInt16BE(bitmap, 1);
  let pos = writeVarint(buf, 3, node.count);
  pos = writeVarint(buf, pos, node.bytes);
  for (const child of node.children) {
    if (child === undefined) continue;
    if (!Buffer.isBuffer(child)) throw new RoostError('INTERNAL', 'state tree: a branch is encoded before its children are hashed');
    buf.set(child, pos);
    pos += HASH_BYTES;
  }
  return buf;
}

export function encodeValue(value: Buffer): Buffer {
  const buf = Buffer.allocUnsafe(1 + value.length);
  buf[0] = NODE_VALUE;
  buf.set(value, 1);
  return buf;
}

/** A bounds-checked cursor over one node's body. */
class Reader {
  pos = 1;
  constructor(
    readonly body: Buffer,
    readonly hash: Buffer,
  ) {}

  varint(what: string): number {
    let n = 0;
    let scale = 1;
    for (let i = 0; i < 8; i++) {
      const byte = this.body[this.pos++];
      if (byte === undefined) throw corrupt(this.hash, `truncated ${what}`);
      n += (byte & 127) * scale;
      if (byte < 128) {
        if (byte === 0 && i > 0) throw corrupt(this.hash, `non-minimal ${what}`);
        if (n > Number.MAX_SAFE_INTEGER) throw corrupt(this.hash, `${what} out of range`);
        return n;
      }
      scale *= 128;
    }
    throw corrupt(this.hash, `${what} too long`);
  }

  bytes(n: number, what: string): Buffer {
    if (this.pos + n > this.body.length) throw corrupt(this.hash, `truncated ${what}`);
    const out = this.body.subarray(this.pos, this.pos + n);
    this.pos += n;
    return out;
  }

  end(): void {
    if (this.pos !== this.body.length) throw corrupt(this.hash, `${this.body.length - this.pos} trailing bytes`);
  }
}

function decodeLeaf(r: Reader): LeafNode {
  const count = r.varint('entry count');
  // Each entry takes at least 3 bytes: a bound before allocating anything.
  if (count * 3 > r.body.length) throw corrupt(r.hash, `entry count ${count} over the body's length`);
  const entries: LeafEntry[] = [];
  let bytes = 0;
  let prev: Buffer | undefined;
  for (let i = 0; i < count; i++) {
    const klen = r.varint('key length');
    if (klen < 1 || klen > MAX_KEY_BYTES) throw corrupt(r.hash, `key length ${klen}`);
    const key = r.bytes(klen, 'key');
    if (prev !== undefined && Buffer.compare(prev, key) >= 0) throw corrupt(r.hash, 'keys not strictly ascending');
    prev = key;
    const valueLen = r.varint('value length');
    if (valueLen > MAX_VALUE_BYTES) throw corrupt(r.hash, `value length ${valueLen}`);
    const long = valueLen > INLINE_VALUE_MAX;
    const tail = r.bytes(long ? HASH_BYTES : valueLen, long ? 'value hash' : 'value');
    entries.push({ key, valueLen, value: long ? undefined : tail, valueHash: long ? tail : undefined, keyHash: undefined });
    bytes += klen + valueLen;
  }
  r.end();
  return { kind: NODE_LEAF, entries, bytes, hash: r.hash };
}

function decodeBranch(r: Reader): BranchNode {
  const bitmap = r.bytes(2, 'bitmap').readUInt16BE(0);
  if (bitmap === 0) throw corrupt(r.hash, 'branch without children');
  const count = r.varint('entry count');
  const bytes = r.varint('byte count');
  if (count <= LEAF_MAX) throw corrupt(r.hash, `branch of ${count} entries`);
  if (bytes < count) throw corrupt(r.hash, `branch of ${count} entries in ${bytes} bytes`);
  const children: Array<Buffer | TreeNode | undefined> = new Array<undefined>(16).fill(undefined);
  for (let i = 0; i < 16; i++) {
    if (bitmap & (1 << (15 - i))) children[i] = r.bytes(HASH_BYTES, 'child hash');
  }
  r.end();
  return { kind: NODE_BRANCH, children, count, bytes, hash: r.hash };
}

/** Decodes a leaf or branch (not a value node). `hash` is the node's hash, for errors and for the node. */
export function decodeTreeNode(hash: Buffer, body: Buffer): TreeNode {
  const r = new Reader(body, hash);
  switch (body[0]) {
    case NODE_LEAF:
      return decodeLeaf(r);
    case NODE_BRANCH:
      return decodeBranch(r);
    case undefined:
      throw corrupt(hash, 'empty body');
    default:
      throw corrupt(hash, `not a leaf or branch (kind ${body[0]})`);
  }
}

/** The value a value node holds, checked against the length its leaf records. */
export function decodeValue(hash: Buffer, body: Buffer, expectedLen: number): Buffer {
  if (body[0] !== NODE_VALUE) throw corrupt(hash, `not a value node (kind ${body[0] ?? 'none'})`);
  if (body.length - 1 !== expectedLen) throw corrupt(hash, `value of ${body.length - 1} bytes where its leaf says ${expectedLen}`);
  return body.subarray(1);
}

/** The distinct hashes a node references (its children in the store), derived from its body. */
export function childrenOf(hash: Buffer, body: Buffer): Buffer[] {
  switch (body[0]) {
    case NODE_VALUE:
      return [];
    case NODE_BRANCH:
      return (decodeBranch(new Reader(body, hash)).children as Buffer[]).filter((c) => c !== undefined);
    default: {
      const node = decodeTreeNode(hash, body) as LeafNode;
      return leafChildren(node);
    }
  }
}

/** The distinct value-node hashes of a committed leaf. */
export function leafChildren(node: LeafNode): Buffer[] {
  const out: Buffer[] = [];
  for (const e of node.entries) {
    if (e.valueHash !== undefined && !out.some((h) => h.equals(e.valueHash as Buffer))) out.push(e.valueHash);
  }
  return out;
}
