import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { isRoostError, type RoostEvent, type RuntimeApi, type SandboxApi } from '@roost/api';
import { RoostClient } from '@roost/client';
import { Runtime } from '@roost/core';
import { serve, type ServeHandle } from '@roost/server';
import { Header, Parser, type ReadEntry } from 'tar';
import { eventually, TestHome } from './helpers.js';

/*
 * One body of tests, run twice: against a real daemon through RoostClient,
 * and against the embedded Runtime. Both are written to RuntimeApi only,
 * which is the claim: code moves between the faces unchanged.
 */

interface Face {
  runtime: RuntimeApi;
  /** A sandbox shared by the tests of this face (boots cost about a second each). */
  shared: SandboxApi;
}

const remoteHome = new TestHome();
const embeddedHome = new TestHome();
let daemon: ServeHandle | undefined;
let client: RoostClient | undefined;
let embedded: Runtime | undefined;
const faces: Record<'remote' | 'embedded', Face | undefined> = { remote: undefined, embedded: undefined };

beforeAll(async () => {
  daemon = await serve({ home: remoteHome.root });
  client = new RoostClient({ home: remoteHome.root });
  embedded = await Runtime.open({ home: embeddedHome.root, owner: 'client.test.ts' });
  const [r, e] = await Promise.all([
    client.create({ labels: { suite: 'client', face: 'remote' }, timeoutMs: 60_000 }),
    embedded.create({ labels: { suite: 'client', face: 'embedded' }, timeoutMs: 60_000 }),
  ]);
  faces.remote = { runtime: client, shared: r };
  faces.embedded = { runtime: embedded, shared: e };
});

afterAll(async () => {
  await client?.close();
  await daemon?.close();
  await embedded?.close();
  await remoteHome.cleanup();
  await embeddedHome.cleanup();
});

async function* chunks(...parts: string[]): AsyncIterable<string> {
  for (const p of parts) {
    await new Promise((r) => setTimeout(r, 20));
    yield p;
  }
}

/** Everything an async iterable yields, as one buffer (and how many chunks it came in). */
async function drain(source: AsyncIterable<Uint8Array>): Promise<{ bytes: Buffer; chunks: number }> {
  const parts: Buffer[] = [];
  for await (const c of source) parts.push(Buffer.from(c));
  return { bytes: Buffer.concat(parts), chunks: parts.length };
}

async function* pieces(buf: Buffer, size: number): AsyncIterable<Uint8Array> {
  for (let off = 0; off < buf.length; off += size) yield buf.subarray(off, off + size);
}

/** The entry names (and types) of a tar. */
async function tarEntries(tar: Buffer): Promise<string[]> {
  const names: string[] = [];
  const parser = new Parser({
    strict: true,
    onReadEntry: (e: ReadEntry) => (names.push(`${e.type} ${e.path}${e.linkpath ? ` -> ${e.linkpath}` : ''}`), e.resume()),
  });
  await new Promise<void>((resolve, reject) => {
    parser.on('end', () => resolve());
    parser.on('error', reject);
    parser.end(tar);
  });
  return names.sort();
}

/** A one-entry tar with any name (a hostile one, too). */
function oneEntryTar(path: string, data: string): Buffer {
  const block = Buffer.alloc(512);
  new Header({ path, type: 'File', mode: 0o644, size: data.length, mtime: new Date(), uid: 0, gid: 0 }).encode(block, 0);
  const body = Buffer.alloc(Math.ceil(data.length / 512) * 512);
  body.write(data);
  return Buffer.concat([block, body, Buffer.alloc(1024)]);
}

