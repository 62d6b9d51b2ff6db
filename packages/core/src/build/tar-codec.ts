import { RoostError } from '../errors.js';

/*
 * A small streaming tar codec for the image builder's layers: read what
 * the agent's `archive` writes (ustar, pax 'x' records, GNU long names) with
 * extended attributes kept byte for byte (pax SCHILY.xattr.* values are
 * binary: security.capability is), and write layers deterministically (the
 * same entries give the same bytes: no user or group names, no atime or
 * ctime, pax records in a fixed order). tar-stream decodes pax values as
 * UTF-8, which would corrupt binary attributes.
 */

const BLOCK = 512;
/** Upper bound of one pax header or GNU long name: real ones are a few hundred bytes (64 KiB attributes included). */
const MAX_META_BYTES = 1 << 20;

/** One entry's header, as the codec reads and writes it. */
export interface TarHeader {
  /** The name as stored (directories may end with '/'). */
  name: string;
  /** '0' file, '1' hard link, '2' symlink, '3' char device, '4' block device, '5' directory, '6' FIFO. */
  type: '0' | '1' | '2' | '3' | '4' | '5' | '6';
  mode: number;
  uid: number;
  gid: number;
  size: number;
  /** Seconds since the epoch (whole). */
  mtime: number;
  linkname: string;
  devmajor: number;
  devminor: number;
  /** Extended attributes by name, values as stored. */
  xattrs: Map<string, Buffer>;
}

/** Reads exact byte counts from a stream of chunks. */
class ByteSource {
  #chunks: Buffer[] = [];
  #buffered = 0;
  readonly #it: AsyncIterator<Uint8Array>;
  #done = false;

  constructor(source: AsyncIterable<Uint8Array>) {
    this.#it = source[Symbol.asyncIterator]();
  }

  /** Exactly n bytes, or fewer at the end of the stream. */
  async read(n: number): Promise<Buffer> {
    while (this.#buffered < n && !this.#done) {
      const r = await this.#it.next();
      if (r.done) this.#done = true;
      else if (r.value.length > 0) {
        this.#chunks.push(Buffer.from(r.value.buffer, r.value.byteOffset, r.value.byteLength));
        this.#buffered += r.value.length;
      }
    }
    const all = this.#chunks.length === 1 ? this.#chunks[0]! : Buffer.concat(this.#chunks);
    const out = all.subarray(0, Math.min(n, all.length));
    const rest = all.subarray(out.length);
    this.#chunks = rest.length ? [rest] : [];
    this.#buffered = rest.length;
    return out;
  }

