/*
 * The limits of the contract, one named constant each. The input schemas
 * are built from them, so the daemon, the embedded runtime and the client
 * refuse the same inputs with the same messages. Limits that depend on the
 * host (memory against its RAM, cpus against its cores under KVM) are
 * checked by the runtime on top of these.
 */

/** The most virtual CPUs of a sandbox (the guest kernel's NR_CPUS). */
export const MAX_CPUS = 16;
/** The least guest memory of a sandbox, in MiB (the kernel and agent need about this much). */
export const MIN_MEMORY_MIB = 64;
/** The smallest writable disk of a sandbox, in MiB. */
export const MIN_DISK_MIB = 64;
/** The largest writable disk of a sandbox, in MiB (2 TiB; the disk is sparse). */
export const MAX_DISK_MIB = 2 * 2 ** 20;
/** The most ports one sandbox publishes at create. */
export const MAX_PORTS = 64;
/** The longest a boot, a stop, a snapshot or a fork may be given, in ms (10 minutes). */
export const MAX_OPERATION_TIMEOUT_MS = 600_000;
/** The longest lifetime a sandbox may be given (30 days, in ms). */
export const MAX_LIFETIME_MS = 30 * 24 * 3_600_000;
/** The longest timeout of one command, in ms (what the agent's u32 carries). */
export const MAX_COMMAND_TIMEOUT_MS = 0xffffffff;
/** The largest terminal side (rows or columns) of a PTY command. */
export const MAX_TERMINAL_SIZE = 65_535;
/** The highest signal number a command can be sent (Linux's SIGRTMAX). */
export const MAX_SIGNAL = 64;
/** The largest permission bits of a file or directory. */
export const MAX_FILE_MODE = 0o7777;
