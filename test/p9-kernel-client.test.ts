import { getAttributeSync } from '@napi-rs/xattr';
import { execFileSync } from 'node:child_process';
import { existsSync, lstatSync, mkdirSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Sandbox } from '@roost/core';
import { LocalBackend, LockStatus, LockType, OpenFlag, P9Client, P9Server, S_IFREG } from '@roost/p9';
import { TestHome } from './helpers.js';

/**
 * @roost/p9 against the real Linux 9P client: Roost's own guest kernel
 * (Linux 6.1, v9fs built in) mounts the server over trans=tcp, through the
 * sandbox's user-mode network (the guest's 10.0.2.2 is the host's
 * 127.0.0.1, reachable because the egress policy names the server's port),
 * and runs a POSIX workload on the mount. This host's own kernel has no 9P
 * (see packages/p9/src/kernel-mount.test.ts), so the guest is the client.
 */

const fixtures = fileURLToPath(new URL('./fixtures/', import.meta.url));
const home = new TestHome();
let work: string;
let exportDir: string;
let server: P9Server;
let port: number;
let sb: Sandbox;
let helperBinary: Buffer | null = null;

const sh = async (cmd: string, timeoutMs = 60_000): Promise<{ out: string; code: number }> => {
  const r = await sb.commands.run(['sh', '-c', cmd], { timeoutMs });
  return { out: r.stdout + r.stderr, code: r.exitCode };
};

beforeAll(async () => {
  work = mkdtempSync(join(tmpdir(), 'p9-kernel-'));
  exportDir = join(work, 'export');
  mkdirSync(join(exportDir, 'host-made'), { recursive: true });
  // The readdir of 10,000 entries: made on the host (creating them through 9P under TCG takes minutes).
  for (let i = 0; i < 10_000; i++) writeFileSync(join(exportDir, 'host-made', `entry-${i}`), '');
  writeFileSync(join(exportDir, 'locked.bin'), 'lock me');
  for (const cc of [
    ['musl-gcc', '-static'],
    ['gcc', '-static'],
  ]) {
    try {
      execFileSync(cc[0]!, [cc[1]!, '-O2', '-o', join(work, 'p9-helper'), join(fixtures, 'p9-helper.c')], { stdio: 'pipe' });
      helperBinary = readFileSync(join(work, 'p9-helper'));
      break;
    } catch {
      // Try the next compiler.
    }
  }
  server = new P9Server({ exports: { '': { backend: new LocalBackend(exportDir) } } });
  port = await server.listen(0, '127.0.0.1');
  sb = await home.create({ egress: { default: 'deny', allow: [`host:${port}/tcp`] } });
  await sb.files.write('/tmp/p9-workload.sh', readFileSync(join(fixtures, 'p9-workload.sh')));
  if (helperBinary !== null) await sb.files.write('/tmp/p9-helper', helperBinary);
  // locktimeout=1: the client retries a blocked F_SETLKW every second (30 s by default).
  const mount = await sh(
    `chmod +x /tmp/p9-helper 2>/dev/null; mkdir -p /mnt/v && mount -t 9p -o trans=tcp,port=${port},version=9p2000.L,msize=262144,cache=none,locktimeout=1 10.0.2.2 /mnt/v && grep ' /mnt/v ' /proc/mounts`,
  );
  expect(mount.out).toMatch(/ \/mnt\/v 9p .*msize=262144/);
}, 300_000);

afterAll(async () => {
  try {
    if (sb !== undefined) await sh('umount /mnt/v || umount -l /mnt/v').catch(() => undefined);
  } finally {
    await home.cleanup();
    await server?.close();
    if (work !== undefined) rmSync(work, { recursive: true, force: true });
  }
});

