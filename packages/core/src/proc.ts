import { readFileSync } from 'node:fs';
import { readFile } from 'node:fs/promises';

/** Clock ticks per second of /proc/<pid>/stat times (USER_HZ: 100 on every Linux architecture Roost runs on). */
const USER_HZ = 100;

/** What the host spends on one VM process. */
export interface ProcessUsage {
  cpuSeconds: number;
  rssBytes: number;
  /** Proportional set size: shared pages split between their users (null where smaps_rollup is missing). */
  pssBytes: number | null;
}

/** CPU time and memory of a process from /proc, or null when it is gone. */
export async function processUsage(pid: number): Promise<ProcessUsage | null> {
  try {
    const stat = await readFile(`/proc/${pid}/stat`, 'utf8');
    // Fields after the command name, which may hold spaces and parentheses: split after the last ')'.
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    const utime = Number(fields[11]);
    const stime = Number(fields[12]);
    const status = await readFile(`/proc/${pid}/status`, 'utf8');
    const rssKb = Number(/^VmRSS:\s+(\d+) kB/m.exec(status)?.[1] ?? 0);
    const rollup = await readFile(`/proc/${pid}/smaps_rollup`, 'utf8').catch(() => null);
    const pssKb = rollup ? Number(/^Pss:\s+(\d+) kB/m.exec(rollup)?.[1] ?? NaN) : NaN;
    return { cpuSeconds: (utime + stime) / USER_HZ, rssBytes: rssKb * 1024, pssBytes: Number.isFinite(pssKb) ? pssKb * 1024 : null };
  } catch {
    return null;
  }
}

/**
 * True while a process exists and has not exited. A zombie has (it only
 * waits to be reaped), and so has a process whose threads are still
 * closing its files; EPERM means it exists under another user.
 */
export function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'EPERM') return false;
  }
  try {
    return !/\) Z /.test(readFileSync(`/proc/${pid}/stat`, 'utf8'));
  } catch {
    return true; // no /proc: trust kill(0)
  }
}
