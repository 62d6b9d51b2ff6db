import { closeSync, existsSync, mkdirSync, mkdtempSync, openSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Pack } from 'tar';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { byteSize, extractArchive } from './cp.js';
import { dataRuns, SPARSE_BLOCK, SparseWriter } from './sparse.js';

let dir: string;
beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), 'roost-sparse-'));
});
afterEach(() => rmSync(dir, { recursive: true, force: true }));

const MiB = 2 ** 20;

/** `size` bytes of zeros but for `data` at each of `at`. */
function sparseSource(size: number, at: number[], data: Buffer): Buffer {
  const whole = Buffer.alloc(size);
  for (const off of at) data.copy(whole, off);
  return whole;
}

/** A tar (as the agent would send) of one file with these contents, in chunks of `chunk` bytes. */
async function* tarOf(name: string, contents: Buffer, chunk = 64 << 10): AsyncGenerator<Uint8Array> {
  const src = join(dir, 'src');
  rmSync(src, { recursive: true, force: true });
  mkdirSync(src);
  writeFileSync(join(src, name), contents);
  const pack = new Pack({ cwd: src, portable: true });
  pack.add(name);
  pack.end();
  const parts: Buffer[] = [];
  for await (const c of pack) parts.push(c as Buffer);
  const all = Buffer.concat(parts);
  rmSync(src, { recursive: true, force: true });
  for (let off = 0; off < all.length; off += chunk) yield all.subarray(off, off + chunk);
}

describe('zero-run detection', () => {
  it('leaves out block-aligned zero runs, aligned to the file, not the chunk', () => {
    const b = Buffer.alloc(4 * SPARSE_BLOCK);
    expect(dataRuns(b, 0)).toEqual([]);
    b[SPARSE_BLOCK + 10] = 1;
    expect(dataRuns(b, 0)).toEqual([[SPARSE_BLOCK, 2 * SPARSE_BLOCK]]);
    b[3 * SPARSE_BLOCK] = 1;
    expect(dataRuns(b, 0)).toEqual([
      [SPARSE_BLOCK, 2 * SPARSE_BLOCK],
      [3 * SPARSE_BLOCK, 4 * SPARSE_BLOCK],
    ]);
    // At file offset 100, blocks end at 4096-100 into the chunk.
    const c = Buffer.alloc(SPARSE_BLOCK);
    c[0] = 7;
    expect(dataRuns(c, 100)).toEqual([[0, SPARSE_BLOCK - 100]]);
    expect(dataRuns(Buffer.from('abc'), 5)).toEqual([[0, 3]]);
  });

  it('writes a file with holes: same bytes, far fewer blocks, the right size', () => {
    const data = Buffer.alloc(3000, 0xab);
    const whole = sparseSource(64 * MiB + 123, [0, 40 * MiB + 5], data);
    const fd = openSync(join(dir, 'out'), 'wx');
    const w = new SparseWriter(fd);
    for (let off = 0; off < whole.length; off += 65536 + 17) w.write(whole.subarray(off, off + 65536 + 17));
    w.finish();
    closeSync(fd);
    const st = statSync(join(dir, 'out'));
    expect(st.size).toBe(whole.length);
    expect(st.blocks * 512).toBeLessThan(1 * MiB);
    expect(w.written).toBeLessThanOrEqual(4 * SPARSE_BLOCK);
    expect(readFileSync(join(dir, 'out')).equals(whole)).toBe(true);
  });
});

describe('extractArchive (cp out)', () => {
  it('keeps the holes of a sparse file and its contents', async () => {
    const data = Buffer.from('hello from the guest\n');
    const whole = sparseSource(32 * MiB, [MiB, 31 * MiB], data);
    const dest = join(dir, 'dest');
    mkdirSync(dest);
    await extractArchive(tarOf('sparse', whole), dest, { root: null, maxBytes: 64 * MiB });
    const st = statSync(join(dest, 'sparse'));
    expect(st.size).toBe(32 * MiB);
    expect(st.blocks * 512).toBeLessThan(MiB);
    expect(readFileSync(join(dest, 'sparse')).equals(whole)).toBe(true);
  });

  it('ordinary files are copied as they are', async () => {
    const whole = Buffer.from(Array.from({ length: 100_000 }, (_, i) => (i * 7) & 0xff));
    const dest = join(dir, 'dest');
    mkdirSync(dest);
    await extractArchive(tarOf('plain', whole), dest, { root: 'renamed' });
    expect(readFileSync(join(dest, 'renamed')).equals(whole)).toBe(true);
  });

  it('stops past maxBytes with RESOURCE_EXHAUSTED naming --max-bytes, and leaves no partial file', async () => {
    const whole = Buffer.alloc(8 * MiB, 0x5a);
    const dest = join(dir, 'dest');
    mkdirSync(dest);
    await expect(extractArchive(tarOf('big', whole), dest, { root: null, maxBytes: 2 * MiB })).rejects.toMatchObject({
      code: 'RESOURCE_EXHAUSTED',
      message: expect.stringMatching(/more than 2 MiB.*--max-bytes/),
      details: { maxBytes: 2 * MiB },
    });
    expect(readdirSync(dest)).toEqual([]);
    expect(existsSync(join(dest, 'big'))).toBe(false);
  });
});

describe('--max-bytes', () => {
  it('takes bytes and binary suffixes, refuses the rest', () => {
    const parse = byteSize('--max-bytes');
    expect(parse('1048576')).toBe(MiB);
    expect(parse('512M')).toBe(512 * MiB);
    expect(parse('2G')).toBe(2 * 1024 * MiB);
    expect(parse('1.5GiB')).toBe(1.5 * 1024 * MiB);
    expect(parse('4k')).toBe(4096);
    for (const bad of ['', '0', '-1', 'lots', '1X']) expect(() => parse(bad)).toThrow(/--max-bytes takes a size/);
  });
});
