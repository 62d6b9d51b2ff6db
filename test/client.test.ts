import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { isRoostError, type RoostEvent, type RuntimeApi, type SandboxApi } from '@roost/api';
import { RoostClient } from '@roost/client';
import { Runtime } from '@roost/core';
import { serve, type ServeHandle } from '@roost/server';
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
