import type { Accel } from './accel.js';

/** What a VM boots and how big it is. */
export interface VmConfig {
  /** Sandbox id: names the VM in process listings. */
  id: string;
  /** The sandbox directory: sockets, console log and QEMU's own log go here. */
  dir: string;
  cpus: number;
  memoryMiB: number;
  kernel: string;
  initramfs: string;
  /** Read-only root filesystem image for commands (erofs). */
  rootfs: string;
  /** The sandbox's writable layer: a qcow2 disk holding an ext4 filesystem (without one, writes go to guest memory). */
  disk?: string;
  /** The kernel's CONFIG_HZ (to compute `lpj` under TCG). */
  kernelHz: number;
  /** A detached VM survives the process that started it; otherwise it dies with it (even on SIGKILL). */
  detached: boolean;
  accel: Accel;
  /** Extra kernel command line words. */
  append?: string[];
  /**
   * A second virtio-serial port, `roost.p9`, served on `paths.fileSocket`:
   * the channel of the VM's volumes (Roost's file server, fileserver/).
   * QEMU itself sees no host directory.
   */
  fileChannel?: boolean;
  /** Resume a snapshot instead of booting (see snapshot/): the devices above must be the snapshot's. */
  restore?: VmRestore;
  /** The NIC (virtio-net); absent: none. */
  nic?: VmNic;
  /** Confinement (docs/security.md); absent: the VMM runs unconfined, as this process's user. */
  jail?: VmJail;
}

/** A VM's resource limits, enforced on the host (a cgroup). */
export interface VmLimits {
  /** CPU time, in cores (a quota of `cpus` x 100 ms every 100 ms). */
  cpus: number;
  /** The VMM's memory: guest RAM plus the VMM's own (exceeding it ends the VM). */
  memoryBytes: number;
  /** Threads and processes. */
  pids: number;
}

/**
 * How a VM is confined: its VMM runs as `uid`/`gid` (no other process on
 * the host does), with no capabilities, in namespaces of its own whose
 * root holds only what the VM uses, under a syscall filter, in a cgroup
 * with `limits`.
 */
export interface VmJail {
  uid: number;
  gid: number;
  /** The jailer and its preload shim (host/jailer), built by setup. */
  jailer: string;
  preload: string;
  /** Where what every jail shares is kept (the home's cache). */
  cache: string;
  limits: VmLimits;
}

/** What confines a running VM, as `roost inspect` shows it. */
export interface VmConfinement {
  uid: number;
  gid: number;
  /** Its cgroup (`roost/<id>`), when one could be found. */
  cgroup: string | null;
  limits: VmLimits | null;
}

/**
 * A virtio-net NIC: `stream` hands the guest's Ethernet frames to a unix
 * socket QEMU listens on (Roost's user-mode network serves it); `tap` puts
 * them on an existing TAP device (bridge mode).
 */
export type VmNic = { kind: 'stream'; socket: string; mac: string; mtu: number } | { kind: 'tap'; ifname: string; mac: string; mtu: number };

/** What a VM resumes from: its RAM image and QEMU's device state. */
export interface VmRestore {
  /** The guest RAM image (`memoryMiB` bytes), mapped copy-on-write. */
  memory: string;
  /** The VMM's device state, as `VmHandle.saveState` wrote it. */
  state: string;
}

/** How a VM process ended. */
export interface VmExit {
  code: number | null;
  signal: NodeJS.Signals | null;
  /** Why, when the backend knows better than the status (the VMM exceeded its memory limit). */
  reason?: string;
}

/** Files a running VM exposes in its sandbox directory. */
export interface VmPaths {
  agentSocket: string;
  /** Where QEMU serves the NIC's frames in user mode. */
  netSocket: string;
  /** Where QEMU serves the `roost.p9` port (VmConfig.fileChannel). */
  fileSocket: string;
  consoleLog: string;
  vmmLog: string;
}

/** What `VmHandle.saveState` writes: the VM's device state and its guest RAM. */
export interface VmStateTarget {
  /** Where the device state goes. */
  devices: string;
  /** Where the guest RAM image goes (a sparse file of `memoryBytes`). */
  memory: string;
  /** The guest RAM's size in bytes (`memoryMiB` of the VM). */
  memoryBytes: number;
  /** The RAM image this VM was restored from, if it was (a re-attached VM does not know). */
  restoredFrom?: string | undefined;
}

/** What `VmHandle.saveState` wrote of the guest RAM. */
export interface SavedMemory {
  /** The RAM image's checksum (see snapshot/memory.ts, `ramChecksum`). */
  checksum: string;
  /** Bytes of data written (the rest are holes). */
  dataBytes: number;
}

/** Bounds of one control request to the VMM. */
export interface VmControlOptions {
  /** Gives up connecting to the VMM's control channel when it fires. */
  signal?: AbortSignal | undefined;
  /** How long the VMM may take to answer (default 10 s). */
  timeoutMs?: number | undefined;
}

