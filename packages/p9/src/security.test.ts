import { existsSync, lstatSync, mkdirSync, mkdtempSync, readFileSync, renameSync, rmSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { Errno, OpenFlag, SetattrMask } from './constants.js';
import { P9Error } from './errors.js';
import { connectInProcess, errnoOf, type Connected } from './harness.js';
import { LocalBackend, type LocalBackendOptions } from './local.js';
import { P9Server } from './server.js';
import { decodeDirents } from './wire.js';

const b = (s: string): Buffer => Buffer.from(s);

let base: string;
let dir: string;
let outside: string;
let server: P9Server;
let c: Connected;

async function serve(options: LocalBackendOptions = {}, readOnly = false): Promise<void> {
  server = new P9Server({ exports: { '': { backend: new LocalBackend(dir, options), readOnly }, other: { backend: new LocalBackend(outside) } } });
  c = await connectInProcess(server);
  await c.client.attach(1, '', 1000);
}

beforeEach(() => {
  base = mkdtempSync(join(tmpdir(), 'p9-escape-'));
  dir = join(base, 'export');
  outside = join(base, 'outside');
  mkdirSync(dir);
  mkdirSync(outside);
  writeFileSync(join(outside, 'secret'), 'SECRET');
  writeFileSync(join(dir, 'inside'), 'inside');
});

afterEach(async () => {
  c.client.close();
  await server.close();
  rmSync(base, { recursive: true, force: true });
});

describe('escapes', () => {
  it('`..` at the export root stays at the root', async () => {
    await serve();
    const root = await c.client.rpc({ type: 'Tgetattr', fid: 1, requestMask: 0x7ffn }, 'Rgetattr');
    const up = await c.client.walk(1, 2, ['..', '..', '..']);
    expect(up.qids.every((q) => q.path === root.qid.path)).toBe(true);
    await c.client.rpc({ type: 'Tlopen', fid: 2, flags: 0 });
    const names = decodeDirents((await c.client.rpc({ type: 'Treaddir', fid: 2, offset: 0n, count: 8192 }, 'Rreaddir')).data).map((e) => e.name.toString());
    expect(names.sort()).toEqual(['.', '..', 'inside']);
    // `..` named in a create is refused, not resolved.
    await c.client.walk(1, 3, []);
    expect(await errnoOf(c.client.rpc({ type: 'Tlcreate', fid: 3, name: b('..'), flags: OpenFlag.RDWR, mode: 0o644, gid: 0 }))).toBe(Errno.EINVAL);
    expect(await errnoOf(c.client.rpc({ type: 'Tmkdir', dfid: 1, name: b('../x'), mode: 0o755, gid: 0 }))).toBe(Errno.EINVAL);
    expect(await errnoOf(c.client.rpc({ type: 'Trenameat', olddirfid: 1, oldname: b('inside'), newdirfid: 1, newname: b('../../moved') }))).toBe(Errno.EINVAL);
    expect(existsSync(join(base, 'moved'))).toBe(false);
  });

  it('a symlink to / inside the export is never followed (host-made or guest-made)', async () => {
    symlinkSync('/', join(dir, 'hostroot'));
    await serve();
    await c.client.rpc({ type: 'Tsymlink', fid: 1, name: b('guestroot'), target: b('../../../../'), gid: 0 }, 'Rsymlink');
    for (const link of ['hostroot', 'guestroot']) {
      // The walk stops at the link; the client, not the server, would follow it (inside the guest).
      expect((await c.client.walk(1, 2, [link, 'etc', 'passwd'])).qids).toHaveLength(1);
      await c.client.walk(1, 2, [link]);
      expect(await errnoOf(c.client.rpc({ type: 'Tlopen', fid: 2, flags: 0 }))).toBe(Errno.ELOOP);
      // Using the link as a directory fails: no create, mkdir, rename or unlink through it.
      expect(await errnoOf(c.client.rpc({ type: 'Tmkdir', dfid: 2, name: b('pwned'), mode: 0o755, gid: 0 }))).not.toBe(0);
      expect(await errnoOf(c.client.rpc({ type: 'Tlcreate', fid: 2, name: b('pwned'), flags: OpenFlag.RDWR, mode: 0o644, gid: 0 }))).not.toBe(0);
      expect(await errnoOf(c.client.rpc({ type: 'Trenameat', olddirfid: 1, oldname: b('inside'), newdirfid: 2, newname: b('pwned') }))).not.toBe(0);
      expect(await errnoOf(c.client.rpc({ type: 'Tunlinkat', dirfid: 2, name: b('tmp'), flags: 0 }))).not.toBe(0);
      // setattr on the link changes the link's times at most, never what it points at.
      const before = statSync('/').mode;
      await c.client.rpc({
        type: 'Tsetattr',
        fid: 2,
        valid: SetattrMask.MODE,
        mode: 0o777,
        uid: 0,
        gid: 0,
        size: 0n,
        atimeSec: 0n,
        atimeNsec: 0n,
        mtimeSec: 0n,
        mtimeNsec: 0n,
      });
      expect(statSync('/').mode).toBe(before);
      await c.client.clunk(2);
    }
    expect(existsSync('/pwned')).toBe(false);
  });

  it('a host symlink swapped in between walk and open is not followed', async () => {
    mkdirSync(join(dir, 'd'));
    writeFileSync(join(dir, 'd', 'f'), 'original');
    // No cached directories: every request walks the host again (the strictest reading).
    await serve({ cacheTtlMs: 0 });
    await c.client.walk(1, 2, ['d', 'f']);
    await c.client.walk(1, 3, ['d']);
    // The last component becomes a symlink to a secret outside.
    renameSync(join(dir, 'd', 'f'), join(dir, 'd', 'f.old'));
    symlinkSync(join(outside, 'secret'), join(dir, 'd', 'f'));
    expect(await errnoOf(c.client.rpc({ type: 'Tlopen', fid: 2, flags: 0 }))).toBe(Errno.ELOOP);
    // A directory on the path becomes a symlink to the outside.
    renameSync(join(dir, 'd'), join(dir, 'd.old'));
    symlinkSync(outside, join(dir, 'd'));
    // O_DIRECTORY | O_NOFOLLOW on a symlink: Linux answers ENOTDIR.
    const refusals = [Errno.ELOOP, Errno.ENOTDIR];
    expect(refusals).toContain(await errnoOf(c.client.rpc({ type: 'Tlopen', fid: 2, flags: 0 })));
    expect(refusals).toContain(await errnoOf(c.client.rpc({ type: 'Tlcreate', fid: 3, name: b('dropped'), flags: OpenFlag.RDWR, mode: 0o644, gid: 0 })));
    expect(refusals).toContain(await errnoOf(c.client.rpc({ type: 'Tgetattr', fid: 2, requestMask: 0x7ffn })));
    expect(existsSync(join(outside, 'dropped'))).toBe(false);
  });

  it('with the directory cache, a swapped directory is reached as the directory it was, still inside', async () => {
    mkdirSync(join(dir, 'd'));
    writeFileSync(join(dir, 'd', 'f'), 'original');
    await serve();
    await c.client.walk(1, 2, ['d', 'f']);
    renameSync(join(dir, 'd'), join(dir, 'd.old'));
    symlinkSync(outside, join(dir, 'd'));
    // Either the cached directory (now d.old, inside the export) or an error: never the outside.
    const r = await c.client.rpc({ type: 'Tlopen', fid: 2, flags: 0 }).then(
      () => c.client.rpc({ type: 'Tread', fid: 2, offset: 0n, count: 100 }, 'Rread').then((x) => x.data.toString()),
      (err: P9Error) => err.errno,
    );
    expect(['original', Errno.ELOOP, Errno.ENOTDIR]).toContain(r);
  });

  it('hard links cannot reach outside: other exports are EXDEV, a link to a symlink is a link to the symlink', async () => {
    symlinkSync(join(outside, 'secret'), join(dir, 'out-link'));
    await serve();
    await c.client.attach(9, 'other');
    await c.client.walk(9, 10, ['secret']);
    expect(await errnoOf(c.client.rpc({ type: 'Tlink', dfid: 1, fid: 10, name: b('stolen') }))).toBe(Errno.EXDEV);
    await c.client.walk(1, 2, ['out-link']);
    await c.client.rpc({ type: 'Tlink', dfid: 1, fid: 2, name: b('second-link') }, 'Rlink');
    expect(lstatSync(join(dir, 'second-link')).isSymbolicLink()).toBe(true);
    expect(statSync(join(outside, 'secret')).nlink).toBe(1);
    expect(await errnoOf(c.client.rpc({ type: 'Tlink', dfid: 1, fid: 1, name: b('root-link') }))).toBe(Errno.EPERM);
  });

  it('names with a slash, a NUL, or over 255 bytes are refused', async () => {
    await serve();
    expect(await errnoOf(c.client.rpc({ type: 'Tmkdir', dfid: 1, name: b('a/b'), mode: 0o755, gid: 0 }))).toBe(Errno.EINVAL);
    expect(await errnoOf(c.client.rpc({ type: 'Tmkdir', dfid: 1, name: Buffer.from([0x61, 0, 0x62]), mode: 0o755, gid: 0 }))).toBe(Errno.EINVAL);
    expect(await errnoOf(c.client.rpc({ type: 'Tmkdir', dfid: 1, name: Buffer.alloc(256, 0x61), mode: 0o755, gid: 0 }))).toBe(Errno.ENAMETOOLONG);
    expect(await errnoOf(c.client.rpc({ type: 'Tmkdir', dfid: 1, name: b(''), mode: 0o755, gid: 0 }))).toBe(Errno.EINVAL);
  });

  it('opens only regular files and directories (a host FIFO would block the server)', async () => {
    const { execFileSync } = await import('node:child_process');
    execFileSync('mkfifo', [join(dir, 'fifo')]);
    await serve();
    await c.client.walk(1, 2, ['fifo']);
    expect(await errnoOf(c.client.rpc({ type: 'Tlopen', fid: 2, flags: 0 }))).toBe(Errno.EPERM);
  });
});

describe('read-only exports', () => {
  it('refuse every change with EROFS and serve reads', async () => {
    mkdirSync(join(dir, 'sub'));
    await serve({}, true);
    const { client } = c;
    await client.walk(1, 2, ['inside']);
    for (const flags of [OpenFlag.WRONLY, OpenFlag.RDWR, OpenFlag.RDONLY | OpenFlag.TRUNC]) {
      expect(await errnoOf(client.rpc({ type: 'Tlopen', fid: 2, flags }))).toBe(Errno.EROFS);
    }
    const setattr = {
      type: 'Tsetattr',
      fid: 2,
      valid: SetattrMask.SIZE,
      mode: 0,
      uid: 0,
      gid: 0,
      size: 0n,
      atimeSec: 0n,
      atimeNsec: 0n,
      mtimeSec: 0n,
      mtimeNsec: 0n,
    } as const;
    const refused = [
      client.walk(1, 3, []).then(() => client.rpc({ type: 'Tlcreate', fid: 3, name: b('n'), flags: OpenFlag.RDWR, mode: 0o644, gid: 0 })),
      client.rpc({ type: 'Tmkdir', dfid: 1, name: b('n'), mode: 0o755, gid: 0 }),
      client.rpc({ type: 'Tsymlink', fid: 1, name: b('n'), target: b('x'), gid: 0 }),
      client.rpc({ type: 'Tlink', dfid: 1, fid: 2, name: b('n') }),
      client.rpc({ type: 'Trename', fid: 2, dfid: 1, name: b('n') }),
      client.rpc({ type: 'Trenameat', olddirfid: 1, oldname: b('inside'), newdirfid: 1, newname: b('n') }),
      client.rpc({ type: 'Tunlinkat', dirfid: 1, name: b('inside'), flags: 0 }),
      client.rpc({ type: 'Tmknod', dfid: 1, name: b('n'), mode: 0o10644, major: 0, minor: 0, gid: 0 }),
      client.rpc(setattr),
      client.walk(2, 4, []).then(() => client.rpc({ type: 'Txattrcreate', fid: 4, name: b('user.x'), size: 1n, flags: 0 })),
      client.walk(1, 5, ['sub']).then(() => client.rpc({ type: 'Tremove', fid: 5 })),
    ];
    for (const p of refused) expect(await errnoOf(p)).toBe(Errno.EROFS);
    await client.rpc({ type: 'Tlopen', fid: 2, flags: OpenFlag.RDONLY }, 'Rlopen');
    expect((await client.rpc({ type: 'Tread', fid: 2, offset: 0n, count: 100 }, 'Rread')).data.toString()).toBe('inside');
    expect(readFileSync(join(dir, 'inside'), 'utf8')).toBe('inside');
    expect(existsSync(join(dir, 'sub'))).toBe(true);
  });
});

describe('quota', () => {
  it('cuts a write at the limit, then answers ENOSPC; removals and truncates give space back', async () => {
    writeFileSync(join(dir, 'inside'), Buffer.alloc(1000));
    await serve({ quotaBytes: 10_000 });
    const { client } = c;
    await client.walk(1, 2, []);
    await client.rpc({ type: 'Tlcreate', fid: 2, name: b('big'), flags: OpenFlag.RDWR, mode: 0o644, gid: 0 }, 'Rlcreate');
    expect((await client.rpc({ type: 'Twrite', fid: 2, offset: 0n, data: Buffer.alloc(8000) }, 'Rwrite')).count).toBe(8000);
    // Rewriting bytes already there costs nothing.
    expect((await client.rpc({ type: 'Twrite', fid: 2, offset: 0n, data: Buffer.alloc(8000, 1) }, 'Rwrite')).count).toBe(8000);
    expect((await client.rpc({ type: 'Twrite', fid: 2, offset: 8000n, data: Buffer.alloc(4000) }, 'Rwrite')).count).toBe(1000);
    expect(await errnoOf(client.rpc({ type: 'Twrite', fid: 2, offset: 9000n, data: Buffer.alloc(10) }))).toBe(Errno.ENOSPC);
    const full = await client.rpc({ type: 'Tstatfs', fid: 1 }, 'Rstatfs');
    expect(full.bavail).toBe(0n);
    // Growing by truncate is charged too.
    const grow = {
      type: 'Tsetattr',
      fid: 2,
      valid: SetattrMask.SIZE,
      mode: 0,
      uid: 0,
      gid: 0,
      size: 20_000n,
      atimeSec: 0n,
      atimeNsec: 0n,
      mtimeSec: 0n,
      mtimeNsec: 0n,
    } as const;
    expect(await errnoOf(client.rpc(grow))).toBe(Errno.ENOSPC);
    await client.rpc({ ...grow, size: 4000n }, 'Rsetattr');
    expect((await client.rpc({ type: 'Twrite', fid: 2, offset: 4000n, data: Buffer.alloc(5000) }, 'Rwrite')).count).toBe(5000);
    await client.clunk(2);
    await client.rpc({ type: 'Tunlinkat', dirfid: 1, name: b('big'), flags: 0 }, 'Runlinkat');
    await client.walk(1, 3, []);
    await client.rpc({ type: 'Tlcreate', fid: 3, name: b('again'), flags: OpenFlag.RDWR, mode: 0o644, gid: 0 }, 'Rlcreate');
    expect((await client.rpc({ type: 'Twrite', fid: 3, offset: 0n, data: Buffer.alloc(9000) }, 'Rwrite')).count).toBe(9000);
    expect(await errnoOf(client.rpc({ type: 'Twrite', fid: 3, offset: 9000n, data: Buffer.alloc(1) }))).toBe(Errno.ENOSPC);
  });
});
