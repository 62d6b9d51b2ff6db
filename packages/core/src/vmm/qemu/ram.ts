import { readdir, readFile, readlink, stat } from 'node:fs/promises';
import { RoostError } from '../../errors.js';
import type { RamSource } from '../../snapshot/memory.js';

/**
 * Finds where the guest RAM of QEMU process `pid` can be read. A booted VM's
 * RAM is the memfd MEMORY_BACKEND_MEMFD_NAME, read through its fd; a
 * restored VM's is a private mapping of `memPath` (the snapshot's image) of
 * `size` bytes, read through the process's memory.
 */
export async function findRam(pid: number, size: number, memfdName: string, memPath?: string): Promise<RamSource> {
  if (memPath === undefined) {
    const fds = await readdir(`/proc/${pid}/fd`).catch((e: Error) => {
      throw new RoostError('VMM', `cannot list the files of QEMU (pid ${pid}): ${e.message}`, { cause: e });
    });
    for (const fd of fds) {
      const target = await readlink(`/proc/${pid}/fd/${fd}`).catch(() => '');
      if (target.replace(/ \(deleted\)$/, '') === memfdName) return { kind: 'file', path: `/proc/${pid}/fd/${fd}` };
    }
    throw new RoostError('VMM', `QEMU (pid ${pid}) has no ${memfdName}: was the VM started by this version of Roost?`);
  }
  const maps = await readFile(`/proc/${pid}/maps`, 'utf8').catch((e: Error) => {
    throw new RoostError('VMM', `cannot read the memory map of QEMU (pid ${pid}): ${e.message}`, { cause: e });
  });
  // A confined QEMU was handed the image as a descriptor opened in its jail's mount namespace, whose path
  // may read differently from here: the inode tells.
  const inode = await stat(memPath).then(
    (st) => String(st.ino),
    () => null,
  );
  const found: number[] = [];
  for (const line of maps.split('\n')) {
    // start-end perms offset dev inode path
    const m = /^([0-9a-f]+)-([0-9a-f]+) \S+ 0+ \S+ (\d+) +(.+)$/.exec(line);
    if (!m || (m[4]!.replace(/ \(deleted\)$/, '') !== memPath && m[3] !== inode)) continue;
    const start = parseInt(m[1]!, 16);
    if (parseInt(m[2]!, 16) - start === size) found.push(start);
  }
  if (found.length !== 1) throw new RoostError('VMM', `found ${found.length} mappings of ${memPath} (${size} bytes) in QEMU (pid ${pid}), expected one`);
  return { kind: 'process', pid, start: found[0]! };
}