/**
 * A host disk error that stopped a VM: its writable disk's read or write
 * failed on the host (a full disk, a quota, a failing device), and instead
 * of passing the error to the guest (whose filesystem would abort) the VMM
 * stopped the vCPUs and kept the request. `resume` retries it.
 */
export interface VmIoError {
  /** The host's disk (or quota) is full: freeing space and resuming continues the guest. */
  nospace: boolean;
  /** The host's error as the VMM reports it ("No space left on device"). */
  message: string;
}

/**
 * A running VM, as core uses it: every control goes through these methods,
 * so nothing above the backend knows how the VMM is driven.
 */
export interface VmHandle {
  readonly pid: number;
  readonly paths: VmPaths;
  /** Its jail, or null when it runs unconfined. */
  readonly confinement: VmConfinement | null;
  /** Resolves when the VM process has exited. Observing it does not keep the Node process alive. */
  readonly exited: Promise<VmExit>;
  /** Waits for the exit, keeping the Node process alive meanwhile (use it when something must happen after). */
  waitForExit(): Promise<VmExit>;
  /** True once the process is gone. */
  readonly hasExited: boolean;
  /** The VMM's view of the VM (`running`, `paused`, ...), independent of the guest agent. */
  status(options?: VmControlOptions): Promise<string>;
  /** Stops the vCPUs; memory and devices stay as they are. */
  pause(options?: VmControlOptions): Promise<void>;
  /** Runs the vCPUs again after `pause`. */
  resume(options?: VmControlOptions): Promise<void>;
  /** Writes the device state and guest RAM of a paused VM (a snapshot); `timeoutMs` bounds the device state. */
  saveState(target: VmStateTarget, options: VmControlOptions & { timeoutMs: number }): Promise<SavedMemory>;
  /** Asks the VMM to exit (the guest gets no say); resolves once asked, not once it has exited. */
  quit(options?: VmControlOptions): Promise<void>;
  /** Ends the VM process at once (SIGKILL). Idempotent. */
  kill(): void;
  /** Lets go of this process's control connection, if open (a VMM may serve one controller at a time). */
  release(): void;
  /**
   * Calls `listener` whenever the VM stops itself on a host disk error (see
   * VmIoError; the VM stays stopped until `resume`), also for a VM already
   * stopped that way when watching starts. Watching keeps this process's
   * control connection open; after `release` it goes on from the next
   * control request.
   */
  onIoError(listener: (error: VmIoError) => void): void;
}

/** Disk and version operations of a backend that do not need a running VM. */
export interface VmmDisks {
  /** Makes a sandbox's writable disk at `path` (`sizeMiB`, sparse); `cache` may keep shared templates. */
  createDisk(path: string, sizeMiB: number, options: { cache: string; signal?: AbortSignal }): Promise<void>;
  /** Makes an empty writable layer at `path` over the disk `base`, which will be at that path when it is used. */
  createOverlay(base: string, path: string, sizeMiB: number, options: { signal?: AbortSignal }): Promise<void>;
}

/** A VM process found running (see `Vmm.findVms`), with what its command line says of it. */
export interface FoundVm {
  pid: number;
  /** Its sandbox directory (the `dir` it was started with). */
  dir: string;
  cpus?: number;
  memoryMiB?: number;
  /** The writable disk's size, when it can be read. */
  diskSizeMiB?: number;
  accel?: 'kvm' | 'tcg';
  /** When the process started (ISO 8601), when known. */
  startedAt?: string;
}

/** A virtual machine monitor backend (register one with `registerVmm`). */
export interface Vmm extends VmmDisks {
  readonly name: string;
  /** It can confine a VM (`VmConfig.jail`); a backend that cannot (a fake) runs every VM as it is, and says so. */
  readonly confines: boolean;
  /** The backend's build, recorded with snapshots: a snapshot restores only under the same one. */
  version(): Promise<string>;
  /** The files a VM of the sandbox directory `dir` will expose (known before it starts: its NIC's socket is). */
  paths(dir: string): VmPaths;
  /** Starts a VM; resolves once the process runs (not once the guest has booted). */
  start(config: VmConfig): Promise<VmHandle>;
  /** Re-attaches to a VM started earlier (a detached sandbox) by its pid, or returns null if it is gone. */
  attach(pid: number, dir: string): VmHandle | null;
  /**
   * The live VM processes of this backend whose sandbox directory is
   * directly under `root` (a home's `sandboxes/`), whoever started them.
   * Recovery and `roost doctor` use it so that no directory of a live VM is
   * ever removed and a VM without a record can be adopted. A backend
   * without it cannot tell: directories without records are then kept.
   */
  findVms?(root: string): FoundVm[];
}

/** Sizes of a sandbox's writable disk (MiB). */
export const DEFAULT_DISK_MIB = 4096;
/** The writable disk's limits are the contract's (a create request is checked against them). */
export { MIN_DISK_MIB, MAX_DISK_MIB } from '@roost/api';
