import { join } from 'node:path';
import { hostCpu } from '../accel.js';
import type { VmConfig, VmNic, VmPaths } from '../types.js';

export const QEMU_BINARY = process.env.ROOST_QEMU ?? 'qemu-system-x86_64';

/**
 * The CPU model under TCG. ERMS and FSRM are hidden so the guest kernel and
 * libc copy and clear memory with `rep movsq`/`stosq` instead of `rep
 * movsb`/`stosb`: TCG runs string instructions one element per iteration, so
 * byte-wise ones cost eight times as many. Measured here: stdout streaming
 * 44-64 -> 122-124 MB/s, in-guest pipe throughput 84 -> 271 MB/s.
 */
const TCG_CPU = 'max,erms=off,fsrm=off';

/** Escapes a value for QEMU's comma-separated options (a comma is written twice). */
function opt(value: string): string {
  return value.replaceAll(',', ',,');
}

/** The value of `key=` in a QEMU option string (commas in values are written twice), or null. */
export function qemuArgValue(option: string, key: string): string | null {
  const parts: string[] = [];
  let cur = '';
  for (let i = 0; i < option.length; i++) {
    if (option[i] === ',') {
      if (option[i + 1] === ',') {
        cur += ',';
        i++;
        continue;
      }
      parts.push(cur);
      cur = '';
    } else cur += option[i];
  }
  parts.push(cur);
  const hit = parts.find((p) => p.startsWith(`${key}=`));
  return hit === undefined ? null : hit.slice(key.length + 1);
}

/**
 * The file in a confined VM's sandbox directory that QEMU writes device
 * state to for a snapshot (through an fd set: it cannot open files by name).
 */
export const DEVICES_OUT = 'devices.out';

/**
 * What a confined QEMU is handed as file descriptors instead of names (see
 * jail.ts): it opens nothing in the Roost home itself.
 */
export interface QemuFds {
  /** Listening sockets: the agent's and QMP's. */
  agent: number;
  qmp: number;
  /** The NIC's: a listening socket (user mode) or the TAP device (bridge mode). */
  nic?: number;
  /** The `roost.p9` port's listening socket (VmConfig.fileChannel). */
  file?: number;
  /** Fd sets (`-add-fd`), each named by the file it holds; the set's id is its first fd. */
  sets: { fd: number; set: number; file: string }[];
  /** The root filesystem image's set. */
  rootfsSet: number;
  /** The writable disk's backing chain, top first, each image's set. */
  diskChain?: { set: number; format: 'qcow2' | 'raw' }[];
}

/** QEMU's `-sandbox` for a confined VM: its seccomp filter with every optional group denied. */
export const JAIL_SECCOMP = 'on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny';

/** The fd set holding a confined VM's device-state file, read back from its command line (null: not confined). */
export function devicesOutSet(argv: string[]): number | null {
  for (const a of argv) {
    if (!a.startsWith('fd=') || !qemuArgValue(a, 'opaque')?.endsWith(`/${DEVICES_OUT}`)) continue;
    const set = Number(qemuArgValue(a, 'set'));
    if (Number.isSafeInteger(set)) return set;
  }
  return null;
}

/** A `-drive` spec for a disk chain handed over in fd sets: each backing image named explicitly (QEMU cannot open them by name). */
function chainDrive(chain: NonNullable<QemuFds['diskChain']>): string {
  return chain
    .map((layer, i) => {
      const prefix = 'backing.'.repeat(i);
      return `${prefix}driver=${layer.format},${prefix}file.driver=file,${prefix}file.filename=/dev/fdset/${layer.set}`;
    })
    .join(',');
}

/** TCG translation cache cap (MiB): QEMU's default of 1 GiB would dominate an idle sandbox's memory. */
const TCG_TB_SIZE_MIB = 16;

/** The files of a QEMU VM: the backend-neutral ones, and QEMU's control socket (QMP). */
export interface QemuPaths extends VmPaths {
  qmpSocket: string;
}

export function vmPaths(dir: string): QemuPaths {
  return {
    agentSocket: join(dir, 'agent.sock'),
    netSocket: join(dir, 'net.sock'),
    fileSocket: join(dir, 'files.sock'),
    qmpSocket: join(dir, 'qmp.sock'),
    consoleLog: join(dir, 'console.log'),
    vmmLog: join(dir, 'qemu.log'),
  };
}

/**
 * The kernel command line. Under TCG the clock facts are given rather than
 * measured: calibrating delay loops and the LAPIC timer against an emulated
 * timer is slow and sometimes hangs (see DESIGN.md).
 */
