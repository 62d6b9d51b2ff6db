import { createHash, randomBytes } from 'node:crypto';
import { cpus as hostCpus } from 'node:os';
import { access, copyFile, mkdir, readFile, realpath, rename, rm, stat, writeFile } from 'node:fs/promises';
import { join, posix } from 'node:path';
import { CallFlags, HelloFlags } from '@roost/protocol';
import type { EventType, PullPolicy, SandboxApi, SandboxImage, SandboxInfo, SandboxStatus, SnapshotInfo, SnapshotKind } from '@roost/api';
import { MAX_FORK_COUNT, SNAPSHOT_NAME_RE, VolumeNameSchema, type VolumeMount } from '@roost/api';
import { hostForPort, ZERO_NETWORK_STATS } from '@roost/api';
import type { EgressSpec, NetworkMode, NetworkStats, PortBinding, PortMapping, PortProtocol, PortSpec, PortsApi } from '@roost/api';
import type { BridgeNetwork } from './net/bridge-network.js';
import type { RuntimeNetwork } from './net/runtime-network.js';
import { planNetwork, SandboxNet } from './net/sandbox-net.js';
import { AgentConnection } from './agent/connection.js';
import type { Assets } from './assets.js';
import { Commands, type CommandHooks } from './commands.js';
import { abortError, RoostError } from './errors.js';
import type { HomeLayout } from './home.js';
import type { ImageStore } from './image/store.js';
import type { PullProgress } from './image/manifest.js';
import type { EventInput, EventLog } from './state/events.js';
import type { SandboxRecords } from './state/sandboxes.js';
import { parseOptions, sandboxOptionsSchema } from './validate.js';
import { readConsoleLog } from './console-log.js';
import { Files, runCall } from './files.js';
import type { Volumes } from './volumes.js';
import { chooseAccel } from './vmm/accel.js';
import { createDisk, DEFAULT_DISK_MIB } from './vmm/disk.js';
import { MAX_SHARES, MEMORY_BACKEND_MEMFD_NAME, QemuVmm, vmPaths } from './vmm/qemu.js';
import { copyHashed, findRam, saveRam, type SavedRam } from './snapshot/memory.js';
import { buildIdentity, currentQemuVersion, SNAPSHOT_FILES, SNAPSHOT_FORMAT, type SnapshotRecord, type SnapshotStore } from './snapshot/store.js';
import { runTool } from './tool.js';
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
  /**
   * Restore this snapshot (name or id) instead of booting: memory, running
   * processes and disk as they were. The image, cpus, memory and disk size
   * are the snapshot's: giving any of them (or volumes) is INVALID_ARGUMENT.
   */
  snapshot?: string;
  /** Start from this template's warm snapshot (built on first use); see `runtime.templates`. */
  template?: string;
  /**
   * The network: `user` (the default: user-mode NAT run by Roost on the host,
   * no root needed), `bridge` (a TAP on a Linux bridge with an address leased
   * from its subnet; needs root) or `none` (no NIC).
   */
  network?: NetworkMode;
  /**
   * Guest ports to publish on the host, as `docker run -p` writes them
   * (`8080:80`, `127.0.0.1::80` for a free port, `5353:53/udp`) or objects.
   * Bound to 127.0.0.1 unless another address is named. See `ports` and `getHost`.
   */
  ports?: PortSpec[];
  /**
   * Which connections the guest may open, enforced on the host: `allow`
   * (the default), `deny`, or `{ default, allow, deny }` with rules like
   * `10.0.0.0/8`, `example.com:443`, `*.npmjs.org`, `*:53/udp` or `host`.
   * Denied connections fail at once in the guest (EHOSTUNREACH), are counted
   * and reported as `network.denied` events.
   */
  egress?: EgressSpec;
  /** How long booting may take before it fails (default 30 s; pulling the image and building its filesystem come before, bounded by `signal` only). */
  timeoutMs?: number;
  signal?: AbortSignal;
  /** Roost home (default $ROOST_HOME or ~/.roost); only for the static `Sandbox.create`. */
  home?: string;
}

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
  readonly snapshots: SnapshotStore;
  /** Bridge mode's bridge and leases. */
  readonly network: RuntimeNetwork;
  assets(): Promise<Assets>;
  /** Creates a sandbox through the runtime (its limits and tracking): forks use it. */
  create(options: SandboxOptions): Promise<Sandbox>;
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
  /** The network of the VM run this process serves (null while stopped, or without a NIC). */
  #net: SandboxNet | null = null;
  /** Settles when the last network closed has let go of its host devices (a bridge TAP). */
  #netClosed: Promise<void> = Promise.resolve();
  /** Ports asked for at create, bound at the first boot. */
  #pendingPorts: Required<PortMapping>[] | null = null;
  /** Published ports: add, list and remove them while the sandbox runs. */
  readonly ports: PortsApi;

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
    this.ports = {
      add: (spec) => this.#addPort(spec),
      list: () => Promise.resolve(this.#info.network?.ports.map((p) => ({ ...p })) ?? []),
      remove: (port) => this.#removePort(port),
    };
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
    if (opts.template !== undefined) throw new RoostError('INTERNAL', 'templates are resolved by the runtime');
    if (opts.snapshot !== undefined) return Sandbox.#restore(owner, opts);
    const assets = await owner.assets();
    const accel = chooseAccel();
    const cpus = opts.cpus ?? 1;
    if (cpus > hostCpus().length && accel === 'kvm') {
      throw new RoostError('INVALID_ARGUMENT', `cpus: ${cpus} requested, the host has ${hostCpus().length}`);
    }
    // Checked before an image is pulled: bad input fails fast.
    const volumes = opts.volumes ? await resolveVolumes(opts.volumes, owner.home) : [];
    const plan = planNetwork(opts);
    checkVolumeCount(volumes.length, plan.info.mode);
    // Privileges and the bridge are checked before an image is pulled.
    const bridge = plan.info.mode === 'bridge' ? await owner.network.bridge() : null;
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
      network: plan.info,
      execs: 0,
    };
    // Recorded before QEMU starts, so a crash in between leaves a record to reap, not an orphan.
    await makeSandboxDir(owner, info, bridge);
    const sb = new Sandbox(owner, info, null);
    sb.#pendingPorts = plan.ports;
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

  /** Creates a sandbox from a snapshot: a new VM that resumes the snapshot's memory, devices and disk. */
  static async #restore(owner: SandboxOwner, opts: SandboxOptions): Promise<Sandbox> {
    checkRestoreOptions(opts, 'restored from a snapshot', "the snapshot's");
    const rec = owner.snapshots.get(opts.snapshot!);
    const assets = await owner.assets();
    const accel = chooseAccel();
    let rootfs = assets.rootfs;
    if (rec.image) {
      if (!owner.images.find(rec.image.id)) {
        throw new RoostError('NOT_FOUND', `snapshot ${rec.name} runs image ${rec.image.reference} (${rec.image.id}), which is no longer stored: pull it again to restore the snapshot`);
      }
      rootfs = await owner.images.rootfs(rec.image.id, opts.signal ? { signal: opts.signal } : {});
    }
    await owner.snapshots.verify(rec, assets, accel, rootfs, opts.signal);
    // The NIC is part of the saved devices: the copy has the snapshot's network mode, and its own MAC and address.
    const snapshotMode: NetworkMode = rec.manifest.network ?? 'none';
    if (opts.network !== undefined && opts.network !== snapshotMode) {
      throw new RoostError('INVALID_ARGUMENT', `network: snapshot ${rec.name} was taken with network '${snapshotMode}', and a restored sandbox has the snapshot's devices: leave network out, or give '${snapshotMode}'`, { details: { field: 'network' } });
    }
    const plan = planNetwork({ ...opts, network: snapshotMode });
    // In user mode every sandbox has a network of its own (no shared segment), so a copy keeps the
    // snapshot's MAC: its guest then has nothing to reconfigure when it connects. On a bridge a
    // copy gets its own lease and MAC.
    if (plan.info.mode === 'user' && rec.manifest.mac) plan.info.mac = rec.manifest.mac;
    const bridge = plan.info.mode === 'bridge' ? await owner.network.bridge() : null;
    const now = new Date().toISOString();
    const info: SandboxInfo = {
      id: newId(owner.records),
      status: 'creating',
      createdAt: now,
      startedAt: null,
      stoppedAt: null,
      cpus: rec.cpus,
      memoryMiB: rec.memoryMiB,
      diskSizeMiB: rec.diskSizeMiB,
      detached: opts.detached ?? false,
      accel,
      pid: null,
      env: { ...rec.env, ...opts.env },
      labels: { ...opts.labels },
      ...(rec.image ? { image: rec.image } : {}),
      ...(rec.workingDir ? { workingDir: rec.workingDir } : {}),
      ...(rec.user ? { user: rec.user } : {}),
      snapshot: rec.id,
      network: plan.info,
      execs: 0,
    };
    await makeSandboxDir(owner, info, bridge);
    const sb = new Sandbox(owner, info, null);
    sb.#pendingPorts = plan.ports;
    // Recorded with its snapshot in one statement: from here the snapshot counts it as a dependent.
    sb.#save({}, 'sandbox.created', { data: { snapshot: rec.name, snapshotId: rec.id, cpus: info.cpus, memoryMiB: info.memoryMiB, detached: info.detached, labels: info.labels } });
    owner.counters.sandboxesCreated++;
    owner.adopted(sb);
    try {
      await sb.#boot(assets, rootfs, [], opts.timeoutMs ?? 30_000, opts.signal, rec);
    } catch (e) {
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
    if (vm && (info.status === 'running' || info.status === 'paused') && info.detached) {
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
    const status: SandboxStatus = info.status === 'stopping' || (!info.detached && (info.status === 'running' || info.status === 'paused')) ? 'stopped' : 'failed';
    sb.#save({ status, pid: null, reason, stoppedAt: new Date().toISOString() }, status === 'failed' ? 'sandbox.failed' : 'sandbox.exited', { data: { reason, recovered: true } });
    return sb;
  }

  /**
   * @internal After a recover: a runtime that died in the middle of a
   * snapshot left the VM stopped and its disk frozen. A VM recorded as
   * running is continued, and connected to, which thaws the guest (the agent
   * treats the new host as a restore).
   */
  async _reconcile(): Promise<void> {
    if (this.#info.status !== 'running' || !this.#vm || this.#vm.hasExited) return;
    try {
      const qmp = await this.#vm.qmp(AbortSignal.timeout(5_000));
      const { status } = await qmp.execute<{ status: string }>('query-status', undefined, 5_000);
      if (status !== 'paused') return;
      await qmp.execute('cont', undefined, 5_000);
      await this.#connection();
    } catch {
      // Left to the liveness checks of the next connection.
    }
  }

  /** `host:port` where the host reaches guest port `port` (see SandboxApi.getHost). */
  getHost(port: number, protocol: PortProtocol = 'tcp'): string {
    return hostForPort(this.#info, port, protocol);
  }

  /** Traffic through the sandbox's NIC since its VM run started here, and denied connections. */
  async networkStats(): Promise<NetworkStats> {
    return this.#net ? this.#net.stats() : { ...ZERO_NETWORK_STATS };
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

  /** Its serial console log, or its last `tail` lines (at most the log's last MiB). */
  logs(options: { tail?: number; signal?: AbortSignal } = {}): Promise<string> {
    return readConsoleLog(this.consoleLogPath, options);
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
   * Pauses the sandbox: its vCPUs stop, its memory and processes stay, and
   * commands sent meanwhile wait until `resume()`. INVALID_STATE unless running.
   */
  pause(): Promise<void> {
    return this.#serialize(async () => {
      this.#checkNotRemoved();
      if (this.#info.status === 'paused') return;
      if (this.#info.status !== 'running') throw new RoostError('INVALID_STATE', `sandbox ${this.id} is ${this.#info.status}: only a running sandbox can be paused`);
      await this.#qmp('stop');
      this.#holdLiveness(true);
      this.#save({ status: 'paused' }, 'sandbox.paused');
    });
  }

  /** Resumes a paused sandbox exactly where it was (a running one is left as is). */
  resume(): Promise<void> {
    return this.#serialize(async () => {
      this.#checkNotRemoved();
      if (this.#info.status === 'running') return;
      if (this.#info.status !== 'paused') throw new RoostError('INVALID_STATE', `sandbox ${this.id} is ${this.#info.status}: only a paused sandbox can be resumed`);
      await this.#qmp('cont');
      this.#holdLiveness(false);
      this.#save({ status: 'running' }, 'sandbox.resumed');
    });
  }

  /**
   * Saves the sandbox as a snapshot: its memory, device state and writable
   * disk, taken while its vCPUs are stopped (about as long as copying the
   * memory it has touched), with its disk frozen by the guest around it. The
   * sandbox then runs on (or stays paused). Restore it with
   * `runtime.create({ snapshot: name })`.
   */
  async snapshot(options: { name?: string; timeoutMs?: number; signal?: AbortSignal } = {}): Promise<SnapshotInfo> {
    // Default: <id>-<UTC time to the millisecond>, e.g. 3f2a9c0d1b7e-20261122T115323123.
    const name = options.name ?? `${this.id}-${new Date().toISOString().replace(/[-:.Z]/g, '')}`;
    if (!SNAPSHOT_NAME_RE.test(name)) {
      throw new RoostError('INVALID_ARGUMENT', `snapshot name "${name}": use 1-128 letters, digits, "_", "." and "-", starting with a letter or digit`, { details: { field: 'name' } });
    }
    return this.#serialize(async () => this.#owner.snapshots.info(await this.#takeSnapshot(name, 'user', options.timeoutMs ?? 60_000, options.signal)));
  }

  /**
   * Makes `count` (default 1) running copies of this sandbox: each has its
   * own id, disk layer and memory (shared copy-on-write with its siblings
   * until written), its processes running on, a clock set to now and a
   * reseeded random pool. This sandbox runs on. The copies depend on a
   * snapshot of kind `fork`, removed with the last of them.
   */
  async fork(options: { count?: number; labels?: Record<string, string>; detached?: boolean; timeoutMs?: number; signal?: AbortSignal } = {}): Promise<Sandbox[]> {
    const count = options.count ?? 1;
    if (!Number.isInteger(count) || count < 1 || count > MAX_FORK_COUNT) {
      throw new RoostError('INVALID_ARGUMENT', `count: a whole number from 1 to ${MAX_FORK_COUNT}, not ${count}`, { details: { field: 'count' } });
    }
    const timeoutMs = options.timeoutMs ?? 60_000;
    const name = `fork-${this.id}-${Date.now().toString(36)}${randomBytes(2).toString('hex')}`;
    const rec = await this.#serialize(() => this.#takeSnapshot(name, 'fork', timeoutMs, options.signal));
    const results = await Promise.allSettled(
      Array.from({ length: count }, () =>
        this.#owner.create({
          snapshot: rec.id,
          labels: options.labels ?? this.#info.labels,
          detached: options.detached ?? this.#info.detached,
          // Copies keep the source's egress policy (not its published ports: a host port has one listener).
          ...(this.#info.network && this.#info.network.mode !== 'none' ? { egress: this.#info.network.egress } : {}),
          timeoutMs,
          ...(options.signal ? { signal: options.signal } : {}),
        }),
      ),
    );
    const made = results.flatMap((r) => (r.status === 'fulfilled' ? [r.value] : []));
    const failed = results.find((r): r is PromiseRejectedResult => r.status === 'rejected');
    if (failed) {
      // All or nothing: the copies that did start are removed, and the fork's snapshot with the last.
      await Promise.allSettled(made.map((sb) => sb.remove({ force: true })));
      await this.#owner.snapshots.removeIfUnused(rec.id);
      throw failed.reason;
    }
    return made;
  }

  /** @internal A snapshot of a given kind (templates build theirs with it). */
  _snapshot(name: string, kind: SnapshotKind, options: { template?: string; timeoutMs?: number; signal?: AbortSignal } = {}): Promise<SnapshotRecord> {
    return this.#serialize(() => this.#takeSnapshot(name, kind, options.timeoutMs ?? 60_000, options.signal, options.template));
  }

  /** Takes a snapshot; called serialized with the lifecycle. */
  async #takeSnapshot(name: string, kind: SnapshotKind, timeoutMs: number, userSignal?: AbortSignal, template?: string): Promise<SnapshotRecord> {
    this.#checkNotRemoved();
    const info = this.#info;
    const vm = this.#vm;
    if ((info.status !== 'running' && info.status !== 'paused') || !vm || vm.hasExited) {
      throw new RoostError('INVALID_STATE', `sandbox ${this.id} is ${info.status}: only a running or paused sandbox can be snapshotted`);
    }
    if (info.volumes?.length) {
      throw new RoostError('INVALID_STATE', `sandbox ${this.id} mounts volumes: their 9P state lives in QEMU and the host, so sandboxes with volumes cannot be snapshotted or forked`);
    }
    const store = this.#owner.snapshots;
    store.checkNameFree(name);
    const deadline = AbortSignal.timeout(timeoutMs);
    const signal = userSignal ? AbortSignal.any([userSignal, deadline]) : deadline;
    const [assets, qemuVersion] = await Promise.all([this.#owner.assets(), currentQemuVersion()]);
    const rootfs = info.image ? await this.#owner.images.rootfs(info.image.id, { signal }) : assets.rootfs;
    const rootfsSize = (await stat(rootfs)).size;
    const id = store.newId();
    const tmp = join(this.#owner.layout.snapshots, `.tmp-${id}`);
    await mkdir(tmp, { recursive: true });
    try {
      const conn = await this.#connection();
      const qmp = await vm.qmp(signal);
      const wasPaused = info.status === 'paused';
      // The guest syncs and freezes its disk, and marks itself as being
      // snapshotted (a restored copy then keeps its processes). A paused
      // guest runs for these moments and is paused again after.
      let running = !wasPaused;
      let freezeSent = false;
      let frozen = false;
      let saved: SavedRam;
      let disk: { size: number; sha256: string };
      const memBytes = info.memoryMiB * 2 ** 20;
      try {
        if (!running) {
          await qmp.execute('cont');
          running = true;
        }
        freezeSent = true;
        const answer = await conn.freeze(Math.min(timeoutMs, 10_000)).catch((e: unknown) => {
          if (e instanceof RoostError && e.code === 'TIMEOUT') return null;
          throw e;
        });
        frozen = answer?.errno === 0;
        await qmp.execute('stop');
        running = false;
        const parentMemory = info.snapshot ? join(store.dir(info.snapshot), SNAPSHOT_FILES.memory) : undefined;
        const ram = await findRam(vm.pid, memBytes, MEMORY_BACKEND_MEMFD_NAME).catch((e: unknown) => {
          if (!parentMemory) throw e;
          return findRam(vm.pid, memBytes, MEMORY_BACKEND_MEMFD_NAME, parentMemory);
        });
        [, saved, disk] = await Promise.all([
          qmp.execute('xen-save-devices-state', { filename: join(tmp, SNAPSHOT_FILES.state), live: false }, timeoutMs),
          saveRam(ram, memBytes, join(tmp, SNAPSHOT_FILES.memory)),
          copyHashed(join(this.dir, 'disk.qcow2'), join(tmp, SNAPSHOT_FILES.disk)),
        ]);
      } finally {
        // Whatever happened, the guest is left as it was: running (or paused), thawed, not marked.
        if (!running) await qmp.execute('cont').catch(() => {});
        if (freezeSent) await conn.thaw(10_000).catch(() => {});
        if (wasPaused) await qmp.execute('stop').catch(() => {});
      }
      const state = await readFile(join(tmp, SNAPSHOT_FILES.state));
      // Restores copy this empty layer over the snapshot's disk instead of running qemu-img each time.
      // -u: the backing path is where the disk will be once this directory is renamed into place.
      await runTool('qemu-img', ['create', '-q', '-f', 'qcow2', '-F', 'qcow2', '-u', '-b', join(store.dir(id), SNAPSHOT_FILES.disk), join(tmp, SNAPSHOT_FILES.overlay), `${info.diskSizeMiB}M`], {
        pkg: 'qemu-utils',
        code: 'VMM',
        signal,
      });
      const rec: SnapshotRecord = {
        id,
        name,
        kind,
        createdAt: new Date().toISOString(),
        sourceSandbox: this.id,
        parent: info.snapshot ?? null,
        ...(info.image ? { image: info.image } : {}),
        cpus: info.cpus,
        memoryMiB: info.memoryMiB,
        diskSizeMiB: info.diskSizeMiB,
        env: info.env,
        ...(info.workingDir ? { workingDir: info.workingDir } : {}),
        ...(info.user ? { user: info.user } : {}),
        sizeBytes: saved.dataBytes + state.length + disk.size,
        frozen,
        accel: info.accel,
        qemuVersion,
        agentVersion: info.agentVersion ?? '',
        ...(template ? { template } : {}),
        manifest: {
          format: SNAPSHOT_FORMAT,
          qemuVersion,
          ...buildIdentity(assets),
          accel: info.accel,
          network: info.network?.mode ?? 'none',
          ...(info.network?.mac ? { mac: info.network.mac } : {}),
          rootfs: { path: rootfs, size: rootfsSize },
          files: {
            memory: { size: memBytes, checksum: saved.checksum },
            state: { size: state.length, sha256: createHash('sha256').update(state).digest('hex') },
            disk,
          },
        },
      };
      await writeFile(join(tmp, SNAPSHOT_FILES.manifest), JSON.stringify(rec.manifest, null, 2) + '\n');
      await rename(tmp, store.dir(id));
      store.markVerified(id, await store.identity(id));
      this.#owner.records.db.transaction(() => {
        store.insert(rec);
        this.#owner.events.append('snapshot.created', { sandboxId: this.id, data: { snapshot: name, snapshotId: id, kind, sizeBytes: rec.sizeBytes, frozen } });
      })();
      return rec;
    } catch (e) {
      await rm(tmp, { recursive: true, force: true });
      await rm(store.dir(id), { recursive: true, force: true }).catch(() => {});
      if (signal.aborted && !(e instanceof RoostError && e.code !== 'ABORTED' && e.code !== 'TIMEOUT')) {
        throw deadline.aborted ? new RoostError('TIMEOUT', `the snapshot of sandbox ${this.id} took longer than ${timeoutMs} ms`, { cause: e }) : abortError(signal, 'the snapshot');
      }
      throw e;
    }
  }

  /** Runs a QMP command on the sandbox's VM. */
  async #qmp(command: string): Promise<unknown> {
    const vm = this.#vm;
    if (!vm || vm.hasExited) throw new RoostError('INVALID_STATE', `sandbox ${this.id} has no running VM`);
    return (await vm.qmp()).execute(command);
  }

  /** While paused, the agent cannot answer pings: the connection must not declare it dead. */
  #holdLiveness(hold: boolean): void {
    void this.#conn?.then((c) => c.holdLiveness(hold)).catch(() => {});
  }

  /**
   * Boots a stopped (or failed) sandbox again, on the disk it had: what it
   * wrote is still there, its processes are not. A running one is left as is.
   */
  start(options: { timeoutMs?: number; signal?: AbortSignal } = {}): Promise<void> {
    return this.#serialize(async () => {
      this.#checkNotRemoved();
      if (this.#info.status === 'running' || this.#info.status === 'paused') return;
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
      const wasPaused = this.#info.status === 'paused';
      this.#save({ status: 'stopping' });
      // A paused guest cannot power itself off: let it run for that.
      if (wasPaused) await this.#qmp('cont').catch(() => {});
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
      this.#closeNet(true);
      await this.#netClosed;
      this.#owner.records.db.transaction(() => {
        this.#owner.records.delete(this.id);
        if (this.#info.network?.mode === 'bridge') this.#owner.network.releaseLease(this.id);
        this.#owner.events.append('sandbox.deleted', { sandboxId: this.id, data: {} });
      })();
      this.#owner.counters.sandboxesDestroyed++;
      this.#owner.released(this.id);
      await rm(this.dir, { recursive: true, force: true });
      // The snapshot of a fork goes with its last copy.
      if (this.#info.snapshot) await this.#owner.snapshots.removeIfUnused(this.#info.snapshot).catch(() => {});
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
      // The VM runs on: a bridge TAP stays; ports and the user-mode network wait for the next runtime.
      this.#closeNet(false);
      return;
    }
    await this.#serialize(() => this.#kill('its runtime closed')).catch(() => {});
  }

  // ---- internals -------------------------------------------------------------

  /** Boots the VM, or resumes `restore` (a snapshot) in it; resolves once the agent answers. */
  async #boot(assets: Assets, rootfs: string, shares: VmShare[], timeoutMs: number, userSignal?: AbortSignal, restore?: SnapshotRecord): Promise<void> {
    const dir = this.dir;
    const deadline = AbortSignal.timeout(timeoutMs);
    const signal = userSignal ? AbortSignal.any([userSignal, deadline]) : deadline;
    const info = this.#info;
    let vm: VmHandle | null = null;
    try {
      if (signal.aborted) throw abortError(signal, 'sandbox creation');
      await mkdir(dir, { recursive: true });
      const disk = join(dir, 'disk.qcow2');
      const snapshotDir = restore ? this.#owner.snapshots.dir(restore.id) : null;
      if (snapshotDir) {
        // An empty qcow2 layer over the snapshot's disk, made once with the snapshot.
        await copyFile(join(snapshotDir, SNAPSHOT_FILES.overlay), disk);
      } else if (!(await exists(disk))) {
        await createDisk(this.#owner.layout.cache, disk, info.diskSizeMiB, signal);
      }
      // Published ports are bound before QEMU starts: a port in use fails the create before a VM is spent on it.
      const snet = await this.#openNet();
      vm = await new QemuVmm().start({
        id: info.id, dir, cpus: info.cpus, memoryMiB: info.memoryMiB, kernel: assets.kernel, initramfs: assets.initramfs,
        rootfs, disk, kernelHz: assets.kernelHz, detached: info.detached, accel: info.accel, shares,
        ...(snapshotDir ? { restore: { memory: join(snapshotDir, SNAPSHOT_FILES.memory), state: join(snapshotDir, SNAPSHOT_FILES.state) } } : {}),
        ...(snet ? { nic: snet.nic(vmPaths(dir)) } : {}),
      });
      this.#vm = vm;
      this.#save({ pid: vm.pid });
      const runningVm = vm;
      await snet?.attach(vm.paths, { vmExited: () => runningVm.hasExited, signal, timeoutMs });
      const conn = await AgentConnection.connect(vm.paths.agentSocket, {
        flags: info.detached ? 0 : HelloFlags.POWEROFF_ON_DISCONNECT,
        timeoutMs,
        signal,
        vmExited: () => runningVm.hasExited,
        net: snet?.helloConfig(),
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
        data: { pid: vm.pid, agentVersion: conn.hello.agentVersion, ...(restore ? { restoredFrom: restore.id } : {}) },
      });
    } catch (e) {
      vm?.kill();
      await vm?.waitForExit();
      this.#vm = null;
      this.#closeNet(true);
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
    this.#closeNet(true);
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
    // While paused, requests wait in the channel until the VM resumes.
    if (!this.#vm || this.#vm.hasExited || (this.#info.status !== 'running' && this.#info.status !== 'paused')) {
      return Promise.reject(new RoostError('INVALID_STATE', `sandbox ${this.id} is ${this.#info.status}${this.#info.reason ? ` (${this.#info.reason})` : ''}`));
    }
    const vm = this.#vm;
    const timeoutMs = 10_000;
    const conn = AgentConnection.connect(vm.paths.agentSocket, { flags: 0, timeoutMs, vmExited: () => vm.hasExited, net: this.#net?.helloConfig() }).catch((e: unknown) => {
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
        if (this.#info.status === 'paused') c.holdLiveness(true);
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

  /**
   * Makes the network of a VM run (before QEMU starts, or when a runtime
   * attaches to a running VM): binds the published ports, and in bridge mode
   * sets up the TAP and its rules. Null without a NIC.
   */
  async #openNet(lenient = false): Promise<SandboxNet | null> {
    this.#closeNet(false);
    // A TAP of the last run may still be going away: it must be gone before this run makes it again.
    await this.#netClosed;
    const network = this.#info.network;
    if (!network || network.mode === 'none') return null;
    const bridge = network.mode === 'bridge' ? await this.#owner.network.bridge() : null;
    const snet = new SandboxNet(this.id, network, {
      denied: (d) => {
        if (!this.#removed) this.#owner.events.append('network.denied', { sandboxId: this.id, data: { ...d } });
      },
    }, bridge);
    const wanted = this.#pendingPorts ?? network.ports.map((p) => ({ ...p }));
    // A runtime attaching to a running VM keeps what it can: a port another program took meanwhile is dropped.
    const ports = await snet.prepare(
      wanted,
      lenient
        ? (p, e) => this.#owner.events.append('port.removed', { sandboxId: this.id, data: { ...p, reason: e instanceof Error ? e.message : String(e) } })
        : undefined,
    );
    this.#pendingPorts = null;
    this.#net = snet;
    this.#save({ network: { ...network, ports } });
    return snet;
  }

  /** Ends this process's part of the network: ports and the user-mode stack; `vmGone` also takes down a bridge TAP. */
  #closeNet(vmGone: boolean): void {
    const snet = this.#net;
    this.#net = null;
    if (snet) this.#netClosed = snet.close({ vmGone });
  }

  /**
   * @internal A runtime attached to a running detached VM: serves its
   * network again (QEMU takes the new connection; connections the guest had
   * open through the old runtime are gone) and binds its published ports.
   * A port another program took meanwhile is dropped from the record.
   */
  async _attachNetwork(): Promise<void> {
    const vm = this.#vm;
    if (!vm || vm.hasExited || (this.#info.status !== 'running' && this.#info.status !== 'paused')) return;
    try {
      const snet = await this.#openNet(true);
      await snet?.attach(vm.paths, { vmExited: () => vm.hasExited, timeoutMs: 5_000 });
    } catch {
      // Commands still work; the guest's network stays down until a runtime attaches again
      // (its stats read zero). Failing the open of the whole home for it would be worse.
      this.#closeNet(false);
    }
  }

  async #addPort(spec: PortSpec): Promise<PortBinding> {
    this.#checkNotRemoved();
    const snet = this.#net;
    if (!snet) {
      const mode = this.#info.network?.mode ?? 'none';
      throw new RoostError('INVALID_STATE', mode === 'none' ? `sandbox ${this.id} has no network (mode 'none'): it cannot publish ports` : `sandbox ${this.id} is ${this.#info.status}: ports are published while it runs (start it first)`);
    }
    const binding = await snet.addPort(spec);
    this.#save({ network: { ...snet.info, ports: snet.ports } }, 'port.added', { data: { ...binding } });
    return binding;
  }

  async #removePort(port: number | { hostPort: number; hostIp?: string; protocol?: PortProtocol }): Promise<void> {
    this.#checkNotRemoved();
    const want = typeof port === 'number' ? { hostPort: port } : port;
    const match = (this.#info.network?.ports ?? []).filter(
      (p) => p.hostPort === want.hostPort && (want.hostIp === undefined || p.hostIp === want.hostIp) && p.protocol === (want.protocol ?? 'tcp'),
    );
    if (match.length === 0) throw new RoostError('NOT_FOUND', `sandbox ${this.id} does not publish host port ${want.hostPort}/${want.protocol ?? 'tcp'}${want.hostIp ? ` on ${want.hostIp}` : ''}`);
    for (const b of match) this.#net?.removePort(b);
    const ports = (this.#info.network?.ports ?? []).filter((p) => !match.includes(p));
    this.#save({ network: { ...this.#info.network!, ports } }, 'port.removed', { data: { ...match[0]! } });
  }

  #closeConnection(): void {
    const conn = this.#conn;
    this.#conn = null;
    void conn?.then((c) => c.close()).catch(() => {});
    // QEMU serves one QMP client at a time: a runtime that lets a VM go must not keep it.
    this.#vm?.closeQmp();
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

/**
 * A sandbox restored from a snapshot (or a template) has the snapshot's
 * image, cpus, memory and disk, and no volumes: INVALID_ARGUMENT naming any of
 * them that `opts` gives.
 */
export function checkRestoreOptions(opts: SandboxOptions, what: string, whose: string): void {
  const fixed = (['image', 'pull', 'cpus', 'memoryMiB', 'diskSizeMiB', 'volumes'] as const).filter((k) => opts[k] !== undefined);
  if (fixed.length > 0) {
    throw new RoostError('INVALID_ARGUMENT', `${fixed.join(', ')}: a sandbox ${what} has ${whose} image, cpus, memory and disk, and no volumes; leave ${fixed.length > 1 ? 'them' : 'it'} out`, {
      details: { fields: fixed },
    });
  }
}

/**
 * Leases a bridge-mode sandbox its address (into `info.network`) and makes
 * its directory; the lease is given back if the directory cannot be made
 * (no record exists yet to release it with).
 */
async function makeSandboxDir(owner: SandboxOwner, info: SandboxInfo, bridge: BridgeNetwork | null): Promise<void> {
  if (bridge) Object.assign(info.network!, bridge.lease(info.id));
  try {
    await mkdir(owner.layout.sandbox(info.id), { recursive: true });
  } catch (e) {
    if (bridge) owner.network.releaseLease(info.id);
    throw e;
  }
}

/** A NIC takes one of the VM's free device slots: with a network, one volume fewer. */
function checkVolumeCount(count: number, mode: NetworkMode): void {
  const max = mode === 'none' ? MAX_SHARES : MAX_SHARES - 1;
  if (count > max) {
    throw new RoostError('INVALID_ARGUMENT', `volumes: at most ${max} with network '${mode}', not ${count}${mode === 'none' ? '' : ` (${MAX_SHARES} with network 'none')`}`, { details: { field: 'volumes' } });
  }
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
  return status === 'creating' || status === 'running' || status === 'paused' || status === 'stopping';
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
  // Not boot failures: bad input, a missing setup, or a published host port that is taken or privileged (bound before QEMU starts).
  if (e instanceof RoostError && (e.code === 'SETUP_REQUIRED' || e.code === 'INVALID_ARGUMENT' || e.code === 'UNAVAILABLE' || e.code === 'PERMISSION_DENIED')) return e;
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
