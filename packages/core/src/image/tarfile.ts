import { constants as fsc, createReadStream } from 'node:fs';
import { open, type FileHandle } from 'node:fs/promises';
import { Readable } from 'node:stream';
import { abortError, RoostError } from '../errors.js';

const BLOCK = 512;
/** Entries scanned before an archive is refused: the index lives in memory. */
const MAX_TAR_ENTRIES = 100_000;
/** Upper bound on a PAX header or GNU long name; real ones are a few hundred bytes. */
const MAX_META_BYTES = 1 << 20;
/** Symlink hops followed by {@link TarIndex.fileFollowing}. */
const MAX_HOPS = 8;
/** Headers are read this much at a time, so archives of many small entries cost few reads. */
const READ_AHEAD = 64 * 1024;

/** Where one regular file's bytes are inside a tar. */
export interface TarEntry {
  offset: number;
  size: number;
}

/**
 * Splits a name from an archive into clean components: `./` and empty
 * components dropped. Absolute names and names with `..` or NUL give
 * undefined: such entries do not exist as far as Roost is concerned.
 */
export function normalizeEntryName(name: string): string | undefined {
  if (name.startsWith('/') || name.includes('\0')) return undefined;
  const comps: string[] = [];
  for (const c of name.split('/')) {
    if (c === '' || c === '.') continue;
    if (c === '..') return undefined;
    comps.push(c);
  }
  return comps.length > 0 ? comps.join('/') : undefined;
}

/**
 * An index of a tar file built by reading its headers once, without
 * extracting anything: regular files by name with the byte range of their
 * data. Entries are then read in place. Entries named outside the archive
 * (`..`, absolute paths) are skipped; symlinks are recorded but only
 * {@link fileFollowing} follows them, and only to other entries. Headers are
 * checked (checksum, sizes within the file), so a corrupt or truncated
 * archive is an IMAGE error at open. The archive is hostile: at most
 * {@link MAX_TAR_ENTRIES} entries are scanned.
 */
export class TarIndex {
  private constructor(
    /** The tar file. */
    readonly path: string,
    private readonly files: Map<string, TarEntry>,
    private readonly symlinks: Map<string, string>,
  ) {}

  /** Indexes the tar at `path`. `what` names it in errors. */
  static async open(path: string, what: string = path): Promise<TarIndex> {
    const fh = await open(path, fsc.O_RDONLY);
    try {
      const size = (await fh.stat()).size;
      const reader = new BlockReader(fh, size, what);
      const files = new Map<string, TarEntry>();
      const symlinks = new Map<string, string>();
      if (size >= 2) {
        const magic = await reader.read(0, 2);
        if (magic[0] === 0x1f && magic[1] === 0x8b) throw new RoostError('IMAGE', `${what} is gzip-compressed: decompress it first (gunzip)`);
      }
      let pos = 0;
      let entries = 0;
      let pending: { path?: string; linkpath?: string; size?: number } = {};
      for (;;) {
        if (pos >= size) throw new RoostError('IMAGE', `${what} is truncated: it ends without an end-of-archive marker`);
        const h = await reader.read(pos, BLOCK);
        if (h.every((b) => b === 0)) break; // end-of-archive marker
        checkChecksum(h, pos, what);
        if (++entries > MAX_TAR_ENTRIES) throw new RoostError('IMAGE', `${what} has more than ${MAX_TAR_ENTRIES} entries; refused`);
        const type = h[156] === 0 ? '0' : String.fromCharCode(h[156]!);
        const isMeta = type === 'x' || type === 'g' || type === 'L' || type === 'K';
        const dataSize = isMeta ? parseNumber(h, 124, 12, pos, what) : (pending.size ?? parseNumber(h, 124, 12, pos, what));
        const data = pos + BLOCK;
        const next = data + Math.ceil(dataSize / BLOCK) * BLOCK;
        if (next > size) throw new RoostError('IMAGE', `${what} is truncated: an entry at byte ${pos} runs past the end of the file`);
        pos = next;
        if (isMeta) {
          if (type === 'g') continue;
          if (dataSize > MAX_META_BYTES) throw new RoostError('IMAGE', `${what} has a ${dataSize}-byte extended header; refused`);
          const body = await reader.read(data, dataSize);
          if (type === 'x') pending = { ...pending, ...parsePax(body, what) };
          else if (type === 'L') pending.path = cString(body, 0, body.length);
          else pending.linkpath = cString(body, 0, body.length);
          continue;
        }
        const rawName = pending.path ?? headerName(h);
        const linkname = pending.linkpath ?? cString(h, 157, 100);
        pending = {};
        const name = normalizeEntryName(rawName);
        if (name === undefined) continue;
        files.delete(name);
        symlinks.delete(name);
        if (type === '0' || type === '7') {
          files.set(name, { offset: data, size: dataSize });
        } else if (type === '1') {
          const target = normalizeEntryName(linkname);
          const entry = target === undefined ? undefined : files.get(target);
          if (entry) files.set(name, entry);
        } else if (type === '2') {
          symlinks.set(name, linkname);
        }
      }
      return new TarIndex(path, files, symlinks);
    } finally {
      await fh.close();
    }
  }

