import { spawn } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { lstat, mkdir, rename, rm, stat } from 'node:fs/promises';
import { dirname, join, sep } from 'node:path';
import { Readable, Transform } from 'node:stream';
import { createGunzip } from 'node:zlib';
import { abortError, RoostError, throwIfDiskFull } from '../errors.js';
import { runTool } from '../tool.js';
import type { BlobStore } from './blobs.js';
import { applyLayer, type LayerStats } from './layer.js';
import { layerCompression, type Descriptor } from './manifest.js';

/** Bump when the way a root filesystem is built changes: cached builds are then rebuilt. */
export const ROOTFS_FORMAT = 'erofs-1';

export interface BuildRootfsOptions {
  blobs: BlobStore;
  layers: readonly Descriptor[];
  /** The config's diff_ids: each layer's uncompressed digest is checked against them. */
  diffIds: readonly string[];
  /** The filesystem image to write (written to a temp name, renamed when complete). */
  out: string;
  /** Scratch space for the unpacked tree (same filesystem as `out` is best). */
  scratch: string;
  signal?: AbortSignal;
  /** Called as each layer is applied and when the image is being written. */
  onProgress?: (step: { layer?: number; of: number; what: 'apply' | 'mkfs' }) => void;
}

export interface RootfsBuild {
  size: number;
  /** Entries not created (device nodes, FIFOs). */
  skipped: LayerStats['skipped'];
  ms: number;
}

/**
 * Builds an image's read-only root filesystem: applies its layers in order
 * onto an empty tree (whiteouts, opaque directories, hard links, owners,
 * modes, xattrs; hostile names refused, see applyLayer), checking each
 * layer's uncompressed digest against the config's diff_ids, then writes an
 * erofs image of the tree. Every sandbox of the image shares the result.
 */
export async function buildRootfs(options: BuildRootfsOptions): Promise<RootfsBuild> {
  const { blobs, layers, diffIds, out, scratch, signal } = options;
  const started = Date.now();
  if (layers.length !== diffIds.length) throw new RoostError('IMAGE', `the image has ${layers.length} layers but ${diffIds.length} diff_ids`);
  await mkdir(scratch, { recursive: true, mode: 0o700 });
  await mkdir(dirname(out), { recursive: true, mode: 0o700 });
  const tag = `${process.pid}-${randomBytes(4).toString('hex')}`;
  const tree = join(scratch, `tree-${tag}`);
  const tmpOut = `${out}.tmp-${tag}`;
  const skipped: LayerStats['skipped'] = [];
  try {
    await mkdir(tree, { mode: 0o755 });
    for (const [i, layer] of layers.entries()) {
      if (signal?.aborted) throw abortError(signal, 'building the root filesystem');
      options.onProgress?.({ layer: i + 1, of: layers.length, what: 'apply' });
      const hash = createHash('sha256');
      const counted = new Transform({
        transform(chunk: Buffer, _enc, done) {
          hash.update(chunk);
          done(null, chunk);
        },
      });
      const source = decompressed(blobs.path(layer.digest), layer.mediaType, signal);
      source.on('error', (e) => counted.destroy(e));
      const stats = await applyLayer(tree, source.pipe(counted), { layer: layer.digest, ...(signal ? { signal } : {}) });
      const diffId = `sha256:${hash.digest('hex')}`;
      if (diffId !== diffIds[i]) {
        throw new RoostError('IMAGE', `layer ${layer.digest} unpacks to ${diffId}, but the image config says ${diffIds[i]}: the image is corrupt`);
      }
      skipped.push(...stats.skipped);
      await applyXattrs(tree, stats.xattrs, signal);
    }
    options.onProgress?.({ of: layers.length, what: 'mkfs' });
    // Ownership, modes, times (the image's own, not the build's) and xattrs
    // come from the tree; a fixed UUID keeps builds of one image alike.
    await runTool('mkfs.erofs', ['--quiet', '--preserve-mtime', '-U', '00000000-0000-0000-0000-000000000000', tmpOut, tree], {
      pkg: 'erofs-utils',
      code: 'IMAGE',
      signal,
    });
    const { size } = await stat(tmpOut);
    await rename(tmpOut, out);
    return { size, skipped, ms: Date.now() - started };
  } catch (e) {
    await rm(tmpOut, { force: true });
    // A full disk (the scratch directory's, or the output's), from mkfs.erofs too: the store then builds on disk, or says so.
    throwIfDiskFull(e, dirname(tmpOut));
    if (e instanceof RoostError) throw e;
    const err = e as NodeJS.ErrnoException;
    throw new RoostError('IMAGE', `building the root filesystem failed: ${err.message}`, { cause: e });
  } finally {
    await rm(tree, { recursive: true, force: true });
  }
}

