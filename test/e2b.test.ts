import { connect } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  AuthenticationError,
  CommandExitError,
  FileNotFoundError,
  FilesystemEventType,
  InvalidArgumentError,
  NotFoundError,
  Sandbox,
  SandboxNotFoundError,
  TimeoutError,
  type FilesystemEvent,
} from 'e2b';
import { createHash, randomBytes } from 'node:crypto';
import { request as httpRequest, type IncomingMessage } from 'node:http';
import { join } from 'node:path';
import { ImageStore } from '@roost/core';
import { RoostClient } from '@roost/client';
import { buildE2bDebianImage } from '@roost/testkit';
import { serve, type ServeHandle } from '@roost/server';
import { E2bKeys } from '../packages/server/src/e2b/keys.js';
import { eventually, TestHome } from './helpers.js';

/*
 * E2B's own SDK (the `e2b` package from npm, pinned, unchanged) against
 * `roost serve`: its control plane so far (create, getInfo, list with
 * metadata and pages, setTimeout, pause and connect, kill, isRunning),
 * metrics, fork and snapshots), its envd's process service (with PTYs),
 * filesystem service (with watchDir) and /files (with signed URLs), and
 * the sandbox hosts behind `getHost(port)`, with real VMs.
 */

const home = new TestHome();
let daemon: ServeHandle;
let rest: RoostClient;
let apiKey: string;

beforeAll(async () => {
  daemon = await serve({ home: home.root, tcp: { host: '127.0.0.1', port: 0 } });
  rest = new RoostClient({ host: daemon.url!, token: daemon.token });
  apiKey = new E2bKeys(home.root).create('test').key;
  process.env.E2B_API_URL = daemon.url!;
  process.env.E2B_SANDBOX_URL = daemon.url!;
  process.env.E2B_API_KEY = apiKey;
});

afterAll(async () => {
  await rest?.close();
  await daemon?.close();
  await home.cleanup();
});