export function kernelCmdline(config: Pick<VmConfig, 'accel' | 'kernelHz' | 'append' | 'disk'>, rootDevice: string | null): string {
  const words = ['console=ttyS0', 'quiet', 'reboot=t', 'panic=-1', '8250.nr_uarts=1', 'no_timer_check'];
  if (config.accel === 'tcg') {
    const khz = hostCpu().tscKhz;
    words.push(`tsc_early_khz=${khz}`, `lpj=${Math.round((khz * 1000) / config.kernelHz)}`, 'tsc=reliable', 'nolapic_timer');
  }
  if (rootDevice) words.push(`roost.root=${rootDevice}`, 'roost.rootfstype=erofs');
  if (rootDevice && config.disk) words.push('roost.disk=/dev/vdb');
  words.push(...(config.append ?? []));
  // A debugging aid: extra words for every sandbox's kernel (for example `idle=poll` or `loglevel=7`).
  if (process.env.ROOST_KERNEL_APPEND) words.push(...process.env.ROOST_KERNEL_APPEND.split(/\s+/).filter(Boolean));
  return words.join(' ');
}

/** The QEMU argument vector for a sandbox VM on the microvm machine. Exported so benchmarks boot the same thing. */
export function qemuArgs(
  config: VmConfig,
  paths: QemuPaths,
  options: { agent?: boolean; rootfs?: boolean; consolePipe?: boolean; fds?: QemuFds } = {},
): string[] {
  const { agent = true, rootfs = true, fds } = options;
  const tcg = config.accel === 'tcg';
  const args = [
    '-name',
    `roost-${config.id}`,
    // suppress-vmdesc: snapshots' device state has no JSON description, and a restore need not expect one.
    '-M',
    `microvm,x-option-roms=off,isa-serial=on,rtc=on,acpi=off,memory-backend=mem,suppress-vmdesc=on${tcg ? '' : ',pit=off,pic=off'}`,
    '-accel',
    tcg ? `tcg,tb-size=${TCG_TB_SIZE_MIB}` : 'kvm',
    '-cpu',
    tcg ? TCG_CPU : 'host',
    '-smp',
    String(config.cpus),
    '-m',
    `${config.memoryMiB}M`,
    ...memoryArgs(config),
    '-nodefaults',
    '-no-user-config',
    '-display',
    'none',
    '-no-reboot',
    '-kernel',
    config.kernel,
    '-initrd',
    config.initramfs,
    '-append',
    kernelCmdline(config, rootfs ? '/dev/vda' : null),
    // fd 3 is a socket to the console keeper (see logLimit); without one (benchmark floors), the file itself.
    '-chardev',
    options.consolePipe ? 'socket,id=console,fd=3,server=off' : `file,id=console,path=${opt(paths.consoleLog)}`,
    '-serial',
    'chardev:console',
    '-device',
    'virtio-rng-device',
  ];
  // Confined: QEMU's own seccomp filter too (no obsolete syscalls, no setuid and friends, no fork or exec, no scheduler or NUMA changes).
  if (fds) args.push('-sandbox', JAIL_SECCOMP);
  for (const s of fds?.sets ?? []) args.push('-add-fd', `fd=${s.fd},set=${s.set},opaque=${opt(s.file)}`);
  if (rootfs) {
    const rootFile = fds ? `/dev/fdset/${fds.rootfsSet}` : opt(config.rootfs);
    args.push('-drive', `id=root,file=${rootFile},format=raw,if=none,read-only=on,cache=unsafe`, '-device', 'virtio-blk-device,drive=root');
    if (config.disk) {
      // The sandbox's writable layer: a qcow2 overlay on an empty ext4 image, so
      // the host file grows only with what the guest writes (and shrinks with
      // what it deletes: discard). A read or write the host cannot complete
      // (a full host disk, a quota, a failing device) stops the VM with the
      // request kept (BLOCK_IO_ERROR, status io-error) instead of failing it
      // in the guest, whose ext4 would abort and turn read-only: `cont`
      // retries it once space is freed. `stop` rather than `enospc`: a
      // quota (EDQUOT) or a host EIO is no better for the guest to see.
      const image = fds?.diskChain ? chainDrive(fds.diskChain) : `file=${opt(config.disk)},format=qcow2`;
      args.push('-drive', `id=disk,${image},if=none,discard=unmap,detect-zeroes=unmap`, '-device', 'virtio-blk-device,drive=disk,werror=stop,rerror=stop');
    }
  }
  if (config.nic) args.push(...nicArgs(config.nic, NIC_BUS, fds?.nic));
  if (agent) {
    // Confined, the sockets are listening already (the jailer bound them at these paths) and come as descriptors.
    const [agentAt, qmpAt] = fds ? [`fd=${fds.agent}`, `fd=${fds.qmp}`] : [`path=${opt(paths.agentSocket)}`, `path=${opt(paths.qmpSocket)}`];
    args.push(
      '-device',
      `virtio-serial-device,max_ports=${config.fileChannel ? 3 : 2}`,
      '-chardev',
      `socket,id=agent,${agentAt},server=on,wait=off`,
      '-device',
      'virtserialport,chardev=agent,name=roost.agent',
      '-chardev',
      `socket,id=qmp,${qmpAt},server=on,wait=off`,
      '-mon',
      'chardev=qmp,mode=control',
    );
    if (config.fileChannel) {
      // The volumes' channel: the guest's 9P relay on one side, Roost's file server (fileserver/) on the other.
      const fileAt = fds?.file !== undefined ? `fd=${fds.file}` : `path=${opt(paths.fileSocket)}`;
      args.push('-chardev', `socket,id=files,${fileAt},server=on,wait=off`, '-device', 'virtserialport,chardev=files,name=roost.p9');
    }
  }
  if (config.restore) {
    // The device state comes on fd 4 (see QemuVmm.start); its stream has no
    // configuration section (xen-save-devices-state writes none). QEMU runs
    // the guest as soon as it is loaded.
    // No self-announcement (gratuitous RARP from the NIC) after the load:
    // QEMU 7.2's stream netdev crashes (SIGSEGV) sending it before its
    // client has connected, and neither the user-mode stack nor a bridge
    // needs it (the guest's own ARP traffic teaches the bridge its MAC).
    args.push('-incoming', 'fd:4', '-global', 'migration.send-configuration=off', '-global', 'migration.announce-rounds=0');
  }
  return args;
}

