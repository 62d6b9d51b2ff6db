import { randomBytes } from 'node:crypto';
import { cpus as hostCpus, totalmem } from 'node:os';
import { access, mkdir, readFile, realpath, rm, stat } from 'node:fs/promises';
import { join, posix } from 'node:path';
import { CallFlags, HelloFlags } from '@roost/protocol';
import type { EventType, PullPolicy, SandboxApi, SandboxImage, SandboxInfo, SandboxStatus } from '@roost/api';
import { LabelsSchema, EnvSchema, VolumeMountSchema, VolumeNameSchema, type VolumeMount } from '@roost/api';
import { z } from 'zod';
import { AgentConnection } from './agent/connection.js';
import type { Assets } from './assets.js';
import { Commands, type CommandHooks } from './commands.js';
import { abortError, RoostError } from './errors.js';
import type { HomeLayout } from './home.js';
import type { ImageStore } from './image/store.js';
import type { PullProgress } from './image/manifest.js';
import type { EventInput, EventLog } from './state/events.js';
import type { SandboxRecords } from './state/sandboxes.js';
import { parseOptions } from './validate.js';
import { Files, runCall } from './files.js';
import type { Volumes } from './volumes.js';
import { chooseAccel } from './vmm/accel.js';
import { createDisk, DEFAULT_DISK_MIB, MAX_DISK_MIB, MIN_DISK_MIB } from './vmm/disk.js';
import { MAX_SHARES, QemuVmm } from './vmm/qemu.js';
import type { VmHandle, VmShare } from './vmm/types.js';

export type { SandboxInfo, SandboxStatus, SandboxImage, PullPolicy };

/** Options of `Sandbox.create` / `runtime.create`. */
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
  /** Labels to find it by (`roost ps --filter label=team=a`). */
  labels?: Record<string, string>;
  /**
   * Size of the sandbox's writable disk in MiB (default 4096). The disk is
   * sparse: it costs the host only what the guest writes. A full disk is
   * ENOSPC inside the guest.
   */
  diskSizeMiB?: number;
  /**
   * Keep running after the runtime that made it closes or dies (default
   * false: the VM dies with its owner, even on SIGKILL). A restarted runtime
   * re-attaches to it.
   */
  detached?: boolean;
  /**
   * Host directories (an absolute `source`, which must exist) and named
   * volumes (a `source` that is a volume name; created on first use) to
   * mount at `target` in the guest, over virtio-9p; at most 3 (MAX_VOLUMES). Targets are
   * absolute, normalized, distinct, and neither `/` nor under /proc, /sys or
   * /dev. A host directory is resolved (symlinks) once, here.
   */
  volumes?: VolumeMount[];
  /** How long booting may take before it fails (default 30 s; pulling the image and building its filesystem come before, bounded by `signal` only). */
  timeoutMs?: number;
  signal?: AbortSignal;
  /** Roost home (default $ROOST_HOME or ~/.roost); only for the static `Sandbox.create`. */
  home?: string;
}

const MAX_CPUS = 16; // the guest kernel's NR_CPUS

const sandboxOptionsSchema = z
  .object({
    cpus: z.number().int().min(1).max(MAX_CPUS).optional(),
    memoryMiB: z.number().int().min(64).max(Math.floor(totalmem() / 2 ** 20)).optional(),
    env: EnvSchema.optional(),
    labels: LabelsSchema.optional(),
    image: z.string().min(1).optional(),
    pull: z.enum(['missing', 'always', 'never']).optional(),
    onPullProgress: z.function().optional(),
    diskSizeMiB: z.number().int().min(MIN_DISK_MIB).max(MAX_DISK_MIB).optional(),
    detached: z.boolean().optional(),
    volumes: z.array(VolumeMountSchema).max(MAX_SHARES).optional(),
    timeoutMs: z.number().int().positive().optional(),
    signal: z.instanceof(AbortSignal).optional(),
    home: z.string().min(1).optional(),
  })
  .strict();

/** Runtime-wide counters a sandbox adds to. */
export interface RuntimeCounters {
  sandboxesCreated: number;
  sandboxesDestroyed: number;
  execs: number;
  execBytes: { stdin: number; stdout: number; stderr: number };
}

