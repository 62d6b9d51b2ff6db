import { ProtocolError } from './errors.js';

/** One TLV field: a tag and its raw value bytes. */
export interface TlvField {
  tag: number;
  value: Buffer;
}

/** Value kinds a TLV field can be built from. */
export type TlvValue = number | bigint | string | Uint8Array;

const TLV_HEADER = 6;

/**
 * Builds a TLV payload. Numbers become u32 (they must fit), bigints u64,
 * strings UTF-8 bytes (a NUL inside is refused), byte arrays are copied as is.
 */
export class TlvWriter {
  #parts: Buffer[] = [];
  #size = 0;

  u32(tag: number, value: number): this {
    if (!Number.isInteger(value) || value < 0 || value > 0xffffffff) throw new RangeError(`TLV tag ${tag}: ${value} is not a u32`);
    const b = Buffer.allocUnsafe(4);
    b.writeUInt32BE(value);
    return this.#field(tag, b);
  }

  u64(tag: number, value: bigint): this {
    if (value < 0n || value > 0xffffffffffffffffn) throw new RangeError(`TLV tag ${tag}: ${value} is not a u64`);
    const b = Buffer.allocUnsafe(8);
    b.writeBigUInt64BE(value);
    return this.#field(tag, b);
  }

  string(tag: number, value: string): this {
    if (value.includes('\0')) throw new RangeError(`TLV tag ${tag}: string contains a NUL byte`);
    return this.#field(tag, Buffer.from(value, 'utf8'));
  }

  bytes(tag: number, value: Uint8Array): this {
    return this.#field(tag, Buffer.from(value));
  }

  /** Bytes the payload has so far. */
  get size(): number {
    return this.#size;
  }

  finish(): Buffer {
    return Buffer.concat(this.#parts, this.#size);
  }

  #field(tag: number, value: Buffer): this {
    if (!Number.isInteger(tag) || tag < 0 || tag > 0xffff) throw new RangeError(`invalid TLV tag ${tag}`);
    const h = Buffer.allocUnsafe(TLV_HEADER);
    h.writeUInt16BE(tag, 0);
    h.writeUInt32BE(value.length, 2);
    this.#parts.push(h, value);
    this.#size += TLV_HEADER + value.length;
    return this;
  }
}

/** Splits a TLV payload into fields; throws ProtocolError if a field overruns the payload. */
export function parseTlv(payload: Uint8Array): TlvField[] {
  const buf = Buffer.from(payload.buffer, payload.byteOffset, payload.length);
  const fields: TlvField[] = [];
  let off = 0;
  while (off < buf.length) {
    if (buf.length - off < TLV_HEADER) throw new ProtocolError(`truncated TLV header at offset ${off}`);
    const tag = buf.readUInt16BE(off);
    const len = buf.readUInt32BE(off + 2);
    off += TLV_HEADER;
    if (len > buf.length - off) throw new ProtocolError(`TLV tag ${tag} claims ${len} bytes, ${buf.length - off} remain`);
    fields.push({ tag, value: buf.subarray(off, off + len) });
    off += len;
  }
  return fields;
}

/** Typed access to parsed TLV fields, validating each value's shape. */
export class TlvReader {
  readonly fields: TlvField[];

  constructor(payload: Uint8Array) {
    this.fields = parseTlv(payload);
  }

  has(tag: number): boolean {
    return this.fields.some((f) => f.tag === tag);
  }

  u32(tag: number): number | undefined {
    const f = this.#last(tag);
    if (!f) return undefined;
    if (f.value.length !== 4) throw new ProtocolError(`TLV tag ${tag}: u32 with ${f.value.length} bytes`);
    return f.value.readUInt32BE(0);
  }

  u64(tag: number): bigint | undefined {
    const f = this.#last(tag);
    if (!f) return undefined;
    if (f.value.length !== 8) throw new ProtocolError(`TLV tag ${tag}: u64 with ${f.value.length} bytes`);
    return f.value.readBigUInt64BE(0);
  }

  string(tag: number, maxBytes = Infinity): string | undefined {
    const f = this.#last(tag);
    return f ? checkString(tag, f.value, maxBytes) : undefined;
  }

  strings(tag: number, maxBytes = Infinity): string[] {
    return this.fields.filter((f) => f.tag === tag).map((f) => checkString(tag, f.value, maxBytes));
  }

  bytes(tag: number, maxBytes = Infinity): Buffer | undefined {
    const f = this.#last(tag);
    if (f && f.value.length > maxBytes) throw new ProtocolError(`TLV tag ${tag}: ${f.value.length} bytes, at most ${maxBytes}`);
    return f?.value;
  }

  #last(tag: number): TlvField | undefined {
    for (let i = this.fields.length - 1; i >= 0; i--) if (this.fields[i]!.tag === tag) return this.fields[i];
    return undefined;
  }
}

function checkString(tag: number, value: Buffer, maxBytes: number): string {
  if (value.length > maxBytes) throw new ProtocolError(`TLV tag ${tag}: string of ${value.length} bytes, at most ${maxBytes}`);
  if (value.includes(0)) throw new ProtocolError(`TLV tag ${tag}: string contains a NUL byte`);
  return value.toString('utf8');
}
