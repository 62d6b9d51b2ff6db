/**
 * The 9P2000.L codec: every message the Linux client sends and every reply,
 * each described once as a list of fields, from which both the TypeScript
 * type and the encoder/decoder follow.
 *
 * Frames are `size[4] type[1] tag[2] fields...`, little-endian. Strings are
 * `len[2]` + bytes; file names, symlink targets and extended attribute names
 * are kept as raw bytes (`Buffer`) because host and guest names need not be
 * UTF-8, other strings (version, uname, aname, lock client ids) are decoded
 * as UTF-8.
 *
 * Decoding is bounded: every length is checked against the frame, a frame
 * must be exactly consumed, and nothing is allocated before its length has
 * been checked. A bad frame throws {@link DecodeError}; the session that
 * read it ends (it cannot know where the next frame starts).
 */
import { HEADER_SIZE, MAX_WALK_ELEMENTS, MsgType } from './constants.js';

/** A qid: the server's identity of a file. */
export interface Qid {
  /** QidType bits. */
  type: number;
  /** Changes when the file does (here: from mtime and size). */
  version: number;
  /** Unique per file in the export (here: from the inode number). */
  path: bigint;
}

/** A frame or message that does not follow the protocol. */
export class DecodeError extends Error {
  override readonly name = 'DecodeError';
}

/** What each field kind decodes to. */
interface KindTypes {
  u8: number;
  u16: number;
  u32: number;
  u64: bigint;
  /** UTF-8 string. */
  str: string;
  /** Raw-bytes string (names, targets). */
  name: Buffer;
  qid: Qid;
  /** u16 count + qids. */
  qids: Qid[];
  /** u16 count + raw-bytes strings (Twalk's names). */
  names: Buffer[];
  /** u32 count + bytes (Tread/Twrite/Rreaddir payloads). */
  data: Buffer;
}
type Kind = keyof KindTypes;
type Schema = readonly (readonly [string, Kind])[];

const QID = ['qid', 'qid'] as const;

