import { randomBytes } from 'node:crypto';
import { cpus as hostCpus, totalmem } from 'node:os';
import { mkdir } from 'node:fs/promises';
import type { ExpiryAction, NetworkMode, PullPolicy, SandboxImage, SandboxInfo } from '@roost/api';
import type { EgressSpec, PortMapping, PortSpec, VolumeMount } from '@roost/api';
import { CreateOptionsSchema, parseInput } from '@roost/api';
import { z } from 'zod';
import type { Assets } from '../assets.js';
import { RoostError } from '../errors.js';
import type { HomeLayout } from '../home.js';
import type { PullProgress } from '../image/manifest.js';
import type { ImageStore } from '../image/store.js';
import type { BridgeNetwork } from '../net/bridge-network.js';
import type { RuntimeNetwork } from '../net/runtime-network.js';
import { planNetwork } from '../net/sandbox-net.js';
import type { SnapshotRecord, SnapshotStore } from '../snapshot/store.js';
import type { SandboxRecords } from '../state/sandboxes.js';
import { chooseAccel } from '../vmm/accel.js';
import { DEFAULT_DISK_MIB } from '../vmm/types.js';
import { isHostPath, resolveVolumes } from './volumes.js';
import type { Volumes } from '../volumes.js';
import { PRIVATE_DIR } from '../state/private.js';

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
   * Remove the sandbox (record, disk, logs) rather than keep it stopped when
   * its owner ends it: this runtime closing, or the next runtime finding that
   * its owner died (default false; as `docker run --rm`). Not with `detached`.
   */
  autoRemove?: boolean;
  /**
   * End the sandbox this long after it is created (ms; see `setLifetime`),
   * doing `onExpiry` then: `remove` (the default), `stop` or `pause`. The
   * runtime that owns the home enforces it; when none is open, the next one
   * to open the home does.
   */
  lifetimeMs?: number;
  onExpiry?: ExpiryAction;
  /**
   * Host directories (an absolute `source`, which must exist) and named
   * volumes (a `source` that is a volume name; created on first use) to
   * mount at `target` in the guest, served by Roost's 9P file server; at most MAX_VOLUMES (32). Targets are
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
   * Take a ready sandbox from this warm pool (see `runtime.pools`), or
   * restore one from its template or snapshot when it is empty (`info.pool`
   * says which). Only labels, env, detached, autoRemove, lifetimeMs,
   * onExpiry and timeoutMs go with it.
   */
  pool?: string;
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

/**
 * The options `Sandbox.create` / `runtime.create` accept: the contract's
 * create schema with the static helper's `home`, and memory checked against
 * this host's RAM (a limit the contract cannot know).
 */
export const createOptionsSchema = CreateOptionsSchema.extend({
  /** Roost home (default $ROOST_HOME or ~/.roost); only for the static `Sandbox.create`. */
  home: z.string().min(1).optional(),
})
  .strict()
  .superRefine((opts, ctx) => {
    const hostMiB = Math.floor(totalmem() / 2 ** 20);
    if (opts.memoryMiB !== undefined && opts.memoryMiB > hostMiB) {
      ctx.addIssue({
        code: 'custom',
        input: opts.memoryMiB,
        path: ['memoryMiB'],
        message: `Too big: expected number to be <=${hostMiB} (this host's memory in MiB)`,
      });
    }
  });

/** What planning a sandbox needs: the stores it reads, the network it leases from, the VMM's limits. */
export interface PlanDeps {
  readonly home: string;
  readonly layout: HomeLayout;
  readonly records: SandboxRecords;
  readonly images: ImageStore;
  readonly snapshots: SnapshotStore;
  readonly network: RuntimeNetwork;
  readonly volumes: Pick<Volumes, 'get'>;
  assets(): Promise<Assets>;
}

/**
 * A sandbox ready to be recorded and booted: its record (status `creating`),
 * what it boots, and its directory made (with a bridge lease, if it has one).
 */