describe('E2B control plane', () => {
  it('creates a sandbox from `base` with metadata and a timeout; getInfo, isRunning and kill', async () => {
    const sbx = await Sandbox.create('base', { metadata: { user: 'a b', team: 'x' }, timeoutMs: 120_000 });
    expect(sbx.sandboxId).toMatch(/^[0-9a-f]{12}$/);
    const info = await sbx.getInfo();
    expect(info).toMatchObject({
      sandboxId: sbx.sandboxId,
      templateId: 'base',
      metadata: { user: 'a b', team: 'x' },
      state: 'running',
      cpuCount: 1,
      memoryMB: 256,
    });
    expect(info.endAt.getTime() - Date.now()).toBeGreaterThan(100_000);
    expect(await sbx.isRunning()).toBe(true);
    // The record underneath: a detached Roost sandbox with E2B's timeout as its lifetime.
    const roost = await rest.get(sbx.sandboxId);
    expect(roost.info).toMatchObject({ detached: true, onExpiry: 'remove', labels: { 'e2b.template': 'base', 'e2b.metadata/user': 'a b' } });
    await sbx.setTimeout(30_000);
    expect((await sbx.getInfo()).endAt.getTime() - Date.now()).toBeLessThanOrEqual(30_000);
    expect(await sbx.kill()).toBe(true);
    expect(await Sandbox.kill(sbx.sandboxId)).toBe(false);
    await expect(Sandbox.getInfo(sbx.sandboxId)).rejects.toBeInstanceOf(SandboxNotFoundError);
    expect(await sbx.isRunning()).toBe(false);
  });

  it('an unknown template is a 404; a bad key is an AuthenticationError', async () => {
    await expect(Sandbox.create('no-such-template')).rejects.toThrow(/404.*no-such-template/);
    await expect(Sandbox.create('base', { apiKey: 'e2b_' + '0'.repeat(40) })).rejects.toBeInstanceOf(AuthenticationError);
    // What the face does not serve is a JSON error the SDK can report, not a bare 404.
    const res = await fetch(`${daemon.url}/templates`, { headers: { 'X-API-KEY': apiKey } });
    expect(res.status).toBe(501);
    expect(await res.json()).toMatchObject({ code: 501, message: expect.stringMatching(/not served/) });
  });

  it('lists by metadata and state, in pages; pauses, and connect resumes (twice), extending the timeout', async () => {
    const a = await Sandbox.create('base', { metadata: { suite: 'list', n: '1' } });
    const b = await Sandbox.create('base', { metadata: { suite: 'list', n: '2' } });
    const pages: string[][] = [];
    const paginator = Sandbox.list({ query: { metadata: { suite: 'list' } }, limit: 1 });
    while (paginator.hasNext) pages.push((await paginator.nextItems()).map((s) => s.sandboxId));
    expect(pages.flat().sort()).toEqual([a.sandboxId, b.sandboxId].sort());
    expect(pages.every((p) => p.length === 1)).toBe(true);

    // Files and processes survive repeated pause and resume (E2B users report files lost after the second resume).
    await a.files.write('/root/kept.txt', 'kept');
    const ticker = await a.commands.run('i=0; while true; do i=$((i+1)); echo $i > /tmp/tick.new; mv /tmp/tick.new /tmp/tick; sleep 0.1; done', {
      background: true,
      timeoutMs: 0,
    });
    await eventually(() => a.files.exists('/tmp/tick'), 10_000, 'the ticker started');
    for (let round = 0; round < 2; round++) {
      expect(await a.pause()).toBe(true);
      expect(await a.pause()).toBe(false); // already paused: E2B's 409
      const paused = await Sandbox.list({ query: { metadata: { suite: 'list' }, state: ['paused'] } }).nextItems();
      expect(paused.map((s) => s.sandboxId)).toEqual([a.sandboxId]);
      const again = await Sandbox.connect(a.sandboxId, { timeoutMs: 200_000 });
      expect((await again.getInfo()).state).toBe('running');
      expect((await again.getInfo()).endAt.getTime() - Date.now()).toBeGreaterThan(150_000);
      expect(await again.files.read('/root/kept.txt')).toBe('kept');
      expect((await again.commands.list()).map((p) => p.pid)).toContain(ticker.pid);
      const tick = Number(await again.files.read('/tmp/tick'));
      await eventually(async () => Number(await again.files.read('/tmp/tick')) > tick, 10_000, 'the background process still counting');
    }
    // Connect never shortens.
    await Sandbox.connect(a.sandboxId, { timeoutMs: 10_000 });
    expect((await a.getInfo()).endAt.getTime() - Date.now()).toBeGreaterThan(150_000);
    await a.kill();
    await b.kill();
  });

  it('the end of the timeout kills the sandbox, as E2B does', async () => {
    const sbx = await Sandbox.create('base', { timeoutMs: 2_000 });
    await eventually(async () => !(await sbx.isRunning()), 20_000, 'killed at its timeout');
    await expect(sbx.getInfo()).rejects.toBeInstanceOf(SandboxNotFoundError);
    await expect(rest.get(sbx.sandboxId)).rejects.toThrow(/NOT_FOUND|no sandbox/);
  });

  it('reports metrics: CPU, memory and disk samples of the guest; allowInternetAccess: false denies egress', async () => {
    const sbx = await Sandbox.create('base', { allowInternetAccess: false });
    try {
      expect((await sbx.getInfo()).allowInternetAccess).toBe(false);
      expect((await rest.get(sbx.sandboxId)).info.network?.egress).toMatchObject({ default: 'deny' });
      const first = await sbx.getMetrics();
      expect(first.length).toBeGreaterThanOrEqual(1);
      const m = first.at(-1)!;
      expect(m.cpuCount).toBe(1);
      expect(m.memTotal).toBeGreaterThan(150 * 1024 * 1024);
      expect(m.memUsed).toBeGreaterThan(0);
      expect(m.memUsed).toBeLessThan(m.memTotal);
      expect(m.diskTotal).toBeGreaterThan(m.diskUsed);
      expect(m.cpuUsedPct).toBeGreaterThanOrEqual(0);
      expect(m.timestamp).toBeInstanceOf(Date);
      const second = await sbx.getMetrics();
      expect(second.length).toBeGreaterThan(first.length);
      // A range that ends before the first sample has none.
      expect(await sbx.getMetrics({ end: new Date(m.timestamp.getTime() - 60_000) })).toEqual([]);
    } finally {
      await sbx.kill();
    }
  });

  it('forks a sandbox and snapshots one; creates from the snapshot; lists and deletes snapshots', async () => {
    const src = await Sandbox.create('base', { metadata: { suite: 'fork' } });
    try {
      await src.files.write('/root/state.txt', 'kept');
      const [fork] = await src.fork({ timeoutMs: 60_000 });
      expect(fork).toBeInstanceOf(Sandbox);
      const f = fork as Sandbox;
      expect(f.sandboxId).not.toBe(src.sandboxId);
      expect(await f.files.read('/root/state.txt')).toBe('kept');
      expect((await f.getInfo()).metadata).toEqual({ suite: 'fork' });
      await f.kill();

      const snap = await src.createSnapshot({ name: 'e2b-test-snap' });
      expect(snap.names).toEqual(['e2b-test-snap']);
      const fromSnap = await Sandbox.create(snap.snapshotId);
      expect(await fromSnap.files.read('/root/state.txt')).toBe('kept');
      await fromSnap.kill();
      const listed = await src.listSnapshots().nextItems();
      expect(listed.map((x) => x.snapshotId)).toEqual([snap.snapshotId]);
      expect(await Sandbox.deleteSnapshot(snap.snapshotId)).toBe(true);
      expect(await Sandbox.deleteSnapshot(snap.snapshotId)).toBe(false);
    } finally {
      await src.kill();
    }
  });
});

