import { createHash } from 'node:crypto';
import { open, type FileHandle } from 'node:fs/promises';
import { RoostError } from '../errors.js';

const PAGE = 4096;
const CHUNK = 1 << 20;
const ZERO_PAGE = Buffer.alloc(PAGE);

/** Where a VM's guest RAM can be read from while it is stopped. */
export type RamSource =
  /** A file: the memfd of a booted VM, opened through /proc/PID/fd (reading its holes allocates nothing). */
  | { kind: 'file'; path: string }
  /** QEMU's address space (/proc/PID/mem) at `start`: a restored VM, whose written pages are private copies. */
  | { kind: 'process'; pid: number; start: number };

/** What `saveRam` wrote. */
export interface SavedRam {
  /** The image's checksum (see `ramChecksum`). */
  checksum: string;
  /** Bytes of data written (the rest are holes). */
  dataBytes: number;
}

/**
 * A RAM image's checksum: SHA-256 over each page that is not all zeros, as
 * its offset (u64 BE) and its bytes. Cheaper than hashing the whole image
 * (an idle guest has touched a tenth of its RAM), and as strong.
 */
class RamHasher {
  readonly #hash = createHash('sha256');
  readonly #offset = Buffer.alloc(8);
  page(offset: number, page: Buffer): void {
    this.#offset.writeBigUInt64BE(BigInt(offset));
    this.#hash.update(this.#offset);
    this.#hash.update(page);
  }
  digest(): string {
    return this.#hash.digest('hex');
  }
}

/**
 * Copies a stopped VM's RAM to a sparse image at `dest` (pages of zeros
 * become holes: an idle 256 MiB guest costs what it has touched), computing
 * its checksum on the way. The VM must stay stopped until this resolves.
 */
export async function saveRam(source: RamSource, size: number, dest: string): Promise<SavedRam> {
  const path = source.kind === 'file' ? source.path : `/proc/${source.pid}/mem`;
  const base = source.kind === 'file' ? 0 : source.start;
  const input = await open(path, 'r').catch((e: NodeJS.ErrnoException) => {
    throw new RoostError('VMM', `cannot read the guest RAM (${path}): ${e.message}`, { cause: e });
  });
  const out = await open(dest, 'wx', 0o600);
  const hash = new RamHasher();
  let dataBytes = 0;
  try {
    const buf = Buffer.allocUnsafe(CHUNK);
    for (let off = 0; off < size; off += CHUNK) {
      const want = Math.min(CHUNK, size - off);
      await readAll(input, buf, want, base + off, path);
      // Write runs of non-zero pages; zero pages stay holes.
      let run = -1;
      for (let p = 0; p <= want; p += PAGE) {
        const page = p < want ? buf.subarray(p, p + PAGE) : null;
        const zero = !page || page.equals(ZERO_PAGE);
        if (!zero) hash.page(off + p, page);
        if (!zero && run < 0) run = p;
        if (zero && run >= 0) {
          await writeAll(out, buf, run, p - run, off + run);
          dataBytes += p - run;
          run = -1;
        }
      }
    }
    await out.truncate(size);
    await out.sync();
  } finally {
    await out.close();
    await input.close();
  }
  return { checksum: hash.digest(), dataBytes };
}

/** The checksum of a RAM image file (see RamHasher). */
export async function ramChecksum(path: string, signal?: AbortSignal): Promise<string> {
  const fh = await open(path, 'r');
  const hash = new RamHasher();
  try {
    const { size } = await fh.stat();
    const buf = Buffer.allocUnsafe(CHUNK);
    for (let off = 0; off < size; off += CHUNK) {
      signal?.throwIfAborted();
      const want = Math.min(CHUNK, size - off);
      await readAll(fh, buf, want, off, path);
      for (let p = 0; p < want; p += PAGE) {
        const page = buf.subarray(p, Math.min(p + PAGE, want));
        if (!page.equals(ZERO_PAGE.subarray(0, page.length))) hash.page(off + p, page);
      }
    }
    return hash.digest();
  } finally {
    await fh.close();
  }
}

async function readAll(fh: FileHandle, buf: Buffer, want: number, position: number, what: string): Promise<void> {
  let got = 0;
  while (got < want) {
    const { bytesRead } = await fh.read(buf, got, want - got, position + got);
    if (bytesRead === 0) throw new RoostError('VMM', `${what} ended early at byte ${position + got}`);
    got += bytesRead;
  }
}

async function writeAll(fh: FileHandle, buf: Buffer, offset: number, length: number, position: number): Promise<void> {
  while (length > 0) {
    const { bytesWritten } = await fh.write(buf, offset, length, position);
    offset += bytesWritten;
    length -= bytesWritten;
    position += bytesWritten;
  }
}

/** SHA-256 of a file, streamed. */
export async function hashFile(path: string, signal?: AbortSignal): Promise<string> {
  const fh = await open(path, 'r');
  try {
    const hash = createHash('sha256');
    const buf = Buffer.allocUnsafe(CHUNK);
    for (;;) {
      signal?.throwIfAborted();
      const { bytesRead } = await fh.read(buf, 0, CHUNK, null);
      if (bytesRead === 0) break;
      hash.update(buf.subarray(0, bytesRead));
    }
    return hash.digest('hex');
  } finally {
    await fh.close();
  }
}

/** Copies a file (a stopped VM's disk) to `dest`, which must not exist, hashing it on the way. */
export async function copyHashed(src: string, dest: string): Promise<{ size: number; sha256: string }> {
  const input = await open(src, 'r');
  const out = await open(dest, 'wx', 0o600);
  const hash = createHash('sha256');
  let size = 0;
  try {
    const buf = Buffer.allocUnsafe(CHUNK);
    for (;;) {
      const { bytesRead } = await input.read(buf, 0, CHUNK, null);
      if (bytesRead === 0) break;
      hash.update(buf.subarray(0, bytesRead));
      await writeAll(out, buf, 0, bytesRead, size);
      size += bytesRead;
    }
    await out.sync();
  } finally {
    await out.close();
    await input.close();
  }
  return { size, sha256: hash.digest('hex') };
}
