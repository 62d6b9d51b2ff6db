import { readFileSync, statSync, truncateSync, writeFileSync, openSync, writeSync, closeSync } from 'node:fs';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { afterAll, beforeAll, describe, expect, it, onTestFinished } from 'vitest';
import type { Runtime, Sandbox } from '@roost/core';
import { AgentConnection, QmpClient } from '@roost/core/internal';
import { expectCode, TestHome } from './helpers.js';

// One booted sandbox (`src`) is the source of most snapshots and forks;
// restored sandboxes take ~0.2 s each, so tests make their own and remove
// them. `src` runs a ticker process started before the first snapshot.
const home = new TestHome();
let runtime: Runtime;
let src: Sandbox;
let tickerPid: string;
/** A command of `src` still running (streaming) when the snapshots are taken. */
let streamerPid: string;

async function sh(s: Sandbox, cmd: string): Promise<string> {
  const r = await s.commands.run(cmd);
  if (r.exitCode !== 0) throw new Error(`${cmd}: exit ${r.exitCode}: ${r.stderr}`);
  return r.stdout;
}

beforeAll(async () => {
  runtime = await home.runtime();
  src = await home.create();
  await sh(src, 'echo on-disk > /root/disk.txt; echo in-memory > /tmp/mem.txt');
  // A process that outlives the command that started it, and writes as it runs (renaming into place, so a reader never sees an empty file).
  await sh(
    src,
    'setsid sh -c "while :; do date +%s > /root/tick.new; mv /root/tick.new /root/tick; sleep 0.2; done" </dev/null >/dev/null 2>&1 & echo $! > /tmp/ticker.pid',
  );
  tickerPid = (await sh(src, 'cat /tmp/ticker.pid')).trim();
  await src.commands.start(['sh', '-c', 'echo $$ > /tmp/streamer.pid; while :; do echo tick; sleep 0.1; done']);
  await new Promise((r) => setTimeout(r, 300));
  streamerPid = (await sh(src, 'cat /tmp/streamer.pid')).trim();
});

afterAll(async () => {
  await home.cleanup();
});

describe('pause and resume', () => {
  it('stops the vCPUs; commands wait; resume continues', async () => {
    await src.pause();
    expect(src.status).toBe('paused');
    expect(await src.vmStatus()).toBe('paused');
    expect((await runtime.get(src.id)).info.status).toBe('paused');
    let done = false;
    const pending = src.commands.run('echo after').then((r) => {
      done = true;
      return r;
    });
    await new Promise((r) => setTimeout(r, 700));
    expect(done).toBe(false);
    await src.resume();
    expect(src.status).toBe('running');
    expect(await src.vmStatus()).toBe('running');
    expect((await pending).stdout).toBe('after\n');
    const types: string[] = [];
    try {
      for await (const ev of runtime.events({ after: 0, sandboxId: src.id, signal: AbortSignal.timeout(300) })) types.push(ev.type);
    } catch {
      // the timeout ends the stream
    }
    expect(types).toContain('sandbox.paused');
    expect(types).toContain('sandbox.resumed');
  });

  it('refuses to pause a sandbox that is not running, and resume one that is not paused', async () => {
    await src.resume(); // running: a no-op
    const sb = await home.create();
    await sb.stop();
    await expectCode(sb.pause(), 'INVALID_STATE', /only a running sandbox/);
    await expectCode(sb.resume(), 'INVALID_STATE', /only a paused sandbox/);
    await sb.remove();
  });
});

