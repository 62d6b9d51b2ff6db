/**
 * Listing a build context: every file, directory and symlink under the
 * root (symlinks recorded, never followed, so a symlink loop cannot make
 * the walk go round), minus what `.dockerignore` excludes, in sorted path
 * order (a directory's entries right after it, names compared by UTF-16
 * code unit).
 */
import { lstatSync, readdirSync, readlinkSync, type Stats } from 'node:fs';
import { join } from 'node:path';
import { abortError, RoostError } from '../errors.js';
import { entryType, makeEntry, type ContextEntry } from './context-entry.js';
import type { IgnoreMatcher, ParentMatches } from './dockerignore.js';

/** What listing a context found. */
export interface ContextListing {
  /** Included entries, sorted; an ignored directory appears only when something inside it is included again (`!` exceptions). */
  entries: ContextEntry[];
  /** Paths of sockets, FIFOs and device nodes that were not ignored but cannot be part of a context (not listed). */
  skipped: string[];
}

/**
 * The longest the listing blocks the event loop before it yields. The
 * listing makes synchronous calls in slices: a thread-pool round trip per
 * lstat is several times slower on contexts of many small files.
 */
const SLICE_MS = 5;

/** A clock that tells when to yield to the event loop. */
class Slicer {
  private sliceEnd = performance.now() + SLICE_MS;
  constructor(private readonly signal: AbortSignal | undefined) {}
  async maybeYield(): Promise<void> {
    if (performance.now() < this.sliceEnd) return;
    await new Promise<void>((resolve) => setImmediate(resolve));
    if (this.signal?.aborted) throw abortError(this.signal, 'listing the build context');
    this.sliceEnd = performance.now() + SLICE_MS;
  }
}

function unreadable(path: string, err: unknown): RoostError {
  const code = (err as NodeJS.ErrnoException).code;
  const what = path === '' ? 'the context directory' : path;
  if (code === 'EACCES' || code === 'EPERM') {
    return new RoostError(
      'PERMISSION_DENIED',
      `cannot read ${what} in the build context: permission denied (add it to .dockerignore if the build does not need it)`,
      {
        details: { path },
        cause: err,
      },
    );
  }
  return new RoostError('INVALID_STATE', `cannot read ${what} in the build context: ${(err as Error).message}`, { details: { path }, cause: err });
}

/**
 * Lists the context under `root` (a real, absolute directory path).
 * `matcher` is the `.dockerignore` (null: nothing ignored). An ignored
 * directory is not entered unless an exception could include something
 * in it again; an unreadable ignored directory is passed over, an
 * unreadable included one is an error.
 */
export async function listContext(root: string, matcher: IgnoreMatcher | null, signal?: AbortSignal): Promise<ContextListing> {
  const entries: ContextEntry[] = [];
  const skipped: string[] = [];
  const slicer = new Slicer(signal);

  const visit = async (dir: string, hostDir: string, parent: ParentMatches | undefined, dirIgnored: boolean): Promise<void> => {
    if (signal?.aborted) throw abortError(signal, 'listing the build context');
    let names: string[];
    try {
      names = readdirSync(hostDir);
    } catch (err) {
      if (dirIgnored) return;
      throw unreadable(dir, err);
    }
    names.sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
    const stats: (Stats | null)[] = [];
    for (const name of names) {
      await slicer.maybeYield();
      try {
        stats.push(lstatSync(join(hostDir, name)));
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw unreadable(dir === '' ? name : `${dir}/${name}`, err);
        stats.push(null); // removed while listing
      }
    }
    for (let i = 0; i < names.length; i++) {
      const st = stats[i];
      if (!st) continue;
      const name = names[i] as string;
      const path = dir === '' ? name : `${dir}/${name}`;
      const hostPath = join(hostDir, name);
      const match = matcher ? matcher.match(path, parent) : { ignored: false, info: [] as boolean[] };
      const type = entryType(st);
      if (type === null) {
        if (!match.ignored) skipped.push(path);
        continue;
      }
      if (type === 'directory') {
        if (match.ignored && !(matcher as IgnoreMatcher).mayIncludeUnder(path)) continue;
        const at = entries.length;
        entries.push(makeEntry(path, hostPath, st, 'directory', null));
        await visit(path, hostPath, matcher ? match.info : undefined, match.ignored);
        // An ignored directory stays only as the parent of something included again.
        if (match.ignored && entries.length === at + 1) entries.pop();
        continue;
      }
      if (match.ignored) continue;
      let linkTarget: string | null = null;
      if (type === 'symlink') {
        try {
          linkTarget = readlinkSync(hostPath);
        } catch (err) {
          throw unreadable(path, err);
        }
      }
      entries.push(makeEntry(path, hostPath, st, type, linkTarget));
    }
  };

  await visit('', root, undefined, false);
  return { entries, skipped };
}