/** The fields of every message, in wire order (after size, type, tag). */
export const SCHEMAS = {
  Rlerror: [['ecode', 'u32']],
  Tstatfs: [['fid', 'u32']],
  Rstatfs: [
    ['fsType', 'u32'],
    ['bsize', 'u32'],
    ['blocks', 'u64'],
    ['bfree', 'u64'],
    ['bavail', 'u64'],
    ['files', 'u64'],
    ['ffree', 'u64'],
    ['fsid', 'u64'],
    ['namelen', 'u32'],
  ],
  Tlopen: [
    ['fid', 'u32'],
    ['flags', 'u32'],
  ],
  Rlopen: [QID, ['iounit', 'u32']],
  Tlcreate: [
    ['fid', 'u32'],
    ['name', 'name'],
    ['flags', 'u32'],
    ['mode', 'u32'],
    ['gid', 'u32'],
  ],
  Rlcreate: [QID, ['iounit', 'u32']],
  Tsymlink: [
    ['fid', 'u32'],
    ['name', 'name'],
    ['target', 'name'],
    ['gid', 'u32'],
  ],
  Rsymlink: [QID],
  Tmknod: [
    ['dfid', 'u32'],
    ['name', 'name'],
    ['mode', 'u32'],
    ['major', 'u32'],
    ['minor', 'u32'],
    ['gid', 'u32'],
  ],
  Rmknod: [QID],
  Trename: [
    ['fid', 'u32'],
    ['dfid', 'u32'],
    ['name', 'name'],
  ],
  Rrename: [],
  Treadlink: [['fid', 'u32']],
  Rreadlink: [['target', 'name']],
  Tgetattr: [
    ['fid', 'u32'],
    ['requestMask', 'u64'],
  ],
  Rgetattr: [
    ['valid', 'u64'],
    QID,
    ['mode', 'u32'],
    ['uid', 'u32'],
    ['gid', 'u32'],
    ['nlink', 'u64'],
    ['rdev', 'u64'],
    ['size', 'u64'],
    ['blksize', 'u64'],
    ['blocks', 'u64'],
    ['atimeSec', 'u64'],
    ['atimeNsec', 'u64'],
    ['mtimeSec', 'u64'],
    ['mtimeNsec', 'u64'],
    ['ctimeSec', 'u64'],
    ['ctimeNsec', 'u64'],
    ['btimeSec', 'u64'],
    ['btimeNsec', 'u64'],
    ['gen', 'u64'],
    ['dataVersion', 'u64'],
  ],
  Tsetattr: [
    ['fid', 'u32'],
    ['valid', 'u32'],
    ['mode', 'u32'],
    ['uid', 'u32'],
    ['gid', 'u32'],
    ['size', 'u64'],
    ['atimeSec', 'u64'],
    ['atimeNsec', 'u64'],
    ['mtimeSec', 'u64'],
    ['mtimeNsec', 'u64'],
  ],
  Rsetattr: [],
  Txattrwalk: [
    ['fid', 'u32'],
    ['newfid', 'u32'],
    ['name', 'name'],
  ],
  Rxattrwalk: [['size', 'u64']],
  Txattrcreate: [
    ['fid', 'u32'],
    ['name', 'name'],
    ['size', 'u64'],
    ['flags', 'u32'],
  ],
  Rxattrcreate: [],
  Treaddir: [
    ['fid', 'u32'],
    ['offset', 'u64'],
    ['count', 'u32'],
  ],
  Rreaddir: [['data', 'data']],
  Tfsync: [
    ['fid', 'u32'],
    ['datasync', 'u32'],
  ],
  Rfsync: [],
  Tlock: [
    ['fid', 'u32'],
    ['lockType', 'u8'],
    ['flags', 'u32'],
    ['start', 'u64'],
    ['length', 'u64'],
    ['procId', 'u32'],
    ['clientId', 'str'],
  ],
  Rlock: [['status', 'u8']],
  Tgetlock: [
    ['fid', 'u32'],
    ['lockType', 'u8'],
    ['start', 'u64'],
    ['length', 'u64'],
    ['procId', 'u32'],
    ['clientId', 'str'],
  ],
  Rgetlock: [
    ['lockType', 'u8'],
    ['start', 'u64'],
    ['length', 'u64'],
    ['procId', 'u32'],
    ['clientId', 'str'],
  ],
  Tlink: [
    ['dfid', 'u32'],
    ['fid', 'u32'],
    ['name', 'name'],
  ],
  Rlink: [],
  Tmkdir: [
    ['dfid', 'u32'],
    ['name', 'name'],
    ['mode', 'u32'],
    ['gid', 'u32'],
  ],
  Rmkdir: [QID],
  Trenameat: [
    ['olddirfid', 'u32'],
    ['oldname', 'name'],
    ['newdirfid', 'u32'],
    ['newname', 'name'],
  ],
  Rrenameat: [],
  Tunlinkat: [
    ['dirfid', 'u32'],
    ['name', 'name'],
    ['flags', 'u32'],
  ],
  Runlinkat: [],
  Tversion: [
    ['msize', 'u32'],
    ['version', 'str'],
  ],
  Rversion: [
    ['msize', 'u32'],
    ['version', 'str'],
  ],
  Tauth: [
    ['afid', 'u32'],
    ['uname', 'str'],
    ['aname', 'str'],
    ['nUname', 'u32'],
  ],
  Rauth: [['aqid', 'qid']],
  Tattach: [
    ['fid', 'u32'],
    ['afid', 'u32'],
    ['uname', 'str'],
    ['aname', 'str'],
    ['nUname', 'u32'],
  ],
  Rattach: [QID],
  Tflush: [['oldtag', 'u16']],
  Rflush: [],
  Twalk: [
    ['fid', 'u32'],
    ['newfid', 'u32'],
    ['names', 'names'],
  ],
  Rwalk: [['qids', 'qids']],
  Tread: [
    ['fid', 'u32'],
    ['offset', 'u64'],
    ['count', 'u32'],
  ],
  Rread: [['data', 'data']],
  Twrite: [
    ['fid', 'u32'],
    ['offset', 'u64'],
    ['data', 'data'],
  ],
  Rwrite: [['count', 'u32']],
  Tclunk: [['fid', 'u32']],
  Rclunk: [],
  Tremove: [['fid', 'u32']],
  Rremove: [],
} as const satisfies Record<string, Schema>;

