import {
  chmodSync,
  closeSync,
  constants as fsc,
  fchmodSync,
  fchownSync,
  futimesSync,
  lchownSync,
  linkSync,
  lstatSync,
  lutimesSync,
  mkdirSync,
  openSync,
  readdirSync,
  readlinkSync,
  rmSync,
  symlinkSync,
  unlinkSync,
  utimesSync,
  writevSync,
} from 'node:fs';
import { join, relative } from 'node:path';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import * as tar from 'tar-stream';
import { RoostError, throwIfDiskFull } from '../errors.js';

/** What applying one layer did. */
export interface LayerStats {
  entries: number;
  files: number;
  bytes: number;
  whiteouts: number;
  /** Entries not created, and why (device nodes, FIFOs). */
  skipped: { path: string; reason: string }[];
  /**
   * Extended attributes from PAX headers, for the root filesystem builder to
   * apply: `path` is where the entry landed, relative to the root.
   */
  xattrs: { path: string; name: string; value: Buffer }[];
}

export interface ApplyLayerOptions {
  /** Names the layer in errors (its digest, say). */
  layer?: string;
  /** Set owners from the layer (default: when running as root). */
  chown?: boolean;
  /**
   * A plain archive, not an image layer (a build context sent to the
   * daemon): `.wh.` names are ordinary files, nothing is replaced (a name
   * that comes twice is refused, but for a directory), an entry below a
   * symlink is refused rather than resolved inside the root, device nodes
   * and FIFOs are refused, and failures are INVALID_ARGUMENT naming
   * `layer` (default "archive") rather than IMAGE.
   */
  plain?: boolean;
  signal?: AbortSignal;
}

const WHITEOUT_PREFIX = '.wh.';
const OPAQUE = '.wh..wh..opq';
/** File content is written in batches of about this many bytes. */
const WRITE_BATCH = 1 << 20;
/** Symlink hops allowed while resolving one path, as the kernel's ELOOP limit. */
const MAX_HOPS = 40;

/**
 * Applies one image layer (an uncompressed tar stream) onto `root`, as
 * container runtimes do: whiteouts (`.wh.NAME`) delete what lower layers
 * made, an opaque marker (`.wh..wh..opq`) empties a directory of them, and
 * entries replace what is there.
 *
 * The layer is hostile. Names with `..` components or an absolute path fail
 * the layer; parent directories are resolved inside `root` (a symlink
 * pointing at `/etc` means `root/etc`, `..` stops at `root`), and an entry's
 * own name is never followed: a symlink already there is replaced. Hard links
 * must point at something inside the root. Device nodes and FIFOs are not
 * created. Any failure is an IMAGE error; the caller discards `root`.
 *
 * File system calls are synchronous on purpose: each takes microseconds, and
 * a thread-pool round trip per call (about eight per file) made extracting a
 * Debian image 40% slower here. The event loop still turns between entries.
 */
