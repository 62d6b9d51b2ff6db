import { spawn } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { constants as fsc, createReadStream } from 'node:fs';
import { copyFile, lstat, mkdir, open, readdir, readFile, rename, rm, stat, writeFile } from 'node:fs/promises';
import { basename, dirname, join, resolve as resolvePath } from 'node:path';
import { addAbortSignal, type Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { createGunzip } from 'node:zlib';
import { z } from 'zod';
import { abortError, isRoostError, RoostError } from '../errors.js';
import { parseDigest } from './blobs.js';
import { type Descriptor, type ImageIndex, type ImageSource, layerCompression, MAX_DOCUMENT_BYTES, MediaType, parseManifest } from './manifest.js';
import { familiarImageReference, formatImageReference, type ImageReference, parseImageReference } from './reference.js';
import { normalizeEntryName, type TarEntry, TarIndex, TarWriter } from './tarfile.js';

/** One image an archive or layout names. */
export interface LocalImageRef {
  /** Its name (`docker.io/library/alpine:3.20`, a tag like `1.0`, a `docker save` RepoTag), if it has one. */
  name: string | undefined;
  /** Digest of its top-level manifest or index. */
  digest: string;
  mediaType: string;
}

/** An image source on the local disk: an OCI image layout or a `docker save` archive. */
export interface LocalImageSource extends ImageSource {
  /** The images it holds, one entry per name (an image with several names appears several times). */
  refs(): LocalImageRef[];
  /**
   * The digest to import for `name` (a name from {@link refs}, compared as
   * given and then as a normalized image reference, or a top-level digest).
   * Without a name: the only image there is. Throws NOT_FOUND for an unknown
   * name and INVALID_ARGUMENT when a name is needed, both listing the names.
   */
  resolve(name?: string): string;
}

/** An image to export: what the store holds for it. */
export interface ExportImage {
  /** The reference to record (`127.0.0.1:5000/team/app:1.0`); its tag names the image in the archive. */
  name?: string;
  manifestBytes: Buffer;
  manifestMediaType: string;
  manifestDigest: string;
  config: Descriptor;
  layers: Descriptor[];
  /** Where a blob of the image is on disk. */
  blobPath(digest: string): string;
}

export type ExportFormat = 'oci-dir' | 'oci-archive' | 'docker-archive';

export interface ExportOptions {
  /**
   * `oci-dir`: an OCI image layout directory (`dest` must not exist or be
   * empty). `oci-archive`: a tar of one. `docker-archive`: what `docker save`
   * writes, with uncompressed layers, for `docker load`. Archives replace a
   * file at `dest`.
   */
  format: ExportFormat;
  signal?: AbortSignal;
}

const REF_NAME = 'org.opencontainers.image.ref.name';
const CONTAINERD_NAME = 'io.containerd.image.name';
const DOCKER_LAYER_TAR = 'application/vnd.docker.image.rootfs.diff.tar';

const layoutSchema = z.object({ imageLayoutVersion: z.literal('1.0.0') });
const dockerManifestSchema = z
  .array(z.object({ Config: z.string(), RepoTags: z.array(z.string()).max(1000).nullish(), Layers: z.array(z.string()).max(1000) }))
  .max(1000);
const diffIdsSchema = z.object({ rootfs: z.object({ diff_ids: z.array(z.string()).max(1000) }) });

/**
 * Opens an OCI image layout, a directory or a tar of one (`skopeo copy ...
 * oci-archive:`, `docker save` of Docker 25 and later). A tar is indexed in
 * place, never extracted. Blobs are found only at `blobs/<alg>/<hex>` of
 * their digest; symlinks, and entries named with `..` or an absolute path,
 * do not count. Throws NOT_FOUND when `path` does not exist and IMAGE when
 * it is not a valid layout.
 */
export async function openOciLayout(path: string): Promise<LocalImageSource> {
  const abs = resolvePath(path);
  const st = await statInput(abs);
  if (st.isDirectory()) return openLayout(directoryFiles(abs), `oci:${abs}`);
  if (!st.isFile()) throw new RoostError('INVALID_ARGUMENT', `${abs} is neither a directory nor a file`);
  return openLayout(tarFiles(await TarIndex.open(abs)), `oci-archive:${abs}`);
}

/**
 * Opens a `docker save` archive. When it holds an OCI layout (Docker 25 and
 * later), that is read as is. Otherwise (the legacy form: `manifest.json`,
 * a config file and a layer tar per layer) a Docker schema-2 manifest is
 * made for each image: the config's digest is that of its bytes, each
 * layer's that of its tar as stored (uncompressed, or gzip), and an
 * uncompressed layer's digest must equal the config's diff_id (a gzip one's
 * content is checked the same way). Every layer is read once here, to digest
 * it. Paths in `manifest.json` must stay inside the archive.
 */
export async function openDockerArchive(path: string, options: { signal?: AbortSignal } = {}): Promise<LocalImageSource> {
  const abs = resolvePath(path);
  const st = await statInput(abs);
  if (!st.isFile()) throw new RoostError('INVALID_ARGUMENT', `${abs} is not a file; a docker save archive is a tar file`);
  const description = `docker-archive:${abs}`;
  const tar = await TarIndex.open(abs);
  if (tar.file('oci-layout') && tar.file('index.json')) return openLayout(tarFiles(tar), description);

  const manifestEntry = tar.file('manifest.json');
  if (!manifestEntry) throw new RoostError('IMAGE', `${description} is not a docker save archive (it has no manifest.json)`);
  const parsed = dockerManifestSchema.safeParse(
    parseDocument(await readCapped(tar, manifestEntry, `${description}: manifest.json`), `${description}: manifest.json`),
  );
  if (!parsed.success)
    throw new RoostError('IMAGE', `${description}: invalid manifest.json: ${parsed.error.issues.map((i) => `${i.path.join('.')}: ${i.message}`).join('; ')}`);

  const lookup = (p: string): TarEntry => {
    if (normalizeEntryName(p) === undefined)
      throw new RoostError('IMAGE', `${description}: manifest.json names ${JSON.stringify(p)}, a path outside the archive; refused`);
    const entry = tar.fileFollowing(p);
    if (!entry) throw new RoostError('IMAGE', `${description}: manifest.json names ${JSON.stringify(p)}, which the archive does not contain`);
    return entry;
  };
  const layerDigests = new Map<TarEntry, LayerDigests>();
  const blobs = new Map<string, TarEntry>();
  const manifests = new Map<string, Buffer>();
  const refs: NamedRef[] = [];
  for (const image of parsed.data) {
    const configEntry = lookup(image.Config);
    const layerEntries = image.Layers.map(lookup);
    const configBytes = await readCapped(tar, configEntry, `${description}: ${image.Config}`);
    const diffIds = diffIdsSchema.safeParse(parseDocument(configBytes, `${description}: ${image.Config}`));
    if (!diffIds.success) throw new RoostError('IMAGE', `${description}: ${image.Config} is not an image config (no rootfs.diff_ids)`);
    const expected = diffIds.data.rootfs.diff_ids;
    if (expected.length !== image.Layers.length) {
      throw new RoostError('IMAGE', `${description}: ${image.Config} lists ${expected.length} layers but manifest.json has ${image.Layers.length}`);
    }
    const layers: Descriptor[] = [];
    for (const [i, layerPath] of image.Layers.entries()) {
      const entry = layerEntries[i]!;
      let d = layerDigests.get(entry);
      if (!d) layerDigests.set(entry, (d = await digestLayer(tar, entry, layerPath, description, options.signal)));
      if (d.diffId !== expected[i]) {
        throw new RoostError(
          'IMAGE',
          `${description}: layer ${layerPath} has content ${d.diffId} but the image config says ${expected[i]}; the archive is corrupt`,
        );
      }
      layers.push({ mediaType: d.gzip ? MediaType.dockerLayerGzip : DOCKER_LAYER_TAR, digest: d.digest, size: entry.size });
      blobs.set(d.digest, entry);
    }
    const configDigest = sha256(configBytes);
    blobs.set(configDigest, configEntry);
    const manifest = Buffer.from(
      JSON.stringify({
        schemaVersion: 2,
        mediaType: MediaType.dockerManifest,
        config: { mediaType: MediaType.dockerConfig, size: configBytes.length, digest: configDigest },
        layers,
      }),
    );
    const digest = sha256(manifest);
    manifests.set(digest, manifest);
    const tags = image.RepoTags ?? [];
    for (const tag of tags.length > 0 ? tags : [undefined]) refs.push({ names: tag === undefined ? [] : [tag], digest, mediaType: MediaType.dockerManifest });
  }

  return {
    description,
    refs: () => publicRefs(refs),
    resolve: (name?: string) => resolveName(refs, name, description),
    getManifest: async (tagOrDigest: string) => {
      const digest = isDigest(tagOrDigest) ? tagOrDigest : resolveName(refs, tagOrDigest, description);
      const bytes = manifests.get(digest);
      if (!bytes) throw new RoostError('IMAGE', `${description} has no manifest ${digest}`);
      return { bytes, mediaType: MediaType.dockerManifest };
    },
    openBlob: async (descriptor: Descriptor, signal?: AbortSignal) => {
      const entry = blobs.get(descriptor.digest);
      if (!entry) throw new RoostError('IMAGE', `blob ${descriptor.digest} is not in ${description}`);
      checkSize(entry.size, descriptor, description);
      return tar.stream(entry, signal);
    },
  };
}

/**
 * Exports an image to `dest` as an OCI layout directory, an OCI archive or a
 * `docker save` archive (see {@link ExportOptions}). Everything is written
 * under a temporary name beside `dest` and renamed into place at the end: a
 * failed or aborted export leaves nothing. For `docker-archive`, gzip and
 * zstd layers are decompressed on the way (zstd with the `zstd` program) and
 * checked against the config's diff_ids; the archive's manifest is then not
 * the original one, but the image ID (the config digest) is the same.
 */
export async function writeOciLayout(image: ExportImage, dest: string, options: ExportOptions): Promise<void> {
  const { algorithm, hex } = parseDigest(image.manifestDigest);
  if (createHash(algorithm).update(image.manifestBytes).digest('hex') !== hex) {
    throw new RoostError('INVALID_ARGUMENT', `the manifest bytes do not have the digest ${image.manifestDigest}`);
  }
  const ref = image.name === undefined ? undefined : parseImageReference(image.name);
  const target = resolvePath(dest);
  const existing = await lstat(target).catch(() => null);
  if (options.format === 'oci-dir') {
    if (existing && (!existing.isDirectory() || (await readdir(target)).length > 0)) {
      throw new RoostError('INVALID_ARGUMENT', `${target} exists and is not an empty directory`);
    }
  } else if (existing?.isDirectory()) {
    throw new RoostError('INVALID_ARGUMENT', `${target} is a directory; an archive is written to a file`);
  }

  const tmp = join(dirname(target), `.${basename(target)}.roost-tmp-${process.pid}-${randomBytes(6).toString('hex')}`);
  const { signal } = options;
  for (const blob of [image.config, ...image.layers]) {
    parseDigest(blob.digest);
    const st = await stat(image.blobPath(blob.digest)).catch(() => null);
    if (!st?.isFile()) throw new RoostError('NOT_FOUND', `blob ${blob.digest} of the image is not at ${image.blobPath(blob.digest)}`);
    checkExportedSize(st.size, blob);
  }
  try {
    switch (options.format) {
      case 'oci-dir':
        await mkdir(tmp, { mode: 0o755 });
        for (const file of layoutFiles(image, ref)) {
          if (signal?.aborted) throw abortError(signal, `exporting to ${target}`);
          const path = join(tmp, file.name);
          await mkdir(dirname(path), { recursive: true });
          if (file.bytes) {
            await writeFile(path, file.bytes, { flag: 'wx' });
          } else {
            await copyFile(image.blobPath(file.blob.digest), path, fsc.COPYFILE_EXCL | fsc.COPYFILE_FICLONE);
          }
        }
        break;
      case 'oci-archive':
        await writeTar(tmp, async (tar) => {
          for (const file of layoutFiles(image, ref)) {
            if (file.bytes) await tar.add(file.name, [file.bytes], signal);
            else checkExportedSize(await tar.add(file.name, openSource(image, file.blob, signal), signal), file.blob);
          }
        });
        break;
      case 'docker-archive':
        await writeTar(tmp, (tar) => writeDockerArchive(tar, image, ref, signal));
        break;
      default:
        throw new RoostError('INVALID_ARGUMENT', `unknown export format ${JSON.stringify(options.format)}`);
    }
    await rename(tmp, target);
  } catch (e) {
    await rm(tmp, { recursive: true, force: true });
    if (e instanceof RoostError) throw e;
    if (signal?.aborted) throw abortError(signal, `exporting to ${target}`);
    const err = e as NodeJS.ErrnoException;
    if (err.code === 'ENOENT' && err.path !== undefined && dirname(err.path) === dirname(target)) {
      throw new RoostError('NOT_FOUND', `cannot write ${target}: the directory ${dirname(target)} does not exist`, { cause: e });
    }
    if (err.code === 'ENOTEMPTY' || err.code === 'EEXIST')
      throw new RoostError('INVALID_ARGUMENT', `${target} appeared while it was being written`, { cause: e });
    throw new RoostError('IMAGE', `exporting to ${target} failed: ${err.message}`, { cause: e });
  }
}

// ---- reading ----

/** Read access to a layout's files, whether in a directory or a tar. */
interface LayoutFiles {
  /** A regular file's size, or undefined when there is none by that name. */
  size(name: string): Promise<number | undefined>;
  /** A regular file's bytes (`what` names it in errors), or undefined; IMAGE when over {@link MAX_DOCUMENT_BYTES}. */
  read(name: string, what: string): Promise<Buffer | undefined>;
  /** Streams a regular file, or undefined when there is none by that name. */
  stream(name: string, signal?: AbortSignal): Promise<Readable | undefined>;
}

/** An image as an index or archive names it; `names` holds every name it is known by. */
interface NamedRef {
  names: string[];
  digest: string;
  mediaType: string;
}

interface LayerDigests {
  digest: string;
  diffId: string;
  gzip: boolean;
}

async function statInput(path: string) {
  try {
    return await stat(path);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') throw new RoostError('NOT_FOUND', `${path} does not exist`, { cause: e });
    throw new RoostError('INVALID_ARGUMENT', `cannot read ${path}: ${(e as Error).message}`, { cause: e });
  }
}

async function openLayout(files: LayoutFiles, description: string): Promise<LocalImageSource> {
  const marker = await files.read('oci-layout', `${description}: oci-layout`);
  if (!marker) throw new RoostError('IMAGE', `${description} is not an OCI image layout (it has no oci-layout file)`);
  if (!layoutSchema.safeParse(parseDocument(marker, `${description}: oci-layout`)).success) {
    throw new RoostError('IMAGE', `${description}: oci-layout does not declare imageLayoutVersion 1.0.0`);
  }
  const indexBytes = await files.read('index.json', `${description}: index.json`);
  if (!indexBytes) throw new RoostError('IMAGE', `${description} is not an OCI image layout (it has no index.json)`);
  let parsed: ReturnType<typeof parseManifest>;
  try {
    parsed = parseManifest(indexBytes, MediaType.ociIndex);
  } catch (e) {
    throw isRoostError(e) ? new RoostError(e.code, `${description}: index.json: ${e.message}`, { cause: e }) : e;
  }
  if (parsed.kind !== 'index') throw new RoostError('IMAGE', `${description}: index.json is not an image index`);
  const index: ImageIndex = parsed.index;
  const refs: NamedRef[] = index.manifests.map((m) => ({
    names: [m.annotations?.[CONTAINERD_NAME], m.annotations?.[REF_NAME]].filter((n): n is string => !!n),
    digest: m.digest,
    mediaType: m.mediaType,
  }));

  return {
    description,
    refs: () => publicRefs(refs),
    resolve: (name?: string) => resolveName(refs, name, description),
    getManifest: async (tagOrDigest: string) => {
      const digest = isDigest(tagOrDigest) ? tagOrDigest : resolveName(refs, tagOrDigest, description);
      const bytes = await files.read(blobName(digest), `manifest ${digest}`);
      if (!bytes) throw missingBlob(digest, description);
      const { algorithm, hex } = parseDigest(digest);
      if (createHash(algorithm).update(bytes).digest('hex') !== hex)
        throw new RoostError('IMAGE', `${description}: manifest ${digest} does not match its digest (corrupt or tampered)`);
      const mediaType = index.manifests.find((m) => m.digest === digest)?.mediaType;
      return mediaType === undefined ? { bytes } : { bytes, mediaType };
    },
    openBlob: async (descriptor: Descriptor, signal?: AbortSignal) => {
      const name = blobName(descriptor.digest);
      const size = await files.size(name);
      if (size === undefined) throw missingBlob(descriptor.digest, description);
      checkSize(size, descriptor, description);
      const stream = await files.stream(name, signal);
      if (!stream) throw missingBlob(descriptor.digest, description);
      return stream;
    },
  };
}

/** Files of a layout directory. The last component is never followed if it is a symlink. */
function directoryFiles(root: string): LayoutFiles {
  const openFile = async (name: string) => {
    try {
      const fh = await open(join(root, name), fsc.O_RDONLY | fsc.O_NOFOLLOW);
      const st = await fh.stat();
      if (st.isFile()) return { fh, size: st.size };
      await fh.close();
      return undefined;
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      if (code === 'ENOENT' || code === 'ELOOP' || code === 'ENOTDIR') return undefined;
      throw new RoostError('IMAGE', `cannot read ${join(root, name)}: ${(e as Error).message}`, { cause: e });
    }
  };
  return {
    size: async (name) => {
      const f = await openFile(name);
      await f?.fh.close();
      return f?.size;
    },
    read: async (name, what) => {
      const f = await openFile(name);
      if (!f) return undefined;
      try {
        if (f.size > MAX_DOCUMENT_BYTES) throw tooBig(what, f.size);
        return await f.fh.readFile();
      } finally {
        await f.fh.close();
      }
    },
    stream: async (name, signal) => {
      const f = await openFile(name);
      if (!f) return undefined;
      const stream = f.fh.createReadStream({ highWaterMark: 1 << 20 });
      return signal ? addAbortSignal(signal, stream) : stream;
    },
  };
}

/** Files of a layout in a tar: regular-file entries only. */
function tarFiles(tar: TarIndex): LayoutFiles {
  return {
    size: async (name) => tar.file(name)?.size,
    read: async (name, what) => {
      const entry = tar.file(name);
      return entry ? readCapped(tar, entry, what) : undefined;
    },
    stream: async (name, signal) => {
      const entry = tar.file(name);
      return entry ? tar.stream(entry, signal) : undefined;
    },
  };
}

async function readCapped(tar: TarIndex, entry: TarEntry, what: string): Promise<Buffer> {
  if (entry.size > MAX_DOCUMENT_BYTES) throw tooBig(what, entry.size);
  return tar.read(entry);
}

function tooBig(what: string, size: number): RoostError {
  return new RoostError('IMAGE', `${what} is ${size} bytes, over the ${MAX_DOCUMENT_BYTES}-byte limit for a JSON document; refused`);
}

function parseDocument(bytes: Buffer, what: string): unknown {
  try {
    return JSON.parse(bytes.toString('utf8'));
  } catch (e) {
    throw new RoostError('IMAGE', `${what} is not valid JSON: ${(e as Error).message}`, { cause: e });
  }
}

/** A layer's digest as stored and its content digest (diff_id), read in one pass. */
async function digestLayer(tar: TarIndex, entry: TarEntry, name: string, description: string, signal?: AbortSignal): Promise<LayerDigests> {
  const head = entry.size >= 2 ? await tar.read({ offset: entry.offset, size: 2 }) : Buffer.alloc(0);
  const gzip = head[0] === 0x1f && head[1] === 0x8b;
  const stored = createHash('sha256');
  const content = createHash('sha256');
  try {
    if (gzip) {
      await pipeline(
        tar.stream(entry, signal),
        async function* (source: AsyncIterable<Buffer>) {
          for await (const chunk of source) {
            stored.update(chunk);
            yield chunk;
          }
        },
        createGunzip(),
        async (source: AsyncIterable<Buffer>) => {
          for await (const chunk of source) content.update(chunk);
        },
      );
    } else {
      for await (const chunk of tar.stream(entry, signal)) stored.update(chunk as Buffer);
    }
  } catch (e) {
    if (isRoostError(e)) throw e;
    if (signal?.aborted) throw abortError(signal, `reading ${description}`);
    throw new RoostError('IMAGE', `${description}: layer ${name} could not be read: ${(e as Error).message}`, { cause: e });
  }
  const digest = `sha256:${stored.digest('hex')}`;
  return { digest, diffId: gzip ? `sha256:${content.digest('hex')}` : digest, gzip };
}

function publicRefs(refs: NamedRef[]): LocalImageRef[] {
  return refs.map((r) => ({ name: r.names[0], digest: r.digest, mediaType: r.mediaType }));
}

/** Looks a name up among refs: as given, then as a normalized reference (`alpine` matches `alpine:latest`). */
function resolveName(refs: NamedRef[], name: string | undefined, description: string): string {
  const unique = (rs: NamedRef[]) => [...new Set(rs.map((r) => r.digest))];
  const listing = () => refs.map((r) => r.names[0] ?? `${r.digest} (unnamed)`).join(', ');
  if (name === undefined) {
    const digests = unique(refs);
    if (digests.length === 1) return digests[0]!;
    if (digests.length === 0) throw new RoostError('IMAGE', `${description} holds no images`);
    throw new RoostError('INVALID_ARGUMENT', `${description} holds ${digests.length} images; name one of: ${listing()}`);
  }
  if (refs.some((r) => r.digest === name)) return name;
  let matches = refs.filter((r) => r.names.includes(name));
  if (matches.length === 0) {
    const wanted = normalizedReference(name);
    if (wanted !== undefined) matches = refs.filter((r) => r.names.some((n) => normalizedReference(n) === wanted));
  }
  const digests = unique(matches);
  if (digests.length === 1) return digests[0]!;
  if (digests.length > 1) throw new RoostError('IMAGE', `${description} has ${digests.length} different images named ${JSON.stringify(name)}`);
  throw new RoostError('NOT_FOUND', `${description} has no image named ${JSON.stringify(name)} (it has: ${listing() || 'none'})`);
}

function normalizedReference(name: string): string | undefined {
  try {
    return formatImageReference(parseImageReference(name));
  } catch {
    return undefined;
  }
}

function isDigest(s: string): boolean {
  try {
    parseDigest(s);
    return true;
  } catch {
    return false;
  }
}

/** The one place a blob is looked for: `blobs/<alg>/<hex>` of a validated digest. */
function blobName(digest: string): string {
  const { algorithm, hex } = parseDigest(digest);
  return `blobs/${algorithm}/${hex}`;
}

function missingBlob(digest: string, description: string): RoostError {
  return new RoostError('IMAGE', `blob ${digest} is referenced but missing from ${description}`);
}

function checkSize(actual: number, descriptor: Descriptor, description: string): void {
  if (actual !== descriptor.size) {
    throw new RoostError('IMAGE', `blob ${descriptor.digest} is ${actual} bytes in ${description} but its descriptor says ${descriptor.size}`);
  }
}

// ---- writing ----

type LayoutFile = { name: string; bytes: Buffer; blob?: undefined } | { name: string; bytes?: undefined; blob: Descriptor };

/** The files of an OCI layout holding `image`, blobs once each. */
function layoutFiles(image: ExportImage, ref: ImageReference | undefined): LayoutFile[] {
  const annotations: Record<string, string> = {};
  if (ref) {
    annotations[CONTAINERD_NAME] = formatImageReference(ref);
    if (ref.tag !== undefined) annotations[REF_NAME] = ref.tag;
  }
  const index = {
    schemaVersion: 2,
    mediaType: MediaType.ociIndex,
    manifests: [
      {
        mediaType: image.manifestMediaType,
        digest: image.manifestDigest,
        size: image.manifestBytes.length,
        ...(ref ? { annotations } : {}),
      },
    ],
  };
  const files: LayoutFile[] = [
    { name: 'oci-layout', bytes: Buffer.from(JSON.stringify({ imageLayoutVersion: '1.0.0' })) },
    { name: 'index.json', bytes: Buffer.from(JSON.stringify(index)) },
    { name: blobName(image.manifestDigest), bytes: image.manifestBytes },
  ];
  const seen = new Set([image.manifestDigest]);
  for (const blob of [image.config, ...image.layers]) {
    if (seen.has(blob.digest)) continue;
    seen.add(blob.digest);
    files.push({ name: blobName(blob.digest), blob });
  }
  return files;
}

async function writeTar(path: string, fill: (tar: TarWriter) => Promise<void>): Promise<void> {
  const tar = await TarWriter.create(path);
  try {
    await fill(tar);
    await tar.finish();
  } catch (e) {
    await tar.discard();
    throw e;
  }
}

/** `docker save` form: `<config hex>.json`, `<diff_id hex>.tar` per layer, manifest.json. */
async function writeDockerArchive(tar: TarWriter, image: ExportImage, ref: ImageReference | undefined, signal?: AbortSignal): Promise<void> {
  if (image.config.size > MAX_DOCUMENT_BYTES) throw tooBig(`image config ${image.config.digest}`, image.config.size);
  const config = await readFile(image.blobPath(image.config.digest));
  const parsed = diffIdsSchema.safeParse(parseDocument(config, `image config ${image.config.digest}`));
  if (!parsed.success) throw new RoostError('IMAGE', `image config ${image.config.digest} has no rootfs.diff_ids`);
  const diffIds = parsed.data.rootfs.diff_ids;
  if (diffIds.length !== image.layers.length)
    throw new RoostError('IMAGE', `the image config lists ${diffIds.length} layers but the manifest has ${image.layers.length}`);

  const configName = `${parseDigest(image.config.digest).hex}.json`;
  await tar.add(configName, [config], signal);
  const written = new Set<string>();
  const layerNames: string[] = [];
  for (const [i, layer] of image.layers.entries()) {
    const diffId = diffIds[i]!;
    const { algorithm, hex } = parseDigest(diffId);
    const name = `${hex}.tar`;
    layerNames.push(name);
    if (written.has(name)) continue;
    written.add(name);
    const hash = createHash(algorithm);
    await tar.add(
      name,
      (async function* () {
        for await (const chunk of decompressed(image, layer, signal)) {
          hash.update(chunk);
          yield chunk;
        }
      })(),
      signal,
    );
    const actual = `${algorithm}:${hash.digest('hex')}`;
    if (actual !== diffId)
      throw new RoostError('IMAGE', `layer ${layer.digest} decompresses to ${actual}, but the image config says ${diffId}; the store is corrupt`);
  }
  const repoTags = ref?.tag !== undefined ? [familiarImageReference({ registry: ref.registry, repository: ref.repository, tag: ref.tag })] : [];
  const manifest = [{ Config: configName, RepoTags: repoTags, Layers: layerNames }];
  await tar.add('manifest.json', [Buffer.from(JSON.stringify(manifest))], signal);
}

/** A layer's uncompressed tar stream. */
function decompressed(image: ExportImage, layer: Descriptor, signal?: AbortSignal): AsyncIterable<Uint8Array> {
  switch (layerCompression(layer.mediaType)) {
    case 'none':
      return openSource(image, layer, signal);
    case 'gzip': {
      const gunzip = createGunzip();
      pipeline(openSource(image, layer, signal), gunzip).catch((e: unknown) => gunzip.destroy(e as Error));
      return gunzip;
    }
    case 'zstd':
      return zstdDecompress(image.blobPath(layer.digest), layer.digest, signal);
  }
}

/** Node 20's zlib has no zstd: the `zstd` program decompresses. */
async function* zstdDecompress(path: string, digest: string, signal?: AbortSignal): AsyncGenerator<Buffer> {
  const child = spawn('zstd', ['-dcq', '--', path], { stdio: ['ignore', 'pipe', 'pipe'], ...(signal ? { signal } : {}) });
  let stderr = '';
  child.stderr.on('data', (d: Buffer) => {
    if (stderr.length < 4096) stderr += d.toString();
  });
  const exited = new Promise<number | null>((resolve, reject) => {
    child.on('error', reject);
    child.on('close', resolve);
  });
  exited.catch(() => {});
  try {
    for await (const chunk of child.stdout) yield chunk as Buffer;
    const code = await exited;
    if (code !== 0) throw new RoostError('IMAGE', `zstd could not decompress layer ${digest}: ${stderr.trim() || `exit code ${code}`}`);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT')
      throw new RoostError('SETUP_REQUIRED', 'the zstd program is needed to decompress zstd layers: install it (apt-get install zstd)', { cause: e });
    throw e;
  } finally {
    if (child.exitCode === null) child.kill();
  }
}

function openSource(image: ExportImage, blob: Descriptor, signal?: AbortSignal): Readable {
  return createReadStream(image.blobPath(blob.digest), { highWaterMark: 1 << 20, ...(signal ? { signal } : {}) });
}

function checkExportedSize(size: number, blob: Descriptor): void {
  if (size !== blob.size)
    throw new RoostError('IMAGE', `blob ${blob.digest} is ${size} bytes on disk but its descriptor says ${blob.size}; the store is corrupt`);
}

function sha256(bytes: Buffer): string {
  return `sha256:${createHash('sha256').update(bytes).digest('hex')}`;
}