describe('E2B commands (envd process service)', () => {
  let sbx: Sandbox;
  beforeAll(async () => {
    sbx = await Sandbox.create('base', { envs: { FROM_CREATE: 'c' } });
  });
  afterAll(async () => {
    await sbx?.kill();
  });

  it('runs a command: output, exit code, environment, cwd; a failure is a CommandExitError', async () => {
    const r = await sbx.commands.run('echo hello; echo err >&2');
    expect(r).toMatchObject({ exitCode: 0, stdout: 'hello\n', stderr: 'err\n' });
    const env = await sbx.commands.run('echo "$A-$FROM_CREATE" && pwd', { envs: { A: 'a' }, cwd: '/tmp' });
    expect(env.stdout).toBe('a-c\n/tmp\n');
    const err = await sbx.commands.run('echo partial; exit 3').then(
      () => null,
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(CommandExitError);
    expect(err).toMatchObject({ exitCode: 3, stdout: 'partial\n', error: 'exit status 3' });
    // stdin is /dev/null by default: a command that reads it does not hang.
    expect((await sbx.commands.run('cat; echo done')).stdout).toBe('done\n');
  });

  it('streams output to callbacks, runs in the background, lists, takes stdin, and kills', async () => {
    const seen: string[] = [];
    await sbx.commands.run('for i in 1 2 3; do echo $i; sleep 0.1; done', { onStdout: (d) => void seen.push(d) });
    expect(seen.join('')).toBe('1\n2\n3\n');
    const bg = await sbx.commands.run('cat', { background: true, stdin: true });
    expect((await sbx.commands.list()).map((p) => p.pid)).toContain(bg.pid);
    await sbx.commands.sendStdin(bg.pid, 'through stdin\n');
    await sbx.commands.closeStdin(bg.pid);
    expect((await bg.wait()).stdout).toBe('through stdin\n');
    const sleeper = await sbx.commands.run('sleep 60', { background: true });
    expect(await sbx.commands.kill(sleeper.pid)).toBe(true);
    const killed = await sleeper.wait().then(
      () => null,
      (e: unknown) => e,
    );
    expect(killed).toBeInstanceOf(CommandExitError);
    expect(await sbx.commands.kill(sleeper.pid)).toBe(false);
  });

  it('connects to a running process by pid and sees its output from then on; runs as the user asked', async () => {
    const bg = await sbx.commands.run('sleep 0.5; echo late; exit 4', { background: true });
    const again = await sbx.commands.connect(bg.pid);
    const err = await again.wait().then(
      () => null,
      (e: unknown) => e,
    );
    expect(err).toMatchObject({ exitCode: 4, stdout: 'late\n' });
    expect((await sbx.commands.run('id -u', { user: 'nobody' })).stdout.trim()).not.toBe('0');
    await expect(sbx.commands.connect(999_999)).rejects.toThrow(/not found/);
  });

  it('a reader that does not read holds the command back; the daemon does not buffer its output', async () => {
    const json = Buffer.from(JSON.stringify({ process: { cmd: '/bin/sh', args: ['-c', 'head -c 30000000 /dev/zero'] }, stdin: false }));
    const head = Buffer.alloc(5);
    head.writeUInt32BE(json.length, 1);
    const { hostname, port } = new URL(daemon.url!);
    const token = (sbx as unknown as { envdAccessToken: string }).envdAccessToken;
    const res = await new Promise<IncomingMessage>((resolve, reject) => {
      const req = httpRequest(
        {
          host: hostname,
          port,
          method: 'POST',
          path: '/process.Process/Start',
          headers: { 'content-type': 'application/connect+json', 'e2b-sandbox-id': sbx.sandboxId, 'x-access-token': token },
        },
        resolve,
      );
      req.on('error', reject);
      req.end(Buffer.concat([head, json]));
    });
    res.pause();
    await new Promise((r) => setTimeout(r, 5_000));
    // Unread for 5 s, the command is held back: without flow control its 30 MB are out in under 3 s here, into the daemon's memory.
    expect((await sbx.commands.list()).some((p) => p.args.join(' ').includes('head -c 30000000'))).toBe(true);
    let bytes = 0;
    for await (const chunk of res) bytes += (chunk as Buffer).length;
    // Base64 in JSON envelopes: more than the 30 MB it carries.
    expect(bytes).toBeGreaterThan(30_000_000);
    await eventually(async () => !(await sbx.commands.list()).some((p) => p.args.join(' ').includes('head -c 30000000')), 10_000, 'the command ended');
  }, 60_000);

  it('a command past its timeout is killed, as E2B does', async () => {
    const started = Date.now();
    await expect(sbx.commands.run('sleep 30', { timeoutMs: 500 })).rejects.toBeInstanceOf(TimeoutError);
    expect(Date.now() - started).toBeLessThan(10_000);
    await eventually(async () => !(await sbx.commands.list()).some((p) => p.args.join(' ').includes('sleep 30')), 10_000, 'the command killed');
  });

  it('runs a shell on a terminal: output as terminal data, input, resize, exit code', async () => {
    const decoder = new TextDecoder();
    let out = '';
    const pty = await sbx.pty.create({ cols: 80, rows: 24, onData: (d) => void (out += decoder.decode(d, { stream: true })), timeoutMs: 0 });
    const type = (line: string) => sbx.pty.sendInput(pty.pid, new TextEncoder().encode(line));
    await type('stty size; tty\n');
    await eventually(() => /24 80/.test(out) && /\/dev\/pts\/\d+/.test(out), 10_000, 'the terminal answers');
    expect((await sbx.commands.list()).map((p) => p.pid)).toContain(pty.pid);
    await sbx.pty.resize(pty.pid, { cols: 100, rows: 30 });
    await type('stty size\n');
    await eventually(() => /30 100/.test(out), 10_000, 'the new size');
    // Input to a terminal is pty input: stdin is refused, as envd does.
    await expect(sbx.commands.sendStdin(pty.pid, 'x')).rejects.toThrow(/terminal/);
    await type('exit 5\n');
    await expect(pty.wait()).rejects.toMatchObject({ exitCode: 5 });
    const killed = await sbx.pty.create({ cols: 80, rows: 24, onData: () => {}, timeoutMs: 0 });
    expect(await sbx.pty.kill(killed.pid)).toBe(true);
    await expect(killed.wait()).rejects.toBeInstanceOf(CommandExitError);
  });
});

describe('E2B files (envd filesystem service and /files)', () => {
  let sbx: Sandbox;
  beforeAll(async () => {
    sbx = await Sandbox.create('base');
  });
  afterAll(async () => {
    await sbx?.kill();
  });

  it('writes and reads text and bytes, several files at once, relative to the home; lists, stats, renames, removes', async () => {
    const info = await sbx.files.write('/tmp/e2b/a.txt', 'hello e2b\n');
    expect(info).toMatchObject({ name: 'a.txt', type: 'file', path: '/tmp/e2b/a.txt' });
    expect(await sbx.files.read('/tmp/e2b/a.txt')).toBe('hello e2b\n');
    const bytes = new Uint8Array(Array.from({ length: 256 }, (_, i) => i));
    await sbx.files.write('/tmp/e2b/b.bin', bytes.buffer);
    expect(new Uint8Array(await sbx.files.read('/tmp/e2b/b.bin', { format: 'bytes' }))).toEqual(bytes);
    const many = await sbx.files.write([
      { path: '/tmp/e2b/many/1.txt', data: 'one' },
      { path: '/tmp/e2b/many/2.txt', data: 'two' },
    ]);
    expect(many.map((f) => f.path)).toEqual(['/tmp/e2b/many/1.txt', '/tmp/e2b/many/2.txt']);
    // Relative paths start at the user's home (root's here).
    await sbx.files.write('rel.txt', 'relative');
    expect((await sbx.commands.run('cat /root/rel.txt')).stdout).toBe('relative');
    await expect(sbx.files.read('')).rejects.toThrow(/path/);

    const listed = await sbx.files.list('/tmp/e2b');
    expect(listed.map((e) => e.name).sort()).toEqual(['a.txt', 'b.bin', 'many']);
    expect(listed.find((e) => e.name === 'many')).toMatchObject({ type: 'dir' });
    expect((await sbx.files.list('/tmp/e2b', { depth: 2 })).map((e) => e.path)).toContain('/tmp/e2b/many/2.txt');
    const stat = await sbx.files.getInfo('/tmp/e2b/a.txt');
    expect(stat).toMatchObject({ name: 'a.txt', type: 'file', size: 10, permissions: '-rw-r--r--' });
    expect(await sbx.files.exists('/tmp/e2b/a.txt')).toBe(true);
    expect(await sbx.files.exists('/tmp/e2b/nope')).toBe(false);
    expect(await sbx.files.makeDir('/tmp/e2b/new/deeper')).toBe(true);
    expect(await sbx.files.makeDir('/tmp/e2b/new/deeper')).toBe(false);
    const moved = await sbx.files.rename('/tmp/e2b/a.txt', '/tmp/e2b/new/a.txt');
    expect(moved).toMatchObject({ path: '/tmp/e2b/new/a.txt', type: 'file' });
    await sbx.files.remove('/tmp/e2b/new');
    expect(await sbx.files.exists('/tmp/e2b/new')).toBe(false);
    await sbx.files.remove('/tmp/e2b/never-was');
    await expect(sbx.files.read('/tmp/e2b/new/a.txt')).rejects.toBeInstanceOf(FileNotFoundError);
    await expect(sbx.files.getInfo('/tmp/e2b/nope')).rejects.toBeInstanceOf(FileNotFoundError);
  });

  it('watches a directory: create, write, rename and remove events, recursive, with entries; a deadline ends it', async () => {
    await sbx.files.makeDir('/tmp/watched');
    const events: FilesystemEvent[] = [];
    const watcher = await sbx.files.watchDir('/tmp/watched', (e) => void events.push(e), { recursive: true, includeEntry: true, timeoutMs: 0 });
    // A shell's write (files.write renames a temporary file into place: a create of its final name).
    await sbx.commands.run('echo one > /tmp/watched/a.txt');
    await sbx.files.makeDir('/tmp/watched/sub');
    await eventually(() => events.some((e) => e.name === 'sub' && e.type === FilesystemEventType.CREATE), 10_000, 'the new directory seen');
    await sbx.files.write('/tmp/watched/sub/b.txt', 'two');
    await sbx.files.rename('/tmp/watched/a.txt', '/tmp/watched/c.txt');
    await sbx.files.remove('/tmp/watched/c.txt');
    await eventually(() => events.some((e) => e.name === 'c.txt' && e.type === FilesystemEventType.REMOVE), 10_000, 'the removal seen');
    const seen = events.map((e) => `${e.type} ${e.name}`);
    for (const want of ['create a.txt', 'write a.txt', 'create sub', 'create sub/b.txt', 'rename a.txt', 'create c.txt', 'remove c.txt'])
      expect(seen).toContain(want);
    expect(events.find((e) => e.name === 'sub/b.txt')?.entry).toMatchObject({ path: '/tmp/watched/sub/b.txt', type: 'file' });
    await watcher.stop();
    const after = events.length;
    await sbx.files.write('/tmp/watched/late.txt', 'late');
    await new Promise((r) => setTimeout(r, 300));
    expect(events.length).toBe(after);

    await expect(sbx.files.watchDir('/tmp/no-such-dir', () => {})).rejects.toBeInstanceOf(NotFoundError);
    await expect(sbx.files.watchDir('/tmp/watched/late.txt', () => {})).rejects.toBeInstanceOf(InvalidArgumentError);
    const exited = new Promise<unknown>((resolve) => void sbx.files.watchDir('/tmp/watched', () => {}, { timeoutMs: 500, onExit: resolve }));
    expect(await exited).toBeInstanceOf(TimeoutError);
  });

  it('streams uploads and downloads (octet-stream, gzip); refuses file metadata it cannot keep', async () => {
    const size = 24 * 1024 * 1024;
    const chunk = randomBytes(1024 * 1024);
    const expected = createHash('sha256');
    let sent = 0;
    const source = new ReadableStream<Uint8Array>({
      pull(controller) {
        if (sent >= size) return controller.close();
        expected.update(chunk);
        controller.enqueue(new Uint8Array(chunk));
        sent += chunk.length;
      },
    });
    await sbx.files.write('/tmp/big.bin', source);
    expect((await sbx.commands.run('sha256sum /tmp/big.bin')).stdout.split(' ')[0]).toBe(expected.digest('hex'));
    const got = createHash('sha256');
    let bytes = 0;
    for await (const part of (await sbx.files.read('/tmp/big.bin', { format: 'stream' })) as unknown as AsyncIterable<Uint8Array>) {
      got.update(part);
      bytes += part.length;
    }
    expect(bytes).toBe(size);
    expect(got.digest('hex')).toBe((await sbx.commands.run('sha256sum /tmp/big.bin')).stdout.split(' ')[0]);
    await sbx.files.write('/tmp/zipped.txt', 'squeezed '.repeat(1000), { gzip: true });
    expect(await sbx.files.read('/tmp/zipped.txt')).toBe('squeezed '.repeat(1000));
    expect(await sbx.files.read('/tmp/e2b-empty.txt').catch((e: unknown) => e)).toBeInstanceOf(FileNotFoundError);
    await sbx.files.write('/tmp/e2b-empty.txt', '');
    expect(await sbx.files.read('/tmp/e2b-empty.txt')).toBe('');
    await expect(sbx.files.write('/tmp/meta.txt', 'x', { metadata: { k: 'v' } })).rejects.toThrow(/metadata/);
  });

  it('signed download and upload URLs work without the token, for their operation, path and time only', async () => {
    await sbx.files.write('/tmp/signed.txt', 'download me');
    const download = await sbx.downloadUrl('/tmp/signed.txt', { useSignatureExpiration: 60 });
    expect(download).toMatch(/signature=v1_.*signature_expiration=\d+/);
    const res = await fetch(download);
    expect(res.status).toBe(200);
    expect(await res.text()).toBe('download me');
    // Another path, another operation, an expired signature: 401.
    const otherPath = new URL(download);
    otherPath.searchParams.set('path', '/etc/passwd');
    expect((await fetch(otherPath)).status).toBe(401);
    expect((await fetch(download, { method: 'POST', body: 'overwrite', headers: { 'content-type': 'application/octet-stream' } })).status).toBe(401);
    const expired = await sbx.downloadUrl('/tmp/signed.txt', { useSignatureExpiration: -10 });
    expect((await fetch(expired)).status).toBe(401);

    const upload = await sbx.uploadUrl('/tmp/uploaded.txt');
    const form = new FormData();
    form.append('file', new Blob(['uploaded through a signed URL']), 'uploaded.txt');
    const up = await fetch(upload, { method: 'POST', body: form });
    expect(up.status).toBe(200);
    expect(await sbx.files.read('/tmp/uploaded.txt')).toBe('uploaded through a signed URL');
  });
});

describe("E2B's defaults in an image like E2B's base (Debian with bash, python3 and `user`)", () => {
  let sbx: Sandbox;
  beforeAll(async () => {
    const layout = join(home.root, 'e2b-debian-layout');
    await buildE2bDebianImage(layout, { progress: (l) => process.stderr.write(`[e2b image] ${l}\n`) });
    await new ImageStore({ home: home.root }).import(layout, { tag: 'e2b-debian' });
    sbx = await Sandbox.create('e2b-debian');
  }, 300_000);
  afterAll(async () => {
    await sbx?.kill();
  });

  it('runs commands with bash as `user` in /home/user; root when asked; files relative to the home, owned and named', async () => {
    expect((await sbx.commands.run('echo "$(id -un) $PWD $HOME ${BASH_VERSION%%.*}"')).stdout).toBe('user /home/user /home/user 5\n');
    expect((await sbx.commands.run('python3 -c "print(6 * 7)"')).stdout).toBe('42\n');
    expect((await sbx.commands.run('id -un; pwd', { user: 'root' })).stdout).toBe('root\n/root\n');
    await sbx.files.write('notes.txt', 'mine');
    expect(await sbx.files.getInfo('/home/user/notes.txt')).toMatchObject({ owner: 'user', group: 'user', type: 'file' });
    expect((await sbx.commands.run('cat ~/notes.txt')).stdout).toBe('mine');
    // The default user cannot write where `user` cannot.
    await expect(sbx.files.write('/root/nope.txt', 'x')).rejects.toThrow(/permission|denied/i);
    expect((await sbx.files.list('.')).map((e) => e.name)).toContain('notes.txt');
    const pty = await sbx.pty.create({ cols: 80, rows: 24, onData: () => {}, timeoutMs: 0 });
    expect((await sbx.commands.list()).find((p) => p.pid === pty.pid)?.args).toEqual(['-i', '-l']);
    expect((await sbx.commands.list()).find((p) => p.pid === pty.pid)?.cmd).toBe('/bin/bash');
    await sbx.pty.kill(pty.pid);
  });
});

/** A request to the daemon's TCP port with this Host (Node resolves no *.localhost, and fetch sets no Host): status and body. */
function viaHost(
  host: string,
  options: { method?: string; path?: string; body?: string; headers?: Record<string, string> } = {},
): Promise<{ status: number; body: string }> {
  const url = new URL(daemon.url!);
  return new Promise((resolve, reject) => {
    const req = httpRequest(
      { host: url.hostname, port: url.port, method: options.method ?? 'GET', path: options.path ?? '/', headers: { ...options.headers, host } },
      (res) => {
        let body = '';
        res.setEncoding('utf8');
        res.on('data', (d: string) => (body += d));
        res.on('end', () => resolve({ status: res.statusCode!, body }));
        res.on('error', reject);
      },
    );
    req.on('error', reject);
    req.end(options.body);
  });
}

describe('E2B ports (getHost through the router)', () => {
  let sbx: Sandbox;
  let port: string;
  beforeAll(async () => {
    port = new URL(daemon.url!).port;
    sbx = await Sandbox.create('base');
    // Busybox's httpd: a page, and a CGI script that answers with the request's body.
    await sbx.files.write([
      { path: '/tmp/www/index.html', data: 'hello from the guest\n' },
      { path: '/tmp/www/cgi-bin/echo', data: '#!/bin/sh\nprintf "Content-Type: text/plain\\r\\n\\r\\n"\nhead -c "$CONTENT_LENGTH"\n' },
      // An upgrade's far end: reads the request's head, answers 101, then echoes the bytes.
      {
        path: '/tmp/upgrade.sh',
        data: '#!/bin/sh\nwhile read -r line && [ "${#line}" -gt 1 ]; do :; done\nprintf "HTTP/1.1 101 Switching Protocols\\r\\nUpgrade: echo\\r\\nConnection: Upgrade\\r\\n\\r\\n"\nexec cat\n',
      },
    ]);
    await sbx.commands.run('chmod +x /tmp/www/cgi-bin/echo /tmp/upgrade.sh');
    await sbx.commands.run('httpd -f -p 8000 -h /tmp/www', { background: true, timeoutMs: 0 });
    await sbx.commands.run('nc -ll -p 9000 -e /tmp/upgrade.sh', { background: true, timeoutMs: 0 });
  });
  afterAll(async () => {
    await sbx?.kill();
  });

  it('getHost(port) is <port>-<id>.localhost:<daemon port>, and the router brings a request there: GET, a POST body both ways', async () => {
    expect(sbx.getHost(8000)).toBe(`8000-${sbx.sandboxId}.localhost:${port}`);
    expect((await sbx.getInfo()).sandboxDomain).toBe(`localhost:${port}`);
    let page = { status: 0, body: '' };
    await eventually(async () => (page = await viaHost(sbx.getHost(8000))).status === 200, 20_000, 'httpd answering through the router');
    expect(page.body).toBe('hello from the guest\n');
    // The Host is case-insensitive, and the published port is reused (one binding for the guest port).
    expect((await viaHost(sbx.getHost(8000).toUpperCase())).body).toBe('hello from the guest\n');
    const body = Array.from({ length: 2000 }, (_, i) => `line ${i}\n`).join('');
    const echoed = await viaHost(sbx.getHost(8000), { method: 'POST', path: '/cgi-bin/echo', body, headers: { 'content-type': 'text/plain' } });
    expect(echoed).toEqual({ status: 200, body });
    const roost = await rest.get(sbx.sandboxId);
    expect(roost.info.network?.ports.filter((p) => p.guestPort === 8000)).toHaveLength(1);
    // Port 49983 is envd: the daemon's own E2B face.
    expect((await viaHost(sbx.getHost(49983), { path: '/health' })).status).toBe(204);
  });

  it('a port nothing listens on and an unknown sandbox are a 502 saying so', async () => {
    const none = await viaHost(sbx.getHost(8001));
    expect(none.status).toBe(502);
    expect(none.body).toContain('nothing answered on port 8001');
    const unknown = await viaHost(`8000-000000000000.localhost:${port}`);
    expect(unknown.status).toBe(502);
    expect(unknown.body).toContain('000000000000 was not found');
  });

  it('an Upgrade is tunnelled to the guest port: its 101, then bytes both ways', async () => {
    const url = new URL(daemon.url!);
    const socket = connect(Number(url.port), url.hostname);
    socket.on('error', () => {});
    let seen = '';
    const until = (text: string) =>
      new Promise<void>((resolve, reject) => {
        const check = () => {
          if (seen.includes(text)) {
            socket.off('data', onData);
            resolve();
          }
        };
        const onData = (d: Buffer) => {
          seen += d.toString('latin1');
          check();
        };
        socket.on('data', onData);
        socket.once('close', () => reject(new Error(`closed before '${text}': ${seen}`)));
        check();
      });
    await new Promise<void>((r) => socket.once('connect', r));
    socket.write(`GET /ws HTTP/1.1\r\nHost: ${sbx.getHost(9000)}\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n`);
    await until('\r\n\r\n');
    expect(seen).toMatch(/^HTTP\/1\.1 101 Switching Protocols\r\n/);
    socket.write('ping 1\n');
    await until('ping 1\n');
    socket.write('ping 2\n');
    await until('ping 2\n');
    expect(seen.slice(seen.indexOf('\r\n\r\n') + 4)).toBe('ping 1\nping 2\n');
    socket.destroy();
  });

  it('a sandbox made with allowPublicTraffic: false takes traffic only with its trafficAccessToken', async () => {
    const closed = await Sandbox.create('base', { network: { allowPublicTraffic: false } });
    try {
      expect(closed.trafficAccessToken).toMatch(/^[0-9a-f]{64}$/);
      await closed.files.write('/tmp/www/index.html', 'private\n');
      await closed.commands.run('httpd -f -p 8000 -h /tmp/www', { background: true, timeoutMs: 0 });
      const denied = await viaHost(closed.getHost(8000));
      expect(denied.status).toBe(403);
      expect(denied.body).toContain('e2b-traffic-access-token');
      let ok = { status: 0, body: '' };
      const headers = { 'e2b-traffic-access-token': closed.trafficAccessToken! };
      await eventually(async () => (ok = await viaHost(closed.getHost(8000), { headers })).status === 200, 20_000, 'httpd answering');
      expect(ok.body).toBe('private\n');
      // A public sandbox's hosts ignore the header; a wrong token opens nothing.
      expect((await viaHost(sbx.getHost(8000), { headers })).status).toBe(200);
      expect((await viaHost(closed.getHost(8000), { headers: { 'e2b-traffic-access-token': 'x'.repeat(64) } })).status).toBe(403);
    } finally {
      await closed.kill();
    }
  });
});