describe('snapshot and restore', () => {
  let snapName: string;

  beforeAll(async () => {
    snapName = 'base';
    const info = await src.snapshot({ name: snapName });
    expect(info).toMatchObject({ name: 'base', kind: 'user', sourceSandbox: src.id, parent: null, memoryMiB: 256, frozen: true, accel: src.info.accel });
    expect(info.sizeBytes).toBeGreaterThan(1 << 20);
    // Sparse: far less than the guest's 256 MiB.
    expect(info.sizeBytes).toBeLessThan(128 << 20);
  });

  it('the source runs on, thawed', async () => {
    expect(src.status).toBe('running');
    expect(await sh(src, 'echo write-after > /root/after.txt && cat /root/after.txt')).toBe('write-after\n');
  });

  it('restores memory, disk and running processes; sets the clock; gets its own disk', async () => {
    await new Promise((r) => setTimeout(r, 2_000)); // the snapshot's clock is now 2 s behind
    const r = await home.create({ snapshot: 'base' });
    // A failure below must not leave r holding 'base' for the tests after this one.
    onTestFinished(() => r.remove({ force: true }).catch(() => undefined));
    expect(r.id).not.toBe(src.id);
    expect(r.info.snapshot).toBeDefined();
    expect(r.info.memoryMiB).toBe(256);
    expect(await sh(r, 'cat /root/disk.txt /tmp/mem.txt')).toBe('on-disk\nin-memory\n');
    // Written by the source after the snapshot: not in the copy.
    expect((await r.commands.run('cat /root/after.txt')).exitCode).not.toBe(0);
    // The ticker started before the snapshot runs on in the copy.
    expect((await r.commands.run(`kill -0 ${tickerPid}`)).exitCode).toBe(0);
    // So does a command that was streaming its output to the source's host (now an orphan).
    expect((await r.commands.run(`kill -0 ${streamerPid}`)).exitCode).toBe(0);
    const t1 = Number(await sh(r, 'cat /root/tick'));
    await new Promise((res) => setTimeout(res, 600));
    expect(Number(await sh(r, 'cat /root/tick'))).toBeGreaterThanOrEqual(t1);
    const guestNow = Number(await sh(r, 'date +%s'));
    expect(Math.abs(guestNow - Date.now() / 1000)).toBeLessThan(2);
    // Its writes are its own.
    await sh(r, 'echo copy > /root/copy.txt; sync');
    expect((await src.commands.run('cat /root/copy.txt')).exitCode).not.toBe(0);
    const snap = await runtime.snapshots.get('base');
    expect(snap.dependents.sandboxes).toContain(r.id);
    await r.remove({ force: true });
    expect((await runtime.snapshots.get('base')).dependents.sandboxes).not.toContain(r.id);
  });

  it('a restored sandbox stops and starts again (a cold boot on its own disk)', async () => {
    const r = await home.create({ snapshot: 'base' });
    await sh(r, 'echo kept > /root/kept.txt; sync');
    await r.stop();
    await r.start();
    expect(await sh(r, 'cat /root/kept.txt /root/disk.txt')).toBe('kept\non-disk\n');
    await r.remove({ force: true });
  });

  it('snapshots of a restored sandbox are layered on their parent, which cannot be removed under them', async () => {
    const r = await home.create({ snapshot: 'base' });
    await sh(r, 'echo second > /root/second.txt');
    const child = await r.snapshot({ name: 'child' });
    expect(child.parent).toBe((await runtime.snapshots.get('base')).id);
    const rr = await home.create({ snapshot: 'child' });
    expect(await sh(rr, 'cat /root/disk.txt /root/second.txt')).toBe('on-disk\nsecond\n');
    await rr.remove({ force: true });
    await r.remove({ force: true });
    await expectCode(runtime.snapshots.remove('base'), 'INVALID_STATE', /in use by snapshot child/);
    await runtime.snapshots.remove('child');
    await expectCode(runtime.snapshots.get('child'), 'NOT_FOUND');
  });

  it('refuses a name in use, bad names, and options a restore cannot honour', async () => {
    await expectCode(src.snapshot({ name: 'base' }), 'ALREADY_EXISTS', /base/);
    await expectCode(src.snapshot({ name: '../x' }), 'INVALID_ARGUMENT');
    await expectCode(runtime.create({ snapshot: 'base', memoryMiB: 512 }), 'INVALID_ARGUMENT', /memoryMiB/);
    await expectCode(runtime.create({ snapshot: 'no-such-snapshot' }), 'NOT_FOUND', /no-such-snapshot/);
  });

  it('names a snapshot after its sandbox and the time when no name is given', async () => {
    const s = await src.snapshot();
    expect(s.name).toMatch(new RegExp(`^${src.id}-\\d{8}T\\d{9}$`));
    expect((await runtime.snapshots.get(s.id)).name).toBe(s.name);
    await runtime.snapshots.remove(s.name);
  });
});