  /** A regular file (or a hard link to one) by name; never follows symlinks. */
  file(name: string): TarEntry | undefined {
    const n = normalizeEntryName(name);
    return n === undefined ? undefined : this.files.get(n);
  }

  /**
   * Like {@link file}, but follows symlinks whose relative targets stay
   * inside the archive (`docker save` links duplicate layers to the first
   * copy). Absolute targets and targets climbing out give undefined.
   */
  fileFollowing(name: string): TarEntry | undefined {
    let current = normalizeEntryName(name);
    for (let hops = 0; current !== undefined && hops <= MAX_HOPS; hops++) {
      const entry = this.files.get(current);
      if (entry) return entry;
      const target = this.symlinks.get(current);
      if (target === undefined || target.startsWith('/')) return undefined;
      current = joinInside(current.split('/').slice(0, -1), target);
    }
    return undefined;
  }

  /** Reads an entry whole (the caller bounds its size). */
  async read(entry: TarEntry): Promise<Buffer> {
    const fh = await open(this.path, fsc.O_RDONLY);
    try {
      const buf = Buffer.alloc(entry.size);
      const { bytesRead } = await fh.read(buf, 0, entry.size, entry.offset);
      if (bytesRead !== entry.size) throw new RoostError('IMAGE', `${this.path} changed while it was read (an entry ends early)`);
      return buf;
    } finally {
      await fh.close();
    }
  }

  /** Streams an entry's bytes from the archive. */
  stream(entry: TarEntry, signal?: AbortSignal): Readable {
    if (entry.size === 0) return Readable.from([]);
    return createReadStream(this.path, { start: entry.offset, end: entry.offset + entry.size - 1, highWaterMark: 1 << 20, ...(signal ? { signal } : {}) });
  }
}

/** Resolves a relative symlink target against the link's directory; undefined when it climbs out. */
function joinInside(dir: string[], target: string): string | undefined {
  const stack = [...dir];
  for (const c of target.split('/')) {
    if (c === '' || c === '.') continue;
    if (c === '..') {
      if (stack.length === 0) return undefined;
      stack.pop();
    } else {
      stack.push(c);
    }
  }
  return stack.length > 0 ? stack.join('/') : undefined;
}

/** Reads header-sized pieces through a read-ahead window. */
class BlockReader {
  private buf = Buffer.alloc(0);
  private start = 0;

  constructor(
    private readonly fh: FileHandle,
    private readonly size: number,
    private readonly what: string,
  ) {}

  async read(pos: number, length: number): Promise<Buffer> {
    if (pos < this.start || pos + length > this.start + this.buf.length) {
      const want = Math.min(Math.max(length, READ_AHEAD), this.size - pos);
      if (want < length) throw new RoostError('IMAGE', `${this.what} is truncated at byte ${this.size}`);
      const buf = Buffer.alloc(want);
      const { bytesRead } = await this.fh.read(buf, 0, want, pos);
      if (bytesRead < length) throw new RoostError('IMAGE', `${this.what} is truncated at byte ${pos + bytesRead}`);
      this.buf = buf.subarray(0, bytesRead);
      this.start = pos;
    }
    return this.buf.subarray(pos - this.start, pos - this.start + length);
  }
}

function cString(buf: Buffer, offset: number, length: number): string {
  const field = buf.subarray(offset, offset + length);
  const nul = field.indexOf(0);
  return field.subarray(0, nul < 0 ? field.length : nul).toString('utf8');
}

/** The entry name, with the POSIX ustar prefix (GNU tar uses that space for other things). */
function headerName(h: Buffer): string {
  const name = cString(h, 0, 100);
  const posix = h.subarray(257, 263).equals(Buffer.from('ustar\0', 'latin1'));
  const prefix = posix ? cString(h, 345, 155) : '';
  return prefix ? `${prefix}/${name}` : name;
}

/** A numeric field: octal text, or GNU base-256 when the high bit is set. */
function parseNumber(h: Buffer, offset: number, length: number, pos: number, what: string): number {
  const field = h.subarray(offset, offset + length);
  let n: number;
  if (field[0]! & 0x80) {
    if (field[0] !== 0x80) throw new RoostError('IMAGE', `${what} has a negative size at byte ${pos}`);
    n = 0;
    for (const b of field.subarray(1)) n = n * 256 + b;
  } else {
    const text = field
      .toString('latin1')
      .replace(/[\0 ]+$/, '')
      .trim();
    if (!/^[0-7]*$/.test(text)) throw new RoostError('IMAGE', `${what} has a malformed header at byte ${pos}`);
    n = text === '' ? 0 : parseInt(text, 8);
  }
  if (!Number.isSafeInteger(n)) throw new RoostError('IMAGE', `${what} has an impossible size at byte ${pos}`);
  return n;
}

