/**
 * One cgroup per sandbox: the limits (CPU quota, memory, pids, I/O weight)
 * its QEMU and the jailer that starts it run under, and the counters read
 * back from it. The cgroup is `roost/<sandboxId>` under the host's cgroup
 * root, on the unified hierarchy (cgroup v2) where the controllers are
 * there, else on the v1 controller hierarchies (one directory per controller,
 * as systemd's legacy and hybrid layouts mount them).
 *
 * This module only makes, reads and removes the directories; a process joins
 * by writing its pid into `cgroup.procs` of every directory in `dirs` (the
 * jailer does that before it execs QEMU).
 */
import {
  existsSync,
  mkdirSync,
  readdirSync,
  readFileSync,
  realpathSync,
  rmdirSync,
  statSync,
  statfsSync,
  unlinkSync,
  utimesSync,
  writeFileSync,
  type Stats,
} from 'node:fs';
import { join } from 'node:path';
import { RoostError, type RoostErrorCode } from '@roost/api';

/** The limits of one sandbox's cgroup. */
export interface CgroupLimits {
  /** CPU quota in whole CPUs (a quota of `cpus` periods per period). Infinity when read back from a cgroup without a quota. */
  cpus: number;
  /** Memory limit in bytes (swap does not extend it). Infinity when read back from a cgroup without a limit. */
  memoryBytes: number;
  /** Maximum number of tasks (processes and threads). Infinity when read back from a cgroup without a limit. */
  pids: number;
  /**
   * Proportional I/O weight, 1-10000 (100 is the default share): v2 `io.weight`
   * (or `io.bfq.weight`), v1 `blkio.weight` or `blkio.bfq.weight` (clamped to
   * their 10-1000 and 1-1000 ranges), applied only where such a file exists.
   * Undefined when read back from a host without one.
   */
  ioWeight?: number;
}

/** Counters of one sandbox's cgroup; each is null where the host's kernel does not offer it. */
export interface CgroupStats {
  /** Memory charged now (page cache included). */
  memoryBytes: number | null;
  /** Highest memory charged since the cgroup was made. */
  memoryPeakBytes: number | null;
  /** CPU time used by every task, in microseconds. */
  cpuUsageUsec: number | null;
  /** Tasks the kernel's OOM killer ended in this cgroup because it hit its memory limit. */
  oomKills: number | null;
  /** Tasks in the cgroup now. */
  pids: number | null;
}

/** One sandbox's cgroup, made by createSandboxCgroup or found by openSandboxCgroup. */
export interface SandboxCgroup {
  /** The cgroup version of the hierarchy (or hierarchies) it lives on. */
  readonly version: 1 | 2;
  /** `roost/<sandboxId>`: its path below the cgroup root of each hierarchy. */
  readonly name: string;
  /** The directories a process joins (writing its pid into each one's `cgroup.procs`): one on v2, one per controller hierarchy on v1. */
  readonly dirs: string[];
  /** The limits as applied, read back from the cgroup's files (the kernel rounds memory to whole pages). */
  readonly limits: CgroupLimits;
  /** The cgroup's counters now. */
  stats(): CgroupStats;
  /**
   * Removes every directory once no process is left in it, retrying while the
   * kernel drains tasks that have exited (default for up to 2 s). True when
   * all of them are gone; false when a process is still in one at the deadline.
   */
  remove(options?: { timeoutMs?: number }): Promise<boolean>;
}

/** Where the cgroup hierarchies are mounted; unit tests point it at a fake tree. */
export interface CgroupOptions {
  /** The cgroup root (default `/sys/fs/cgroup`). */
  root?: string;
}

/** The default cgroup root. */
export const CGROUP_ROOT = '/sys/fs/cgroup';
/** The cgroup that holds every sandbox's cgroup, below each hierarchy's root. */
export const CGROUP_PARENT = 'roost';
/** Memory below this is not a usable sandbox limit. */
export const MIN_CGROUP_MEMORY_BYTES = 16 * 1024 * 1024;
/** Fewer tasks than this and QEMU cannot start its threads. */
export const MIN_CGROUP_PIDS = 16;