describe('fork', () => {
  it('makes running copies with their own disks and random streams; the source runs on', async () => {
    const before = (await runtime.snapshots.list()).length;
    const [a, b] = await src.fork({ count: 2 });
    expect(a!.id).not.toBe(b!.id);
    expect(a!.status).toBe('running');
    const rand = async (s: Sandbox) => sh(s, 'head -c 32 /dev/urandom | od -An -tx1 | tr -d " \\n"');
    const [ra, rb, rs] = await Promise.all([rand(a!), rand(b!), rand(src)]);
    expect(ra).toMatch(/^[0-9a-f]{64}$/);
    expect(new Set([ra, rb, rs]).size).toBe(3);
    await sh(a!, 'echo only-a > /root/a.txt; sync');
    expect((await b!.commands.run('cat /root/a.txt')).exitCode).not.toBe(0);
    expect((await src.commands.run('cat /root/a.txt')).exitCode).not.toBe(0);
    expect((await a!.commands.run(`kill -0 ${tickerPid}`)).exitCode).toBe(0);
    expect(await sh(src, 'echo src-alive')).toBe('src-alive\n');
    // The fork's snapshot lives while a copy does, and goes with the last.
    const forkSnaps = (await runtime.snapshots.list()).filter((s) => s.kind === 'fork');
    expect(forkSnaps).toHaveLength(1);
    expect(forkSnaps[0]!.dependents.sandboxes.sort()).toEqual([a!.id, b!.id].sort());
    await a!.remove({ force: true });
    expect((await runtime.snapshots.list()).filter((s) => s.kind === 'fork')).toHaveLength(1);
    await b!.remove({ force: true });
    expect((await runtime.snapshots.list()).length).toBe(before);
  });

  it('forks a paused sandbox and leaves it paused', async () => {
    await src.pause();
    try {
      const [c] = await src.fork({ count: 1 });
      expect(src.status).toBe('paused');
      expect(await src.vmStatus()).toBe('paused');
      expect(await sh(c!, 'cat /tmp/mem.txt')).toBe('in-memory\n');
      await c!.remove({ force: true });
    } finally {
      await src.resume();
    }
  });

  it('refuses a bad count', async () => {
    await expectCode(src.fork({ count: 0 }), 'INVALID_ARGUMENT', /count/);
    await expectCode(src.fork({ count: 1000 }), 'INVALID_ARGUMENT', /count/);
  });
});

describe('snapshot files are checked before a restore', () => {
  let id: string;
  let dir: string;

  beforeAll(async () => {
    const s = await src.snapshot({ name: 'victim' });
    id = s.id;
    dir = join(home.root, 'snapshots', id);
  });

  it('refuses a snapshot made by another QEMU, kernel or agent', async () => {
    const db = new Database(join(home.root, 'roost.db'));
    const row = db.prepare('SELECT info_json FROM snapshots WHERE id = ?').get(id) as { info_json: string };
    const rec = JSON.parse(row.info_json) as { manifest: { qemuVersion: string; agentHash: string } };
    const original = row.info_json;
    try {
      rec.manifest.qemuVersion = 'QEMU emulator version 1.0.0';
      db.prepare('UPDATE snapshots SET info_json = ? WHERE id = ?').run(JSON.stringify(rec), id);
      await expectCode(runtime.create({ snapshot: 'victim' }), 'INVALID_STATE', /made by QEMU emulator version 1\.0\.0/);
      rec.manifest.qemuVersion = JSON.parse(original).manifest.qemuVersion;
      rec.manifest.agentHash = '0000000000000000';
      db.prepare('UPDATE snapshots SET info_json = ? WHERE id = ?').run(JSON.stringify(rec), id);
      await expectCode(runtime.create({ snapshot: 'victim' }), 'INVALID_STATE', /guest agent 0000000000000000/);
    } finally {
      db.prepare('UPDATE snapshots SET info_json = ? WHERE id = ?').run(original, id);
      db.close();
    }
  });

  it('refuses a corrupt device state', async () => {
    const original = readFileSync(join(dir, 'state'));
    writeFileSync(join(dir, 'state'), Buffer.alloc(original.length, 1));
    await expectCode(runtime.create({ snapshot: 'victim' }), 'INVALID_STATE', /device state does not match its checksum/);
    writeFileSync(join(dir, 'state'), original);
  });
  it('refuses a corrupt memory image, then a truncated one', async () => {
    const mem = join(dir, 'memory');
    const size = statSync(mem).size;
    // Flip one byte of a page the guest used (the kernel lives in the first MiBs).
    const fd = openSync(mem, 'r+');
    const buf = Buffer.alloc(1);
    const pos = 2 << 20;
    const original = readFileSync(mem).subarray(pos, pos + 1)[0]!;
    buf[0] = original ^ 0xff;
    writeSync(fd, buf, 0, 1, pos);
    closeSync(fd);
    await expectCode(runtime.create({ snapshot: 'victim' }), 'INVALID_STATE', /memory image does not match its checksum/);
    truncateSync(mem, size - 4096);
    await expectCode(runtime.create({ snapshot: 'victim' }), 'INVALID_STATE', /truncated/);
    // Nothing half-made is left behind.
    expect((await runtime.list()).filter((s) => s.snapshot === id)).toEqual([]);
    await runtime.snapshots.remove('victim');
  });
});

