import { spawn } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { ImageInfoBody, RoostEvent, SandboxInfo } from '@roost/api';
import { serve, type ServeHandle } from '@roost/server';
import { buildBusyboxImage, startRegistry, type TestRegistry } from '@roost/testkit';
import { eventually, ROOST_BIN as roostBin, runInTerminal, runRoost, TestHome, type CliResult } from './helpers.js';

/*
 * The roost CLI against a daemon (`--host unix://...`, or found on the
 * home's socket): the same commands, exit codes and output as embedded.
 */

const home = new TestHome();
let daemon: ServeHandle;
let host: string;
let registry: TestRegistry | undefined;
let work: string | undefined;
let imageRef: string;

/** Runs the CLI against the daemon (`--host`), unless `host: null`. */
function roost(args: string[], options: { stdin?: string; host?: string | null } = {}): Promise<CliResult> {
  const h = options.host === undefined ? host : options.host;
  return runRoost([...(h ? ['--host', h] : []), ...args], { env: home.env, ...(options.stdin !== undefined ? { stdin: options.stdin } : {}) });
}

beforeAll(async () => {
  daemon = await serve({ home: home.root });
  host = `unix://${daemon.socketPath}`;
  work = await mkdtemp(join(tmpdir(), 'roost-cli-remote-'));
  const busybox = await buildBusyboxImage(join(work, 'busybox'), { tag: '1' });
  registry = await startRegistry({ auth: 'none' });
  await registry.push(busybox.dir, 'roost/busybox:1');
  imageRef = `${registry.host}/roost/busybox:1`;
});

afterAll(async () => {
  await daemon?.close();
  await home.cleanup();
  await registry?.stop();
  if (work) await rm(work, { recursive: true, force: true });
});

