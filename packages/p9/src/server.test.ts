import { getAttributeSync } from '@napi-rs/xattr';
import { existsSync, lstatSync, mkdirSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { AT_REMOVEDIR, Errno, GetattrMask, LockStatus, LockType, OpenFlag, S_IFDIR, S_IFREG, SetattrMask } from './constants.js';
import { connectInProcess, errnoOf, type Connected } from './harness.js';
import { LocalBackend } from './local.js';
import { P9Server } from './server.js';
import { decodeDirents } from './wire.js';

const b = (s: string): Buffer => Buffer.from(s);

let dir: string;
let server: P9Server;
let c: Connected;

beforeEach(async () => {
  dir = mkdtempSync(join(tmpdir(), 'p9-server-'));
  server = new P9Server({ exports: { '': { backend: new LocalBackend(dir) } } });
  c = await connectInProcess(server);
  await c.client.attach(1, '', 1000);
});

afterEach(async () => {
  c.client.close();
  await server.close();
  rmSync(dir, { recursive: true, force: true });
});

/** Lists a directory fid (opened here) through Treaddir, following the cookies. */
async function list(fid: number, count = 8192): Promise<string[]> {
  const names: string[] = [];
  let offset = 0n;
  for (;;) {
    const r = await c.client.rpc({ type: 'Treaddir', fid, offset, count }, 'Rreaddir');
    const entries = decodeDirents(r.data);
    if (entries.length === 0) return names;
    for (const e of entries) names.push(e.name.toString());
    offset = entries[entries.length - 1]!.offset;
  }
}

describe('a scripted session against a local directory', () => {
  it('negotiates the smaller msize, and refuses other versions and tiny msizes', async () => {
    const big = await connectInProcess(server, 0);
    expect(await big.client.version(8 << 20)).toMatchObject({ msize: 1 << 20, version: '9P2000.L' });
    expect(await big.client.rpc({ type: 'Tversion', msize: 65536, version: '9P2000.u' }, 'Rversion')).toMatchObject({ version: 'unknown' });
    expect(await big.client.rpc({ type: 'Tversion', msize: 512, version: '9P2000.L' }, 'Rversion')).toMatchObject({ version: 'unknown' });
    big.client.close();
  });

  it('creates, writes, reads, lists, stats, renames and removes', async () => {
    const { client } = c;
    await client.walk(1, 2, []);
    const created = await client.rpc({ type: 'Tlcreate', fid: 2, name: b('a.txt'), flags: OpenFlag.RDWR, mode: 0o640, gid: 1001 }, 'Rlcreate');
    expect(created.qid.type).toBe(0);
    expect((await client.rpc({ type: 'Twrite', fid: 2, offset: 0n, data: b('hello, world') }, 'Rwrite')).count).toBe(12);
    expect((await client.rpc({ type: 'Tread', fid: 2, offset: 7n, count: 100 }, 'Rread')).data.toString()).toBe('world');
    expect(readFileSync(join(dir, 'a.txt'), 'utf8')).toBe('hello, world');

    // The host file is plain; the guest's view is in user.virtfs.* attributes.
    expect(statSync(join(dir, 'a.txt')).mode & 0o7777).toBe(0o644);
    expect(getAttributeSync(join(dir, 'a.txt'), 'user.virtfs.uid')?.readUInt32LE(0)).toBe(1000);
    expect(getAttributeSync(join(dir, 'a.txt'), 'user.virtfs.gid')?.readUInt32LE(0)).toBe(1001);
    expect(getAttributeSync(join(dir, 'a.txt'), 'user.virtfs.mode')?.readUInt32LE(0)).toBe(S_IFREG | 0o640);
    const attr = await client.rpc({ type: 'Tgetattr', fid: 2, requestMask: BigInt(GetattrMask.ALL) }, 'Rgetattr');
    expect(attr).toMatchObject({ valid: BigInt(GetattrMask.BASIC), mode: S_IFREG | 0o640, uid: 1000, gid: 1001, size: 12n, nlink: 1n });

    await client.rpc({ type: 'Tmkdir', dfid: 1, name: b('sub'), mode: 0o750, gid: 5 }, 'Rmkdir');
    expect(statSync(join(dir, 'sub')).mode & 0o7777).toBe(0o755);
    await client.walk(1, 3, ['sub']);
    expect((await client.rpc({ type: 'Tgetattr', fid: 3, requestMask: 0x7ffn }, 'Rgetattr')).mode).toBe(S_IFDIR | 0o750);

    // rename moves the fid's node: fid 2 still names the file after it moved.
    await client.rpc({ type: 'Trename', fid: 2, dfid: 3, name: b('b.txt') }, 'Rrename');
    expect(existsSync(join(dir, 'sub', 'b.txt'))).toBe(true);
    expect((await client.rpc({ type: 'Tgetattr', fid: 2, requestMask: 0x7ffn }, 'Rgetattr')).size).toBe(12n);
    await client.rpc({ type: 'Trenameat', olddirfid: 3, oldname: b('b.txt'), newdirfid: 1, newname: b('c.txt') }, 'Rrenameat');
    expect(readFileSync(join(dir, 'c.txt'), 'utf8')).toBe('hello, world');

    await client.walk(1, 4, []);
    await client.rpc({ type: 'Tlopen', fid: 4, flags: OpenFlag.RDONLY | OpenFlag.DIRECTORY }, 'Rlopen');
    expect((await list(4)).sort()).toEqual(['.', '..', 'c.txt', 'sub']);

    await client.rpc({ type: 'Tunlinkat', dirfid: 1, name: b('c.txt'), flags: 0 }, 'Runlinkat');
    // The open file is still readable through its fid after its last name went.
    expect((await client.rpc({ type: 'Tread', fid: 2, offset: 0n, count: 5 }, 'Rread')).data.toString()).toBe('hello');
    expect((await client.rpc({ type: 'Tgetattr', fid: 2, requestMask: 0x7ffn }, 'Rgetattr')).nlink).toBe(0n);
    expect(await errnoOf(client.rpc({ type: 'Tunlinkat', dirfid: 1, name: b('sub'), flags: 0 }))).toBe(Errno.EISDIR);
    await client.rpc({ type: 'Tunlinkat', dirfid: 1, name: b('sub'), flags: AT_REMOVEDIR }, 'Runlinkat');
    expect(existsSync(join(dir, 'sub'))).toBe(false);
    // fid 3 named the removed directory: its path is gone, not reused.
    mkdirSync(join(dir, 'sub'));
    expect(await errnoOf(client.rpc({ type: 'Tgetattr', fid: 3, requestMask: 0x7ffn }))).toBe(Errno.ENOENT);
    for (const fid of [2, 3, 4]) await client.clunk(fid);
  });

  it('walks partially, and answers Rlerror when the first name fails', async () => {
    mkdirSync(join(dir, 'x/y'), { recursive: true });
    const partial = await c.client.walk(1, 2, ['x', 'y', 'nope', 'z']);
    expect(partial.qids).toHaveLength(2);
    expect(await errnoOf(c.client.walk(2, 3, []))).toBe(Errno.EBADF); // newfid was not made
    expect(await errnoOf(c.client.walk(1, 2, ['nope']))).toBe(Errno.ENOENT);
    expect(await errnoOf(c.client.walk(1, 2, ['a/b']))).toBe(Errno.EINVAL);
    expect(await errnoOf(c.client.walk(1, 2, ['.']))).toBe(Errno.EINVAL);
    expect(await errnoOf(c.client.walk(1, 1, ['x']).then(() => c.client.walk(5, 6, [])))).toBe(Errno.EBADF);
  });

  it('sets mode, owner, size and times', async () => {
    writeFileSync(join(dir, 'f'), 'abcdef');
    const { client } = c;
    await client.walk(1, 2, ['f']);
    // A host file without attributes shows its host owner and mode.
    const before = await client.rpc({ type: 'Tgetattr', fid: 2, requestMask: 0x7ffn }, 'Rgetattr');
    expect(before.uid).toBe(process.getuid!());
    const valid = SetattrMask.MODE | SetattrMask.UID | SetattrMask.GID | SetattrMask.SIZE | SetattrMask.MTIME | SetattrMask.MTIME_SET | SetattrMask.ATIME;
    await client.rpc(
      { type: 'Tsetattr', fid: 2, valid, mode: 0o4711, uid: 42, gid: 43, size: 3n, atimeSec: 0n, atimeNsec: 0n, mtimeSec: 1_000_000_000n, mtimeNsec: 0n },
      'Rsetattr',
    );
    const after = await client.rpc({ type: 'Tgetattr', fid: 2, requestMask: 0x7ffn }, 'Rgetattr');
    expect(after).toMatchObject({ mode: S_IFREG | 0o4711, uid: 42, gid: 43, size: 3n, mtimeSec: 1_000_000_000n });
    expect(Number(after.atimeSec)).toBeGreaterThan(1_600_000_000);
    expect(statSync(join(dir, 'f')).mode & 0o7777).toBe(0o644);
    expect(readFileSync(join(dir, 'f'), 'utf8')).toBe('abc');
  });

  it('makes symlinks (plain files on the host) it never follows, hard links, device nodes, and reads links', async () => {
    writeFileSync(join(dir, 'target'), 'T');
    const { client } = c;
    await client.rpc({ type: 'Tsymlink', fid: 1, name: b('ln'), target: b('/etc/passwd'), gid: 0 }, 'Rsymlink');
    await client.walk(1, 2, ['ln']);
    expect((await client.rpc({ type: 'Treadlink', fid: 2 }, 'Rreadlink')).target.toString()).toBe('/etc/passwd');
    expect(await errnoOf(client.rpc({ type: 'Tlopen', fid: 2, flags: 0 }))).toBe(Errno.ELOOP);
    expect((await client.walk(1, 3, ['ln', 'x'])).qids).toHaveLength(1); // stops at the symlink
    await client.walk(1, 3, ['target']);
    await client.rpc({ type: 'Tlink', dfid: 1, fid: 3, name: b('hard') }, 'Rlink');
    expect(lstatSync(join(dir, 'hard')).ino).toBe(lstatSync(join(dir, 'target')).ino);
    // A device node is a plain empty file typed by attributes (QEMU's mapped-xattr): the guest sees /dev/null's numbers, the host a file.
    await client.rpc({ type: 'Tmknod', dfid: 1, name: b('dev'), mode: 0o20644, major: 1, minor: 3, gid: 0 }, 'Rmknod');
    expect(lstatSync(join(dir, 'dev')).isFile()).toBe(true);
    expect(lstatSync(join(dir, 'dev')).mode & 0o7777).toBe(0o644);
    await client.walk(1, 6, ['dev']);
    const dev = await client.rpc({ type: 'Tgetattr', fid: 6, requestMask: 0x7ffn }, 'Rgetattr');
    expect(dev.mode).toBe(0o20644);
    expect(dev.rdev).toBe(0x103n);
    expect(await errnoOf(client.rpc({ type: 'Tlopen', fid: 6, flags: 0 }))).toBe(Errno.ENXIO);
    // A guest symlink is a plain file holding its target on the host.
    expect(lstatSync(join(dir, 'ln')).isFile()).toBe(true);
    expect(readFileSync(join(dir, 'ln'), 'utf8')).toBe('/etc/passwd');
  });

  it('reads and writes extended attributes through xattr fids, hiding user.virtfs.*', async () => {
    writeFileSync(join(dir, 'f'), '');
    const { client } = c;
    await client.walk(1, 2, ['f']);
    const setx = async (name: string, value: string, flags = 0): Promise<void> => {
      await client.walk(2, 10, []);
      await client.rpc({ type: 'Txattrcreate', fid: 10, name: b(name), size: BigInt(value.length), flags }, 'Rxattrcreate');
      if (value.length > 0) await client.rpc({ type: 'Twrite', fid: 10, offset: 0n, data: b(value) }, 'Rwrite');
      await client.clunk(10);
    };
    const getx = async (name: string): Promise<string> => {
      const r = await client.rpc({ type: 'Txattrwalk', fid: 2, newfid: 11, name: b(name) }, 'Rxattrwalk');
      const data = await client.rpc({ type: 'Tread', fid: 11, offset: 0n, count: Number(r.size) }, 'Rread');
      await client.clunk(11);
      return data.data.toString();
    };
    await setx('user.color', 'blue');
    expect(getAttributeSync(join(dir, 'f'), 'user.color')?.toString()).toBe('blue');
    expect(await getx('user.color')).toBe('blue');
    await setx('system.posix_acl_access', 'ACL');
    expect(getAttributeSync(join(dir, 'f'), 'user.virtfs.system.posix_acl_access')?.toString()).toBe('ACL');
    await client.rpc({
      type: 'Tsetattr',
      fid: 2,
      valid: SetattrMask.UID,
      mode: 0,
      uid: 7,
      gid: 0,
      size: 0n,
      atimeSec: 0n,
      atimeNsec: 0n,
      mtimeSec: 0n,
      mtimeNsec: 0n,
    });
    expect((await getx('')).split('\0').filter(Boolean).sort()).toEqual(['system.posix_acl_access', 'user.color']);
    expect(await errnoOf(getx('user.virtfs.uid'))).toBe(Errno.ENODATA);
    expect(await errnoOf(getx('security.capability'))).toBe(Errno.ENODATA);
    await client.walk(2, 10, []);
    await client.rpc({ type: 'Txattrcreate', fid: 10, name: b('user.virtfs.uid'), size: 4n, flags: 0 });
    await client.rpc({ type: 'Twrite', fid: 10, offset: 0n, data: Buffer.alloc(4) });
    expect(await errnoOf(client.clunk(10))).toBe(Errno.EACCES);
    expect(await errnoOf(setx('user.color', 'red', 1))).toBe(Errno.EEXIST);
    await setx('user.color', '');
    expect(await errnoOf(getx('user.color'))).toBe(Errno.ENODATA);
  });

  it('keeps POSIX locks per owner: conflicts are BLOCKED, getlock names the holder, unlock frees', async () => {
    writeFileSync(join(dir, 'f'), '');
    const { client } = c;
    await client.walk(1, 2, ['f']);
    await client.rpc({ type: 'Tlopen', fid: 2, flags: OpenFlag.RDWR });
    const lock = (type: number, start: bigint, length: bigint, procId: number) =>
      client.rpc({ type: 'Tlock', fid: 2, lockType: type, flags: 0, start, length, procId, clientId: 'guest' }, 'Rlock').then((r) => r.status);
    expect(await lock(LockType.WRLCK, 0n, 10n, 100)).toBe(LockStatus.SUCCESS);
    expect(await lock(LockType.RDLCK, 5n, 10n, 200)).toBe(LockStatus.BLOCKED);
    expect(await lock(LockType.RDLCK, 10n, 0n, 200)).toBe(LockStatus.SUCCESS);
    const probe = await client.rpc({ type: 'Tgetlock', fid: 2, lockType: LockType.WRLCK, start: 0n, length: 0n, procId: 300, clientId: 'guest' }, 'Rgetlock');
    expect(probe).toMatchObject({ lockType: LockType.WRLCK, start: 0n, length: 10n, procId: 100 });
    expect(await lock(LockType.UNLCK, 0n, 0n, 100)).toBe(LockStatus.SUCCESS);
    expect(await lock(LockType.WRLCK, 0n, 5n, 300)).toBe(LockStatus.SUCCESS);
    // Another session (another guest) on the same export sees the same locks.
    const other = await connectInProcess(server);
    await other.client.attach(1);
    await other.client.walk(1, 2, ['f']);
    const r = await other.client.rpc(
      { type: 'Tlock', fid: 2, lockType: LockType.WRLCK, flags: 0, start: 0n, length: 1n, procId: 300, clientId: 'guest' },
      'Rlock',
    );
    expect(r.status).toBe(LockStatus.BLOCKED);
    // ... until the session holding them closes.
    await c.session.close();
    const again = await other.client.rpc(
      { type: 'Tlock', fid: 2, lockType: LockType.WRLCK, flags: 0, start: 0n, length: 1n, procId: 300, clientId: 'guest' },
      'Rlock',
    );
    expect(again.status).toBe(LockStatus.SUCCESS);
    other.client.close();
  });

  it('lists a large directory across many Treaddirs, and continues from any cookie', async () => {
    for (let i = 0; i < 3000; i++) writeFileSync(join(dir, `file-${String(i).padStart(5, '0')}-with-a-long-name`), '');
    await c.client.walk(1, 2, []);
    await c.client.rpc({ type: 'Tlopen', fid: 2, flags: 0 });
    const names = await list(2, 4096);
    expect(names).toHaveLength(3002);
    expect(new Set(names).size).toBe(3002);
    // Restart from a cookie in the middle (a seekdir): the same tail.
    const mid = await c.client.rpc({ type: 'Treaddir', fid: 2, offset: 1500n, count: 4096 }, 'Rreaddir');
    expect(decodeDirents(mid.data)[0]!.name.toString()).toBe(names[1500]);
  });

  it('statfs reports the file system, and attach to a missing export fails', async () => {
    const s = await c.client.rpc({ type: 'Tstatfs', fid: 1 }, 'Rstatfs');
    expect(s.bsize).toBeGreaterThan(0);
    expect(s.namelen).toBe(255);
    expect(await errnoOf(c.client.attach(9, 'nope'))).toBe(Errno.ENOENT);
  });

  it('fsyncs, and truncates on open with O_TRUNC', async () => {
    writeFileSync(join(dir, 'f'), 'content');
    await c.client.walk(1, 2, ['f']);
    await c.client.rpc({ type: 'Tlopen', fid: 2, flags: OpenFlag.WRONLY | OpenFlag.TRUNC }, 'Rlopen');
    expect(readFileSync(join(dir, 'f'), 'utf8')).toBe('');
    await c.client.rpc({ type: 'Twrite', fid: 2, offset: 0n, data: b('new') });
    await c.client.rpc({ type: 'Tfsync', fid: 2, datasync: 0 }, 'Rfsync');
    expect(await errnoOf(c.client.rpc({ type: 'Tread', fid: 2, offset: 0n, count: 3 }))).toBe(Errno.EBADF);
    expect(readFileSync(join(dir, 'f'), 'utf8')).toBe('new');
  });
});