/**
 * @internal What a sandbox needs from the runtime that owns it: the records,
 * the event log, counters and images. One runtime owns a home at a time, so a
 * Sandbox object is the only writer of its record.
 */
export interface SandboxOwner {
  readonly home: string;
  readonly layout: HomeLayout;
  readonly records: SandboxRecords;
  readonly events: EventLog;
  readonly counters: RuntimeCounters;
  readonly images: ImageStore;
  readonly volumes: Volumes;
  assets(): Promise<Assets>;
  /** The sandbox has a record: the runtime lists it from now on (even if its boot then fails). */
  adopted(sandbox: Sandbox): void;
  /** The sandbox was removed: forget it. */
  released(id: string): void;
}

/**
 * A microVM sandbox: a QEMU process booting the Roost kernel with the agent
 * as PID 1. Run commands with `sandbox.commands`; end it with `stop()`,
 * `kill()`, `remove()` or `await using`.
 *
 * Get one from a `Runtime` (`runtime.create()`, `runtime.get()`), or from the
 * static helpers, which use the process's shared runtime of the home.
 */
export class Sandbox implements SandboxApi {
  readonly id: string;
  readonly commands: Commands;
  /** Files in the guest: read, write, list, watch (see FilesApi). */
  readonly files: Files;
  #info: SandboxInfo;
  #owner: SandboxOwner;
  #vm: VmHandle | null;
  #conn: Promise<AgentConnection> | null = null;
  /** Set while this process stops, kills or removes the VM on purpose. */
  #ending = false;
  #removed = false;
  /** Serializes lifecycle operations (start, stop, kill, remove). */
  #lifecycle: Promise<unknown> = Promise.resolve();