/** The id of the guest RAM's memory backend; it names the mapping in /proc/PID/maps (see ram.ts). */
export const MEMORY_BACKEND_MEMFD_NAME = '/memfd:memory-backend-memfd';

/**
 * Guest RAM. A booted VM's RAM is a memfd, so that a snapshot can find and
 * read it (a named mapping); a restored VM maps the snapshot's RAM image
 * privately: pages are shared with every other sandbox restored from it
 * until one writes them (copy-on-write), and the image never changes.
 */
function memoryArgs(config: VmConfig): string[] {
  const size = `size=${config.memoryMiB}M`;
  const backend = config.restore
    ? `memory-backend-file,id=mem,${size},mem-path=${opt(config.restore.memory)},share=off`
    : `memory-backend-memfd,id=mem,${size}`;
  return ['-object', backend];
}

/**
 * The virtio-mmio transport of the NIC. Without ACPI (acpi=off; the guest
 * kernel has none) the microvm machine has one IOAPIC and 8 transports,
 * `virtio-mmio-bus.N` on IRQ 5 + N; devices without a `bus=` take them from
 * the top: the rng, the two disks and the serial port get buses 7 to 4 (IRQs
 * 12 to 9). Bus 3 is IRQ 8, which the RTC holds (rtc=on): a device there
 * never gets its interrupt ("no channels available" in the guest). Bus 2 is
 * the first free one. (Volumes take no transport: they share the serial
 * device's `roost.p9` port.)
 */
const NIC_BUS = 'virtio-mmio-bus.2';

/**
 * The NIC, on its own transport. QEMU checks
 * nothing of the guest's traffic; the host side (user-mode stack or bridge
 * rules) does. Under the stream backend there are no offloads, so a large MTU (host_mtu,
 * which the guest adopts) keeps the packet count, and TCG's cost per packet,
 * down.
 */
function nicArgs(nic: VmNic, bus: string, fd?: number): string[] {
  let netdev: string;
  if (nic.kind === 'stream')
    netdev = `stream,id=net0,server=on,${fd === undefined ? `addr.type=unix,addr.path=${opt(nic.socket)}` : `addr.type=fd,addr.str=${fd}`}`;
  else netdev = fd === undefined ? `tap,id=net0,ifname=${opt(nic.ifname)},script=no,downscript=no` : `tap,id=net0,fd=${fd}`;
  return ['-netdev', netdev, '-device', `virtio-net-device,netdev=net0,mac=${nic.mac},host_mtu=${nic.mtu},bus=${bus}`];
}
