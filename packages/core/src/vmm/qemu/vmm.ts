import { execFile, spawn, type SpawnOptions } from 'node:child_process';
import { accessSync, chownSync, mkdirSync, constants, openSync, closeSync, fstatSync, readFileSync, writeFileSync } from 'node:fs';
import { createReadStream, createWriteStream } from 'node:fs';
import { pipeline } from 'node:stream/promises';
import { basename, delimiter, dirname, join } from 'node:path';
import type { Readable, Writable } from 'node:stream';
import { promisify } from 'node:util';
import { diskFullAt } from '../../disk-space.js';
import { RoostError } from '../../errors.js';
import { privateSpawn } from '../../state/private.js';
import { saveRam } from '../../snapshot/memory.js';
import { connectWithRetry } from '../connect.js';
import { cgroupSupport, createSandboxCgroup, openSandboxCgroup, type SandboxCgroup } from '../../jail/cgroup.js';
import type {
  FoundVm,
  SavedMemory,
  Vmm,
  VmConfig,
  VmConfinement,
  VmControlOptions,
  VmExit,
  VmHandle,
  VmIoError,
  VmJail,
  VmLimits,
  VmStateTarget,
} from '../types.js';
import { DEVICES_OUT, devicesOutSet, MEMORY_BACKEND_MEMFD_NAME, QEMU_BINARY, qemuArgs, vmPaths, type QemuPaths } from './args.js';
import { JAIL_ROOT, planJail, REPORT_FD, type JailLaunch } from './jail.js';
import { qemuRuntime } from './jail-runtime.js';
import { createDisk, createOverlay } from './disk.js';
import { ioErrorOf, QmpClient, stoppedOnIoError, type QmpEvent } from './qmp.js';
import { findQemuVms, vmDirOf } from './processes.js';
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
  readonly confines = true;

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
    const jailed = config.jail ? await this.#prepareJail(config, paths, config.jail, qemu) : null;
    const args = qemuArgs(config, paths, { consolePipe: true, ...(jailed ? { fds: jailed.launch.fds } : {}) });
    const limit = logLimit();
    const consoleKeeper = startLogKeeper(paths.consoleLog, limit);
    const vmmKeeper = startLogKeeper(paths.vmmLog, limit);
    let child;
    let stateFd: number | undefined;
    try {
      if (config.restore) stateFd = openSync(config.restore.state, 'r');
      const stdio = ['ignore', vmmKeeper.stdin, vmmKeeper.stdin, consoleKeeper.stdin, stateFd ?? 'ignore'] as const;
      if (jailed) {
        // The jailer (host/jailer) opens what QEMU needs, confines it and reports its pid on fd 5 (REPORT_FD).
        child = spawn(config.jail!.jailer, [...jailed.launch.jailerArgs, ...args], { stdio: [...stdio, 'pipe'], detached: true });
      } else {
        // For a non-detached VM, setpriv sets PR_SET_PDEATHSIG on QEMU, so it gets
        // SIGKILL when its owner dies, however it dies. The keepers end when QEMU
        // closes their pipes.
        const [cmd, argv] = config.detached ? [qemu, args] : ['setpriv', ['--pdeathsig', 'KILL', '--', qemu, ...args]];
        // Its own session, so a terminal's Ctrl-C reaches Roost, which decides, not QEMU.
        // With a umask of 077: its sockets and saved device state are private.
        const options = { stdio: [...stdio], detached: true } satisfies SpawnOptions;
        child = privateSpawn(cmd, argv, options);
      }
    } catch (e) {
      consoleKeeper.kill();
      vmmKeeper.kill();
      jailed?.cgroup?.remove().catch(() => {});
      throw new RoostError('VMM', `could not start QEMU: ${(e as Error).message}`, { cause: e });
    } finally {
      // QEMU holds the write ends now; ours would keep the keepers from ever seeing EOF.
      consoleKeeper.stdin.destroy();
      vmmKeeper.stdin.destroy();
      if (stateFd !== undefined) closeSync(stateFd);
    }
    const started = child;
    const childExited = new Promise<VmExit>((resolve) => started.once('exit', (code, signal) => resolve({ code, signal })));
    // The VM has exited once its logs are complete too: boot errors read them right after.
    let exited = Promise.all([childExited, consoleKeeper.exited, vmmKeeper.exited]).then(([e]) => e);
    const spawned = new Promise<number>((resolve, reject) => {
      started.once('spawn', () => resolve(started.pid!));
      started.once('error', (e: NodeJS.ErrnoException) => {
        consoleKeeper.kill();
        vmmKeeper.kill();
        reject(new RoostError('VMM', `could not start QEMU (through ${started.spawnfile}): ${e.message}`, { cause: e }));
      });
    });
    let pid: number;
    let confinement: VmConfinement | null = null;
    if (jailed) {
      const cgroup = jailed.cgroup;
      try {
        await spawned;
        // stdio's type lists only fds 0-4; the report pipe is at REPORT_FD.
        const report = (started.stdio as readonly (Readable | Writable | null | undefined)[])[REPORT_FD] as Readable;
        pid = await readJailReport(report, childExited);
      } catch (e) {
        started.kill('SIGKILL');
        await exited.catch(() => {});
        await cgroup?.remove().catch(() => {});
        throw e;
      }
      confinement = { uid: config.jail!.uid, gid: config.jail!.gid, cgroup: cgroup?.name ?? null, limits: cgroup ? limitsOf(cgroup) : null };
      exited = exited.then((e) => afterJailedExit(e, cgroup, config.jail!.limits));
    } else {
      pid = await spawned;
    }
    started.unref();
    const devicesSet = jailed?.launch.fds.sets.find((x) => x.file.endsWith(`/${DEVICES_OUT}`))?.set ?? null;
    return new QemuHandle(pid, paths, exited, confinement, devicesSet);
  }

  /** The runtime, cgroup and jailer arguments of a confined VM. */
  async #prepareJail(config: VmConfig, paths: QemuPaths, jail: VmJail, qemu: string): Promise<{ launch: JailLaunch; cgroup: SandboxCgroup | null }> {
    const runtime = await qemuRuntime(jail.cache, qemu);
    // The device-state file starts empty, and is the jail uid's: QEMU writes it by name (see planJail).
    mkdirSync(join(config.dir, JAIL_ROOT), { recursive: true, mode: 0o700 });
    const devicesOut = join(config.dir, DEVICES_OUT);
    writeFileSync(devicesOut, '', { mode: 0o600 });
    chownSync(devicesOut, jail.uid, jail.gid);
    const cgroup = cgroupSupport() ? createSandboxCgroup(config.id, jail.limits) : null;
    try {
      return { launch: planJail(config, paths, jail, runtime, cgroup?.dirs ?? []), cgroup };
    } catch (e) {
      await cgroup?.remove().catch(() => {});
      throw e;
    }
  }

  attach(pid: number, dir: string): VmHandle | null {
    if (!isOurQemu(pid, dir)) return null;
    const paths = vmPaths(dir);
    let argv: string[] = [];
    try {
      argv = readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0');
    } catch {
      return null;
    }
    const devicesSet = devicesOutSet(argv);
    const confinement = devicesSet === null ? null : confinementOf(pid, basename(dir));
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
    const cgroup = confinement?.cgroup ? openSandboxCgroup(basename(dir)) : null;
    const watched = confinement?.limits ? exited.then((e) => afterJailedExit(e, cgroup, confinement.limits!)) : exited;
    return new QemuHandle(pid, paths, watched, confinement, devicesSet);
  }

  findVms(root: string): FoundVm[] {
    return findQemuVms(root);
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
  const out = openSync(path, 'a', 0o600);
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
    return vmDirOf(cmdline.split('\0')) === dir;
  } catch {
    return false;
  }
}