export interface SandboxPlan {
  info: SandboxInfo;
  assets: Assets;
  /** The root filesystem it boots: its image's, or Roost's base one. */
  rootfs: string;
  /** Ports asked for, bound at the first boot. */
  ports: Required<PortMapping>[];
  /** The snapshot it resumes, for a restore. */
  restore?: SnapshotRecord;
}

/** Parses create options (INVALID_ARGUMENT naming the field); templates and pools are resolved by the runtime before. */
export function parseCreateOptions(options: SandboxOptions): SandboxOptions {
  const opts = checkCreateOptions(options);
  if (opts.template !== undefined) throw new RoostError('INTERNAL', 'templates are resolved by the runtime');
  if (opts.pool !== undefined) throw new RoostError('INTERNAL', 'pools are resolved by the runtime');
  return opts;
}

/** Checks create options, whatever they resolve to (INVALID_ARGUMENT naming the field): the schema, and the rules between fields. */
export function checkCreateOptions(options: SandboxOptions): SandboxOptions {
  const opts = parseInput(createOptionsSchema, options, 'sandbox options') as SandboxOptions;
  if (opts.onExpiry !== undefined && opts.lifetimeMs === undefined) {
    throw new RoostError('INVALID_ARGUMENT', 'onExpiry: says what the end of the lifetime does; give lifetimeMs too', { details: { field: 'onExpiry' } });
  }
  if (opts.autoRemove && opts.detached) {
    throw new RoostError('INVALID_ARGUMENT', 'autoRemove: a detached sandbox outlives its owner; remove it yourself (give one of detached and autoRemove)', {
      details: { field: 'autoRemove' },
    });
  }
  return opts;
}

/**
 * Plans a new sandbox: checks what can fail fast (cpus, volumes, network,
 * bridge privileges) before an image is pulled, then prepares the image and
 * makes the sandbox's directory.
 */
export async function planCreate(deps: PlanDeps, opts: SandboxOptions): Promise<SandboxPlan> {
  const assets = await deps.assets();
  const accel = chooseAccel();
  const cpus = opts.cpus ?? 1;
  if (cpus > hostCpus().length && accel === 'kvm') {
    throw new RoostError('INVALID_ARGUMENT', `cpus: ${cpus} requested, the host has ${hostCpus().length}`);
  }
  // Checked before an image is pulled: bad input fails fast.
  const volumes = opts.volumes ? await resolveVolumes(opts.volumes, deps.home) : [];
  const plan = planNetwork(opts);
  // Privileges and the bridge are checked before an image is pulled.
  const bridge = plan.info.mode === 'bridge' ? await deps.network.bridge() : null;
  const image = opts.image ? await prepareImage(deps.images, opts) : undefined;
  const info = newRecord(deps, opts, accel, {
    cpus,
    memoryMiB: opts.memoryMiB ?? 256,
    diskSizeMiB: opts.diskSizeMiB ?? DEFAULT_DISK_MIB,
    env: { ...image?.env, ...opts.env },
    ...(image ? { image: image.record } : {}),
    ...(image?.workingDir ? { workingDir: image.workingDir } : {}),
    ...(image?.user ? { user: image.user } : {}),
    ...(volumes.length > 0 ? { volumes } : {}),
    network: plan.info,
  });
  // Recorded before QEMU starts, so a crash in between leaves a record to reap, not an orphan.
  await makeSandboxDir(deps, info, bridge);
  return { info, assets, rootfs: image?.rootfs ?? assets.rootfs, ports: plan.ports };
}

/**
 * Plans a sandbox restored from `opts.snapshot`: the snapshot must restore
 * here (same build, accelerator, image, files whole), and the copy gets the
 * snapshot's resources and network mode.
 */
