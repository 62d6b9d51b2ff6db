import { createHash, randomBytes } from 'node:crypto';
import { createReadStream, createWriteStream, type Stats } from 'node:fs';
import { lstat, mkdir, readdir, readFile, readlink, rename, rm, stat, writeFile } from 'node:fs/promises';
import { join, posix } from 'node:path';
import { Readable, Transform, Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { createGzip } from 'node:zlib';
import tar from 'tar-stream';
import { exists, writeAtomic } from './util.js';

/**
 * OCI image layouts written without Docker: a small layer writer over
 * tar-stream and a layout writer (oci-layout, index.json, blobs/sha256).
 * Everything is deterministic (fixed mtimes, fixed entry order, gzip without
 * a timestamp), so digests are stable between runs.
 */

/** 2024-01-01T00:00:00Z: every entry's mtime unless it says otherwise. */
export const FIXED_MTIME = 1_704_067_200;
const CREATED = new Date(FIXED_MTIME * 1000).toISOString();

export const MEDIA_TYPES = {
  index: 'application/vnd.oci.image.index.v1+json',
  manifest: 'application/vnd.oci.image.manifest.v1+json',
  config: 'application/vnd.oci.image.config.v1+json',
  layer: 'application/vnd.oci.image.layer.v1.tar',
  layerGzip: 'application/vnd.oci.image.layer.v1.tar+gzip',
} as const;

// ---- layers ----------------------------------------------------------------

interface EntryMeta {
  /** Path in the image; a leading '/' or './' is dropped unless `verbatim`. */
  path: string;
  /** Permission bits with setuid/setgid/sticky; defaults 0644 (files), 0755 (dirs). Note: tar-stream writes 0 as the default. */
  mode?: number;
  uid?: number;
  gid?: number;
  /** Seconds since the epoch; default FIXED_MTIME. */
  mtime?: number;
  /** Extended attributes, written as SCHILY.xattr.* PAX records. */
  xattrs?: Record<string, string>;
  /** Write `path` (and a hardlink's `target`) exactly as given, for hostile layers: '../x', '/abs'. */
  verbatim?: boolean;
}

/** One entry of a layer. Whiteouts and opaque markers are named by the path they hide. */
export type LayerEntry =
  | (EntryMeta & {
      type: 'file';
      /** The bytes; or `source` (a host file, streamed) or `stream` + `size`. */
      content?: string | Buffer;
      source?: string;
      stream?: AsyncIterable<Uint8Array>;
      size?: number;
    })
  | (EntryMeta & { type: 'dir' })
  | (EntryMeta & { type: 'symlink'; target: string })
  /** `target` is the path of an earlier entry of the same layer. */
  | (EntryMeta & { type: 'hardlink'; target: string })
  | (EntryMeta & { type: 'char' | 'block' | 'fifo'; major?: number; minor?: number })
  /** `path` is removed from the layers below: written as DIR/.wh.NAME. */
  | { type: 'whiteout'; path: string; mtime?: number }
  /** The directory `path` hides what the layers below have in it: written as PATH/.wh..wh..opq. */
  | { type: 'opaque'; path: string; mtime?: number };

export interface LayerSpec {
  entries: Iterable<LayerEntry> | AsyncIterable<LayerEntry>;
  /** Default 'gzip'. */
  compression?: 'gzip' | 'none';
  /** The history entry's created_by. */
  createdBy?: string;
}

export interface LayerInfo {
  mediaType: string;
  digest: string;
  size: number;
  diffId: string;
  /** Bytes of the uncompressed tar. */
  tarSize: number;
}

/** An entry path as written to the tar: normalized, relative, without a trailing slash. */
export function clean(path: string): string {
  const p = posix.normalize(path).replace(/^(\.?\/)+/, '');
  if (p === '' || p === '.') throw new Error(`layer entry with an empty path: ${JSON.stringify(path)}`);
  return p.replace(/\/+$/, '');
}

const TAR_TYPES = {
  file: 'file',
  dir: 'directory',
  symlink: 'symlink',
  hardlink: 'link',
  char: 'character-device',
  block: 'block-device',
  fifo: 'fifo',
} as const;

/**
 * Adds one entry to a tar pack, resolving once it is written (tar-stream
 * takes one entry at a time). `modes` holds the modes of the layer's files
 * so far: a hardlink's header repeats its target's, as tar does.
 */
async function addEntry(pack: tar.Pack, e: LayerEntry, modes: Map<string, number>): Promise<void> {
  if (e.type === 'whiteout' || e.type === 'opaque') {
    const p = clean(e.path);
    const name = e.type === 'opaque' ? `${p}/.wh..wh..opq` : posix.join(posix.dirname(p), `.wh.${posix.basename(p)}`);
    return addEntry(pack, { type: 'file', path: name, content: '', mode: 0o644, ...(e.mtime !== undefined ? { mtime: e.mtime } : {}) }, modes);
  }
  const name = e.verbatim ? e.path : clean(e.path);
  const defaultMode =
    e.type === 'dir' ? 0o755 : e.type === 'symlink' ? 0o777 : e.type === 'hardlink' ? (modes.get(e.target.replace(/^\/+/, '')) ?? 0o644) : 0o644;
  if (e.type === 'file') modes.set(name, e.mode ?? 0o644);
  const header: Partial<tar.Header> & { name: string } = {
    name: e.type === 'dir' ? `${name}/` : name,
    type: TAR_TYPES[e.type],
    mode: e.mode ?? defaultMode,
    uid: e.uid ?? 0,
    gid: e.gid ?? 0,
    mtime: new Date((e.mtime ?? FIXED_MTIME) * 1000),
  };
  if (e.xattrs && Object.keys(e.xattrs).length > 0) {
    header.pax = Object.fromEntries(Object.entries(e.xattrs).map(([k, v]) => [`SCHILY.xattr.${k}`, v]));
  }
  if (e.type === 'symlink') header.linkname = e.target;
  if (e.type === 'hardlink') header.linkname = e.verbatim ? e.target : clean(e.target);
  if (e.type === 'char' || e.type === 'block' || e.type === 'fifo') {
    header.devmajor = e.major ?? 0;
    header.devminor = e.minor ?? 0;
  }
  if (e.type === 'file' && e.content === undefined) {
    let input: AsyncIterable<Uint8Array>;
    if (e.source !== undefined) {
      header.size = e.size ?? (await stat(e.source)).size;
      input = createReadStream(e.source);
    } else if (e.stream && e.size !== undefined) {
      header.size = e.size;
      input = e.stream;
    } else {
      throw new Error(`file entry ${name} needs content, source, or stream and size`);
    }
    // The callback runs once the entry is in the pack; a size mismatch fails it.
    await new Promise<void>((resolve, reject) => {
      const sink = pack.entry(header, (err) => (err ? reject(err) : resolve()));
      sink.on('error', reject); // also emitted, for one a size mismatch
      (async () => {
        for await (const chunk of input) {
          if (!sink.write(chunk)) await new Promise<void>((r) => sink.once('drain', () => r()));
        }
        sink.end(undefined);
      })().catch((err: Error) => {
        sink.destroy(err);
        reject(err);
      });
    });
    return;
  }
  const body = e.type === 'file' ? e.content : undefined;
  await new Promise<void>((resolve, reject) => {
    const done = (err?: Error | null) => (err ? reject(err) : resolve());
    if (body !== undefined) pack.entry(header, body, done);
    else pack.entry(header, done);
  });
}

/** A Transform that hashes (sha256) and counts what passes through. */
function meter(): Transform & { digest(): string; bytes: number } {
  const hash = createHash('sha256');
  const t = new Transform({
    transform(chunk: Buffer, _enc, cb) {
      hash.update(chunk);
      t.bytes += chunk.length;
      cb(null, chunk);
    },
  }) as Transform & { digest(): string; bytes: number };
  t.bytes = 0;
  t.digest = () => `sha256:${hash.digest('hex')}`;
  return t;
}

/**
 * Writes a tar of `entries` to `out` (gzip-compressed unless 'none') and
 * returns the digests of the tar (diff_id) and of the file.
 */
export async function writeLayerFile(out: string, entries: LayerSpec['entries'], compression: 'gzip' | 'none' = 'gzip'): Promise<Omit<LayerInfo, 'mediaType'>> {
  const pack = tar.pack();
  const tarMeter = meter();
  const fileMeter = meter();
  // Level 6 with no timestamp or name in the header: the same tar gives the same bytes (with the same zlib).
  const stages = compression === 'gzip' ? [tarMeter, createGzip({ level: 6 }), fileMeter] : [tarMeter, fileMeter];
  // tar-stream's streams are streamx ones, which node's pipeline takes.
  const written = pipeline([pack as unknown as Readable, ...stages, createWriteStream(out)] as [Readable, ...Writable[]]);
  written.catch(() => {}); // observed below
  try {
    const modes = new Map<string, number>();
    for await (const e of entries) await addEntry(pack, e, modes);
    pack.finalize();
  } catch (err) {
    pack.destroy(err as Error);
    await written.catch(() => {});
    throw err;
  }
  await written;
  return { digest: fileMeter.digest(), size: fileMeter.bytes, diffId: tarMeter.digest(), tarSize: tarMeter.bytes };
}

// ---- layouts ---------------------------------------------------------------

export interface ImageConfig {
  Entrypoint?: string[];
  Cmd?: string[];
  Env?: string[];
  WorkingDir?: string;
  User?: string;
  Labels?: Record<string, string>;
}

export interface ImageSpec {
  /** The org.opencontainers.image.ref.name in index.json (the `tag` of `oci:DIR:tag`). */
  tag: string;
  layers: LayerSpec[];
  config?: ImageConfig;
  /** Default 'amd64'. */
  architecture?: string;
  /** Default 'linux'. */
  os?: string;
}

export interface BuiltImage {
  dir: string;
  tag: string;
  manifestDigest: string;
  manifestSize: number;
  configDigest: string;
  layers: LayerInfo[];
}

/** An OCI content descriptor, as index.json lists them. */
export interface Descriptor {
  mediaType: string;
  digest: string;
  size: number;
  annotations?: Record<string, string>;
  platform?: { architecture: string; os: string; variant?: string };
}

const REF_NAME = 'org.opencontainers.image.ref.name';

/** Creates the layout's skeleton (oci-layout, blobs/sha256) in `dir`. */
export async function initLayout(dir: string): Promise<void> {
  await mkdir(join(dir, 'blobs', 'sha256'), { recursive: true });
  await writeFile(join(dir, 'oci-layout'), JSON.stringify({ imageLayoutVersion: '1.0.0' }) + '\n');
}

/** Writes a blob into the layout (skipping it when present); returns its descriptor fields. */
export async function writeBlob(dir: string, data: Buffer | string): Promise<{ digest: string; size: number }> {
  const buf = typeof data === 'string' ? Buffer.from(data) : data;
  const digest = `sha256:${createHash('sha256').update(buf).digest('hex')}`;
  const path = join(dir, 'blobs', 'sha256', digest.slice(7));
  if (!(await exists(path))) await writeAtomic(path, buf);
  return { digest, size: buf.length };
}

/** Points `tag` in index.json at `desc`, replacing what the tag named before. */
export async function tagInIndex(dir: string, tag: string, desc: Descriptor): Promise<void> {
  const path = join(dir, 'index.json');
  const index = (await exists(path)) ? (JSON.parse(await readFile(path, 'utf8')) as { manifests: Descriptor[] }) : { manifests: [] as Descriptor[] };
  const manifests = index.manifests.filter((m) => m.annotations?.[REF_NAME] !== tag);
  manifests.push({ ...desc, annotations: { ...desc.annotations, [REF_NAME]: tag } });
  await writeAtomic(path, JSON.stringify({ schemaVersion: 2, mediaType: MEDIA_TYPES.index, manifests }, null, 2) + '\n');
}

/**
 * Writes an image into the OCI layout `dir` (created if needed; other
 * images in it stay) and tags it.
 */
export async function writeOciLayout(dir: string, spec: ImageSpec): Promise<BuiltImage> {
  await initLayout(dir);
  const layers: LayerInfo[] = [];
  for (const layer of spec.layers) {
    const compression = layer.compression ?? 'gzip';
    const tmp = join(dir, 'blobs', 'sha256', `.tmp-${process.pid}-${randomBytes(4).toString('hex')}`);
    try {
      const info = await writeLayerFile(tmp, layer.entries, compression);
      await rename(tmp, join(dir, 'blobs', 'sha256', info.digest.slice(7)));
      layers.push({ mediaType: compression === 'gzip' ? MEDIA_TYPES.layerGzip : MEDIA_TYPES.layer, ...info });
    } finally {
      await rm(tmp, { force: true });
    }
  }
  const config = {
    created: CREATED,
    architecture: spec.architecture ?? 'amd64',
    os: spec.os ?? 'linux',
    config: spec.config ?? {},
    rootfs: { type: 'layers', diff_ids: layers.map((l) => l.diffId) },
    history: spec.layers.map((l, i) => ({ created: CREATED, created_by: l.createdBy ?? `roost test layer ${i + 1}` })),
  };
  const configBlob = await writeBlob(dir, JSON.stringify(config));
  const manifest = {
    schemaVersion: 2,
    mediaType: MEDIA_TYPES.manifest,
    config: { mediaType: MEDIA_TYPES.config, ...configBlob },
    layers: layers.map((l) => ({ mediaType: l.mediaType, digest: l.digest, size: l.size })),
  };
  const manifestBlob = await writeBlob(dir, JSON.stringify(manifest));
  await tagInIndex(dir, spec.tag, { mediaType: MEDIA_TYPES.manifest, ...manifestBlob });
  return { dir, tag: spec.tag, manifestDigest: manifestBlob.digest, manifestSize: manifestBlob.size, configDigest: configBlob.digest, layers };
}

/**
 * Writes an image index (a multi-platform image) of images already in the
 * layout and tags it. Push it with `push(..., { all: true })`-style copies
 * (`skopeo copy --multi-arch all`), or it is narrowed to one platform.
 */
export async function writeOciIndex(
  dir: string,
  tag: string,
  images: { manifestDigest: string; manifestSize: number; platform: { architecture: string; os: string; variant?: string } }[],
): Promise<string> {
  const index = {
    schemaVersion: 2,
    mediaType: MEDIA_TYPES.index,
    manifests: images.map((i) => ({ mediaType: MEDIA_TYPES.manifest, digest: i.manifestDigest, size: i.manifestSize, platform: i.platform })),
  };
  const blob = await writeBlob(dir, JSON.stringify(index));
  await tagInIndex(dir, tag, { mediaType: MEDIA_TYPES.index, ...blob });
  return blob.digest;
}

// ---- host trees ------------------------------------------------------------

export interface TreeOptions {
  /** Prefix of the paths in the image (default none: the tree is the root). */
  prefix?: string;
  /** Keep an entry (relative path without leading '/'); a dropped directory drops its contents. */
  filter?: (path: string, st: Stats) => boolean;
  /** Keep the tree's mtimes instead of FIXED_MTIME. */
  keepMtimes?: boolean;
}

/**
 * The entries of a host directory tree read with lstat, parents before
 * children, names sorted: ownership and modes as on disk, symlinks as links,
 * files with several links as one file and hardlinks to it (by dev and
 * inode). Device nodes, fifos and sockets are left out, and so is what lies
 * under a mount point (a debootstrap killed halfway leaves /proc mounted).
 */
export async function* treeEntries(root: string, options: TreeOptions = {}): AsyncGenerator<LayerEntry> {
  const rootDev = (await lstat(root)).dev;
  const seen = new Map<string, string>();
  const prefix = options.prefix ? clean(options.prefix) + '/' : '';
  async function* walk(rel: string): AsyncGenerator<LayerEntry> {
    const names = (await readdir(join(root, rel))).sort();
    for (const name of names) {
      const r = rel ? `${rel}/${name}` : name;
      const abs = join(root, r);
      const st = await lstat(abs);
      if (options.filter && !options.filter(r, st)) continue;
      const meta = {
        path: prefix + r,
        mode: st.mode & 0o7777,
        uid: st.uid,
        gid: st.gid,
        mtime: options.keepMtimes ? Math.floor(st.mtimeMs / 1000) : FIXED_MTIME,
      };
      if (st.isDirectory()) {
        yield { type: 'dir', ...meta };
        if (st.dev === rootDev) yield* walk(r);
      } else if (st.isSymbolicLink()) {
        yield { type: 'symlink', ...meta, target: await readlink(abs) };
      } else if (st.isFile()) {
        const key = `${st.dev}:${st.ino}`;
        const first = st.nlink > 1 ? seen.get(key) : undefined;
        if (first !== undefined) {
          yield { type: 'hardlink', ...meta, target: first };
        } else {
          if (st.nlink > 1) seen.set(key, meta.path);
          yield { type: 'file', ...meta, source: abs, size: st.size };
        }
      }
    }
  }
  yield* walk('');
}

/** The entries of a tar file as layer entries (file bodies streamed: take them in order). */
export async function* tarEntries(path: string): AsyncGenerator<LayerEntry> {
  const extract = tar.extract();
  const input = createReadStream(path);
  input.pipe(extract);
  input.on('error', (e) => extract.destroy(e));
  const back: Record<string, LayerEntry['type']> = {
    file: 'file',
    directory: 'dir',
    symlink: 'symlink',
    link: 'hardlink',
    'character-device': 'char',
    'block-device': 'block',
    fifo: 'fifo',
  };
  try {
    for await (const entry of extract) {
      const h = entry.header;
      const type = back[h.type ?? 'file'];
      const meta = { path: h.name, mode: h.mode ?? 0, uid: h.uid ?? 0, gid: h.gid ?? 0, mtime: Math.floor((h.mtime?.getTime() ?? FIXED_MTIME * 1000) / 1000) };
      if (type === 'file') {
        yield { type, ...meta, stream: entry as AsyncIterable<Uint8Array>, size: h.size ?? 0 };
        entry.resume(); // the body, unless the consumer read it
        continue;
      }
      entry.resume();
      if (type === 'dir') yield { type, ...meta };
      else if (type === 'symlink' || type === 'hardlink') yield { type, ...meta, target: h.linkname ?? '' };
      else if (type === 'char' || type === 'block' || type === 'fifo') yield { type, ...meta, major: h.devmajor ?? 0, minor: h.devminor ?? 0 };
    }
  } finally {
    // The consumer may stop early.
    input.destroy();
    extract.destroy();
  }
}
