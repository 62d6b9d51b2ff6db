import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import {
  chmodSync,
  chownSync,
  existsSync,
  lstatSync,
  lutimesSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  readlinkSync,
  rmSync,
  symlinkSync,
  utimesSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { isRoostError } from '@roost/api';
import { extractArchive, parseLocation } from '@roost/cli';
import { serve, type ServeHandle } from '@roost/server';
import { Header } from 'tar';
import { TestHome } from './helpers.js';

/*
 * `roost cp`: the host-side extraction of guest-made (hostile) tars with
 * crafted archives, then the command end to end against real sandboxes,
 * embedded (the CLI opens the home) and through a daemon.
 */

const roostBin = fileURLToPath(new URL('../packages/cli/bin/roost.js', import.meta.url));
const asRoot = process.getuid?.() === 0;

interface Result {
  code: number | null;
  stdout: Buffer;
  stderr: string;
}

function roost(env: NodeJS.ProcessEnv, args: string[], options: { stdin?: Buffer | string; cwd?: string } = {}): Promise<Result> {
  return new Promise((resolve) => {
    const p = spawn(process.execPath, [roostBin, ...args], { env, cwd: options.cwd, stdio: ['pipe', 'pipe', 'pipe'] });
    const out: Buffer[] = [];
    let stderr = '';
    p.stdout.on('data', (c: Buffer) => out.push(c));
    p.stderr.on('data', (c: Buffer) => (stderr += c.toString()));
    p.stdin.end(options.stdin ?? '');
    p.on('close', (code) => resolve({ code, stdout: Buffer.concat(out), stderr }));
  });
}

// ---- crafted archives ------------------------------------------------------------

interface Entry {
  path: string;
  type?: 'File' | 'Directory' | 'SymbolicLink' | 'Link' | 'FIFO';
  linkpath?: string;
  mode?: number;
  data?: string;
  mtime?: Date;
  uid?: number;
  gid?: number;
}

/** A tar built block by block, so it can say anything a hostile guest could. */
function tarOf(entries: Entry[], options: { end?: boolean } = {}): Buffer {
  const blocks: Buffer[] = [];
  for (const e of entries) {
    const data = Buffer.from(e.data ?? '');
    const h = new Header({
      path: e.path,
      type: e.type ?? 'File',
      mode: e.mode ?? (e.type === 'Directory' ? 0o755 : 0o644),
      size: e.type === undefined || e.type === 'File' ? data.length : 0,
      mtime: e.mtime ?? new Date(1_600_000_000_000),
      uid: e.uid ?? 0,
      gid: e.gid ?? 0,
      ...(e.linkpath !== undefined ? { linkpath: e.linkpath } : {}),
    });
    const block = Buffer.alloc(512);
    h.encode(block, 0);
    blocks.push(block);
    if (data.length > 0) blocks.push(data, Buffer.alloc((512 - (data.length % 512)) % 512));
  }
  if (options.end !== false) blocks.push(Buffer.alloc(1024));
  return Buffer.concat(blocks);
}

async function* chunked(buf: Buffer, size = 700): AsyncGenerator<Uint8Array> {
  for (let off = 0; off < buf.length; off += size) yield buf.subarray(off, off + size);
}

describe('extracting a guest-made archive on the host', () => {
  let work: string;
  let dest: string;
  let outside: string;
  const skipped: string[] = [];
  const extract = (entries: Entry[], options: Parameters<typeof extractArchive>[2] = {}) =>
    extractArchive(chunked(tarOf(entries)), dest, { onSkip: (p) => skipped.push(p), ...options });
  const refused = async (entries: Entry[], pattern: RegExp) => {
    const err = await extract(entries).catch((e: unknown) => e);
    expect(isRoostError(err, 'INVALID_ARGUMENT'), String(err)).toBe(true);
    expect((err as Error).message).toMatch(pattern);
  };
  const outsideUnchanged = () => {
    expect(readdirSync(outside).sort()).toEqual(['passwd']);
    expect(readFileSync(join(outside, 'passwd'), 'utf8')).toBe('original\n');
    expect(lstatSync(join(outside, 'passwd')).nlink).toBe(1);
  };

  beforeEach(() => {
    work = mkdtempSync(join(tmpdir(), 'roost-cp-unit-'));
    dest = join(work, 'dest');
    outside = join(work, 'outside');
    mkdirSync(dest);
    mkdirSync(outside);
    writeFileSync(join(outside, 'passwd'), 'original\n');
    skipped.length = 0;
  });
  afterEach(() => rmSync(work, { recursive: true, force: true }));

  it('never writes through a symlink the archive made (link -> dir, then link/file)', async () => {
    await refused(
      [
        { path: 'link', type: 'SymbolicLink', linkpath: outside },
        { path: 'link/passwd', data: 'owned\n' },
      ],
      /link is a symlink/,
    );
    outsideUnchanged();
    // The symlink itself is there, as a symlink.
    expect(readlinkSync(join(dest, 'link'))).toBe(outside);
    await refused(
      [
        { path: 'etc', type: 'SymbolicLink', linkpath: '/etc' },
        { path: 'etc/roost-cp-test', data: 'x' },
      ],
      /etc is a symlink/,
    );
    expect(existsSync('/etc/roost-cp-test')).toBe(false);
    // Nor through a relative one, or one that points at a directory the archive then fills.
    await refused(
      [
        { path: 'up', type: 'SymbolicLink', linkpath: '../outside' },
        { path: 'up/new', data: 'x' },
      ],
      /up is a symlink/,
    );
    await refused(
      [
        { path: 'up2', type: 'SymbolicLink', linkpath: '../outside' },
        { path: 'up2/x/y', data: 'x' },
      ],
      /up2 is a symlink/,
    );
    outsideUnchanged();
  });

  it('refuses .. components and keeps absolute names inside', async () => {
    await refused([{ path: '../outside/passwd', data: 'owned\n' }], /\.\. component/);
    await refused([{ path: 'a/../../outside/passwd', data: 'owned\n' }], /\.\. component/);
    await extract([{ path: `${outside}/passwd`, data: 'inside\n' }]);
    outsideUnchanged();
    expect(readFileSync(join(dest, outside, 'passwd'), 'utf8')).toBe('inside\n');
  });

  it('links hard links only to files it extracted itself, and never changes a file through one', async () => {
    await refused([{ path: 'pw', type: 'Link', linkpath: '/etc/passwd' }], /hard link pw points at "\/etc\/passwd"/);
    await refused([{ path: 'pw', type: 'Link', linkpath: '../outside/passwd' }], /\.\. component/);
    await refused([{ path: 'pw', type: 'Link', linkpath: join(outside, 'passwd') }], /not a file extracted before it/);
    // A link to a symlink the archive made is refused too (it is not a file it extracted).
    await refused(
      [
        { path: 's', type: 'SymbolicLink', linkpath: join(outside, 'passwd') },
        { path: 'h', type: 'Link', linkpath: 's' },
      ],
      /not a file extracted before it/,
    );
    outsideUnchanged();
    // A file, a hard link to it, then a file under the link's name: the first file keeps its contents.
    await extract([
      { path: 'f', data: 'first\n' },
      { path: 'h', type: 'Link', linkpath: 'f' },
    ]);
    expect(lstatSync(join(dest, 'h')).ino).toBe(lstatSync(join(dest, 'f')).ino);
    await extract([
      { path: 'f', data: 'first\n' },
      { path: 'h', type: 'Link', linkpath: 'f' },
      { path: 'h', data: 'second\n' },
    ]);
    expect(readFileSync(join(dest, 'f'), 'utf8')).toBe('first\n');
    expect(readFileSync(join(dest, 'h'), 'utf8')).toBe('second\n');
  });

  it('replaces a symlink with a file instead of writing through it; a host symlink in the destination is not followed', async () => {
    await extract([
      { path: 'pw', type: 'SymbolicLink', linkpath: join(outside, 'passwd') },
      { path: 'pw', data: 'replaced\n' },
    ]);
    outsideUnchanged();
    expect(lstatSync(join(dest, 'pw')).isFile()).toBe(true);
    expect(readFileSync(join(dest, 'pw'), 'utf8')).toBe('replaced\n');
    symlinkSync(outside, join(dest, 'hostlink'));
    await refused([{ path: 'hostlink/passwd', data: 'owned\n' }], /hostlink is a symlink/);
    // A symlinked directory replaced by a directory: the link goes, the target stays.
    await extract([
      { path: 'hostlink/', type: 'Directory' },
      { path: 'hostlink/passwd', data: 'mine\n' },
    ]);
    expect(lstatSync(join(dest, 'hostlink')).isDirectory()).toBe(true);
    outsideUnchanged();
  });

  it('drops setuid and setgid, keeps modes and times (directories too), owners only as root', async () => {
    const t = (s: number) => new Date(s * 1000);
    await extract([
      { path: 'top/', type: 'Directory', mode: 0o2750, mtime: t(1_500_000_000), uid: 1234, gid: 2345 },
      { path: 'top/suid', mode: 0o4755, data: '#!/bin/sh\n', mtime: t(1_500_000_100), uid: 1234, gid: 2345 },
      { path: 'top/sticky/', type: 'Directory', mode: 0o1777, mtime: t(1_500_000_200) },
      { path: 'top/ro', mode: 0o400, data: 'r', mtime: t(1_500_000_300) },
      { path: 'top/link', type: 'SymbolicLink', linkpath: 'ro', mtime: t(1_500_000_400) },
      { path: 'top/fifo', type: 'FIFO' },
    ]);
    const st = (p: string) => lstatSync(join(dest, p));
    expect(st('top').mode & 0o7777).toBe(0o750);
    expect(st('top/suid').mode & 0o7777).toBe(0o755);
    expect(st('top/sticky').mode & 0o7777).toBe(0o1777);
    expect(st('top/ro').mode & 0o7777).toBe(0o400);
    expect(st('top').mtimeMs).toBe(1_500_000_000_000);
    expect(st('top/suid').mtimeMs).toBe(1_500_000_100_000);
    expect(st('top/sticky').mtimeMs).toBe(1_500_000_200_000);
    expect(st('top/link').mtimeMs).toBe(1_500_000_400_000);
    expect(readlinkSync(join(dest, 'top/link'))).toBe('ro');
    expect(skipped).toEqual(['top/fifo']);
    expect(existsSync(join(dest, 'top/fifo'))).toBe(false);
    if (asRoot) expect([st('top/suid').uid, st('top/suid').gid]).toEqual([1234, 2345]);
    await extract([{ path: 'mine', data: 'x', uid: 1234, gid: 2345 }], { preserveOwner: false });
    expect(st('mine').uid).toBe(process.getuid!());
  });

  it('renames the top-level name or strips it, and refuses entries outside it', async () => {
    await extract(
      [
        { path: 'out/', type: 'Directory' },
        { path: 'out/a', data: 'a' },
        { path: 'out/d/b', data: 'b' },
        { path: 'out/h', type: 'Link', linkpath: 'out/a' },
      ],
      { root: 'renamed' },
    );
    expect(readFileSync(join(dest, 'renamed/d/b'), 'utf8')).toBe('b');
    expect(lstatSync(join(dest, 'renamed/h')).ino).toBe(lstatSync(join(dest, 'renamed/a')).ino);
    await extract(
      [
        { path: 'out/', type: 'Directory', mode: 0o700 },
        { path: 'out/c', data: 'c' },
      ],
      { root: '' },
    );
    expect(readFileSync(join(dest, 'c'), 'utf8')).toBe('c');
    expect(lstatSync(dest).mode & 0o777).not.toBe(0o700); // the destination itself is left as it was
    for (const root of ['x', '', null]) {
      const err = await extractArchive(
        chunked(
          tarOf([
            { path: 'out/a', data: 'a' },
            { path: 'other/b', data: 'b' },
          ]),
        ),
        dest,
        { root },
      ).catch((e: unknown) => e);
      expect((err as Error).message).toMatch(/not below "out"/);
    }
    expect(existsSync(join(dest, 'other'))).toBe(false);
    await extract([{ path: 'kept/a', data: 'a' }], { root: null });
    expect(readFileSync(join(dest, 'kept/a'), 'utf8')).toBe('a');
  });

  it('rejects a damaged or cut archive', async () => {
    const whole = tarOf([{ path: 'big', data: 'y'.repeat(5000) }]);
    const cut = extractArchive(chunked(whole.subarray(0, 2048)), dest);
    await expect(cut).rejects.toThrow(/damaged|Truncated/);
    const bad = Buffer.from(whole);
    bad[148] = 0x39; // the header's checksum
    await expect(extractArchive(chunked(bad), dest)).rejects.toThrow(/damaged/);
  });

  it('parses SRC and DEST', () => {
    expect(parseLocation('abc123:/work')).toEqual({ kind: 'guest', id: 'abc123', path: '/work' });
    expect(parseLocation('abc123:')).toEqual({ kind: 'guest', id: 'abc123', path: '/' });
    expect(parseLocation('./a:b')).toEqual({ kind: 'host', path: './a:b' });
    expect(parseLocation('/x:y')).toEqual({ kind: 'host', path: '/x:y' });
    expect(parseLocation('dir/x:y')).toEqual({ kind: 'host', path: 'dir/x:y' });
    expect(parseLocation('-')).toEqual({ kind: 'stdio' });
  });
});

// ---- end to end ---------------------------------------------------------------------

/** What a tree holds, entry by entry: type, mode, mtime (s), owner, and contents or link target. */
function snapshot(root: string, options: { owners: boolean }): Map<string, string> {
  const out = new Map<string, string>();
  const walk = (rel: string) => {
    const abs = rel ? join(root, rel) : root;
    const st = lstatSync(abs);
    const owner = options.owners ? ` ${st.uid}:${st.gid}` : '';
    const common = `${(st.mode & 0o7777).toString(8)} ${Math.floor(st.mtimeMs / 1000)}${owner}`;
    if (st.isSymbolicLink()) out.set(rel, `link ${readlinkSync(abs)}`);
    else if (st.isFile()) out.set(rel, `file ${common} ${createHash('sha1').update(readFileSync(abs)).digest('hex')}`);
    else if (st.isDirectory()) {
      out.set(rel, `dir ${common}`);
      for (const name of readdirSync(abs).sort()) walk(rel ? `${rel}/${name}` : name);
    } else out.set(rel, 'other');
  };
  walk('');
  return out;
}

function sha1(path: string): string {
  return createHash('sha1').update(readFileSync(path)).digest('hex');
}

describe('roost cp with a real sandbox, embedded (each CLI run opens the home)', () => {
  const home = new TestHome();
  let work: string;
  let id: string;
  const cp = (src: string, dest: string, stdin?: Buffer) => roost(home.env, ['cp', src, dest], { cwd: work, ...(stdin ? { stdin } : {}) });
  const sh = async (cmd: string) => {
    const r = await roost(home.env, ['exec', id, '--', 'sh', '-c', cmd]);
    expect(r.stderr).toBe('');
    return r.stdout.toString();
  };

  beforeAll(async () => {
    work = mkdtempSync(join(tmpdir(), 'roost-cp-'));
    const run = await roost(home.env, ['run', '-d']);
    expect(run.code, run.stderr).toBe(0);
    id = run.stdout.toString().trim();
    mkdirSync(join(work, 'src/a/sub'), { recursive: true });
    writeFileSync(join(work, 'src/a/f1'), 'one\n');
    writeFileSync(join(work, 'src/a/sub/f2'), 'two\n');
    symlinkSync('f1', join(work, 'src/a/l'));
  });
  afterAll(async () => {
    await home.cleanup();
    rmSync(work, { recursive: true, force: true });
  });

  it('copies into the sandbox with docker cp naming', async () => {
    const ok = async (src: string, dest: string) => expect(await cp(src, dest)).toMatchObject({ code: 0, stderr: '' });
    await ok('src/a', `${id}:/b`); // missing: b gets a's contents
    expect(await sh('cd /b && find . | sort && cat f1 && readlink l')).toBe('.\n./f1\n./l\n./sub\n./sub/f2\none\nf1\n');
    await ok('src/a', `${id}:/b`); // existing: b/a
    expect(await sh('cat /b/a/sub/f2')).toBe('two\n');
    await sh('mkdir /d');
    await ok('src/a/.', `${id}:/d`); // contents into an existing directory
    expect(await sh('cd /d && find . | sort')).toBe('.\n./f1\n./l\n./sub\n./sub/f2\n');
    await ok('src/a/.', `${id}:/e`);
    expect(await sh('cat /e/sub/f2')).toBe('two\n');
    await ok('./src/a/f1', `${id}:/b`); // a file into a directory
    await ok('src/a/f1', `${id.slice(0, 6)}:/newname`); // a file to a new name
    expect(await sh('cat /b/f1 /newname')).toBe('one\none\n');
    writeFileSync(join(work, 'src/a/f1'), 'changed\n');
    await ok('src/a/f1', `${id}:/newname`); // over an existing file
    expect(await sh('cat /newname')).toBe('changed\n');
    writeFileSync(join(work, 'src/a/f1'), 'one\n');

    const onFile = await cp('src/a', `${id}:/newname`);
    expect(onFile.code).toBe(125);
    expect(onFile.stderr).toMatch(/cannot copy directory src\/a onto \/newname/);
    const slash = await cp('src/a/f1', `${id}:/nodir/`);
    expect(slash.code).toBe(125);
    expect(slash.stderr).toMatch(/\/nodir\/ does not exist and ends with \//);
    const missing = await cp('src/nothing', `${id}:/x`);
    expect(missing.code).toBe(125);
    expect(missing.stderr).toMatch(/src\/nothing: no such file or directory/);
    const twoHosts = await cp('src/a', 'elsewhere');
    expect(twoHosts.code).toBe(125);
    expect(twoHosts.stderr).toMatch(/one of SRC and DEST must be ID:PATH/);
  });

  it('copies out of the sandbox with docker cp naming, and through - as a tar', async () => {
    const ok = async (src: string, dest: string) => expect(await cp(src, dest)).toMatchObject({ code: 0, stderr: '' });
    await sh('mkdir -p /o/sub && echo one > /o/f1 && echo two > /o/sub/f2 && ln -s f1 /o/l');
    await ok(`${id}:/o`, 'out'); // missing: out gets o's contents
    expect(readFileSync(join(work, 'out/sub/f2'), 'utf8')).toBe('two\n');
    expect(readlinkSync(join(work, 'out/l'))).toBe('f1');
    await ok(`${id}:/o`, 'out'); // existing: out/o
    expect(readFileSync(join(work, 'out/o/f1'), 'utf8')).toBe('one\n');
    mkdirSync(join(work, 'out2'));
    await ok(`${id}:/o/.`, 'out2');
    expect(readdirSync(join(work, 'out2')).sort()).toEqual(['f1', 'l', 'sub']);
    await ok(`${id}:/o/f1`, 'single');
    expect(readFileSync(join(work, 'single'), 'utf8')).toBe('one\n');
    await ok(`${id}:/o/sub/f2`, 'out2');
    expect(readFileSync(join(work, 'out2/f2'), 'utf8')).toBe('two\n');
    const onFile = await cp(`${id}:/o`, 'single');
    expect(onFile.code).toBe(125);
    expect(onFile.stderr).toMatch(/cannot copy directory \/o onto single/);
    const missing = await cp(`${id}:/nothing`, 'x');
    expect(missing.code).toBe(125);
    expect(missing.stderr).toMatch(/\/nothing: no such file or directory/);

    const tar = await cp(`${id}:/o`, '-');
    expect(tar.code, tar.stderr).toBe(0);
    expect(tar.stdout.length % 512).toBe(0);
    expect(await cp('-', `${id}:/fromtar`, tar.stdout)).toMatchObject({ code: 0, stderr: '' });
    expect(await sh('cat /fromtar/o/sub/f2 && readlink /fromtar/o/l')).toBe('two\nf1\n');
  });

  it('keeps guest-made symlinks as symlinks on the host, and changes nothing outside the destination', async () => {
    await sh(
      'mkdir -p /ev/real && echo data > /ev/real/f && ln -s /etc/passwd /ev/pw && ln -s /etc /ev/etcdir && ln -s real /ev/reallink && ln -s ../../.. /ev/up',
    );
    const passwd = sha1('/etc/passwd');
    const etc = readdirSync('/etc').sort();
    const before = readdirSync(work).sort();
    expect(await cp(`${id}:/ev`, 'ev')).toMatchObject({ code: 0, stderr: '' });
    expect(readlinkSync(join(work, 'ev/pw'))).toBe('/etc/passwd');
    expect(readlinkSync(join(work, 'ev/etcdir'))).toBe('/etc');
    expect(readlinkSync(join(work, 'ev/reallink'))).toBe('real');
    expect(readlinkSync(join(work, 'ev/up'))).toBe('../../..');
    expect(lstatSync(join(work, 'ev/pw')).isSymbolicLink()).toBe(true);
    // A symlinked directory copied out on its own is the link.
    expect(await cp(`${id}:/ev/etcdir`, 'etclink')).toMatchObject({ code: 0, stderr: '' });
    expect(lstatSync(join(work, 'etclink')).isSymbolicLink()).toBe(true);
    // Copying again over what is there does not write through the links either.
    expect(await cp(`${id}:/ev/.`, 'ev')).toMatchObject({ code: 0, stderr: '' });
    expect(readlinkSync(join(work, 'ev/pw'))).toBe('/etc/passwd');
    expect(sha1('/etc/passwd')).toBe(passwd);
    expect(readdirSync('/etc').sort()).toEqual(etc);
    expect(readdirSync(work).sort()).toEqual([...before, 'etclink', 'ev'].sort());
  });
});

describe('roost cp through a daemon: 10,000 files in and out', () => {
  const home = new TestHome();
  let daemon: ServeHandle | undefined;
  let work: string;

  beforeAll(async () => {
    work = mkdtempSync(join(tmpdir(), 'roost-cp-big-'));
    daemon = await serve({ home: home.root });
  });
  afterAll(async () => {
    await daemon?.close();
    await home.cleanup();
    rmSync(work, { recursive: true, force: true });
  });

  it('round-trips contents, modes, symlinks, mtimes and owners', async () => {
    const env = home.env; // the CLI finds the daemon on the home's socket
    const run = await roost(env, ['run', '-d', '-m', '512']);
    expect(run.code, run.stderr).toBe(0);
    const id = run.stdout.toString().trim();

    const big = join(work, 'big');
    const modes = [0o644, 0o600, 0o755, 0o640, 0o444];
    for (let d = 0; d < 100; d++) {
      const dir = join(big, `d${String(d).padStart(3, '0')}`);
      mkdirSync(dir, { recursive: true });
      for (let f = 0; f < 100; f++) {
        const i = d * 100 + f;
        const file = join(dir, `f${String(f).padStart(3, '0')}`);
        writeFileSync(file, `file ${i}\n`.repeat(i % 37));
        chmodSync(file, modes[i % modes.length]!);
        if (asRoot && i % 7 === 0) chownSync(file, 1000 + (i % 5), 2000 + (i % 3));
        utimesSync(file, 1_600_000_000 + i, 1_600_000_000 + i);
      }
      symlinkSync(d % 2 ? 'f000' : '/etc/passwd', join(dir, 'link'));
      lutimesSync(join(dir, 'link'), 1_550_000_000, 1_550_000_000);
      chmodSync(dir, d % 3 ? 0o755 : 0o750);
      utimesSync(dir, 1_500_000_000 + d, 1_500_000_000 + d);
    }
    utimesSync(big, 1_400_000_000, 1_400_000_000);

    let started = Date.now();
    const copyIn = await roost(env, ['cp', big, `${id}:/big`]);
    const inMs = Date.now() - started;
    expect(copyIn).toMatchObject({ code: 0, stderr: '' });
    const counts = await roost(env, [
      'exec',
      id,
      '--',
      'sh',
      '-c',
      'find /big -type f | wc -l; find /big -type l | wc -l; stat -c "%a %u:%g %Y" /big/d007/f000 /big/d000',
    ]);
    expect(counts.stdout.toString()).toBe(
      `10000\n100\n${(0o644).toString(8)} ${asRoot ? '1000:2001' : `${process.getuid!()}:${process.getgid!()}`} ${1_600_000_700}\n750 ${asRoot ? '0:0' : `${process.getuid!()}:${process.getgid!()}`} 1500000000\n`,
    );

    started = Date.now();
    const copyOut = await roost(env, ['cp', `${id}:/big`, join(work, 'back')]);
    const outMs = Date.now() - started;
    expect(copyOut).toMatchObject({ code: 0, stderr: '' });
    const want = snapshot(big, { owners: asRoot });
    const got = snapshot(join(work, 'back'), { owners: asRoot });
    expect(got.size).toBe(10_000 + 100 + 100 + 1);
    const diff = [...want].filter(([k, v]) => got.get(k) !== v).map(([k, v]) => `${k}: want ${v}, got ${got.get(k)}`);
    expect(diff.slice(0, 10)).toEqual([]);
    process.stderr.write(`[cp.test] 10,000 files (${want.size} entries): in ${inMs} ms, out ${outMs} ms\n`);
    expect(await roost(env, ['rm', '-f', id])).toMatchObject({ code: 0 });
  }, 600_000);
});
