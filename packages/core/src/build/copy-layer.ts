import { spawn } from 'node:child_process';
import { Readable } from 'node:stream';
import { createGunzip } from 'node:zlib';
import { abortError, RoostError } from '../errors.js';
import type { StepCopy } from './plan-types.js';
import { encodeHeader, padding, readTar, TAR_END, type TarHeader } from './tar-codec.js';

/*
 * The layers of COPY and ADD, made on the host: from files of the build
 * context (with ADD, a local tar archive is unpacked at the destination),
 * or from an archive another stage's sandbox wrote (COPY --from). Entries
 * are written in sorted order, owned by root or by --chown, with --chmod's
 * mode when given, mtimes clamped to SOURCE_DATE_EPOCH.
 */

/** One file a COPY or ADD takes from the context, and where it lands. */
export interface CopyFile {
  /** Its path in the image, below the root, no leading '/'. */
  target: string;
  type: 'file' | 'dir' | 'symlink' | 'hardlink';
  /** Permission bits (and setuid, setgid, sticky). */
  mode: number;
  size: number;
  /** Seconds since the epoch. */
  mtime: number;
  /** A symlink's target, or the `target` of the entry a hard link names. */
  link?: string;
  /** Its contents (files). */
  open?: () => AsyncIterable<Uint8Array>;
}

/** Options of the layer writers. */
export interface CopyLayerOptions {
  epoch?: number | undefined;
  signal?: AbortSignal | undefined;
  /** --chown resolved to ids (null: root). */
  owner?: { uid: number; gid: number } | null;
}

const DIR_MODE = 0o755;

/** The tar bytes of a COPY or ADD layer from context files. */
export async function* copyLayer(entries: readonly CopyFile[], step: StepCopy, options: CopyLayerOptions = {}): AsyncGenerator<Buffer> {
  const uid = options.owner?.uid ?? 0;
  const gid = options.owner?.gid ?? 0;
  const clamp = (t: number) => Math.max(0, options.epoch !== undefined && t > options.epoch ? options.epoch : Math.floor(t));
  const seen = new Set<string>();
  // The destination directory itself, when files land in it (Docker makes it, owned as --chown says).
  const destDir = step.dest.endsWith('/') ? step.dest.replace(/^\/+|\/+$/g, '') : null;
  const sorted = [...entries].sort((a, b) => (a.target < b.target ? -1 : a.target > b.target ? 1 : 0));
  if (destDir && !sorted.some((e) => e.target === destDir)) {
    seen.add(destDir);
    yield encodeHeader(header(`${destDir}/`, '5', DIR_MODE, uid, gid, 0, clamp(options.epoch ?? 0)));
  }
  for (const e of sorted) {
    if (options.signal?.aborted) throw abortError(options.signal, 'writing a COPY layer');
    if (seen.has(e.target)) continue;
    seen.add(e.target);
    const mode = step.chmod ?? e.mode;
    if (step.add && e.type === 'file' && e.open) {
      const kind = await archiveKind(e.open());
      if (kind) {
        // Into dest when dest is a directory (where the archive's name would have been), else into dest itself.
        const dir = step.dest.endsWith('/') ? e.target.slice(0, e.target.lastIndexOf('/') + 1) : `${e.target}/`;
        yield* unpacked(e, dir, kind, options, clamp);
        continue;
      }
    }
    if (e.type === 'dir') yield encodeHeader(header(`${e.target}/`, '5', mode, uid, gid, 0, clamp(e.mtime)));
    else if (e.type === 'symlink') yield encodeHeader({ ...header(e.target, '2', 0o777, uid, gid, 0, clamp(e.mtime)), linkname: e.link ?? '' });
    else if (e.type === 'hardlink') yield encodeHeader({ ...header(e.target, '1', mode, uid, gid, 0, clamp(e.mtime)), linkname: e.link ?? '' });
    else {
      yield encodeHeader(header(e.target, '0', mode, uid, gid, e.size, clamp(e.mtime)));
      let n = 0;
      for await (const chunk of e.open!()) {
        n += chunk.length;
        if (n > e.size) throw new RoostError('INVALID_ARGUMENT', `COPY: ${e.target} grew while it was being read: build again`);
        yield Buffer.from(chunk.buffer, chunk.byteOffset, chunk.byteLength);
      }
      if (n !== e.size) throw new RoostError('INVALID_ARGUMENT', `COPY: ${e.target} shrank while it was being read: build again`);
      yield padding(e.size);
    }
  }
  yield TAR_END;
}

function header(name: string, type: TarHeader['type'], mode: number, uid: number, gid: number, size: number, mtime: number): TarHeader {
  return { name, type, mode: mode & 0o7777, uid, gid, size, mtime, linkname: '', devmajor: 0, devminor: 0, xattrs: new Map() };
}

type ArchiveKind = 'tar' | 'gzip' | 'bzip2' | 'xz';

/** What kind of tar archive a file is (ADD unpacks these), or null: by its first bytes, as Docker tells. */
async function archiveKind(data: AsyncIterable<Uint8Array>): Promise<ArchiveKind | null> {
  const head: Buffer[] = [];
  let n = 0;
  for await (const chunk of data) {
    head.push(Buffer.from(chunk));
    n += chunk.length;
    if (n >= 512) break;
  }
  const b = Buffer.concat(head);
  if (b[0] === 0x1f && b[1] === 0x8b) return 'gzip';
  if (b.subarray(0, 3).toString('latin1') === 'BZh') return 'bzip2';
  if (b.subarray(0, 6).equals(Buffer.from([0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00]))) return 'xz';
  if (b.length >= 262 && b.subarray(257, 262).toString('latin1') === 'ustar') return 'tar';
  return null;
}

