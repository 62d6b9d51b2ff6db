import { execFile, spawn } from 'node:child_process';
import { accessSync, constants, openSync, closeSync, readFileSync, readdirSync } from 'node:fs';
import { delimiter, join } from 'node:path';
import type { Writable } from 'node:stream';
import { promisify } from 'node:util';
import { RoostError } from '../../errors.js';
import { saveRam } from '../../snapshot/memory.js';
import { connectWithRetry } from '../connect.js';
import type { SavedMemory, Vmm, VmConfig, VmControlOptions, VmExit, VmHandle, VmStateTarget } from '../types.js';
import { MAX_SHARES, MEMORY_BACKEND_MEMFD_NAME, QEMU_BINARY, qemuArgs, vmPaths, type QemuPaths } from './args.js';
import { createDisk, createOverlay } from './disk.js';
import { QmpClient } from './qmp.js';
import { findRam } from './ram.js';

const execFileP = promisify(execFile);
let qemuVersion: Promise<string> | null = null;

/**
 * The most a sandbox may write to each of its logs on the host (bytes). A
 * root guest can write to its serial console without end (~0.4 MiB/s under
 * TCG, over 1 GB an hour), and can make QEMU print errors about its devices:
 * both go through a pipe to a keeper process that writes the first `limit`
 * bytes to the log and discards the rest, so the guest runs on unharmed.
 * (QEMU itself cannot be size-limited: it writes the sandbox's disk.)
 */
export function logLimit(env: NodeJS.ProcessEnv = process.env): number {
  const raw = env.ROOST_LOG_LIMIT_BYTES;
  if (raw === undefined || raw === '') return 64 * 2 ** 20;
  const n = Number(raw);
  if (!Number.isSafeInteger(n) || n < 4096)
    throw new RoostError('INVALID_ARGUMENT', `ROOST_LOG_LIMIT_BYTES must be a whole number of at least 4096, not "${raw}"`);
  return n;
}

/** The longest unix socket path Linux accepts (sun_path is 108 bytes with its NUL). */
const MAX_SOCKET_PATH = 107;

/** QEMU on the microvm machine. */
export class QemuVmm implements Vmm {
  readonly name = 'qemu';

  /** `qemu-system-x86_64 --version`'s first line, once per process. */
  version(): Promise<string> {
    qemuVersion ??= execFileP(QEMU_BINARY, ['--version']).then(
      (r) => r.stdout.split('\n')[0]!.trim(),
      (e: Error) => {
        qemuVersion = null;
        throw new RoostError('SETUP_REQUIRED', `cannot run ${QEMU_BINARY} --version: ${e.message}`, { cause: e });
      },
    );
    return qemuVersion;
  }

  paths(dir: string): QemuPaths {
    return vmPaths(dir);
  }

  maxShares(withNic: boolean): number {
    return withNic ? MAX_SHARES - 1 : MAX_SHARES;
  }

  createDisk(path: string, sizeMiB: number, options: { cache: string; signal?: AbortSignal }): Promise<void> {
    return createDisk(options.cache, path, sizeMiB, options.signal);
  }

  createOverlay(base: string, path: string, sizeMiB: number, options: { signal?: AbortSignal } = {}): Promise<void> {
    return createOverlay(base, path, sizeMiB, options.signal);
  }