describe('roost against a daemon', () => {
  it('run passes exit code and output through, and leaves nothing behind', async () => {
    const r = await roost(['run', '--', 'sh', '-c', 'uname -s; echo oops >&2; exit 42']);
    expect(r).toMatchObject({ code: 42, stdout: 'Linux\n', stderr: 'oops\n' });
    const ps = await roost(['ps', '-a', '--json']);
    expect(ps.code).toBe(0);
    expect(JSON.parse(ps.stdout)).toEqual([]);
    const stdin = await roost(['run', '-i', '-e', 'A=1', '-w', '/tmp', '--', 'sh', '-c', 'echo "$A|$(pwd)"; cat'], { stdin: 'from stdin\n' });
    expect(stdin).toMatchObject({ code: 0, stdout: '1|/tmp\nfrom stdin\n' });
    const timeout = await roost(['run', '--timeout', '300', '--', 'sh', '-c', 'echo started; sleep 30']);
    expect(timeout).toMatchObject({ code: 124, stdout: 'started\n' });
    expect(timeout.stderr).toMatch(/timed out/);
  });

  it('run -d, ps filters, exec, inspect, logs, stop, start, kill, rm', async () => {
    const started = await roost(['run', '-d', '-l', 'team=a', '-l', 'tier=web', '--', 'sh', '-c', 'echo main-command-output; sleep 600']);
    expect(started.code).toBe(0);
    const id = started.stdout.trim();
    expect(id).toMatch(/^[0-9a-f]{12}$/);

    const ps = JSON.parse((await roost(['ps', '--json'])).stdout) as SandboxInfo[];
    expect(ps.map((s) => s.id)).toEqual([id]);
    expect(ps[0]).toMatchObject({ status: 'running', detached: true, labels: { team: 'a', tier: 'web' } });
    expect(JSON.parse((await roost(['ps', '--json', '--filter', 'label=team=a', '--filter', 'label=tier'])).stdout)).toHaveLength(1);
    expect(JSON.parse((await roost(['ps', '--json', '--filter', 'label=team=b'])).stdout)).toEqual([]);
    expect(JSON.parse((await roost(['ps', '--json', '--filter', 'status=stopped'])).stdout)).toEqual([]);
    expect((await roost(['ps'])).stdout).toMatch(new RegExp(`^${id}\\s+-\\s+running.*team=a,tier=web$`, 'm'));
    const badFilter = await roost(['ps', '--filter', 'color=red']);
    expect(badFilter.code).toBe(125);
    expect(badFilter.stderr).toMatch(/unknown filter "color"/);

    const ex = await roost(['exec', id.slice(0, 5), '--', 'sh', '-c', 'ps -o args | grep -c "^sleep 600"; exit 4']);
    expect(ex).toMatchObject({ code: 4, stdout: '1\n' });
    const cat = await roost(['exec', '-i', id, '--', 'sh', '-c', 'cat; echo end'], { stdin: 'piped\n' });
    expect(cat).toMatchObject({ code: 0, stdout: 'piped\nend\n' });

    const inspect = JSON.parse((await roost(['inspect', '--json', id])).stdout) as SandboxInfo;
    expect(inspect).toMatchObject({ id, status: 'running', labels: { team: 'a' } });
    expect(inspect.execs).toBeGreaterThanOrEqual(3);
    expect((await roost(['inspect', id])).stdout).toMatch(/^Status:\s+running$/m);

    await eventually(async () => (await roost(['logs', id])).stdout.includes('main-command-output'), 10_000, 'main command output in logs');
    expect((await roost(['logs', '--tail', '1', id])).stdout.trim().split('\n')).toHaveLength(1);

    expect(await roost(['stop', id])).toMatchObject({ code: 0, stdout: `${id}\n` });
    expect((await roost(['ps'])).stdout).not.toContain(id);
    expect((await roost(['ps', '-a'])).stdout).toMatch(new RegExp(`^${id}\\s+-\\s+stopped`, 'm'));
    expect(await roost(['start', id])).toMatchObject({ code: 0, stdout: `${id}\n` });
    expect(await roost(['exec', id, '--', 'true'])).toMatchObject({ code: 0 });
    const running = await roost(['rm', id]);
    expect(running.code).toBe(125);
    expect(running.stderr).toMatch(/running/);
    expect(await roost(['kill', id])).toMatchObject({ code: 0 });
    expect(await roost(['rm', id])).toMatchObject({ code: 0, stdout: `${id}\n` });
    expect((await roost(['ps', '-a'])).stdout).not.toContain(id);
  });

  it('gives an interactive terminal with -t', async () => {
    const id = (await roost(['run', '-d'])).stdout.trim();
    const cmd = `node ${roostBin} --host ${host} exec -t ${id} -- sh -c 'tty; exit 3'`;
    const r = await runInTerminal(cmd, home.env);
    expect(r.stdout).toMatch(/\/dev\/pts\/\d+/);
    expect(r.code).toBe(3);
    expect(await roost(['rm', '-f', id])).toMatchObject({ code: 0 });
  });

  it('finds the daemon on the home socket without --host; errors name what is wrong', async () => {
    // Embedded would fail here: the daemon holds the home's lock.
    const ps = await roost(['ps', '-a', '--json'], { host: null });
    expect(ps.code).toBe(0);
    expect(JSON.parse(ps.stdout)).toEqual([]);
    const missing = await roost(['exec', '000000000000', '--', 'true']);
    expect(missing.code).toBe(125);
    expect(missing.stderr).toMatch(/no sandbox 000000000000/);
    const nobody = await roost(['ps'], { host: `unix://${home.root}/nothing.sock` });
    expect(nobody.code).toBe(125);
    expect(nobody.stderr).toMatch(/no daemon listens at unix:\/\/.*nothing\.sock \(start one with `roost serve`\)/);
  });

  it('pulls, lists, inspects, runs and removes images through the daemon', async () => {
    const pulled = await roost(['pull', imageRef]);
    expect(pulled.code).toBe(0);
    expect(pulled.stdout).toMatch(/: sha256:[0-9a-f]{64}\n$/);
    const images = JSON.parse((await roost(['images', '--json'])).stdout) as ImageInfoBody[];
    expect(images).toHaveLength(1);
    expect(images[0]!.tags).toEqual([imageRef]);
    expect(typeof images[0]!.layers).toBe('number');
    expect((await roost(['images'])).stdout).toMatch(new RegExp(`^${registry!.host}/roost/busybox\\s+1\\s+[0-9a-f]{12}`, 'm'));
    const inspect = JSON.parse((await roost(['image', 'inspect', '--json', imageRef])).stdout) as ImageInfoBody;
    expect(inspect.id).toBe(images[0]!.id);
    const run = await roost(['run', imageRef, '--', 'cat', '/etc/os-release']);
    expect(run).toMatchObject({ code: 0 });
    expect(run.stdout).toMatch(/Roost test image/);
    const rmi = await roost(['rmi', imageRef]);
    expect(rmi.code).toBe(0);
    expect(rmi.stdout).toMatch(/Deleted: sha256:/);
    expect(JSON.parse((await roost(['images', '--json'])).stdout)).toEqual([]);
    // `run` of a missing image pulls it first (progress on stderr), then boots it.
    const fresh = await roost(['run', imageRef, '--', 'echo', 'hi']);
    expect(fresh).toMatchObject({ code: 0, stdout: 'hi\n' });
    expect(fresh.stderr).toMatch(/pull complete|already exists/);
  });

  it('events prints what happened, and follows until Ctrl-C', async () => {
    const p = spawn(process.execPath, [roostBin, '--host', host, 'events', '--since', '0', '--json'], { env: home.env, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    p.stdout.on('data', (c: Buffer) => (stdout += c.toString()));
    const closed = new Promise<number | null>((r) => p.on('close', r));
    await eventually(() => stdout.includes('"sandbox.deleted"'), 10_000, 'events printed');
    const id = (await roost(['run', '-d'])).stdout.trim();
    await eventually(() => stdout.includes(`"sandboxId":"${id}"`), 10_000, 'a live event');
    p.kill('SIGINT');
    expect(await closed).toBe(0);
    const events = stdout
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l) as RoostEvent);
    expect(events.map((e) => e.type)).toEqual(
      expect.arrayContaining(['sandbox.created', 'sandbox.started', 'exec.started', 'exec.exited', 'sandbox.deleted', 'image.pulled']),
    );
    const ids = events.map((e) => e.id);
    expect([...ids].sort((a, b) => a - b)).toEqual(ids);
    const human = await new Promise<string>((resolve) => {
      const h = spawn(process.execPath, [roostBin, '--host', host, 'events', '--since', '0', '--type', 'sandbox.started'], { env: home.env });
      let out = '';
      h.stdout.on('data', (c: Buffer) => {
        out += c.toString();
        if (out.includes(id)) h.kill('SIGINT');
      });
      h.on('close', () => resolve(out));
    });
    expect(human).toMatch(new RegExp(`sandbox\\.started\\s+${id}`));
    expect(human).not.toMatch(/sandbox\.created/);
    expect(await roost(['rm', '-f', id])).toMatchObject({ code: 0 });
  });
});
