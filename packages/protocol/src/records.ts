import { MAX_RECORD, Tag } from './constants.js';
import { ChunkQueue } from './chunks.js';
import { ProtocolError } from './errors.js';
import { TlvReader, TlvWriter } from './tlv.js';

/*
 * The records a CALL writes on fd 1 and fd 2 (docs/PROTOCOL.md, "Calls"):
 * `[length: u32 BE][TLV…]`, `length` at most MAX_RECORD.
 */

/** An entry record (`stat`, `list`, `write`, `rename`, `mkdir`). */
export interface EntryRecord {
  path: string;
  name: string;
  /** `st_mode`: type and permission bits. */
  stMode: number;
  size: bigint;
  uid: number;
  gid: number;
  /** Modification time, ns since the epoch (as the guest's u64). */
  mtimeNs: bigint;
  /** A symlink's target. */
  link?: string;
  /** `mkdir`: 1 if the directory was created, 0 if it existed. */
  event?: number;
}

/** A record of `watch` (WatchEvent values). */
export interface EventRecord {
  event: number;
  /** The watched path joined with the name below it ('' when the agent sent none, as READY may). */
  path: string;
  /** Only the type bits: S_IFDIR for a directory, S_IFREG otherwise. */
  stMode: number;
}

/** The error record of a call that exited with status 1. */
export interface ErrorRecord {
  /** The Linux errno. */
  errno: number;
  /** The path the failing system call was given. */
  path?: string;
  /** `strerror` and what was being done. */
  message: string;
}

const LEN = 4;

/**
 * Incremental decoder of `[u32 BE length][TLV]` records. Feed it chunks split
 * anywhere; it returns each whole record's TLV payload. A length over
 * MAX_RECORD is a ProtocolError, so it never holds more than one maximal
 * record plus one chunk.
 */
export class RecordDecoder {
  #queue = new ChunkQueue();

  /** Bytes held that do not yet form a whole record. */
  get buffered(): number {
    return this.#queue.buffered;
  }

  /** Adds bytes and returns the payload of every record they complete. */
  push(chunk: Uint8Array): Buffer[] {
    const q = this.#queue;
    q.push(chunk);
    const out: Buffer[] = [];
    while (q.buffered >= LEN) {
      const length = q.peek(LEN).readUInt32BE(0);
      if (length > MAX_RECORD) throw new ProtocolError(`record length ${length} over ${MAX_RECORD}`);
      if (q.buffered < LEN + length) break;
      out.push(q.take(LEN + length).subarray(LEN));
    }
    return out;
  }

  /** The stream ended: throws ProtocolError if it stopped inside a record. */
  end(): void {
    if (this.#queue.buffered > 0) throw new ProtocolError(`the record stream ended inside a record (${this.#queue.buffered} bytes left over)`);
  }
}

/** Frames a TLV payload as one record. Throws RangeError over MAX_RECORD. */
export function encodeRecord(tlv: Uint8Array): Buffer {
  if (tlv.length > MAX_RECORD) throw new RangeError(`record of ${tlv.length} bytes exceeds ${MAX_RECORD}`);
  const b = Buffer.allocUnsafe(LEN + tlv.length);
  b.writeUInt32BE(tlv.length, 0);
  b.set(tlv, LEN);
  return b;
}

export function encodeEntryRecord(e: EntryRecord): Buffer {
  const w = new TlvWriter()
    .string(Tag.PATH, e.path)
    .string(Tag.NAME, e.name)
    .u32(Tag.ST_MODE, e.stMode)
    .u64(Tag.SIZE, e.size)
    .u32(Tag.UID, e.uid)
    .u32(Tag.GID, e.gid)
    .u64(Tag.MTIME_NS, e.mtimeNs);
  if (e.link !== undefined) w.string(Tag.LINK, e.link);
  if (e.event !== undefined) w.u32(Tag.EVENT, e.event);
  return encodeRecord(w.finish());
}

export function encodeEventRecord(e: EventRecord): Buffer {
  const w = new TlvWriter().u32(Tag.EVENT, e.event);
  if (e.path !== '') w.string(Tag.PATH, e.path);
  return encodeRecord(w.u32(Tag.ST_MODE, e.stMode).finish());
}

export function encodeErrorRecord(e: ErrorRecord): Buffer {
  const w = new TlvWriter().u32(Tag.ERRNO, e.errno);
  if (e.path !== undefined) w.string(Tag.PATH, e.path);
  return encodeRecord(w.string(Tag.MESSAGE, e.message).finish());
}

/** Decodes an entry record's payload. PATH and ST_MODE are required; a missing NAME is the base name of PATH. */
export function decodeEntryRecord(payload: Uint8Array): EntryRecord {
  const r = new TlvReader(payload);
  const path = r.string(Tag.PATH);
  if (path === undefined) throw new ProtocolError('entry record without PATH');
  const stMode = r.u32(Tag.ST_MODE);
  if (stMode === undefined) throw new ProtocolError(`entry record for ${JSON.stringify(path)} without ST_MODE`);
  const out: EntryRecord = {
    path,
    name: r.string(Tag.NAME) ?? path.slice(path.lastIndexOf('/') + 1),
    stMode,
    size: r.u64(Tag.SIZE) ?? 0n,
    uid: r.u32(Tag.UID) ?? 0,
    gid: r.u32(Tag.GID) ?? 0,
    mtimeNs: r.u64(Tag.MTIME_NS) ?? 0n,
  };
  const link = r.string(Tag.LINK);
  if (link !== undefined) out.link = link;
  const event = r.u32(Tag.EVENT);
  if (event !== undefined) out.event = event;
  return out;
}

/** Decodes a `watch` record's payload. EVENT is required. */
export function decodeEventRecord(payload: Uint8Array): EventRecord {
  const r = new TlvReader(payload);
  const event = r.u32(Tag.EVENT);
  if (event === undefined) throw new ProtocolError('watch record without EVENT');
  return { event, path: r.string(Tag.PATH) ?? '', stMode: r.u32(Tag.ST_MODE) ?? 0 };
}

/** Decodes an error record's payload. ERRNO is required. */
export function decodeErrorRecord(payload: Uint8Array): ErrorRecord {
  const r = new TlvReader(payload);
  const errno = r.u32(Tag.ERRNO);
  if (errno === undefined) throw new ProtocolError('error record without ERRNO');
  const out: ErrorRecord = { errno, message: r.string(Tag.MESSAGE) ?? '' };
  const path = r.string(Tag.PATH);
  if (path !== undefined) out.path = path;
  return out;
}
