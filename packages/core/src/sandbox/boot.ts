import { access, chmod, copyFile, mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import { sleep } from '@roost/api';
import type { AgentConnection } from '../agent/connection.js';
import type { Assets } from '../assets.js';
import { readConsoleLog } from '../console-log.js';
import { abortError, diskFullError, RoostError } from '../errors.js';
import { SNAPSHOT_FILES, type SnapshotRecord } from '../snapshot/store.js';
import type { VmConfinement, VmHandle, VmJail, Vmm } from '../vmm/types.js';
import type { FileExport } from '../fileserver/config.js';
import { startFileServer } from '../fileserver/process.js';
import type { Confinement } from '@roost/api';
import { AgentLink } from './agent-link.js';
import type { SandboxNetwork } from './network.js';
import type { SandboxRecord } from './record.js';
import { removeVmSockets } from './recover.js';
import { mountVolumes } from './volumes.js';
import { PRIVATE_DIR, PRIVATE_FILE } from '../state/private.js';

/** What booting a sandbox's VM needs, and how it hands the running VM over. */
export interface BootContext {
  readonly record: SandboxRecord;
  /** The sandbox's directory: its disk, sockets and logs. */
  readonly dir: string;
  readonly vmm: Vmm;
  /** Where shared disk templates are kept. */
  readonly cacheDir: string;
  /** The jail of the sandbox's next VM; undefined: unconfined. Throws when one is wanted and cannot be built. */
  jail(assets: Assets): VmJail | undefined;
  /** A snapshot's directory (for a restore). */
  snapshotDir(id: string): string;
  readonly net: SandboxNetwork;
  /** The VM process runs (not yet booted): the sandbox's VM from now on. */
  vmStarted(vm: VmHandle | null): void;
  /** The guest booted: the sandbox watches the VM for its exit, and the connection for a lost agent. */
  booted(vm: VmHandle, conn: AgentConnection): void;
}

/** What to boot. */
export interface BootRequest {
  assets: Assets;
  rootfs: string;
  /** The volumes, served by the VM's file server (none: no file server, no `roost.p9` port). */
  exports: FileExport[];
  timeoutMs: number;
  signal?: AbortSignal | undefined;
  /** Resume this snapshot instead of booting. */
  restore?: SnapshotRecord | undefined;
}

/**
 * Boots the sandbox's VM, or resumes a snapshot in it; resolves once the
 * agent answers and the volumes are mounted, with the record `running`. On
 * failure the VM is killed, the network closed and the record `failed`
 * (when a VM was started), and the error is BOOT_FAILED (or TIMEOUT,
 * ABORTED, or the setup/input error that stopped it) with the guest's last
 * console lines.
 */
export async function bootVm(ctx: BootContext, req: BootRequest): Promise<void> {
  const { dir, record } = ctx;
  const deadline = AbortSignal.timeout(req.timeoutMs);
  const signal = req.signal ? AbortSignal.any([req.signal, deadline]) : deadline;
  const info = record.info;
  let vm: VmHandle | null = null;
  try {
    if (signal.aborted) throw abortError(signal, 'sandbox creation');
    await mkdir(dir, { recursive: true, mode: PRIVATE_DIR });
    const disk = join(dir, 'disk.qcow2');
    const snapshotDir = req.restore ? ctx.snapshotDir(req.restore.id) : null;
    if (snapshotDir) {
      // An empty layer over the snapshot's disk, made once with the snapshot.
      await copyFile(join(snapshotDir, SNAPSHOT_FILES.overlay), disk);
      await chmod(disk, PRIVATE_FILE);
    } else if (!(await exists(disk))) {
      await ctx.vmm.createDisk(disk, info.diskSizeMiB, { cache: ctx.cacheDir, signal });
    }
    const jail = ctx.jail(req.assets);
    // Published ports are bound before the VM starts: a port in use fails the create before a VM is spent on it.
    const snet = await ctx.net.open();
    vm = await ctx.vmm.start({
      id: info.id,
      dir,
      cpus: info.cpus,
      memoryMiB: info.memoryMiB,
      kernel: req.assets.kernel,
      initramfs: req.assets.initramfs,
      rootfs: req.rootfs,
      disk,
      kernelHz: req.assets.kernelHz,
      detached: info.detached,
      accel: info.accel,
      ...(req.exports.length > 0 ? { fileChannel: true } : {}),
      ...(snapshotDir ? { restore: { memory: join(snapshotDir, SNAPSHOT_FILES.memory), state: join(snapshotDir, SNAPSHOT_FILES.state) } } : {}),
      ...(snet ? { nic: snet.nic(ctx.vmm.paths(dir)) } : {}),
      ...(jail ? { jail } : {}),
    });
    ctx.vmStarted(vm);
    record.save({ pid: vm.pid, confinement: confinementInfo(vm.confinement) });
    const runningVm = vm;
    if (req.exports.length > 0) {
      // The volumes' server: rebuilt from the snapshot's sessions on a restore (the guest's mounts go on).
      const restoreState = snapshotDir && req.restore?.manifest.files.volumes ? join(snapshotDir, SNAPSHOT_FILES.volumes) : undefined;
      await startFileServer({
        dir,
        socket: vm.paths.fileSocket,
        vmPid: vm.pid,
        exports: req.exports,
        ...(restoreState ? { restore: restoreState } : {}),
        ...(vm.confinement ? { user: { uid: vm.confinement.uid, gid: vm.confinement.gid } } : {}),
        signal,
      });
    }
    await snet?.attach(vm.paths, { vmExited: () => runningVm.hasExited, signal, timeoutMs: req.timeoutMs });
    const conn = await AgentLink.handshake(vm, { detached: info.detached, timeoutMs: req.timeoutMs, signal, net: snet?.helloConfig() });
    try {
      // A restored guest has its volumes mounted already.
      if (!req.restore) await mountVolumes(conn, record.info.volumes ?? [], signal);
    } catch (e) {
      conn.close();
      throw e;
    }
    ctx.booted(vm, conn);
    record.save({ status: 'running', startedAt: new Date().toISOString(), stoppedAt: null, agentVersion: conn.agent.version }, 'sandbox.started', {
      data: {
        pid: vm.pid,
        agentVersion: conn.agent.version,
        agentCapabilities: [...conn.agent.capabilities],
        ...(req.restore ? { restoredFrom: req.restore.id } : {}),
      },
    });
  } catch (e) {
    vm?.kill();
    await vm?.waitForExit();
    if (vm) removeVmSockets(dir);
    ctx.vmStarted(null);
    ctx.net.close(true);
    const err = await bootError(e, dir, req.timeoutMs, signal);
    if (vm) {
      const reason = err.message.split('\n')[0]!;
      record.save({ status: 'failed', pid: null, reason, stoppedAt: new Date().toISOString() }, 'sandbox.failed', { data: { reason, code: err.code } });
    }
    throw err;
  }
}

/**
 * Ends a VM run on purpose: the agent ends processes, syncs and powers off
 * (a paused guest is let run for that). If it does not within half of
 * `timeoutMs`, the VMM is asked to quit; at `timeoutMs` the VM is killed.
 * Resolves once the VM has exited.
 */
export async function shutDown(vm: VmHandle, connection: () => Promise<AgentConnection>, options: { wasPaused: boolean; timeoutMs: number }): Promise<void> {
  const { timeoutMs } = options;
  if (options.wasPaused) await vm.resume().catch(() => {});
  try {
    const conn = await Promise.race([connection(), sleep(Math.min(timeoutMs, 2_000), undefined, 'the agent connection', { unref: true }).then(() => null)]);
    conn?.poweroff();
  } catch {
    // No agent to ask: the kill below ends it.
  }
  const exitedWithin = (ms: number) =>
    Promise.race([vm.waitForExit().then(() => true), sleep(ms, undefined, 'the VM exit', { unref: true }).then(() => false)]);
  if (!(await exitedWithin(timeoutMs / 2))) {
    await vm.quit({ timeoutMs: 1_000 }).catch(() => {});
    if (!(await exitedWithin(timeoutMs / 2))) {
      vm.kill();
      await vm.waitForExit();
    }
  }
}

async function exists(path: string): Promise<boolean> {
  return access(path).then(
    () => true,
    () => false,
  );
}

/** The option of a boot timeout, as BOOT_FAILED's message and `details.option` name it. */
export const BOOT_TIMEOUT_OPTION = 'timeoutMs';

/** Turns a boot failure into BOOT_FAILED (or TIMEOUT / ABORTED) carrying the guest's last console lines. */
export async function bootError(e: unknown, dir: string, timeoutMs: number, signal: AbortSignal): Promise<RoostError> {
  const consoleTail = await tail(join(dir, 'console.log'), 30);
  const vmmTail = await tail(join(dir, 'qemu.log'), 10);
  const details = { console: consoleTail, qemu: vmmTail, dir };
  const shown = [
    vmmTail.length ? `QEMU said:\n  ${vmmTail.join('\n  ')}` : '',
    consoleTail.length ? `last console lines:\n  ${consoleTail.slice(-10).join('\n  ')}` : 'the guest printed nothing on its console',
  ]
    .filter(Boolean)
    .join('\n');
  // A full host disk (the sandbox's directory, its disk, or roost.db): RESOURCE_EXHAUSTED, not a boot failure.
  const full = diskFullError(e, dir);
  if (full) return full;
  // Not boot failures: bad input, a missing setup, or a published host port that is taken or privileged (bound before QEMU starts).
  if (e instanceof RoostError && (e.code === 'SETUP_REQUIRED' || e.code === 'INVALID_ARGUMENT' || e.code === 'UNAVAILABLE' || e.code === 'PERMISSION_DENIED'))
    return e;
  if (signal.aborted && !(signal.reason instanceof Error && signal.reason.name === 'TimeoutError')) {
    return abortError(signal, 'sandbox creation');
  }
  const deadlineHit = signal.aborted && signal.reason instanceof Error && signal.reason.name === 'TimeoutError';
  if ((e instanceof RoostError && e.code === 'TIMEOUT') || deadlineHit) {
    // The console's tail is in the message: a failed create removes the sandbox's directory, and its console.log with it.
    // `details.option` names the option to raise, so a face can name its own (the CLI's flag) instead.
    return new RoostError(
      'BOOT_FAILED',
      `the guest did not boot within ${timeoutMs} ms: raise the boot timeout (${BOOT_TIMEOUT_OPTION}) on a loaded machine\n${shown}`,
      {
        cause: e,
        details: { ...details, option: BOOT_TIMEOUT_OPTION, timeoutMs },
      },
    );
  }
  const msg = e instanceof Error ? e.message : String(e);
  return new RoostError('BOOT_FAILED', `the sandbox failed to boot: ${msg}\n${shown}`, { cause: e, details });
}

/** The last non-blank lines of a log, read through the one bounded console-log reader (none if it cannot be read). */
async function tail(path: string, lines: number): Promise<string[]> {
  try {
    return (await readConsoleLog(path))
      .split('\n')
      .map((l) => l.replace(/\r$/, ''))
      .filter((l) => l.trim())
      .slice(-lines);
  } catch {
    return [];
  }
}

/** A VM's jail as SandboxInfo shows it. */
export function confinementInfo(c: VmConfinement | null): Confinement {
  if (!c) return { jailed: false };
  return { jailed: true, uid: c.uid, gid: c.gid, ...(c.cgroup ? { cgroup: c.cgroup } : {}), ...(c.limits ? { limits: c.limits } : {}) };
}