/** The CPU bandwidth period Roost writes, in microseconds (the kernel's default). */
const PERIOD_US = 100_000;
const SANDBOX_ID = /^[0-9a-f]{12}$/;
/** The controllers a sandbox needs: without all three the host has no usable cgroup. */
const REQUIRED = ['cpu', 'memory', 'pids'];
/** v2 controllers used where the host offers them. */
const V2_OPTIONAL = ['io'];
/** v1 hierarchies used where the host mounts them: cpuacct for CPU time, blkio for the I/O weight. */
const V1_OPTIONAL = ['cpuacct', 'blkio'];
/** v1 counters at or above this mean "no limit" (the kernel shows PAGE_COUNTER_MAX in bytes, 2^63 rounded down to a page). */
const V1_UNLIMITED = 2 ** 62;
/** The kernel's v1 controllers: other hierarchies (`systemd`, `name=...`) are named ones with no controller. */
const V1_CONTROLLERS = new Set([
  'blkio',
  'cpu',
  'cpuacct',
  'cpuset',
  'devices',
  'freezer',
  'hugetlb',
  'memory',
  'misc',
  'net_cls',
  'net_prio',
  'perf_event',
  'pids',
  'rdma',
]);
/** statfs f_type of cgroupfs (v1) and cgroup2fs. */
const CGROUP_MAGIC = new Set([0x27e0eb, 0x63677270]);

/** The hierarchy (or hierarchies) sandbox cgroups live on. */
interface Layout {
  version: 1 | 2;
  /** v2: the unified hierarchy's root. */
  base: string;
  /** Controller -> the directory of its hierarchy's root (v2: `base` for every controller). */
  mounts: Map<string, string>;
  /** Every controller the host offers on this hierarchy, sorted. */
  available: string[];
}

function readText(path: string): string | null {
  try {
    return readFileSync(path, 'utf8');
  } catch {
    return null;
  }
}

function statOrNull(path: string): Stats | null {
  try {
    return statSync(path);
  } catch {
    return null;
  }
}

function isDir(path: string): boolean {
  return statOrNull(path)?.isDirectory() ?? false;
}

function words(text: string | null): string[] {
  return (text ?? '').split(/\s+/).filter((w) => w !== '');
}

/** The controllers of a v2 hierarchy root (its `cgroup.controllers`), or null when `dir` is not one. */
function v2Controllers(dir: string): string[] | null {
  const text = readText(join(dir, 'cgroup.controllers'));
  return text === null ? null : words(text);
}

function v2Layout(base: string, controllers: string[]): Layout {
  return { version: 2, base, mounts: new Map(controllers.map((c) => [c, base])), available: [...controllers].sort() };
}

/**
 * v1 controller hierarchies below `root`: each directory (or symlink to one)
 * whose name is a comma-separated list of controllers (`cpu`, `cpu,cpuacct`)
 * and that is a v1 hierarchy root (`cgroup.procs` but no `cgroup.controllers`).
 * Named hierarchies (`systemd`) and the v2 mount (`unified`) carry no controller Roost uses.
 */
function v1Mounts(root: string): Map<string, string> {
  const mounts = new Map<string, string>();
  let entries: string[];
  try {
    entries = readdirSync(root).sort();
  } catch {
    return mounts;
  }
  for (const entry of entries) {
    const dir = join(root, entry);
    if (!isDir(dir) || !existsSync(join(dir, 'cgroup.procs')) || existsSync(join(dir, 'cgroup.controllers'))) continue;
    const real = realpathSync(dir);
    for (const controller of entry.split(',')) {
      if (V1_CONTROLLERS.has(controller) && !mounts.has(controller)) mounts.set(controller, real);
    }
  }
  return mounts;
}

function detect(root: string): Layout | null {
  const unifiedRoot = v2Controllers(root);
  if (unifiedRoot !== null) return REQUIRED.every((c) => unifiedRoot.includes(c)) ? v2Layout(root, unifiedRoot) : null;
  const mounts = v1Mounts(root);
  if (REQUIRED.every((c) => mounts.has(c))) return { version: 1, base: root, mounts, available: [...mounts.keys()].sort() };
  // Hybrid: controllers on the v2 mount beside the v1 ones (an empty `unified` is ignored).
  const hybrid = join(root, 'unified');
  const hybridControllers = v2Controllers(hybrid);
  if (hybridControllers !== null && REQUIRED.every((c) => hybridControllers.includes(c))) return v2Layout(hybrid, hybridControllers);
  return null;
}

/**
 * Which cgroup version sandboxes get on this host and the controllers it
 * offers there: v2 when the root is the unified hierarchy, v1 when the
 * cpu, memory and pids controllers are mounted as v1 hierarchies (hybrid
 * hosts included), v2 on a hybrid host's `unified` mount only when that is
 * where the controllers are. Null when no hierarchy has cpu, memory and pids.
 */