for (const name of ['remote', 'embedded'] as const) {
  describe(`the RuntimeApi contract (${name})`, () => {
    const face = () => faces[name]!;

    it('runs commands: output, exit codes as results, env, cwd, argv without a shell', async () => {
      const { shared } = face();
      const r = await shared.commands.run('echo out; echo err >&2; exit 7');
      expect(r).toEqual({ exitCode: 7, signal: null, stdout: 'out\n', stderr: 'err\n' });
      const env = await shared.commands.run('echo "$A|$(pwd)"', { env: { A: 'a b' }, cwd: '/tmp' });
      expect(env.stdout).toBe('a b|/tmp\n');
      const argv = await shared.commands.run('/bin/echo', { args: ['$HOME', 'x y'] });
      expect(argv.stdout).toBe('$HOME x y\n');
      let streamed = '';
      await shared.commands.run('echo via-callback', { onStdout: (t) => void (streamed += t) });
      expect(streamed).toBe('via-callback\n');
    });

    it('streams output of a started command, bytes exactly, in order', async () => {
      const { shared } = face();
      const handle = await shared.commands.start(['sh', '-c', 'for i in 1 2 3; do echo $i; sleep 0.1; done; printf "\\377\\000\\001"']);
      expect(handle.pid).toBeGreaterThan(0);
      expect(typeof handle.id).toBe('string');
      const got: Buffer[] = [];
      for await (const c of handle.stdout) got.push(Buffer.from(c));
      expect(got.length).toBeGreaterThan(1);
      expect(Buffer.concat(got)).toEqual(Buffer.concat([Buffer.from('1\n2\n3\n'), Buffer.from([0xff, 0, 1])]));
      const r = await handle.wait();
      expect(r.exitCode).toBe(0);
      expect(r.stdout).toBe(''); // read through the iterator
      expect(handle.exited).toBe(true);
    });

    it('lets output be read after the command has exited', async () => {
      const { shared } = face();
      const handle = await shared.commands.start('echo late; echo err >&2');
      await new Promise((r) => setTimeout(r, 300));
      expect(handle.exited).toBe(true);
      const got: Buffer[] = [];
      for await (const c of handle.stdout) got.push(Buffer.from(c));
      expect(Buffer.concat(got).toString()).toBe('late\n');
      expect(await handle.wait()).toMatchObject({ exitCode: 0, stdout: '', stderr: 'err\n' });
    });

    it('takes stdin: interactive writes, a string, an async iterable', async () => {
      const { shared } = face();
      const handle = await shared.commands.start('cat; echo end', { stdin: true });
      await handle.write('one ');
      await handle.write(new Uint8Array(Buffer.from('two ')));
      handle.closeStdin();
      expect((await handle.wait()).stdout).toBe('one two end\n');
      expect((await shared.commands.run('wc -c', { stdin: 'x'.repeat(100_000) })).stdout.trim()).toBe('100000');
      expect((await shared.commands.run('cat', { stdin: chunks('a', 'b', 'c') })).stdout).toBe('abc');
    });

    it('runs on a terminal and resizes it', async () => {
      const { shared } = face();
      const handle = await shared.commands.start('tty; sleep 0.3; stty size', { pty: { rows: 30, cols: 100 } });
      handle.resize({ rows: 40, cols: 120 });
      const r = await handle.wait();
      expect(r.stdout).toMatch(/^\/dev\/pts\/\d+\r?\n40 120/);
    });

    it('signals, aborts and times out commands, and the sandbox goes on', async () => {
      const { shared } = face();
      const killed = await shared.commands.start('sleep 30');
      killed.kill('SIGTERM');
      expect(await killed.wait()).toMatchObject({ exitCode: 143, signal: 'SIGTERM' });

      const ac = new AbortController();
      const started = Date.now();
      const aborted = await shared.commands.start('echo started; sleep 30', { signal: ac.signal });
      setTimeout(() => ac.abort(), 200);
      const err = await aborted.wait().catch((e: unknown) => e);
      expect(isRoostError(err, 'ABORTED')).toBe(true);
      expect(Date.now() - started).toBeLessThan(10_000);
      const refused = await shared.commands.run('true', { signal: ac.signal }).catch((e: unknown) => e);
      expect(isRoostError(refused, 'ABORTED')).toBe(true);

      const timedOut = await shared.commands.run('echo before; sleep 30', { timeoutMs: 300 }).catch((e: unknown) => e);
      expect(isRoostError(timedOut, 'TIMEOUT')).toBe(true);

      // The aborted and killed processes are gone; the sandbox still runs commands.
      await eventually(async () => (await shared.commands.run('ps -o args | grep -c "^sleep 30"')).stdout.trim() === '0', 5_000, 'sleeps killed');
      expect((await shared.commands.run('echo ok')).stdout).toBe('ok\n');
    });

    it('finds sandboxes by id and filters; unknown ids are typed NOT_FOUND errors', async () => {
      const { runtime, shared } = face();
      const again = await runtime.get(shared.id.slice(0, 6));
      expect(again.id).toBe(shared.id);
      expect(again.info).toMatchObject({ id: shared.id, status: 'running', labels: { suite: 'client', face: name } });
      expect((await runtime.list({ labels: [`face=${name}`] })).map((s) => s.id)).toEqual([shared.id]);
      expect(await runtime.list({ labels: ['face=nobody'] })).toEqual([]);
      expect((await runtime.list({ status: 'running', labels: ['suite'] })).map((s) => s.id)).toContain(shared.id);
      expect(await runtime.list({ status: ['stopped', 'failed'], labels: [`face=${name}`] })).toEqual([]);
      const err = await runtime.get('000000000000').catch((e: unknown) => e);
      expect(isRoostError(err, 'NOT_FOUND')).toBe(true);
      const bad = await runtime.get('not-an-id!').catch((e: unknown) => e);
      expect(isRoostError(bad, 'INVALID_ARGUMENT')).toBe(true);
    });

    it('reports events: the shared sandbox was created and started', async () => {
      const { runtime, shared } = face();
      const ac = new AbortController();
      const seen: RoostEvent[] = [];
      for await (const e of runtime.events({ after: 0, signal: ac.signal })) {
        if (e.sandboxId === shared.id) seen.push(e);
        if (seen.some((s) => s.type === 'sandbox.started')) ac.abort();
      }
      expect(seen.map((e) => e.type).slice(0, 2)).toEqual(['sandbox.created', 'sandbox.started']);
      expect(seen[0]!.id).toBeLessThan(seen[1]!.id);
    });

    it('files: reads and writes text, bytes and streams; stat and exists', async () => {
      const { shared } = face();
      const f = shared.files;
      const dir = `/tmp/files-${name}`;
      const written = await f.write(`${dir}/deep/a.txt`, 'héllo\n');
      expect(written).toMatchObject({ path: `${dir}/deep/a.txt`, name: 'a.txt', type: 'file', size: 7, mode: 0o644, uid: 0, gid: 0, created: true });
      expect((await f.write(`${dir}/deep/a.txt`, 'héllo\n')).created).toBe(false);
      expect(Date.parse(written.mtime)).toBeGreaterThan(Date.now() - 600_000);
      expect(await f.read(`${dir}/deep/a.txt`)).toBe('héllo\n');
      const bytes = Buffer.from([0, 255, 1, 2, 0x80]);
      await f.write(`${dir}/b.bin`, new Uint8Array(bytes), { mode: 0o600 });
      expect(Buffer.from(await f.read(`${dir}/b.bin`, { format: 'bytes' }))).toEqual(bytes);
      expect((await shared.commands.run(`stat -c '%a %s %u' ${dir}/b.bin`)).stdout).toBe('600 5 0\n');

      // A 3 MiB file from an async iterable, read back as a stream (several chunks, bytes exact).
      const big = Buffer.alloc(3 << 20);
      for (let i = 0; i < big.length; i += 4) big.writeUInt32LE((i * 2654435761) >>> 0, i);
      const info = await f.write(`${dir}/big`, pieces(big, 100_000));
      expect(info.size).toBe(big.length);
      const back = await drain(await f.read(`${dir}/big`, { format: 'stream' }));
      expect(back.chunks).toBeGreaterThan(1);
      expect(back.bytes.equals(big)).toBe(true);
      await f.write(`${dir}/s.txt`, chunks('one ', 'two'));
      expect(await f.read(`${dir}/s.txt`)).toBe('one two');
      expect(await f.read(`${dir}/empty`, {}).catch((e: unknown) => (e as { code?: string }).code)).toBe('NOT_FOUND');
      await f.write(`${dir}/empty`, '');
      expect(await f.read(`${dir}/empty`)).toBe('');
      expect((await drain(await f.read(`${dir}/empty`, { format: 'stream' }))).bytes.length).toBe(0);
      // Breaking out of a stream early ends the read; the sandbox goes on.
      for await (const chunk of await f.read(`${dir}/big`, { format: 'stream' })) {
        expect(chunk.length).toBeGreaterThan(0);
        break;
      }
      // So does its signal, with ABORTED.
      const ac0 = new AbortController();
      const reading = await f.read(`${dir}/big`, { format: 'stream', signal: ac0.signal });
      let seen = 0;
      const stopped = await (async () => {
        for await (const chunk of reading) {
          seen += chunk.length;
          ac0.abort();
        }
      })().catch((e: unknown) => e);
      expect(isRoostError(stopped, 'ABORTED')).toBe(true);
      expect(seen).toBeLessThan(big.length);

      expect(await f.stat(`${dir}/b.bin`)).toMatchObject({ type: 'file', size: 5, mode: 0o600 });
      expect(await f.exists(`${dir}/b.bin`)).toBe(true);
      expect(await f.exists(`${dir}/nothing`)).toBe(false);
      expect(await f.exists(`${dir}/b.bin/under`)).toBe(false);

      // noReplace, and a stream that fails: the old file stays.
      const dup = await f.write(`${dir}/deep/a.txt`, 'x', { noReplace: true }).catch((e: unknown) => e);
      expect(isRoostError(dup, 'ALREADY_EXISTS')).toBe(true);
      expect((dup as { details: object }).details).toMatchObject({ errno: 'EEXIST' });
      async function* failing(): AsyncIterable<string> {
        yield 'partial';
        await new Promise((r) => setTimeout(r, 50));
        throw new Error('source broke');
      }
      const broke = await f.write(`${dir}/deep/a.txt`, failing()).catch((e: unknown) => e);
      expect(isRoostError(broke, 'ABORTED')).toBe(true);
      expect((broke as Error).message).toMatch(/source broke/);
      const ac = new AbortController();
      async function* slow(): AsyncIterable<string> {
        yield 'partial';
        ac.abort();
        await new Promise((r) => setTimeout(r, 200));
        yield 'more';
      }
      const aborted = await f.write(`${dir}/deep/a.txt`, slow(), { signal: ac.signal }).catch((e: unknown) => e);
      expect(isRoostError(aborted, 'ABORTED')).toBe(true);
      expect(await f.read(`${dir}/deep/a.txt`)).toBe('héllo\n');
      expect((await shared.commands.run(`ls -a ${dir}/deep`)).stdout).toBe('.\n..\na.txt\n');
    });

    it('files: lists, makes directories, renames and removes; symlinks are not followed', async () => {
      const { shared } = face();
      const f = shared.files;
      const dir = `/tmp/tree-${name}`;
      expect(await f.makeDir(`${dir}/x/y`, { mode: 0o750 })).toBe(true);
      expect(await f.makeDir(`${dir}/x/y`)).toBe(false);
      expect((await f.stat(`${dir}/x/y`)).mode).toBe(0o750);
      await f.write(`${dir}/x/y/f`, 'f');
      await shared.commands.run(`ln -s /etc ${dir}/link`);
      const top = await f.list(dir);
      expect(top.map((e) => [e.name, e.type])).toEqual([
        ['link', 'symlink'],
        ['x', 'dir'],
      ]);
      expect(top[0]).toMatchObject({ path: `${dir}/link`, symlinkTarget: '/etc' });
      expect((await f.list(dir, { depth: 3 })).map((e) => e.path)).toEqual([`${dir}/link`, `${dir}/x`, `${dir}/x/y`, `${dir}/x/y/f`]);
      expect((await f.stat(`${dir}/link`)).type).toBe('symlink');
      expect((await f.stat(`${dir}/link`, { follow: true })).type).toBe('dir');

      expect(await f.rename(`${dir}/x/y/f`, `${dir}/g`)).toMatchObject({ path: `${dir}/g`, name: 'g', type: 'file', size: 1 });
      await f.write(`${dir}/h`, 'h');
      const taken = await f.rename(`${dir}/g`, `${dir}/h`, { noReplace: true }).catch((e: unknown) => e);
      expect(isRoostError(taken, 'ALREADY_EXISTS')).toBe(true);
      await f.rename(`${dir}/g`, `${dir}/h`);
      expect(await f.read(`${dir}/h`)).toBe('f');

      const notEmpty = await f.remove(`${dir}/x`, { recursive: false }).catch((e: unknown) => e);
      expect(isRoostError(notEmpty, 'INVALID_STATE')).toBe(true);
      expect((notEmpty as { details: object }).details).toMatchObject({ errno: 'ENOTEMPTY' });
      await f.remove(`${dir}/link`);
      expect(await f.exists('/etc/passwd')).toBe(true);
      await f.remove(dir);
      expect(await f.exists(dir)).toBe(false);
      const gone = await f.remove(dir).catch((e: unknown) => e);
      expect(isRoostError(gone, 'NOT_FOUND')).toBe(true);
    });

    it("files: errors carry their code, errno and path; the user's rights apply", async () => {
      const { shared } = face();
      const f = shared.files;
      const missing = await f.read('/nonexistent/file').catch((e: unknown) => e);
      expect(isRoostError(missing, 'NOT_FOUND')).toBe(true);
      expect((missing as { details: object }).details).toMatchObject({ errno: 'ENOENT', path: '/nonexistent/file' });
      const missingStream = await f.read('/nonexistent/file', { format: 'stream' }).catch((e: unknown) => e);
      expect(isRoostError(missingStream, 'NOT_FOUND')).toBe(true);
      const dir = await f.read('/etc').catch((e: unknown) => e);
      expect(isRoostError(dir, 'INVALID_STATE')).toBe(true);
      expect((dir as { details: object }).details).toMatchObject({ errno: 'EISDIR' });
      expect(isRoostError(await f.stat('').catch((e: unknown) => e), 'INVALID_ARGUMENT')).toBe(true);

      await f.write('/tmp/secret', 'root only', { mode: 0o600 });
      const denied = await f.read('/tmp/secret', { user: 'nobody' }).catch((e: unknown) => e);
      expect(isRoostError(denied, 'PERMISSION_DENIED')).toBe(true);
      expect((denied as { details: object }).details).toMatchObject({ errno: 'EACCES' });
      const deniedWrite = await f.write('/root/nope', 'x', { user: 65534 }).catch((e: unknown) => e);
      expect(isRoostError(deniedWrite, 'PERMISSION_DENIED')).toBe(true);
      // A refused write of a long stream fails without sending all of it.
      let sent = 0;
      async function* endless(): AsyncIterable<Uint8Array> {
        const mib = new Uint8Array(1 << 20);
        for (let i = 0; i < 4096; i++) {
          sent += mib.length;
          yield mib;
        }
      }
      const deniedStream = await f.write('/root/nope', endless(), { user: 'nobody' }).catch((e: unknown) => e);
      expect(isRoostError(deniedStream, 'PERMISSION_DENIED')).toBe(true);
      expect(sent).toBeLessThan(256 << 20);
      expect((await f.write('/tmp/by-nobody', 'x', { user: 'nobody' })).uid).toBe(65534);
    });

    it('files: watches a directory until closed, or until it is removed', async () => {
      const { shared } = face();
      const f = shared.files;
      const dir = `/tmp/watch-${name}`;
      await f.makeDir(`${dir}/w`);
      const watch = await f.watch(`${dir}/w`, { recursive: true });
      await shared.commands.run(`echo hi > ${dir}/w/a; mkdir ${dir}/w/sub; sleep 0.2; echo x > ${dir}/w/sub/b; mv ${dir}/w/a ${dir}/w/c; rm ${dir}/w/c`);
      const seen: string[] = [];
      for await (const ev of watch) {
        seen.push(`${ev.type} ${ev.path.slice(dir.length)}${ev.oldPath ? ` from ${ev.oldPath.slice(dir.length)}` : ''}${ev.isDir ? ' dir' : ''}`);
        if (ev.type === 'remove' && ev.path.endsWith('/c')) break;
      }
      expect(seen).toEqual(
        expect.arrayContaining(['create /w/a', 'write /w/a', 'create /w/sub dir', 'create /w/sub/b', 'rename /w/c from /w/a', 'remove /w/c']),
      );
      await watch.close();

      const ended = await f.watch(`${dir}/w`);
      const events: string[] = [];
      const iterating = (async () => {
        for await (const ev of ended) events.push(`${ev.type} ${ev.path.slice(dir.length)}`);
      })();
      await f.remove(`${dir}/w`);
      await iterating;
      expect(events).toContain('remove /w');

      const closed = await f.watch(dir);
      setTimeout(() => void closed.close(), 200);
      for await (const ev of closed) expect(ev).toBeDefined();
      const missing = await f.watch(`${dir}/nothing`).catch((e: unknown) => e);
      expect(isRoostError(missing, 'NOT_FOUND')).toBe(true);
    });

    it('files: archives a directory and extracts it again', async () => {
      const { shared } = face();
      const f = shared.files;
      const dir = `/tmp/archive-${name}`;
      await shared.commands.run(
        `mkdir -p ${dir}/src/sub && echo one > ${dir}/src/a && printf two > ${dir}/src/sub/b && chmod 751 ${dir}/src/sub && ` +
          `ln -s a ${dir}/src/l && ln ${dir}/src/a ${dir}/src/hard && chown 1234:2345 ${dir}/src/sub/b && touch -d @1500000000 ${dir}/src/a`,
      );
      const tar = await drain(await f.readArchive(`${dir}/src`));
      expect(await tarEntries(tar.bytes)).toEqual(
        ['Directory src/', 'Directory src/sub/', 'File src/a', 'File src/sub/b', 'Link src/hard -> src/a', 'SymbolicLink src/l -> a'].sort(),
      );
      await f.writeArchive(`${dir}/copy`, pieces(tar.bytes, 3000));
      await f.writeArchive(`${dir}/copy2`, new Uint8Array(tar.bytes));
      for (const copy of ['copy', 'copy2']) {
        const r = await shared.commands.run(
          `cd ${dir}/${copy}/src && find . | sort && cat a sub/b && stat -c '%n %a %u:%g' sub sub/b && stat -c %Y a && readlink l && stat -c %h a`,
        );
        expect(r.stdout).toBe('.\n./a\n./hard\n./l\n./sub\n./sub/b\none\ntwo' + 'sub 751 0:0\nsub/b 644 1234:2345\n1500000000\na\n2\n');
      }
      const file = await drain(await f.readArchive(`${dir}/src/sub/b`));
      expect(await tarEntries(file.bytes)).toEqual(['File b']);

      const hostile = await f.writeArchive(`${dir}/bad`, new Uint8Array(oneEntryTar('../escape', 'x'))).catch((e: unknown) => e);
      expect(isRoostError(hostile, 'INVALID_ARGUMENT')).toBe(true);
      expect((hostile as { details: object }).details).toMatchObject({ errno: 'EINVAL' });
      expect(await f.exists(`${dir}/escape`)).toBe(false);
      const missing = await f.readArchive(`${dir}/nothing`).catch((e: unknown) => e);
      expect(isRoostError(missing, 'NOT_FOUND')).toBe(true);

      // Unreadable below the archived directory: the archive fails with EACCES, before or after its first bytes.
      await shared.commands.run(
        `mkdir -p ${dir}/mixed && head -c 400000 /dev/zero > ${dir}/mixed/a && echo s > ${dir}/mixed/z && chmod 600 ${dir}/mixed/z && chmod 755 ${dir}/mixed`,
      );
      const failed = await f
        .readArchive(`${dir}/mixed`, { user: 'nobody' })
        .then(drain)
        .catch((e: unknown) => e);
      expect(isRoostError(failed, 'PERMISSION_DENIED')).toBe(true);
      expect((failed as { details: object }).details).toMatchObject({ errno: 'EACCES' });
    });

    it('stops, starts, kills and removes a sandbox; `await using` removes it', async () => {
      const { runtime } = face();
      let id: string;
      {
        await using sb = await runtime.create({ timeoutMs: 60_000, env: { WHO: name } });
        id = sb.id;
        await sb.commands.run('echo kept > /root/file; sync');
        await sb.stop({ timeoutMs: 5_000 });
        expect(sb.status).toBe('stopped');
        expect((await runtime.get(id)).status).toBe('stopped');
        await sb.start({ timeoutMs: 60_000 });
        expect(sb.status).toBe('running');
        expect((await sb.commands.run('cat /root/file; echo $WHO')).stdout).toBe(`kept\n${name}\n`);
        await sb.kill();
        expect(sb.status).not.toBe('running');
        expect((await sb.refresh()).status).toBe(sb.status);
        const dead = await sb.commands.run('true').catch((e: unknown) => e);
        expect(isRoostError(dead, 'INVALID_STATE')).toBe(true);
      }
      const gone = await runtime.get(id).catch((e: unknown) => e);
      expect(isRoostError(gone, 'NOT_FOUND')).toBe(true);
    });
  });
}