export async function planRestore(deps: PlanDeps, opts: SandboxOptions): Promise<SandboxPlan> {
  checkRestoreOptions(opts, 'restored from a snapshot', "the snapshot's");
  const rec = deps.snapshots.get(opts.snapshot!);
  const assets = await deps.assets();
  const accel = chooseAccel();
  let rootfs = assets.rootfs;
  if (rec.image) {
    if (!deps.images.find(rec.image.id)) {
      throw new RoostError(
        'NOT_FOUND',
        `snapshot ${rec.name} runs image ${rec.image.reference} (${rec.image.id}), which is no longer stored: pull it again to restore the snapshot`,
      );
    }
    rootfs = await deps.images.rootfs(rec.image.id, opts.signal ? { signal: opts.signal } : {});
  }
  await deps.snapshots.verify(rec, assets, accel, rootfs, opts.signal);
  const volumes = await restoredVolumes(deps, rec, opts.volumes);
  // The guest has these mounted, its open files among them: a named volume removed since is not made again empty.
  for (const v of opts.volumes === undefined ? volumes : []) {
    if (isHostPath(v.source)) continue;
    await deps.volumes.get(v.source).catch((e: unknown) => {
      throw e instanceof RoostError && e.code === 'NOT_FOUND'
        ? new RoostError('NOT_FOUND', `snapshot ${rec.name} mounts volume ${v.source} at ${v.target}, which was removed: a restore needs it`, {
            details: { snapshot: rec.name, volume: v.source },
          })
        : e;
    });
  }
  // The NIC is part of the saved devices: the copy has the snapshot's network mode, and its own MAC and address.
  const snapshotMode: NetworkMode = rec.manifest.network ?? 'none';
  if (opts.network !== undefined && opts.network !== snapshotMode) {
    throw new RoostError(
      'INVALID_ARGUMENT',
      `network: snapshot ${rec.name} was taken with network '${snapshotMode}', and a restored sandbox has the snapshot's devices: leave network out, or give '${snapshotMode}'`,
      { details: { field: 'network' } },
    );
  }
  const plan = planNetwork({ ...opts, network: snapshotMode });
  // In user mode every sandbox has a network of its own (no shared segment), so a copy keeps the
  // snapshot's MAC: its guest then has nothing to reconfigure when it connects. On a bridge a
  // copy gets its own lease and MAC.
  if (plan.info.mode === 'user' && rec.manifest.mac) plan.info.mac = rec.manifest.mac;
  const bridge = plan.info.mode === 'bridge' ? await deps.network.bridge() : null;
  const info = newRecord(deps, opts, accel, {
    cpus: rec.cpus,
    memoryMiB: rec.memoryMiB,
    diskSizeMiB: rec.diskSizeMiB,
    env: { ...rec.env, ...opts.env },
    ...(rec.image ? { image: rec.image } : {}),
    ...(rec.workingDir ? { workingDir: rec.workingDir } : {}),
    ...(rec.user ? { user: rec.user } : {}),
    snapshot: rec.id,
    // The guest has the snapshot's volumes mounted: the copy mounts the same sources (its own sessions over the same
    // files), or others given for the same targets.
    ...(volumes.length ? { volumes } : {}),
    network: plan.info,
  });
  await makeSandboxDir(deps, info, bridge);
  return { info, assets, rootfs, ports: plan.ports, restore: rec };
}

/** What a new record takes from its plan; the rest is the same for every new sandbox. */
type PlannedFields = Pick<SandboxInfo, 'cpus' | 'memoryMiB' | 'diskSizeMiB' | 'env' | 'network'> &
  Partial<Pick<SandboxInfo, 'image' | 'workingDir' | 'user' | 'volumes' | 'snapshot'>>;

/** A new sandbox's record (status `creating`, a fresh id) from what its plan chose. */
function newRecord(deps: Pick<PlanDeps, 'records'>, opts: SandboxOptions, accel: SandboxInfo['accel'], planned: PlannedFields): SandboxInfo {
  const { cpus, memoryMiB, diskSizeMiB, env, ...rest } = planned;
  return {
    id: newId(deps.records),
    status: 'creating',
    createdAt: new Date().toISOString(),
    startedAt: null,
    stoppedAt: null,
    cpus,
    memoryMiB,
    diskSizeMiB,
    detached: opts.detached ?? false,
    ...(opts.autoRemove ? { autoRemove: true } : {}),
    ...(opts.lifetimeMs ? { expiresAt: new Date(Date.now() + opts.lifetimeMs).toISOString(), onExpiry: opts.onExpiry ?? 'remove' } : {}),
    accel,
    pid: null,
    env,
    labels: { ...opts.labels },
    ...rest,
    execs: 0,
  };
}