/** The name of a message type ('Twalk', 'Rlerror', ...). */
export type MessageName = keyof typeof SCHEMAS;

type FieldsOf<S extends Schema> = { -readonly [E in S[number] as E[0]]: KindTypes[E[1]] };

/** One message of type `K`: its name, its tag and its fields. */
export type MessageOf<K extends MessageName> = { type: K; tag: number } & FieldsOf<(typeof SCHEMAS)[K]>;

/** Any 9P2000.L message. */
export type Message = { [K in MessageName]: MessageOf<K> }[MessageName];
/** Any T-message (client to server). */
export type TMessage = Extract<Message, { type: `T${string}` }>;
/** Any R-message (server to client). */
export type RMessage = Extract<Message, { type: `R${string}` }>;

const NUMBER_BY_NAME = new Map<string, number>(Object.entries(MsgType));
const NAME_BY_NUMBER = new Map<number, MessageName>();
for (const [name, number] of Object.entries(MsgType)) if (name in SCHEMAS) NAME_BY_NUMBER.set(number, name as MessageName);

/** The wire number of a message name. */
export function messageNumber(name: MessageName): number {
  const n = NUMBER_BY_NAME.get(name);
  if (n === undefined) throw new RangeError(`unknown message ${name}`);
  return n;
}

/** The message name of a wire number, or undefined for a type this codec does not know. */
export function messageName(type: number): MessageName | undefined {
  return NAME_BY_NUMBER.get(type);
}

const QID_SIZE = 13;
const U64_MAX = 0xffffffffffffffffn;

function fieldSize(kind: Kind, value: unknown): number {
  switch (kind) {
    case 'u8':
      return 1;
    case 'u16':
      return 2;
    case 'u32':
      return 4;
    case 'u64':
      return 8;
    case 'str':
      return 2 + Buffer.byteLength(value as string);
    case 'name':
      return 2 + (value as Buffer).length;
    case 'qid':
      return QID_SIZE;
    case 'qids':
      return 2 + QID_SIZE * (value as Qid[]).length;
    case 'names':
      return 2 + (value as Buffer[]).reduce((n, b) => n + 2 + b.length, 0);
    case 'data':
      return 4 + (value as Buffer).length;
  }
}

function checkInt(value: unknown, max: number, field: string): number {
  if (typeof value !== 'number' || !Number.isInteger(value) || value < 0 || value > max)
    throw new RangeError(`${field}: ${String(value)} is not in [0, ${max}]`);
  return value;
}

function writeQid(buf: Buffer, at: number, qid: Qid): number {
  buf.writeUInt8(checkInt(qid.type, 0xff, 'qid.type'), at);
  buf.writeUInt32LE(checkInt(qid.version, 0xffffffff, 'qid.version'), at + 1);
  buf.writeBigUInt64LE(qid.path & U64_MAX, at + 5);
  return at + QID_SIZE;
}

function writeString(buf: Buffer, at: number, bytes: Buffer, field: string): number {
  if (bytes.length > 0xffff) throw new RangeError(`${field}: string of ${bytes.length} bytes`);
  buf.writeUInt16LE(bytes.length, at);
  bytes.copy(buf, at + 2);
  return at + 2 + bytes.length;
}

