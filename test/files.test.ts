import { createHash, randomBytes } from 'node:crypto';
import { spawnSync } from 'node:child_process';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { RoostError, type Runtime, type Sandbox } from '@roost/core';
import type { FileEvent } from '@roost/api';
import { TestHome } from './helpers.js';

// One booted sandbox (the default busybox image) serves the file tests; each
// test works in its own directory. The disk-full test boots a small second one.
const home = new TestHome();
let sb: Sandbox;
let runtime: Runtime;

beforeAll(async () => {
  sb = await home.create();
  runtime = await home.runtime();
});
afterAll(() => home.cleanup());

const sh = async (cmd: string): Promise<string> => {
  const r = await sb.commands.run(cmd);
  if (r.exitCode !== 0) throw new Error(`${cmd}: exit ${r.exitCode}: ${r.stderr}`);
  return r.stdout;
};

/** `count` chunks of `size` random bytes, hashed as they are produced (never all in memory). */
function randomSource(count: number, size: number, hash: ReturnType<typeof createHash>): AsyncIterable<Uint8Array> {
  return (async function* () {
    for (let i = 0; i < count; i++) {
      const chunk = randomBytes(size);
      hash.update(chunk);
      yield chunk;
    }
  })();
}

const mbps = (bytes: number, ms: number) => (bytes / 2 ** 20 / (ms / 1000)).toFixed(1);

