import { randomBytes } from 'node:crypto';
import { mkdir, rename, rm, stat, truncate, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { runTool } from '../../tool.js';

/**
 * Creates a sandbox's writable disk at `path`: a qcow2 overlay whose backing
 * file is an empty ext4 filesystem of `sizeMiB`, made once per size and
 * shared read-only (`<cache>/disks/ext4-<size>m.raw`). A new disk is a few
 * hundred KiB; it grows with what the guest writes, never past its size, and
 * the guest sees ENOSPC when its filesystem is full.
 */
export async function createDisk(cache: string, path: string, sizeMiB: number, signal?: AbortSignal): Promise<void> {
  const template = await diskTemplate(cache, sizeMiB, signal);
  try {
    await runTool('qemu-img', ['create', '-q', '-f', 'qcow2', '-F', 'raw', '-b', template, path], { pkg: 'qemu-utils', code: 'VMM', signal });
  } catch (e) {
    await rm(path, { force: true });
    throw e;
  }
}

/**
 * An empty qcow2 layer at `path` over the qcow2 disk `base`. `-u`: `base`
 * need not exist yet (a snapshot's disk is renamed into place after).
 */
export async function createOverlay(base: string, path: string, sizeMiB: number, signal?: AbortSignal): Promise<void> {
  await runTool('qemu-img', ['create', '-q', '-f', 'qcow2', '-F', 'qcow2', '-u', '-b', base, path, `${sizeMiB}M`], {
    pkg: 'qemu-utils',
    code: 'VMM',
    ...(signal ? { signal } : {}),
  });
}

/** The shared empty-filesystem image of a size, built on first use (atomically: concurrent builders race safely). */
async function diskTemplate(cache: string, sizeMiB: number, signal?: AbortSignal): Promise<string> {
  const dir = join(cache, 'disks');
  const template = join(dir, `ext4-${sizeMiB}m.raw`);
  if (await stat(template).catch(() => null)) return template;
  await mkdir(dir, { recursive: true, mode: 0o700 });
  const tmp = join(dir, `.tmp-${process.pid}-${randomBytes(4).toString('hex')}`);
  try {
    await writeFile(tmp, '', { mode: 0o600 });
    await truncate(tmp, sizeMiB * 2 ** 20);
    // No reserved blocks (the guest's root is the only user); inode tables and
    // the journal are left uninitialized so the template stays sparse. The guest
    // mounts with noinit_itable, so nothing zeroes them later either.
    await runTool('mkfs.ext4', ['-q', '-F', '-m', '0', '-L', 'roost-rw', '-E', 'lazy_itable_init=1,lazy_journal_init=1,nodiscard,root_owner=0:0', tmp], {
      pkg: 'e2fsprogs',
      code: 'VMM',
      signal,
    });
    await rename(tmp, template);
  } catch (e) {
    await rm(tmp, { force: true });
    throw e;
  }
  return template;
}
