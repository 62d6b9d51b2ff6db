import { createHash } from 'node:crypto';
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { BlobStore, parseDigest } from './blobs.js';

let dir: string;
let store: BlobStore;
beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), 'roost-blobs-'));
  store = new BlobStore(dir);
});
afterEach(() => rmSync(dir, { recursive: true, force: true }));

const sha = (b: Buffer) => `sha256:${createHash('sha256').update(b).digest('hex')}`;
async function* chunks(b: Buffer, size = 1000) {
  for (let i = 0; i < b.length; i += size) yield b.subarray(i, i + size);
}
/** No temp files, no blobs: what a failed put must leave. */
const empty = () => expect(readdirSync(join(dir, 'sha256'))).toEqual([]);

describe('BlobStore', () => {
  const data = Buffer.from('x'.repeat(10_000));

  it('stores a verified blob by digest and reports progress', async () => {
    const progress: number[] = [];
    const path = await store.put(sha(data), data.length, chunks(data), { onProgress: (n) => progress.push(n) });
    expect(readFileSync(path).equals(data)).toBe(true);
    expect(path).toBe(join(dir, 'sha256', sha(data).slice(7)));
    expect(await store.has(sha(data))).toBe(true);
    expect(await store.has(sha(data), data.length + 1)).toBe(false);
    expect(progress.at(-1)).toBe(data.length);
    expect(await store.list()).toEqual([sha(data)]);
  });

  it('refuses a wrong digest and keeps nothing', async () => {
    const other = Buffer.from('y'.repeat(10_000));
    await expect(store.put(sha(data), other.length, chunks(other))).rejects.toMatchObject({
      code: 'IMAGE',
      message: expect.stringMatching(/corrupt or tampered/),
    });
    empty();
    expect(await store.has(sha(data))).toBe(false);
  });

  it('refuses a truncated blob', async () => {
    await expect(store.put(sha(data), data.length, chunks(data.subarray(0, 4000)))).rejects.toMatchObject({
      code: 'IMAGE',
      message: expect.stringMatching(/4000 of 10000 bytes/),
    });
    empty();
  });

  it('cuts off a stream that runs past its declared size, without reading on', async () => {
    let yielded = 0;
    async function* endless() {
      for (;;) {
        yielded++;
        yield Buffer.alloc(1000);
      }
    }
    await expect(store.put(sha(data), 5000, endless())).rejects.toMatchObject({ code: 'IMAGE', message: expect.stringMatching(/larger than the 5000 bytes/) });
    expect(yielded).toBe(6);
    empty();
  });

  it('stops at an abort and keeps nothing', async () => {
    const ac = new AbortController();
    async function* slow() {
      yield data.subarray(0, 100);
      ac.abort();
      yield data.subarray(100);
    }
    await expect(store.put(sha(data), data.length, slow(), { signal: ac.signal })).rejects.toMatchObject({ code: 'ABORTED' });
    empty();
  });

  it('lets concurrent puts of one blob both succeed', async () => {
    const [a, b] = await Promise.all([store.put(sha(data), data.length, chunks(data)), store.put(sha(data), data.length, chunks(data, 333))]);
    expect(a).toBe(b);
    expect(readdirSync(join(dir, 'sha256'))).toEqual([sha(data).slice(7)]);
  });

  it('accepts only real digests, so a digest can never be a path', () => {
    for (const bad of ['sha256:../../etc/passwd', 'md5:' + 'a'.repeat(32), 'sha256:' + 'A'.repeat(64), 'sha256:abc', '../x']) {
      expect(() => parseDigest(bad), bad).toThrow(/not a supported digest/);
      expect(() => store.path(bad)).toThrow();
    }
    expect(parseDigest('sha512:' + 'a'.repeat(128)).algorithm).toBe('sha512');
  });

  it('sweeps temp files of dead downloads, not live ones', async () => {
    await store.put(sha(data), data.length, chunks(data));
    writeFileSync(join(dir, 'sha256', '.tmp-999999999-abc'), 'left by a dead process');
    writeFileSync(join(dir, 'sha256', `.tmp-${process.pid}-def`), 'in progress here');
    expect(await store.sweepTemp()).toBe(1);
    expect(readdirSync(join(dir, 'sha256')).sort()).toEqual([`.tmp-${process.pid}-def`, sha(data).slice(7)].sort());
    expect(await store.list()).toEqual([sha(data)]);
  });
});
