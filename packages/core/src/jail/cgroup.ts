// PLACEHOLDER: replaced by the h-cgroup branch at merge.
export interface CgroupLimits {
  cpus: number;
  memoryBytes: number;
  pids: number;
  ioWeight?: number;
}
export interface CgroupStats {
  memoryBytes: number | null;
  memoryPeakBytes: number | null;
  cpuUsageUsec: number | null;
  oomKills: number | null;
  pids: number | null;
}
export interface SandboxCgroup {
  readonly version: 1 | 2;
  readonly name: string;
  readonly dirs: string[];
  readonly limits: CgroupLimits;
  stats(): CgroupStats;
  remove(options?: { timeoutMs?: number }): Promise<boolean>;
}
export function cgroupSupport(_root?: string): { version: 1 | 2; controllers: string[] } | null {
  return null;
}
export function createSandboxCgroup(_id: string, _limits: CgroupLimits, _options?: { root?: string }): SandboxCgroup {
  throw new Error('placeholder');
}
export function openSandboxCgroup(_id: string, _options?: { root?: string }): SandboxCgroup | null {
  return null;
}
export function sweepSandboxCgroups(_keep: (id: string) => boolean, _options?: { root?: string }): string[] {
  return [];
}