describe('the Linux 9P client (guest kernel 6.1) on @roost/p9', () => {
  it('runs a POSIX workload: create, fsync, rename over, link, symlink, chmod, chown, truncate, readdir of 10,000, concurrent writers', async () => {
    const started = Date.now();
    const r = await sh('sh /tmp/p9-workload.sh /mnt/v', 240_000);
    expect(r.out).toContain('WORKLOAD OK');
    expect(r.code).toBe(0);
    process.stderr.write(`[p9] guest workload in ${((Date.now() - started) / 1000).toFixed(1)} s\n`);

    // The host side: plain files, the guest's view in user.virtfs.* attributes; a guest symlink is a plain file holding its target.
    const big = join(exportDir, 'big.bin');
    expect(statSync(big).size).toBe(5000);
    expect(statSync(big).mode & 0o7777).toBe(0o644);
    expect(getAttributeSync(big, 'user.virtfs.mode')?.readUInt32LE(0)).toBe(S_IFREG | 0o644);
    expect(lstatSync(join(exportDir, 'sym.txt')).isFile()).toBe(true);
    expect(getAttributeSync(join(exportDir, 'sym.txt'), 'user.virtfs.mode')?.readUInt32LE(0)).toBe(0o120777);
    expect(readFileSync(join(exportDir, 'rootlink'), 'utf8')).toBe('/');
    expect(existsSync(join(exportDir, 'a.txt'))).toBe(false);
    expect(readFileSync(join(exportDir, 'log.txt'), 'utf8').split('\n').filter(Boolean)).toHaveLength(400);
    expect(existsSync(join(exportDir, 'renamed'))).toBe(false);
    expect(existsSync(join(exportDir, 'fifo'))).toBe(false);
  }, 300_000);

  it('sees fcntl and flock locks another session holds, and F_SETLKW waits for their release', async (ctx) => {
    if (helperBinary === null) ctx.skip(); // no static C compiler: cannot build the helper
    const socket = connect(port, '127.0.0.1');
    await new Promise((resolve) => socket.once('connect', resolve));
    const host = new P9Client(socket);
    try {
      await host.version(65536);
      await host.attach(1);
      await host.walk(1, 2, ['locked.bin']);
      await host.rpc({ type: 'Tlopen', fid: 2, flags: OpenFlag.RDWR }, 'Rlopen');
      const lock = (lockType: number) =>
        host.rpc({ type: 'Tlock', fid: 2, lockType, flags: 0, start: 0n, length: 0n, procId: 4242, clientId: 'host-test' }, 'Rlock');
      expect((await lock(LockType.WRLCK)).status).toBe(LockStatus.SUCCESS);
      const probe = await sh('/tmp/p9-helper /mnt/v/locked.bin try-write; /tmp/p9-helper /mnt/v/locked.bin get; /tmp/p9-helper /mnt/v/locked.bin flock-try');
      expect(probe.out.split('\n')).toEqual(['busy Resource temporarily unavailable', 'conflict write 0 0', 'busy Resource temporarily unavailable', '']);
      const started = Date.now();
      const waiting = sh('/tmp/p9-helper /mnt/v/locked.bin wait-write');
      await new Promise((resolve) => setTimeout(resolve, 1500));
      expect((await lock(LockType.UNLCK)).status).toBe(LockStatus.SUCCESS);
      expect((await waiting).out).toBe('locked\n');
      expect(Date.now() - started).toBeGreaterThanOrEqual(1500);
      // The guest's process has exited: its lock was released (the client sends F_UNLCK on close).
      expect((await lock(LockType.WRLCK)).status).toBe(LockStatus.SUCCESS);
    } finally {
      host.close();
    }
  }, 120_000);

  it('creates files as the guest user who made them (each uid attaches on its own)', async (ctx) => {
    if (helperBinary === null) ctx.skip();
    const r = await sh('mkdir -m 1777 /mnt/v/shared && /tmp/p9-helper /mnt/v/shared/mine create-as 1000 && stat -c "%u:%g %a" /mnt/v/shared/mine');
    expect(r.out).toBe('created\n1000:1000 640\n');
    const file = join(exportDir, 'shared', 'mine');
    expect(getAttributeSync(file, 'user.virtfs.uid')?.readUInt32LE(0)).toBe(1000);
    expect(getAttributeSync(file, 'user.virtfs.gid')?.readUInt32LE(0)).toBe(1000);
    expect(statSync(file).uid).toBe(process.getuid!());
    expect(statSync(file).mode & 0o777).toBe(0o644);
  });

  it('unmounts cleanly', async () => {
    const r = await sh('umount /mnt/v && ! grep -q " /mnt/v " /proc/mounts && echo unmounted');
    expect(r.out).toBe('unmounted\n');
  });
});
