import { createHash, randomBytes } from 'node:crypto';
import { chmod, mkdir, readdir, readFile, rename, rm, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { userLabels, type EgressSpec, type SandboxInfo, type SnapshotKind, type VolumeMount } from '@roost/api';
import type { AgentConnection } from '../agent/connection.js';
import type { Assets } from '../assets.js';
import { abortError, diskFullError, rethrowDiskFull, RoostError } from '../errors.js';
import { notRunningError } from './state-error.js';
import type { ImageStore } from '../image/store.js';
import { copyHashed } from '../snapshot/memory.js';
import { buildIdentity, SNAPSHOT_FILES, SNAPSHOT_FORMAT, writeSnapshotWitness, type SnapshotRecord, type SnapshotStore } from '../snapshot/store.js';
import type { EventLog } from '../state/events.js';
import type { SandboxRecords } from '../state/sandboxes.js';
import type { SavedMemory, Vmm, VmHandle } from '../vmm/types.js';
import { PRIVATE_DIR, PRIVATE_FILE } from '../state/private.js';
import type { FileServerState } from '../fileserver/config.js';
import { FileServerControl } from '../fileserver/process.js';

/** The longest a snapshot waits for the guest's volume requests in flight to be answered and delivered. */
const VOLUME_QUIESCE_MS = 30_000;

/** What taking a snapshot needs: the stores it writes, the VMM's disk tools, and the source sandbox's VM and agent. */
export interface SnapshotContext {
  readonly info: Readonly<SandboxInfo>;
  /** The source sandbox's directory (its disk). */
  readonly dir: string;
  readonly vm: VmHandle | null;
  connection(): Promise<AgentConnection>;
  assets(): Promise<Assets>;
  readonly images: Pick<ImageStore, 'rootfs'>;
  readonly snapshots: SnapshotStore;
  /** Where snapshots are written before they are renamed into place. */
  readonly snapshotsDir: string;
  readonly records: Pick<SandboxRecords, 'db'>;
  readonly events: Pick<EventLog, 'append'>;
  readonly vmm: Pick<Vmm, 'createOverlay'>;
  /** Runs while the vCPUs are stopped, after the volumes are quiet (a fork copying them). */
  whilePaused?: () => Promise<void>;
}

/** The default name of a user snapshot: <id>-<UTC time to the millisecond>, e.g. 3f2a9c0d1b7e-20261122T115323123. */
export function snapshotName(sandboxId: string, name?: string): string {
  return name ?? `${sandboxId}-${new Date().toISOString().replace(/[-:.Z]/g, '')}`;
}

/** A fork's snapshot name: unique per source and moment. */
export function forkName(sandboxId: string): string {
  return `fork-${sandboxId}-${Date.now().toString(36)}${randomBytes(2).toString('hex')}`;
}

/** What forking needs of the runtime: creating through it (its limits and tracking), and the snapshot store. */
export interface ForkDeps<S extends { remove(options: { force: boolean }): Promise<void> }> {
  create(options: {
    snapshot: string;
    labels: Record<string, string>;
    detached: boolean;
    volumes?: VolumeMount[];
    autoRemove?: boolean;
    egress?: EgressSpec;
    timeoutMs: number;
    signal?: AbortSignal;
  }): Promise<S>;
  readonly snapshots: Pick<SnapshotStore, 'removeIfUnused'>;
}

/**
 * Restores `count` copies of `source` from its fork snapshot `rec`, all or
 * nothing: when one fails, those that started are removed, and the
 * snapshot with the last of them.
 */
export async function forkFrom<S extends { remove(options: { force: boolean }): Promise<void> }>(
  deps: ForkDeps<S>,
  source: Readonly<SandboxInfo>,
  rec: SnapshotRecord,
  count: number,
  options: {
    labels?: Record<string, string>;
    detached?: boolean;
    /** The volumes of copy i, when they are not the source's (a fork with `volumes: 'copy'`). */
    volumesOf?: (i: number) => VolumeMount[];
    timeoutMs: number;
    signal?: AbortSignal;
  },
): Promise<S[]> {
  const detached = options.detached ?? source.detached;
  const results = await Promise.allSettled(
    Array.from({ length: count }, (_, i) =>
      deps.create({
        ...(options.volumesOf ? { volumes: options.volumesOf(i) } : {}),
        snapshot: rec.id,
        // Not the source's pool or deployment: a copy is nobody's member or replica.
        labels: options.labels ?? userLabels(source.labels),
        detached,
        // Copies that end with their owner end as their source would.
        ...(!detached && source.autoRemove ? { autoRemove: true } : {}),
        // Copies keep the source's egress policy (not its published ports: a host port has one listener).
        ...(source.network && source.network.mode !== 'none' ? { egress: source.network.egress } : {}),
        timeoutMs: options.timeoutMs,
        ...(options.signal ? { signal: options.signal } : {}),
      }),
    ),
  );
  const made = results.flatMap((r) => (r.status === 'fulfilled' ? [r.value] : []));
  const failed = results.find((r): r is PromiseRejectedResult => r.status === 'rejected');
  if (failed) {
    await Promise.allSettled(made.map((sb) => sb.remove({ force: true })));
    await deps.snapshots.removeIfUnused(rec.id);
    throw failed.reason;
  }
  return made;
}

/**
 * Takes a snapshot of a running or paused sandbox: the guest freezes its
 * disk, the vCPUs stop, the device state, RAM and disk are written to a
 * temporary directory that is renamed into place, and the record is
 * inserted with its event. The guest is left as it was (running or
 * paused, thawed) whatever happens. Called serialized with the lifecycle.
 */
export async function takeSnapshot(
  ctx: SnapshotContext,
  name: string,
  kind: SnapshotKind,
  timeoutMs: number,
  userSignal?: AbortSignal,
  template?: string,
): Promise<SnapshotRecord> {
  const { info, vm } = ctx;
  if ((info.status !== 'running' && info.status !== 'paused') || !vm || vm.hasExited) {
    throw notRunningError(info.id, info.status, 'snapshot it (only a running or paused sandbox can be snapshotted)');
  }
  const store = ctx.snapshots;
  store.checkNameFree(name);
  const deadline = AbortSignal.timeout(timeoutMs);
  const signal = userSignal ? AbortSignal.any([userSignal, deadline]) : deadline;
  const [assets, qemuVersion] = await Promise.all([ctx.assets(), store.vmmVersion()]);
  const rootfs = info.image ? await ctx.images.rootfs(info.image.id, { signal }) : assets.rootfs;
  const rootfsSize = (await stat(rootfs)).size;
  const id = store.newId();
  // Named with our pid: a temp dir whose process died is swept (state/sweep.ts), a live one's is not.
  const tmp = join(ctx.snapshotsDir, `.tmp-${process.pid}-${id}`);
  await mkdir(tmp, { recursive: true, mode: PRIVATE_DIR }).catch((e: unknown) => rethrowDiskFull(e, ctx.snapshotsDir));
  try {
    const conn = await ctx.connection();
    const wasPaused = info.status === 'paused';
    // The guest syncs and freezes its disk, and marks itself as being
    // snapshotted (a restored copy then keeps its processes). A paused
    // guest runs for these moments and is paused again after.
    let running = !wasPaused;
    let freezeSent = false;
    let frozen = false;
    let saved: SavedMemory;
    let disk: { size: number; sha256: string };
    // With volumes: the file server quiets the guest's 9P channel and hands over its sessions (saved with the snapshot).
    const files = info.volumes?.length ? new FileServerControl(ctx.dir) : null;
    let volumeState: FileServerState | undefined;
    const memBytes = info.memoryMiB * 2 ** 20;
    try {
      if (!running) {
        await vm.resume({ signal });
        running = true;
      }
      // An agent older than FREEZE is snapshotted unfrozen, as one that does not answer in time is (`frozen: false`).
      if (conn.supports('FREEZE')) {
        freezeSent = true;
        const answer = await conn.freeze(Math.min(timeoutMs, 10_000)).catch((e: unknown) => {
          if (e instanceof RoostError && e.code === 'TIMEOUT') return null;
          throw e;
        });
        frozen = answer?.errno === 0;
      }
      if (files) volumeState = await files.quiesce(Math.min(timeoutMs, VOLUME_QUIESCE_MS));
      await vm.pause({ signal });
      running = false;
      await ctx.whilePaused?.();
      [saved, disk] = await Promise.all([
        vm.saveState(
          {
            devices: join(tmp, SNAPSHOT_FILES.state),
            memory: join(tmp, SNAPSHOT_FILES.memory),
            memoryBytes: memBytes,
            restoredFrom: info.snapshot ? join(store.dir(info.snapshot), SNAPSHOT_FILES.memory) : undefined,
          },
          { timeoutMs, signal },
        ),
        copyHashed(join(ctx.dir, 'disk.qcow2'), join(tmp, SNAPSHOT_FILES.disk)),
      ]);
    } finally {
      // Whatever happened, the guest is left as it was: running (or paused), thawed, not marked.
      if (!running) await vm.resume().catch(() => {});
      if (files) {
        await files.resume().catch(() => {});
        files.close();
      }
      if (freezeSent) await conn.thaw(10_000).catch(() => {});
      if (wasPaused) await vm.pause().catch(() => {});
    }
    const state = await readFile(join(tmp, SNAPSHOT_FILES.state));
    let volumesFile: { size: number; sha256: string } | undefined;
    if (volumeState) {
      const text = JSON.stringify(volumeState);
      await writeFile(join(tmp, SNAPSHOT_FILES.volumes), text, { mode: PRIVATE_FILE });
      volumesFile = { size: Buffer.byteLength(text), sha256: createHash('sha256').update(text).digest('hex') };
    }
    // Restores copy this empty layer over the snapshot's disk instead of making one each time.
    // Its base is where the disk will be once this directory is renamed into place.
    await ctx.vmm.createOverlay(join(store.dir(id), SNAPSHOT_FILES.disk), join(tmp, SNAPSHOT_FILES.overlay), info.diskSizeMiB, { signal });
    const rec: SnapshotRecord = {
      id,
      name,
      kind,
      createdAt: new Date().toISOString(),
      sourceSandbox: info.id,
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
      ...(info.volumes?.length ? { volumes: info.volumes } : {}),
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
          ...(volumesFile ? { volumes: volumesFile } : {}),
        },
        ...(info.volumes?.length ? { volumes: info.volumes } : {}),
      },
    };
    // QEMU and qemu-img made some of these files: private whatever their umask.
    for (const f of await readdir(tmp)) await chmod(join(tmp, f), PRIVATE_FILE);
    await writeFile(join(tmp, SNAPSHOT_FILES.manifest), JSON.stringify(rec.manifest, null, 2) + '\n', { mode: PRIVATE_FILE });
    writeSnapshotWitness(tmp, rec);
    await rename(tmp, store.dir(id));
    // Recorded at once: a directory in place without its record is what a doctor records again from its witness.
    ctx.records.db.transaction(() => {
      store.insert(rec);
      ctx.events.append('snapshot.created', { sandboxId: info.id, data: { snapshot: name, snapshotId: id, kind, sizeBytes: rec.sizeBytes, frozen } });
    })();
    // Only a cache of checked files: its failure fails nothing.
    await store.identity(id).then(
      (identity) => store.markVerified(id, identity),
      () => {},
    );
    return rec;
  } catch (e) {
    await rm(tmp, { recursive: true, force: true });
    await rm(store.dir(id), { recursive: true, force: true }).catch(() => {});
    if (signal.aborted && !(e instanceof RoostError && e.code !== 'ABORTED' && e.code !== 'TIMEOUT')) {
      throw deadline.aborted
        ? new RoostError('TIMEOUT', `the snapshot of sandbox ${info.id} took longer than ${timeoutMs} ms`, { cause: e })
        : abortError(signal, 'the snapshot');
    }
    throw diskFullError(e, ctx.snapshotsDir) ?? e;
  }
}