export function cgroupSupport(root: string = CGROUP_ROOT): { version: 1 | 2; controllers: string[] } | null {
  const layout = detect(root);
  return layout && { version: layout.version, controllers: layout.available };
}

function errorCode(err: unknown): RoostErrorCode {
  const code = (err as NodeJS.ErrnoException).code;
  return code === 'EACCES' || code === 'EPERM' || code === 'EROFS' ? 'PERMISSION_DENIED' : 'VMM';
}

function errno(err: unknown): string | undefined {
  return (err as NodeJS.ErrnoException).code;
}

function checkId(id: string): void {
  if (!SANDBOX_ID.test(id)) throw new RoostError('INVALID_ARGUMENT', `not a sandbox id: "${id}" (12 hex characters)`, { details: { field: 'id' } });
}

function checkLimits(limits: CgroupLimits): void {
  const bad = (field: string, why: string): never => {
    throw new RoostError('INVALID_ARGUMENT', `cgroup limit ${field} ${why}`, { details: { field } });
  };
  if (!Number.isSafeInteger(limits.cpus) || limits.cpus < 1) bad('cpus', `must be a whole number >= 1, not ${limits.cpus}`);
  if (!Number.isSafeInteger(limits.memoryBytes) || limits.memoryBytes < MIN_CGROUP_MEMORY_BYTES)
    bad('memoryBytes', `must be a whole number of bytes >= ${MIN_CGROUP_MEMORY_BYTES} (16 MiB), not ${limits.memoryBytes}`);
  if (!Number.isSafeInteger(limits.pids) || limits.pids < MIN_CGROUP_PIDS) bad('pids', `must be a whole number >= ${MIN_CGROUP_PIDS}, not ${limits.pids}`);
  if (limits.ioWeight !== undefined && (!Number.isSafeInteger(limits.ioWeight) || limits.ioWeight < 1 || limits.ioWeight > 10_000))
    bad('ioWeight', `must be a whole number from 1 to 10000, not ${limits.ioWeight}`);
}

function mkdirOnce(dir: string): void {
  try {
    mkdirSync(dir);
  } catch (err) {
    if (errno(err) === 'EEXIST') return;
    throw new RoostError(errorCode(err), `cannot make cgroup ${dir}: ${(err as Error).message}`, { cause: err, details: { path: dir } });
  }
}

/** A number from a cgroup file: `max` (or a v1 counter at PAGE_COUNTER_MAX) is Infinity, a missing file or junk null. */
function parseCount(text: string | null): number | null {
  if (text === null) return null;
  const t = text.trim();
  if (t === 'max') return Infinity;
  if (!/^-?\d+$/.test(t)) return null;
  const n = Number(t);
  return n >= V1_UNLIMITED ? Infinity : n;
}

/** The value of `key` in a flat-keyed file (`cpu.stat`, `memory.events`, `memory.oom_control`). */
function keyed(text: string | null, key: string): number | null {
  const m = text === null ? null : new RegExp(`^${key}\\s+(\\d+)\\s*$`, 'm').exec(text);
  return m ? Number(m[1]) : null;
}

/** An I/O weight file: `default N` (v2, v1 BFQ on some kernels) or a bare `N` (v1). */
function parseWeight(text: string | null): number | null {
  if (text === null) return null;
  const m = /^default\s+(\d+)\s*$/m.exec(text) ?? /^\s*(\d+)\s*$/.exec(text);
  return m ? Number(m[1]) : null;
}

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

/**
 * Removes one cgroup directory: 'gone' when it is (or already was), 'busy'
 * while a task is still in it. On a real cgroupfs rmdir takes the control
 * files with it and answers EBUSY while tasks remain; a plain directory
 * standing in for one (the unit tests' fake trees) answers ENOTEMPTY, and is
 * emptied when its `cgroup.procs` lists no task.
 */
function removeDir(dir: string): 'gone' | 'busy' {
  try {
    rmdirSync(dir);
    return 'gone';
  } catch (err) {
    const code = errno(err);
    if (code === 'ENOENT') return 'gone';
    if (code === 'EBUSY') return 'busy';
    if (code === 'ENOTEMPTY' && !CGROUP_MAGIC.has(Number(statfsSync(dir).type))) {
      if (words(readText(join(dir, 'cgroup.procs'))).length > 0) return 'busy';
      const entries = readdirSync(dir, { withFileTypes: true });
      if (entries.some((e) => !e.isFile())) return 'busy';
      for (const e of entries) unlinkSync(join(dir, e.name));
      rmdirSync(dir);
      return 'gone';
    }
    throw new RoostError(errorCode(err), `cannot remove cgroup ${dir}: ${(err as Error).message}`, { cause: err, details: { path: dir } });
  }
}

