import { createHash } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { isRoostError, RoostError, type Sandbox } from '@roost/core';
import { TestHome } from './helpers.js';

// One booted sandbox serves every test in this file: the tests only run
// commands, which leave nothing behind that another test depends on.
const home = new TestHome();
let sb: Sandbox;

beforeAll(async () => {
  sb = await home.create({ env: { ROOST_TEST: 'sandbox-wide' } });
});
afterAll(() => home.cleanup());

describe('commands.run', () => {
  it('runs a shell command line in a real Linux guest', async () => {
    const r = await sb.commands.run('uname -s; cat /proc/1/comm');
    expect(r).toMatchObject({ exitCode: 0, signal: null, stderr: '' });
    expect(r.stdout).toBe('Linux\ninit\n');
  });

  it('keeps stdout and stderr apart and passes the exit code through', async () => {
    const r = await sb.commands.run('echo out; echo err >&2; exit 3');
    expect(r).toEqual({ exitCode: 3, signal: null, stdout: 'out\n', stderr: 'err\n' });
  });

  it('runs a program with args and no shell', async () => {
    const r = await sb.commands.run('printf', { args: ['%s|', 'a b', '$HOME', '*'] });
    expect(r.stdout).toBe('a b|$HOME|*|');
  });

  it('reports a command that does not exist with exit 127 and a clear message', async () => {
    const r = await sb.commands.run('no-such-program', { args: [] });
    expect(r.exitCode).toBe(127);
    expect(r.stderr).toMatch(/no-such-program: No such file or directory/);
  });

  it('reports a file that is not executable with exit 126', async () => {
    const r = await sb.commands.run('/etc/passwd', { args: [] });
    expect(r.exitCode).toBe(126);
    expect(r.stderr).toMatch(/\/etc\/passwd: Permission denied/);
  });

  it('applies the sandbox env, the command env, cwd and user', async () => {
    const r = await sb.commands.run('echo "$ROOST_TEST $EXTRA $(pwd) $(id -u):$(id -g) $HOME"', {
      env: { EXTRA: 'x=y' },
      cwd: '/tmp',
      user: 'nobody',
    });
    expect(r.stdout).toBe('sandbox-wide x=y /tmp 65534:65534 /nonexistent\n');
    const numeric = await sb.commands.run('id -u; id -g', { user: '1234:4321' });
    expect(numeric.stdout).toBe('1234\n4321\n');
    const root = await sb.commands.run('id -u; echo $PATH');
    expect(root.stdout).toBe('0\n/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n');
  });

  it('fails clearly for an unknown user and a missing cwd', async () => {
    await expect(sb.commands.run('true', { user: 'nosuchuser' })).rejects.toMatchObject({
      code: 'AGENT',
      message: expect.stringMatching(/unknown user nosuchuser/),
    });
    const r = await sb.commands.run('true', { cwd: '/does/not/exist' });
    expect(r.exitCode).not.toBe(0);
    expect(r.stderr).toMatch(/\/does\/not\/exist/);
  });

  it('feeds stdin from a string, bytes and an async iterable', async () => {
    expect((await sb.commands.run('cat', { args: [], stdin: 'hello\n' })).stdout).toBe('hello\n');
    expect((await sb.commands.run('wc -c', { stdin: new Uint8Array(100_000) })).stdout.trim()).toBe('100000');
    async function* parts() {
      for (let i = 0; i < 5; i++) yield `line ${i}\n`;
    }
    expect((await sb.commands.run('sort -r', { stdin: parts() })).stdout).toBe('line 4\nline 3\nline 2\nline 1\nline 0\n');
  });

  it('streams output to callbacks as it is produced', async () => {
    const seen: string[] = [];
    const r = await sb.commands.run('for i in 1 2 3; do echo $i; sleep 0.05; done', { onStdout: (d) => void seen.push(d) });
    expect(seen.join('')).toBe('1\n2\n3\n');
    expect(seen.length).toBeGreaterThanOrEqual(2);
    expect(r.stdout).toBe('1\n2\n3\n');
  });

  it('moves large output intact under flow control', async () => {
    // 16 MiB of deterministic bytes, far more than the credit window.
    const size = 16 << 20;
    const h = await sb.commands.start(`yes ABCDEFGHIJKLMNOPQRSTUVWXYZ | head -c ${size}`);
    const hash = createHash('sha256');
    let bytes = 0;
    for await (const chunk of h.stdout) {
      hash.update(chunk);
      bytes += chunk.length;
    }
    expect((await h.wait()).exitCode).toBe(0);
    const line = 'ABCDEFGHIJKLMNOPQRSTUVWXYZ\n';
    const expected = createHash('sha256').update(line.repeat(Math.ceil(size / line.length)).slice(0, size));
    expect(bytes).toBe(size);
    expect(hash.digest('hex')).toBe(expected.digest('hex'));
  }, 120_000);

  it('runs many commands concurrently on one connection', async () => {
    const results = await Promise.all(Array.from({ length: 24 }, (_, i) => sb.commands.run(`sleep 0.1; echo ${i}`)));
    expect(results.map((r) => r.stdout.trim())).toEqual(Array.from({ length: 24 }, (_, i) => String(i)));
  });

  it('kills a command at its timeout with a TIMEOUT error carrying partial output', async () => {
    const started = Date.now();
    const err = await sb.commands.run('echo before; sleep 30', { timeoutMs: 500 }).catch((e: unknown) => e);
    expect(isRoostError(err, 'TIMEOUT')).toBe(true);
    expect((err as RoostError).details.stdout).toBe('before\n');
    expect(Date.now() - started).toBeLessThan(5_000);
  });

  it('aborts a command with an AbortSignal', async () => {
    const ac = new AbortController();
    const p = sb.commands.run('sleep 30', { signal: ac.signal });
    setTimeout(() => ac.abort(), 200);
    await expect(p).rejects.toMatchObject({ code: 'ABORTED' });
    // The process is gone in the guest, too.
    await new Promise((r) => setTimeout(r, 200));
    expect((await sb.commands.run('ps -o comm | grep -c "^sleep$" || true')).stdout.trim()).toBe('0');
  });

  it('validates options and names the field', async () => {
    await expect(sb.commands.run('true', { timeoutMs: -5 })).rejects.toMatchObject({ code: 'INVALID_ARGUMENT', message: expect.stringMatching(/timeoutMs/) });
    await expect(sb.commands.run('true', { env: { 'A=B': '1' } })).rejects.toMatchObject({ code: 'INVALID_ARGUMENT', message: expect.stringMatching(/env/) });
    await expect(sb.commands.run('true', { bogus: 1 } as never)).rejects.toMatchObject({ code: 'INVALID_ARGUMENT', message: expect.stringMatching(/bogus/) });
    await expect(sb.commands.run('')).rejects.toMatchObject({ code: 'INVALID_ARGUMENT' });
    await expect(sb.commands.run('x', { env: { BIG: 'x'.repeat(70_000) } })).rejects.toMatchObject({
      code: 'INVALID_ARGUMENT',
      message: expect.stringMatching(/65536/),
    });
  });
});

