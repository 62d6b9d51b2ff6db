import { spawn, type ChildProcess } from 'node:child_process';
import { readdirSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { SandboxInfo } from '@roost/api';
import { RoostClient } from '@roost/client';
import { serve, type ServeHandle } from '@roost/server';
import { alive, eventually, qemusOf, ROOST_BIN, runRoost, TestHome } from './helpers.js';

/*
 * A sandbox that is not detached ends with the client that made it
 * (issue 16, "Lifetimes"): through a daemon, when the client's session ends
 * (its process killed with SIGKILL: after the daemon's grace period); from
 * `roost run`, on SIGINT, SIGTERM, SIGHUP and EPIPE on its output; and after
 * SIGKILL of an embedded `roost run`, when the next runtime opens the home.
 * Real QEMU; one daemon for the daemon cases, one home for the embedded ones.
 */

const GRACE_MS = 1_000;
/** No JavaScript stack frame in what the CLI printed. */
const STACK_FRAME = /^ {4}at /m;

const daemonHome = new TestHome();
const embeddedHome = new TestHome();
let daemon: ServeHandle;
let host: string;
let client: RoostClient;
const children: ChildProcess[] = [];

/** A `roost` child whose output is collected; `ready` resolves when stdout has shown `text`. */
function startRoost(
  args: string[],
  env: NodeJS.ProcessEnv,
): { child: ChildProcess; out: () => string; err: () => string; printed: (text: string) => Promise<void>; exit: Promise<number | null> } {
  const child = spawn(process.execPath, [ROOST_BIN, ...args], { env, stdio: ['ignore', 'pipe', 'pipe'] });
  children.push(child);
  let stdout = '';
  let stderr = '';
  child.stdout!.on('data', (c: Buffer) => (stdout += c.toString()));
  child.stderr!.on('data', (c: Buffer) => (stderr += c.toString()));
  const exit = new Promise<number | null>((r) => child.on('close', (code) => r(code)));
  return {
    child,
    out: () => stdout,
    err: () => stderr,
    printed: (text) => eventually(() => stdout.includes(text), 60_000, `"${text}" from roost ${args.join(' ')} (stderr: ${stderr})`),
    exit,
  };
}

/** `roost ARGS | head -2` through bash: what reached head, the CLI's stderr and its exit status. */
function pipeToHead(args: string[], env: NodeJS.ProcessEnv): Promise<{ stdout: string; stderr: string; status: number }> {
  const quoted = [process.execPath, ROOST_BIN, ...args].map((a) => `'${a}'`).join(' ');
  return new Promise((resolve) => {
    // The CLI's stderr goes to a file descriptor of its own (3), its status to stderr after it ends.
    const p = spawn('bash', ['-c', `${quoted} 2>&3 | head -2; echo "status=\${PIPESTATUS[0]}" >&2`], { env, stdio: ['ignore', 'pipe', 'pipe', 'pipe'] });
    children.push(p);
    let stdout = '';
    let status = '';
    let stderr = '';
    p.stdout!.on('data', (c: Buffer) => (stdout += c.toString()));
    p.stderr!.on('data', (c: Buffer) => (status += c.toString()));
    (p.stdio[3] as NodeJS.ReadableStream).on('data', (c: Buffer) => (stderr += c.toString()));
    p.on('close', () => resolve({ stdout, stderr, status: Number(/status=(\d+)/.exec(status)?.[1] ?? -1) }));
  });
}

async function daemonSandboxes(): Promise<SandboxInfo[]> {
  return client.list();
}

beforeAll(async () => {
  daemon = await serve({ home: daemonHome.root, limits: { sessionGraceMs: GRACE_MS } });
  host = `unix://${daemon.socketPath}`;
  client = new RoostClient({ host, home: daemonHome.root });
});

afterAll(async () => {
  for (const c of children) if (c.exitCode === null && c.signalCode === null && c.pid) process.kill(c.pid, 'SIGKILL');
  await client?.close();
  await daemon?.close();
  await daemonHome.cleanup();
  await embeddedHome.cleanup();
});

describe('through a daemon', () => {
  const env = () => ({ ...daemonHome.env, ROOST_HOST: host });

  it('a roost run killed with SIGKILL: its sandbox and VM are gone after the grace period', async () => {
    const run = startRoost(['run', '--', 'sh', '-c', 'echo ready; exec sleep 100'], env());
    await run.printed('ready');
    const [info] = await daemonSandboxes();
    expect(info).toMatchObject({ status: 'running', detached: false, autoRemove: true });
    const pid = info!.pid!;
    expect(alive(pid)).toBe(true);
    run.child.kill('SIGKILL');
    await run.exit;
    // The daemon waits for a reconnect first.
    await new Promise((r) => setTimeout(r, GRACE_MS / 2));
    expect((await daemonSandboxes()).map((s) => s.id)).toEqual([info!.id]);
    await eventually(async () => (await daemonSandboxes()).length === 0 && !alive(pid), GRACE_MS + 5_000, 'the sandbox removed and its VM dead');
  });

  it('a detached sandbox survives the same', async () => {
    const id = (await runRoost(['run', '-d', '--', 'sleep', '300'], { env: env() })).stdout.trim();
    expect(id).toMatch(/^[0-9a-f]{12}$/);
    // A client with a command in it, killed.
    const exec = startRoost(['exec', id, '--', 'sh', '-c', 'echo ready; exec sleep 100'], env());
    await exec.printed('ready');
    const pid = (await client.get(id)).info.pid!;
    exec.child.kill('SIGKILL');
    await exec.exit;
    await new Promise((r) => setTimeout(r, GRACE_MS + 1_500));
    expect((await daemonSandboxes()).map((s) => [s.id, s.status, s.pid])).toEqual([[id, 'running', pid]]);
    expect(alive(pid)).toBe(true);
    expect((await runRoost(['rm', '-f', id], { env: env() })).code).toBe(0);
  });

  it('roost run | head -2: quiet EPIPE, status 141, nothing left', async () => {
    const r = await pipeToHead(['run', '--', 'seq', '1', '1000000'], env());
    expect(r.stdout).toBe('1\n2\n');
    expect(r.stderr).not.toMatch(STACK_FRAME);
    expect(r.stderr).toBe('');
    expect(r.status).toBe(141);
    expect(await daemonSandboxes()).toEqual([]);
  });

  it('SIGINT to a running roost run goes to the command, which ends, and the sandbox is removed', async () => {
    const run = startRoost(['run', '--', 'sh', '-c', 'echo ready; exec sleep 100'], env());
    await run.printed('ready');
    const [info] = await daemonSandboxes();
    run.child.kill('SIGINT');
    expect(await run.exit).toBe(130);
    expect(run.err()).not.toMatch(STACK_FRAME);
    expect(await daemonSandboxes()).toEqual([]);
    await eventually(() => !alive(info!.pid!), 5_000, 'the VM gone');
  });
});

describe('embedded', () => {
  const env = () => embeddedHome.env;
  const leftovers = () => readdirSync(join(embeddedHome.root, 'sandboxes'));

  it('roost run | head -2: quiet EPIPE, status 141, no record or directory left', async () => {
    const r = await pipeToHead(['run', '--', 'seq', '1', '1000000'], env());
    expect(r).toMatchObject({ stdout: '1\n2\n', stderr: '', status: 141 });
    const ps = await runRoost(['ps', '-a', '--json'], { env: env() });
    expect(JSON.parse(ps.stdout)).toEqual([]);
    expect(leftovers()).toEqual([]);
  });

  it.each([
    ['SIGTERM', 143],
    ['SIGHUP', 129],
  ] as const)('%s to a running roost run removes its sandbox', async (signal, status) => {
    const run = startRoost(['run', '--', 'sh', '-c', 'echo ready; exec sleep 100'], env());
    await run.printed('ready');
    const [vm] = qemusOf(embeddedHome.root);
    run.child.kill(signal);
    expect(await run.exit).toBe(status);
    expect(run.err()).not.toMatch(STACK_FRAME);
    expect(alive(vm!)).toBe(false);
    expect(JSON.parse((await runRoost(['ps', '-a', '--json'], { env: env() })).stdout)).toEqual([]);
    expect(leftovers()).toEqual([]);
  });

  it('roost run killed with SIGKILL: the next roost ps -a finds nothing, and no directory is left', async () => {
    const run = startRoost(['run', '--', 'sh', '-c', 'echo ready; exec sleep 100'], env());
    await run.printed('ready');
    expect(leftovers()).toHaveLength(1);
    run.child.kill('SIGKILL');
    await run.exit;
    // Its VM dies with it (pdeathsig); the record and directory wait for the next runtime.
    await eventually(() => qemusOf(embeddedHome.root).length === 0, 5_000, 'the VM gone');
    const ps = await runRoost(['ps', '-a', '--json'], { env: env() });
    expect(ps.code).toBe(0);
    expect(JSON.parse(ps.stdout)).toEqual([]);
    expect(leftovers()).toEqual([]);
  });
});