/** A sandbox's cgroup on one layout. */
class Cgroup implements SandboxCgroup {
  readonly version: 1 | 2;
  readonly name: string;
  readonly dirs: string[];
  limits: CgroupLimits = { cpus: Infinity, memoryBytes: Infinity, pids: Infinity };
  /** Controller -> this cgroup's directory on its hierarchy. */
  private readonly controllerDirs = new Map<string, string>();

  constructor(layout: Layout, id: string) {
    this.version = layout.version;
    this.name = `${CGROUP_PARENT}/${id}`;
    const used = [...REQUIRED, ...(layout.version === 2 ? V2_OPTIONAL : V1_OPTIONAL)].filter((c) => layout.mounts.has(c));
    for (const c of used) this.controllerDirs.set(c, join(layout.mounts.get(c)!, CGROUP_PARENT, id));
    this.dirs = [...new Set(this.controllerDirs.values())];
  }

  /** This cgroup's directory on the hierarchy of `controller`. */
  dirOf(controller: string): string | undefined {
    return this.controllerDirs.get(controller);
  }

  /** The path of a control file (`memory.max`, `cpuacct.usage`): in the directory of the controller its name starts with. */
  file(name: string): string | null {
    const dir = this.version === 2 ? this.dirs[0] : this.controllerDirs.get(name.slice(0, name.indexOf('.')));
    return dir === undefined ? null : join(dir, name);
  }

  has(name: string): boolean {
    const path = this.file(name);
    return path !== null && existsSync(path);
  }

  read(name: string): string | null {
    const path = this.file(name);
    return path === null ? null : readText(path);
  }

  write(name: string, value: string): void {
    const path = this.file(name) ?? join(this.dirs[0]!, name);
    if (!existsSync(path)) throw new RoostError('VMM', `cgroup file ${path} is missing: is its controller enabled for ${this.name}?`, { details: { path } });
    try {
      writeFileSync(path, value);
    } catch (err) {
      throw new RoostError(errorCode(err), `cannot write "${value}" to ${path}: ${(err as Error).message}`, { cause: err, details: { path, value } });
    }
  }

  /** Reads a limit back; a missing or unreadable file is an error naming it. */
  readLimit(name: string): string {
    const path = this.file(name) ?? join(this.dirs[0]!, name);
    try {
      return readFileSync(path, 'utf8');
    } catch (err) {
      throw new RoostError(errorCode(err), `cannot read cgroup file ${path}: ${(err as Error).message}`, { cause: err, details: { path } });
    }
  }

  /** Every task in any of the directories (from their `cgroup.procs`). */
  procs(): number[] {
    const pids = new Set<number>();
    for (const dir of this.dirs) for (const w of words(readText(join(dir, 'cgroup.procs')))) pids.add(Number(w));
    return [...pids];
  }

  apply(limits: CgroupLimits): void {
    if (this.version === 2) {
      this.write('cpu.max', `${limits.cpus * PERIOD_US} ${PERIOD_US}`);
      this.write('memory.max', String(limits.memoryBytes));
      if (this.has('memory.swap.max')) this.write('memory.swap.max', '0');
      this.write('pids.max', String(limits.pids));
      if (limits.ioWeight !== undefined) {
        const file = ['io.weight', 'io.bfq.weight'].find((f) => this.has(f));
        if (file) this.write(file, `default ${limits.ioWeight}`);
      }
      return;
    }
    this.write('cpu.cfs_period_us', String(PERIOD_US));
    this.write('cpu.cfs_quota_us', String(limits.cpus * PERIOD_US));
    // memory.memsw.limit_in_bytes (memory + swap) may never be below memory.limit_in_bytes: raise it first, lower it last.
    const memory = String(limits.memoryBytes);
    const memsw = this.has('memory.memsw.limit_in_bytes');
    const current = parseCount(this.read('memory.limit_in_bytes')) ?? Infinity;
    if (memsw && limits.memoryBytes > current) this.write('memory.memsw.limit_in_bytes', memory);
    this.write('memory.limit_in_bytes', memory);
    if (memsw && limits.memoryBytes <= current) this.write('memory.memsw.limit_in_bytes', memory);
    this.write('pids.max', String(limits.pids));
    if (limits.ioWeight !== undefined) {
      if (this.has('blkio.weight')) this.write('blkio.weight', String(Math.min(1000, Math.max(10, limits.ioWeight))));
      else if (this.has('blkio.bfq.weight')) this.write('blkio.bfq.weight', String(Math.min(1000, limits.ioWeight)));
    }
  }

