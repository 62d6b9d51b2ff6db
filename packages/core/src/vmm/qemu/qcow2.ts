import { closeSync, openSync, readSync } from 'node:fs';
import { dirname, resolve } from 'node:path';
import { RoostError } from '../../errors.js';

/** qcow2's magic, `QFI\xfb`. */
const QCOW2_MAGIC = 0x514649fb;
/** The header extension that names the backing file's format. */
const BACKING_FORMAT_EXTENSION = 0xe2792aca;
/** Enough of an image to hold its header, extensions and backing file name (qcow2 keeps them in the first cluster). */
const HEADER_BYTES = 64 * 1024;
/** Deeper chains than this are refused (a loop, or a hostile image). */
const MAX_CHAIN = 16;

/** One image of a disk's backing chain. */
export interface ImageLayer {
  path: string;
  format: 'qcow2' | 'raw';
}

function readHeader(path: string): Buffer {
  const fd = openSync(path, 'r');
  try {
    const buf = Buffer.alloc(HEADER_BYTES);
    const n = readSync(fd, buf, 0, HEADER_BYTES, 0);
    return buf.subarray(0, n);
  } finally {
    closeSync(fd);
  }
}

/** A qcow2 image's virtual size in bytes, or null when `path` is not a readable qcow2 image. */
export function qcow2VirtualSize(path: string): number | null {
  try {
    const header = readHeader(path);
    if (header.length < 32 || header.readUInt32BE(0) !== QCOW2_MAGIC) return null;
    return Number(header.readBigUInt64BE(24));
  } catch {
    return null;
  }
}

/** The backing file a qcow2 header names (resolved against the image's directory) and its format, or null. */
function backingOf(path: string, header: Buffer): ImageLayer | null {
  const offset = Number(header.readBigUInt64BE(8));
  const size = header.readUInt32BE(16);
  if (offset === 0 || size === 0) return null;
  if (offset + size > header.length) throw new RoostError('VMM', `the backing file name of ${path} is outside its first ${HEADER_BYTES} bytes`);
  const name = header.toString('utf8', offset, offset + size);
  let format: ImageLayer['format'] | null = null;
  // Version 3 headers give their length (offset 100); version 2 headers are 72 bytes.
  const version = header.readUInt32BE(4);
  let ext = version >= 3 ? header.readUInt32BE(100) : 72;
  while (ext + 8 <= header.length) {
    const type = header.readUInt32BE(ext);
    const len = header.readUInt32BE(ext + 4);
    if (type === 0) break;
    if (type === BACKING_FORMAT_EXTENSION) {
      const f = header.toString('utf8', ext + 8, ext + 8 + len);
      if (f !== 'qcow2' && f !== 'raw') throw new RoostError('VMM', `${path}: backing format "${f}" is not one Roost makes`);
      format = f;
    }
    ext += 8 + Math.ceil(len / 8) * 8;
  }
  const backing = resolve(dirname(path), name);
  return { path: backing, format: format ?? probeFormat(backing) };
}

function probeFormat(path: string): ImageLayer['format'] {
  const header = readHeader(path);
  return header.length >= 4 && header.readUInt32BE(0) === QCOW2_MAGIC ? 'qcow2' : 'raw';
}

/**
 * A qcow2 disk's chain, top first: the disk, its backing file, that one's
 * backing file... down to a raw image or a qcow2 without one. Read from
 * the images' headers, so that a confined VMM can be handed each one as a
 * file descriptor instead of opening them by name.
 */
export function backingChain(top: string): ImageLayer[] {
  const chain: ImageLayer[] = [{ path: top, format: 'qcow2' }];
  for (;;) {
    const layer = chain[chain.length - 1]!;
    if (layer.format === 'raw') return chain;
    const header = readHeader(layer.path);
    if (header.length < 104 || header.readUInt32BE(0) !== QCOW2_MAGIC) throw new RoostError('VMM', `${layer.path} is not a qcow2 image`);
    const next = backingOf(layer.path, header);
    if (!next) return chain;
    if (chain.length >= MAX_CHAIN || chain.some((l) => l.path === next.path)) {
      throw new RoostError('VMM', `the backing chain of ${top} is longer than ${MAX_CHAIN} images or loops`);
    }
    chain.push(next);
  }
}