describe('RoostClient against the daemon', () => {
  it('answers health, metrics and logs', async () => {
    const c = client!;
    const health = await c.health();
    expect(health).toMatchObject({ status: 'ok', pid: process.pid });
    const metrics = await c.metrics();
    expect(metrics.sandboxes.running).toBeGreaterThanOrEqual(1);
    expect(metrics.execs).toBeGreaterThan(0);
    expect(await c.prometheusMetrics()).toMatch(/^# (HELP|TYPE) /m);
    const logs = await c.logs(faces.remote!.shared.id, { tail: 5 });
    expect(logs.split('\n').length).toBeLessThanOrEqual(6);
    expect(await c.logs(faces.remote!.shared.id)).toContain('roost-agent');
  });

  it('refuses a wrong token with UNAUTHENTICATED and a missing daemon with UNAVAILABLE', async () => {
    await using wrong = new RoostClient({ home: remoteHome.root, token: 'x'.repeat(32) });
    expect(await wrong.list().catch((e: unknown) => (e as { code?: string }).code)).toBe('UNAUTHENTICATED');
    await using nobody = new RoostClient({ host: `${remoteHome.root}/nothing.sock` });
    const err = await nobody.list().catch((e: unknown) => e);
    expect(isRoostError(err, 'UNAVAILABLE')).toBe(true);
    expect((err as Error).message).toMatch(/no daemon listens at unix:\/\/.*nothing\.sock \(start one with `roost serve`\)/);
  });

  it('keeps following events across a daemon restart, and a detached sandbox survives it', async () => {
    const c = client!;
    const detached = await c.create({ detached: true, labels: { suite: 'client', restart: 'yes' }, timeoutMs: 60_000 });
    // Where to follow from: its `sandbox.started` event.
    let after = 0;
    const first = new AbortController();
    for await (const e of c.events({ after: 0, sandboxId: detached.id, signal: first.signal })) {
      after = e.id;
      if (e.type === 'sandbox.started') first.abort();
    }
    const ac = new AbortController();
    const seen: RoostEvent[] = [];
    const following = (async () => {
      for await (const e of c.events({ after, signal: ac.signal, sandboxId: detached.id })) {
        seen.push(e);
        if (e.type === 'exec.exited') ac.abort();
      }
    })();
    await new Promise((r) => setTimeout(r, 300));
    await daemon!.close();
    daemon = await serve({ home: remoteHome.root });
    // The same sandbox, re-attached by the new daemon, runs a command: its events reach the old iterator.
    const again = await c.get(detached.id);
    expect(again.status).toBe('running');
    expect((await again.commands.run('echo after-restart')).stdout).toBe('after-restart\n');
    await Promise.race([following, new Promise((_, rej) => setTimeout(() => rej(new Error('no event after the restart')), 20_000))]);
    expect(seen.map((e) => e.type)).toEqual(expect.arrayContaining(['exec.started', 'exec.exited']));
    await again.remove({ force: true });
    // The restart stopped the non-detached shared sandbox (it dies with its owner).
    const shared = await c.get(faces.remote!.shared.id);
    expect(shared.status).not.toBe('running');
  });
});