/**
 * Reads the jailer's report (REPORT_FD): `pid N` once QEMU's process exists,
 * then EOF once QEMU runs (the jailer's copy of the pipe is closed, and
 * QEMU's is close-on-exec); `error ...` lines when setting up the jail failed.
 */
async function readJailReport(report: Readable, exited: Promise<VmExit>): Promise<number> {
  let text = '';
  report.setEncoding('utf8');
  report.on('data', (chunk: string) => {
    if (text.length < 65536) text += chunk;
  });
  const ended = new Promise<void>((resolve) => report.once('close', () => resolve()));
  const timeout = new Promise<'timeout'>((resolve) => setTimeout(() => resolve('timeout'), JAIL_SETUP_TIMEOUT_MS).unref());
  const how = await Promise.race([ended, timeout]);
  const errors = text
    .split('\n')
    .filter((l) => l.startsWith('error '))
    .map((l) => l.slice(6));
  if (errors.length > 0) throw new RoostError('VMM', `could not confine QEMU: ${errors.join('; ')}`, { details: { jail: errors } });
  if (how === 'timeout') throw new RoostError('VMM', `the jailer did not start QEMU within ${JAIL_SETUP_TIMEOUT_MS / 1000} s`);
  const pid = Number(/^pid (\d+)$/m.exec(text)?.[1]);
  if (!Number.isSafeInteger(pid) || pid <= 1) {
    const e = await Promise.race([exited, new Promise<null>((r) => setTimeout(() => r(null), 1000).unref())]);
    const how = e ? (e.signal ? `was killed by ${e.signal}` : `exited with status ${e.code}`) : 'said nothing';
    throw new RoostError('VMM', `the jailer ${how} before QEMU started`);
  }
  return pid;
}

/** How long the jailer may take to set up a jail and exec QEMU. */
const JAIL_SETUP_TIMEOUT_MS = 30_000;

function limitsOf(cgroup: SandboxCgroup): VmLimits {
  return { cpus: cgroup.limits.cpus, memoryBytes: cgroup.limits.memoryBytes, pids: cgroup.limits.pids };
}

