import { createHash, randomBytes } from 'node:crypto';
import { constants as fsc } from 'node:fs';
import { mkdir, open, readdir, rename, rm, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { abortError, RoostError, throwIfDiskFull } from '../errors.js';
import { isAlive } from '../proc.js';

const DIGEST_RE = /^(sha256):([0-9a-f]{64})$|^(sha512):([0-9a-f]{128})$/;

/** Splits and validates a digest; anything else (another algorithm, a path) is INVALID_ARGUMENT. */
export function parseDigest(digest: string): { algorithm: 'sha256' | 'sha512'; hex: string } {
  const m = DIGEST_RE.exec(digest);
  if (!m) throw new RoostError('INVALID_ARGUMENT', `"${digest}" is not a supported digest (sha256:<64 hex> or sha512:<128 hex>)`);
  return m[1] ? { algorithm: 'sha256', hex: m[2]! } : { algorithm: 'sha512', hex: m[4]! };
}

/** Blob bytes are written to disk in batches of about this size. */
const WRITE_BATCH = 1 << 20;

export interface PutOptions {
  signal?: AbortSignal;
  /** Called with the bytes received so far, as they arrive. */
  onProgress?: (bytes: number) => void;
}

/**
 * Blobs stored by digest under one directory (`<dir>/sha256/<hex>`). A blob
 * is streamed to a temp file, hashed and counted as it arrives, and renamed
 * into place only once its digest and size are verified: a reader never sees
 * a partial or wrong blob, and a failed download leaves nothing behind.
 * Concurrent puts of one digest are safe (the rename of equal bytes wins).
 */
export class BlobStore {
  constructor(readonly dir: string) {}

  /** Where a blob lives (whether or not it is there). */
  path(digest: string): string {
    const { algorithm, hex } = parseDigest(digest);
    return join(this.dir, algorithm, hex);
  }

  /** True when the blob is stored (its size matching `size`, when given). */
  async has(digest: string, size?: number): Promise<boolean> {
    const st = await stat(this.path(digest)).catch(() => null);
    return !!st && st.isFile() && (size === undefined || st.size === size);
  }

  /**
   * Stores a blob from a stream, verifying `size` and `digest`. A stream that
   * runs past `size` is cut off at once (a registry that lies about sizes, or
   * never stops); one that ends short, or whose hash differs, is refused.
   * Returns the blob's path. Errors are IMAGE, ABORTED or TIMEOUT.
   */
  async put(digest: string, size: number, source: AsyncIterable<Uint8Array>, options: PutOptions = {}): Promise<string> {
    const { algorithm } = parseDigest(digest);
    if (!Number.isSafeInteger(size) || size < 0) throw new RoostError('INVALID_ARGUMENT', `blob size ${size} is not a byte count`);
    const final = this.path(digest);
    await mkdir(join(this.dir, algorithm), { recursive: true, mode: 0o700 });
    const tmp = join(this.dir, algorithm, `.tmp-${process.pid}-${randomBytes(6).toString('hex')}`);
    const hash = createHash(algorithm);
    let received = 0;
    const fh = await open(tmp, fsc.O_WRONLY | fsc.O_CREAT | fsc.O_EXCL, 0o600);
    let writing: Promise<unknown> = Promise.resolve();
    try {
      try {
        // Chunks are gathered into ~1 MiB writes, and one write is in flight
        // while the next batch arrives: the download never waits on the disk
        // chunk by chunk.
        let batch: Uint8Array[] = [];
        let batchBytes = 0;
        for await (const chunk of source) {
          if (options.signal?.aborted) throw abortError(options.signal, `downloading ${digest}`);
          received += chunk.length;
          if (received > size) throw new RoostError('IMAGE', `blob ${digest} is larger than the ${size} bytes its descriptor declares; refused`);
          hash.update(chunk);
          batch.push(chunk);
          batchBytes += chunk.length;
          if (batchBytes >= WRITE_BATCH) {
            await writing;
            writing = fh.writev(batch);
            writing.catch(() => {}); // awaited below; a failure must not go unhandled if the loop throws first
            batch = [];
            batchBytes = 0;
          }
          options.onProgress?.(received);
        }
        await writing;
        if (batch.length > 0) await fh.writev(batch);
        if (options.signal?.aborted) throw abortError(options.signal, `downloading ${digest}`);
        await fh.sync();
      } finally {
        await writing.catch(() => {});
        await fh.close();
      }
      if (received !== size) throw new RoostError('IMAGE', `blob ${digest} ended after ${received} of ${size} bytes (truncated); refused`);
      const actual = `${algorithm}:${hash.digest('hex')}`;
      if (actual !== digest) throw new RoostError('IMAGE', `blob ${digest} arrived with digest ${actual} (corrupt or tampered); refused`);
      await rename(tmp, final);
      return final;
    } catch (e) {
      await rm(tmp, { force: true });
      if (e instanceof RoostError) throw e;
      const err = e as NodeJS.ErrnoException;
      throwIfDiskFull(e, this.dir);
      throw new RoostError('IMAGE', `storing blob ${digest} failed: ${err.message}`, { cause: e });
    }
  }

  /** Removes a blob (no error if it is not there). */
  async remove(digest: string): Promise<void> {
    await rm(this.path(digest), { force: true });
  }

  /** Every stored digest. Temp files of downloads in progress are not blobs. */
  async list(): Promise<string[]> {
    const out: string[] = [];
    for (const algorithm of ['sha256', 'sha512']) {
      for (const name of await readdir(join(this.dir, algorithm)).catch(() => [] as string[])) {
        const digest = `${algorithm}:${name}`;
        if (DIGEST_RE.test(digest)) out.push(digest);
      }
    }
    return out;
  }

  /** Removes temp files left by downloads that died with their process. */
  async sweepTemp(): Promise<number> {
    let n = 0;
    for (const algorithm of ['sha256', 'sha512']) {
      for (const name of await readdir(join(this.dir, algorithm)).catch(() => [] as string[])) {
        const m = /^\.tmp-(\d+)-/.exec(name);
        if (!m || isAlive(Number(m[1]))) continue;
        await rm(join(this.dir, algorithm, name), { force: true });
        n++;
      }
    }
    return n;
  }
}
