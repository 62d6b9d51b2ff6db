import type { Duplex } from 'node:stream';
import { rm } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import type { ExpiryAction, PullPolicy, SandboxApi, SandboxImage, SandboxInfo, SandboxPoolOrigin, SandboxStatus, SnapshotInfo, SnapshotKind } from '@roost/api';
import {
  ForkOptionsSchema,
  type ForkOptions,
  hostForPort,
  parseInput,
  DEPLOYMENT_LABEL,
  DEPLOYMENT_REVISION_LABEL,
  POOL_LABEL,
  SetLifetimeRequestSchema,
  SnapshotOptionsSchema,
} from '@roost/api';
import type { NetworkStats, PortProtocol, PortsApi } from '@roost/api';
import type { Assets } from './assets.js';
import { Commands } from './commands.js';
import { readConsoleLog } from './console-log.js';
import { diskFullError, isRoostError, RoostError } from './errors.js';
import { Files } from './files.js';
import type { SnapshotRecord } from './snapshot/store.js';
import type { FoundVm, VmHandle, VmIoError } from './vmm/types.js';
import { AgentLink } from './sandbox/agent-link.js';
import { bootVm, shutDown } from './sandbox/boot.js';
import { parseCreateOptions, planCreate, planRestore, planStart, type SandboxOptions } from './sandbox/plan.js';
import { SandboxNetwork } from './sandbox/network.js';
import { commandHooks, isLive, SandboxRecord } from './sandbox/record.js';
import { notRunningError } from './sandbox/state-error.js';
import type { SandboxServices as Services, SharedRuntime } from './sandbox/services.js';
import { reconcileVm, recoveryDecision, removeVmSockets } from './sandbox/recover.js';
import { forkFrom, forkName, snapshotName, takeSnapshot } from './sandbox/snapshot.js';
import { handOver, type HandOver } from './sandbox/handover.js';
import { isHostPath, volumeExports } from './sandbox/volumes.js';
import { planVolumeCopies } from './sandbox/fork-volumes.js';
import type { FileExport } from './fileserver/config.js';

export type { SandboxInfo, SandboxStatus, SandboxImage, PullPolicy, SandboxOptions };
export type { RuntimeCounters, SharedRuntime } from './sandbox/services.js';

/** @internal What a sandbox uses of the runtime that owns it (see sandbox/services.ts). */
export type SandboxServices = Services<Sandbox>;

/** How long `resume` watches a VM it resumed from a host disk error for the retried request to fail again (ms). */
const DISK_RETRY_WAIT_MS = 500;

let sharedRuntime: ((home: string | undefined) => Promise<SharedRuntime<Sandbox>>) | null = null;

function shared(home: string | undefined): Promise<SharedRuntime<Sandbox>> {
  if (!sharedRuntime) return Promise.reject(new RoostError('INTERNAL', 'no runtime module loaded: import Sandbox from @roost/core'));
  return sharedRuntime(home);
}

