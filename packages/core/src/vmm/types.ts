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
  /** Host directories exported to the guest over virtio-9p (volumes), at most 16. */
  shares?: VmShare[];
  /** Resume a snapshot instead of booting (see snapshot/): the devices above must be the snapshot's. */
  restore?: VmRestore;
  /** The NIC (virtio-net); absent: none. */
  nic?: VmNic;
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

/** A host directory the guest can mount over virtio-9p (`mount -t 9p <tag>`). */
export interface VmShare {
  /** The 9P mount tag, unique in the VM (`roost.v0`, ...). */
  tag: string;
  /** The host directory (absolute, symlinks resolved). */
  path: string;
  /** QEMU refuses every write, whatever the guest's mount flags say. */
  readOnly: boolean;
}

/** How a VM process ended. */
export interface VmExit {
  code: number | null;
  signal: NodeJS.Signals | null;
}

/** Files a running VM exposes in its sandbox directory. */
export interface VmPaths {
  agentSocket: string;
  /** Where QEMU serves the NIC's frames in user mode. */
  netSocket: string;
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
 * A running VM, as core uses it: every control goes through these methods,
 * so nothing above the backend knows how the VMM is driven.
 */
export interface VmHandle {
  readonly pid: number;
  readonly paths: VmPaths;
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
}

/** Disk and version operations of a backend that do not need a running VM. */
export interface VmmDisks {
  /** Makes a sandbox's writable disk at `path` (`sizeMiB`, sparse); `cache` may keep shared templates. */
  createDisk(path: string, sizeMiB: number, options: { cache: string; signal?: AbortSignal }): Promise<void>;
  /** Makes an empty writable layer at `path` over the disk `base`, which will be at that path when it is used. */
  createOverlay(base: string, path: string, sizeMiB: number, options: { signal?: AbortSignal }): Promise<void>;
}

/** A virtual machine monitor backend (register one with `registerVmm`). */
export interface Vmm extends VmmDisks {
  readonly name: string;
  /** The backend's build, recorded with snapshots: a snapshot restores only under the same one. */
  version(): Promise<string>;
  /** The files a VM of the sandbox directory `dir` will expose (known before it starts: its NIC's socket is). */
  paths(dir: string): VmPaths;
  /** Starts a VM; resolves once the process runs (not once the guest has booted). */
  start(config: VmConfig): Promise<VmHandle>;
  /** Re-attaches to a VM started earlier (a detached sandbox) by its pid, or returns null if it is gone. */
  attach(pid: number, dir: string): VmHandle | null;
  /**
   * The VM of a sandbox directory whatever its pid, or null: a runtime that
   * died between starting a VM and recording its pid left one running that
   * no record names (a detached VM does not die with its owner).
   */
  find?(dir: string): VmHandle | null;
  /** The most shares (volumes) a VM can have: `withNic` when it also has a NIC. */
  maxShares(withNic: boolean): number;
}

/** Sizes of a sandbox's writable disk (MiB). */
export const DEFAULT_DISK_MIB = 4096;
/** The writable disk's limits are the contract's (a create request is checked against them). */
export { MIN_DISK_MIB, MAX_DISK_MIB } from '@roost/api';