export async function applyLayer(root: string, source: AsyncIterable<Uint8Array> | Readable, options: ApplyLayerOptions = {}): Promise<LayerStats> {
  const plain = options.plain ?? false;
  const what: Subject = plain
    ? { name: options.layer ?? 'archive', noun: 'archive', code: 'INVALID_ARGUMENT' }
    : { name: options.layer ? `layer ${options.layer}` : 'layer', noun: 'layer', code: 'IMAGE' };
  const chownEntries = options.chown ?? process.getuid?.() === 0;
  const stats: LayerStats = { entries: 0, files: 0, bytes: 0, whiteouts: 0, skipped: [], xattrs: [] };
  const createdHere = new Set<string>();
  // Resolved parent directories by entry path: most entries share a parent.
  // Emptied whenever a directory or symlink is removed, the only way a
  // resolution can change (a new symlink only takes a name that was free).
  const parents = new Map<string, string>();
  const clear = (path: string) => {
    if (removeEntry(path)) parents.clear();
  };
  const dirTimes: { path: string; mtime: Date; mode?: number }[] = [];
  const extract = tar.extract();
  const feeding = pipeline(source instanceof Readable ? source : Readable.from(source), extract, options.signal ? { signal: options.signal } : {});
  // A source that ends early or fails must end the entry being read, or its
  // reader waits for bytes that never come (a truncated blob would hang).
  let current: { destroy(err?: Error): void } | null = null;
  feeding.catch((e: unknown) => {
    const err = e instanceof Error ? e : new Error(String(e));
    current?.destroy(err);
    extract.destroy(err);
  });

  try {
    for await (const entry of extract) {
      current = entry;
      const h = entry.header;
      stats.entries++;
      const comps = cleanPath(h.name, what);
      if (comps.length === 0) {
        entry.resume();
        continue; // the root itself ("./")
      }
      const base = comps[comps.length - 1]!;
      const parent = resolveParent(root, comps.slice(0, -1), what, h.name, parents, plain);
      const target = join(parent, base);
      if (plain) {
        // Nothing is replaced in a plain archive: a name that comes again (but a directory's) is refused.
        const existing = lstatOrNull(target);
        if (existing && !(existing.isDirectory() && h.type === 'directory')) throw bad(what, h.name, 'comes twice, or over what an entry before it made');
      } else if (base === OPAQUE) {
        stats.whiteouts++;
        for (const child of readdirSync(parent)) {
          const p = join(parent, child);
          if (!createdHere.has(p)) rmSync(p, { recursive: true, force: true });
          parents.clear();
        }
        entry.resume();
        continue;
      } else if (base.startsWith(WHITEOUT_PREFIX)) {
        stats.whiteouts++;
        const victim = base.slice(WHITEOUT_PREFIX.length);
        if (victim === '' || victim === '.' || victim === '..') throw bad(what, h.name, 'is a whiteout of nothing');
        rmSync(join(parent, victim), { recursive: true, force: true });
        parents.clear();
        entry.resume();
        continue;
      }

      const mode = (h.mode ?? 0o644) & 0o7777;
      switch (h.type) {
        case 'file':
        case 'contiguous-file':
        case undefined:
        case null: {
          clear(target);
          // O_EXCL | O_NOFOLLOW: a name that appeared meanwhile, or a symlink, is never written through.
          const fd = openSync(target, fsc.O_WRONLY | fsc.O_CREAT | fsc.O_EXCL | fsc.O_NOFOLLOW, 0o600);
          try {
            // Iterated, not piped: the entry is a streamx stream, and iteration is
            // what reliably surfaces its errors (a truncated blob) here. Small
            // chunks are gathered so most files take one write.
            let pending: Buffer[] = [];
            let pendingBytes = 0;
            for await (const chunk of entry as AsyncIterable<Buffer>) {
              pending.push(chunk);
              pendingBytes += chunk.length;
              if (pendingBytes >= WRITE_BATCH) {
                writevSync(fd, pending);
                pending = [];
                pendingBytes = 0;
              }
            }
            if (pendingBytes > 0) writevSync(fd, pending);
            // Metadata through the descriptor: no path lookups, nothing followed.
            if (chownEntries) fchownSync(fd, h.uid ?? 0, h.gid ?? 0);
            fchmodSync(fd, mode); // after chown: chown clears setuid bits
            const mtime = h.mtime ?? new Date(0);
            futimesSync(fd, mtime, mtime);
          } finally {
            closeSync(fd);
          }
          stats.files++;
          stats.bytes += h.size ?? 0;
          createdHere.add(target);
          collectXattrs(h, relative(root, target), stats);
          continue;
        }
        case 'directory': {
          const existing = lstatOrNull(target);
          if (existing && !existing.isDirectory()) clear(target);
          if (!existing || !existing.isDirectory()) mkdirSync(target, { mode: 0o700 });
          entry.resume();
          break;
        }
        case 'symlink': {
          if (!h.linkname) throw bad(what, h.name, 'is a symlink without a target');
          clear(target);
          // The link's text is stored as is: it is never followed while extracting.
          symlinkSync(h.linkname, target);
          entry.resume();
          break;
        }
        case 'link': {
          if (!h.linkname) throw bad(what, h.name, 'is a hard link without a target');
          const linkComps = cleanPath(h.linkname, what);
          if (linkComps.length === 0) throw bad(what, h.name, 'is a hard link to the root');
          const source = join(resolveParent(root, linkComps.slice(0, -1), what, h.linkname, parents, plain), linkComps[linkComps.length - 1]!);
          const st = lstatOrNull(source);
          if (!st) throw bad(what, h.name, `links to ${h.linkname}, which the ${what.noun === 'layer' ? 'image' : 'archive'} does not contain`);
          if (st.isDirectory()) throw bad(what, h.name, `is a hard link to the directory ${h.linkname}`);
          if (source === target) {
            entry.resume();
            break;
          }
          clear(target);
          linkSync(source, target); // link(2) does not follow a symlink at `source`
          createdHere.add(target);
          entry.resume();
          continue; // a hard link shares its source's metadata
        }
        case 'character-device':
        case 'block-device':
        case 'fifo': {
          if (plain) throw bad(what, h.name, `is a ${h.type}: only files, directories and links are taken`);
          stats.skipped.push({ path: comps.join('/'), reason: `${h.type} not created` });
          entry.resume();
          continue;
        }
        default:
          throw bad(what, h.name, `has an unsupported type ${String(h.type)}`);
      }
      createdHere.add(target);

      // Metadata, never through a symlink.
      const isLink = h.type === 'symlink';
      if (chownEntries) lchownSync(target, h.uid ?? 0, h.gid ?? 0);
      // A plain archive's directories get their modes last: one without write permission still takes its entries.
      const dirModeLast = plain && h.type === 'directory';
      if (!isLink && !dirModeLast) chmodSync(target, mode); // after chown: chown clears setuid bits
      const mtime = h.mtime ?? new Date(0);
      if (h.type === 'directory') dirTimes.push({ path: target, mtime, ...(dirModeLast ? { mode } : {}) });
      else if (isLink) lutimesSync(target, mtime, mtime);
      else utimesSync(target, mtime, mtime);
      collectXattrs(h, relative(root, target), stats);
    }
    await feeding;
    // Directory times last: creating their children changed them.
    for (const d of dirTimes.reverse()) {
      try {
        if (d.mode !== undefined) chmodSync(d.path, d.mode);
        utimesSync(d.path, d.mtime, d.mtime);
      } catch {
        // removed by a later entry
      }
    }
    return stats;
  } catch (e) {
    extract.destroy();
    if (e instanceof RoostError) throw e;
    const err = e as NodeJS.ErrnoException;
    throwIfDiskFull(e, root);
    if (err.name === 'AbortError') throw new RoostError('ABORTED', `extracting ${what.name} was aborted`, { cause: e });
    throw new RoostError(what.code, `${what.name} could not be extracted: ${err.message}`, { cause: e });
  }
}