/**
 * What a stopped sandbox boots again: the assets and its image's root
 * filesystem (NOT_FOUND when the image is no longer stored).
 */
export async function planStart(
  deps: Pick<PlanDeps, 'assets' | 'images'>,
  info: Pick<SandboxInfo, 'id' | 'image'>,
  signal?: AbortSignal,
): Promise<{ assets: Assets; rootfs: string }> {
  const assets = await deps.assets();
  const image = info.image;
  if (!image) return { assets, rootfs: assets.rootfs };
  if (!deps.images.find(image.id)) {
    throw new RoostError(
      'NOT_FOUND',
      `sandbox ${info.id} runs image ${image.reference} (${image.id}), which is no longer stored: pull it again to start the sandbox`,
    );
  }
  return { assets, rootfs: await deps.images.rootfs(image.id, signal ? { signal } : {}) };
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
 * The volumes a restored sandbox mounts: the snapshot's, or `given` ones
 * for the same targets in the same order (other sources under the guest's
 * mounts: its open files are walked again there).
 */
async function restoredVolumes(deps: Pick<PlanDeps, 'home'>, rec: SnapshotRecord, given: VolumeMount[] | undefined): Promise<VolumeMount[]> {
  const saved = rec.manifest.volumes ?? [];
  if (given === undefined) return saved;
  const volumes = await resolveVolumes(given, deps.home);
  const targets = (list: VolumeMount[]): string => list.map((v) => v.target).join(', ') || 'none';
  if (volumes.length !== saved.length || volumes.some((v, i) => v.target !== saved[i]!.target)) {
    throw new RoostError(
      'INVALID_ARGUMENT',
      `volumes: a sandbox restored from snapshot ${rec.name} has its guest's mounts (${targets(saved)}): give a source for each of those targets, in that order, or leave volumes out (not ${targets(volumes)})`,
      { details: { field: 'volumes' } },
    );
  }
  return volumes;
}

/**
 * A sandbox restored from a snapshot (or a template) has the snapshot's
 * image, cpus, memory and disk: INVALID_ARGUMENT naming any of them that
 * `opts` gives. (Volumes may be given: other sources for the same targets.)
 */
export function checkRestoreOptions(opts: SandboxOptions, what: string, whose: string): void {
  const fixed = (['image', 'pull', 'cpus', 'memoryMiB', 'diskSizeMiB'] as const).filter((k) => opts[k] !== undefined);
  if (fixed.length > 0) {
    throw new RoostError(
      'INVALID_ARGUMENT',
      `${fixed.join(', ')}: a sandbox ${what} has ${whose} image, cpus, memory and disk; leave ${fixed.length > 1 ? 'them' : 'it'} out`,
      {
        details: { fields: fixed },
      },
    );
  }
}

/**
 * Leases a bridge-mode sandbox its address (into `info.network`) and makes
 * its directory; the lease is given back if the directory cannot be made
 * (no record exists yet to release it with).
 */
async function makeSandboxDir(deps: Pick<PlanDeps, 'layout' | 'network'>, info: SandboxInfo, bridge: BridgeNetwork | null): Promise<void> {
  if (bridge) Object.assign(info.network!, bridge.lease(info.id));
  try {
    await mkdir(deps.layout.sandbox(info.id), { recursive: true, mode: PRIVATE_DIR });
  } catch (e) {
    if (bridge) deps.network.releaseLease(info.id);
    throw e;
  }
}

function newId(records: SandboxRecords): string {
  for (;;) {
    const id = randomBytes(6).toString('hex');
    if (!records.get(id)) return id;
  }
}
