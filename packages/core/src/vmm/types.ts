import type { Accel } from './accel.js';
import type { QmpClient } from './qmp.js';

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
  /** QEMU's device state (`xen-save-devices-state`), loaded as an incoming migration. */
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
  qmpSocket: string;
  /** Where QEMU serves the NIC's frames in user mode. */
  netSocket: string;
  consoleLog: string;
  vmmLog: string;
}

/** A running VM. */
export interface VmHandle {
  readonly pid: number;
  readonly paths: VmPaths;
  /** Resolves when the VM process has exited. Observing it does not keep the Node process alive. */
  readonly exited: Promise<VmExit>;
  /** Waits for the exit, keeping the Node process alive meanwhile (use it when something must happen after). */
  waitForExit(): Promise<VmExit>;
  /** True once the process is gone. */
  readonly hasExited: boolean;
  /** The QMP control connection (opened on first use). */
  qmp(signal?: AbortSignal): Promise<QmpClient>;
  /** Ends the VM process at once (SIGKILL). Idempotent. */
  kill(): void;
  /** Closes this process's QMP connection, if open (QEMU serves one QMP client at a time). */
  closeQmp(): void;
}

/** A virtual machine monitor backend. */
export interface Vmm {
  readonly name: string;
  /** Starts a VM; resolves once the process runs (not once the guest has booted). */
  start(config: VmConfig): Promise<VmHandle>;
  /** Re-attaches to a VM started earlier (a detached sandbox) by its pid, or returns null if it is gone. */
  attach(pid: number, dir: string): VmHandle | null;
}
