import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AuthenticationError, CommandExitError, FileNotFoundError, Sandbox, SandboxNotFoundError, TimeoutError } from 'e2b';
import { RoostClient } from '@roost/client';
import { serve, type ServeHandle } from '@roost/server';
import { E2bKeys } from '../packages/server/src/e2b/keys.js';
import { eventually, TestHome } from './helpers.js';

/*
 * E2B's own SDK (the `e2b` package from npm, pinned, unchanged) against
 * `roost serve`: its control plane so far (create, getInfo, list with
 * metadata and pages, setTimeout, pause and connect, kill, isRunning),
 * and its envd's process and filesystem services and /files, with real
 * VMs. PTYs, watchDir and signed URLs are not built yet.
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
  });

  it('lists by metadata and state, in pages; pauses, and connect resumes (twice), extending the timeout', async () => {
    const a = await Sandbox.create('base', { metadata: { suite: 'list', n: '1' } });
    const b = await Sandbox.create('base', { metadata: { suite: 'list', n: '2' } });
    const pages: string[][] = [];
    const paginator = Sandbox.list({ query: { metadata: { suite: 'list' } }, limit: 1 });
    while (paginator.hasNext) pages.push((await paginator.nextItems()).map((s) => s.sandboxId));
    expect(pages.flat().sort()).toEqual([a.sandboxId, b.sandboxId].sort());
    expect(pages.every((p) => p.length === 1)).toBe(true);

    for (let round = 0; round < 2; round++) {
      expect(await a.pause()).toBe(true);
      expect(await a.pause()).toBe(false); // already paused: E2B's 409
      const paused = await Sandbox.list({ query: { metadata: { suite: 'list' }, state: ['paused'] } }).nextItems();
      expect(paused.map((s) => s.sandboxId)).toEqual([a.sandboxId]);
      const again = await Sandbox.connect(a.sandboxId, { timeoutMs: 200_000 });
      expect((await again.getInfo()).state).toBe('running');
      expect((await again.getInfo()).endAt.getTime() - Date.now()).toBeGreaterThan(150_000);
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

  it('a command past its timeout is killed, as E2B does', async () => {
    const started = Date.now();
    await expect(sbx.commands.run('sleep 30', { timeoutMs: 500 })).rejects.toBeInstanceOf(TimeoutError);
    expect(Date.now() - started).toBeLessThan(10_000);
    await eventually(async () => !(await sbx.commands.list()).some((p) => p.args.join(' ').includes('sleep 30')), 10_000, 'the command killed');
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
});