  async start(config: VmConfig): Promise<VmHandle> {
    const paths = vmPaths(config.dir);
    for (const p of [paths.agentSocket, paths.qmpSocket]) {
      if (Buffer.byteLength(p) > MAX_SOCKET_PATH) {
        throw new RoostError('INVALID_ARGUMENT', `socket path ${p} is longer than ${MAX_SOCKET_PATH} bytes: use a shorter ROOST_HOME`);
      }
    }
    const qemu = findExecutable(QEMU_BINARY);
    if (!qemu) {
      throw new RoostError('SETUP_REQUIRED', `${QEMU_BINARY} is not installed: run \`roost setup\` (it installs qemu-system-x86)`);
    }
    const args = qemuArgs(config, paths, { consolePipe: true });
    const limit = logLimit();
    const consoleKeeper = startLogKeeper(paths.consoleLog, limit);
    const vmmKeeper = startLogKeeper(paths.vmmLog, limit);
    // For a non-detached VM, setpriv sets PR_SET_PDEATHSIG on QEMU, so it gets
    // SIGKILL when its owner dies, however it dies. The keepers end when QEMU
    // closes their pipes.
    const [cmd, argv] = config.detached ? [qemu, args] : ['setpriv', ['--pdeathsig', 'KILL', '--', qemu, ...args]];
    let child;
    let stateFd: number | undefined;
    try {
      if (config.restore) stateFd = openSync(config.restore.state, 'r');
      // Its own session, so a terminal's Ctrl-C reaches Roost, which decides, not QEMU.
      child = spawn(cmd, argv, { stdio: ['ignore', vmmKeeper.stdin, vmmKeeper.stdin, consoleKeeper.stdin, stateFd ?? 'ignore'], detached: true });
    } catch (e) {
      consoleKeeper.kill();
      vmmKeeper.kill();
      throw new RoostError('VMM', `could not start QEMU: ${(e as Error).message}`, { cause: e });
    } finally {
      // QEMU holds the write ends now; ours would keep the keepers from ever seeing EOF.
      consoleKeeper.stdin.destroy();
      vmmKeeper.stdin.destroy();
      if (stateFd !== undefined) closeSync(stateFd);
    }
    const qemuExited = new Promise<VmExit>((resolve) => child.once('exit', (code, signal) => resolve({ code, signal })));
    // The VM has exited once its logs are complete too: boot errors read them right after.
    const exited = Promise.all([qemuExited, consoleKeeper.exited, vmmKeeper.exited]).then(([e]) => e);
    const pid = await new Promise<number>((resolve, reject) => {
      child.once('spawn', () => resolve(child.pid!));
      child.once('error', (e: NodeJS.ErrnoException) => {
        consoleKeeper.kill();
        vmmKeeper.kill();
        reject(new RoostError('VMM', `could not start QEMU (through ${cmd}): ${e.message}`, { cause: e }));
      });
    });
    child.unref();
    return new QemuHandle(pid, paths, exited);
  }

  find(dir: string): VmHandle | null {
    for (const name of readdirSync('/proc')) {
      if (/^\d+$/.test(name) && isOurQemu(Number(name), dir)) return this.attach(Number(name), dir);
    }
    return null;
  }

  attach(pid: number, dir: string): VmHandle | null {
    if (!isOurQemu(pid, dir)) return null;
    const paths = vmPaths(dir);
    // Not our child: watch for its exit by polling.
    const exited = new Promise<VmExit>((resolve) => {
      const timer = setInterval(() => {
        if (!isOurQemu(pid, dir)) {
          clearInterval(timer);
          resolve({ code: null, signal: null });
        }
      }, 100);
      timer.unref();
    });
    return new QemuHandle(pid, paths, exited);
  }
}

interface LogKeeper {
  stdin: Writable;
  exited: Promise<void>;
  kill(): void;
}

/**
 * A process that copies its stdin to `path` as it arrives, the first `limit`
 * bytes of it, and discards the rest. It outlives this Node process with a detached VM.
 */
function startLogKeeper(path: string, limit: number): LogKeeper {
  const out = openSync(path, 'a');
  try {
    // cat copies each read at once (head and dd wait to fill their buffers);
    // RLIMIT_FSIZE stops it at the limit (SIGXFSZ ignored, so the write fails
    // with EFBIG and cat exits), then a second cat drains the rest unseen.
    const script = 'trap "" XFSZ; prlimit --fsize="$1" -- cat; exec cat >/dev/null';
    const child = spawn('/bin/sh', ['-c', script, 'roost-log', String(limit)], {
      stdio: ['pipe', out, 'ignore'],
      detached: true,
    });
    child.unref();
    const exited = new Promise<void>((resolve) => {
      child.once('exit', () => resolve());
      child.once('error', () => resolve());
    });
    return {
      stdin: child.stdin!, // stdio[0] is 'pipe'
      exited,
      kill: () => {
        child.kill('SIGKILL');
      },
    };
  } finally {
    closeSync(out);
  }
}