function writeField(buf: Buffer, at: number, kind: Kind, value: unknown, field: string): number {
  switch (kind) {
    case 'u8':
      return buf.writeUInt8(checkInt(value, 0xff, field), at);
    case 'u16':
      return buf.writeUInt16LE(checkInt(value, 0xffff, field), at);
    case 'u32':
      return buf.writeUInt32LE(checkInt(value, 0xffffffff, field), at);
    case 'u64':
      if (typeof value !== 'bigint' || value < 0n || value > U64_MAX) throw new RangeError(`${field}: ${String(value)} is not a u64`);
      return buf.writeBigUInt64LE(value, at);
    case 'str':
      return writeString(buf, at, Buffer.from(value as string), field);
    case 'name':
      return writeString(buf, at, value as Buffer, field);
    case 'qid':
      return writeQid(buf, at, value as Qid);
    case 'qids': {
      const qids = value as Qid[];
      buf.writeUInt16LE(checkInt(qids.length, 0xffff, field), at);
      let p = at + 2;
      for (const q of qids) p = writeQid(buf, p, q);
      return p;
    }
    case 'names': {
      const names = value as Buffer[];
      buf.writeUInt16LE(checkInt(names.length, 0xffff, field), at);
      let p = at + 2;
      for (const n of names) p = writeString(buf, p, n, field);
      return p;
    }
    case 'data': {
      const data = value as Buffer;
      buf.writeUInt32LE(data.length, at);
      data.copy(buf, at + 4);
      return at + 4 + data.length;
    }
  }
}

/** Encodes one message as a whole frame. Throws RangeError on a field out of range (a bug of the caller). */
export function encode(message: Message): Buffer {
  const schema: Schema = SCHEMAS[message.type];
  const fields = message as unknown as Record<string, unknown>;
  let size = HEADER_SIZE;
  for (const [name, kind] of schema) size += fieldSize(kind, fields[name]);
  if (size > 0xffffffff) throw new RangeError(`message of ${size} bytes`);
  const buf = Buffer.allocUnsafe(size);
  buf.writeUInt32LE(size, 0);
  buf.writeUInt8(messageNumber(message.type), 4);
  buf.writeUInt16LE(checkInt(message.tag, 0xffff, 'tag'), 5);
  let at = HEADER_SIZE;
  for (const [name, kind] of schema) at = writeField(buf, at, kind, fields[name], name);
  return buf;
}

/** A bounded cursor over one frame. */
class Reader {
  at = HEADER_SIZE;
  constructor(private readonly buf: Buffer) {}

  need(n: number, what: string): void {
    if (this.buf.length - this.at < n) throw new DecodeError(`${what}: needs ${n} bytes, ${this.buf.length - this.at} left`);
  }

  field(kind: Kind, what: string): unknown {
    const buf = this.buf;
    switch (kind) {
      case 'u8':
        this.need(1, what);
        return buf.readUInt8(this.at++);
      case 'u16':
        this.need(2, what);
        this.at += 2;
        return buf.readUInt16LE(this.at - 2);
      case 'u32':
        this.need(4, what);
        this.at += 4;
        return buf.readUInt32LE(this.at - 4);
      case 'u64':
        this.need(8, what);
        this.at += 8;
        return buf.readBigUInt64LE(this.at - 8);
      case 'str':
        return this.bytes(what).toString('utf8');
      case 'name':
        return this.bytes(what);
      case 'qid':
        return this.qid(what);
      case 'qids': {
        const n = this.field('u16', what) as number;
        if (n > MAX_WALK_ELEMENTS) throw new DecodeError(`${what}: ${n} qids (at most ${MAX_WALK_ELEMENTS})`);
        this.need(n * QID_SIZE, what);
        return Array.from({ length: n }, () => this.qid(what));
      }
      case 'names': {
        const n = this.field('u16', what) as number;
        if (n > MAX_WALK_ELEMENTS) throw new DecodeError(`${what}: ${n} names (at most ${MAX_WALK_ELEMENTS})`);
        const names: Buffer[] = [];
        for (let i = 0; i < n; i++) names.push(this.bytes(what));
        return names;
      }
      case 'data': {
        const n = this.field('u32', what) as number;
        this.need(n, what);
        this.at += n;
        return Buffer.from(buf.subarray(this.at - n, this.at));
      }
    }
  }