/** After a confined VM exits: an OOM kill in its cgroup is the reason, then the cgroup goes. */
async function afterJailedExit(exit: VmExit, cgroup: SandboxCgroup | null, limits: VmLimits): Promise<VmExit> {
  if (!cgroup) return exit;
  let out = exit;
  try {
    const oom = cgroup.stats().oomKills ?? 0;
    if (oom > 0) {
      const mib = Math.round(limits.memoryBytes / 2 ** 20);
      out = { ...exit, reason: `out of memory: its QEMU used more than its limit of ${mib} MiB (guest RAM and the VMM's own) and was killed` };
    }
  } catch {
    // the cgroup is gone already
  }
  await cgroup.remove({ timeoutMs: 2000 }).catch(() => false);
  return out;
}

/** The jail of a running confined QEMU, read from /proc and its cgroup (a VM re-attached after a restart). */
function confinementOf(pid: number, id: string): VmConfinement | null {
  try {
    const status = readFileSync(`/proc/${pid}/status`, 'utf8');
    const uid = Number(/^Uid:\s+(\d+)/m.exec(status)?.[1]);
    const gid = Number(/^Gid:\s+(\d+)/m.exec(status)?.[1]);
    const cgroup = openSandboxCgroup(id);
    return { uid, gid, cgroup: cgroup?.name ?? null, limits: cgroup ? limitsOf(cgroup) : null };
  } catch {
    return null;
  }
}

/** A QEMU process, driven over QMP (one client at a time: opened on first use, let go with `release`). */
class QemuHandle implements VmHandle {
  #qmp: Promise<QmpClient> | undefined;
  #exited = false;
  readonly #ioListeners: ((error: VmIoError) => void)[] = [];
  readonly exited: Promise<VmExit>;

  constructor(
    readonly pid: number,
    readonly paths: QemuPaths,
    exited: Promise<VmExit>,
    readonly confinement: VmConfinement | null = null,
    /** A confined VM's fd set for its device-state file (DEVICES_OUT); null: QEMU writes device state by name. */
    private readonly devicesSet: number | null = null,
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
    // Confined, QEMU writes the one file its jail lets it write (DEVICES_OUT, bound at its path), copied
    // out after: opened without following links, a regular file, read up to the size it has then.
    const out = this.devicesSet === null ? null : join(dirname(this.paths.agentSocket), DEVICES_OUT);
    const [devices, saved] = await Promise.allSettled([
      qmp.execute('xen-save-devices-state', { filename: out ?? target.devices, live: false }, options.timeoutMs).then(async () => {
        if (!out) return;
        const fd = openSync(out, constants.O_RDONLY | constants.O_NOFOLLOW);
        try {
          if (!fstatSync(fd).isFile()) throw new RoostError('VMM', `${out} is not a regular file`);
          await pipeline(createReadStream('', { fd, autoClose: false }), createWriteStream(target.devices, { mode: 0o600 }));
        } finally {
          closeSync(fd);
        }
      }),
      saveRam(ram, target.memoryBytes, target.memory),
    ]);
    if (devices.status === 'fulfilled' && saved.status === 'fulfilled') return saved.value;
    const failures = [devices, saved].flatMap((r) => (r.status === 'rejected' ? [r.reason as unknown] : []));
    // QEMU says only "An IO error has occurred" when it cannot write the device state: a full disk is told by its free space.
    const full = failures.map((e) => diskFullAt(e, dirname(target.devices))).find((e) => e !== null);
    throw full ?? failures[0];
  }

  async quit(options: VmControlOptions = {}): Promise<void> {
    await (await this.#client(options.signal)).execute('quit', undefined, options.timeoutMs);
  }

  release(): void {
    const qmp = this.#qmp;
    this.#qmp = undefined;
    void qmp?.then((q) => q.close()).catch(() => {});
  }

  onIoError(listener: (error: VmIoError) => void): void {
    this.#ioListeners.push(listener);
    // Watching needs the QMP connection open: events go only to a connected client.
    if (!this.#exited) this.#client().catch(() => {});
  }

  #ioError(error: VmIoError): void {
    for (const listener of this.#ioListeners) listener(error);
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
      const qmp = this.#qmp;
      qmp
        .then((q) => {
          q.once('close', () => {
            if (this.#qmp === qmp) this.#qmp = undefined;
          });
          q.on('event', (event: QmpEvent) => {
            const error = ioErrorOf(event);
            if (error) this.#ioError(error);
          });
          // An error while no client was connected sent its event to no one: the VM's state still says.
          if (this.#ioListeners.length > 0) {
            void stoppedOnIoError(q)
              .then((error) => error && this.#ioError(error))
              .catch(() => {});
          }
        })
        .catch(() => {
          if (this.#qmp === qmp) this.#qmp = undefined;
        });
    }
    return this.#qmp;
  }
}
