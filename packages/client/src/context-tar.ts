import { lstat, open, readdir, readlink } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { abortError, RoostError } from '@roost/api';

/*
 * A build context sent to the daemon: the directory as a tar stream (POSIX
 * ustar with pax records for long names), walked without following
 * symlinks, files streamed as they are read. The daemon applies
 * .dockerignore and reads the Dockerfile from it, as it would from a
 * directory of its own.
 */

const BLOCK = 512;

function octal(h: Buffer, off: number, len: number, v: number): void {
  h.write(
    Math.max(0, Math.floor(v))
      .toString(8)
      .padStart(len - 1, '0')
      .slice(-(len - 1)) + '\0',
    off,
    'latin1',
  );
}

function header(name: string, type: string, mode: number, size: number, mtime: number, link = ''): Buffer {
  const nameBytes = Buffer.from(name);
  const linkBytes = Buffer.from(link);
  const records: Buffer[] = [];
  const record = (key: string, value: Buffer) => {
    const body = Buffer.concat([Buffer.from(` ${key}=`), value, Buffer.from('\n')]);
    let len = body.length + 1;
    while (String(len).length + body.length !== len) len = String(len).length + body.length;
    records.push(Buffer.concat([Buffer.from(String(len)), body]));
  };
  if (nameBytes.length > 100) record('path', nameBytes);
  if (linkBytes.length > 100) record('linkpath', linkBytes);
  if (size >= 8 ** 11) record('size', Buffer.from(String(size)));
  const ustar = (n: Buffer, t: string, sz: number, l: Buffer) => {
    const h = Buffer.alloc(BLOCK);
    n.copy(h, 0, 0, Math.min(100, n.length));
    octal(h, 100, 8, mode);
    octal(h, 108, 8, 0);
    octal(h, 116, 8, 0);
    octal(h, 124, 12, sz < 8 ** 11 ? sz : 0);
    octal(h, 136, 12, mtime);
    h.write(t, 156, 'latin1');
    l.copy(h, 157, 0, Math.min(100, l.length));
    h.write('ustar\0', 257, 'latin1');
    h.write('00', 263, 'latin1');
    h.fill(0x20, 148, 156);
    let sum = 0;
    for (const b of h) sum += b;
    h.write(sum.toString(8).padStart(6, '0') + '\0 ', 148, 'latin1');
    return h;
  };
  if (records.length === 0) return ustar(nameBytes, type, size, linkBytes);
  const data = Buffer.concat(records);
  return Buffer.concat([
    ustar(Buffer.from('././@PaxHeader'), 'x', data.length, Buffer.alloc(0)),
    data,
    Buffer.alloc((BLOCK - (data.length % BLOCK)) % BLOCK),
    ustar(nameBytes, type, size, linkBytes),
  ]);
}

/** The directory `dir` as a tar stream (entries relative to it, sorted; sockets and devices left out). */
export async function* contextTar(dir: string, signal?: AbortSignal): AsyncGenerator<Buffer> {
  const root = resolve(dir);
  const st = await lstat(root).catch(() => null);
  if (!st?.isDirectory()) throw new RoostError('NOT_FOUND', `build context ${dir} is not a directory`, { details: { path: dir } });
  const walk = async function* (rel: string): AsyncGenerator<Buffer> {
    for (const name of (await readdir(join(root, rel))).sort()) {
      if (signal?.aborted) throw abortError(signal, `sending the build context ${dir}`);
      const path = rel ? `${rel}/${name}` : name;
      const full = join(root, path);
      const s = await lstat(full);
      const mtime = Math.floor(s.mtimeMs / 1000);
      if (s.isDirectory()) {
        yield header(`${path}/`, '5', s.mode & 0o7777, 0, mtime);
        yield* walk(path);
      } else if (s.isSymbolicLink()) {
        yield header(path, '2', 0o777, 0, mtime, await readlink(full));
      } else if (s.isFile()) {
        yield header(path, '0', s.mode & 0o7777, s.size, mtime);
        const fh = await open(full, 'r');
        try {
          let left = s.size;
          const buf = Buffer.alloc(Math.min(1 << 20, Math.max(left, 1)));
          while (left > 0) {
            const { bytesRead } = await fh.read(buf, 0, Math.min(buf.length, left));
            if (bytesRead === 0) throw new RoostError('INVALID_ARGUMENT', `build context: ${path} shrank while it was being sent`);
            left -= bytesRead;
            yield Buffer.from(buf.subarray(0, bytesRead));
          }
        } finally {
          await fh.close();
        }
        yield Buffer.alloc((BLOCK - (s.size % BLOCK)) % BLOCK);
      }
    }
  };
  yield* walk('');
  yield Buffer.alloc(2 * BLOCK);
}
