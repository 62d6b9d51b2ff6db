import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { request } from 'node:http';
import { join } from 'node:path';
import { ROOST_BIN, type CliResult } from './helpers.js';

/*
 * The parts of a fault-injection test: a seeded PRNG (so a failure can be
 * replayed), the daemon and the CLI as child processes that can be killed
 * with SIGKILL at a chosen moment.
 */

/** mulberry32: a small seeded PRNG, uniform in [0, 1). */
export function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** A `roost` child process: its result once it ends, and a way to end it now. */
export interface RoostProcess {
  child: ChildProcess;
  /** Resolves when it has exited (by itself or killed); `signal` is set when a signal ended it. */
  done: Promise<CliResult & { signal: NodeJS.Signals | null; ms: number }>;
  /** SIGKILL now (a no-op once it has exited). */
  kill(): void;
}

/** Starts `roost ARGS` (stdin closed at once unless `stdin` is given). */
export function spawnRoost(args: string[], env: NodeJS.ProcessEnv, stdin = ''): RoostProcess {
  const started = performance.now();
  const child = spawn(process.execPath, [ROOST_BIN, ...args], { env, stdio: ['pipe', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  child.stdout!.on('data', (c: Buffer) => (stdout += c.toString()));
  child.stderr!.on('data', (c: Buffer) => (stderr += c.toString()));
  child.stdin!.on('error', () => {});
  child.stdin!.end(stdin);
  const done = new Promise<CliResult & { signal: NodeJS.Signals | null; ms: number }>((resolve) => {
    child.on('close', (code, signal) => resolve({ code, signal, stdout, stderr, ms: performance.now() - started }));
  });
  return {
    child,
    done,
    kill: () => {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    },
  };
}

/** Runs `roost ARGS` to its end; SIGKILLs it after `timeoutMs` (a hang is a result too). */
export async function roostRun(args: string[], env: NodeJS.ProcessEnv, timeoutMs = 60_000): Promise<CliResult & { signal: NodeJS.Signals | null; ms: number }> {
  const p = spawnRoost(args, env);
  const t = setTimeout(() => p.kill(), timeoutMs);
  try {
    return await p.done;
  } finally {
    clearTimeout(t);
  }
}

/** `roost serve` on a home, as a child process. */
export class DaemonProcess {
  #child: ChildProcess | null = null;
  #stderr = '';

  constructor(
    readonly home: string,
    readonly env: NodeJS.ProcessEnv,
  ) {}

  get socket(): string {
    return join(this.home, 'roost.sock');
  }

  /** `--host` for a CLI that must talk to this daemon (never silently embedded). */
  get host(): string {
    return `unix://${this.socket}`;
  }

  get running(): boolean {
    return this.#child !== null && this.#child.exitCode === null && this.#child.signalCode === null;
  }

  get pid(): number | null {
    return this.running ? (this.#child!.pid ?? null) : null;
  }

  /** Starts it and waits until it answers /v1/health; throws with its stderr if it exits or does not answer in `timeoutMs`. */
  async start(timeoutMs = 30_000): Promise<number> {
    if (this.running) throw new Error('the daemon runs already');
    const started = performance.now();
    const child = spawn(process.execPath, [ROOST_BIN, 'serve'], { env: this.env, stdio: ['ignore', 'ignore', 'pipe'] });
    this.#child = child;
    this.#stderr = '';
    child.stderr!.on('data', (c: Buffer) => (this.#stderr = (this.#stderr + c.toString()).slice(-8_000)));
    const end = Date.now() + timeoutMs;
    while (Date.now() < end) {
      if (!this.running) throw new Error(`roost serve exited (${child.exitCode ?? child.signalCode}): ${this.#stderr}`);
      if (existsSync(join(this.home, 'api-token')) && (await this.#healthy())) return performance.now() - started;
      await new Promise((r) => setTimeout(r, 50));
    }
    throw new Error(`roost serve did not answer within ${timeoutMs} ms: ${this.#stderr}`);
  }

  /** SIGKILL, and wait for the exit. */
  async kill(): Promise<void> {
    const c = this.#child;
    if (!c || !this.running) return;
    const exited = new Promise((r) => c.once('exit', r));
    c.kill('SIGKILL');
    await exited;
  }

  /** SIGTERM (a graceful stop: non-detached sandboxes end, detached ones run on), SIGKILL after `timeoutMs`. */
  async stop(timeoutMs = 20_000): Promise<void> {
    const c = this.#child;
    if (!c || !this.running) return;
    const exited = new Promise((r) => c.once('exit', r));
    c.kill('SIGTERM');
    const t = setTimeout(() => c.kill('SIGKILL'), timeoutMs);
    await exited;
    clearTimeout(t);
  }

  get stderr(): string {
    return this.#stderr;
  }

  #healthy(): Promise<boolean> {
    let token: string;
    try {
      token = readFileSync(join(this.home, 'api-token'), 'utf8').trim();
    } catch {
      return Promise.resolve(false);
    }
    return new Promise((resolve) => {
      const req = request({ socketPath: this.socket, path: '/v1/health', headers: { authorization: `Bearer ${token}` }, timeout: 2_000 }, (res) => {
        res.resume();
        resolve(res.statusCode === 200);
      });
      req.on('error', () => resolve(false));
      req.on('timeout', () => req.destroy());
      req.end();
    });
  }
}
