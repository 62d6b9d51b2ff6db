import { statSync } from 'node:fs';
import { join } from 'node:path';
import type { VmConfig, VmJail } from '../types.js';
import { DEVICES_OUT, type QemuFds, type QemuPaths } from './args.js';
import type { QemuRuntime } from './jail-runtime.js';
import { backingChain } from './qcow2.js';

/** The empty directory in a sandbox's directory that the jail's root (a tmpfs, in its own mount namespace) is mounted on. */
export const JAIL_ROOT = 'jail';

/** The fd on which the jailer reports QEMU's pid (or what failed). 0-4 are QEMU's stdio, console pipe and device-state stream. */
export const REPORT_FD = 5;
/** Open files a confined QEMU may hold (RLIMIT_NOFILE). */
export const JAIL_NOFILE = 16384;

/** How the jailer starts one VM's QEMU: its arguments up to QEMU's own, and what QEMU is handed. */
export interface JailLaunch {
  /** roost-jailer's options, ending with `--` and QEMU's path in the jail. */
  jailerArgs: string[];
  /** The descriptors QEMU's arguments name. */
  fds: QemuFds;
}

/**
 * Plans a VM's jail (see host/jailer and docs/security.md). The jailer, as
 * root, opens every file and socket QEMU needs and hands them over as
 * descriptors: QEMU opens nothing in the Roost home, and its root is a
 * tmpfs on the sandbox directory holding bind mounts of QEMU's runtime,
 * the kernel and initramfs, /dev/null and /dev/urandom (and /dev/kvm under
 * KVM), and, for a restore, the preload shim. No volume directory: Roost's
 * file server serves volumes over a socket (VmConfig.fileChannel).
 */
export function planJail(config: VmConfig, paths: QemuPaths, jail: VmJail, runtime: QemuRuntime, cgroupDirs: string[]): JailLaunch {
  const args: string[] = ['--root', join(config.dir, JAIL_ROOT), '--uid', String(jail.uid), '--gid', String(jail.gid), '--report', String(REPORT_FD)];
  args.push('--nofile', String(JAIL_NOFILE));
  if (!config.detached) args.push('--die-with-parent');
  for (const dir of cgroupDirs) args.push('--cgroup', dir);
  let next = REPORT_FD + 1;
  const fd = (kind: string, arg: string): number => {
    const n = next++;
    args.push('--fd', `${n}:${kind}:${arg}`);
    return n;
  };
  const sets: QemuFds['sets'] = [];
  const inSet = (kind: 'ro' | 'rw' | 'append', file: string, set?: number): number => {
    const n = fd(kind, file);
    sets.push({ fd: n, set: set ?? n, file });
    return set ?? n;
  };
  const agent = fd('listen', paths.agentSocket);
  const qmp = fd('listen', paths.qmpSocket);
  const file = config.fileChannel ? fd('listen', paths.fileSocket) : undefined;
  let nic: number | undefined;
  if (config.nic) nic = config.nic.kind === 'stream' ? fd('listen', config.nic.socket) : fd('tap', config.nic.ifname);
  const rootfsSet = inSet('ro', config.rootfs);
  let diskChain: QemuFds['diskChain'];
  if (config.disk) {
    diskChain = backingChain(config.disk).map((layer, i) => {
      if (i > 0) return { set: inSet('ro', layer.path), format: layer.format };
      // QEMU opens the top image read-only first, then read-write: its set holds both.
      const set = inSet('rw', layer.path);
      inSet('ro', layer.path, set);
      return { set, format: layer.format };
    });
  }
  // The device-state file of snapshots: bound read-write at its path (it is the jail uid's, and QEMU names it
  // in a QMP command, which cannot take a descriptor from us). Its fd set only names the sandbox directory on
  // QEMU's command line, where /proc scans find it (QEMU closes it when the first QMP client leaves).
  const devicesOut = join(config.dir, DEVICES_OUT);
  inSet('append', devicesOut);
  args.push('--rw', devicesOut);
  const env = [`LD_LIBRARY_PATH=${runtime.libraryPath.join(':')}`];
  if (config.restore) {
    // QEMU 7.2 opens a memory-backend-file image read-write even for a private mapping; the shim hands it this read-only fd instead.
    const ram = fd('ro', config.restore.memory);
    env.push(`LD_PRELOAD=${jail.preload}`, `ROOST_JAIL_OPEN=${config.restore.memory}=${ram}`);
    args.push('--ro', jail.preload);
  }
  args.push('--ro', runtime.root, '--ro', config.kernel, '--ro', config.initramfs, '--dev', '/dev/null', '--dev', '/dev/urandom');
  const groups: number[] = [];
  if (config.accel === 'kvm') {
    args.push('--dev', '/dev/kvm');
    groups.push(statSync('/dev/kvm').gid);
  }
  if (groups.length > 0) args.push('--groups', groups.join(','));
  for (const link of runtime.symlinks) args.push('--symlink', link);
  for (const e of env) args.push('--env', e);
  args.push('--', runtime.qemu);
  return {
    jailerArgs: args,
    fds: { agent, qmp, ...(nic === undefined ? {} : { nic }), ...(file === undefined ? {} : { file }), sets, rootfsSet, ...(diskChain ? { diskChain } : {}) },
  };
}