describe('commands.start', () => {
  it('gives a handle: pid, streamed stdout and stderr, stdin writes, wait', async () => {
    const h = await sb.commands.start('while read line; do echo "got $line"; echo "err $line" >&2; done', { stdin: true });
    expect(h.pid).toBeGreaterThan(1);
    const out: string[] = [];
    const err: string[] = [];
    const readers = Promise.all([
      (async () => {
        for await (const c of h.stdout) out.push(Buffer.from(c).toString());
      })(),
      (async () => {
        for await (const c of h.stderr) err.push(Buffer.from(c).toString());
      })(),
    ]);
    await h.write('a\n');
    await h.write(Buffer.from('b\n'));
    h.closeStdin();
    await readers;
    const r = await h.wait();
    expect(r.exitCode).toBe(0);
    expect(out.join('')).toBe('got a\ngot b\n');
    expect(err.join('')).toBe('err a\nerr b\n');
  });

  it('lets a reader iterate output after the process has exited', async () => {
    const h = await sb.commands.start('echo late-reader; echo err >&2');
    // The exit frame may arrive with the output, before anyone reads: the output must still be there.
    await new Promise((r) => setTimeout(r, 300));
    expect(h.exited).toBe(true);
    const chunks: Uint8Array[] = [];
    for await (const c of h.stdout) chunks.push(c);
    expect(Buffer.concat(chunks).toString()).toBe('late-reader\n');
    const r = await h.wait();
    expect(r).toMatchObject({ exitCode: 0, stdout: '', stderr: 'err\n' });
  });

  it('lets a reader stop early without blocking the command', async () => {
    // Far more output than the credit window: it can finish only if the rest is taken up.
    const h = await sb.commands.start('echo first; head -c 4194304 /dev/zero; echo; echo last');
    for await (const chunk of h.stdout) {
      expect(Buffer.from(chunk).toString().startsWith('first')).toBe(true);
      break;
    }
    const r = await h.wait();
    expect(r.exitCode).toBe(0);
    expect(r.stdout.endsWith('last\n')).toBe(true);
  });

  it('delivers signals to the process group and reports the signal', async () => {
    const h = await sb.commands.start('trap "echo term; exit 7" TERM; echo ready; while :; do sleep 0.05; done');
    const it = h.stdout[Symbol.asyncIterator]();
    expect(Buffer.from((await it.next()).value as Uint8Array).toString()).toBe('ready\n');
    h.kill('SIGTERM');
    let rest = '';
    for (let n = await it.next(); !n.done; n = await it.next()) rest += Buffer.from(n.value).toString();
    expect(rest).toBe('term\n');
    expect((await h.wait()).exitCode).toBe(7);

    const k = await sb.commands.start('sleep 30');
    k.kill('SIGKILL');
    expect(await k.wait()).toMatchObject({ exitCode: 137, signal: 'SIGKILL' });
  });

  it('runs on a PTY with a window size that can change', async () => {
    const h = await sb.commands.start('tty; stty size; read x; stty size', { pty: { rows: 40, cols: 120 }, stdin: true });
    let text = '';
    const reading = (async () => {
      for await (const c of h.stdout) text += Buffer.from(c).toString();
    })();
    await new Promise((r) => setTimeout(r, 300));
    h.resize({ rows: 50, cols: 132 });
    await h.write('\n');
    await reading;
    expect((await h.wait()).exitCode).toBe(0);
    expect(text.replace(/\r/g, '')).toMatch(/^\/dev\/pts\/\d+\n40 120\n\n50 132\n$/);
  });

  it('disposes with await using by killing the command', async () => {
    let pid: number;
    {
      await using h = await sb.commands.start('sleep 60');
      pid = h.pid;
    }
    const r = await sb.commands.run(`kill -0 ${pid} 2>/dev/null && echo alive || echo gone`);
    expect(r.stdout.trim()).toBe('gone');
  });
});