  private bytes(what: string): Buffer {
    const n = this.field('u16', what) as number;
    this.need(n, what);
    this.at += n;
    return Buffer.from(this.buf.subarray(this.at - n, this.at));
  }

  private qid(what: string): Qid {
    this.need(QID_SIZE, what);
    const buf = this.buf;
    const qid = { type: buf.readUInt8(this.at), version: buf.readUInt32LE(this.at + 1), path: buf.readBigUInt64LE(this.at + 5) };
    this.at += QID_SIZE;
    return qid;
  }

  end(what: string): void {
    if (this.at !== this.buf.length) throw new DecodeError(`${what}: ${this.buf.length - this.at} bytes after the last field`);
  }
}

/** The header of a frame: enough to answer it even when its body does not decode. */
export interface FrameHeader {
  size: number;
  type: number;
  tag: number;
}

/** Reads a frame's header. The frame must be whole (its size field equal to its length). */
export function decodeHeader(frame: Buffer): FrameHeader {
  if (frame.length < HEADER_SIZE) throw new DecodeError(`frame of ${frame.length} bytes is shorter than a header`);
  const size = frame.readUInt32LE(0);
  if (size !== frame.length) throw new DecodeError(`frame size field ${size} but ${frame.length} bytes`);
  return { size, type: frame.readUInt8(4), tag: frame.readUInt16LE(5) };
}

/**
 * Decodes one whole frame. Throws DecodeError when the frame is malformed
 * (sizes disagree, a length runs past the end, bytes are left over) or its
 * type is unknown.
 */
export function decode(frame: Buffer): Message {
  const { type, tag } = decodeHeader(frame);
  const name = messageName(type);
  if (name === undefined) throw new DecodeError(`unknown message type ${type}`);
  const reader = new Reader(frame);
  const message: Record<string, unknown> = { type: name, tag };
  for (const [field, kind] of SCHEMAS[name] as Schema) message[field] = reader.field(kind, `${name}.${field}`);
  reader.end(name);
  return message as Message;
}

/** One entry of an Rreaddir. `offset` is the cookie of the entry after it. */
export interface Dirent {
  qid: Qid;
  offset: bigint;
  /** d_type (DirentType). */
  type: number;
  name: Buffer;
}

/** The bytes one entry takes in an Rreaddir. */
export function direntSize(name: Buffer): number {
  return QID_SIZE + 8 + 1 + 2 + name.length;
}

/** Encodes directory entries as Rreaddir data. */
export function encodeDirents(entries: readonly Dirent[]): Buffer {
  const buf = Buffer.allocUnsafe(entries.reduce((n, e) => n + direntSize(e.name), 0));
  let at = 0;
  for (const e of entries) {
    at = writeQid(buf, at, e.qid);
    at = buf.writeBigUInt64LE(e.offset, at);
    at = buf.writeUInt8(e.type, at);
    at = writeString(buf, at, e.name, 'dirent.name');
  }
  return buf;
}

/** Decodes Rreaddir data (the client side). Throws DecodeError on a truncated entry. */
export function decodeDirents(data: Buffer): Dirent[] {
  const out: Dirent[] = [];
  let at = 0;
  while (at < data.length) {
    if (data.length - at < QID_SIZE + 8 + 1 + 2) throw new DecodeError('truncated dirent');
    const qid = { type: data.readUInt8(at), version: data.readUInt32LE(at + 1), path: data.readBigUInt64LE(at + 5) };
    at += QID_SIZE;
    const offset = data.readBigUInt64LE(at);
    const type = data.readUInt8(at + 8);
    const len = data.readUInt16LE(at + 9);
    at += 11;
    if (data.length - at < len) throw new DecodeError('truncated dirent name');
    out.push({ qid, offset, type, name: Buffer.from(data.subarray(at, at + len)) });
    at += len;
  }
  return out;
}
