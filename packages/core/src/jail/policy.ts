import { realpathSync } from 'node:fs';
import type Database from 'better-sqlite3';
import type { Assets } from '../assets.js';
import { RoostError } from '../errors.js';
import type { VmJail, VmLimits } from '../vmm/types.js';
import { DEFAULT_JAIL_IDS, JailIds, parseJailIds, type JailIdRange } from './ids.js';

/**
 * The jail's settings in RuntimeOptions (`jail`). `false` runs every VMM
 * unconfined, as the runtime's own user: only for hosts where the jail
 * cannot be built, and said so in `roost inspect` and the metrics.
 */
export interface JailOptions {
  /** The uids and gids sandboxes' VMMs run as, one each (default 2000000000 + 65536, or $ROOST_JAIL_IDS). */
  ids?: JailIdRange;
  /**
   * Memory a VMM may use beyond its guest's RAM before it is ended (MiB;
   * default JAIL_MEMORY_OVERHEAD_MIB, or $ROOST_JAIL_MEMORY_OVERHEAD_MIB).
   */
  memoryOverheadMiB?: number;
}

/**
 * What QEMU may use beyond guest RAM. Measured under TCG (docs/security.md):
 * 33-36 MiB of its own (the 16 MiB translation cache, code, libraries,
 * thread stacks, device buffers), the same booted or restored, with 1 or 2
 * vCPUs, under disk, volume, stdout and file-transfer load, for 256 and 512
 * MiB guests. The page cache of its disk I/O is charged too but reclaimed at
 * the limit, not fatal. 96 MiB leaves room for page tables of larger guests
 * (2 MiB per GiB touched) and for what was not measured.
 */
export const JAIL_MEMORY_OVERHEAD_MIB = 96;
/** Threads a VMM may have (QEMU's vCPU, I/O and worker threads; it cannot fork at all). */
export const JAIL_PIDS = 256;

/** The jail's settings, resolved: from RuntimeOptions, else the environment. */
export interface JailSettings {
  enabled: boolean;
  ids: JailIdRange;
  memoryOverheadMiB: number;
}

/** Resolves the `jail` runtime option and ROOST_JAIL, ROOST_JAIL_IDS, ROOST_JAIL_MEMORY_OVERHEAD_MIB. */
export function jailSettings(option: boolean | JailOptions | undefined, env: NodeJS.ProcessEnv = process.env): JailSettings {
  const flag = env.ROOST_JAIL?.trim().toLowerCase();
  if (flag !== undefined && flag !== '' && !['on', 'off', '1', '0', 'true', 'false'].includes(flag)) {
    throw new RoostError('INVALID_ARGUMENT', `ROOST_JAIL must be "on" or "off", not "${env.ROOST_JAIL}"`);
  }
  const enabled = option === false ? false : option === true || typeof option === 'object' ? true : !['off', '0', 'false'].includes(flag ?? '');
  const opts = typeof option === 'object' ? option : {};
  const ids = opts.ids ?? (env.ROOST_JAIL_IDS ? parseJailIds(env.ROOST_JAIL_IDS) : DEFAULT_JAIL_IDS);
  let overhead = opts.memoryOverheadMiB ?? JAIL_MEMORY_OVERHEAD_MIB;
  if (opts.memoryOverheadMiB === undefined && env.ROOST_JAIL_MEMORY_OVERHEAD_MIB) overhead = Number(env.ROOST_JAIL_MEMORY_OVERHEAD_MIB);
  if (!Number.isSafeInteger(overhead) || overhead < 0) {
    throw new RoostError('INVALID_ARGUMENT', `the jail's memory overhead must be a whole number of MiB, not ${String(overhead)}`);
  }
  return { enabled, ids, memoryOverheadMiB: overhead };
}

/** Why the jail cannot be built on this host, or null when it can. */
export function jailUnavailable(uid: number | undefined = process.getuid?.()): string | null {
  if (uid !== 0) {
    return 'Roost is not running as root: the jail gives each VMM its own uid, namespaces and cgroup, which needs root (a rootless jail is not built yet)';
  }
  return null;
}

/** The limits of a sandbox's VMM: its cpus, its guest RAM plus the overhead, JAIL_PIDS threads. */
export function vmLimits(cpus: number, memoryMiB: number, overheadMiB: number): VmLimits {
  return { cpus, memoryBytes: (memoryMiB + overheadMiB) * 2 ** 20, pids: JAIL_PIDS };
}

/**
 * A runtime's jail: the uid of each sandbox (kept in SQLite with a
 * host-wide claim) and what each VM's jail is made of. One runtime owns a
 * home at a time; its calls are synchronous but for `vmJail`, which may
 * wait for the assets.
 */
export class RuntimeJail {
  readonly #ids: JailIds;

  constructor(
    db: Database.Database,
    home: string,
    readonly settings: JailSettings,
    readonly cache: string,
  ) {
    this.#ids = new JailIds(db, home, settings.ids);
  }

  /** The jail of sandbox `id`'s next VM; SETUP_REQUIRED when the host cannot build one (see ROOST_JAIL). */
  vmJail(id: string, cpus: number, memoryMiB: number, assets: Assets): VmJail {
    const why = jailUnavailable();
    if (why)
      throw new RoostError(
        'SETUP_REQUIRED',
        `cannot confine sandbox ${id}: ${why}. To run sandboxes unconfined, set ROOST_JAIL=off (or jail: false in RuntimeOptions)`,
      );
    if (!assets.jailer || !assets.jailPreload) throw new RoostError('SETUP_REQUIRED', 'the jailer is not built: run `roost setup` (or `npm run setup`) again');
    const uid = this.#ids.acquire(id);
    // The cache's real path: the jail holds QEMU's runtime at that path, and a home's `cache` is often a link.
    let cache = this.cache;
    try {
      cache = realpathSync(cache);
    } catch {
      // not made yet: the backend makes it
    }
    return { uid, gid: uid, jailer: assets.jailer, preload: assets.jailPreload, cache, limits: vmLimits(cpus, memoryMiB, this.settings.memoryOverheadMiB) };
  }

  /** Sandbox `id` is removed: its uid goes back to the range. */
  release(id: string): void {
    this.#ids.release(id);
  }
}
