import {
  closeSync,
  constants as fsConstants,
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
  realpathSync,
  statSync,
  symlinkSync,
  unlinkSync,
  type Stats,
} from 'node:fs';
import { mkdir } from 'node:fs/promises';
import { basename, dirname, resolve } from 'node:path';
import { ERRNO_CODES, formatByteSize, isRoostError, readLimitError, RoostError, type EntryInfo, type SandboxApi } from '@roost/api';
import { InvalidArgumentError, type Command } from 'commander';
import { Pack, Parser, type ReadEntry, type WriteEntry } from 'tar';
import type { WithFace } from './connect.js';
import { SparseWriter } from './sparse.js';

/*
 * `roost cp`: files and directories between the host and a sandbox, with
 * `docker cp`'s naming rules, as tar streams (node-tar packs on the host;
 * the agent packs and extracts in the guest).
 *
 * A tar made in the guest is hostile input. It is extracted here by
 * `extractArchive`, which uses node-tar only to parse and does every file
 * system operation itself, relative to directory file descriptors opened
 * with O_NOFOLLOW (through /proc/self/fd), so nothing in the archive can
 * make it write, link or change anything outside the destination: not a
 * symlink it made earlier (`link -> /etc`, then `link/passwd`), not an
 * absolute or `..` name, not a hard link to a path outside or to a file it
 * did not itself extract. Existing files are unlinked and created anew,
 * never opened for writing, so a hard link cannot be used to change
 * another file. setuid and setgid bits are dropped; owners are kept only
 * when running as root.
 */

const HELP = `
Copies files and directories between the host and a sandbox, like docker cp.
One of SRC and DEST is ID:PATH (a sandbox id or prefix and a guest path;
relative guest paths start at /). A host path with a colon in its first
component is written ./a:b.

  roost cp ./dir ID:/work        copy a host directory into the sandbox
  roost cp ID:/out ./out         copy a guest directory to the host
  roost cp - ID:/work < x.tar    extract a tar from stdin into /work
  roost cp ID:/out - > out.tar   write a tar of /out to stdout

Naming (as docker cp):
  - a file SRC to an existing directory DEST lands in DEST/basename(SRC);
    to any other DEST it is written as DEST (a DEST ending in / must be
    an existing directory).
  - a directory SRC to an existing directory DEST is copied to
    DEST/basename(SRC): copying a to an existing b gives b/a.
  - a directory SRC to a DEST that does not exist creates DEST with the
    contents of SRC: copying a to a missing b gives b, holding a's entries.
  - SRC/. copies the contents of the directory SRC into DEST.
  - a directory cannot be copied onto a file.

Out of a sandbox, runs of zeros are written as holes (a sparse file stays
sparse on the host), and at most --max-bytes come from the guest (default:
the sandbox's disk size); past it the copy stops with an error and the file
being written is removed.

Symlinks are copied as symlinks (-L follows a host SRC that is one).
Modes, modification times and owners are kept: in the sandbox the agent
extracts as root, so files keep their host uid and gid; on the host,
owners are kept only when roost runs as root, and setuid/setgid bits are
dropped. Missing parent directories of DEST are created.
`;

/** Registers `roost cp`. */
export function addCpCommand(program: Command, withFace: WithFace): void {
  program
    .command('cp')
    .description('copy files or directories between the host and a sandbox (SRC or DEST is ID:PATH; - is a tar on stdin/stdout)')
    .usage('[options] SRC DEST')
    .option('-L, --follow-link', 'follow SRC when it is a host symlink')
    .option('--max-bytes <size>', 'copying out: the most bytes the sandbox may send, like 512M or 2G (default: its disk size)', byteSize('--max-bytes'))
    .argument('<src>')
    .argument('<dest>')
    .addHelpText('after', HELP)
    .action(async (src: string, dest: string, flags: { followLink?: boolean; maxBytes?: number }) => {
      const from = parseLocation(src);
      const to = parseLocation(dest);
      if (from.kind === 'guest' && to.kind === 'guest')
        throw new RoostError('INVALID_ARGUMENT', 'cp: copying between two sandboxes is not supported: copy to the host first');
      if (from.kind !== 'guest' && to.kind !== 'guest') throw new RoostError('INVALID_ARGUMENT', 'cp: one of SRC and DEST must be ID:PATH (a sandbox path)');
      if (from.kind === 'stdio' && to.kind === 'stdio') throw new RoostError('INVALID_ARGUMENT', 'cp: - may stand for one side only');
      const id = from.kind === 'guest' ? from.id : (to as GuestLocation).id;
      await withFace('cp', async (face) => {
        const sandbox = await face.runtime.get(id);
        if (to.kind === 'guest') await copyIn(sandbox, from as HostLocation | StdioLocation, to.path, !!flags.followLink);
        else await copyOut(sandbox, (from as GuestLocation).path, to, flags.maxBytes);
      });
    });
}

