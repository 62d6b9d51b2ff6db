import { randomBytes } from 'node:crypto';
import { cpus as hostCpus, totalmem } from 'node:os';
import { mkdir, readFile, rename, rm, writeFile, readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { HelloFlags } from '@roost/protocol';
import { z } from 'zod';
import { AgentConnection } from './agent/connection.js';
import { loadAssets, type Assets } from './assets.js';
import { Commands } from './commands.js';
import { abortError, RoostError } from './errors.js';
import { HomeLayout, roostHome } from './home.js';
import { ImageStore } from './image/store.js';
import type { PullProgress } from './image/manifest.js';
import { parseOptions } from './validate.js';
import { chooseAccel, type Accel } from './vmm/accel.js';
import { createDisk, DEFAULT_DISK_MIB, MAX_DISK_MIB, MIN_DISK_MIB } from './vmm/disk.js';
import { isOurQemu, QemuVmm } from './vmm/qemu.js';
import type { VmHandle, Vmm } from './vmm/types.js';

/** Lifecycle of a sandbox. */
export type SandboxStatus = 'creating' | 'running' | 'stopping' | 'stopped' | 'failed';

/** What is recorded about a sandbox in `<home>/sandboxes/<id>/sandbox.json`. */
export interface SandboxInfo {
  id: string;
  status: SandboxStatus;
  createdAt: string;
  cpus: number;
  memoryMiB: number;
  diskSizeMiB: number;
  detached: boolean;
  accel: Accel;
  /** The QEMU process, while one runs. */
  pid: number | null;
  /** Environment given to every command (the image's Env, overridden by the sandbox's own). */
  env: Record<string, string>;
  /** The image the sandbox runs, when it runs one (otherwise Roost's base root filesystem). */
  image?: SandboxImage;
  /** Default working directory and user of commands (from the image config). */
  workingDir?: string;
  user?: string;
  /** Why the sandbox failed or stopped, when it did. */
  reason?: string;
  agentVersion?: string;
}

/** The image of a sandbox, as recorded when it was created. */
export interface SandboxImage {
  /** What the user asked for (`alpine`, `127.0.0.1:5000/app:1`). */
  reference: string;
  /** The image's id (its manifest digest). */
  id: string;
  /** The image's Entrypoint and Cmd: what `roost run IMAGE` runs without a command. */
  entrypoint: string[];
  cmd: string[];
}

/** When `Sandbox.create` pulls its image. */
export type PullPolicy = 'missing' | 'always' | 'never';

/** Options of `Sandbox.create`. */
export interface SandboxOptions {
  /**
   * An OCI image to run: a reference (`alpine`, `alpine:3.20`,
   * `host:5000/team/app@sha256:...`) or the id of a stored image. Pulled
   * when missing (see `pull`). Without one, the sandbox runs Roost's small
   * busybox root filesystem.
   */
  image?: string;
  /** Pull the image when it is not stored (`missing`, the default), every time (`always`), or never. */
  pull?: PullPolicy;
  /** Progress of the image pull, per blob. */
  onPullProgress?: (p: PullProgress) => void;
  /** Virtual CPUs (default 1). */
  cpus?: number;
  /** Guest memory in MiB (default 256). */
  memoryMiB?: number;
  /** Environment for every command in the sandbox. */
  env?: Record<string, string>;
  /**
   * Size of the sandbox's writable disk in MiB (default 4096). The disk is
   * sparse: it costs the host only what the guest writes. A full disk is
   * ENOSPC inside the guest.
   */
  diskSizeMiB?: number;
  /** Keep running after this process exits (default false: the VM dies with its owner, even on SIGKILL). */
  detached?: boolean;
  /** How long booting may take before it fails (default 30 s; pulling the image and building its filesystem come before, bounded by `signal` only). */
  timeoutMs?: number;
  signal?: AbortSignal;
  /** Roost home (default $ROOST_HOME or ~/.roost). */
  home?: string;
}

const MAX_CPUS = 16; // the guest kernel's NR_CPUS

const sandboxOptionsSchema = z
  .object({
    cpus: z.number().int().min(1).max(MAX_CPUS).optional(),
    memoryMiB: z.number().int().min(64).max(Math.floor(totalmem() / 2 ** 20)).optional(),
    env: z.record(z.string().regex(/^[^=\0]+$/, 'environment names must be non-empty and contain no "=" or NUL'), z.string()).optional(),
    image: z.string().min(1).optional(),
    pull: z.enum(['missing', 'always', 'never']).optional(),
    onPullProgress: z.function().optional(),
    diskSizeMiB: z.number().int().min(MIN_DISK_MIB).max(MAX_DISK_MIB).optional(),
    detached: z.boolean().optional(),
    timeoutMs: z.number().int().positive().optional(),
    signal: z.instanceof(AbortSignal).optional(),
    home: z.string().min(1).optional(),
  })
  .strict();

const ID_PATTERN = /^[0-9a-f]{12}$/;

/**
 * A microVM sandbox: a QEMU process booting the Roost kernel with the agent
 * as PID 1. Run commands with `sandbox.commands`; end it with `stop()`,
 * `kill()` or `await using`.
 */
export class Sandbox implements AsyncDisposable {
  readonly id: string;
  readonly commands: Commands;
  #info: SandboxInfo;
  #layout: HomeLayout;
  #vm: VmHandle | null;
  #conn: Promise<AgentConnection> | null = null;
  #ownsConnection: boolean;
  #ending = false;

  private constructor(layout: HomeLayout, info: SandboxInfo, vm: VmHandle | null, ownsVm: boolean) {
    this.id = info.id;
    this.#info = info;
    this.#layout = layout;
    this.#vm = vm;
    this.#ownsConnection = ownsVm && !info.detached;
    this.commands = new Commands(() => this.#connection(), {
      env: info.env,
      ...(info.workingDir ? { cwd: info.workingDir } : {}),
      ...(info.user ? { user: info.user } : {}),
    });
    vm?.exited.then(() => this.#onVmExit());
  }

  /** Creates and boots a sandbox; resolves once its agent answers. */
  static async create(options: SandboxOptions = {}): Promise<Sandbox> {
    const opts = parseOptions(sandboxOptionsSchema, options, 'sandbox options') as SandboxOptions;
    const layout = new HomeLayout(roostHome(opts.home));
    const assets = await loadAssets(layout.root);
    const image = opts.image ? await prepareImage(layout, opts) : undefined;
    return Sandbox.#boot(layout, assets, opts, new QemuVmm(), image);
  }

  /** Finds a sandbox by id (or a unique id prefix) in a Roost home and attaches to it. */
  static async get(id: string, options: { home?: string } = {}): Promise<Sandbox> {
    const layout = new HomeLayout(roostHome(options.home));
    const fullId = await resolveId(layout, id);
    const info = await readInfo(layout, fullId);
    const vm = info.pid !== null ? new QemuVmm().attach(info.pid, layout.sandbox(fullId)) : null;
    if (!vm) await reconcileGone(layout, info);
    return new Sandbox(layout, info, vm, false);
  }

  /** Lists the sandboxes of a Roost home, newest first, with their live status. */
  static async list(options: { home?: string } = {}): Promise<SandboxInfo[]> {
    const layout = new HomeLayout(roostHome(options.home));
    const ids = await readdir(layout.sandboxes).catch(() => [] as string[]);
    const infos: SandboxInfo[] = [];
    for (const id of ids.filter((i) => ID_PATTERN.test(i))) {
      const info = await readInfo(layout, id).catch(() => null);
      if (!info) continue;
      if (info.pid === null || !isOurQemu(info.pid, layout.sandbox(id))) await reconcileGone(layout, info);
      infos.push(info);
    }
    return infos.sort((a, b) => b.createdAt.localeCompare(a.createdAt));
  }

  /** A snapshot of what is recorded about this sandbox. */
  get info(): SandboxInfo {
    return structuredClone(this.#info);
  }

  get status(): SandboxStatus {
    return this.#info.status;
  }

  /** The sandbox's directory: sockets, console log, config. */
  get dir(): string {
    return this.#layout.sandbox(this.id);
  }

  /** The guest's serial console log (kernel messages, agent diagnostics). */
  get consoleLogPath(): string {
    return join(this.dir, 'console.log');
  }

  /**
   * The VM's state as QEMU reports it over QMP (`running`, `paused`, ...):
   * the hypervisor's view, independent of the guest agent.
   */
  async vmStatus(): Promise<string> {
    if (!this.#vm || this.#vm.hasExited) throw new RoostError('INVALID_STATE', `sandbox ${this.id} has no running VM`);
    const qmp = await this.#vm.qmp();
    const r = await qmp.execute<{ status: string }>('query-status');
    return r.status;
  }

  /** Round trip to the agent in ms. */
  async ping(timeoutMs = 5_000): Promise<number> {
    return (await this.#connection()).ping(timeoutMs);
  }

  /**
   * Stops the sandbox: the agent ends its processes and powers the VM off;
   * after `timeoutMs` (default 10 s) the VM is killed.
   */
  async stop(options: { timeoutMs?: number } = {}): Promise<void> {
    const timeoutMs = options.timeoutMs ?? 10_000;
    if (!this.#vm || this.#vm.hasExited) {
      if (isLive(this.#info.status)) await this.#update({ status: 'stopped', pid: null });
      return;
    }
    this.#ending = true;
    await this.#update({ status: 'stopping' });
    try {
      const conn = await Promise.race([this.#connection(), sleep(Math.min(timeoutMs, 2_000)).then(() => null)]);
      conn?.poweroff();
    } catch {
      // No agent to ask: the kill below ends it.
    }
    // The agent ends processes, syncs and powers off. If it does not within
    // half the timeout, QEMU is asked to quit over QMP; at the timeout it is killed.
    const vm = this.#vm;
    const exitedWithin = (ms: number) => Promise.race([vm.waitForExit().then(() => true), sleep(ms).then(() => false)]);
    if (!(await exitedWithin(timeoutMs / 2))) {
      await vm
        .qmp()
        .then((q) => q.execute('quit', undefined, 1_000))
        .catch(() => {});
      if (!(await exitedWithin(timeoutMs / 2))) {
        vm.kill();
        await vm.waitForExit();
      }
    }
    this.#closeConnection();
    await this.#update({ status: 'stopped', pid: null });
  }

  /** Kills the VM at once. */
  async kill(): Promise<void> {
    this.#ending = true;
    if (this.#vm && !this.#vm.hasExited) {
      this.#vm.kill();
      await this.#vm.waitForExit();
    }
    this.#closeConnection();
    if (isLive(this.#info.status)) await this.#update({ status: 'stopped', pid: null, reason: 'killed' });
  }

  /** Removes the sandbox and its directory. A running sandbox needs `force` (it is killed). */
  async remove(options: { force?: boolean } = {}): Promise<void> {
    if (this.#vm && !this.#vm.hasExited) {
      if (!options.force) throw new RoostError('INVALID_STATE', `sandbox ${this.id} is running: stop it first, or remove it with force`);
      await this.kill();
    }
    await rm(this.dir, { recursive: true, force: true });
  }

  /** Detaches from the sandbox without stopping it (only meaningful for detached sandboxes). */
  disconnect(): void {
    this.#closeConnection();
  }

  /** Ends the sandbox: a detached one is only disconnected; any other is killed and removed. */
  async [Symbol.asyncDispose](): Promise<void> {
    if (this.#info.detached) this.disconnect();
    else await this.remove({ force: true });
  }

  // ---- internals -------------------------------------------------------------

  static async #boot(layout: HomeLayout, assets: Assets, opts: SandboxOptions, vmm: Vmm, image?: PreparedImage): Promise<Sandbox> {
    const id = randomBytes(6).toString('hex');
    const dir = layout.sandbox(id);
    const accel = chooseAccel();
    const info: SandboxInfo = {
      id,
      status: 'creating',
      createdAt: new Date().toISOString(),
      cpus: opts.cpus ?? 1,
      memoryMiB: opts.memoryMiB ?? 256,
      diskSizeMiB: opts.diskSizeMiB ?? DEFAULT_DISK_MIB,
      detached: opts.detached ?? false,
      accel,
      pid: null,
      env: { ...image?.env, ...opts.env },
      ...(image ? { image: image.record } : {}),
      ...(image?.workingDir ? { workingDir: image.workingDir } : {}),
      ...(image?.user ? { user: image.user } : {}),
    };
    if (info.cpus > hostCpus().length && accel === 'kvm') {
      throw new RoostError('INVALID_ARGUMENT', `cpus: ${info.cpus} requested, the host has ${hostCpus().length}`);
    }
    await mkdir(dir, { recursive: true });
    // Written before QEMU starts, so a crash in between leaves a record to reap, not an orphan.
    await writeInfo(layout, info);

    const timeoutMs = opts.timeoutMs ?? 30_000;
    const deadline = AbortSignal.timeout(timeoutMs);
    const signal = opts.signal ? AbortSignal.any([opts.signal, deadline]) : deadline;
    let vm: VmHandle | null = null;
    try {
      if (signal.aborted) throw abortError(signal, 'sandbox creation');
      const disk = join(dir, 'disk.qcow2');
      await createDisk(layout.cache, disk, info.diskSizeMiB, signal);
      vm = await vmm.start({
        id, dir, cpus: info.cpus, memoryMiB: info.memoryMiB, kernel: assets.kernel, initramfs: assets.initramfs,
        rootfs: image?.rootfs ?? assets.rootfs, disk, kernelHz: assets.kernelHz, detached: info.detached, accel,
      });
      info.pid = vm.pid;
      await writeInfo(layout, info);
      const runningVm = vm;
      const conn = await AgentConnection.connect(vm.paths.agentSocket, {
        flags: info.detached ? 0 : HelloFlags.POWEROFF_ON_DISCONNECT,
        timeoutMs,
        signal,
        vmExited: () => runningVm.hasExited,
      });
      info.status = 'running';
      info.agentVersion = conn.hello.agentVersion;
      await writeInfo(layout, info);
      const sb = new Sandbox(layout, info, vm, true);
      sb.#adopt(Promise.resolve(conn));
      return sb;
    } catch (e) {
      vm?.kill();
      await vm?.waitForExit();
      const err = await bootError(e, dir, timeoutMs, signal);
      if (!vm) {
        // QEMU never ran: there is no console or log to look at, only a record to forget.
        await rm(dir, { recursive: true, force: true });
        throw err;
      }
      info.status = 'failed';
      info.pid = null;
      info.reason = err.message.split('\n')[0];
      await writeInfo(layout, info).catch(() => {});
      throw err;
    }
  }

  #connection(): Promise<AgentConnection> {
    if (this.#conn) return this.#conn;
    if (!this.#vm || this.#vm.hasExited || !isLive(this.#info.status)) {
      return Promise.reject(new RoostError('INVALID_STATE', `sandbox ${this.id} is ${this.#info.status}${this.#info.reason ? ` (${this.#info.reason})` : ''}`));
    }
    const vm = this.#vm;
    const timeoutMs = 10_000;
    const conn = AgentConnection.connect(vm.paths.agentSocket, { flags: 0, timeoutMs, vmExited: () => vm.hasExited }).catch((e: unknown) => {
      if (e instanceof RoostError && e.code === 'TIMEOUT') {
        // QEMU serves one client on the agent socket at a time; later ones wait in its backlog.
        throw new RoostError(
          'AGENT',
          `the agent of sandbox ${this.id} did not answer within ${timeoutMs / 1000} s: another process is probably connected to it ` +
            '(a sandbox serves one client at a time; retry when that one finishes), or the guest is hung (see `roost logs`)',
          { cause: e },
        );
      }
      throw e;
    });
    this.#adopt(conn);
    return conn;
  }

  #adopt(conn: Promise<AgentConnection>): void {
    this.#conn = conn;
    conn.then(
      (c) => {
        const onBad = (e: RoostError) => {
          // A hostile or broken guest: it gets no second chance.
          this.#vm?.kill();
          void this.#markFailed(e.message);
        };
        c.on('violation', onBad);
        c.on('unresponsive', onBad);
        c.on('close', () => {
          if (this.#conn === conn) this.#conn = null;
          if (!this.#ending && !c.closedByHost) void this.#markFailed('the guest agent went away');
        });
      },
      () => {
        if (this.#conn === conn) this.#conn = null;
      },
    );
  }

  #closeConnection(): void {
    const conn = this.#conn;
    this.#conn = null;
    void conn?.then((c) => c.close()).catch(() => {});
  }

  async #markFailed(reason: string): Promise<void> {
    if (this.#ending || !isLive(this.#info.status)) return;
    // A process that only attached may be watching a VM that another process
    // (its owner, or `roost stop`) is ending on purpose: the record decides.
    if (!this.#ownsConnection && !(await this.#stillLiveOnDisk())) return;
    await this.#update({ status: 'failed', reason }).catch(() => {});
  }

  #onVmExit(): void {
    if (this.#ending) return;
    if (isLive(this.#info.status)) void this.#markFailed(this.#info.reason ?? 'the VM exited unexpectedly (the guest rebooted, powered off or crashed)').then(() => this.#update({ pid: null }));
    else void this.#update({ pid: null }).catch(() => {});
  }

  /** Re-reads the record; adopts it and returns false when another process has already ended the sandbox. */
  async #stillLiveOnDisk(): Promise<boolean> {
    const disk = await readInfo(this.#layout, this.id).catch(() => null);
    if (!disk) return false;
    if (!isLive(disk.status)) {
      this.#info = disk;
      return false;
    }
    return true;
  }

  async #update(patch: Partial<SandboxInfo>): Promise<void> {
    Object.assign(this.#info, patch);
    // A removed sandbox has no directory to write to.
    await writeInfo(this.#layout, this.#info).catch((e: NodeJS.ErrnoException) => {
      if (e.code !== 'ENOENT') throw e;
    });
  }
}

interface PreparedImage {
  record: SandboxImage;
  rootfs: string;
  env: Record<string, string>;
  workingDir: string;
  user: string;
}

/** Finds (or pulls) the image of a sandbox to be, and builds its root filesystem if this is its first sandbox. */
async function prepareImage(layout: HomeLayout, opts: SandboxOptions): Promise<PreparedImage> {
  const reference = opts.image!;
  const store = new ImageStore({ home: layout.root });
  const policy = opts.pull ?? 'missing';
  const pullOpts = { ...(opts.signal ? { signal: opts.signal } : {}), ...(opts.onPullProgress ? { onProgress: opts.onPullProgress } : {}) };
  let image = policy === 'always' ? undefined : store.find(reference);
  if (!image) {
    if (policy === 'never') throw new RoostError('NOT_FOUND', `no image ${reference} in the store, and pulling is off (pull: 'never')`);
    image = await store.pull(reference, pullOpts);
  }
  const rootfs = await store.rootfs(image.id, opts.signal ? { signal: opts.signal } : {});
  const env: Record<string, string> = {};
  for (const kv of image.config.env) {
    const eq = kv.indexOf('=');
    if (eq > 0) env[kv.slice(0, eq)] = kv.slice(eq + 1);
  }
  return {
    record: { reference, id: image.id, entrypoint: image.config.entrypoint, cmd: image.config.cmd },
    rootfs,
    env,
    workingDir: image.config.workingDir,
    user: image.config.user,
  };
}

/**
 * A record says the sandbox runs but its VM process is gone (its owner died
 * with it, or it crashed): record that. One that was being stopped is stopped.
 */
async function reconcileGone(layout: HomeLayout, info: SandboxInfo): Promise<void> {
  if (!isLive(info.status)) return;
  info.status = info.status === 'stopping' ? 'stopped' : 'failed';
  info.reason ??= 'the VM process is gone (its owner exited or it crashed)';
  info.pid = null;
  await writeInfo(layout, info).catch(() => {});
}

function isLive(status: SandboxStatus): boolean {
  return status === 'creating' || status === 'running' || status === 'stopping';
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms).unref());
}

async function readInfo(layout: HomeLayout, id: string): Promise<SandboxInfo> {
  try {
    return JSON.parse(await readFile(join(layout.sandbox(id), 'sandbox.json'), 'utf8')) as SandboxInfo;
  } catch (cause) {
    throw new RoostError('NOT_FOUND', `no sandbox ${id} in ${layout.root} (see \`roost ps\`)`, { cause });
  }
}

async function writeInfo(layout: HomeLayout, info: SandboxInfo): Promise<void> {
  const path = join(layout.sandbox(info.id), 'sandbox.json');
  const tmp = `${path}.tmp-${process.pid}-${randomBytes(3).toString('hex')}`;
  await writeFile(tmp, JSON.stringify(info, null, 2) + '\n');
  await rename(tmp, path);
}

async function resolveId(layout: HomeLayout, id: string): Promise<string> {
  if (!/^[0-9a-f]{1,12}$/.test(id)) throw new RoostError('INVALID_ARGUMENT', `"${id}" is not a sandbox id (12 hex digits, or a unique prefix)`);
  const ids = (await readdir(layout.sandboxes).catch(() => [] as string[])).filter((i) => ID_PATTERN.test(i) && i.startsWith(id));
  if (ids.length === 0) throw new RoostError('NOT_FOUND', `no sandbox ${id} in ${layout.root} (see \`roost ps\`)`);
  if (ids.length > 1) throw new RoostError('INVALID_ARGUMENT', `"${id}" matches ${ids.length} sandboxes: give more of the id`);
  return ids[0]!;
}

/** Turns a boot failure into BOOT_FAILED (or TIMEOUT / ABORTED) carrying the guest's last console lines. */
async function bootError(e: unknown, dir: string, timeoutMs: number, signal: AbortSignal): Promise<RoostError> {
  const consoleTail = await tail(join(dir, 'console.log'), 30);
  const vmmTail = await tail(join(dir, 'qemu.log'), 10);
  const details = { console: consoleTail, qemu: vmmTail, dir };
  const shown = [vmmTail.length ? `QEMU said:\n  ${vmmTail.join('\n  ')}` : '', consoleTail.length ? `last console lines:\n  ${consoleTail.slice(-10).join('\n  ')}` : 'the guest printed nothing on its console']
    .filter(Boolean)
    .join('\n');
  if (e instanceof RoostError && (e.code === 'SETUP_REQUIRED' || e.code === 'INVALID_ARGUMENT')) return e;
  if (signal.aborted && !(signal.reason instanceof Error && signal.reason.name === 'TimeoutError')) {
    return abortError(signal, 'sandbox creation');
  }
  const deadlineHit = signal.aborted && signal.reason instanceof Error && signal.reason.name === 'TimeoutError';
  if ((e instanceof RoostError && e.code === 'TIMEOUT') || deadlineHit) {
    return new RoostError('BOOT_FAILED', `the guest did not boot within ${timeoutMs} ms (raise timeoutMs on a loaded machine; see ${dir}/console.log)\n${shown}`, { cause: e, details });
  }
  const msg = e instanceof Error ? e.message : String(e);
  return new RoostError('BOOT_FAILED', `the sandbox failed to boot: ${msg}\n${shown}`, { cause: e, details });
}

async function tail(path: string, lines: number): Promise<string[]> {
  try {
    const text = await readFile(path, 'utf8');
    return text.split('\n').map((l) => l.replace(/\r$/, '')).filter((l) => l.trim()).slice(-lines);
  } catch {
    return [];
  }
}
