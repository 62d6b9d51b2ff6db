import { createHash, randomBytes } from 'node:crypto';
import { constants as fsc } from 'node:fs';
import { mkdir, open, rename, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { createGzip } from 'node:zlib';
import { abortError, RoostError } from '../errors.js';
import type { BlobStore } from '../image/blobs.js';
import { encodeHeader, padding, readTar, TAR_END, type TarHeader } from './tar-codec.js';

/*
 * Layers of the image builder: a RUN step's changes as the agent archives
 * them (overlayfs' upper directory) turned into an OCI layer, and layers
 * written into the image store's blobs. Both deterministic: the same
 * entries give the same bytes, and with SOURCE_DATE_EPOCH every mtime later
 * than it is clamped to it, so equal steps give equal digests.
 */

/** The media type of the layers the builder writes. */
export const LAYER_MEDIA_TYPE = 'application/vnd.oci.image.layer.v1.tar+gzip';

/** A layer written into the blob store. */
export interface LayerBlob {
  /** sha256 of the compressed blob. */
  digest: string;
  /** sha256 of the uncompressed tar (the config's rootfs.diff_ids). */
  diffId: string;
  size: number;
  mediaType: string;
}

/** Options of the layer writers. */
export interface LayerOptions {
  /** SOURCE_DATE_EPOCH: mtimes after it become it. */
  epoch?: number | undefined;
  signal?: AbortSignal | undefined;
}

const OPAQUE = '.wh..wh..opq';
const WHITEOUT = '.wh.';

/**
 * An OCI layer (uncompressed tar bytes) from the agent's archive of a sealed
 * overlay layer: the top component (the layer's directory) dropped; a
 * character device 0:0 (overlayfs' whiteout) becomes `.wh.<name>`; a
 * directory marked `trusted.overlay.opaque=y` gets `<dir>/.wh..wh..opq`;
 * overlayfs' own attributes (trusted.overlay.*) dropped, others (file
 * capabilities, user.*) kept; hard links kept. Yields nothing but the end
 * marker when the step changed nothing (see `isEmptyLayer`).
 */
export async function* ociLayerFromOverlay(source: AsyncIterable<Uint8Array>, options: LayerOptions = {}): AsyncGenerator<Buffer> {
  const clamp = (t: number) => (options.epoch !== undefined && t > options.epoch ? options.epoch : t);
  for await (const { header, body } of readTar(source)) {
    if (options.signal?.aborted) throw abortError(options.signal, 'reading a layer');
    const name = stripTop(header.name);
    if (name === null) continue;
    // The guest is hostile: an entry must stay inside the layer.
    if (name.startsWith('/') || name.split('/').includes('..') || (header.type === '1' && header.linkname.split('/').includes('..'))) {
      throw new RoostError('AGENT', `the guest's archive of a layer has an entry outside it (${JSON.stringify(header.name.slice(0, 200))}); refused`);
    }
    if (header.type === '3' && header.devmajor === 0 && header.devminor === 0) {
      yield encodeHeader(marker(withWhiteout(name), clamp(header.mtime)));
      continue;
    }
    const xattrs = new Map([...header.xattrs].filter(([k]) => !k.startsWith('trusted.overlay.')));
    const opaque = header.type === '5' && header.xattrs.get('trusted.overlay.opaque')?.toString('latin1') === 'y';
    const linkname = header.type === '1' ? (stripTop(header.linkname) ?? header.linkname) : header.linkname;
    const out: TarHeader = { ...header, name: header.type === '5' ? `${name}/` : name, linkname, mtime: clamp(header.mtime), xattrs };
    yield encodeHeader(out);
    if (header.type === '0') {
      for await (const chunk of body) yield chunk;
      yield padding(header.size);
    }
    if (opaque) yield encodeHeader(marker(`${name}/${OPAQUE}`, clamp(header.mtime)));
  }
  yield TAR_END;
}

/** A whiteout or opaque marker: an empty regular file, mode 0, root's. */
function marker(name: string, mtime: number): TarHeader {
  return { name, type: '0', mode: 0, uid: 0, gid: 0, size: 0, mtime, linkname: '', devmajor: 0, devminor: 0, xattrs: new Map() };
}

function withWhiteout(name: string): string {
  const slash = name.lastIndexOf('/');
  return `${name.slice(0, slash + 1)}${WHITEOUT}${name.slice(slash + 1)}`;
}

/** `2/etc/x` -> `etc/x`; the top itself (`2/`, `./`) -> null. */
function stripTop(name: string): string | null {
  const clean = name.replace(/\/+$/, '');
  const slash = clean.indexOf('/');
  if (slash === -1) return null;
  const rest = clean.slice(slash + 1).replace(/^\/+/, '');
  return rest === '' ? null : rest;
}

/** The size of an archive with no entry (just the end marker). */
export const EMPTY_TAR_BYTES = TAR_END.length;

/**
 * Writes a layer (uncompressed tar bytes) into the blob store, gzipped:
 * hashed on the way in and on the way out, renamed into place once whole.
 * Returns null when the layer holds no entry (the step changed nothing: an
 * empty layer, recorded in the image's history only).
 */
export async function writeLayer(blobs: BlobStore, tar: AsyncIterable<Uint8Array>, options: LayerOptions = {}): Promise<LayerBlob | null> {
  const dir = join(blobs.dir, 'sha256');
  await mkdir(dir, { recursive: true, mode: 0o700 });
  // The name sweepTemp recognizes: a build that dies leaves nothing behind.
  const tmp = join(dir, `.tmp-${process.pid}-${randomBytes(6).toString('hex')}`);
  const diff = createHash('sha256');
  const digest = createHash('sha256');
  let rawBytes = 0;
  let size = 0;
  const fh = await open(tmp, fsc.O_WRONLY | fsc.O_CREAT | fsc.O_EXCL, 0o600);
  try {
    // Level 6 as Docker's and containerd's writers; Node writes no name and a zero mtime in the gzip header.
    const gzip = createGzip({ level: 6 });
    const feed = (async () => {
      try {
        for await (const chunk of tar) {
          if (options.signal?.aborted) throw abortError(options.signal, 'writing a layer');
          diff.update(chunk);
          rawBytes += chunk.length;
          if (!gzip.write(chunk)) await new Promise((r) => gzip.once('drain', r));
        }
        gzip.end();
      } catch (e) {
        gzip.destroy(e as Error);
        throw e;
      }
    })();
    for await (const chunk of gzip as AsyncIterable<Buffer>) {
      digest.update(chunk);
      size += chunk.length;
      await fh.write(chunk);
    }
    await feed;
    await fh.sync();
  } catch (e) {
    await fh.close().catch(() => {});
    await rm(tmp, { force: true });
    throw e instanceof RoostError ? e : new RoostError('IMAGE', `writing a layer failed: ${(e as Error).message}`, { cause: e });
  }
  await fh.close();
  if (rawBytes <= EMPTY_TAR_BYTES) {
    await rm(tmp, { force: true });
    return null;
  }
  const blob: LayerBlob = { digest: `sha256:${digest.digest('hex')}`, diffId: `sha256:${diff.digest('hex')}`, size, mediaType: LAYER_MEDIA_TYPE };
  await rename(tmp, blobs.path(blob.digest));
  return blob;
}