describe('files: read and write', () => {
  it('round-trips a 1 GiB file both ways, streamed, with matching checksums', async () => {
    const size = 1 << 30;
    const hash = createHash('sha256');
    let t = performance.now();
    const info = await sb.files.write('/data/big/blob', randomSource(size >> 20, 1 << 20, hash));
    const writeMs = performance.now() - t;
    const sent = hash.digest('hex');
    expect(info).toMatchObject({ path: '/data/big/blob', type: 'file', size });

    t = performance.now();
    const inGuest = (await sh('sha256sum /data/big/blob')).split(' ')[0];
    const sumMs = performance.now() - t;
    expect(inGuest).toBe(sent);

    t = performance.now();
    const back = createHash('sha256');
    let n = 0;
    for await (const chunk of await sb.files.read('/data/big/blob', { format: 'stream' })) {
      back.update(chunk);
      n += chunk.length;
    }
    const readMs = performance.now() - t;
    expect(n).toBe(size);
    expect(back.digest('hex')).toBe(sent);
    console.log(
      `1 GiB: write ${(writeMs / 1000).toFixed(1)} s (${mbps(size, writeMs)} MB/s), read ${(readMs / 1000).toFixed(1)} s (${mbps(size, readMs)} MB/s), guest sha256sum ${(sumMs / 1000).toFixed(1)} s`,
    );
    await sb.files.remove('/data/big');
  }, 300_000);

  it('writes strings and bytes, creating parents, and reads them back as text, bytes and a stream', async () => {
    const info = await sb.files.write('/t1/a/b/c.txt', 'héllo\n');
    expect(info).toMatchObject({ path: '/t1/a/b/c.txt', name: 'c.txt', type: 'file', size: 7, mode: 0o644, uid: 0, gid: 0 });
    expect(Date.parse(info.mtime)).toBeGreaterThan(Date.now() - 60_000);
    expect(await sb.files.read('/t1/a/b/c.txt')).toBe('héllo\n');
    expect(await sh('stat -c "%a %U" /t1/a /t1/a/b')).toBe('755 root\n755 root\n');
    const bytes = randomBytes(300_000);
    await sb.files.write('/t1/bin', bytes);
    expect(Buffer.compare(Buffer.from(await sb.files.read('/t1/bin', { format: 'bytes' })), bytes)).toBe(0);
    const parts: Buffer[] = [];
    for await (const c of await sb.files.read('/t1/bin', { format: 'stream' })) parts.push(Buffer.from(c));
    expect(Buffer.compare(Buffer.concat(parts), bytes)).toBe(0);
    await sb.files.write('/t1/empty', '');
    expect(await sb.files.read('/t1/empty')).toBe('');
    const empty: Uint8Array[] = [];
    for await (const c of await sb.files.read('/t1/empty', { format: 'stream' })) empty.push(c);
    expect(empty).toEqual([]);
    // Relative paths resolve against /.
    expect(await sb.files.read('t1/a/b/c.txt')).toBe('héllo\n');
  });

  it('sets the mode, keeps the mode of a replaced file, and refuses to replace with noReplace', async () => {
    expect((await sb.files.write('/t2/secret', 'x', { mode: 0o600 })).mode).toBe(0o600);
    expect(await sh('stat -c %a /t2/secret')).toBe('600\n');
    expect(await sb.files.write('/t2/secret', 'y')).toMatchObject({ mode: 0o600, created: false });
    expect((await sb.files.write('/t2/exec', '#!/bin/sh\necho hi\n', { mode: 0o755 })).mode).toBe(0o755);
    expect(await sh('/t2/exec')).toBe('hi\n');
    const err = await sb.files.write('/t2/secret', 'z', { noReplace: true }).catch((e: unknown) => e);
    expect(err).toMatchObject({ code: 'ALREADY_EXISTS', details: { errno: 'EEXIST' } });
    expect(await sb.files.read('/t2/secret')).toBe('y');
    expect((await sb.files.write('/t2/new', 'n', { noReplace: true })).size).toBe(1);
    expect(await sh('ls -a /t2')).toBe('.\n..\nexec\nnew\nsecret\n');
  });

  it('runs as the requested user: a non-root user cannot write into a root-owned directory', async () => {
    await sh('mkdir -p /t3/rootonly && chmod 755 /t3/rootonly && mkdir -p /t3/open && chmod 777 /t3/open');
    const err = await sb.files.write('/t3/rootonly/f', 'x', { user: 'nobody' }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(RoostError);
    expect(err).toMatchObject({ code: 'PERMISSION_DENIED', details: { errno: 'EACCES', path: expect.stringMatching(/^\/t3\/rootonly/) } });
    console.log(`EACCES message: ${(err as Error).message}`);
    const mine = await sb.files.write('/t3/open/f', 'x', { user: 'nobody' });
    expect(mine).toMatchObject({ uid: 65534, gid: 65534 });
    await expect(sb.files.read('/etc/shadow', { user: 65534 })).rejects.toMatchObject({
      code: 'PERMISSION_DENIED',
      details: { errno: 'EACCES', path: '/etc/shadow' },
    });
    await expect(sb.files.stat('/', { user: 'nosuchuser' })).rejects.toMatchObject({ code: 'AGENT', message: expect.stringMatching(/nosuchuser/) });
  });

  it('maps errors: a missing path is NOT_FOUND, a directory read is INVALID_STATE, both with errno and path', async () => {
    const missing = await sb.files.read('/etc/nope').catch((e: unknown) => e);
    expect(missing).toMatchObject({
      code: 'NOT_FOUND',
      details: { errno: 'ENOENT', path: '/etc/nope' },
      message: expect.stringMatching(/^read \/etc\/nope: .*No such file or directory \(ENOENT\)$/),
    });
    console.log(`ENOENT message: ${(missing as Error).message}`);
    await expect(sb.files.read('/etc')).rejects.toMatchObject({ code: 'INVALID_STATE', details: { errno: 'EISDIR', path: '/etc' } });
    await expect(sb.files.read('/etc/nope', { format: 'stream' })).rejects.toMatchObject({ code: 'NOT_FOUND', details: { errno: 'ENOENT' } });
    await expect(sb.files.readArchive('/etc/nope')).rejects.toMatchObject({ code: 'NOT_FOUND' });
    await expect(sb.files.write('/etc/passwd/x', 'x')).rejects.toMatchObject({ code: 'INVALID_STATE', details: { errno: 'ENOTDIR' } });
    await expect(sb.files.write('/etc', 'x')).rejects.toMatchObject({ code: 'INVALID_STATE', details: { errno: 'EISDIR' } });
    await expect(sb.files.read('')).rejects.toMatchObject({ code: 'INVALID_ARGUMENT' });
  });

  it('reads and writes concurrently from several callers', async () => {
    const files = Array.from({ length: 8 }, (_, i) => ({ path: `/t4/f${i}`, data: randomBytes(2 << 20) }));
    const t = performance.now();
    await Promise.all(
      files.map((f) =>
        sb.files.write(
          f.path,
          (async function* () {
            for (let off = 0; off < f.data.length; off += 100_000) yield f.data.subarray(off, off + 100_000);
          })(),
        ),
      ),
    );
    const sums = (await sh('cd /t4 && sha256sum f*'))
      .trim()
      .split('\n')
      .map((l) => l.split(' ')[0]);
    expect(sums).toEqual(files.map((f) => createHash('sha256').update(f.data).digest('hex')));
    const back = await Promise.all([...files, ...files].map((f) => sb.files.read(f.path, { format: 'bytes' })));
    back.forEach((b, i) => expect(Buffer.compare(Buffer.from(b), files[i % 8]!.data)).toBe(0));
    console.log(`8 parallel writes + 16 parallel reads of 2 MiB: ${(performance.now() - t).toFixed(0)} ms`);
  });
});

describe('files: failures leave the old file', () => {
  it('an aborted write leaves neither a partial target nor a temporary file', async () => {
    await sb.files.write('/t5/keep', 'old');
    for (const target of ['/t5/keep', '/t5/new']) {
      const ac = new AbortController();
      let sent = 0;
      const source = (async function* () {
        for (;;) {
          const c = randomBytes(256 << 10);
          sent += c.length;
          if (sent > 4 << 20) ac.abort();
          yield c;
        }
      })();
      const t = performance.now();
      await expect(sb.files.write(target, source, { signal: ac.signal })).rejects.toMatchObject({ code: 'ABORTED' });
      console.log(`aborted write of ${target} settled ${(performance.now() - t).toFixed(0)} ms after it started`);
    }
    expect(await sh('ls -a /t5')).toBe('.\n..\nkeep\n');
    expect(await sb.files.read('/t5/keep')).toBe('old');
    // An abort before the call starts makes no call.
    await expect(sb.files.write('/t5/x', 'x', { signal: AbortSignal.abort() })).rejects.toMatchObject({ code: 'ABORTED' });
  });

  it('a data source that fails aborts the write and keeps the old file', async () => {
    await sb.files.write('/t6/f', 'old');
    const source = (async function* () {
      yield Buffer.alloc(100_000, 1);
      throw new Error('the source broke');
    })();
    await expect(sb.files.write('/t6/f', source)).rejects.toMatchObject({ code: 'ABORTED', message: expect.stringMatching(/the source broke/) });
    expect(await sh('ls -a /t6')).toBe('.\n..\nf\n');
    expect(await sb.files.read('/t6/f')).toBe('old');
  });

  it('a write that fills the disk fails with RESOURCE_EXHAUSTED and keeps the old file', async () => {
    const small = await home.create({ diskSizeMiB: 64 });
    try {
      await small.files.write('/fill/old', 'the old contents');
      const t = performance.now();
      const err = await small.files.write('/fill/old', randomSource(128, 1 << 20, createHash('sha256'))).catch((e: unknown) => e);
      console.log(`disk full after ${(performance.now() - t).toFixed(0)} ms: ${(err as Error).message}`);
      expect(err).toMatchObject({ code: 'RESOURCE_EXHAUSTED', details: { errno: 'ENOSPC' } });
      expect(await small.files.read('/fill/old')).toBe('the old contents');
      expect((await small.commands.run('ls -a /fill')).stdout).toBe('.\n..\nold\n');
    } finally {
      await small.kill();
    }
  }, 120_000);
});

describe('files: directories and metadata', () => {
  it('lists entries to a depth, sorted by path, without following symlinks', async () => {
    await sh('mkdir -p /t7/a/b/c && echo 1 > /t7/a/f && echo 22 > /t7/a/b/g && ln -s /t7/a /t7/link && touch /t7/z');
    const one = await sb.files.list('/t7');
    expect(one.map((e) => [e.path, e.type])).toEqual([
      ['/t7/a', 'dir'],
      ['/t7/link', 'symlink'],
      ['/t7/z', 'file'],
    ]);
    expect(one[1]).toMatchObject({ name: 'link', symlinkTarget: '/t7/a' });
    const all = await sb.files.list('/t7', { depth: 10 });
    expect(all.map((e) => e.path)).toEqual(['/t7/a', '/t7/a/b', '/t7/a/b/c', '/t7/a/b/g', '/t7/a/f', '/t7/link', '/t7/z']);
    expect(all.find((e) => e.name === 'g')).toMatchObject({ type: 'file', size: 3 });
    expect((await sb.files.list('/t7', { depth: 2 })).map((e) => e.path)).toEqual(['/t7/a', '/t7/a/b', '/t7/a/f', '/t7/link', '/t7/z']);
    await expect(sb.files.list('/t7/z')).rejects.toMatchObject({ code: 'INVALID_STATE', details: { errno: 'ENOTDIR' } });
    await expect(sb.files.list('/t7/none')).rejects.toMatchObject({ code: 'NOT_FOUND' });
    await expect(sb.files.list('/root', { user: 'nobody' })).rejects.toMatchObject({ code: 'PERMISSION_DENIED' });
    await expect(sb.files.list('/t7', { depth: 0 })).rejects.toMatchObject({ code: 'INVALID_ARGUMENT', message: expect.stringMatching(/depth/) });
  });

  it('stats a symlink itself, or its target with follow; exists sees dangling links', async () => {
    await sh('mkdir -p /t8 && echo hello > /t8/target && ln -s target /t8/link && ln -s nowhere /t8/dangling');
    expect(await sb.files.stat('/t8/link')).toMatchObject({ type: 'symlink', symlinkTarget: 'target', size: 6, mode: 0o777 });
    const followed = await sb.files.stat('/t8/link', { follow: true });
    expect(followed).toMatchObject({ type: 'file', size: 6, mode: 0o644 });
    expect(followed.symlinkTarget).toBeUndefined();
    expect(await sb.files.exists('/t8/link')).toBe(true);
    expect(await sb.files.exists('/t8/dangling')).toBe(true);
    await expect(sb.files.stat('/t8/dangling', { follow: true })).rejects.toMatchObject({ code: 'NOT_FOUND' });
    expect(await sb.files.exists('/t8/none')).toBe(false);
    expect(await sb.files.exists('/t8/target/below')).toBe(false);
    expect((await sb.files.stat('/t8')).type).toBe('dir');
    expect((await sb.files.stat('/dev/null')).type).toBe('other');
  });

  it('makes directories with parents, and says whether it created one', async () => {
    expect(await sb.files.makeDir('/t9/x/y', { mode: 0o700 })).toBe(true);
    expect(await sb.files.makeDir('/t9/x/y')).toBe(false);
    expect(await sh('stat -c %a /t9/x /t9/x/y')).toBe('755\n700\n');
    await sb.files.write('/t9/file', 'x');
    await expect(sb.files.makeDir('/t9/file')).rejects.toMatchObject({ code: 'ALREADY_EXISTS', details: { errno: 'EEXIST' } });
    await expect(sb.files.makeDir('/root/x', { user: 'nobody' })).rejects.toMatchObject({ code: 'PERMISSION_DENIED' });
  });

  it('removes files, trees and symlinks (never their targets)', async () => {
    await sh('mkdir -p /t10/dir/sub && echo 1 > /t10/dir/sub/f && ln -s /t10/dir /t10/link && echo x > /t10/file');
    await sb.files.remove('/t10/link');
    expect(await sh('ls -a /t10; ls /t10/dir/sub')).toBe('.\n..\ndir\nfile\nf\n');
    await expect(sb.files.remove('/t10/dir', { recursive: false })).rejects.toMatchObject({ code: 'INVALID_STATE', details: { errno: 'ENOTEMPTY' } });
    await sb.files.remove('/t10/dir');
    await sb.files.remove('/t10/file');
    expect(await sh('ls -a /t10')).toBe('.\n..\n');
    await expect(sb.files.remove('/t10/none')).rejects.toMatchObject({ code: 'NOT_FOUND', details: { errno: 'ENOENT', path: '/t10/none' } });
    await sh('mkdir -p /t10/ro && touch /t10/ro/f');
    await expect(sb.files.remove('/t10/ro/f', { user: 'nobody' })).rejects.toMatchObject({ code: 'PERMISSION_DENIED' });
  });

  it('renames, replacing unless noReplace', async () => {
    await sb.files.write('/t11/a', 'A');
    await sb.files.write('/t11/b', 'B');
    const moved = await sb.files.rename('/t11/a', '/t11/c');
    expect(moved).toMatchObject({ path: '/t11/c', name: 'c', type: 'file', size: 1 });
    await expect(sb.files.rename('/t11/c', '/t11/b', { noReplace: true })).rejects.toMatchObject({ code: 'ALREADY_EXISTS', details: { errno: 'EEXIST' } });
    await sb.files.rename('/t11/c', '/t11/b');
    expect(await sh('ls -a /t11; cat /t11/b')).toBe('.\n..\nb\nA');
    await expect(sb.files.rename('/t11/none', '/t11/x')).rejects.toMatchObject({ code: 'NOT_FOUND' });
  });

  it('file operations are not commands: no exec events, no exec count', async () => {
    const before = { events: runtime.lastEventId(), execs: (await runtime.metrics()).execs, sbExecs: (await sb.refresh()).execs };
    await sb.files.write('/t12/f', 'x');
    await sb.files.read('/t12/f');
    await sb.files.list('/t12');
    await sb.files.remove('/t12');
    expect({ events: runtime.lastEventId(), execs: (await runtime.metrics()).execs, sbExecs: (await sb.refresh()).execs }).toEqual(before);
  });
});

describe('files: watch', () => {
  it('reports create, write, rename and remove, and ends on close', async () => {
    await sh('mkdir -p /t13');
    await using watch = await sb.files.watch('/t13');
    const events: FileEvent[] = [];
    const collecting = (async () => {
      for await (const e of watch) events.push(e);
    })();
    await sb.files.write('/t13/a', 'one');
    await sh('echo more >> /t13/a');
    await sb.files.rename('/t13/a', '/t13/b');
    await sb.files.makeDir('/t13/d');
    await sb.files.remove('/t13/b');
    const until = Date.now() + 10_000;
    while (!events.some((e) => e.type === 'remove' && e.path === '/t13/b') && Date.now() < until) await new Promise((r) => setTimeout(r, 50));
    await watch.close();
    await collecting;
    console.log(`watch events: ${JSON.stringify(events)}`);
    // files.write renames a temporary file over the target: it shows up as a rename to it.
    expect(events).toContainEqual(expect.objectContaining({ type: 'rename', path: '/t13/a' }));
    expect(events).toContainEqual({ type: 'write', path: '/t13/a', isDir: false });
    expect(events).toContainEqual({ type: 'rename', path: '/t13/b', oldPath: '/t13/a', isDir: false });
    expect(events).toContainEqual({ type: 'create', path: '/t13/d', isDir: true });
    expect(events).toContainEqual({ type: 'remove', path: '/t13/b', isDir: false });
  });

  it('watches subdirectories with recursive, and ends when the watched path is removed', async () => {
    await sh('mkdir -p /t14/sub');
    const watch = await sb.files.watch('/t14', { recursive: true });
    const events: FileEvent[] = [];
    const collecting = (async () => {
      for await (const e of watch) events.push(e);
    })();
    await sh('echo x > /t14/sub/deep && mkdir /t14/new && sleep 0.2 && echo y > /t14/new/deeper');
    await new Promise((r) => setTimeout(r, 500));
    await sh('rm -rf /t14');
    await collecting; // ends by itself
    console.log(`recursive watch events: ${JSON.stringify(events)}`);
    expect(events).toContainEqual(expect.objectContaining({ type: 'create', path: '/t14/sub/deep' }));
    expect(events).toContainEqual(expect.objectContaining({ type: 'create', path: '/t14/new/deeper' }));
    expect(events.at(-1)).toMatchObject({ type: 'remove', path: '/t14' });
  });

  it('fails for a missing path, and a break ends the watch', async () => {
    await expect(sb.files.watch('/t15/none')).rejects.toMatchObject({ code: 'NOT_FOUND' });
    await sh('mkdir -p /t15');
    const watch = await sb.files.watch('/t15');
    await sh('touch /t15/x');
    for await (const e of watch) {
      expect(e).toMatchObject({ type: 'create', path: '/t15/x' });
      break;
    }
    // The guest's watcher is gone: no call stream is left behind.
    await watch.close();
  });
});

describe('files: archives', () => {
  it('round-trips a directory of 10,000 small files through readArchive and writeArchive', async () => {
    let t = performance.now();
    await sh(
      'mkdir -p /t16/src && cd /t16/src && i=0; while [ $i -lt 100 ]; do mkdir d$i; j=0; while [ $j -lt 100 ]; do echo "file $i $j" > d$i/f$j; j=$((j+1)); done; i=$((i+1)); done; ln -s d0/f0 link',
    );
    const makeMs = performance.now() - t;

    t = performance.now();
    const parts: Buffer[] = [];
    for await (const c of await sb.files.readArchive('/t16/src')) parts.push(Buffer.from(c));
    const tar = Buffer.concat(parts);
    const readMs = performance.now() - t;
    // The host's tar agrees it is a tar of src/...
    const listing = spawnSync('tar', ['-tvf', '-'], { input: tar, encoding: 'utf8', maxBuffer: 64 << 20 });
    expect(listing.status).toBe(0);
    const names = listing.stdout.trim().split('\n');
    expect(names).toHaveLength(10_000 + 100 + 2);
    expect(names.some((l) => /src\/link -> d0\/f0$/.test(l))).toBe(true);

    t = performance.now();
    async function* chunks() {
      for (let off = 0; off < tar.length; off += 1 << 20) yield tar.subarray(off, off + (1 << 20));
    }
    await sb.files.writeArchive('/t16/dst/deeper', chunks());
    const writeMs = performance.now() - t;
    const sum = (dir: string) =>
      sh(`cd ${dir} && find . | sort | md5sum && find . -type f | sort | xargs cat | md5sum && find . -type l -exec readlink {} \\;`);
    expect(await sum('/t16/dst/deeper/src')).toBe(await sum('/t16/src'));
    console.log(
      `10,000 files: made in the guest ${(makeMs / 1000).toFixed(1)} s; readArchive ${(readMs / 1000).toFixed(1)} s (${(tar.length / 2 ** 20).toFixed(1)} MiB tar); writeArchive ${(writeMs / 1000).toFixed(1)} s`,
    );
    await expect(sb.files.writeArchive('/t16/bad', Buffer.from('this is not a tar archive'.repeat(40)))).rejects.toBeInstanceOf(RoostError);
    await sb.files.remove('/t16');
  }, 300_000);
});

describe('files: cancellation', () => {
  it('an abort or a break ends a stream read promptly', async () => {
    await sh('mkdir -p /t17 && dd if=/dev/zero of=/t17/f bs=1M count=64 2>/dev/null');
    const ac = new AbortController();
    const stream = await sb.files.read('/t17/f', { format: 'stream', signal: ac.signal });
    let n = 0;
    const t = performance.now();
    await expect(
      (async () => {
        for await (const c of stream) {
          n += c.length;
          if (n > 1 << 20) ac.abort();
        }
      })(),
    ).rejects.toMatchObject({ code: 'ABORTED' });
    expect(n).toBeLessThan(64 << 20);
    for await (const c of await sb.files.read('/t17/f', { format: 'stream' })) {
      expect(c.length).toBeGreaterThan(0);
      break;
    }
    console.log(`stream read aborted after ${n} bytes, ${(performance.now() - t).toFixed(0)} ms`);
    // The connection is still good for more.
    expect((await sb.files.stat('/t17/f')).size).toBe(64 << 20);
  });

  it('an abort ends a watch and a list', async () => {
    await sh('mkdir -p /t18');
    const ac = new AbortController();
    const watch = await sb.files.watch('/t18', { signal: ac.signal });
    setTimeout(() => ac.abort(), 100);
    await expect(
      (async () => {
        for await (const e of watch) void e;
      })(),
    ).rejects.toMatchObject({ code: 'ABORTED' });
    await expect(sb.files.list('/', { depth: 100, signal: AbortSignal.timeout(1) })).rejects.toMatchObject({ code: expect.stringMatching(/TIMEOUT|ABORTED/) });
  });
});