  /** Up to `max` bytes (at least 1 unless the stream ended): for streaming bodies without copying them whole. */
  async some(max: number): Promise<Buffer> {
    if (this.#buffered === 0 && !this.#done) {
      const r = await this.#it.next();
      if (r.done) this.#done = true;
      else {
        this.#chunks.push(Buffer.from(r.value.buffer, r.value.byteOffset, r.value.byteLength));
        this.#buffered += r.value.length;
      }
    }
    if (this.#buffered === 0) return Buffer.alloc(0);
    const first = this.#chunks[0]!;
    const out = first.subarray(0, Math.min(max, first.length));
    const rest = first.subarray(out.length);
    if (rest.length) this.#chunks[0] = rest;
    else this.#chunks.shift();
    this.#buffered -= out.length;
    return out;
  }

  async return(): Promise<void> {
    await this.#it.return?.();
  }
}

function octal(h: Buffer, off: number, len: number, what: string): number {
  // GNU base-256: the high bit of the first byte.
  if ((h[off]! & 0x80) !== 0) {
    let n = h[off]! & 0x7f;
    for (let i = off + 1; i < off + len; i++) n = n * 256 + h[i]!;
    return n;
  }
  const s = h
    .subarray(off, off + len)
    .toString('latin1')
    .replace(/[\0 ]+$/, '')
    .trim();
  if (s === '') return 0;
  if (!/^[0-7]+$/.test(s)) throw new RoostError('IMAGE', `tar: malformed ${what} field ${JSON.stringify(s)}`);
  return parseInt(s, 8);
}

function cstring(h: Buffer, off: number, len: number): string {
  const end = h.indexOf(0, off);
  return h.subarray(off, end === -1 || end > off + len ? off + len : end).toString('utf8');
}

/** Parses pax records (`<len> <key>=<value>\n`), values kept as bytes. */
function parsePax(data: Buffer): Map<string, Buffer> {
  const out = new Map<string, Buffer>();
  let i = 0;
  while (i < data.length) {
    const sp = data.indexOf(0x20, i);
    if (sp === -1) break;
    const len = Number(data.subarray(i, sp).toString('latin1'));
    if (!Number.isSafeInteger(len) || len <= 0 || i + len > data.length) throw new RoostError('IMAGE', 'tar: malformed pax record');
    const rec = data.subarray(sp + 1, i + len - 1);
    const eq = rec.indexOf(0x3d);
    if (eq === -1) throw new RoostError('IMAGE', 'tar: malformed pax record');
    out.set(rec.subarray(0, eq).toString('utf8'), Buffer.from(rec.subarray(eq + 1)));
    i += len;
  }
  return out;
}

/**
 * Reads a tar stream entry by entry: `for await (const { header, body } of
 * readTar(source))`. Each body must be consumed (or left: it is skipped)
 * before the next entry is asked for.
 */
export async function* readTar(source: AsyncIterable<Uint8Array>): AsyncGenerator<{ header: TarHeader; body: AsyncIterable<Buffer> }> {
  const src = new ByteSource(source);
  try {
    let pax = new Map<string, Buffer>();
    let longName: string | undefined;
    let longLink: string | undefined;
    for (;;) {
      const h = await src.read(BLOCK);
      if (h.length === 0) return;
      if (h.length < BLOCK) throw new RoostError('IMAGE', 'tar: the stream ends inside a header');
      if (h.every((b) => b === 0)) return;
      let sum = 0;
      for (let i = 0; i < BLOCK; i++) sum += i >= 148 && i < 156 ? 0x20 : h[i]!;
      if (sum !== octal(h, 148, 8, 'checksum')) throw new RoostError('IMAGE', 'tar: a header checksum does not match');
      const typeflag = String.fromCharCode(h[156]!) || '0';
      const size = octal(h, 124, 12, 'size');
      const padded = Math.ceil(size / BLOCK) * BLOCK;
      if (typeflag === 'x' || typeflag === 'g' || typeflag === 'L' || typeflag === 'K') {
        if (size > MAX_META_BYTES) throw new RoostError('IMAGE', `tar: a ${typeflag} header of ${size} bytes`);
        const data = (await src.read(padded)).subarray(0, size);
        if (typeflag === 'x') pax = parsePax(data);
        else if (typeflag === 'L') longName = cstring(data, 0, data.length);
        else if (typeflag === 'K') longLink = cstring(data, 0, data.length);
        continue;
      }
      const prefix = h.toString('latin1', 257, 263).startsWith('ustar') ? cstring(h, 345, 155) : '';
      const baseName = cstring(h, 0, 100);
      const xattrs = new Map<string, Buffer>();
      for (const [k, v] of pax) if (k.startsWith('SCHILY.xattr.')) xattrs.set(k.slice('SCHILY.xattr.'.length), v);
      const num = (key: string, fallback: number) => {
        const v = pax.get(key);
        return v === undefined ? fallback : Math.floor(Number(v.toString('latin1')));
      };
      const header: TarHeader = {
        name: pax.get('path')?.toString('utf8') ?? longName ?? (prefix ? `${prefix}/${baseName}` : baseName),
        type: (typeflag === '\0' || typeflag === '7' ? '0' : typeflag) as TarHeader['type'],
        mode: octal(h, 100, 8, 'mode') & 0o7777,
        uid: num('uid', octal(h, 108, 8, 'uid')),
        gid: num('gid', octal(h, 116, 8, 'gid')),
        size: num('size', size),
        mtime: num('mtime', octal(h, 136, 12, 'mtime')),
        linkname: pax.get('linkpath')?.toString('utf8') ?? longLink ?? cstring(h, 157, 100),
        devmajor: octal(h, 329, 8, 'devmajor'),
        devminor: octal(h, 337, 8, 'devminor'),
        xattrs,
      };
      if (!'0123456'.includes(header.type))
        throw new RoostError('IMAGE', `tar: entry ${header.name} has type ${JSON.stringify(typeflag)}, which layers do not hold`);
      pax = new Map();
      longName = longLink = undefined;
      const dataSize = header.type === '0' ? header.size : 0;
      let left = dataSize;
      const body = (async function* () {
        while (left > 0) {
          const chunk = await src.some(left);
          if (chunk.length === 0) throw new RoostError('IMAGE', `tar: the stream ends inside ${header.name}`);
          left -= chunk.length;
          yield chunk;
        }
      })();
      yield { header, body };
      // Whatever of the body was not read, and the padding.
      while (left > 0) {
        const chunk = await src.some(left);
        if (chunk.length === 0) throw new RoostError('IMAGE', `tar: the stream ends inside ${header.name}`);
        left -= chunk.length;
      }
      const pad = Math.ceil(dataSize / BLOCK) * BLOCK - dataSize;
      if (pad) await src.read(pad);
    }
  } finally {
    await src.return();
  }
}

function putOctal(h: Buffer, off: number, len: number, v: number): boolean {
  const s = Math.max(0, Math.floor(v)).toString(8);
  if (s.length > len - 1) {
    h.fill(0x30, off, off + len - 1);
    return false;
  }
  h.write(s.padStart(len - 1, '0') + '\0', off, 'latin1');
  return true;
}

function paxRecord(key: string, value: Buffer): Buffer {
  const body = Buffer.concat([Buffer.from(` ${key}=`), value, Buffer.from('\n')]);
  let len = body.length + 1;
  while (String(len).length + body.length !== len) len = String(len).length + body.length;
  return Buffer.concat([Buffer.from(String(len)), body]);
}

function ustar(name: Buffer, h: Omit<TarHeader, 'name' | 'xattrs' | 'linkname'> & { linkname: Buffer }): { block: Buffer; overflow: string[] } {
  const b = Buffer.alloc(BLOCK);
  const overflow: string[] = [];
  name.copy(b, 0, 0, Math.min(100, name.length));
  if (!putOctal(b, 100, 8, h.mode)) overflow.push('mode');
  if (!putOctal(b, 108, 8, h.uid)) overflow.push('uid');
  if (!putOctal(b, 116, 8, h.gid)) overflow.push('gid');
  if (!putOctal(b, 124, 12, h.size)) overflow.push('size');
  if (!putOctal(b, 136, 12, h.mtime)) overflow.push('mtime');
  b.write(h.type, 156, 'latin1');
  h.linkname.copy(b, 157, 0, Math.min(100, h.linkname.length));
  b.write('ustar\0', 257, 'latin1');
  b.write('00', 263, 'latin1');
  putOctal(b, 329, 8, h.devmajor);
  putOctal(b, 337, 8, h.devminor);
  b.fill(0x20, 148, 156);
  let sum = 0;
  for (const x of b) sum += x;
  b.write(sum.toString(8).padStart(6, '0') + '\0 ', 148, 'latin1');
  return { block: b, overflow };
}

/**
 * The bytes of one entry's header (a pax 'x' header first when a field does
 * not fit ustar or the entry has extended attributes). Deterministic: pax
 * records in a fixed order (path, linkpath, uid, gid, size, mtime, then
 * attributes by name).
 */
export function encodeHeader(h: TarHeader): Buffer {
  const name = Buffer.from(h.name, 'utf8');
  const link = Buffer.from(h.linkname, 'utf8');
  const { block, overflow } = ustar(name, { ...h, linkname: link });
  const records: Buffer[] = [];
  if (name.length > 100) records.push(paxRecord('path', name));
  if (link.length > 100) records.push(paxRecord('linkpath', link));
  for (const key of ['uid', 'gid', 'size', 'mtime'] as const) if (overflow.includes(key)) records.push(paxRecord(key, Buffer.from(String(h[key]))));
  for (const k of [...h.xattrs.keys()].sort()) records.push(paxRecord(`SCHILY.xattr.${k}`, h.xattrs.get(k)!));
  if (records.length === 0) return block;
  const data = Buffer.concat(records);
  const { block: x } = ustar(Buffer.from('././@PaxHeader'), {
    type: 'x' as TarHeader['type'],
    mode: 0o644,
    uid: 0,
    gid: 0,
    size: data.length,
    mtime: 0,
    devmajor: 0,
    devminor: 0,
    linkname: Buffer.alloc(0),
  });
  return Buffer.concat([x, data, Buffer.alloc((BLOCK - (data.length % BLOCK)) % BLOCK), block]);
}

/** The padding after a body of `size` bytes. */
export function padding(size: number): Buffer {
  return Buffer.alloc((BLOCK - (size % BLOCK)) % BLOCK);
}

/** The end of an archive: two zero blocks. */
export const TAR_END = Buffer.alloc(2 * BLOCK);
