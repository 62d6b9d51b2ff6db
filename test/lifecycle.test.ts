import { spawn } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, describe, expect, it } from 'vitest';
import { isRoostError, RoostError, Runtime, Sandbox, type Assets } from '@roost/core';
import { alive, eventually, TestHome } from './helpers.js';

const home = new TestHome();
afterAll(() => home.cleanup());

const coreEntry = fileURLToPath(new URL('../packages/core/dist/index.js', import.meta.url));

/** Runs a small ESM script in a child node process; returns the process and its first stdout line. */
function child(script: string, env: NodeJS.ProcessEnv): Promise<{ proc: ReturnType<typeof spawn>; line: string }> {
  const proc = spawn(process.execPath, ['--input-type=module', '-e', script], { env, stdio: ['ignore', 'pipe', 'pipe'] });
  let stderr = '';
  proc.stderr!.on('data', (c: Buffer) => (stderr += c.toString()));
  return new Promise((resolve, reject) => {
    let out = '';
    proc.stdout!.on('data', (c: Buffer) => {
      out += c.toString();
      const nl = out.indexOf('\n');
      if (nl >= 0) resolve({ proc, line: out.slice(0, nl) });
    });
    proc.on('exit', (code) => reject(new Error(`child exited ${code} before printing: ${stderr}`)));
  });
}

/** Closes this process's runtime of a throwaway home before it is deleted. */
async function closeHome(dir: string): Promise<void> {
  await (await Runtime.shared(dir).catch(() => null))?.close();
}