/** How long a lost agent waits for its VM's exit, whose reason is better (an out-of-memory kill). */
const LOST_EXIT_GRACE_MS = 1000;

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
  /** Published ports: add, list and remove them while the sandbox runs. */
  readonly ports: PortsApi;
  readonly #services: SandboxServices;
  readonly #record: SandboxRecord;
  readonly #link: AgentLink;
  readonly #net: SandboxNetwork;
  #vm: VmHandle | null = null;
  /** Set when the runtime that owns this object closed and let a detached VM run on. */
  #letGo = false;
  /** Serializes lifecycle operations (start, stop, kill, remove, pause, resume, snapshot). */
  #lifecycle: Promise<unknown> = Promise.resolve();

  private constructor(services: SandboxServices, info: SandboxInfo) {
    this.id = info.id;
    this.#services = services;
    const record = (this.#record = new SandboxRecord(services, info));
    this.#net = new SandboxNetwork(record, () => services.network.bridge());
    this.#link = new AgentLink({
      id: info.id,
      vm: () => this.#vm,
      status: () => record.status,
      reason: () => record.info.reason,
      removed: () => record.removed,
      netHello: () => this.#net.helloConfig(),
      lost: (reason, closed) => {
        const vm = this.#vm;
        const fail = (why: string) => {
          if (isLive(this.status)) this.#exited('failed', why);
          this.#vm?.kill();
        };
        if (!closed || !vm || vm.hasExited) return fail(reason);
        this.#lostReason ??= reason;
        // The agent's connection also closes when the VM dies: its exit may say why (the jail's memory limit).
        const grace = new Promise<null>((r) => setTimeout(() => r(null), LOST_EXIT_GRACE_MS).unref());
        void Promise.race([vm.exited, grace]).then((exit) => fail(exit?.reason ?? reason));
      },
    });
    const connection = () => this.#link.connection();
    this.commands = new Commands(
      connection,
      () => ({
        env: record.info.env,
        ...(record.info.workingDir ? { cwd: record.info.workingDir } : {}),
        ...(record.info.user ? { user: record.info.user } : {}),
      }),
      commandHooks(record, services.counters),
    );
    // File operations run as the sandbox's user, like commands, but are not commands: no exec events or counts.
    // Reads bring at most the disk's size to the host unless the caller says more (a sparse file can claim any size).
    this.files = new Files(connection, () => ({
      ...(record.info.user ? { user: record.info.user } : {}),
      ...(record.info.diskSizeMiB > 0 ? { maxBytes: record.info.diskSizeMiB * 2 ** 20 } : {}),
    }));
    this.ports = {
      add: async (spec) => {
        this.#checkNotRemoved();
        return this.#net.addPort(spec);
      },
      list: () => Promise.resolve(record.info.network?.ports.map((p) => ({ ...p })) ?? []),
      remove: async (port) => {
        this.#checkNotRemoved();
        this.#net.removePort(port);
      },
    };
  }

  /** Creates and boots a sandbox in the home's shared runtime; resolves once its agent answers. */
  static async create(options: SandboxOptions = {}): Promise<Sandbox> {
    const rest = { ...options };
    delete rest.home;
    return (await shared(options.home)).create(rest);
  }

  /** Finds a sandbox by id (or a unique id prefix) in the home's shared runtime. */
  static async get(id: string, options: { home?: string } = {}): Promise<Sandbox> {
    return (await shared(options.home)).get(id);
  }

  /** Lists the sandboxes of a home, newest first. */
  static async list(options: { home?: string } = {}): Promise<SandboxInfo[]> {
    return (await shared(options.home)).list();
  }

  /** @internal Where the static helpers find the shared runtime of a home (runtime.ts sets it). */
  static _useSharedRuntime(get: (home: string | undefined) => Promise<SharedRuntime<Sandbox>>): void {
    sharedRuntime = get;
  }

  /**
   * @internal Validates options, plans the sandbox (image, volumes, network;
   * or the snapshot it restores), records it and boots it.
   */
  static async _create(services: SandboxServices, options: SandboxOptions): Promise<Sandbox> {
    const opts = parseCreateOptions(options);
    const restoring = opts.snapshot !== undefined;
    const plan = restoring ? await planRestore(services, opts) : await planCreate(services, opts);
    const { info } = plan;
    const sb = new Sandbox(services, info);
    sb.#net.setPendingPorts(plan.ports);
    sb.#record.created(plan.restore, () => {
      for (const v of info.volumes ?? []) if (!isHostPath(v.source)) services.volumes._ensure(v.source);
    });
    services.counters.sandboxesCreated++;
    services.adopted(sb);
    try {
      const exports = await volumeExports(sb.#record.info, services.volumes);
      await sb.#boot(plan.assets, plan.rootfs, exports, opts.timeoutMs ?? 30_000, opts.signal, plan.restore);
    } catch (e) {
      // A boot that never started QEMU leaves nothing worth keeping; one that did keeps its logs for `roost logs`,
      // unless made with autoRemove: its owner asked for nothing to stay (the error carries the console's tail).
      if (sb.status === 'creating' || opts.autoRemove) await sb.remove({ force: true }).catch(() => {});
      throw e;
    }
    return sb;
  }

  /**
   * @internal A sandbox found in the records when a runtime opens: attached to its running VM, or recorded as gone.
   * `found`: the home's VMs, when the caller has looked already (`Vmm.findVms`).
   */
  static _recover(services: SandboxServices, info: SandboxInfo, found?: readonly FoundVm[] | null): Sandbox {
    const live = isLive(info.status);
    const dir = services.layout.sandbox(info.id);
    // No pid recorded: its runtime may have died between starting the VM and recording it, leaving one that only its
    // directory names (a detached VM runs on).
    const vms = live && info.pid === null ? (found ?? services.vmm.findVms?.(dirname(dir))) : undefined;
    const pid = !live ? null : (info.pid ?? vms?.find((v) => v.dir === dir)?.pid ?? null);
    const vm = pid !== null ? services.vmm.attach(pid, dir) : null;
    const sb = new Sandbox(services, info);
    const decision = recoveryDecision(info, vm !== null);
    if (decision.action === 'attach') sb.#watch(vm!);
    if (decision.action === 'record') {
      if (decision.kill) vm?.kill();
      sb.#record.exited(decision.status, decision.reason, { recovered: true });
    }
    return sb;
  }

  /** @internal Another object now holds this sandbox's record (a doctor rewrote it): this one writes nothing more. */
  _supersede(): void {
    this.#record.markRemoved();
    this.#link.close();
  }

  /**
   * @internal After a recover: a VM recorded as running that a dead runtime
   * left stopped mid-snapshot is continued (see `reconcileVm`).
   */
  async _reconcile(): Promise<void> {
    const vm = this.#vm;
    if (this.status !== 'running' || !vm || vm.hasExited) return;
    await reconcileVm(vm, () => this.#link.connection());
  }

  /**
   * @internal A runtime attached to a running detached VM: serves its
   * network again and binds its published ports (see SandboxNetwork.attach).
   */
  async _attachNetwork(): Promise<void> {
    const vm = this.#vm;
    if (!vm || vm.hasExited || (this.status !== 'running' && this.status !== 'paused')) return;
    await this.#net.attach(vm);
  }

  /** `host:port` where the host reaches guest port `port` (see SandboxApi.getHost). */
  getHost(port: number, protocol: PortProtocol = 'tcp'): string {
    return hostForPort(this.#record.info, port, protocol);
  }

  /**
   * @internal A TCP connection from the host to guest port `port` (what
   * deployments' service ports and health checks use): INVALID_STATE while
   * the sandbox has no network served here (mode `none`, or no VM).
   */
  _connectTcp(port: number): Duplex {
    const snet = this.#net.current;
    if (!snet)
      throw new RoostError(
        'INVALID_STATE',
        `sandbox ${this.id} has no network served here (${this.#record.info.network?.mode === 'none' ? "mode 'none'" : this.status})`,
      );
    return snet.connectTcp(port);
  }

  /** Traffic through the sandbox's NIC since its VM run started here, and denied connections. */
  networkStats(): Promise<NetworkStats> {
    return this.#net.stats();
  }

  /** A copy of what is recorded about this sandbox. */
  get info(): SandboxInfo {
    return structuredClone(this.#record.info);
  }

  get status(): SandboxStatus {
    return this.#record.status;
  }

  /** The sandbox's directory: sockets, console log, disk. */
  get dir(): string {
    return this.#services.layout.sandbox(this.id);
  }

  /** The guest's serial console log (kernel messages, agent diagnostics). */
  get consoleLogPath(): string {
    return join(this.dir, 'console.log');
  }

  /** The console log's last `tail` lines (all of it, up to its last MiB, without). Concurrency: any number at once. */
  logs(options: { tail?: number; signal?: AbortSignal } = {}): Promise<string> {
    return readConsoleLog(this.consoleLogPath, options);
  }

  /**
   * Sets when the sandbox ends: `lifetimeMs` from now, or never (null); with
   * `extendOnly`, a later end already set (or none) is kept. `onExpiry`
   * (default: the one set, else `remove`) is what the end does. The runtime
   * that owns the home acts on it. Concurrency: not serialized with
   * lifecycle calls; the last call wins.
   */
  async setLifetime(lifetimeMs: number | null, options: { extendOnly?: boolean; onExpiry?: ExpiryAction } = {}): Promise<SandboxInfo> {
    const input = parseInput(SetLifetimeRequestSchema, { lifetimeMs, ...options }, 'lifetime');
    if (this.#record.removed) throw new RoostError('NOT_FOUND', `sandbox ${this.id} has been removed`);
    const current = this.#record.info.expiresAt ?? null;
    let next = input.lifetimeMs === null ? null : new Date(Date.now() + input.lifetimeMs).toISOString();
    // Extend only: no end (never) outlasts any, and a later end stays.
    if (input.extendOnly && (current === null || (next !== null && Date.parse(current) >= Date.parse(next)))) next = current;
    const onExpiry = next === null ? undefined : (input.onExpiry ?? this.#record.info.onExpiry ?? 'remove');
    this.#record.save({ expiresAt: next, onExpiry });
    this.#services.lifetimeChanged(this.id, next);
    return this.info;
  }

  /** The record as it is now (the embedded runtime keeps it current; this also re-reads the database). */
  async refresh(): Promise<SandboxInfo> {
    this.#record.reload();
    return this.info;
  }

  /**
   * The VM's state as its VMM reports it (`running`, `paused`, ...): the
   * hypervisor's view, independent of the guest agent.
   */
  async vmStatus(): Promise<string> {
    return this.#runningVm().status();
  }

  /** The VM process's pid while the VM runs, else null. */
  get vmPid(): number | null {
    return this.#vm && !this.#vm.hasExited ? this.#vm.pid : null;
  }

  /** Round trip to the agent in ms. */
  async ping(timeoutMs = 5_000): Promise<number> {
    return (await this.#link.connection()).ping(timeoutMs);
  }

  /**
   * Pauses the sandbox: its vCPUs stop, its memory and processes stay, and
   * commands sent meanwhile wait until `resume()`. INVALID_STATE unless running.
   */
  pause(): Promise<void> {
    return this.#serialize(async () => {
      this.#checkNotRemoved();
      if (this.status === 'paused') return;
      if (this.status !== 'running') throw notRunningError(this.id, this.status, 'pause it (only a running sandbox can be paused)');
      await this.#runningVm().pause();
      this.#link.holdLiveness(true);
      this.#record.save({ status: 'paused' }, 'sandbox.paused');
    });
  }

  /**
   * Resumes a paused sandbox exactly where it was (a running one is left as
   * is). One paused on a host disk error retries the failed disk request
   * first: if the disk is still full it is paused again, with the same
   * reason, and this is RESOURCE_EXHAUSTED.
   */
  resume(): Promise<void> {
    return this.#serialize(async () => {
      this.#checkNotRemoved();
      if (this.status === 'running') return;
      if (this.status === 'stopped' || this.status === 'failed')
        throw notRunningError(this.id, this.status, 'resume it (only a paused sandbox can be resumed)');
      if (this.status !== 'paused') throw new RoostError('INVALID_STATE', `sandbox ${this.id} is ${this.status}: only a paused sandbox can be resumed`);
      const vm = this.#runningVm();
      const diskReason = this.#record.info.reason?.startsWith('host disk') ? this.#record.info.reason : undefined;
      await vm.resume();
      this.#link.holdLiveness(false);
      this.#record.save({ status: 'running', reason: undefined }, 'sandbox.resumed');
      if (diskReason) await this.#checkDiskRetry(vm, diskReason);
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
    options = parseInput(SnapshotOptionsSchema, options, 'snapshot options');
    const name = snapshotName(this.id, options.name);
    return this.#serialize(async () => this.#services.snapshots.info(await this.#takeSnapshot(name, 'user', options.timeoutMs ?? 60_000, options.signal)));
  }

  /**
   * Makes `count` (default 1) running copies of this sandbox: each has its
   * own id, disk layer and memory (shared copy-on-write with its siblings
   * until written), its processes running on, a clock set to now and a
   * reseeded random pool. This sandbox runs on. The copies depend on a
   * snapshot of kind `fork`, removed with the last of them. Volumes are
   * shared with the copies, or with `volumes: 'copy'` copied for each (the
   * source paused meanwhile) into named volumes `<fork>-<i>-v<j>`.
   */
  async fork(options: ForkOptions = {}): Promise<Sandbox[]> {
    options = parseInput(ForkOptionsSchema, options, 'fork options');
    const count = options.count ?? 1;
    const name = forkName(this.id);
    const timeoutMs = options.timeoutMs ?? 60_000;
    const info = this.#record.info;
    const copies = options.volumes === 'copy' && info.volumes?.length ? await planVolumeCopies(this.#services.volumes, info, name, count) : null;
    try {
      const rec = await this.#serialize(() => this.#takeSnapshot(name, 'fork', timeoutMs, options.signal, undefined, copies?.whilePaused));
      await copies?.rest();
      return await forkFrom(this.#services, info, rec, count, { ...options, timeoutMs, ...(copies ? { volumesOf: copies.volumesOf } : {}) });
    } catch (e) {
      await copies?.undo();
      throw e;
    }
  }

  /** @internal A snapshot of a given kind (templates build theirs with it). */
  _snapshot(name: string, kind: SnapshotKind, options: { template?: string; timeoutMs?: number; signal?: AbortSignal } = {}): Promise<SnapshotRecord> {
    return this.#serialize(() => this.#takeSnapshot(name, kind, options.timeoutMs ?? 60_000, options.signal, options.template));
  }

  /** @internal The warm pool this sandbox is a member of (its `roost.pool` label), if any. */
  get _poolName(): string | undefined {
    return this.#record.removed ? undefined : this.#record.info.labels[POOL_LABEL];
  }

  /** @internal The deployment and revision this sandbox is a replica of (its `roost.deployment` labels), if any. */
  get _replicaOf(): { deployment: string; revision: string } | undefined {
    if (this.#record.removed) return undefined;
    const labels = this.#record.info.labels;
    const deployment = labels[DEPLOYMENT_LABEL];
    return deployment === undefined ? undefined : { deployment, revision: labels[DEPLOYMENT_REVISION_LABEL] ?? '' };
  }

  /**
   * @internal Hands this pool member over to the caller of `create({ pool })`:
   * resumed, its agent given a new session (clock, entropy, flags) and its
   * record rewritten (see sandbox/handover.ts). NOT_FOUND once removed,
   * INVALID_STATE when it is no longer a member of `h.pool` or has no VM.
   */
  _handOver(h: HandOver): Promise<void> {
    return this.#serialize(async () => {
      this.#checkNotRemoved();
      if (this._poolName !== h.pool) throw new RoostError('INVALID_STATE', `sandbox ${this.id} is not a member of pool ${h.pool}`);
      await handOver({ record: this.#record, vm: this.#runningVm(), link: this.#link, net: this.#net }, h);
      this.#services.lifetimeChanged(this.id, this.#record.info.expiresAt ?? null);
    });
  }

  /** @internal Records that `create({ pool })` made this sandbox (a restore when the pool was empty: `warm` false). */
  _markPool(origin: SandboxPoolOrigin): void {
    this.#record.save({ pool: { ...origin } }, 'pool.handover', { data: { pool: origin.name, warm: origin.warm } });
  }

  /**
   * Boots a stopped (or failed) sandbox again, on the disk it had: what it
   * wrote is still there, its processes are not. A running one is left as is.
   */
  start(options: { timeoutMs?: number; signal?: AbortSignal } = {}): Promise<void> {
    return this.#serialize(async () => {
      this.#checkNotRemoved();
      if (this.status === 'running' || this.status === 'paused') return;
      if (isLive(this.status)) throw new RoostError('INVALID_STATE', `sandbox ${this.id} is ${this.status}: wait for it to finish`);
      const services = this.#services;
      const { assets, rootfs } = await planStart(services, this.#record.info, options.signal);
      // A host directory that went away is reported before the sandbox is touched.
      const exports = await volumeExports(this.#record.info, services.volumes);
      this.#link.ending = false;
      this.#record.save({ status: 'creating', reason: undefined, pid: null });
      await this.#boot(assets, rootfs, exports, options.timeoutMs ?? 30_000, options.signal);
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
        if (isLive(this.status)) this.#exited('stopped', 'stopped');
        return;
      }
      this.#link.ending = true;
      const wasPaused = this.status === 'paused';
      this.#record.save({ status: 'stopping' });
      await shutDown(vm, () => this.#link.connection(), { wasPaused, timeoutMs });
      this.#link.close();
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
      const record = this.#record;
      if (record.removed) return;
      if ((this.#vm && !this.#vm.hasExited) || this.status === 'creating' || this.status === 'stopping') {
        if (!options.force) throw new RoostError('INVALID_STATE', `sandbox ${this.id} is ${this.status}: stop it first, or remove it with force`);
        await this.#kill('removed');
      }
      record.markRemoved();
      this.#net.close(true);
      await this.#net.closed();
      const services = this.#services;
      const deleteRecord = () =>
        record.delete(() => {
          if (record.info.network?.mode === 'bridge') services.network.releaseLease(this.id);
          services.jail?.release(this.id);
        });
      try {
        deleteRecord();
      } catch (e) {
        if (!isRoostError(e, 'RESOURCE_EXHAUSTED')) {
          record.markRemoved(false);
          throw e;
        }
        // A full disk: the VM is gone, and its directory (its disk most of all) is what is removed anyway, and may be
        // what filled the disk. Without it the record is a stopped sandbox with nothing left, which a retry removes.
        await rm(this.dir, { recursive: true, force: true });
        try {
          deleteRecord();
        } catch (e2) {
          record.markRemoved(false);
          throw e2 instanceof RoostError
            ? new RoostError(e2.code, `${e2.message} (sandbox ${this.id}: its VM and files are removed, its record is not; remove it again)`, {
                cause: e2,
                details: e2.details,
              })
            : e2;
        }
      }
      services.counters.sandboxesDestroyed++;
      services.released(this.id);
      await rm(this.dir, { recursive: true, force: true });
      // The snapshot of a fork goes with its last copy.
      if (record.info.snapshot) await services.snapshots.removeIfUnused(record.info.snapshot).catch(() => {});
    });
  }

  /** Closes this process's agent connection without stopping the sandbox (a later command reconnects). */
  disconnect(): void {
    this.#link.close();
    // Closing let go of the VMM's control connection too; the runtime still owns the VM, so it watches on (see onIoError).
    const vm = this.#vm;
    if (vm && !vm.hasExited && !this.#letGo) void vm.status().catch(() => {});
  }

  /** Ends the sandbox: a detached one is only disconnected; any other is killed and removed. */
  async [Symbol.asyncDispose](): Promise<void> {
    if (this.#record.info.detached) this.disconnect();
    else await this.remove({ force: true });
  }

  /** @internal The runtime is closing: a detached sandbox is let go, any other is killed. */
  async _release(): Promise<void> {
    if (this.#record.info.detached || this.#record.removed) {
      // The home is no longer this process's: whatever becomes of the VM, the next runtime records it.
      this.#letGo = true;
      this.#link.close();
      // The VM runs on: a bridge TAP stays; ports and the user-mode network wait for the next runtime.
      this.#net.close(false);
      return;
    }
    await this.#serialize(() => this.#kill('its runtime closed')).catch(() => {});
    // Made to go with its owner (`autoRemove`): the record, disk and logs go too.
    if (this.#record.info.autoRemove) await this.remove({ force: true }).catch(() => {});
  }

  // ---- internals -------------------------------------------------------------

  #boot(assets: Assets, rootfs: string, exports: FileExport[], timeoutMs: number, signal?: AbortSignal, restore?: SnapshotRecord): Promise<void> {
    const services = this.#services;
    return bootVm(
      {
        record: this.#record,
        dir: this.dir,
        vmm: services.vmm,
        cacheDir: services.layout.cache,
        jail: (a) => (services.vmm.confines ? services.jail?.vmJail(this.id, this.#record.info.cpus, this.#record.info.memoryMiB, a) : undefined),
        snapshotDir: (id) => services.snapshots.dir(id),
        net: this.#net,
        vmStarted: (vm) => {
          this.#vm = vm;
        },
        booted: (vm, conn) => {
          this.#watch(vm);
          this.#link.adopt(Promise.resolve(conn));
        },
      },
      { assets, rootfs, exports, timeoutMs, signal, restore },
    );
  }

  /** Takes a snapshot; called serialized with the lifecycle. */
  #takeSnapshot(
    name: string,
    kind: SnapshotKind,
    timeoutMs: number,
    signal?: AbortSignal,
    template?: string,
    whilePaused?: () => Promise<void>,
  ): Promise<SnapshotRecord> {
    this.#checkNotRemoved();
    const services = this.#services;
    return takeSnapshot(
      {
        info: this.#record.info,
        dir: this.dir,
        vm: this.#vm,
        connection: () => this.#link.connection(),
        assets: () => services.assets(),
        images: services.images,
        snapshots: services.snapshots,
        snapshotsDir: services.layout.snapshots,
        records: services.records,
        events: services.events,
        vmm: services.vmm,
        ...(whilePaused ? { whilePaused } : {}),
      },
      name,
      kind,
      timeoutMs,
      signal,
      template,
    );
  }

  /** The VM, or INVALID_STATE when there is none running. */
  #runningVm(): VmHandle {
    const vm = this.#vm;
    if (!vm || vm.hasExited) throw notRunningError(this.id, this.status, 'do this without a running VM');
    return vm;
  }

  async #kill(reason: string): Promise<void> {
    this.#link.ending = true;
    const vm = this.#vm;
    if (vm && !vm.hasExited) {
      vm.kill();
      await vm.waitForExit();
    }
    this.#link.close();
    if (isLive(this.status)) this.#exited('stopped', reason);
  }

  /** Records that the VM is gone, once. */
  #exited(status: 'stopped' | 'failed', reason: string): void {
    this.#net.close(true);
    this.#record.exited(status, reason);
    removeVmSockets(this.dir);
    this.#services.exited?.(this.id);
  }

  /**
   * After resuming a VM stopped on a host disk error: the failed request is
   * retried at once, so a disk still full stops it again within moments.
   * Then it is paused again, same reason, and the caller is told
   * (RESOURCE_EXHAUSTED); a later failure is left to #ioStopped.
   */
  async #checkDiskRetry(vm: VmHandle, reason: string): Promise<void> {
    let status = 'running';
    for (let waited = 0; waited < DISK_RETRY_WAIT_MS && status === 'running'; waited += 50) {
      await new Promise((r) => setTimeout(r, 50));
      status = await vm.status().catch(() => 'unknown');
    }
    if (status !== 'io-error') return;
    this.#link.holdLiveness(true);
    const disk = join(this.dir, 'disk.qcow2');
    this.#record.save({ status: 'paused', reason }, 'sandbox.paused', { data: { reason, disk } });
    const full = reason === 'host disk full' ? diskFullError({ code: 'ENOSPC' }, disk) : null;
    throw full
      ? new RoostError('RESOURCE_EXHAUSTED', `sandbox ${this.id} is paused again: ${full.message}`, { details: full.details })
      : new RoostError('VMM', `sandbox ${this.id} is paused again (${reason}): see the host's disk`, { details: { disk } });
  }

  /**
   * The VM stopped itself on a host disk error (its writable disk could not
   * be written or read on the host): recorded as `paused` with the reason and
   * a `sandbox.paused` event, until `resume`.
   */
  #ioStopped(vm: VmHandle, error: VmIoError): void {
    const current = () => this.#vm === vm && !vm.hasExited && !this.#record.removed;
    if (!current()) return;
    // Stopped, the agent cannot answer pings: hold them now, not after the lifecycle calls queued before this.
    this.#link.holdLiveness(true);
    const reason = error.nospace ? 'host disk full' : `host disk error: ${error.message}`;
    void this.#serialize(async () => {
      if (!current() || (this.status !== 'running' && this.status !== 'paused')) return;
      this.#link.holdLiveness(true);
      if (this.status === 'paused' && this.#record.info.reason === reason) return;
      this.#record.save({ status: 'paused', reason }, 'sandbox.paused', { data: { reason, error: error.message, disk: join(this.dir, 'disk.qcow2') } });
    }).catch(() => {});
  }

  /** Why the agent was lost, while its VM's exit may still give a better reason. */
  #lostReason: string | null = null;

  #watch(vm: VmHandle): void {
    this.#vm = vm;
    this.#lostReason = null;
    vm.onIoError((error) => this.#ioStopped(vm, error));
    void vm.exited.then((exit) => {
      if (this.#vm !== vm) return;
      this.#link.close();
      if (this.#link.ending || this.#record.removed || this.#letGo) return;
      if (!isLive(this.status)) return;
      this.#exited(
        'failed',
        exit.reason ?? this.#lostReason ?? this.#record.info.reason ?? 'the VM exited unexpectedly (the guest rebooted, powered off or crashed)',
      );
    });
  }

  #serialize<T>(op: () => Promise<T>): Promise<T> {
    const run = this.#lifecycle.then(op, op);
    this.#lifecycle = run.catch(() => {});
    return run;
  }

  #checkNotRemoved(): void {
    if (this.#record.removed) throw new RoostError('NOT_FOUND', `sandbox ${this.id} was removed`);
  }
}