/** Resolves a command name through PATH (or checks a path); null when it is not an executable file. */
export function findExecutable(name: string): string | null {
  const candidates = name.includes('/') ? [name] : (process.env.PATH ?? '/usr/bin:/bin').split(delimiter).map((d) => join(d, name));
  for (const c of candidates) {
    try {
      accessSync(c, constants.X_OK);
      return c;
    } catch {
      // next
    }
  }
  return null;
}

/** True if `pid` is alive and is the QEMU of the sandbox in `dir` (guards against a recycled pid). */
export function isOurQemu(pid: number, dir: string): boolean {
  try {
    const cmdline = readFileSync(`/proc/${pid}/cmdline`, 'utf8');
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    if (/\) Z /.test(stat)) return false; // a zombie has exited
    return cmdline.includes(vmPaths(dir).agentSocket);
  } catch {
    return false;
  }
}

/** A QEMU process, driven over QMP (one client at a time: opened on first use, let go with `release`). */
class QemuHandle implements VmHandle {
  #qmp: Promise<QmpClient> | undefined;
  #exited = false;
  readonly exited: Promise<VmExit>;

  constructor(
    readonly pid: number,
    readonly paths: QemuPaths,
    exited: Promise<VmExit>,
  ) {
    this.exited = exited.then((e) => {
      this.#exited = true;
      return e;
    });
  }

  get hasExited(): boolean {
    return this.#exited;
  }

  async waitForExit(): Promise<VmExit> {
    // The child process and its watchers are unref'd so an idle sandbox does
    // not keep its owner alive; someone waiting on the exit must.
    const hold = setInterval(() => {}, 1 << 30);
    try {
      return await this.exited;
    } finally {
      clearInterval(hold);
    }
  }

  async status(options: VmControlOptions = {}): Promise<string> {
    const r = await (await this.#client(options.signal)).execute<{ status: string }>('query-status', undefined, options.timeoutMs);
    return r.status;
  }

  async pause(options: VmControlOptions = {}): Promise<void> {
    await (await this.#client(options.signal)).execute('stop', undefined, options.timeoutMs);
  }

  async resume(options: VmControlOptions = {}): Promise<void> {
    await (await this.#client(options.signal)).execute('cont', undefined, options.timeoutMs);
  }

  /**
   * Device state through `xen-save-devices-state` (no RAM in it), RAM read
   * from outside QEMU while the vCPUs are stopped: from the memfd of a booted
   * VM, or from QEMU's private mapping of the image a restored VM came from.
   */
  async saveState(target: VmStateTarget, options: VmControlOptions & { timeoutMs: number }): Promise<SavedMemory> {
    const qmp = await this.#client(options.signal);
    const ram = await findRam(this.pid, target.memoryBytes, MEMORY_BACKEND_MEMFD_NAME).catch((e: unknown) => {
      if (!target.restoredFrom) throw e;
      return findRam(this.pid, target.memoryBytes, MEMORY_BACKEND_MEMFD_NAME, target.restoredFrom);
    });
    const [, saved] = await Promise.all([
      qmp.execute('xen-save-devices-state', { filename: target.devices, live: false }, options.timeoutMs),
      saveRam(ram, target.memoryBytes, target.memory),
    ]);
    return saved;
  }

  async quit(options: VmControlOptions = {}): Promise<void> {
    await (await this.#client(options.signal)).execute('quit', undefined, options.timeoutMs);
  }

  release(): void {
    const qmp = this.#qmp;
    this.#qmp = undefined;
    void qmp?.then((q) => q.close()).catch(() => {});
  }

  kill(): void {
    if (this.#exited) return;
    try {
      process.kill(this.pid, 'SIGKILL');
    } catch {
      // already gone
    }
  }

  #client(signal?: AbortSignal): Promise<QmpClient> {
    if (!this.#qmp) {
      this.#qmp = connectWithRetry(() => QmpClient.connect(this.paths.qmpSocket, signal), {
        what: this.paths.qmpSocket,
        vmExited: () => this.#exited,
        ...(signal ? { signal } : {}),
      });
      this.#qmp.then((q) => q.once('close', () => (this.#qmp = undefined))).catch(() => (this.#qmp = undefined));
    }
    return this.#qmp;
  }
}