describe('sandbox lifecycle', () => {
  it('stops gracefully: the VM powers off and the record says stopped', async () => {
    const sb = await home.create();
    const pid = sb.info.pid!;
    expect(alive(pid)).toBe(true);
    const started = Date.now();
    await sb.stop();
    expect(Date.now() - started).toBeLessThan(5_000); // powered off, not killed at the 10 s timeout
    expect(alive(pid)).toBe(false);
    expect(sb.status).toBe('stopped');
    // The record in the home's database says so too.
    expect(await sb.refresh()).toMatchObject({ status: 'stopped', pid: null, reason: 'stopped' });
    await expect(sb.commands.run('true')).rejects.toMatchObject({ code: 'INVALID_STATE' });
    await sb.remove();
    expect(existsSync(sb.dir)).toBe(false);
  });

  it('refuses to remove a running sandbox without force, and kills it with force', async () => {
    const sb = await home.create();
    await expect(sb.remove()).rejects.toMatchObject({ code: 'INVALID_STATE' });
    const pid = sb.info.pid!;
    await sb.remove({ force: true });
    expect(alive(pid)).toBe(false);
    expect(existsSync(sb.dir)).toBe(false);
  });

  it('is disposed by await using', async () => {
    let pid = 0;
    let dir = '';
    {
      await using sb = await Sandbox.create({ home: home.root, timeoutMs: 60_000 });
      pid = sb.info.pid!;
      dir = sb.dir;
      expect((await sb.commands.run('echo in-scope')).stdout).toBe('in-scope\n');
    }
    expect(alive(pid)).toBe(false);
    expect(existsSync(dir)).toBe(false);
  });

  it('validates create options and names the field', async () => {
    const bad = [
      [{ memoryMiB: 1 }, /memoryMiB/],
      [{ cpus: 0 }, /cpus/],
      [{ cpus: 1.5 }, /cpus/],
      [{ env: { '': 'x' } }, /env/],
      [{ colour: 'blue' }, /colour/],
    ] as const;
    for (const [opts, field] of bad) {
      const err = await Sandbox.create({ home: home.root, ...(opts as object) }).catch((e: unknown) => e);
      expect(isRoostError(err, 'INVALID_ARGUMENT'), JSON.stringify(opts)).toBe(true);
      expect((err as RoostError).message).toMatch(field);
    }
  });

  it('lists sandboxes and finds them by id prefix', async () => {
    const sb = await home.create();
    const list = await Sandbox.list({ home: home.root });
    expect(list.find((s) => s.id === sb.id)).toMatchObject({ status: 'running', cpus: 1, memoryMiB: 256 });
    const again = await Sandbox.get(sb.id.slice(0, 6), { home: home.root });
    expect(again.id).toBe(sb.id);
    await expect(Sandbox.get('ffffffffffff', { home: home.root })).rejects.toMatchObject({ code: 'NOT_FOUND' });
    await expect(Sandbox.get('../etc', { home: home.root })).rejects.toMatchObject({ code: 'INVALID_ARGUMENT' });
    await sb.kill();
  });

  it('binds a Roost home through a Runtime, which owns it alone', async () => {
    const other = new TestHome();
    try {
      const runtime = await Runtime.open({ home: other.root, owner: 'the test' });
      expect(runtime.home).toBe(other.root);
      expect((await runtime.assets()).kernel).toMatch(/vmlinux$/);
      // A second owner, in this process or another, is refused with the holder's name.
      await expect(Runtime.open({ home: other.root })).rejects.toMatchObject({
        code: 'UNAVAILABLE',
        message: expect.stringMatching(/in use by the test \(pid \d+/),
      });
      const script = `
        import { Runtime } from ${JSON.stringify(coreEntry)};
        const err = await Runtime.open().catch((e) => e);
        console.log(JSON.stringify({ code: err.code, message: err.message }));
      `;
      const { line } = await child(script, other.env);
      expect(JSON.parse(line)).toMatchObject({ code: 'UNAVAILABLE', message: expect.stringContaining(`the test (pid ${process.pid}`) });
      const sb = await runtime.create({ labels: { team: 'a' } });
      expect(await runtime.get(sb.id)).toBe(sb);
      expect((await runtime.list({ labels: ['team=a'] })).map((s) => s.id)).toEqual([sb.id]);
      expect(await runtime.list({ labels: ['team=b'] })).toEqual([]);
      expect((await runtime.list({ status: 'stopped' })).map((s) => s.id)).not.toContain(sb.id);
      const pid = sb.info.pid!;
      // Closing kills what is not detached and frees the home for the next owner.
      await runtime.close();
      expect(alive(pid)).toBe(false);
      await using again = await Runtime.open({ home: other.root });
      expect((await again.get(sb.id)).info).toMatchObject({ status: 'stopped', reason: 'its runtime closed', pid: null });
    } finally {
      await other.cleanup();
    }
  });

  it('starts a stopped sandbox again on the disk it had', async () => {
    const sb = await home.create();
    await sb.commands.run('echo kept > /root/marker; sync');
    await sb.stop();
    const firstPid = sb.info.pid;
    expect(firstPid).toBeNull();
    await sb.start();
    expect(sb.info).toMatchObject({ status: 'running' });
    expect((await sb.commands.run('cat /root/marker')).stdout).toBe('kept\n');
    // Starting a running sandbox is a no-op.
    await sb.start();
    await sb.kill();
  });

  it('honours cpus and memory', async () => {
    const sb = await home.create({ cpus: 2, memoryMiB: 192 });
    const r = await sb.commands.run('nproc; grep MemTotal /proc/meminfo');
    const [nproc, mem] = r.stdout.trim().split('\n');
    expect(nproc).toBe('2');
    const kib = Number(/(\d+)/.exec(mem!)![1]);
    expect(kib).toBeGreaterThan(150 * 1024);
    expect(kib).toBeLessThanOrEqual(192 * 1024);
    await sb.kill();
  });
});

describe('a sandbox and its owner process', () => {
  it('dies with a non-detached owner, even one killed with SIGKILL, and the next owner records it', async () => {
    const own = new TestHome();
    try {
      const script = `
        import { Sandbox } from ${JSON.stringify(coreEntry)};
        const sb = await Sandbox.create({ timeoutMs: 60000 });
        console.log(JSON.stringify({ id: sb.id, pid: sb.info.pid }));
        setInterval(() => {}, 1000);
      `;
      const { proc, line } = await child(script, own.env);
      const { id, pid } = JSON.parse(line) as { id: string; pid: number };
      expect(alive(pid)).toBe(true);
      proc.kill('SIGKILL');
      await eventually(() => !alive(pid), 5_000, 'QEMU gone after its owner was SIGKILLed');
      // The kernel dropped the dead owner's lock; the next owner finds the record and says what happened.
      const runtime = await own.runtime();
      expect((await runtime.get(id)).info).toMatchObject({ status: 'stopped', pid: null, reason: expect.stringMatching(/runtime exited/) });
      const events = [];
      for await (const e of runtime.events({ after: 0, signal: AbortSignal.timeout(500) })) {
        events.push(e);
        if (e.type === 'sandbox.exited') break;
      }
      expect(events.map((e) => e.type)).toEqual(['sandbox.created', 'sandbox.started', 'sandbox.exited']);
      expect(events[2]).toMatchObject({ sandboxId: id, data: { recovered: true } });
    } finally {
      await own.cleanup();
    }
  });

  it('survives its owner when detached, even a SIGKILLed one mid-command, and the next owner re-attaches', async () => {
    const own = new TestHome();
    try {
      const script = `
        import { Sandbox } from ${JSON.stringify(coreEntry)};
        const sb = await Sandbox.create({ detached: true, timeoutMs: 60000 });
        await sb.commands.run('echo made-before > /root/marker');
        sb.commands.run('sleep 600').catch(() => {});
        console.log(JSON.stringify({ id: sb.id, pid: sb.info.pid }));
        setInterval(() => {}, 1000);
      `;
      const { proc, line } = await child(script, own.env);
      const { id, pid } = JSON.parse(line) as { id: string; pid: number };
      proc.kill('SIGKILL');
      await new Promise((r) => proc.once('exit', r));
      await new Promise((r) => setTimeout(r, 300));
      expect(alive(pid)).toBe(true);
      const sb = own.track(await Sandbox.get(id, { home: own.root }));
      expect(sb.info).toMatchObject({ status: 'running', pid });
      expect((await sb.commands.run('cat /root/marker')).stdout).toBe('made-before\n');
      // The agent ended the dead connection's command.
      await eventually(async () => (await sb.commands.run('ps -o args | grep -c "^sleep 600"')).stdout.trim() === '0', 5_000, 'orphaned command ended');
      // A runtime that closes lets a detached sandbox go on.
      await own.release();
      expect(alive(pid)).toBe(true);
      const again = await Sandbox.get(id, { home: own.root });
      expect((await again.commands.run('echo second')).stdout).toBe('second\n');
      await again.stop();
      expect(alive(pid)).toBe(false);
    } finally {
      await own.cleanup();
    }
  });

  it('removes what a crashed owner left without a record, and keeps what has one', async () => {
    const own = new TestHome();
    try {
      const runtime = await own.runtime();
      const sb = await runtime.create();
      await own.release();
      // A directory with no record: an owner that died between mkdir and its first write.
      const stray = join(own.root, 'sandboxes', 'abcdefabcdef');
      mkdirSync(stray, { recursive: true });
      writeFileSync(join(stray, 'disk.qcow2'), 'x');
      const next = await own.runtime();
      expect(existsSync(stray)).toBe(false);
      expect(existsSync(join(own.root, 'sandboxes', sb.id, 'disk.qcow2'))).toBe(true);
      // The dead VM's sockets are gone with it.
      expect(existsSync(join(own.root, 'sandboxes', sb.id, 'agent.sock'))).toBe(false);
      expect((await next.get(sb.id)).status).toBe('stopped');
    } finally {
      await own.cleanup();
    }
  });
});

describe('aborts that race setup', () => {
  it('aborts a command whose signal fires while its connection is still being made', async () => {
    const sb = await home.create({ detached: true });
    // The next command has to connect first: the abort lands in that await.
    sb.disconnect();
    const ac = new AbortController();
    const started = Date.now();
    const run = sb.commands.run('sleep 5; echo finished', { signal: ac.signal });
    ac.abort();
    await expect(run).rejects.toMatchObject({ code: 'ABORTED' });
    expect(Date.now() - started).toBeLessThan(4_000);
    await sb.kill();
  });
});

describe('failures', () => {
  it('fails a running command and marks the sandbox failed when the agent goes away', async () => {
    const sb = await home.create();
    const inFlight = sb.commands.run('sleep 30');
    await new Promise((r) => setTimeout(r, 200));
    // reboot(2) from inside: the VM ends under the agent (QEMU runs with -no-reboot).
    void sb.commands.run('reboot -f').catch(() => {});
    await expect(inFlight).rejects.toMatchObject({ code: 'AGENT' });
    await eventually(() => sb.status === 'failed', 5_000, 'sandbox failed');
  });

  it('names `roost setup` when the guest has not been built', async () => {
    const empty = mkdtempSync(join(tmpdir(), 'roost-empty-'));
    try {
      const err = await Sandbox.create({ home: empty }).catch((e: unknown) => e);
      expect(err).toMatchObject({ code: 'SETUP_REQUIRED', message: expect.stringMatching(/roost setup/) });
    } finally {
      await closeHome(empty);
      rmSync(empty, { recursive: true, force: true });
    }
  });

  it('names `roost setup` when QEMU is not installed', async () => {
    const script = `
      import { Sandbox } from ${JSON.stringify(coreEntry)};
      const err = await Sandbox.create({ timeoutMs: 10000 }).catch((e) => e);
      console.log(JSON.stringify({ code: err.code, message: err.message }));
    `;
    const own = new TestHome();
    try {
      const { proc, line } = await child(script, { ...own.env, ROOST_QEMU: '/nonexistent/qemu-system-x86_64' });
      await new Promise((r) => proc.once('exit', r));
      expect(JSON.parse(line)).toMatchObject({ code: 'SETUP_REQUIRED', message: expect.stringMatching(/roost setup/) });
      // Nothing ran, so nothing is left to list.
      expect(await Sandbox.list({ home: own.root })).toEqual([]);
    } finally {
      await own.cleanup();
    }
  });

  /** A home whose assets are the real ones with some replaced. */
  function brokenHome(patch: (assets: Assets, dir: string) => Partial<Assets>): string {
    const dir = mkdtempSync(join(tmpdir(), 'roost-broken-'));
    const real = JSON.parse(readFileSync(join(process.env.ROOST_TEST_CACHE!, 'assets.json'), 'utf8')) as Assets;
    mkdirSync(join(dir, 'cache'));
    writeFileSync(join(dir, 'cache', 'assets.json'), JSON.stringify({ ...real, ...patch(real, dir) }));
    return dir;
  }

  it('reports a guest that panics at boot as BOOT_FAILED with its console lines', async () => {
    // An initramfs with no /init: the kernel panics ("No working init found").
    const dir = brokenHome((_, d) => {
      const empty = join(d, 'empty.cpio');
      writeFileSync(empty, Buffer.from('070701' + '0'.repeat(8 * 11) + '0000000B' + '00000000' + 'TRAILER!!!\0' + '\0\0\0', 'ascii'));
      return { initramfs: empty };
    });
    try {
      const err = await Sandbox.create({ home: dir, timeoutMs: 60_000 }).catch((e: unknown) => e);
      expect(isRoostError(err, 'BOOT_FAILED')).toBe(true);
      const details = (err as RoostError).details as { console: string[] };
      expect(details.console.join('\n')).toMatch(/Kernel panic|No working init/);
      expect((err as RoostError).message).toMatch(/console/);
      const [info] = await Sandbox.list({ home: dir });
      expect(info).toMatchObject({ status: 'failed', pid: null });
    } finally {
      await closeHome(dir);
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('reports a guest that does not boot in time as BOOT_FAILED and leaves no QEMU behind', async () => {
    const err = await Sandbox.create({ home: home.root, timeoutMs: 150 }).catch((e: unknown) => e);
    expect(err).toMatchObject({ code: 'BOOT_FAILED', message: expect.stringMatching(/did not boot within 150 ms/) });
    const failed = (await Sandbox.list({ home: home.root })).filter((s) => s.status === 'failed' && /did not boot/.test(s.reason ?? ''));
    expect(failed.length).toBeGreaterThan(0);
    for (const f of failed) expect(f.pid).toBeNull();
  });

  it('reports QEMU refusing to start (a corrupt kernel) as BOOT_FAILED with what QEMU said', async () => {
    const dir = brokenHome((_, d) => {
      const junk = join(d, 'vmlinux');
      writeFileSync(junk, 'not a kernel');
      return { kernel: junk };
    });
    try {
      const err = await Sandbox.create({ home: dir, timeoutMs: 30_000 }).catch((e: unknown) => e);
      expect(err).toMatchObject({ code: 'BOOT_FAILED' });
      expect(((err as RoostError).details as { qemu: string[] }).qemu.join('\n')).toMatch(/kernel|linux/i);
    } finally {
      await closeHome(dir);
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('aborts creation with an AbortSignal', async () => {
    const ac = new AbortController();
    setTimeout(() => ac.abort(), 50);
    await expect(Sandbox.create({ home: home.root, signal: ac.signal })).rejects.toMatchObject({ code: 'ABORTED' });
  });
});