const SIZE_UNITS: Record<string, number> = { '': 1, K: 2 ** 10, M: 2 ** 20, G: 2 ** 30, T: 2 ** 40 };

/** A commander parser for a size: bytes, or a number with K, M, G or T (binary: 1K = 1024), `B`/`iB` allowed after it. */
export function byteSize(flag: string): (v: string) => number {
  return (v) => {
    const m = /^(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?$/i.exec(v.trim());
    const n = m ? Math.floor(Number(m[1]) * SIZE_UNITS[m[2]!.toUpperCase()]!) : NaN;
    if (!Number.isSafeInteger(n) || n < 1) throw new InvalidArgumentError(`${flag} takes a size like 1048576, 512M or 2G, not "${v}"`);
    return n;
  };
}

interface GuestLocation {
  kind: 'guest';
  id: string;
  path: string;
}
interface HostLocation {
  kind: 'host';
  path: string;
}
interface StdioLocation {
  kind: 'stdio';
}
type Location = GuestLocation | HostLocation | StdioLocation;

/** `-`, `ID:PATH`, or a host path (one starting with `/`, `./` or `../`, or with no colon before its first `/`). */
export function parseLocation(arg: string): Location {
  if (arg === '-') return { kind: 'stdio' };
  if (arg.startsWith('/') || arg.startsWith('./') || arg.startsWith('../') || arg === '.' || arg === '..') return { kind: 'host', path: arg };
  const m = /^([^:/]+):(.*)$/s.exec(arg);
  if (m) return { kind: 'guest', id: m[1]!, path: m[2] || '/' };
  return { kind: 'host', path: arg };
}

/** The guest runs extraction and archiving as root, so owners travel both ways. */
const ROOT = 0;

/** True for a path that names the contents of a directory: `.`, or one ending in `/.`. */
function contentsOf(path: string): boolean {
  return path === '.' || path.endsWith('/.');
}

async function guestStat(sandbox: SandboxApi, path: string, follow: boolean): Promise<EntryInfo | null> {
  try {
    return await sandbox.files.stat(path, { user: ROOT, follow });
  } catch (e) {
    if (isRoostError(e, 'NOT_FOUND') && e.details.errno !== undefined) return null;
    throw e;
  }
}

function hostStat(path: string, follow: boolean): Stats | null {
  try {
    return follow ? statSync(path) : lstatSync(path);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT' || (e as NodeJS.ErrnoException).code === 'ENOTDIR') return null;
    throw hostError(e, path);
  }
}

/** A host file system error as a RoostError. */
function hostError(e: unknown, path: string): RoostError {
  if (e instanceof RoostError) return e;
  const err = e as NodeJS.ErrnoException;
  const code = err.code && Object.hasOwn(ERRNO_CODES, err.code) ? ERRNO_CODES[err.code]! : 'INTERNAL';
  return new RoostError(code, `${path}: ${err.message}`, { cause: e, details: { path, ...(err.code ? { errno: err.code } : {}) } });
}

// ---- host -> guest ----------------------------------------------------------------

async function copyIn(sandbox: SandboxApi, from: HostLocation | StdioLocation, dest: string, followLink: boolean): Promise<void> {
  const target = await guestStat(sandbox, dest, true);
  if (from.kind === 'stdio') {
    if (target && target.type !== 'dir')
      throw new RoostError('INVALID_STATE', `cp: ${dest} is not a directory (a tar from stdin is extracted into a directory)`);
    await sandbox.files.writeArchive(dest, process.stdin as AsyncIterable<Uint8Array>, { user: ROOT });
    return;
  }
  const srcPath = from.path;
  const st = hostStat(srcPath, followLink);
  if (!st) throw new RoostError('NOT_FOUND', `cp: ${srcPath}: no such file or directory`, { details: { path: srcPath } });
  const abs = followLink ? realpathSync(srcPath) : resolve(srcPath);
  // The name SRC has (for -L, the link's, not its target's).
  const name = basename(resolve(srcPath));
  const isDir = st.isDirectory();
  if (contentsOf(srcPath) && !isDir) throw new RoostError('INVALID_STATE', `cp: ${srcPath}: not a directory`);

  let into: string;
  let pack: Pack;
  if (target?.type === 'dir') {
    if (isDir && (contentsOf(srcPath) || name === '')) {
      // The contents of SRC into DEST.
      into = dest;
      pack = packHost(abs, readdirSync(abs).sort());
    } else {
      into = dest;
      pack = packHost(dirname(abs), [basename(abs)], basename(abs), name);
    }
  } else {
    if (target && isDir) throw new RoostError('INVALID_STATE', `cp: cannot copy directory ${srcPath} onto ${dest}, which is not a directory`);
    if (target && dest.endsWith('/')) throw new RoostError('INVALID_STATE', `cp: ${dest} is not a directory`);
    if (dest.endsWith('/')) throw new RoostError('NOT_FOUND', `cp: ${dest} does not exist and ends with /: it must be an existing directory`);
    // DEST is written as SRC renamed.
    into = guestDirname(dest);
    pack = packHost(dirname(abs), [basename(abs)], basename(abs), guestBasename(dest));
  }
  await sandbox.files.writeArchive(into, hostArchive(pack), { user: ROOT });
}

/** A tar of `files` (relative to `cwd`), with the top name `from` written as `to`. */
function packHost(cwd: string, files: string[], from?: string, to?: string): Pack {
  const rename = (p: string) =>
    from === undefined || to === undefined || from === to ? p : p === from || p.startsWith(`${from}/`) ? to + p.slice(from.length) : p;
  const pack = new Pack({
    cwd,
    portable: false,
    strict: true,
    onWriteEntry: (entry: WriteEntry) => {
      entry.path = rename(entry.path);
      if (entry.type === 'Link' && entry.linkpath) entry.linkpath = rename(entry.linkpath);
    },
  });
  for (const f of files) pack.add(f);
  pack.end();
  return pack;
}

/** What the pack stream is gathered into before it is sent: its own chunks are single headers and small files. */
const SEND_CHUNK = 256 << 10;

/** The pack stream as bytes in chunks of about SEND_CHUNK, its errors as RoostErrors. */
async function* hostArchive(pack: Pack): AsyncGenerator<Uint8Array> {
  try {
    let parts: Buffer[] = [];
    let size = 0;
    for await (const chunk of pack) {
      parts.push(chunk);
      size += chunk.length;
      if (size >= SEND_CHUNK) {
        yield Buffer.concat(parts, size);
        parts = [];
        size = 0;
      }
    }
    if (size > 0) yield Buffer.concat(parts, size);
  } catch (e) {
    const err = e as NodeJS.ErrnoException & { path?: string };
    throw hostError(e, err.path ?? 'packing');
  }
}

function guestDirname(p: string): string {
  const trimmed = p.replace(/\/+$/, '');
  const i = trimmed.lastIndexOf('/');
  return i < 0 ? '/' : i === 0 ? '/' : trimmed.slice(0, i);
}

function guestBasename(p: string): string {
  const trimmed = p.replace(/\/+$/, '');
  return trimmed.slice(trimmed.lastIndexOf('/') + 1);
}

// ---- guest -> host ----------------------------------------------------------------

/**
 * Copies out under a bound: at most `maxBytes` of archive (default: the
 * sandbox's disk size, which no real data in the guest can exceed; a sparse
 * file can claim any size). A file known to be larger is refused before
 * anything is sent; a stream that grows past it is stopped, in the runtime
 * and again here, and the file being written is removed.
 */
async function copyOut(sandbox: SandboxApi, src: string, to: HostLocation | StdioLocation, maxBytes: number | undefined): Promise<void> {
  const limit = maxBytes ?? (sandbox.info.diskSizeMiB > 0 ? sandbox.info.diskSizeMiB * 2 ** 20 : undefined);
  try {
    await copyOutBounded(sandbox, src, to, limit);
  } catch (e) {
    // The runtime's (or daemon's) error names its option: name the flag.
    if (limit !== undefined && isRoostError(e, 'RESOURCE_EXHAUSTED') && e.details.maxBytes !== undefined && e.details.option !== '--max-bytes')
      throw readLimitError(`cp ${src}`, limit, '--max-bytes', src);
    throw e;
  }
}

async function copyOutBounded(sandbox: SandboxApi, src: string, to: HostLocation | StdioLocation, limit: number | undefined): Promise<void> {
  const contents = contentsOf(src);
  const srcPath = contents ? src.slice(0, -1).replace(/(.)\/+$/, '$1') || '/' : src;
  const info = await guestStat(sandbox, srcPath, src.endsWith('/'));
  if (!info) throw new RoostError('NOT_FOUND', `cp: ${src}: no such file or directory in sandbox ${sandbox.id}`, { details: { path: src } });
  if (contents && info.type !== 'dir') throw new RoostError('INVALID_STATE', `cp: ${src}: not a directory`);
  if (limit !== undefined && info.type === 'file' && info.size > limit) {
    throw new RoostError(
      'RESOURCE_EXHAUSTED',
      `cp ${src}: the file is ${formatByteSize(info.size)} (${info.size} bytes), more than ${formatByteSize(limit)} (${limit} bytes), the limit of this copy ` +
        `(by default the sandbox's disk size); nothing was copied. Raise the limit with --max-bytes if you expect that much`,
      { details: { maxBytes: limit, option: '--max-bytes', path: src, size: info.size } },
    );
  }
  if (info.type === 'other' && to.kind !== 'stdio')
    throw new RoostError('INVALID_ARGUMENT', `cp: ${src} is not a regular file, directory or symlink (a FIFO, socket or device): nothing was copied`, {
      details: { path: src },
    });
  const archive = await sandbox.files.readArchive(srcPath, { user: ROOT, ...(limit !== undefined ? { maxBytes: limit } : {}) });
  if (to.kind === 'stdio') {
    await writeOut(archive, process.stdout);
    return;
  }
  const bound = limit !== undefined ? { maxBytes: limit } : {};
  const dest = to.path;
  const target = hostStat(dest, true);
  // FIFOs and devices are not made on the host: each is named on stderr, and the copy fails once the rest is in place.
  const skipped: string[] = [];
  const onSkip = (path: string, type: string) => {
    skipped.push(path);
    process.stderr.write(`roost cp: skipped ${path} (${type})\n`);
  };
  const checkSkipped = () => {
    if (skipped.length > 0)
      throw new RoostError(
        'INVALID_STATE',
        `cp: copied ${src} to ${dest} except ${skipped.length} ${skipped.length === 1 ? 'entry' : 'entries'} that ${skipped.length === 1 ? 'is' : 'are'} not a regular file, directory or symlink (FIFOs, devices: listed above)`,
        { details: { skipped } },
      );
  };
  if (target?.isDirectory()) {
    // Into DEST: as SRC's name, or (SRC/.) its contents.
    await extractArchive(archive, dest, { root: contents ? '' : null, onSkip, ...bound });
    checkSkipped();
    return;
  }
  if (target && info.type === 'dir') throw new RoostError('INVALID_STATE', `cp: cannot copy directory ${src} onto ${dest}, which is not a directory`);
  if (target && dest.endsWith('/')) throw new RoostError('INVALID_STATE', `cp: ${dest} is not a directory`);
  if (dest.endsWith('/')) throw new RoostError('NOT_FOUND', `cp: ${dest} does not exist and ends with /: it must be an existing directory`);
  const parent = dirname(resolve(dest));
  await mkdir(parent, { recursive: true }).catch((e: unknown) => {
    throw hostError(e, parent);
  });
  await extractArchive(archive, parent, { root: basename(resolve(dest)), onSkip, ...bound });
  checkSkipped();
}

/** Writes the archive to stdout; a reader that went away (EPIPE) ends the copy with an error. */
async function writeOut(source: AsyncIterable<Uint8Array>, out: NodeJS.WriteStream): Promise<void> {
  let failed: Error | undefined;
  const onError = (e: Error) => (failed = e);
  out.on('error', onError);
  try {
    for await (const chunk of source) {
      if (failed) break;
      if (!out.write(chunk))
        await new Promise<void>((r) => {
          const done = () => (out.off('drain', done), out.off('error', done), r());
          out.on('drain', done);
          out.on('error', done);
        });
    }
    if (failed) throw hostError(failed, 'standard output');
  } finally {
    out.off('error', onError);
  }
}

// ---- safe extraction -----------------------------------------------------------------

/** Options of `extractArchive`. */
export interface ExtractOptions {
  /**
   * What the archive's top-level name becomes: null keeps it; a name
   * renames it (`docker cp` to a new path); '' puts what is below it
   * straight into the destination (SRC/.). Unless undefined (entries are
   * taken as they are), every entry must be below the first entry's
   * top-level name.
   */
  root?: string | null | undefined;
  /** Keep the archive's owners (default: only when running as root). */
  preserveOwner?: boolean;
  /** Called for entries skipped (FIFOs, devices). Default: a line on stderr. */
  onSkip?: (path: string, type: string) => void;
  /** The most bytes of archive to take (RESOURCE_EXHAUSTED past it; the file being written is removed). */
  maxBytes?: number;
}

const O_DIR = fsConstants.O_RDONLY | fsConstants.O_DIRECTORY | fsConstants.O_NOFOLLOW;
const O_NEWFILE = fsConstants.O_WRONLY | fsConstants.O_CREAT | fsConstants.O_EXCL | fsConstants.O_NOFOLLOW;
/** Deeper than this is refused (a name is at most PATH_MAX anyway). */
const MAX_DEPTH = 1024;
/** Open directory descriptors kept for reuse before they are all closed. */
const MAX_OPEN_DIRS = 256;

/** `name` inside the directory open as `fd`, resolved by the kernel without following anything but the descriptor. */
const at = (fd: number, name: string) => `/proc/self/fd/${fd}/${name}`;

function refused(message: string, path: string): RoostError {
  return new RoostError('INVALID_ARGUMENT', `cp: the archive is refused: ${message}`, { details: { path } });
}

/**
 * Extracts a tar stream (from a sandbox: hostile) into the directory
 * `dest`, which must exist. Nothing outside `dest` is written, linked or
 * changed: entries are created relative to directory descriptors opened
 * with O_NOFOLLOW, so a symlink (made by the archive or found in `dest`) is
 * never followed; `..` components are refused, a leading `/` is dropped;
 * hard links may only point at regular files the archive extracted before.
 * Modes are kept without setuid/setgid, modification times are kept
 * (directories' once everything below them is written), owners only as
 * root. FIFOs and devices are skipped. Zero blocks of files are written
 * as holes (see sparse.ts). A failure (a damaged archive, more than
 * `maxBytes`) removes the file it was writing: no partial file stays.
 */
export async function extractArchive(source: AsyncIterable<Uint8Array>, dest: string, options: ExtractOptions = {}): Promise<void> {
  const preserveOwner = options.preserveOwner ?? process.getuid?.() === 0;
  const onSkip = options.onSkip ?? ((path: string, type: string) => process.stderr.write(`roost cp: skipped ${path} (${type})\n`));
  let destFd: number;
  try {
    destFd = openSync(dest, fsConstants.O_RDONLY | fsConstants.O_DIRECTORY);
  } catch (e) {
    throw hostError(e, dest);
  }
  const dirs = new Map<string, number>();
  /** Regular files this archive extracted (by their path below dest): the only hard link targets. */
  const files = new Set<string>();
  /** Directories to finish: mode, times and owner once everything is in them. */
  const finish = new Map<string, { mode: number; mtime: Date | undefined; uid: number | undefined; gid: number | undefined }>();
  let topName: string | undefined;
  let failure: unknown;
  /** The file being written, until it is complete: removed if the extraction fails. */
  let partial: { parent: number; name: string; fd: number | null } | null = null;

  const closeDirs = () => {
    for (const fd of dirs.values()) closeSync(fd);
    dirs.clear();
  };

  /** The descriptor of the directory `parts` below dest (created 0700 where missing when `create`). */
  const openDir = (parts: string[], create: boolean): number => {
    let fd = destFd;
    for (let i = 0; i < parts.length; i++) {
      const key = parts.slice(0, i + 1).join('/');
      const cached = dirs.get(key);
      if (cached !== undefined) {
        fd = cached;
        continue;
      }
      const name = parts[i]!;
      let next: number;
      try {
        next = openSync(at(fd, name), O_DIR);
      } catch (e) {
        const code = (e as NodeJS.ErrnoException).code;
        if (code === 'ENOENT' && create) {
          mkdirSync(at(fd, name), 0o700);
          next = openSync(at(fd, name), O_DIR);
        } else if (code === 'ELOOP' || code === 'ENOTDIR') {
          throw refused(`${key} is a symlink or not a directory, and an entry goes through it`, key);
        } else throw hostError(e, `${dest}/${key}`);
      }
      if (dirs.size >= MAX_OPEN_DIRS) closeDirs();
      dirs.set(key, next);
      fd = next;
    }
    return fd;
  };

  /** Splits and checks an archive name; maps its top-level name. Null: the entry is the destination itself. */
  const pathOf = (raw: string): string[] | null => {
    const parts = raw.split('/').filter((p) => p !== '' && p !== '.');
    if (parts.includes('..')) throw refused(`${JSON.stringify(raw)} has a .. component`, raw);
    if (parts.length > MAX_DEPTH) throw refused(`${JSON.stringify(raw.slice(0, 100))}... is deeper than ${MAX_DEPTH} levels`, raw);
    if (parts.length === 0) return null;
    if (options.root === undefined) return parts;
    topName ??= parts[0];
    if (parts[0] !== topName) throw refused(`${JSON.stringify(raw)} is not below ${JSON.stringify(topName)}, the archive's first name`, raw);
    const rest = parts.slice(1);
    if (options.root === null) return parts;
    if (options.root === '') return rest.length > 0 ? rest : null;
    return [options.root, ...rest];
  };

  /** Removes what is at `name` in `fd`, unless it is a directory (then the entry must be one too). */
  const clear = (fd: number, name: string, path: string, isDir: boolean): Stats | undefined => {
    const st = lstatSync(at(fd, name), { throwIfNoEntry: false });
    if (!st) return undefined;
    if (st.isDirectory()) {
      if (!isDir) throw refused(`${path} is a directory and an entry would replace it with something else`, path);
      return st;
    }
    unlinkSync(at(fd, name));
    files.delete(path);
    return undefined;
  };

  const setOwner = (fd: number, entry: ReadEntry) => {
    if (preserveOwner && entry.uid !== undefined && entry.gid !== undefined) fchownSync(fd, entry.uid, entry.gid);
  };

  /** Handles one entry; its data is consumed (or discarded) before the parser goes on. */
  const onEntry = (entry: ReadEntry) => {
    if (failure) return entry.resume();
    try {
      const parts = pathOf(entry.path);
      if (parts === null) return entry.resume(); // the destination itself: left as it is
      const path = parts.join('/');
      const name = parts.at(-1)!;
      const parent = openDir(parts.slice(0, -1), true);
      const mode = (entry.mode ?? 0o644) & 0o1777; // no setuid, no setgid
      switch (entry.type) {
        case 'Directory':
        case 'GNUDumpDir': {
          if (!clear(parent, name, path, true)) mkdirSync(at(parent, name), 0o700);
          finish.set(path, { mode, mtime: entry.mtime, uid: entry.uid, gid: entry.gid });
          return entry.resume();
        }
        case 'File':
        case 'OldFile':
        case 'ContiguousFile': {
          clear(parent, name, path, false);
          const fd = openSync(at(parent, name), O_NEWFILE, 0o600);
          const file = (partial = { parent, name, fd: fd as number | null });
          const out = new SparseWriter(fd);
          entry.on('data', (chunk: Buffer) => {
            if (failure) return;
            try {
              out.write(chunk);
            } catch (e) {
              failure = hostError(e, `${dest}/${path}`);
            }
          });
          entry.on('end', () => {
            if (file.fd === null) return; // the extraction failed and removed it
            try {
              if (!failure) {
                out.finish();
                setOwner(fd, entry);
                fchmodSync(fd, mode);
                if (entry.mtime) futimesSync(fd, entry.mtime, entry.mtime);
                files.add(path);
                if (partial === file) partial = null;
              }
            } catch (e) {
              failure ??= hostError(e, `${dest}/${path}`);
            } finally {
              if (file.fd !== null) closeSync(fd);
              file.fd = null;
            }
          });
          return;
        }
        case 'SymbolicLink': {
          clear(parent, name, path, false);
          // The target is stored as it is: it is never followed here.
          symlinkSync(entry.linkpath ?? '', at(parent, name));
          if (preserveOwner && entry.uid !== undefined && entry.gid !== undefined) lchownSync(at(parent, name), entry.uid, entry.gid);
          if (entry.mtime) lutimesSync(at(parent, name), entry.mtime, entry.mtime);
          return entry.resume();
        }
        case 'Link': {
          const target = pathOf(entry.linkpath ?? '');
          const targetPath = target?.join('/');
          if (!target || targetPath === undefined || !files.has(targetPath)) {
            throw refused(`the hard link ${path} points at ${JSON.stringify(entry.linkpath)}, which is not a file extracted before it`, path);
          }
          const targetDir = openDir(target.slice(0, -1), false);
          const targetName = target.at(-1)!;
          if (!lstatSync(at(targetDir, targetName)).isFile()) throw refused(`the hard link ${path} points at ${targetPath}, which is not a regular file`, path);
          clear(parent, name, path, false);
          linkSync(at(targetDir, targetName), at(parent, name));
          files.add(path);
          return entry.resume();
        }
        default:
          onSkip(path, entry.type);
          return entry.resume();
      }
    } catch (e) {
      failure ??= e instanceof RoostError ? e : hostError(e, `${dest}/${entry.path}`);
      entry.resume();
    }
  };

  const parser = new Parser({ strict: true, zstd: false, brotli: false });
  let aborted = false;
  const ended = new Promise<void>((resolvePromise) => {
    parser.on('end', () => resolvePromise());
    parser.on('error', (e: Error) => {
      if (!aborted) failure ??= new RoostError('INVALID_ARGUMENT', `cp: the archive is damaged: ${e.message}`, { cause: e });
      resolvePromise();
    });
  });
  parser.on('entry', onEntry);
  let received = 0;
  try {
    for await (const chunk of source) {
      if (failure) break;
      received += chunk.byteLength;
      if (options.maxBytes !== undefined && received > options.maxBytes) {
        failure = readLimitError('cp', options.maxBytes, '--max-bytes');
        break;
      }
      if (!parser.write(Buffer.from(chunk.buffer, chunk.byteOffset, chunk.byteLength))) {
        await Promise.race([new Promise((r) => parser.once('drain', r)), ended]);
      }
    }
    if (!failure) {
      parser.end();
      await ended;
    }
    if (failure) throw failure;
    // Directories last, deepest first: their modes may forbid writing, and writing below them moves their times.
    for (const [path, d] of [...finish].sort((a, b) => b[0].split('/').length - a[0].split('/').length)) {
      const fd = openDir(path.split('/'), false);
      if (preserveOwner && d.uid !== undefined && d.gid !== undefined) fchownSync(fd, d.uid, d.gid);
      fchmodSync(fd, d.mode);
      if (d.mtime) futimesSync(fd, d.mtime, d.mtime);
    }
  } catch (e) {
    aborted = true;
    parser.abort(e instanceof Error ? e : new Error(String(e)));
    // The file cut short goes: a partial file must not pass for a copy.
    const cut = partial as { parent: number; name: string; fd: number | null } | null;
    if (cut) {
      if (cut.fd !== null) closeSync(cut.fd);
      cut.fd = null;
      try {
        unlinkSync(at(cut.parent, cut.name));
      } catch {
        // Already gone.
      }
    }
    throw e instanceof RoostError ? e : hostError(e, dest);
  } finally {
    closeDirs();
    closeSync(destFd);
  }
}
