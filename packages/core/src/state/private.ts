import { spawn, type ChildProcess, type SpawnOptions } from 'node:child_process';
import { chmodSync, lstatSync, mkdirSync, readdirSync } from 'node:fs';
import { join } from 'node:path';

/*
 * The Roost home is private to its user: its database holds command lines
 * and environments, sandbox disks and snapshots hold whatever the guests
 * wrote. Everything Roost makes in it is 0700 (directories) or 0600 (files)
 * whatever the umask, without touching the process's umask (Roost is a
 * library in other programs, and the umask is process-wide, threads and
 * all):
 *
 * - what Node makes is made with an explicit mode (PRIVATE_DIR, PRIVATE_FILE);
 * - tools that make files in the home (qemu-img, mkfs.*, QEMU's sockets and
 *   device state) are started with a umask of 077 through `sh -c 'umask 077;
 *   exec ...'`, which sets it in the child only (`privateSpawn`);
 * - SQLite's files are chmod'ed once opened (its -wal and -shm files take the
 *   database file's mode when SQLite makes them);
 * - an existing home is fixed when a runtime opens it (`secureHome`).
 *
 * Not made private: a volume's data directory (`volumes/<name>/data`) and
 * what is below it, which the guest sees through 9P; and the contents of the
 * cache (kernel, initramfs, built root filesystems: no secrets, and often a
 * link to a cache shared between homes). The home directory itself is 0700,
 * which keeps other users out of all of it anyway.
 */

export const PRIVATE_DIR = 0o700;
export const PRIVATE_FILE = 0o600;

/** Creates a directory (and missing parents) with mode 0700. */
export function mkdirPrivate(path: string): void {
  mkdirSync(path, { recursive: true, mode: PRIVATE_DIR });
}

/** chmod of a path that may be gone; never follows a symlink (the link is left alone). */
export function chmodIfThere(path: string, mode: number): boolean {
  try {
    const st = lstatSync(path);
    if (st.isSymbolicLink() || (st.mode & 0o7777) === mode) return false;
    chmodSync(path, mode);
    return true;
  } catch {
    return false;
  }
}

/** True when a path is there, not a symlink, and its mode is not `mode`. */
function differs(path: string, mode: number): boolean {
  try {
    const st = lstatSync(path);
    return !st.isSymbolicLink() && (st.mode & 0o7777) !== mode;
  } catch {
    return false;
  }
}

/** The sh script that sets the child's umask and becomes the command. */
const UMASK_SCRIPT = 'umask 077 && exec "$0" "$@"';

/**
 * `spawn`, with the child's umask 077: everything it creates is private.
 * The command runs through `sh -c` that execs it (the same pid); a command
 * that is not found ends with status 127 instead of an `error` event.
 */
export function privateSpawn(cmd: string, args: readonly string[], options: SpawnOptions): ChildProcess {
  return spawn('/bin/sh', ['-c', UMASK_SCRIPT, cmd, ...args], options);
}

/** The exit status of `sh` when the command was not found. */
export const COMMAND_NOT_FOUND = 127;

/** Files at the top of a home that Roost makes: private files. */
const HOME_FILES = [
  'roost.db',
  'roost.db-wal',
  'roost.db-shm',
  'roost.db-journal',
  'roost.lock',
  'roost.lock-journal',
  'roost.owner.json',
  'auth.json',
  'api-token',
];
/** Directories at the top of a home that Roost makes (`cache` is left alone: see above). */
const HOME_DIRS = ['sandboxes', 'snapshots', 'images', 'volumes', 'tmp'];
/** Below these, each entry is a directory of a few files Roost made (a sandbox's, a snapshot's): fixed too. */
const PER_ITEM_DIRS = ['sandboxes', 'snapshots'];

/**
 * Makes an existing home private: the home directory 0700, the files and
 * directories Roost makes at its top, each sandbox's and snapshot's
 * directory and files, the image store's directories (not each blob), the
 * volumes directory and each volume's own directory (not its data). A
 * bounded walk: a handful of entries per sandbox and snapshot. Returns the
 * paths it changed (with `dryRun`, those it would change).
 */
export function secureHome(home: string, options: { dryRun?: boolean } = {}): string[] {
  const changed: string[] = [];
  const fix = (path: string, mode: number) => (options.dryRun ? differs(path, mode) : chmodIfThere(path, mode)) && changed.push(path);
  const entries = (dir: string) => {
    try {
      return readdirSync(dir, { withFileTypes: true });
    } catch {
      return [];
    }
  };
  fix(home, PRIVATE_DIR);
  for (const f of HOME_FILES) fix(join(home, f), PRIVATE_FILE);
  for (const d of HOME_DIRS) fix(join(home, d), PRIVATE_DIR);
  for (const d of PER_ITEM_DIRS) {
    for (const item of entries(join(home, d))) {
      if (!item.isDirectory()) continue;
      const dir = join(home, d, item.name);
      fix(dir, PRIVATE_DIR);
      for (const f of entries(dir)) {
        if (f.isFile() || f.isSocket()) fix(join(dir, f.name), PRIVATE_FILE);
        else if (f.isDirectory()) fix(join(dir, f.name), PRIVATE_DIR);
      }
    }
  }
  for (const d of ['images/blobs', 'images/blobs/sha256', 'images/blobs/sha512', 'images/rootfs']) fix(join(home, d), PRIVATE_DIR);
  // A volume's own directory, not its data (the guest sees the data's modes).
  for (const v of entries(join(home, 'volumes'))) if (v.isDirectory()) fix(join(home, 'volumes', v.name), PRIVATE_DIR);
  return changed;
}
