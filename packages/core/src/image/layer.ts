import { constants as fsc } from 'node:fs';
import { chmod, lchown, link, lstat, lutimes, mkdir, open, readdir, readlink, rm, symlink, unlink, utimes } from 'node:fs/promises';
import { join, relative } from 'node:path';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import * as tar from 'tar-stream';
import { RoostError } from '../errors.js';

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
  signal?: AbortSignal;
}

const WHITEOUT_PREFIX = '.wh.';
const OPAQUE = '.wh..wh..opq';
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
 */
export async function applyLayer(root: string, source: AsyncIterable<Uint8Array> | Readable, options: ApplyLayerOptions = {}): Promise<LayerStats> {
  const what = options.layer ? `layer ${options.layer}` : 'layer';
  const chownEntries = options.chown ?? process.getuid?.() === 0;
  const stats: LayerStats = { entries: 0, files: 0, bytes: 0, whiteouts: 0, skipped: [], xattrs: [] };
  const createdHere = new Set<string>();
  const dirTimes: { path: string; mtime: Date }[] = [];
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
      const parent = await resolveParent(root, comps.slice(0, -1), what, h.name);

      if (base === OPAQUE) {
        stats.whiteouts++;
        for (const child of await readdir(parent)) {
          const p = join(parent, child);
          if (!createdHere.has(p)) await rm(p, { recursive: true, force: true });
        }
        entry.resume();
        continue;
      }
      if (base.startsWith(WHITEOUT_PREFIX)) {
        stats.whiteouts++;
        const victim = base.slice(WHITEOUT_PREFIX.length);
        if (victim === '' || victim === '.' || victim === '..') throw bad(what, h.name, 'is a whiteout of nothing');
        await rm(join(parent, victim), { recursive: true, force: true });
        entry.resume();
        continue;
      }

      const target = join(parent, base);
      const mode = (h.mode ?? 0o644) & 0o7777;
      switch (h.type) {
        case 'file':
        case 'contiguous-file':
        case undefined:
        case null: {
          await clear(target);
          // O_EXCL | O_NOFOLLOW: a name that appeared meanwhile, or a symlink, is never written through.
          const fh = await open(target, fsc.O_WRONLY | fsc.O_CREAT | fsc.O_EXCL | fsc.O_NOFOLLOW, 0o600);
          try {
            // Iterated, not piped: the entry is a streamx stream, and iteration is
            // what reliably surfaces its errors (a truncated blob) here.
            for await (const chunk of entry as AsyncIterable<Buffer>) await fh.write(chunk);
          } finally {
            await fh.close();
          }
          stats.files++;
          stats.bytes += h.size ?? 0;
          break;
        }
        case 'directory': {
          const existing = await lstat(target).catch(() => null);
          if (existing && !existing.isDirectory()) await clear(target);
          if (!existing || !existing.isDirectory()) await mkdir(target, { mode: 0o700 });
          entry.resume();
          break;
        }
        case 'symlink': {
          if (!h.linkname) throw bad(what, h.name, 'is a symlink without a target');
          await clear(target);
          // The link's text is stored as is: it is never followed while extracting.
          await symlink(h.linkname, target);
          entry.resume();
          break;
        }
        case 'link': {
          if (!h.linkname) throw bad(what, h.name, 'is a hard link without a target');
          const linkComps = cleanPath(h.linkname, what);
          if (linkComps.length === 0) throw bad(what, h.name, 'is a hard link to the root');
          const source = join(await resolveParent(root, linkComps.slice(0, -1), what, h.linkname), linkComps[linkComps.length - 1]!);
          const st = await lstat(source).catch(() => null);
          if (!st) throw bad(what, h.name, `links to ${h.linkname}, which the image does not contain`);
          if (st.isDirectory()) throw bad(what, h.name, `is a hard link to the directory ${h.linkname}`);
          if (source === target) {
            entry.resume();
            break;
          }
          await clear(target);
          await link(source, target); // link(2) does not follow a symlink at `source`
          createdHere.add(target);
          entry.resume();
          continue; // a hard link shares its source's metadata
        }
        case 'character-device':
        case 'block-device':
        case 'fifo': {
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
      if (chownEntries) await lchown(target, h.uid ?? 0, h.gid ?? 0);
      if (!isLink) await chmod(target, mode); // after chown: chown clears setuid bits
      const mtime = h.mtime ?? new Date(0);
      if (h.type === 'directory') dirTimes.push({ path: target, mtime });
      else if (isLink) await lutimes(target, mtime, mtime);
      else await utimes(target, mtime, mtime);
      collectXattrs(h, relative(root, target), stats);
    }
    await feeding;
    // Directory times last: creating their children changed them.
    for (const d of dirTimes.reverse()) await utimes(d.path, d.mtime, d.mtime).catch(() => {});
    return stats;
  } catch (e) {
    extract.destroy();
    if (e instanceof RoostError) throw e;
    const err = e as NodeJS.ErrnoException;
    if (err.code === 'ENOSPC') throw new RoostError('IMAGE', `${what}: the disk is full while extracting: free space under the Roost home`, { cause: e });
    if (err.name === 'AbortError') throw new RoostError('ABORTED', `extracting ${what} was aborted`, { cause: e });
    throw new RoostError('IMAGE', `${what} could not be extracted: ${err.message}`, { cause: e });
  }
}

/** Splits an entry name into components; `..`, absolute paths and NUL fail the layer. */
function cleanPath(name: string, what: string): string[] {
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
 */
async function resolveParent(root: string, comps: string[], what: string, name: string): Promise<string> {
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
    const st = await lstat(p).catch(() => null);
    if (!st) {
      await mkdir(p, { mode: 0o755 });
      stack.push(c);
    } else if (st.isSymbolicLink()) {
      if (++hops > MAX_HOPS) throw bad(what, name, 'has too many levels of symbolic links');
      const linkText = await readlink(p);
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

/** Removes whatever is at `path` (a symlink itself, never its target). */
async function clear(path: string): Promise<void> {
  const st = await lstat(path).catch(() => null);
  if (!st) return;
  if (st.isDirectory()) await rm(path, { recursive: true, force: true });
  else await unlink(path);
}

function collectXattrs(h: tar.Header, path: string, stats: LayerStats): void {
  const pax = (h as { pax?: Record<string, string> }).pax;
  if (!pax) return;
  for (const [key, value] of Object.entries(pax)) {
    if (key.startsWith('SCHILY.xattr.')) stats.xattrs.push({ path, name: key.slice(13), value: Buffer.from(value, 'latin1') });
  }
}

function bad(what: string, name: string, why: string): RoostError {
  return new RoostError('IMAGE', `${what}: entry ${JSON.stringify(name)} ${why}; the layer is refused`);
}
