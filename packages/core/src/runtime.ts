import { existsSync } from 'node:fs';
import { readdir, readFile, rm } from 'node:fs/promises';
import { basename, join } from 'node:path';
import type {
  BuildImageOptions,
  BuildResult,
  CreateOptions,
  DoctorOptions,
  DoctorReport,
  EventType,
  ImagesApi,
  ListFilter,
  RoostEvent,
  RuntimeApi,
  RuntimeMetrics,
  SandboxInfo,
  SandboxMetrics,
  SandboxStatus,
  SnapshotsApi,
} from '@roost/api';
import { checkPoolCreateOptions, matchesFilter } from '@roost/api';
import { setup, loadAssets, type Assets, type SetupOptions } from './assets.js';
import { doctorHome, examineHome, report, type HomeDoctorOptions } from './doctor.js';
import { RoostError } from './errors.js';
import { HomeLayout, roostHome } from './home.js';
import { ImageStore } from './image/store.js';
import { imageInfoBody, StoreImages } from './image/images-api.js';
import { processUsage } from './proc.js';
import { Sandbox, type RuntimeCounters, type SandboxServices } from './sandbox.js';
import { checkCreateOptions, checkRestoreOptions, type SandboxOptions } from './sandbox/plan.js';
import { isLive } from './sandbox/record.js';
import { removedAtRecovery } from './sandbox/recover.js';
import { stateDb } from './state/db.js';
import { jailSettings, RuntimeJail, type JailOptions } from './jail/policy.js';
import { sweepSandboxCgroups } from './jail/cgroup.js';
import { Lifetimes } from './sandbox/lifetime.js';
import { EventLog } from './state/events.js';
import { HomeLock } from './state/lock.js';
import { SandboxRecords } from './state/sandboxes.js';
import { Settings } from './state/settings.js';
import { SandboxWitnesses } from './state/witness.js';
import { Volumes } from './volumes.js';
import { SnapshotStore } from './snapshot/store.js';
import { Templates } from './snapshot/templates.js';
import { Pools } from './pools/pools.js';
import { Deployments } from './deployments/deployments.js';
import { buildImage } from './build/build.js';
import { BuildCache } from './build/cache.js';
import type { BridgeConfig } from './net/bridge-network.js';
import { bridgeConfig, RuntimeNetwork } from './net/runtime-network.js';
import { resolveVmm } from './vmm/registry.js';
import type { FoundVm, Vmm } from './vmm/types.js';
import { secureHome } from './state/private.js';
import { ActorSystem } from '@roost/actors';
import { actorHost } from './actor-host.js';
import { sweepTempFiles } from './state/sweep.js';

/** Options of `Runtime.open`. */
export interface RuntimeOptions {
  /** Roost home (default $ROOST_HOME or ~/.roost). */
  home?: string;
  /** Who opens it, named to anyone else who tries (`roost serve`, `roost run`). */
  owner?: string;
  /** Sandboxes booting at once; more get RESOURCE_EXHAUSTED (default: the `maxConcurrentCreates` setting, else 16). */
  maxConcurrentCreates?: number;
  /** Sandboxes with a VM at once; more get RESOURCE_EXHAUSTED (default: the `maxSandboxes` setting, else no limit). */
  maxSandboxes?: number;
  /** Bridge mode's bridge and subnet (default: $ROOST_BRIDGE or roost0, $ROOST_BRIDGE_SUBNET or 10.88.0.0/16). */
  bridge?: Partial<BridgeConfig>;
  /** The VMM backend: a name given to `registerVmm` (default `qemu`), or a backend object. */
  vmm?: string | Vmm;
  /**
   * Confine each VMM in Roost's jail (default: true, unless $ROOST_JAIL is `off`); its settings. `false` runs VMMs
   * unconfined, as this process's user: only where the jail cannot be built (see docs/security.md).
   */
  jail?: boolean | JailOptions;
  /**
   * Keep the home's warm pools filled and its deployments' replicas running
   * (with their service ports) while this runtime is open (default true).
   * The CLI turns it off for commands that only read, so that a short-lived
   * runtime does not start restores or replicas it would abort when it closes.
   */
  reconcile?: boolean;
}

