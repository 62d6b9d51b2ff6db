import { existsSync, lstatSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, readlinkSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import * as tar from 'tar-stream';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { isRoostError } from '../errors.js';
import { applyLayer } from './layer.js';

type Entry = { header: Partial<tar.Header> & { name: string }; body?: string };

/** Packs entries into an uncompressed tar, as a layer blob would hold it. */
async function layer(entries: Entry[]): Promise<Buffer> {
  const pack = tar.pack();
  for (const e of entries) pack.entry(e.header as tar.Header, e.body ?? '');
  pack.finalize();
  const chunks: Buffer[] = [];
  for await (const c of pack) chunks.push(c as Buffer);
  return Buffer.concat(chunks);
}

const f = (name: string, body = name, extra: Partial<tar.Header> = {}): Entry => ({ header: { name, mode: 0o644, ...extra }, body });
const d = (name: string, extra: Partial<tar.Header> = {}): Entry => ({ header: { name, type: 'directory', mode: 0o755, ...extra } });
const sym = (name: string, linkname: string): Entry => ({ header: { name, type: 'symlink', linkname } });
const hard = (name: string, linkname: string): Entry => ({ header: { name, type: 'link', linkname } });

let base: string;
let root: string;
let outside: string;

beforeEach(() => {
  base = mkdtempSync(join(tmpdir(), 'roost-layer-'));
  root = join(base, 'root');
  outside = join(base, 'outside');
  mkdirSync(root);
  mkdirSync(outside);
  writeFileSync(join(outside, 'victim'), 'untouched');
});
afterEach(() => rmSync(base, { recursive: true, force: true }));

async function apply(entries: Entry[]) {
  return applyLayer(root, Readable.from([await layer(entries)]), { layer: 'test' });
}

async function refused(entries: Entry[], why: RegExp): Promise<void> {
  const err = await apply(entries).catch((e: unknown) => e);
  expect(isRoostError(err, 'IMAGE'), String(err)).toBe(true);
  expect((err as Error).message).toMatch(why);
  expect(readFileSync(join(outside, 'victim'), 'utf8')).toBe('untouched');
  expect(readdirSync(outside)).toEqual(['victim']);
}

describe('applyLayer', () => {
  it('creates files, directories, symlinks and hard links with their metadata', async () => {
    const mtime = new Date('2020-01-02T03:04:05Z');
    const stats = await apply([
      d('etc', { mtime }),
      f('etc/passwd', 'root:x:0:0::/root:/bin/sh\n', { mode: 0o600, uid: 1000, gid: 1001, mtime }),
      f('bin/tool', '#!/bin/sh\n', { mode: 0o4755 }),
      sym('bin/sh', 'busybox'),
      hard('bin/tool-again', 'bin/tool'),
    ]);
    expect(stats).toMatchObject({ files: 2, whiteouts: 0, skipped: [] });
    expect(readFileSync(join(root, 'etc/passwd'), 'utf8')).toMatch(/^root/);
    const st = statSync(join(root, 'etc/passwd'));
    expect(st.mode & 0o7777).toBe(0o600);
    expect(st.mtime.toISOString()).toBe(mtime.toISOString());
    expect(statSync(join(root, 'etc')).mtime.toISOString()).toBe(mtime.toISOString());
    if (process.getuid?.() === 0) {
      expect([st.uid, st.gid]).toEqual([1000, 1001]);
      expect(statSync(join(root, 'bin/tool')).mode & 0o7777).toBe(0o4755); // setuid survives chown
    }
    expect(readlinkSync(join(root, 'bin/sh'))).toBe('busybox');
    expect(statSync(join(root, 'bin/tool-again')).ino).toBe(statSync(join(root, 'bin/tool')).ino);
  });

  it('applies whiteouts and opaque directories to lower layers only', async () => {
    await apply([f('a/x'), f('a/y'), f('b/keep'), f('gone')]);
    const stats = await apply([f('a/new'), f('a/.wh..wh..opq'), f('.wh.gone'), f('b/added')]);
    expect(stats.whiteouts).toBe(2);
    expect(readdirSync(join(root, 'a'))).toEqual(['new']); // marker after a same-layer entry keeps it
    expect(existsSync(join(root, 'gone'))).toBe(false);
    expect(readdirSync(join(root, 'b')).sort()).toEqual(['added', 'keep']);
  });

  it('replaces what lower layers had: a file over a directory, a directory over a symlink', async () => {
    await apply([f('x/inner'), sym('y', '/etc')]);
    await apply([f('x', 'now a file'), d('y')]);
    expect(readFileSync(join(root, 'x'), 'utf8')).toBe('now a file');
    expect(lstatSync(join(root, 'y')).isDirectory()).toBe(true);
  });

  it('refuses names that climb out or are absolute', async () => {
    await refused([f('../outside/victim', 'pwned')], /climbs out/);
    await refused([f('a/../../outside/victim', 'pwned')], /climbs out/);
    await refused([f('/etc/passwd', 'pwned')], /absolute path/);
    await refused([hard('h', '../outside/victim')], /climbs out/);
    await refused([hard('h', '/etc/passwd')], /absolute path/);
  });

  it('resolves symlinked parents inside the root, never outside it', async () => {
    // An absolute symlink and a relative one that climbs past the root both stay inside it.
    await apply([sym('abs', outside), sym('rel', '../../../../../../..' + outside), d(outside.slice(1))]);
    await apply([f('abs/victim', 'inside'), f('rel/other', 'inside too')]);
    expect(readFileSync(join(outside, 'victim'), 'utf8')).toBe('untouched');
    expect(readdirSync(outside)).toEqual(['victim']);
    expect(readFileSync(join(root, outside.slice(1), 'victim'), 'utf8')).toBe('inside');
    expect(readFileSync(join(root, outside.slice(1), 'other'), 'utf8')).toBe('inside too');
  });

  it('follows merged-/usr symlinks the way real images need', async () => {
    await apply([d('usr/lib'), sym('lib', 'usr/lib')]);
    await apply([f('lib/libfoo.so', 'elf')]);
    expect(readFileSync(join(root, 'usr/lib/libfoo.so'), 'utf8')).toBe('elf');
    expect(lstatSync(join(root, 'lib')).isSymbolicLink()).toBe(true);
  });

  it('replaces a symlink at an entry name instead of writing through it', async () => {
    await apply([sym('f', join(outside, 'victim'))]);
    await apply([f('f', 'replaced')]);
    expect(lstatSync(join(root, 'f')).isFile()).toBe(true);
    expect(readFileSync(join(outside, 'victim'), 'utf8')).toBe('untouched');
  });

  it('makes a hard link to a symlink link the symlink itself, not its target', async () => {
    await apply([sym('s', join(outside, 'victim')), hard('h', 's')]);
    expect(lstatSync(join(root, 'h')).isSymbolicLink()).toBe(true);
    expect(statSync(join(outside, 'victim')).nlink).toBe(1);
  });

  it('refuses hard links to what the image does not have, or to directories', async () => {
    await refused([hard('h', 'nothing')], /does not contain/);
    await refused([d('dir'), hard('h', 'dir')], /directory/);
  });

  it('refuses symlink loops and parents that are files', async () => {
    await refused([sym('loop', 'loop'), f('loop/x')], /too many levels/);
    await refused([f('file'), f('file/x')], /to be a directory/);
  });

  it('skips device nodes and FIFOs, and reports them', async () => {
    const stats = await apply([{ header: { name: 'dev/null', type: 'character-device', devmajor: 1, devminor: 3 } }, { header: { name: 'p', type: 'fifo' } }]);
    expect(stats.skipped.map((s) => s.path)).toEqual(['dev/null', 'p']);
    expect(existsSync(join(root, 'dev/null'))).toBe(false);
  });

  it('collects extended attributes from PAX headers', async () => {
    const stats = await apply([{ header: { name: 'bin/ping', mode: 0o755, pax: { 'SCHILY.xattr.security.capability': '\u0001\u0000' } }, body: 'x' }]);
    expect(stats.xattrs).toEqual([{ path: 'bin/ping', name: 'security.capability', value: Buffer.from([1, 0]) }]);
  });

  it('fails a truncated layer with IMAGE', async () => {
    const whole = await layer([f('a', 'x'.repeat(10_000))]);
    const err = await applyLayer(root, Readable.from([whole.subarray(0, 3000)])).catch((e: unknown) => e);
    expect(isRoostError(err, 'IMAGE')).toBe(true);
  });
});

describe('applyLayer with plain: a build context sent to the daemon', () => {
  const applyPlain = async (entries: Entry[]) => applyLayer(root, Readable.from([await layer(entries)]), { layer: 'build context', plain: true, chown: false });

  async function refusedPlain(entries: Entry[], why: RegExp): Promise<void> {
    const err = await applyPlain(entries).catch((e: unknown) => e);
    expect(isRoostError(err, 'INVALID_ARGUMENT'), String(err)).toBe(true);
    expect((err as Error).message).toMatch(why);
    expect((err as Error).message).toMatch(/^build context: .*the archive is refused$/);
    expect(readFileSync(join(outside, 'victim'), 'utf8')).toBe('untouched');
    expect(readdirSync(outside)).toEqual(['victim']);
  }

  it('extracts files, directories, symlinks (never followed) and hard links, with modes and times', async () => {
    const mtime = new Date('2021-05-06T07:08:09Z');
    await applyPlain([
      d('src', { mode: 0o555, mtime }),
      f('src/main.c', 'int main;', { mode: 0o640, mtime }),
      sym('src/link', '../../outside/victim'),
      hard('src/again', 'src/main.c'),
      f('.wh.kept', 'an ordinary name here'),
      f('nested/deep/file', 'parents made'),
    ]);
    expect(readFileSync(join(root, 'src/main.c'), 'utf8')).toBe('int main;');
    expect(statSync(join(root, 'src/main.c')).mode & 0o7777).toBe(0o640);
    // A directory without write permission still took its entries: its mode is set last.
    expect(statSync(join(root, 'src')).mode & 0o7777).toBe(0o555);
    expect(statSync(join(root, 'src')).mtime.toISOString()).toBe(mtime.toISOString());
    expect(readlinkSync(join(root, 'src/link'))).toBe('../../outside/victim');
    expect(statSync(join(root, 'src/again')).ino).toBe(statSync(join(root, 'src/main.c')).ino);
    expect(readFileSync(join(root, '.wh.kept'), 'utf8')).toBe('an ordinary name here');
    expect(readFileSync(join(root, 'nested/deep/file'), 'utf8')).toBe('parents made');
  });

  it('refuses names that climb out or are absolute, with INVALID_ARGUMENT', async () => {
    await refusedPlain([f('../outside/victim', 'pwned')], /climbs out/);
    await refusedPlain([f('/etc/passwd', 'pwned')], /absolute path/);
    await refusedPlain([hard('h', '../outside/victim')], /climbs out/);
  });

  it('refuses an entry below a symlink instead of following it, even inside the root', async () => {
    await refusedPlain([sym('escape', outside), f('escape/victim', 'pwned')], /below the symlink escape/);
    rmSync(root, { recursive: true, force: true });
    mkdirSync(root);
    await refusedPlain([d('real'), sym('inside', 'real'), f('inside/x', 'through a link')], /below the symlink inside/);
    expect(existsSync(join(root, 'real/x'))).toBe(false);
  });

  it('refuses a name that comes twice: a file over a symlink is never written through it', async () => {
    await refusedPlain([sym('f', join(outside, 'victim')), f('f', 'pwned')], /comes twice/);
    rmSync(root, { recursive: true, force: true });
    mkdirSync(root);
    await refusedPlain([f('a', 'one'), f('a', 'two')], /comes twice/);
    expect(readFileSync(join(root, 'a'), 'utf8')).toBe('one');
  });

  it('refuses device nodes and FIFOs', async () => {
    await refusedPlain([{ header: { name: 'p', type: 'fifo' } }], /fifo/);
  });
});