  readBack(): void {
    let cpus: number;
    let memoryBytes: number;
    let ioWeight: number | null;
    if (this.version === 2) {
      const [quota, period] = words(this.readLimit('cpu.max'));
      cpus = quota === 'max' ? Infinity : Number(quota) / Number(period);
      memoryBytes = parseCount(this.readLimit('memory.max')) ?? NaN;
      ioWeight = parseWeight(this.read('io.weight') ?? this.read('io.bfq.weight'));
    } else {
      const quota = Number(this.readLimit('cpu.cfs_quota_us').trim());
      cpus = quota < 0 ? Infinity : quota / Number(this.readLimit('cpu.cfs_period_us').trim());
      memoryBytes = parseCount(this.readLimit('memory.limit_in_bytes')) ?? NaN;
      ioWeight = parseWeight(this.read('blkio.weight') ?? this.read('blkio.bfq.weight'));
    }
    const pids = parseCount(this.readLimit('pids.max')) ?? NaN;
    this.limits = { cpus, memoryBytes, pids, ...(ioWeight === null ? {} : { ioWeight }) };
  }

  stats(): CgroupStats {
    const finite = (n: number | null): number | null => (n === null || !Number.isFinite(n) ? null : n);
    if (this.version === 2) {
      return {
        memoryBytes: finite(parseCount(this.read('memory.current'))),
        memoryPeakBytes: finite(parseCount(this.read('memory.peak'))),
        cpuUsageUsec: keyed(this.read('cpu.stat'), 'usage_usec'),
        oomKills: keyed(this.read('memory.events'), 'oom_kill'),
        pids: finite(parseCount(this.read('pids.current'))),
      };
    }
    const usageNs = finite(parseCount(this.read('cpuacct.usage')));
    return {
      memoryBytes: finite(parseCount(this.read('memory.usage_in_bytes'))),
      memoryPeakBytes: finite(parseCount(this.read('memory.max_usage_in_bytes'))),
      cpuUsageUsec: usageNs === null ? null : Math.floor(usageNs / 1000),
      oomKills: keyed(this.read('memory.oom_control'), 'oom_kill'),
      pids: finite(parseCount(this.read('pids.current'))),
    };
  }

  /** One pass over the directories: true when every one is gone. */
  removeOnce(): boolean {
    let gone = true;
    for (const dir of this.dirs) if (removeDir(dir) === 'busy') gone = false;
    return gone;
  }

  async remove(options: { timeoutMs?: number } = {}): Promise<boolean> {
    const deadline = Date.now() + (options.timeoutMs ?? 2000);
    for (;;) {
      if (this.removeOnce()) return true;
      if (Date.now() >= deadline) return false;
      await sleep(20);
    }
  }
}

/** Turns on the controllers sandboxes use in a v2 cgroup's `cgroup.subtree_control`, where they are not on yet. */
function enableControllers(cgroup: Cgroup, dir: string, wanted: string[]): void {
  const file = join(dir, 'cgroup.subtree_control');
  const on = new Set(words(readText(file)).map((w) => w.replace(/^\+/, '')));
  const offered = v2Controllers(dir) ?? [];
  const missing = wanted.filter((c) => !on.has(c) && offered.includes(c));
  if (missing.length === 0) return;
  if (!existsSync(file)) throw new RoostError('VMM', `cgroup file ${file} is missing: ${dir} is not a v2 cgroup`, { details: { path: file } });
  try {
    writeFileSync(file, missing.map((c) => `+${c}`).join(' '));
  } catch (err) {
    throw new RoostError(errorCode(err), `cannot enable ${missing.join(', ')} in ${file} for ${cgroup.name}: ${(err as Error).message}`, {
      cause: err,
      details: { path: file },
    });
  }
}

function layoutOrThrow(root: string): Layout {
  const layout = detect(root);
  if (!layout)
    throw new RoostError('UNAVAILABLE', `no usable cgroup hierarchy under ${root}: sandboxes need the cpu, memory and pids controllers (cgroup v2, or v1)`, {
      details: { path: root },
    });
  return layout;
}