/** Options of `runtime.create`. */
export type CreateSandboxOptions = Omit<SandboxOptions, 'home'> & CreateOptions;

/** Options of `runtime.events`. */
export interface EventsOptions {
  /** Replay events after this id first (default: only new events). */
  after?: number;
  types?: EventType[];
  sandboxId?: string;
  signal?: AbortSignal;
}

const DEFAULT_MAX_CONCURRENT_CREATES = 16;
/** The memory of a build's RUN sandboxes, unless the build says (package managers want more than a sandbox's default). */
const BUILD_MEMORY_MIB = 1024;
const ID_PATTERN = /^[0-9a-f]{12}$/;

/**
 * The owner of one Roost home: its sandboxes, images, events and settings.
 * One runtime owns a home at a time (a lock the kernel drops if the owner
 * dies); opening it recovers what a crashed owner left: running detached
 * sandboxes are re-attached, dead ones recorded as exited, orphaned files
 * removed.
 *
 * ```ts
 * await using runtime = await Runtime.open({ home: '/var/lib/roost' });
 * await using sandbox = await runtime.create({ memoryMiB: 512 });
 * ```
 *
 * The static `Sandbox.create()` / `get()` / `list()` use a runtime shared by
 * the whole process, opened on first use and held until the process exits.
 */
export class Runtime implements RuntimeApi {
  /** The Roost home this runtime owns. */
  readonly home: string;
  /** Runtime settings kept in the home's database. */
  readonly settings: Settings;

  static readonly #shared = new Map<string, Promise<Runtime>>();

  readonly #layout: HomeLayout;
  readonly #lock: HomeLock;
  readonly #records: SandboxRecords;
  readonly #jail: RuntimeJail | null;
  readonly #witnesses: SandboxWitnesses;
  readonly #log: EventLog;
  readonly #images: ImageStore;
  readonly #volumes: Volumes;
  readonly #snapshotStore: SnapshotStore;
  readonly #templates: Templates;
  readonly #snapshots: SnapshotsApi;
  readonly #pools: Pools<Sandbox>;
  readonly #deployments: Deployments<Sandbox>;
  readonly #buildCache: BuildCache;
  readonly #sandboxes = new Map<string, Sandbox>();
  /** The ends of the sandboxes' lifetimes (armed once recovery is done). */
  #recovered = false;
  readonly #lifetimes = new Lifetimes((id) => this.#expire(id));
  readonly #counters: RuntimeCounters = { sandboxesCreated: 0, sandboxesDestroyed: 0, execs: 0, execBytes: { stdin: 0, stdout: 0, stderr: 0 } };
  readonly #closing = new AbortController();
  readonly #startedAt = performance.now();
  readonly #maxConcurrentCreates: number;
  readonly #maxSandboxes: number;
  #creating = 0;
  #inFlight = new Set<Promise<unknown>>();
  #closed: Promise<void> | null = null;
  #assets: Promise<Assets> | null = null;
  readonly #network: RuntimeNetwork;
  readonly #vmm: Vmm;

