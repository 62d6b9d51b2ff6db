import { readdirSync, readFileSync, readlinkSync } from 'node:fs';
import { basename, dirname, resolve } from 'node:path';
import type { FoundVm } from '../types.js';
import { DEVICES_OUT, qemuArgValue } from './args.js';
import { qcow2VirtualSize } from './qcow2.js';

/** Clock ticks per second of /proc/<pid>/stat times (USER_HZ). */
const USER_HZ = 100;

/**
 * The QEMU processes on this host whose sandbox directory is directly
 * under `root`: found by scanning /proc, not by any record, so a VM is found
 * even when the database that knew it is gone. A process counts when its
 * executable (or, unreadable, its name) is QEMU's, it is not a zombie, and
 * its command line serves an agent socket `<root>/<dir>/agent.sock`.
 */
export function findQemuVms(root: string): FoundVm[] {
  const want = resolve(root);
  const found: FoundVm[] = [];
  let pids: string[];
  try {
    pids = readdirSync('/proc').filter((p) => /^\d+$/.test(p));
  } catch {
    return found;
  }
  for (const p of pids) {
    const vm = qemuOf(Number(p), want);
    if (vm) found.push(vm);
  }
  return found;
}

/** The VM of process `pid` if it is a live QEMU whose sandbox directory is under `root`, else null. */
export function qemuOf(pid: number, root: string): FoundVm | null {
  // The executable first: one readlink per process, so a scan of every process stays cheap.
  if (!isQemu(pid)) return null;
  let argv: string[];
  let stat: string;
  try {
    argv = readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0');
    stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  } catch {
    return null; // gone meanwhile
  }
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  if (fields[0] === 'Z') return null; // exited, waits to be reaped
  const dir = vmDirOf(argv);
  if (!dir || dirname(dir) !== root) return null;
  const vm: FoundVm = { pid, dir };
  const smp = argAfter(argv, '-smp');
  if (smp && /^\d+/.test(smp)) vm.cpus = parseInt(smp, 10);
  const mem = argAfter(argv, '-m');
  if (mem && /^\d+M?$/.test(mem)) vm.memoryMiB = parseInt(mem, 10);
  const accel = argAfter(argv, '-accel');
  if (accel) vm.accel = accel.startsWith('kvm') ? 'kvm' : 'tcg';
  // The disk by name (an unconfined VM), or named by the fd set a confined one was given it in.
  const disk = argv.flatMap((a) => [qemuArgValue(a, 'file'), qemuArgValue(a, 'opaque')]).find((f) => f === `${dir}/disk.qcow2`);
  const size = disk ? qcow2VirtualSize(disk) : null;
  if (size !== null) vm.diskSizeMiB = Math.round(size / 2 ** 20);
  const started = startTime(Number(fields[19]));
  if (started) vm.startedAt = started;
  return vm;
}

/** True when the process runs a QEMU system emulator (its executable, or its name when that cannot be read). */
function isQemu(pid: number): boolean {
  try {
    return basename(readlinkSync(`/proc/${pid}/exe`).replace(/ \(deleted\)$/, '')).startsWith('qemu-system');
  } catch (e) {
    // Another user's process (EACCES), a kernel thread (ENOENT) or one gone: its name says, if anything.
    if ((e as NodeJS.ErrnoException).code !== 'EACCES') return false;
  }
  try {
    return readFileSync(`/proc/${pid}/comm`, 'utf8').startsWith('qemu-system');
  } catch {
    return false;
  }
}

/**
 * The sandbox directory a QEMU command line belongs to: an unconfined VM
 * serves its agent socket by name (`socket,id=agent,path=<dir>/agent.sock`);
 * a confined one is handed its sockets as descriptors and names its
 * directory in the fd set of its device-state file (`-add-fd
 * ...,opaque=<dir>/devices.out`).
 */
export function vmDirOf(argv: string[]): string | null {
  for (const a of argv) {
    if (a.startsWith('socket,') && a.includes('id=agent')) {
      const path = qemuArgValue(a, 'path');
      if (path?.endsWith('/agent.sock')) return dirname(path);
    }
    if (a.startsWith('fd=')) {
      const opaque = qemuArgValue(a, 'opaque');
      if (opaque?.endsWith(`/${DEVICES_OUT}`)) return dirname(opaque);
    }
  }
  return null;
}

function argAfter(argv: string[], flag: string): string | undefined {
  const i = argv.indexOf(flag);
  return i >= 0 ? argv[i + 1] : undefined;
}

/** A process's start time (its stat's 22nd field, in ticks since boot) as ISO 8601, or null. */
function startTime(ticks: number): string | null {
  try {
    const btime = Number(/^btime (\d+)$/m.exec(readFileSync('/proc/stat', 'utf8'))?.[1]);
    if (!Number.isFinite(btime) || !Number.isFinite(ticks)) return null;
    return new Date((btime + ticks / USER_HZ) * 1000).toISOString();
  } catch {
    return null;
  }
}