  private constructor(owner: SandboxOwner, info: SandboxInfo, vm: VmHandle | null) {
    this.id = info.id;
    this.#info = info;
    this.#owner = owner;
    this.#vm = null;
    this.commands = new Commands(
      () => this.#connection(),
      () => ({ env: this.#info.env, ...(this.#info.workingDir ? { cwd: this.#info.workingDir } : {}), ...(this.#info.user ? { user: this.#info.user } : {}) }),
      this.#commandHooks(),
    );
    // File operations run as the sandbox's user, like commands, but are not commands: no exec events or counts.
    this.files = new Files(
      () => this.#connection(),
      () => (this.#info.user ? { user: this.#info.user } : {}),
    );
    if (vm) this.#watch(vm);
  }

  /** Creates and boots a sandbox in the home's shared runtime; resolves once its agent answers. */
  static async create(options: SandboxOptions = {}): Promise<Sandbox> {
    const { Runtime } = await import('./runtime.js');
    const runtime = await Runtime.shared(options.home);
    const rest = { ...options };
    delete rest.home;
    return runtime.create(rest);
  }

  /** Finds a sandbox by id (or a unique id prefix) in the home's shared runtime. */
  static async get(id: string, options: { home?: string } = {}): Promise<Sandbox> {
    const { Runtime } = await import('./runtime.js');
    return (await Runtime.shared(options.home)).get(id);
  }

  /** Lists the sandboxes of a home, newest first. */
  static async list(options: { home?: string } = {}): Promise<SandboxInfo[]> {
    const { Runtime } = await import('./runtime.js');
    return (await Runtime.shared(options.home)).list();
  }

  /** @internal Validates options, prepares the image, records the sandbox and boots it. */
  static async _create(owner: SandboxOwner, options: SandboxOptions): Promise<Sandbox> {
    const opts = parseOptions(sandboxOptionsSchema, options, 'sandbox options') as SandboxOptions;
    const assets = await owner.assets();
    const accel = chooseAccel();
    const cpus = opts.cpus ?? 1;
    if (cpus > hostCpus().length && accel === 'kvm') {
      throw new RoostError('INVALID_ARGUMENT', `cpus: ${cpus} requested, the host has ${hostCpus().length}`);
    }
    // Checked before an image is pulled: bad input fails fast.
    const volumes = opts.volumes ? await resolveVolumes(opts.volumes, owner.home) : [];
    const image = opts.image ? await prepareImage(owner.images, opts) : undefined;
    const now = new Date().toISOString();
    const info: SandboxInfo = {
      id: newId(owner.records),
      status: 'creating',
      createdAt: now,
      startedAt: null,
      stoppedAt: null,
      cpus,
      memoryMiB: opts.memoryMiB ?? 256,
      diskSizeMiB: opts.diskSizeMiB ?? DEFAULT_DISK_MIB,
      detached: opts.detached ?? false,
      accel,
      pid: null,
      env: { ...image?.env, ...opts.env },
      labels: { ...opts.labels },
      ...(image ? { image: image.record } : {}),
      ...(image?.workingDir ? { workingDir: image.workingDir } : {}),
      ...(image?.user ? { user: image.user } : {}),
      ...(volumes.length > 0 ? { volumes } : {}),
      execs: 0,
    };
    // Recorded before QEMU starts, so a crash in between leaves a record to reap, not an orphan.
    await mkdir(owner.layout.sandbox(info.id), { recursive: true });
    const sb = new Sandbox(owner, info, null);
    // Named volumes are made (or found) in the transaction that records the sandbox: a concurrent
    // `volumes.remove` (another process, too: immediate takes the write lock first) sees the volume
    // in use, or removes it before this makes it again.
    owner.records.db
      .transaction(() => {
        for (const v of volumes) if (!isHostPath(v.source)) owner.volumes._ensure(v.source);
        sb.#save({}, 'sandbox.created', { data: { image: info.image?.reference ?? null, cpus, memoryMiB: info.memoryMiB, detached: info.detached, labels: info.labels } });
      })
      .immediate();
    owner.counters.sandboxesCreated++;
    owner.adopted(sb);
    const timeoutMs = opts.timeoutMs ?? 30_000;
    try {
      await sb.#boot(assets, image?.rootfs ?? assets.rootfs, await sb.#shares(), timeoutMs, opts.signal);
    } catch (e) {
      // A boot that never started QEMU leaves nothing worth keeping; one that did keeps its logs for `roost logs`.
      if (sb.#info.status === 'creating') await sb.remove({ force: true }).catch(() => {});
      throw e;
    }
    return sb;
  }

  /** @internal A sandbox found in the records when a runtime opens: attached to its running VM, or recorded as gone. */
  static _recover(owner: SandboxOwner, info: SandboxInfo): Sandbox {
    const dir = owner.layout.sandbox(info.id);
    const live = isLive(info.status);
    const vm = live && info.pid !== null ? new QemuVmm().attach(info.pid, dir) : null;
    const sb = new Sandbox(owner, info, null);
    if (!live) return sb;
    if (vm && info.status === 'running' && info.detached) {
      sb.#watch(vm);
      return sb;
    }
    if (vm) {
      // Half-booted, half-stopped, or bound to its dead owner: it cannot be trusted to be whole.
      vm.kill();
    }
    const reason = !vm
      ? info.detached
        ? 'the VM process is gone (it crashed or was killed while no runtime watched it)'
        : 'its runtime exited, and the VM with it'
      : info.status === 'creating'
        ? 'the runtime exited while it booted'
        : info.status === 'stopping'
          ? 'stopped'
          : 'its runtime exited';
    const status: SandboxStatus = info.status === 'stopping' || (!info.detached && info.status === 'running') ? 'stopped' : 'failed';
    sb.#save({ status, pid: null, reason, stoppedAt: new Date().toISOString() }, status === 'failed' ? 'sandbox.failed' : 'sandbox.exited', { data: { reason, recovered: true } });
    return sb;
  }

  /** A copy of what is recorded about this sandbox. */
  get info(): SandboxInfo {
    return structuredClone(this.#info);
  }

  get status(): SandboxStatus {
    return this.#info.status;
  }

  /** The sandbox's directory: sockets, console log, disk. */
  get dir(): string {
    return this.#owner.layout.sandbox(this.id);
  }

  /** The guest's serial console log (kernel messages, agent diagnostics). */
  get consoleLogPath(): string {
    return join(this.dir, 'console.log');
  }

  /** The record as it is now (the embedded runtime keeps it current; this also re-reads the database). */
  async refresh(): Promise<SandboxInfo> {
    const rec = this.#owner.records.get(this.id);
    if (rec) this.#info = rec;
    return this.info;
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

  /** The QEMU process's pid while the VM runs, else null. */
  get vmPid(): number | null {
    return this.#vm && !this.#vm.hasExited ? this.#vm.pid : null;
  }

  /** Round trip to the agent in ms. */
  async ping(timeoutMs = 5_000): Promise<number> {
    return (await this.#connection()).ping(timeoutMs);
  }

  /**
   * Boots a stopped (or failed) sandbox again, on the disk it had: what it
   * wrote is still there, its processes are not. A running one is left as is.
   */
  start(options: { timeoutMs?: number; signal?: AbortSignal } = {}): Promise<void> {
    return this.#serialize(async () => {
      this.#checkNotRemoved();
      if (this.#info.status === 'running') return;
      if (isLive(this.#info.status)) throw new RoostError('INVALID_STATE', `sandbox ${this.id} is ${this.#info.status}: wait for it to finish`);
      const assets = await this.#owner.assets();
      let rootfs = assets.rootfs;
      if (this.#info.image) {
        if (!this.#owner.images.find(this.#info.image.id)) {
          throw new RoostError('NOT_FOUND', `sandbox ${this.id} runs image ${this.#info.image.reference} (${this.#info.image.id}), which is no longer stored: pull it again to start the sandbox`);
        }
        rootfs = await this.#owner.images.rootfs(this.#info.image.id, options.signal ? { signal: options.signal } : {});
      }
      // A host directory that went away is reported before the sandbox is touched.
      const shares = await this.#shares();
      this.#ending = false;
      this.#save({ status: 'creating', reason: undefined, pid: null });
      await this.#boot(assets, rootfs, shares, options.timeoutMs ?? 30_000, options.signal);
    });
  }

  /**
   * Stops the sandbox: the agent ends its processes and powers the VM off;
   * after `timeoutMs` (default 10 s) the VM is killed.
   */
  stop(options: { timeoutMs?: number } = {}): Promise<void> {
    return this.#serialize(async () => {
      const timeoutMs = options.timeoutMs ?? 10_000;
      const vm = this.#vm;
      if (!vm || vm.hasExited) {
        if (isLive(this.#info.status)) this.#exited('stopped', 'stopped');
        return;
      }
      this.#ending = true;
      this.#save({ status: 'stopping' });
      try {
        const conn = await Promise.race([this.#connection(), sleep(Math.min(timeoutMs, 2_000)).then(() => null)]);
        conn?.poweroff();
      } catch {
        // No agent to ask: the kill below ends it.
      }
      // The agent ends processes, syncs and powers off. If it does not within
      // half the timeout, QEMU is asked to quit over QMP; at the timeout it is killed.
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
      this.#exited('stopped', 'stopped');
    });
  }

  /** Kills the VM at once. */
  kill(): Promise<void> {
    return this.#serialize(() => this.#kill('killed'));
  }

  /** Removes the sandbox: its record, disk and logs. A running sandbox needs `force` (it is killed). */
  remove(options: { force?: boolean } = {}): Promise<void> {
    return this.#serialize(async () => {
      if (this.#removed) return;
      if ((this.#vm && !this.#vm.hasExited) || this.#info.status === 'creating' || this.#info.status === 'stopping') {
        if (!options.force) throw new RoostError('INVALID_STATE', `sandbox ${this.id} is ${this.#info.status}: stop it first, or remove it with force`);
        await this.#kill('removed');
      }
      this.#removed = true;
      this.#owner.records.db.transaction(() => {
        this.#owner.records.delete(this.id);
        this.#owner.events.append('sandbox.deleted', { sandboxId: this.id, data: {} });
      })();
      this.#owner.counters.sandboxesDestroyed++;
      this.#owner.released(this.id);
      await rm(this.dir, { recursive: true, force: true });
    });
  }

  /** Closes this process's agent connection without stopping the sandbox (a later command reconnects). */
  disconnect(): void {
    this.#closeConnection();
  }

  /** Ends the sandbox: a detached one is only disconnected; any other is killed and removed. */
  async [Symbol.asyncDispose](): Promise<void> {
    if (this.#info.detached) this.disconnect();
    else await this.remove({ force: true });
  }

  /** @internal The runtime is closing: a detached sandbox is let go, any other is killed. */
  async _release(): Promise<void> {
    if (this.#info.detached || this.#removed) {
      this.#closeConnection();
      return;
    }
    await this.#serialize(() => this.#kill('its runtime closed')).catch(() => {});
  }

  // ---- internals -------------------------------------------------------------

  async #boot(assets: Assets, rootfs: string, shares: VmShare[], timeoutMs: number, userSignal?: AbortSignal): Promise<void> {
    const dir = this.dir;
    const deadline = AbortSignal.timeout(timeoutMs);
    const signal = userSignal ? AbortSignal.any([userSignal, deadline]) : deadline;
    const info = this.#info;
    let vm: VmHandle | null = null;
    try {
      if (signal.aborted) throw abortError(signal, 'sandbox creation');
      await mkdir(dir, { recursive: true });
      const disk = join(dir, 'disk.qcow2');
      if (!(await exists(disk))) await createDisk(this.#owner.layout.cache, disk, info.diskSizeMiB, signal);
      vm = await new QemuVmm().start({
        id: info.id, dir, cpus: info.cpus, memoryMiB: info.memoryMiB, kernel: assets.kernel, initramfs: assets.initramfs,
        rootfs, disk, kernelHz: assets.kernelHz, detached: info.detached, accel: info.accel, shares,
      });
      this.#vm = vm;
      this.#save({ pid: vm.pid });
      const runningVm = vm;
      const conn = await AgentConnection.connect(vm.paths.agentSocket, {
        flags: info.detached ? 0 : HelloFlags.POWEROFF_ON_DISCONNECT,
        timeoutMs,
        signal,
        vmExited: () => runningVm.hasExited,
      });
      try {
        await this.#mountVolumes(conn, shares, signal);
      } catch (e) {
        conn.close();
        throw e;
      }
      this.#watch(vm);
      this.#adopt(Promise.resolve(conn));
      this.#save({ status: 'running', startedAt: new Date().toISOString(), stoppedAt: null, agentVersion: conn.hello.agentVersion }, 'sandbox.started', {
        data: { pid: vm.pid, agentVersion: conn.hello.agentVersion },
      });
    } catch (e) {
      vm?.kill();
      await vm?.waitForExit();
      this.#vm = null;
      const err = await bootError(e, dir, timeoutMs, signal);
      if (vm) {
        const reason = err.message.split('\n')[0]!;
        this.#save({ status: 'failed', pid: null, reason, stoppedAt: new Date().toISOString() }, 'sandbox.failed', { data: { reason, code: err.code } });
      }
      throw err;
    }
  }

  /** The host side of the sandbox's volumes, in the order of `info.volumes` (share i has tag `roost.v<i>`). */
  async #shares(): Promise<VmShare[]> {
    const shares: VmShare[] = [];
    for (const [i, v] of (this.#info.volumes ?? []).entries()) {
      let path: string;
      if (isHostPath(v.source)) {
        path = v.source;
        const st = await stat(path).catch(() => null);
        if (!st?.isDirectory()) {
          throw new RoostError('NOT_FOUND', `sandbox ${this.id} mounts host directory ${path} at ${v.target}, which is no longer a directory: restore it (or remove the sandbox)`, {
            details: { source: path, target: v.target },
          });
        }
        // Resolved once, at create: a directory since replaced by a symlink is not followed somewhere else.
        const real = await realpath(path).catch(() => path);
        if (real !== path) {
          throw new RoostError('INVALID_STATE', `sandbox ${this.id} mounts host directory ${path} at ${v.target}, which is now a link to ${real}: restore the directory (or remove the sandbox)`, {
            details: { source: path, target: v.target },
          });
        }
      } else {
        path = this.#owner.volumes._ensure(v.source).path;
      }
      shares.push({ tag: `roost.v${i}`, path, readOnly: v.readOnly === true });
    }
    return shares;
  }

  /**
   * Mounts the volumes in the guest (the agent's `mount` call, as root),
   * parents before what is mounted below them. A failure fails the boot.
   */
  async #mountVolumes(conn: AgentConnection, shares: VmShare[], signal: AbortSignal): Promise<void> {
    const volumes = this.#info.volumes ?? [];
    const order = volumes.map((v, i) => ({ v, share: shares[i]! })).sort((a, b) => depth(a.v.target) - depth(b.v.target));
    for (const { v, share } of order) {
      try {
        await runCall(conn, { op: 'mount', args: [share.tag, v.target], flags: v.readOnly ? CallFlags.READ_ONLY : 0, user: '0' }, { signal });
      } catch (e) {
        if (signal.aborted) throw e;
        const why = e instanceof Error ? e.message : String(e);
        throw new RoostError('BOOT_FAILED', `cannot mount volume ${v.source} at ${v.target} in the guest: ${why}`, { cause: e, details: { source: v.source, target: v.target } });
      }
    }
  }

  async #kill(reason: string): Promise<void> {
    this.#ending = true;
    const vm = this.#vm;
    if (vm && !vm.hasExited) {
      vm.kill();
      await vm.waitForExit();
    }
    this.#closeConnection();
    if (isLive(this.#info.status)) this.#exited('stopped', reason);
  }

  /** Records that the VM is gone, once. */
  #exited(status: 'stopped' | 'failed', reason: string): void {
    if (!isLive(this.#info.status)) return;
    this.#save({ status, pid: null, reason, stoppedAt: new Date().toISOString() }, status === 'failed' ? 'sandbox.failed' : 'sandbox.exited', { data: { reason } });
  }

  #watch(vm: VmHandle): void {
    this.#vm = vm;
    void vm.exited.then(() => {
      if (this.#vm !== vm) return;
      this.#closeConnection();
      if (this.#ending || this.#removed) return;
      this.#exited('failed', this.#info.reason ?? 'the VM exited unexpectedly (the guest rebooted, powered off or crashed)');
    });
  }

  #serialize<T>(op: () => Promise<T>): Promise<T> {
    const run = this.#lifecycle.then(op, op);
    this.#lifecycle = run.catch(() => {});
    return run;
  }

  #checkNotRemoved(): void {
    if (this.#removed) throw new RoostError('NOT_FOUND', `sandbox ${this.id} was removed`);
  }

  #connection(): Promise<AgentConnection> {
    if (this.#conn) return this.#conn;
    if (this.#removed) return Promise.reject(new RoostError('NOT_FOUND', `sandbox ${this.id} was removed`));
    if (!this.#vm || this.#vm.hasExited || this.#info.status !== 'running') {
      return Promise.reject(new RoostError('INVALID_STATE', `sandbox ${this.id} is ${this.#info.status}${this.#info.reason ? ` (${this.#info.reason})` : ''}`));
    }
    const vm = this.#vm;
    const timeoutMs = 10_000;
    const conn = AgentConnection.connect(vm.paths.agentSocket, { flags: 0, timeoutMs, vmExited: () => vm.hasExited }).catch((e: unknown) => {
      if (e instanceof RoostError && e.code === 'TIMEOUT') {
        // QEMU serves one client on the agent socket at a time; a stuck guest or a stray client holds it.
        throw new RoostError('AGENT', `the agent of sandbox ${this.id} did not answer within ${timeoutMs / 1000} s: the guest is probably hung (see \`roost logs\`)`, { cause: e });
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
          if (this.#ending) return;
          this.#exited('failed', e.message);
          this.#vm?.kill();
        };
        c.on('violation', onBad);
        c.on('unresponsive', onBad);
        c.on('close', () => {
          if (this.#conn === conn) this.#conn = null;
          if (!this.#ending && !c.closedByHost) {
            this.#exited('failed', 'the guest agent went away');
            this.#vm?.kill();
          }
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

  /** Applies a change to the record and writes it, with an event in the same transaction. */
  #save(patch: Partial<SandboxInfo>, event?: EventType, input: EventInput = {}): void {
    if (this.#removed) return;
    const next = { ...this.#info, ...patch };
    for (const k of Object.keys(patch) as (keyof SandboxInfo)[]) if (patch[k] === undefined) delete next[k];
    const records = this.#owner.records;
    records.db.transaction(() => {
      records.put(next);
      if (event) this.#owner.events.append(event, { ...input, sandboxId: this.id, ...(next.image ? { imageId: next.image.id } : {}) });
    })();
    this.#info = next;
  }

  #commandHooks(): CommandHooks {
    const counters = this.#owner.counters;
    return {
      started: (cmd) => {
        counters.execs++;
        this.#save({ execs: this.#info.execs + 1 }, 'exec.started', { data: { execId: cmd.id, pid: cmd.pid, argv: cmd.argv.map((a) => a.slice(0, 256)).slice(0, 32) } });
      },
      exited: (cmd) => {
        if (this.#removed) return;
        this.#owner.events.append('exec.exited', { sandboxId: this.id, data: { ...cmd } });
      },
      bytes: (stream, n) => {
        counters.execBytes[stream] += n;
      },
    };
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
async function prepareImage(store: ImageStore, opts: SandboxOptions): Promise<PreparedImage> {
  const reference = opts.image!;
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

/** Guest paths no volume may be mounted on or below: the kernel's own file systems. */
const RESERVED_TARGETS = ['/proc', '/sys', '/dev'];

/** True for a volume source that is a host directory (else it names a volume). */
function isHostPath(source: string): boolean {
  return source.startsWith('/');
}

function depth(path: string): number {
  return path.split('/').length;
}

/**
 * Checks the volumes of a sandbox to be: targets absolute, normalized,
 * distinct and not reserved; host directories existing (resolved with
 * realpath once, here: that is what is recorded and mounted), names valid.
 */
async function resolveVolumes(volumes: readonly VolumeMount[], home: string): Promise<VolumeMount[]> {
  if (volumes.length > MAX_SHARES) throw new RoostError('INVALID_ARGUMENT', `volumes: at most ${MAX_SHARES}, not ${volumes.length}`);
  const realHome = await realpath(home).catch(() => home);
  const targets = new Set<string>();
  const out: VolumeMount[] = [];
  for (const [i, v] of volumes.entries()) {
    const where = `volumes[${i}]`;
    const bad = (message: string, field: 'source' | 'target') => new RoostError('INVALID_ARGUMENT', `${where}.${field}: ${message}`, { details: { field: `volumes.${i}.${field}`, source: v.source, target: v.target } });
    const t = v.target;
    if (!t.startsWith('/')) throw bad(`the guest path "${t}" must be absolute`, 'target');
    if (t.includes('\0')) throw bad('the guest path contains a NUL byte', 'target');
    if (Buffer.byteLength(t) > 4095) throw bad('the guest path is longer than 4095 bytes', 'target');
    const normal = posix.normalize(t).replace(/(.)\/+$/, '$1');
    if (normal !== t) throw bad(`the guest path "${t}" is not normalized: write it as "${normal}"`, 'target');
    if (t === '/') throw bad('a volume cannot be mounted on / (the guest\'s root)', 'target');
    const reserved = RESERVED_TARGETS.find((r) => t === r || t.startsWith(r + '/'));
    if (reserved) throw bad(`${t} is under ${reserved}, which belongs to the guest kernel`, 'target');
    if (targets.has(t)) throw bad(`two volumes are mounted at ${t}`, 'target');
    targets.add(t);

    let source: string;
    if (isHostPath(v.source)) {
      if (v.source.includes('\0')) throw bad('the host path contains a NUL byte', 'source');
      try {
        source = await realpath(v.source);
      } catch (e) {
        const code = (e as NodeJS.ErrnoException).code;
        throw bad(code === 'ENOENT' ? `the host directory ${v.source} does not exist` : `cannot resolve the host directory ${v.source}: ${(e as Error).message}`, 'source');
      }
      const st = await stat(source).catch((e: Error) => {
        throw bad(`cannot read the host directory ${v.source}: ${e.message}`, 'source');
      });
      if (!st.isDirectory()) throw bad(`${v.source}${source !== v.source ? ` (${source})` : ''} is not a directory`, 'source');
      if (source === realHome || source.startsWith(realHome + '/')) {
        throw bad(`${v.source} is inside the Roost home ${home} (sandbox disks, sockets, the API token): use a named volume instead`, 'source');
      }
    } else {
      const r = VolumeNameSchema.safeParse(v.source);
      if (!r.success) throw bad(`"${v.source}" is neither an absolute host directory nor a volume name (${r.error.issues[0]?.message ?? 'invalid'})`, 'source');
      source = v.source;
    }
    out.push({ source, target: t, readOnly: v.readOnly === true });
  }
  return out;
}

function newId(records: SandboxRecords): string {
  for (;;) {
    const id = randomBytes(6).toString('hex');
    if (!records.get(id)) return id;
  }
}

/** True while a sandbox has (or is getting, or is losing) a VM. */
export function isLive(status: SandboxStatus): boolean {
  return status === 'creating' || status === 'running' || status === 'stopping';
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms).unref());
}

async function exists(path: string): Promise<boolean> {
  return access(path).then(
    () => true,
    () => false,
  );
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