/** A layer blob as an uncompressed tar stream (zstd through the `zstd` tool: Node 20's zlib has none). */
function decompressed(path: string, mediaType: string, signal?: AbortSignal): Readable {
  const compression = layerCompression(mediaType);
  if (compression === 'none') return createReadStream(path);
  if (compression === 'gzip') {
    const gunzip = createGunzip();
    const file = createReadStream(path);
    file.on('error', (e) => gunzip.destroy(e));
    return file.pipe(gunzip);
  }
  const child = spawn('zstd', ['-d', '-c', '-q', '--', path], { stdio: ['ignore', 'pipe', 'pipe'], ...(signal ? { signal } : {}) });
  const stdout = child.stdout;
  let stderr = '';
  child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr = (stderr + d).slice(-2000)));
  child.on('error', (e: NodeJS.ErrnoException) => {
    const msg = e.code === 'ENOENT' ? 'zstd is not installed: run `roost setup` (it installs zstd)' : `zstd: ${e.message}`;
    stdout.destroy(new RoostError(e.code === 'ENOENT' ? 'SETUP_REQUIRED' : 'IMAGE', msg, { cause: e }));
  });
  child.on('exit', (code) => {
    if (code !== 0 && code !== null) stdout.destroy(new RoostError('IMAGE', `layer ${path} is not valid zstd: ${stderr.trim()}`));
  });
  return stdout;
}

/** Extended attributes Roost carries into a root filesystem; others (trusted.overlay.*, security.selinux) are dropped. */
function allowedXattr(name: string): boolean {
  return name.startsWith('user.') || name === 'security.capability' || name === 'system.posix_acl_access' || name === 'system.posix_acl_default';
}

/**
 * Applies xattrs with `setfattr -h` (Node has no setxattr), one run per
 * distinct name and value (most images carry none, a few carry the same
 * capability on several files). Not `--restore`: on tmpfs it sets the
 * attributes and still fails. Paths come from applyLayer, resolved inside the
 * tree; each parent is checked to be a real directory again here, since a
 * later entry of the same layer may have replaced one with a symlink.
 */
async function applyXattrs(tree: string, xattrs: LayerStats['xattrs'], signal?: AbortSignal): Promise<void> {
  const groups = new Map<string, { name: string; value: Buffer; paths: string[] }>();
  for (const x of xattrs) {
    if (!allowedXattr(x.name) || !(await insideTree(tree, x.path))) continue;
    const key = `${x.name}\0${x.value.toString('hex')}`;
    const group = groups.get(key) ?? { name: x.name, value: x.value, paths: [] };
    group.paths.push(`./${x.path}`);
    groups.set(key, group);
  }
  for (const { name, value, paths } of groups.values()) {
    try {
      await runTool('setfattr', ['-h', '-n', name, '-v', `0x${value.toString('hex')}`, '--', ...paths], { pkg: 'attr', code: 'IMAGE', signal, cwd: tree });
    } catch (e) {
      // A file system without xattr support (tmpfs before Linux 6.6 takes no user.*): the caller can build on disk instead.
      if (e instanceof RoostError && /Operation not supported/.test(e.message)) {
        throw new RoostError('IMAGE', `the scratch file system cannot hold the image's extended attributes: ${e.message}`, {
          cause: e,
          details: { errno: 'ENOTSUP' },
        });
      }
      throw e;
    }
  }
}

/** True when every parent of `rel` under `tree` is a real directory and the entry exists. */
async function insideTree(tree: string, rel: string): Promise<boolean> {
  const comps = rel.split(sep);
  let p = tree;
  for (const [i, c] of comps.entries()) {
    if (c === '..' || c === '') return false;
    p = join(p, c);
    const st = await lstat(p).catch(() => null);
    if (!st) return false;
    if (i < comps.length - 1 && !st.isDirectory()) return false;
  }
  return true;
}