function checkChecksum(h: Buffer, pos: number, what: string): void {
  const stored = parseNumber(h, 148, 8, pos, what);
  let unsigned = 0;
  let signed = 0;
  for (let i = 0; i < BLOCK; i++) {
    const b = i >= 148 && i < 156 ? 0x20 : h[i]!;
    unsigned += b;
    signed += b > 127 ? b - 256 : b;
  }
  if (stored !== unsigned && stored !== signed)
    throw new RoostError('IMAGE', `${what} is not a tar archive, or is corrupt (bad header checksum at byte ${pos})`);
}

/** The PAX records Roost needs: `path`, `linkpath`, `size`. */
function parsePax(body: Buffer, what: string): { path?: string; linkpath?: string; size?: number } {
  const out: { path?: string; linkpath?: string; size?: number } = {};
  let i = 0;
  while (i < body.length && body[i] !== 0) {
    const space = body.indexOf(0x20, i);
    const len = space < 0 ? NaN : Number(body.subarray(i, space).toString('latin1'));
    if (!Number.isSafeInteger(len) || len <= space - i || i + len > body.length) throw new RoostError('IMAGE', `${what} has a malformed PAX header`);
    const record = body.subarray(space + 1, i + len - 1).toString('utf8');
    const eq = record.indexOf('=');
    const key = record.slice(0, eq);
    const value = record.slice(eq + 1);
    if (key === 'path') out.path = value;
    else if (key === 'linkpath') out.linkpath = value;
    else if (key === 'size') {
      if (!/^[0-9]+$/.test(value) || !Number.isSafeInteger(Number(value))) throw new RoostError('IMAGE', `${what} has a malformed PAX size`);
      out.size = Number(value);
    }
    i += len;
  }
  return out;
}

/**
 * Writes a tar file entry by entry. Each entry's header is written after its
 * data, at the place reserved for it, so data of unknown length (a layer
 * being decompressed) streams straight into the archive in one pass. Names
 * are short ASCII paths Roost makes; times and owners are zero, so equal
 * content gives equal archives.
 */
export class TarWriter {
  private pos = 0;

  private constructor(private readonly fh: FileHandle) {}

  /** Creates `path`, which must not exist. */
  static async create(path: string): Promise<TarWriter> {
    return new TarWriter(await open(path, fsc.O_WRONLY | fsc.O_CREAT | fsc.O_EXCL, 0o644));
  }

  /** Appends a regular file; returns its size. */
  async add(name: string, data: Iterable<Uint8Array> | AsyncIterable<Uint8Array>, signal?: AbortSignal): Promise<number> {
    const headerAt = this.pos;
    this.pos += BLOCK;
    let size = 0;
    for await (const chunk of data) {
      if (signal?.aborted) throw abortError(signal, `writing ${name}`);
      await this.write(chunk);
      size += chunk.length;
    }
    const pad = (BLOCK - (size % BLOCK)) % BLOCK;
    if (pad) await this.write(Buffer.alloc(pad));
    await this.writeAt(ustarHeader(name, size), headerAt);
    return size;
  }

  /** Writes the end-of-archive marker, syncs and closes. */
  async finish(): Promise<void> {
    await this.write(Buffer.alloc(2 * BLOCK));
    await this.fh.sync();
    await this.fh.close();
  }

  /** Closes without finishing (the caller removes the file). */
  async discard(): Promise<void> {
    await this.fh.close().catch(() => {});
  }

  private async write(buf: Uint8Array): Promise<void> {
    await this.writeAt(buf, this.pos);
    this.pos += buf.length;
  }

  private async writeAt(buf: Uint8Array, position: number): Promise<void> {
    let done = 0;
    while (done < buf.length) {
      const { bytesWritten } = await this.fh.write(buf, done, buf.length - done, position + done);
      done += bytesWritten;
    }
  }
}

function ustarHeader(name: string, size: number): Buffer {
  const h = Buffer.alloc(BLOCK);
  if (Buffer.byteLength(name) > 100) throw new RoostError('INTERNAL', `tar entry name ${name} is too long`);
  h.write(name, 0, 'utf8');
  h.write('0000644\0', 100, 'latin1'); // mode
  h.write('0000000\0', 108, 'latin1'); // uid
  h.write('0000000\0', 116, 'latin1'); // gid
  if (size < 8 ** 11) {
    h.write(size.toString(8).padStart(11, '0') + '\0', 124, 'latin1');
  } else {
    // GNU base-256 for entries of 8 GiB and more (Go's archive/tar, GNU tar and Docker read it).
    h[124] = 0x80;
    let n = size;
    for (let i = 135; i > 124; i--) {
      h[i] = n % 256;
      n = Math.floor(n / 256);
    }
  }
  h.write('00000000000\0', 136, 'latin1'); // mtime
  h.write('0', 156, 'latin1'); // regular file
  h.write('ustar\0', 257, 'latin1');
  h.write('00', 263, 'latin1');
  h.fill(0x20, 148, 156);
  let sum = 0;
  for (const b of h) sum += b;
  h.write(sum.toString(8).padStart(6, '0') + '\0 ', 148, 'latin1');
  return h;
}