describe('a full disk', () => {
  it('a snapshot taken with the disk full restores', async () => {
    const sb = await home.create({ diskSizeMiB: 64 });
    // Filled in MiB, then the last few KiB (a 1 MiB write that does not fit can leave them free).
    const fill = await sb.commands.run('dd if=/dev/zero of=/root/fill bs=1M 2>&1; dd if=/dev/zero of=/root/fill2 bs=1k 2>&1; df -k /root | tail -1');
    expect(fill.stdout).toMatch(/No space left on device/);
    await sh(sb, 'echo tiny > /dev/shm/t');
    await sb.snapshot({ name: 'full' });
    const r = await home.create({ snapshot: 'full' });
    expect(await sh(r, 'cat /dev/shm/t; ls /root')).toBe('tiny\nfill\nfill2\n');
    expect((await r.commands.run('echo x > /root/more')).exitCode).not.toBe(0);
    await sh(r, 'rm /root/fill; echo fits > /root/more; cat /root/more');
    await r.remove({ force: true });
    await sb.remove({ force: true });
    await runtime.snapshots.remove('full');
  });
});

describe('templates', () => {
  it('builds the snapshot on first use, restores it after, and rebuilds on warm', async () => {
    const t = await runtime.templates.create({ name: 'warm-shell', setup: 'echo prepared > /root/marker; echo $$ > /tmp/setup.pid' });
    expect(t.snapshot).toBeNull();
    const a = await runtime.create({ template: 'warm-shell' });
    home.track(a);
    expect(await sh(a, 'cat /root/marker')).toBe('prepared\n');
    const first = (await runtime.templates.get('warm-shell')).snapshot;
    expect(first).toMatch(/^[0-9a-f]{12}$/);
    const b = await runtime.create({ template: 'warm-shell' });
    home.track(b);
    expect(b.info.snapshot).toBe(first);
    // The builder sandbox is gone; the two copies remain.
    expect((await runtime.list()).filter((s) => s.labels['roost.template'] === 'warm-shell')).toEqual([]);
    const rebuilt = await runtime.templates.warm('warm-shell');
    expect(rebuilt.snapshot).not.toBe(first);
    // The old snapshot stays while a and b need it.
    expect((await runtime.snapshots.get(first!)).dependents.sandboxes.sort()).toEqual([a.id, b.id].sort());
    await a.remove({ force: true });
    await b.remove({ force: true });
    await expectCode(runtime.snapshots.get(first!), 'NOT_FOUND');
    await runtime.templates.remove('warm-shell');
    await expectCode(runtime.snapshots.get(rebuilt.snapshot!), 'NOT_FOUND');
    await expectCode(runtime.templates.get('warm-shell'), 'NOT_FOUND');
  });

  it('reports a failing setup command and leaves no sandbox behind', async () => {
    await runtime.templates.create({ name: 'broken', setup: 'echo oops >&2; exit 3' });
    await expectCode(runtime.create({ template: 'broken' }), 'INVALID_STATE', /exited with 3:\n {2}oops/);
    expect((await runtime.list()).filter((s) => s.labels['roost.template'] === 'broken')).toEqual([]);
    expect((await runtime.templates.get('broken')).snapshot).toBeNull();
    await expectCode(runtime.templates.create({ name: 'broken' }), 'ALREADY_EXISTS');
    await runtime.templates.remove('broken');
  });
});

// Last: it closes and reopens the runtime, which ends `src`.
describe('a runtime that died in the middle of a snapshot', () => {
  it('leaves a detached VM stopped and frozen; the next runtime continues and thaws it (and leaves a paused one paused)', async () => {
    const sb = await home.create({ detached: true });
    // And one paused on purpose, which must stay paused across the restart.
    const paused = await home.create({ detached: true });
    await paused.pause();
    await sh(sb, 'echo before > /root/before');
    sb.disconnect();
    // What a snapshot does before it copies anything: freeze (marking the guest) and stop.
    const conn = await AgentConnection.connect(join(sb.dir, 'agent.sock'), { flags: 0, timeoutMs: 10_000, vmExited: () => false });
    expect((await conn.freeze()).errno).toBe(0);
    conn.close();
    // The runtime watches its VMs over QMP (disk errors) while it is open, and QMP takes one client at a time.
    await home.release();
    const qmp = await QmpClient.connect(join(sb.dir, 'qmp.sock'));
    await qmp.execute('stop');
    qmp.close();
    const reopened = await home.runtime();
    const again = await reopened.get(sb.id);
    expect(again.status).toBe('running');
    expect(await again.vmStatus()).toBe('running');
    expect(await sh(again, 'echo after > /root/after; cat /root/before /root/after')).toBe('before\nafter\n');
    await again.remove({ force: true });
    const stillPaused = await reopened.get(paused.id);
    expect(stillPaused.status).toBe('paused');
    expect(await stillPaused.vmStatus()).toBe('paused');
    await stillPaused.resume();
    expect(await sh(stillPaused, 'echo resumed')).toBe('resumed\n');
    await stillPaused.remove({ force: true });
  });
});
