import { closeSync, existsSync, mkdtempSync, openSync, readdirSync, readFileSync, readlinkSync, rmSync, statfsSync, symlinkSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { spawn, type ChildProcess } from 'node:child_process';
import { get as httpGetRequest } from 'node:http';
import { createServer, type AddressInfo } from 'node:net';
import { fileURLToPath } from 'node:url';
import { expect } from 'vitest';
import { isRoostError } from '@roost/api';
import { Runtime, Sandbox, roostHome, type SandboxOptions } from '@roost/core';

/**
 * A throwaway Roost home whose cache links to the real one (so the guest is
 * not rebuilt), and which kills and removes every sandbox a test made in
 * `cleanup()`, even when the test failed.
 */
export class TestHome {
  readonly root: string;
  readonly #sandboxes: Sandbox[] = [];

  constructor() {
    this.root = mkdtempSync(join(tmpdir(), 'roost-test-'));
    symlinkSync(process.env.ROOST_TEST_CACHE ?? join(roostHome(), 'cache'), join(this.root, 'cache'));
  }

  /** Creates a sandbox in this home, tracked for cleanup. */
  async create(options: SandboxOptions = {}): Promise<Sandbox> {
    const sb = await Sandbox.create({ timeoutMs: 60_000, ...options, home: this.root });
    this.#sandboxes.push(sb);
    return sb;
  }

  /** Tracks a sandbox made elsewhere (for example through Sandbox.get). */
  track(sb: Sandbox): Sandbox {
    this.#sandboxes.push(sb);
    return sb;
  }

  /** Environment for child processes (the CLI) that should use this home. */
  get env(): NodeJS.ProcessEnv {
    return { ...process.env, ROOST_HOME: this.root };
  }

  /** This home's runtime in this process (the one the static Sandbox helpers use). */
  runtime(): Promise<Runtime> {
    return Runtime.shared(this.root);
  }

  /**
   * Releases this process's hold on the home (its runtime and lock), so a
   * child process (the CLI, a script) can own it. Sandboxes that are not
   * detached die with the runtime.
   */
  async release(): Promise<void> {
    await (await Runtime.shared(this.root)).close();
  }

  async cleanup(): Promise<void> {
    await Promise.allSettled(this.#sandboxes.map((s) => s.kill()));
    // Sandboxes made by child processes (the CLI) are found through the home.
    const runtime = await Runtime.shared(this.root).catch(() => null);
    if (runtime) {
      for (const info of await runtime.list()) {
        if (info.pid !== null) await (await runtime.get(info.id)).kill().catch(() => {});
      }
      await runtime.close();
    }
    // Whatever still runs here (the home was owned by a daemon, or a test failed half-way) is ended by pid.
    for (const pid of [...qemusOf(this.root), ...fileServersOf(this.root)]) {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        // already gone
      }
    }
    rmSync(this.root, { recursive: true, force: true });
  }
}

/** QEMU processes whose command line names `dir` (a test's own temp home: nothing else can). */
export function qemusOf(dir: string): number[] {
  const pids: number[] = [];
  for (const p of readdirSync('/proc').filter((n) => /^\d+$/.test(n))) {
    try {
      const cmd = readFileSync(`/proc/${p}/cmdline`, 'utf8');
      // QEMU itself, not the jailer that started it (its command line holds QEMU's).
      const comm = readFileSync(`/proc/${p}/comm`, 'utf8');
      if (comm.startsWith('qemu-system') && cmd.includes(`${dir}/`)) pids.push(Number(p));
    } catch {
      // gone
    }
  }
  return pids;
}

/** Volume file servers (packages/core/src/fileserver) of sandboxes under `dir` (of sandbox `id` if given). */
export function fileServersOf(dir: string, id?: string): number[] {
  const pids: number[] = [];
  for (const p of readdirSync('/proc').filter((n) => /^\d+$/.test(n))) {
    try {
      const argv = readFileSync(`/proc/${p}/cmdline`, 'utf8').split('\0');
      const config = argv[argv.length - 2] ?? '';
      if (
        argv.some((a) => a.endsWith('/fileserver/main.js')) &&
        config.startsWith(`${dir}/`) &&
        (id === undefined || config.includes(`/${id}/`)) &&
        alive(Number(p))
      )
        pids.push(Number(p));
    } catch {
      // gone
    }
  }
  return pids;
}

/** True if a process with this pid exists (and is not a zombie). */
export function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
  } catch {
    return false;
  }
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return !/\) Z /.test(stat);
  } catch {
    return false;
  }
}

/** `roost serve` processes of a home (a daemon started by the CLI works in the home's directory). */
export function servesOf(dir: string): number[] {
  const pids: number[] = [];
  for (const p of readdirSync('/proc').filter((n) => /^\d+$/.test(n))) {
    try {
      const argv = readFileSync(`/proc/${p}/cmdline`, 'utf8').split('\0');
      if (argv.includes('serve') && readlinkSync(`/proc/${p}/cwd`) === dir && alive(Number(p))) pids.push(Number(p));
    } catch {
      // gone, or not ours to read
    }
  }
  return pids;
}

/** SIGTERM, then SIGKILL if it lingers after 15 s: only for pids a test learned as its own daemons. */
export async function endProcess(pid: number): Promise<void> {
  if (!alive(pid)) return;
  process.kill(pid, 'SIGTERM');
  try {
    await eventually(() => !alive(pid), 15_000, `daemon ${pid} gone`);
  } catch {
    process.kill(pid, 'SIGKILL');
  }
}

