import { createHash } from 'node:crypto';
import { chmodSync, mkdirSync, mkdtempSync, rmSync, symlinkSync, truncateSync, unlinkSync, utimesSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { openContext } from './context.js';
import { clearDigestCache, contentSha256, digestOf, type DigestProgress } from './digest.js';

let dir: string;

beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), 'roost-digest-'));
  writeFileSync(join(dir, 'Dockerfile'), 'FROM a\n');
  mkdirSync(join(dir, 'src'));
  writeFileSync(join(dir, 'src', 'a.txt'), 'alpha');
  writeFileSync(join(dir, 'src', 'b.txt'), 'beta');
  symlinkSync('a.txt', join(dir, 'src', 'link'));
  clearDigestCache();
});
afterEach(() => rmSync(dir, { recursive: true, force: true }));

async function contextDigest(): Promise<string> {
  const ctx = await openContext(dir);
  return ctx.digestOf(ctx.entries);
}

describe('digestOf', () => {
  it('is stable: the same content with other mtimes gives the same digest', async () => {
    const before = await contextDigest();
    const later = new Date(Date.now() + 3_600_000);
    utimesSync(join(dir, 'src', 'a.txt'), later, later);
    utimesSync(join(dir, 'src'), later, later);
    expect(await contextDigest()).toBe(before);
    // Rewriting the same bytes (new mtime, new ctime) too.
    writeFileSync(join(dir, 'src', 'b.txt'), 'beta');
    expect(await contextDigest()).toBe(before);
  });

  it('changes with a mode, a byte, a name, a symlink target, a new or a removed file', async () => {
    const seen = new Set([await contextDigest()]);
    const changed = async (what: string, change: () => void) => {
      change();
      const digest = await contextDigest();
      expect(seen.has(digest), what).toBe(false);
      seen.add(digest);
    };
    await changed('mode', () => chmodSync(join(dir, 'src', 'a.txt'), 0o600));
    await changed('directory mode', () => chmodSync(join(dir, 'src'), 0o700));
    await changed('content', () => writeFileSync(join(dir, 'src', 'a.txt'), 'alphA'));
    await changed('link target', () => {
      unlinkSync(join(dir, 'src', 'link'));
      symlinkSync('b.txt', join(dir, 'src', 'link'));
    });
    await changed('new file', () => writeFileSync(join(dir, 'src', 'c.txt'), ''));
    await changed('rename', () => {
      unlinkSync(join(dir, 'src', 'c.txt'));
      writeFileSync(join(dir, 'src', 'd.txt'), '');
    });
    await changed('removal', () => unlinkSync(join(dir, 'src', 'b.txt')));
  });

  it('does not depend on the order of the entries, and covers where COPY puts them', async () => {
    const ctx = await openContext(dir);
    expect(await digestOf([...ctx.entries].reverse())).toBe(await digestOf(ctx.entries));
    const one = ctx.resolveSources(['src/a.txt']);
    const renamed = one.map((e) => ({ ...e, target: 'other.txt' }));
    expect(await digestOf(renamed)).not.toBe(await digestOf(one));
    expect(await digestOf(ctx.resolveSources(['src']))).not.toBe(await digestOf(ctx.resolveSources(['src/*'])));
  });

  it('remembers file hashes: a second digest in the process reads nothing, a changed file is read again', async () => {
    const runs: DigestProgress[] = [];
    const digest = async () => {
      const ctx = await openContext(dir);
      let last: DigestProgress | undefined;
      const value = await ctx.digestOf(ctx.entries, { onProgress: (p) => (last = p) });
      if (last) runs.push(last);
      return value;
    };
    await digest();
    await digest();
    writeFileSync(join(dir, 'src', 'b.txt'), 'BETA');
    await digest();
    expect(runs.map((r) => [r.files, r.totalFiles, r.hashedFiles])).toEqual([
      [3, 3, 3],
      [3, 3, 0],
      [3, 3, 1],
    ]);
    expect(runs[0]).toMatchObject({ bytes: 5 + 4 + 7, totalBytes: 16 });
  });

  it('streams a large file (sparse, 64 MiB) to the same sha256 as reading it whole', async () => {
    const big = join(dir, 'big.bin');
    writeFileSync(big, 'head');
    truncateSync(big, 64 * 1024 * 1024);
    const ctx = await openContext(dir);
    const entry = ctx.entry('big.bin');
    if (!entry) throw new Error('no big.bin');
    const expected = createHash('sha256');
    expected.update('head');
    expected.update(Buffer.alloc(64 * 1024 * 1024 - 4));
    expect((await contentSha256(entry)).hash).toBe(expected.digest('hex'));
  });

  it('stops when aborted', async () => {
    const ctx = await openContext(dir);
    await expect(ctx.digestOf(ctx.entries, { signal: AbortSignal.abort() })).rejects.toMatchObject({ code: 'ABORTED' });
  });

  it('lists and digests 20,000 files, reporting progress, and the second time from the cache', async () => {
    const files = 20_000;
    for (let d = 0; d < 100; d++) {
      const sub = join(dir, 'many', `d${d}`);
      mkdirSync(sub, { recursive: true });
      for (let f = 0; f < files / 100; f++) writeFileSync(join(sub, `f${f}.txt`), `file ${d}/${f}\n`);
    }
    let started = performance.now();
    const ctx = await openContext(dir);
    const listed = performance.now() - started;
    expect(ctx.entries.filter((e) => e.type === 'file').length).toBe(files + 3);
    let calls = 0;
    let last: DigestProgress | undefined;
    started = performance.now();
    const first = await ctx.digestOf(ctx.entries, { onProgress: (p) => ((last = p), calls++) });
    const cold = performance.now() - started;
    expect(last).toMatchObject({ files: files + 3, totalFiles: files + 3, hashedFiles: files + 3 });
    expect(calls).toBe(files + 3 + 1);
    started = performance.now();
    const second = await (await openContext(dir)).digestOf(ctx.entries, { onProgress: (p) => (last = p) });
    const warm = performance.now() - started;
    expect(second).toBe(first);
    expect(last?.hashedFiles).toBe(0);
    console.log(`20k files: listed in ${listed.toFixed(0)} ms, digested in ${cold.toFixed(0)} ms cold, ${warm.toFixed(0)} ms from the cache`);
  }, 120_000);
});