  private constructor(home: string, lock: HomeLock, vmm: Vmm, options: RuntimeOptions) {
    this.home = home;
    this.#layout = new HomeLayout(home);
    this.#lock = lock;
    this.#vmm = vmm;
    const db = stateDb(home);
    this.#records = new SandboxRecords(db);
    const jail = jailSettings(options.jail);
    this.#jail = jail.enabled ? new RuntimeJail(db, home, jail, this.#layout.cache) : null;
    this.#witnesses = new SandboxWitnesses(this.#layout);
    this.#log = new EventLog(db);
    this.settings = new Settings(db);
    this.#images = new ImageStore({ home });
    this.#volumes = new Volumes({ home });
    this.#snapshotStore = new SnapshotStore(db, this.#layout, () => vmm.version());
    this.#network = new RuntimeNetwork(db, bridgeConfig(options.bridge));
    this.#templates = new Templates(db, this.#snapshotStore, this.#log, { create: (o) => this.create(o), assets: () => this.assets() });
    this.#pools = new Pools<Sandbox>(db, this.#log, {
      create: (o) => this.#create(o),
      sandboxes: () => this.#sandboxes.values(),
      snapshot: (nameOrId) => this.#snapshotStore.get(nameOrId),
      snapshotName: (id) => this.#snapshotStore.find(id)?.name,
      template: (name) => this.#templates.get(name),
    });
    this.#buildCache = new BuildCache(db);
    this.#deployments = new Deployments<Sandbox>(db, this.#log, { create: (o) => this.#create(o), sandboxes: () => this.#sandboxes.values() });
    const store = this.#snapshotStore;
    const log = this.#log;
    this.#snapshots = {
      list: async () => store.all().map((r) => store.info(r)),
      get: async (nameOrId: string) => store.info(store.get(nameOrId)),
      remove: async (nameOrId: string) => {
        const rec = await store.remove(nameOrId);
        log.append('snapshot.removed', { data: { snapshot: rec.name, snapshotId: rec.id } });
      },
    };
    this.#maxConcurrentCreates = options.maxConcurrentCreates ?? this.settings.get<number>('maxConcurrentCreates') ?? DEFAULT_MAX_CONCURRENT_CREATES;
    this.#maxSandboxes = options.maxSandboxes ?? this.settings.get<number>('maxSandboxes') ?? Infinity;
  }

  /**
   * Opens a Roost home: takes its lock (UNAVAILABLE, naming the owner, when
   * another runtime holds it) and recovers its sandboxes.
   */
  static async open(options: RuntimeOptions = {}): Promise<Runtime> {
    const home = roostHome(options.home);
    for (const [k, v] of [
      ['maxConcurrentCreates', options.maxConcurrentCreates],
      ['maxSandboxes', options.maxSandboxes],
    ] as const) {
      if (v !== undefined && (!Number.isInteger(v) || v < 1)) throw new RoostError('INVALID_ARGUMENT', `${k}: must be a positive integer, not ${v}`);
    }
    const vmm = resolveVmm(options.vmm);
    const lock = HomeLock.acquire(home, options.owner ?? 'an embedded runtime');
    try {
      const runtime = new Runtime(home, lock, vmm, options);
      await runtime.#recover();
      if (options.reconcile !== false) {
        runtime.#pools.start();
        runtime.#deployments.start();
        // Actors with messages waiting (timers included) get them handled from now on. A damaged
        // actors' database does not keep the sandboxes from opening: using actors names the trouble.
        if (existsSync(runtime.#layout.actorsDb)) {
          try {
            void runtime.actors;
          } catch (e) {
            process.emitWarning(`roost: the actors of ${home} are not running: ${e instanceof Error ? e.message : String(e)}`);
          }
        }
      }
      return runtime;
    } catch (e) {
      lock.release();
      throw e;
    }
  }

  /** The process's shared runtime of a home (used by the static Sandbox helpers). */
  static shared(home?: string): Promise<Runtime> {
    const root = roostHome(home);
    let r = Runtime.#shared.get(root);
    if (!r) {
      r = Runtime.open({ home: root, owner: `${processName()} (embedded)` });
      Runtime.#shared.set(root, r);
      r.catch(() => Runtime.#shared.delete(root));
    }
    return r;
  }

  /** The images of this home: pull, list, inspect, remove (import, export, tag and prune: `ImageStore`). */
  get images(): ImagesApi {
    return (this.#imagesApi ??= new StoreImages(this.#images, (context, options) => this.#build(context, options)));
  }
  #imagesApi: StoreImages | undefined;

  /** The named volumes of this home: directories mounted into sandboxes (`volumes` of `create`), kept after them. */
  get volumes(): Volumes {
    return this.#volumes;
  }

  /**
   * Snapshots of this home: list, inspect, remove (refused while sandboxes
   * or snapshots depend on one). Take one with `sandbox.snapshot()`,
   * restore one with `create({ snapshot })`.
   */
  get snapshots(): SnapshotsApi {
    return this.#snapshots;
  }

  /**
   * Actors: WASM programs with a versioned state and a mailbox, Roost's
   * second isolation tier (docs/actors.md). This runtime handles their
   * messages while it is open; the database and threads start on first use.
   */
  get actors(): ActorSystem {
    this.#checkOpen();
    return (this.#actors ??= ActorSystem.open({
      dbPath: this.#layout.actorsDb,
      host: actorHost((id) => this.get(id)),
      onEvent: (type, data) => this.#log.append(type, { data }),
    }));
  }
  #actors: ActorSystem | undefined;

  /** Templates: `create({ template })` restores a template's snapshot, built on first use. */
  get templates(): Templates {
    return this.#templates;
  }

  /**
   * Warm pools: sandboxes restored from a template or snapshot ahead of
   * time and kept paused; `create({ pool })` hands one over. This runtime
   * keeps them filled while it is open (see `reconcile`).
   */
  get pools(): Pools<Sandbox> {
    return this.#pools;
  }

  /**
   * Deployments: a workload, a replica count, a health check and service
   * ports, kept true by this runtime while it is open (see `reconcile`).
   * Replicas are detached sandboxes: they outlive the runtime, and the next
   * one to open the home adopts them (their workloads start again).
   */
  get deployments(): Deployments<Sandbox> {
    return this.#deployments;
  }

  /**
   * Creates and boots a sandbox (or restores one from `snapshot`, or from a
   * template's warm snapshot); resolves once its agent answers.
   */
  async create(options: CreateSandboxOptions = {}): Promise<Sandbox> {
    this.#checkOpen();
    checkPoolCreateOptions(options as Record<string, unknown>);
    if (options.pool !== undefined) {
      // A hand-over makes no sandbox: the options are checked here (a fallback restore checks them again).
      const { pool, ...rest } = checkCreateOptions(options);
      return this.#pools._take(pool!, rest);
    }
    return this.#create(options);
  }

  /** An image build (build/build.ts): its RUN steps' sandboxes are this runtime's, removed with it if it closes first. */
  async #build(context: string, options: BuildImageOptions): Promise<BuildResult> {
    this.#checkOpen();
    const signal = options.signal ? AbortSignal.any([options.signal, this.#closing.signal]) : this.#closing.signal;
    const run = buildImage(
      {
        store: this.#images,
        cache: this.#buildCache,
        imageBody: (id) => imageInfoBody(this.#images.inspect(id)),
        sandbox: (o) =>
          this.#create({
            image: o.image,
            network: o.network,
            ...(o.egress ? { egress: o.egress } : {}),
            ...(o.cpus ? { cpus: o.cpus } : {}),
            memoryMiB: o.memoryMiB ?? BUILD_MEMORY_MIB,
            ...(o.diskSizeMiB ? { diskSizeMiB: o.diskSizeMiB } : {}),
            autoRemove: true,
            timeoutMs: 60_000,
            ...(o.signal ? { signal: o.signal } : {}),
          }),
      },
      context,
      { ...options, signal },
    );
    this.#track(run);
    return run;
  }

  /** `create` without the checks of what callers may ask (pools make members with the reserved label through it). */
  async #create(options: CreateSandboxOptions): Promise<Sandbox> {
    this.#checkOpen();
    if (options.template !== undefined) {
      const { template, ...rest } = options;
      if (rest.snapshot !== undefined) throw new RoostError('INVALID_ARGUMENT', 'snapshot and template: give one of them');
      // Checked before the template's snapshot is built: bad input fails fast.
      checkRestoreOptions(rest, 'of a template', "the template's");
      const snapshot = await this.#templates._snapshotFor(template, {
        ...(rest.timeoutMs ? { timeoutMs: Math.max(rest.timeoutMs, 120_000) } : {}),
        ...(rest.signal ? { signal: rest.signal } : {}),
      });
      return this.#create({ ...rest, snapshot });
    }
    if (this.#creating >= this.#maxConcurrentCreates) {
      throw new RoostError(
        'RESOURCE_EXHAUSTED',
        `${this.#creating} sandboxes are being created already (the limit is ${this.#maxConcurrentCreates}): retry when one is up`,
        {
          details: { limit: this.#maxConcurrentCreates },
        },
      );
    }
    const live = [...this.#sandboxes.values()].filter((s) => isLive(s.status)).length + this.#creating;
    if (live >= this.#maxSandboxes) {
      throw new RoostError('RESOURCE_EXHAUSTED', `${live} sandboxes run already (the limit is ${this.#maxSandboxes}): stop one first`, {
        details: { limit: this.#maxSandboxes },
      });
    }
    this.#creating++;
    const signal = options.signal ? AbortSignal.any([options.signal, this.#closing.signal]) : this.#closing.signal;
    const created = Sandbox._create(this.#services(), { ...options, signal });
    this.#track(created);
    try {
      const sb = await created;
      if (this.#closed) {
        await sb._release();
        throw new RoostError('UNAVAILABLE', 'the runtime closed while the sandbox was being created');
      }
      return sb;
    } finally {
      this.#creating--;
    }
  }

  /** A sandbox by id or unique id prefix. */
  async get(id: string): Promise<Sandbox> {
    this.#checkOpen();
    const full = this.#records.resolve(id, this.home);
    const sb = this.#sandboxes.get(full);
    if (!sb) throw new RoostError('NOT_FOUND', `no sandbox ${id} in ${this.home} (see \`roost ps -a\`)`);
    return sb;
  }

  /** The sandboxes, newest first, optionally filtered by status, image and labels. */
  async list(filter: ListFilter = {}): Promise<SandboxInfo[]> {
    this.#checkOpen();
    return [...this.#sandboxes.values()]
      .map((s) => s.info)
      .filter((i) => matchesFilter(i, filter))
      .sort((a, b) => b.createdAt.localeCompare(a.createdAt) || a.id.localeCompare(b.id));
  }

  /**
   * Events: the persisted ones after `after`, then new ones as they happen,
   * until `signal` aborts or the runtime closes.
   */
  events(options: EventsOptions = {}): AsyncIterable<RoostEvent> {
    const signal = options.signal ? AbortSignal.any([options.signal, this.#closing.signal]) : this.#closing.signal;
    return this.#log.follow({ ...options, signal });
  }

  /** The newest event id (resume points start here). */
  lastEventId(): number {
    return this.#log.lastId();
  }

  /** Counters since this runtime opened, sandboxes by status, and each running sandbox's usage. */
  async metrics(): Promise<RuntimeMetrics> {
    const byStatus: Record<SandboxStatus, number> = { creating: 0, running: 0, paused: 0, stopping: 0, stopped: 0, failed: 0 };
    const perSandbox: SandboxMetrics[] = [];
    for (const sb of this.#sandboxes.values()) {
      byStatus[sb.status]++;
      if (isLive(sb.status)) perSandbox.push(await this.#usage(sb));
    }
    return {
      sandboxesCreated: this.#counters.sandboxesCreated,
      sandboxesDestroyed: this.#counters.sandboxesDestroyed,
      execs: this.#counters.execs,
      execBytes: { ...this.#counters.execBytes },
      sandboxes: byStatus,
      uptimeSeconds: (performance.now() - this.#startedAt) / 1000,
      perSandbox,
    };
  }

  /** One sandbox's usage: CPU seconds and memory of its VM, commands run. */
  async sandboxMetrics(id: string): Promise<SandboxMetrics> {
    return this.#usage(await this.get(id));
  }

  /** Installs and builds what sandboxes boot (see `roost setup`). */
  setup(options: Omit<SetupOptions, 'home'> = {}): Promise<Assets> {
    this.#assets = null;
    return setup({ ...options, home: this.home });
  }

  /** The built assets, or SETUP_REQUIRED naming `roost setup`. */
  assets(): Promise<Assets> {
    // Cached on success only: a failed load (setup not run yet) is retried next time.
    const a = (this.#assets ??= loadAssets(this.home));
    a.catch(() => {
      if (this.#assets === a) this.#assets = null;
    });
    return a;
  }

  /**
   * Checks the home against the VM processes and directories found and,
   * with `repair`, rebuilds what it safely can (see docs/recovery.md): a VM
   * without a record is re-adopted as a detached sandbox, never killed.
   */
  doctor(options: DoctorOptions = {}): Promise<DoctorReport> {
    this.#checkOpen();
    const run = this.#doctoring.then(async () => {
      const repair = options.repair ?? false;
      const result = await examineHome(
        {
          layout: this.#layout,
          db: this.#records.db,
          records: this.#records,
          events: this.#log,
          snapshots: this.#snapshotStore,
          witnesses: this.#witnesses,
          vmm: this.#vmm,
          owned: (id) => this.#sandboxes.has(id),
        },
        repair,
      );
      for (const id of result.rewritten) await this.#adopt(id);
      return report(this.home, repair, 'ok', undefined, result.vms, result.findings);
    });
    this.#doctoring = run.catch(() => {});
    return run;
  }
  #doctoring: Promise<unknown> = Promise.resolve();

  /**
   * The doctor of a home no runtime has open: works when `Runtime.open`
   * refuses its database (INVALID_STATE), and with `repair` moves that
   * database aside (kept as `roost.db.broken-<time>`) and rebuilds the
   * records from the sandbox and snapshot directories and live VMs.
   */
  static doctor(options: HomeDoctorOptions = {}): Promise<DoctorReport> {
    return doctorHome(options);
  }

  /**
   * Closes the runtime: creations in flight are aborted, sandboxes that are
   * not detached are killed (detached ones keep running for the next
   * runtime), and the home's lock is released.
   */
  close(): Promise<void> {
    this.#closed ??= (async () => {
      this.#closing.abort(new RoostError('UNAVAILABLE', 'the runtime is closing'));
      this.#lifetimes.close();
      await Promise.all([this.#pools.close(), this.#deployments.close(), this.#actors?.close()]);
      await Promise.allSettled([...this.#inFlight]);
      await Promise.allSettled([...this.#sandboxes.values()].map((s) => s._release()));
      this.#network.close();
      this.#lock.release();
      if ((await Runtime.#shared.get(this.home)?.catch(() => null)) === this) Runtime.#shared.delete(this.home);
    })();
    return this.#closed;
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }

  // ---- internals -------------------------------------------------------------

  #services(): SandboxServices {
    return {
      vmm: this.#vmm,
      jail: this.#jail,
      home: this.home,
      layout: this.#layout,
      records: this.#records,
      events: this.#log,
      witnesses: this.#witnesses,
      counters: this.#counters,
      images: this.#images,
      volumes: this.#volumes,
      snapshots: this.#snapshotStore,
      network: this.#network,
      assets: () => this.assets(),
      create: (options) => this.create(options),
      adopted: (sb) => {
        this.#sandboxes.set(sb.id, sb);
        this.#lifetimes.set(sb.id, sb.info.expiresAt);
      },
      released: (id) => {
        this.#sandboxes.delete(id);
        this.#lifetimes.delete(id);
        this.#pools._gone(id);
        this.#deployments._gone(id);
      },
      exited: (id) => {
        this.#pools._gone(id);
        this.#deployments._gone(id);
      },
      lifetimeChanged: (id, expiresAt) => this.#lifetimes.set(id, expiresAt),
    };
  }

  #checkOpen(): void {
    if (this.#closed) throw new RoostError('UNAVAILABLE', `the runtime of ${this.home} is closed`);
  }

  #track(p: Promise<unknown>): void {
    this.#inFlight.add(p);
    void p.then(
      () => this.#inFlight.delete(p),
      () => this.#inFlight.delete(p),
    );
  }

  async #usage(sb: Sandbox): Promise<SandboxMetrics> {
    const pid = sb.vmPid;
    const u = pid !== null ? await processUsage(pid) : null;
    return {
      id: sb.id,
      status: sb.status,
      cpuSeconds: u?.cpuSeconds ?? 0,
      memoryRssBytes: u?.rssBytes ?? 0,
      memoryPssBytes: u?.pssBytes ?? null,
      execs: sb.info.execs,
      jailed: sb.info.confinement?.jailed ?? false,
      memoryLimitBytes: sb.info.confinement?.limits?.memoryBytes ?? null,
    };
  }

  /**
   * What a previous owner left: directories without a record are recorded
   * again from their witness (or an older Roost's sandbox.json); each
   * record is re-attached to its VM or recorded as exited; directories with
   * neither record nor witness nor a live VM, and sockets of dead VMs, are
   * removed; old events are pruned.
   */
  async #recover(): Promise<void> {
    const dirs = (await readdir(this.#layout.sandboxes).catch(() => [] as string[])).filter((d) => ID_PATTERN.test(d));
    // Directories live VMs serve: never removed (null: the backend cannot tell, so none is).
    const found = this.#vmm.findVms?.(this.#layout.sandboxes);
    const vmDirs = found ? new Set(found.map((vm) => basename(vm.dir))) : null;
    for (const id of dirs) {
      if (this.#records.get(id)) continue;
      const witness = this.#witnesses.read(id);
      const legacy = witness ? null : await readFile(join(this.#layout.sandbox(id), 'sandbox.json'), 'utf8').catch(() => null);
      const info = witness ?? (legacy ? parseLegacyRecord(legacy, id) : null);
      if (info) {
        // A record lost (or never written after its witness): the witness brings it back, and the loop below reconciles it.
        this.#records.db.transaction(() => {
          this.#records.put(info);
          this.#log.append('sandbox.recovered', { sandboxId: id, data: { from: witness ? 'witness' : 'sandbox.json', status: info.status, pid: info.pid } });
        })();
        if (legacy) await rm(join(this.#layout.sandbox(id), 'sandbox.json'), { force: true });
      } else if (vmDirs && !vmDirs.has(id)) {
        // Made by a runtime that died between mkdir and its first record: nothing ran here.
        await rm(this.#layout.sandbox(id), { recursive: true, force: true });
      }
      // Otherwise a VM runs there that nothing records: `roost doctor --repair` adopts it.
    }
    for (const info of this.#records.all()) {
      const sb = await this.#adopt(info.id, found);
      // What its dead owner would have removed on a normal exit (its VM was killed by the recovery).
      if (sb && removedAtRecovery(info)) {
        await sb.remove({ force: true });
        continue;
      }
      if (sb) this.#witnesses.ensure(sb.info);
      if (sb && !isLive(sb.status)) {
        const dir = this.#layout.sandbox(sb.id);
        for (const f of await readdir(dir).catch(() => [] as string[])) if (f.endsWith('.sock')) await rm(join(dir, f), { force: true });
      }
    }
    // Addresses leased to sandboxes that were never recorded (a crash between lease and record).
    this.#network.reclaimLeases((id) => this.#records.get(id) !== undefined);
    this.#log.prune();
    // Cgroups of this home's sandboxes whose VMs died with no one to see them exit, and any home's empty stale ones.
    if (this.#jail) sweepSandboxCgroups((id) => !this.#records.get(id) || this.#sandboxes.get(id)?.vmPid != null);
    await this.#volumes.sweep();
    await this.#snapshotStore.sweep();
    // A fork's (or template's) snapshot that nothing uses: its maker died between taking it and restoring from it.
    for (const r of this.#snapshotStore.all()) if (r.kind !== 'user') await this.#snapshotStore.removeIfUnused(r.id).catch(() => {});
    secureHome(this.home);
    await sweepTempFiles(this.home);
    // Lifetimes last: one that ended while no runtime was open ends now, once the home is whole.
    for (const sb of this.#sandboxes.values()) this.#lifetimes.set(sb.id, sb.info.expiresAt);
    this.#recovered = true;
  }

  /**
   * Sandbox `id`'s lifetime has ended: it is removed, stopped or paused as
   * its record says (`onExpiry`), with a `sandbox.expired` event first. An
   * end moved later meanwhile is waited for instead.
   */
  async #expire(id: string): Promise<void> {
    const sb = this.#sandboxes.get(id);
    const at = sb?.info.expiresAt;
    if (!sb || !at || this.#closed) return;
    if (Date.parse(at) > Date.now()) return this.#lifetimes.set(id, at);
    // Still booting: it ends once it is up (a lifetime shorter than its boot does not fail the boot).
    if (sb.status === 'creating') return this.#lifetimes.set(id, new Date(Date.now() + EXPIRY_RETRY_MS).toISOString());
    const action = sb.info.onExpiry ?? 'remove';
    this.#log.append('sandbox.expired', { sandboxId: id, data: { action, expiresAt: at } });
    const done = (async () => {
      if (action === 'remove') return sb.remove({ force: true });
      // Stopped or paused, it has no end any more: a later setLifetime gives it one.
      await sb.setLifetime(null);
      if (action === 'stop' && isLive(sb.status)) await sb.stop();
      if (action === 'pause' && sb.status === 'running') await sb.pause();
    })();
    this.#track(done);
    await done;
  }

  /**
   * Makes the sandbox of a record this runtime's: attached to its VM, or
   * recorded as gone (see `Sandbox._recover`). An object that held the
   * record before (a doctor rewrote it) writes nothing more. `found`: the
   * home's VMs, when already looked up.
   */
  async #adopt(id: string, found?: readonly FoundVm[]): Promise<Sandbox | null> {
    const info = this.#records.get(id);
    if (!info) return null;
    this.#sandboxes.get(id)?._supersede();
    const sb = Sandbox._recover(this.#services(), info, found);
    this.#sandboxes.set(sb.id, sb);
    await sb._attachNetwork();
    await sb._reconcile();
    // Recovery arms all lifetimes once it is done; a doctor's re-adoption arms this one.
    if (this.#recovered) this.#lifetimes.set(id, sb.info.expiresAt);
    return sb;
  }
}

Sandbox._useSharedRuntime((home) => Runtime.shared(home));

/** How soon an ended lifetime is looked at again while its sandbox is still being created (ms). */
const EXPIRY_RETRY_MS = 100;

/** A sandbox.json record of Roost before the SQLite state, brought to today's shape. */
function parseLegacyRecord(text: string, id: string): SandboxInfo | null {
  try {
    const v = JSON.parse(text) as Partial<SandboxInfo>;
    if (v.id !== id || typeof v.status !== 'string' || typeof v.createdAt !== 'string') return null;
    return { labels: {}, execs: 0, env: {}, startedAt: null, stoppedAt: null, ...v } as SandboxInfo;
  } catch {
    return null;
  }
}

function processName(): string {
  const script = process.argv[1]?.split('/').pop();
  return script ? `node ${script} (pid ${process.pid})` : `pid ${process.pid}`;
}
