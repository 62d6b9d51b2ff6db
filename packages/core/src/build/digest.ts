/**
 * Content digests of context entries, for the build cache: what a COPY
 * reads, hashed so that the same content gives the same key anywhere.
 *
 * The digest covers, for each entry in sorted order (by target, then
 * path): its relative path (and target, for a COPY's entries), type,
 * permission bits, uid, gid, symlink target, and the sha256 of its
 * contents. It does NOT cover modification times, as BuildKit's content
 * checksums do not: touching a file, or checking it out afresh, keeps the
 * cache; changing a byte, a mode or an owner does not.
 *
 * File contents are streamed (a huge file is never in memory whole) and
 * their sha256 remembered in memory, keyed by (host path, size, mtime,
 * ctime, inode, device), so a second build in the same process reads
 * nothing again unless a file changed.
 */
import { createHash } from 'node:crypto';
import { abortError } from '../errors.js';
import { openEntry, readSmallEntrySync, SMALL_FILE_BYTES, type ContextEntry, type CopyEntry } from './context-entry.js';

/** Where a digest is, for progress reports. */
export interface DigestProgress {
  /** Files whose contents are accounted for so far (read or found in the cache). */
  files: number;
  /** Files to account for. */
  totalFiles: number;
  /** Bytes accounted for so far. */
  bytes: number;
  /** Bytes of all the files. */
  totalBytes: number;
  /** Files actually read so far (the rest came from the cache). */
  hashedFiles: number;
}

/** Options of {@link digestOf}. */
export interface DigestOptions {
  /** Called after each file (and once at the start and end). */
  onProgress?: (progress: DigestProgress) => void;
  /** Stops hashing (rejects with ABORTED). */
  signal?: AbortSignal;
  /** Large files (over 64 KiB) read at once (default 4); small ones are read in short synchronous slices. */
  concurrency?: number;
}

/** How many file hashes the in-memory cache keeps (a little over 100 bytes each). */
const CACHE_LIMIT = 500_000;
/** The longest the digest blocks the event loop reading small files before it yields. */
const SLICE_MS = 5;
const contentCache = new Map<string, string>();

function cacheKey(entry: ContextEntry): string {
  return `${entry.hostPath}\0${entry.size}\0${entry.mtimeMs}\0${entry.ctimeMs}\0${entry.ino}\0${entry.dev}`;
}

function remember(key: string, hash: string): void {
  if (contentCache.size >= CACHE_LIMIT) {
    // Drop the oldest tenth: Maps iterate in insertion order.
    let drop = Math.ceil(CACHE_LIMIT / 10);
    for (const old of contentCache.keys()) {
      contentCache.delete(old);
      if (--drop === 0) break;
    }
  }
  contentCache.set(key, hash);
}

/** Forgets every remembered file hash (tests; or to force reading everything again). */
export function clearDigestCache(): void {
  contentCache.clear();
}

/** The sha256 (hex) of a file entry's contents, from the cache when its stat is unchanged. */
export async function contentSha256(entry: ContextEntry): Promise<{ hash: string; cached: boolean }> {
  const key = cacheKey(entry);
  const known = contentCache.get(key);
  if (known !== undefined) return { hash: known, cached: true };
  const hash = createHash('sha256');
  for await (const chunk of openEntry(entry)) hash.update(chunk as Buffer);
  const hex = hash.digest('hex');
  remember(key, hex);
  return { hash: hex, cached: false };
}

function compareEntries(a: ContextEntry | CopyEntry, b: ContextEntry | CopyEntry): number {
  const ta = 'target' in a ? a.target : '';
  const tb = 'target' in b ? b.target : '';
  if (ta !== tb) return ta < tb ? -1 : 1;
  return a.path < b.path ? -1 : a.path > b.path ? 1 : 0;
}

/**
 * The digest (`sha256:<hex>`) of a set of context entries (a listing, or
 * what a COPY's sources resolved to). Independent of the order given and
 * of modification times; see the module's notes for what it covers.
 */
export async function digestOf(entries: readonly (ContextEntry | CopyEntry)[], options: DigestOptions = {}): Promise<string> {
  const { signal, onProgress } = options;
  const sorted = [...entries].sort(compareEntries);
  const files = sorted.filter((e) => e.type === 'file');
  const progress: DigestProgress = { files: 0, totalFiles: files.length, bytes: 0, totalBytes: files.reduce((n, e) => n + e.size, 0), hashedFiles: 0 };
  onProgress?.({ ...progress });

  const hashes = new Map<ContextEntry, string>();
  const account = (entry: ContextEntry, hash: string, cached: boolean): void => {
    hashes.set(entry, hash);
    progress.files++;
    progress.bytes += entry.size;
    if (!cached) progress.hashedFiles++;
    onProgress?.({ ...progress });
  };

  // Small files: read whole and synchronously, in slices of at most a few
  // milliseconds between yields to the event loop (four times faster than
  // a thread-pool round trip per open, fstat, read and close).
  const small = files.filter((e) => e.size <= SMALL_FILE_BYTES);
  for (let i = 0; i < small.length;) {
    if (signal?.aborted) throw abortError(signal, 'hashing the build context');
    const sliceEnd = performance.now() + SLICE_MS;
    do {
      const entry = small[i++] as ContextEntry;
      const key = cacheKey(entry);
      const known = contentCache.get(key);
      if (known !== undefined) account(entry, known, true);
      else {
        const hash = createHash('sha256').update(readSmallEntrySync(entry)).digest('hex');
        remember(key, hash);
        account(entry, hash, false);
      }
    } while (i < small.length && performance.now() < sliceEnd);
    await new Promise<void>((resolve) => setImmediate(resolve));
  }

  // Larger files: streamed, a few at once.
  const large = files.filter((e) => e.size > SMALL_FILE_BYTES);
  let next = 0;
  const worker = async (): Promise<void> => {
    while (next < large.length) {
      if (signal?.aborted) throw abortError(signal, 'hashing the build context');
      const entry = large[next++] as ContextEntry;
      const { hash, cached } = await contentSha256(entry);
      account(entry, hash, cached);
    }
  };
  await Promise.all(Array.from({ length: Math.max(1, Math.min(options.concurrency ?? 4, large.length)) }, worker));

  const digest = createHash('sha256');
  for (const entry of sorted) {
    const target = 'target' in entry ? entry.target : null;
    const record = [entry.path, target, entry.type, entry.mode, entry.uid, entry.gid, entry.linkTarget, hashes.get(entry) ?? null];
    digest.update(JSON.stringify(record) + '\n');
  }
  return `sha256:${digest.digest('hex')}`;
}