/** The line a CLI command writes when it started a daemon for the home (`ensureDaemon`). */
export const DAEMON_STARTED = /^roost: started a daemon for (\S+) \(pid (\d+), log (\S+)\); stop it with roost serve stop$/m;

/** The pid of the daemon a CLI run's stderr says it started, or null. */
export function startedDaemonPid(stderr: string): number | null {
  const m = DAEMON_STARTED.exec(stderr);
  return m ? Number(m[2]) : null;
}

/** Polls until `check` is true or `timeoutMs` passes. */
export async function eventually(check: () => boolean | Promise<boolean>, timeoutMs = 5_000, what = 'condition'): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (Date.now() < end) {
    if (await check()) return;
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`${what} not reached within ${timeoutMs} ms`);
}

/** The `roost` command of this checkout. */
export const ROOST_BIN = fileURLToPath(new URL('../packages/cli/bin/roost.js', import.meta.url));

/** How a CLI run ended. */
export interface CliResult {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** Runs the CLI to its end with `env` (a TestHome's), feeding `stdin` (default: none). */
export function runRoost(args: string[], options: { env: NodeJS.ProcessEnv; stdin?: string; cwd?: string }): Promise<CliResult> {
  return new Promise((resolve) => {
    const p = spawn(process.execPath, [ROOST_BIN, ...args], {
      env: options.env,
      stdio: ['pipe', 'pipe', 'pipe'],
      ...(options.cwd ? { cwd: options.cwd } : {}),
    });
    let stdout = '';
    let stderr = '';
    p.stdout.on('data', (c: Buffer) => (stdout += c.toString()));
    p.stderr.on('data', (c: Buffer) => (stderr += c.toString()));
    p.stdin.on('error', () => {}); // a CLI that exits without reading its stdin
    p.stdin.end(options.stdin ?? '');
    p.on('close', (code) => resolve({ code, stdout, stderr }));
  });
}

/** Runs a shell command line under script(1), which gives it a real terminal on stdin and stdout; stderr is merged into stdout. */
export function runInTerminal(cmd: string, env: NodeJS.ProcessEnv): Promise<CliResult> {
  return new Promise((resolve) => {
    const p = spawn('script', ['-qfec', cmd, '/dev/null'], { env });
    let stdout = '';
    p.stdout.on('data', (c: Buffer) => (stdout += c.toString()));
    p.on('close', (code) => resolve({ code, stdout, stderr: '' }));
  });
}

/** A port of 127.0.0.1 free a moment ago. */
export async function freePort(): Promise<number> {
  const s = createServer();
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', r));
  const port = (s.address() as AddressInfo).port;
  await new Promise((r) => s.close(r));
  return port;
}

/** Expects `p` (a promise, or a function that throws or rejects) to fail with a RoostError of `code` whose message matches `message`; returns the error. */
export async function expectCode(p: Promise<unknown> | (() => unknown), code: string, message?: RegExp): Promise<Error> {
  const e = await (typeof p === 'function' ? Promise.resolve().then(p) : p).then(
    () => null,
    (err: unknown) => err,
  );
  expect(isRoostError(e), `expected a RoostError ${code}, got ${String(e)}`).toBe(true);
  expect((e as { code: string }).code).toBe(code);
  if (message) expect((e as Error).message).toMatch(message);
  return e as Error;
}

/** GET http://127.0.0.1:port/ on a connection of its own: the body of a 200, else null (any other status, a refusal, a timeout). */
export function httpGet(port: number, timeoutMs = 10_000): Promise<string | null> {
  return new Promise((resolve) => {
    const req = httpGetRequest({ host: '127.0.0.1', port, path: '/', agent: false, timeout: timeoutMs }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (c: string) => (body += c));
      res.on('end', () => resolve(res.statusCode === 200 ? body : null));
      res.on('error', () => resolve(null));
    });
    req.on('timeout', () => req.destroy());
    req.on('error', () => resolve(null));
  });
}

/**
 * Starts `roost serve` for `home` as a child process (added to `started` at
 * once, so the test can end it by its handle even if this fails) and
 * resolves once `answering()` says it answers; a daemon that exits first
 * fails with its stderr.
 */
export async function startServeProcess(home: TestHome, answering: () => Promise<boolean>, started: ChildProcess[]): Promise<ChildProcess> {
  const d = spawn(process.execPath, [ROOST_BIN, 'serve'], { env: home.env, stdio: ['ignore', 'ignore', 'pipe'] });
  started.push(d);
  let stderr = '';
  d.stderr!.on('data', (c: Buffer) => (stderr += c.toString()));
  await eventually(
    async () => {
      if (d.exitCode !== null) throw new Error(`roost serve exited ${d.exitCode}: ${stderr}`);
      return existsSync(join(home.root, 'api-token')) && (await answering());
    },
    20_000,
    'the daemon answering',
  );
  return d;
}

/** Fills the filesystem mounted at `mount` (writing to `file` on it) but for about `leaveBytes` (tmpfs counts whole pages). */
export function fillFilesystem(mount: string, file: string, leaveBytes = 0): void {
  const fd = openSync(file, 'a');
  try {
    for (const chunk of [2 ** 20, 64 * 1024, 4096]) {
      const buf = Buffer.alloc(chunk, 1);
      for (;;) {
        const st = statfsSync(mount);
        if (st.bavail * st.bsize - chunk < leaveBytes) break;
        try {
          writeSync(fd, buf);
        } catch (e) {
          if ((e as NodeJS.ErrnoException).code !== 'ENOSPC') throw e;
          break;
        }
      }
    }
  } finally {
    closeSync(fd);
  }
}