describe('the sandbox', () => {
  it('runs PID 1 as the agent and mounts what programs expect', async () => {
    const r = await sb.commands.run('cat /proc/mounts | cut -d" " -f2,3 | sort');
    for (const m of ['/ overlay', '/proc proc', '/sys sysfs', '/dev devtmpfs', '/dev/pts devpts']) expect(r.stdout).toContain(m);
    // /tmp is on the sandbox's disk, as in a container, and open to everyone.
    expect((await sb.commands.run('stat -c %a /tmp && echo hi > /etc/written && cat /etc/written')).stdout).toBe('1777\nhi\n');
  });

  it('has busybox httpd and a loopback interface to serve it on', async () => {
    await sb.commands.run('mkdir -p /tmp/www && echo served > /tmp/www/index.html');
    const server = await sb.commands.start('httpd', { args: ['-f', '-p', '127.0.0.1:8080', '-h', '/tmp/www'] });
    const r = await sb.commands.run('for i in 1 2 3 4 5 6 7 8 9 10; do wget -qO- http://127.0.0.1:8080/ && exit 0; sleep 0.1; done; exit 1');
    server.kill('SIGTERM');
    await server.wait();
    expect(r).toMatchObject({ exitCode: 0, stdout: 'served\n' });
  });

  it("boots Roost's kernel: virtqueues capped by guest/kernel/patches", async () => {
    const r = await sb.commands.run('cat /sys/module/virtio_mmio/parameters/max_queue_size; uname -r');
    expect(r.stdout).toMatch(/^256\n6\.1\./);
  });

  it('answers pings, and QEMU reports the VM running over QMP', async () => {
    expect(await sb.ping()).toBeGreaterThan(0);
    expect(await sb.vmStatus()).toBe('running');
  });

  it('has a directory with its sockets, console log and disk, and a record in the home database', async () => {
    const { readdirSync } = await import('node:fs');
    expect(readdirSync(sb.dir).sort()).toEqual(expect.arrayContaining(['agent.sock', 'console.log', 'disk.qcow2', 'qmp.sock', 'qemu.log']));
    const { stateDb } = await import('@roost/core/internal');
    const row = stateDb(home.root).prepare('SELECT status, pid, info_json FROM sandboxes WHERE id = ?').get(sb.id) as {
      status: string;
      pid: number;
      info_json: string;
    };
    expect(row).toMatchObject({ status: 'running', pid: sb.info.pid });
    expect(JSON.parse(row.info_json)).toMatchObject({ id: sb.id, execs: expect.any(Number) });
  });
});