/** A compressed stream decompressed: gzip in-process, bzip2 and xz by Debian's own tools. */
function decompress(kind: ArchiveKind, data: AsyncIterable<Uint8Array>): AsyncIterable<Uint8Array> {
  if (kind === 'tar') return data;
  if (kind === 'gzip') return Readable.from(data).pipe(createGunzip());
  const tool = kind === 'bzip2' ? 'bzip2' : 'xz';
  const child = spawn(tool, ['-dc'], { stdio: ['pipe', 'pipe', 'ignore'] });
  child.on('error', (e) =>
    child.stdout.destroy(new RoostError('INVALID_ARGUMENT', `ADD: unpacking a ${kind} archive needs \`${tool}\` on the host: ${e.message}`)),
  );
  Readable.from(data)
    .pipe(child.stdin)
    .on('error', () => {});
  return child.stdout;
}

/** The entries of an archive ADD unpacks, below the destination directory. */
async function* unpacked(e: CopyFile, dir: string, kind: ArchiveKind, options: CopyLayerOptions, clamp: (t: number) => number): AsyncGenerator<Buffer> {
  for await (const { header: h, body } of readTar(decompress(kind, e.open!()))) {
    const name = cleanName(h.name);
    if (name === null) {
      if (h.name.split('/').includes('..')) throw new RoostError('INVALID_ARGUMENT', `ADD: ${e.target}: the archive's entry ${h.name} leaves it; refused`);
      continue;
    }
    const link = h.type === '1' ? cleanName(h.linkname) : h.linkname;
    if (h.type === '1' && link === null) throw new RoostError('INVALID_ARGUMENT', `ADD: ${e.target}: the hard link ${h.name} leaves the archive`);
    // Owners as the archive says (Docker's ADD keeps them); --chown overrides.
    const out: TarHeader = {
      ...h,
      name: `${dir}${name}${h.type === '5' ? '/' : ''}`,
      linkname: h.type === '1' ? `${dir}${link}` : h.linkname,
      uid: options.owner?.uid ?? h.uid,
      gid: options.owner?.gid ?? h.gid,
      mtime: clamp(h.mtime),
    };
    yield encodeHeader(out);
    if (h.type === '0') {
      for await (const chunk of body) yield chunk;
      yield padding(h.size);
    }
  }
}

/** An archive member's name made relative and clean; null for the archive's root, or a name that leaves it (`..`). */
function cleanName(name: string): string | null {
  const parts: string[] = [];
  for (const p of name.split('/')) {
    if (p === '' || p === '.') continue;
    if (p === '..') return null;
    parts.push(p);
  }
  return parts.length ? parts.join('/') : null;
}

/**
 * The tar bytes of a COPY --from layer: each source's archive (as the
 * source stage's agent wrote it, entries named `basename(source)/...`)
 * renamed to land at the destination with Docker's rules: a directory's
 * contents go into dest, a file becomes dest (or dest/basename when dest
 * is a directory). Owners become root's (or --chown's), modes --chmod's.
 */
export async function* archiveCopyLayer(
  archives: readonly { source: string; archive: AsyncIterable<Uint8Array> }[],
  step: StepCopy,
  options: CopyLayerOptions = {},
): AsyncGenerator<Buffer> {
  const uid = options.owner?.uid ?? 0;
  const gid = options.owner?.gid ?? 0;
  const clamp = (t: number) => (options.epoch !== undefined && t > options.epoch ? options.epoch : t);
  const destIsDir = step.dest.endsWith('/');
  const dest = step.dest.replace(/^\/+|\/+$/g, '');
  if (destIsDir && dest) yield encodeHeader(header(`${dest}/`, '5', DIR_MODE, uid, gid, 0, clamp(options.epoch ?? 0)));
  for (const { archive } of archives) {
    let top: { name: string; dir: boolean } | null = null;
    for await (const { header: h, body } of readTar(archive)) {
      if (options.signal?.aborted) throw abortError(options.signal, 'writing a COPY layer');
      const name = h.name.replace(/\/+$/, '');
      if (top === null) top = { name, dir: h.type === '5' };
      const rel = name === top.name ? '' : name.slice(top.name.length + 1);
      // A directory source: its contents into dest. A file: dest itself, or dest/<its name>.
      const place = (r: string) =>
        top!.dir ? [dest, r].filter(Boolean).join('/') : destIsDir ? [dest, top!.name.split('/').pop()].filter(Boolean).join('/') : dest;
      if (top.dir && rel === '') continue;
      const target = place(rel);
      if (!target) continue;
      const out: TarHeader = {
        ...h,
        name: h.type === '5' ? `${target}/` : target,
        linkname: h.type === '1' ? place(h.linkname.replace(/\/+$/, '').slice(top.name.length + 1)) : h.linkname,
        mode: step.chmod !== null && h.type !== '2' ? step.chmod : h.mode,
        uid,
        gid,
        mtime: clamp(h.mtime),
        xattrs: new Map([...h.xattrs].filter(([k]) => !k.startsWith('trusted.'))),
      };
      yield encodeHeader(out);
      if (h.type === '0') {
        for await (const chunk of body) yield chunk;
        yield padding(h.size);
      }
    }
  }
  yield TAR_END;
}