/** What is being extracted, for errors: its name in messages, the noun that is refused, and the error code. */
interface Subject {
  name: string;
  noun: 'layer' | 'archive';
  code: 'IMAGE' | 'INVALID_ARGUMENT';
}

/** Splits an entry name into components; `..`, absolute paths and NUL fail the layer. */
function cleanPath(name: string, what: Subject): string[] {
  if (name.includes('\0')) throw bad(what, name, 'has a NUL byte in its name');
  if (name.startsWith('/')) throw bad(what, name, 'has an absolute path');
  const comps: string[] = [];
  for (const c of name.split('/')) {
    if (c === '' || c === '.') continue;
    if (c === '..') throw bad(what, name, 'climbs out with ..');
    comps.push(c);
  }
  return comps;
}

/**
 * Resolves directory components inside `root`, following symlinks the way a
 * chroot would (absolute targets restart at `root`, `..` stops there), and
 * creates missing directories. Returns a real directory path under `root`.
 * With `noLinks` (a plain archive), a symlink among them is refused instead.
 */
function resolveParent(root: string, comps: string[], what: Subject, name: string, cache: Map<string, string>, noLinks: boolean): string {
  const key = comps.join('/');
  const cached = cache.get(key);
  if (cached !== undefined) return cached;
  const resolved = resolveUncached(root, comps, what, name, noLinks);
  cache.set(key, resolved);
  return resolved;
}

function resolveUncached(root: string, comps: string[], what: Subject, name: string, noLinks: boolean): string {
  const stack: string[] = [];
  const todo = [...comps];
  let hops = 0;
  while (todo.length > 0) {
    const c = todo.shift()!;
    if (c === '' || c === '.') continue;
    if (c === '..') {
      stack.pop();
      continue;
    }
    const p = join(root, ...stack, c);
    const st = lstatOrNull(p);
    if (!st) {
      mkdirSync(p, { mode: 0o755 });
      stack.push(c);
    } else if (st.isSymbolicLink()) {
      if (noLinks) throw bad(what, name, `is below the symlink ${[...stack, c].join('/')}, which is never followed`);
      if (++hops > MAX_HOPS) throw bad(what, name, 'has too many levels of symbolic links');
      const linkText = readlinkSync(p);
      if (linkText.startsWith('/')) stack.length = 0;
      todo.unshift(...linkText.split('/'));
    } else if (st.isDirectory()) {
      stack.push(c);
    } else {
      throw bad(what, name, `needs ${[...stack, c].join('/')} to be a directory, and it is not`);
    }
  }
  return join(root, ...stack);
}

/** Removes whatever is at `path` (a symlink itself, never its target); true when that was a directory or symlink. */
function removeEntry(path: string): boolean {
  const st = lstatOrNull(path);
  if (!st) return false;
  if (st.isDirectory()) rmSync(path, { recursive: true, force: true });
  else unlinkSync(path);
  return st.isDirectory() || st.isSymbolicLink();
}

function collectXattrs(h: tar.Header, path: string, stats: LayerStats): void {
  const pax = (h as { pax?: Record<string, string> }).pax;
  if (!pax) return;
  for (const [key, value] of Object.entries(pax)) {
    if (key.startsWith('SCHILY.xattr.')) stats.xattrs.push({ path, name: key.slice(13), value: Buffer.from(value, 'latin1') });
  }
}

function bad(what: Subject, name: string, why: string): RoostError {
  return new RoostError(what.code, `${what.name}: entry ${JSON.stringify(name)} ${why}; the ${what.noun} is refused`, {
    ...(what.code === 'INVALID_ARGUMENT' ? { details: { entry: name } } : {}),
  });
}

function lstatOrNull(path: string): ReturnType<typeof lstatSync> | null {
  return lstatSync(path, { throwIfNoEntry: false }) ?? null;
}