/**
 * Makes the cgroup `roost/<id>` for a sandbox (or reuses an existing one no
 * task is in) and applies `limits`. On v2 it first enables cpu, memory, pids
 * and (where offered) io in the root's and `roost`'s `cgroup.subtree_control`.
 * Throws INVALID_ARGUMENT for a bad id or limit, UNAVAILABLE when the host has
 * no usable cgroup, ALREADY_EXISTS when the cgroup holds tasks, and VMM (or
 * PERMISSION_DENIED) naming the file that could not be made, read or written.
 */
export function createSandboxCgroup(id: string, limits: CgroupLimits, options: CgroupOptions = {}): SandboxCgroup {
  checkId(id);
  checkLimits(limits);
  const layout = layoutOrThrow(options.root ?? CGROUP_ROOT);
  const cgroup = new Cgroup(layout, id);
  if (layout.version === 2) {
    const wanted = [...REQUIRED, ...V2_OPTIONAL].filter((c) => layout.mounts.has(c));
    const parent = join(layout.base, CGROUP_PARENT);
    enableControllers(cgroup, layout.base, wanted);
    mkdirOnce(parent);
    enableControllers(cgroup, parent, wanted);
  } else {
    for (const dir of cgroup.dirs) mkdirOnce(join(dir, '..'));
  }
  const tasks = cgroup.procs();
  if (tasks.length > 0)
    throw new RoostError('ALREADY_EXISTS', `cgroup ${cgroup.name} already holds tasks (${tasks.slice(0, 5).join(', ')}): is sandbox ${id} running?`, {
      details: { name: cgroup.name, pids: tasks },
    });
  for (const dir of cgroup.dirs) mkdirOnce(dir);
  // A leftover of an earlier run is reused: its time is now, so that a sweep does not take it for stale.
  const now = new Date();
  for (const dir of cgroup.dirs) utimesSync(dir, now, now);
  cgroup.apply(limits);
  cgroup.readBack();
  return cgroup;
}

/**
 * The existing cgroup of a sandbox (after a daemon restart), with its limits
 * read back; null when the host has no usable cgroup or the sandbox has none
 * (on v1: no directory on the cpu, memory or pids hierarchy).
 */
export function openSandboxCgroup(id: string, options: CgroupOptions = {}): SandboxCgroup | null {
  checkId(id);
  const layout = detect(options.root ?? CGROUP_ROOT);
  if (!layout) return null;
  const cgroup = new Cgroup(layout, id);
  if (!REQUIRED.every((c) => existsSync(cgroup.dirOf(c)!))) return null;
  cgroup.readBack();
  return cgroup;
}

/** An empty sandbox cgroup older than this is a leftover, whichever home it was made for. */
export const STALE_CGROUP_MS = 60_000;

/**
 * Removes the cgroups `roost/<id>` no task is in whose sandbox id `keep`
 * rejects (left behind by a Roost that was killed), and the empty ones made
 * more than `staleMs` ago whatever their id: a sandbox of another home whose
 * runtime was killed, or whose VM was ended by someone else, leaves one that
 * no one else would remove. A cgroup is empty only between its making and
 * its VM's start (milliseconds) and after its VM is gone. One pass, no
 * waiting. Returns the names of the cgroups removed.
 */
export function sweepSandboxCgroups(keep: (id: string) => boolean, options: CgroupOptions & { staleMs?: number } = {}): string[] {
  const layout = detect(options.root ?? CGROUP_ROOT);
  if (!layout) return [];
  const staleBefore = Date.now() - (options.staleMs ?? STALE_CGROUP_MS);
  const ids = new Map<string, number>(); // id -> when it was made (the newest of its directories)
  for (const mount of new Set(layout.mounts.values())) {
    let entries: string[] = [];
    try {
      entries = readdirSync(join(mount, CGROUP_PARENT));
    } catch {
      continue;
    }
    for (const e of entries) {
      if (!SANDBOX_ID.test(e)) continue;
      const st = statOrNull(join(mount, CGROUP_PARENT, e));
      if (st?.isDirectory()) ids.set(e, Math.max(ids.get(e) ?? 0, st.mtimeMs));
    }
  }
  const removed: string[] = [];
  for (const [id, made] of [...ids].sort(([a], [b]) => a.localeCompare(b))) {
    if (keep(id) && made >= staleBefore) continue;
    const cgroup = new Cgroup(layout, id);
    if (cgroup.procs().length > 0) continue;
    if (cgroup.removeOnce()) removed.push(cgroup.name);
  }
  return removed;
}
