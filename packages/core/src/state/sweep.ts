import { lstat, readdir, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { isAlive } from '../proc.js';

/*
 * Temp files of processes that died. Everything Roost writes under a temp
 * name carries the writer's pid in it (`.tmp-<pid>-…`, `….tmp-<pid>-…`,
 * `tree-<pid>-…`), so one whose writer is gone can be told from one still
 * being written by another process (a pull, a build, a snapshot of a
 * concurrent runtime): only the first kind is removed. A pid the system
 * has given to a new process keeps its files until that process ends too.
 */

/** Where temp files appear under a home, relative to it. */
const TEMP_DIRS = [
  '', // roost.owner.json.tmp-<pid>, auth.json.tmp-<pid>-…
  'images/blobs/sha256', // .tmp-<pid>-… (a download)
  'images/blobs/sha512',
  'images/rootfs', // <id>.erofs.tmp-<pid>-… (a build)
  'tmp', // tree-<pid>-… (a layer tree being unpacked)
  'snapshots', // .tmp-<pid>-<id> (a snapshot being written)
  'cache', // <asset>.tmp-<pid>-… (setup), only when the cache is the home's own
  'cache/disks', // .tmp-<pid>-… (an empty disk being made)
  'sandboxes/*', // record.json.tmp-<pid> (a witness being written)
  'snapshots/*', // record.json.tmp-<pid>
];

/** The pid a temp name carries, or null for a name that is not a temp name of a process. */
export function tempOwner(name: string): number | null {
  const m = /(?:^|\.)tmp-(\d+)(?:-|$)/.exec(name) ?? /^tree-(\d+)-/.exec(name);
  const pid = Number(m?.[1]);
  return Number.isSafeInteger(pid) && pid > 0 ? pid : null;
}

/**
 * Removes the temp files and directories under `home` whose process is no
 * longer alive: interrupted blob downloads, root filesystem builds and
 * unpacked trees, snapshots being written, disks and assets being made.
 * Those of live processes (this one's included) are kept. A `cache` that is
 * a symlink (shared between homes) is left alone. Returns what it removed
 * (with `dryRun`, what it would remove).
 */
export async function sweepTempFiles(home: string, options: { dryRun?: boolean } = {}): Promise<{ removed: string[] }> {
  const removed: string[] = [];
  const cacheShared = await lstat(join(home, 'cache')).then(
    (st) => st.isSymbolicLink(),
    () => true,
  );
  const dirs: string[] = [];
  for (const rel of TEMP_DIRS) {
    if (cacheShared && (rel === 'cache' || rel.startsWith('cache/'))) continue;
    if (!rel.endsWith('/*')) {
      dirs.push(join(home, rel));
      continue;
    }
    const parent = join(home, rel.slice(0, -2));
    for (const entry of await readdir(parent, { withFileTypes: true }).catch(() => [])) {
      if (entry.isDirectory()) dirs.push(join(parent, entry.name));
    }
  }
  for (const dir of dirs) {
    for (const name of await readdir(dir).catch(() => [] as string[])) {
      const pid = tempOwner(name);
      if (pid === null || pid === process.pid || isAlive(pid)) continue;
      const path = join(dir, name);
      if (!options.dryRun) await rm(path, { recursive: true, force: true });
      removed.push(path);
    }
  }
  return { removed };
}
