/**
 * `fork({ volumes: 'copy' })`: each copy gets named volumes of its own
 * holding the source's volumes as they were at the fork. The first set is
 * copied while the source's vCPUs are stopped (its volumes quiet), so the
 * files match the copy's memory; the other copies' sets are copied from it
 * after the source runs on.
 */
import { spawn } from 'node:child_process';
import type { SandboxInfo, VolumeMount } from '@roost/api';
import { RoostError } from '../errors.js';
import type { Volumes } from '../volumes.js';
import { isHostPath } from './volumes.js';

/** The volume names of copy `i` (volume `j` of the source is `<fork>-<i>-v<j>`). */
function volumeName(fork: string, copy: number, volume: number): string {
  return `${fork}-${copy}-v${volume}`;
}

/** The plan of a fork that copies the source's volumes, and what undoes it. */
export interface VolumeCopies {
  /** Copies the volumes for the first copy: call while the source is paused. */
  whilePaused(): Promise<void>;
  /** Copies the first set for the others (after the source runs on). */
  rest(): Promise<void>;
  /** The mounts of copy `i`: its own volumes at the source's targets. */
  volumesOf(i: number): VolumeMount[];
  /** Removes every volume made (the fork failed). */
  undo(): Promise<void>;
}

/**
 * Plans the copies: INVALID_ARGUMENT for a remote volume (its files are
 * another host's). The volumes are made (empty) now, labelled with the
 * source, so a name clash fails before anything is paused.
 */
export async function planVolumeCopies(
  volumes: Pick<Volumes, 'create' | 'get' | 'remove' | 'dataPath'>,
  source: Readonly<SandboxInfo>,
  fork: string,
  count: number,
): Promise<VolumeCopies> {
  const mounts = source.volumes ?? [];
  const sources: { path: string; quotaBytes?: number }[] = [];
  for (const v of mounts) {
    if (isHostPath(v.source)) {
      sources.push({ path: v.source });
      continue;
    }
    const info = await volumes.get(v.source);
    if (info.remote)
      throw new RoostError(
        'INVALID_ARGUMENT',
        `volumes: 'copy': volume ${v.source} is a remote volume (its files are ${info.remote.url}'s); fork with volumes 'shared'`,
      );
    sources.push({ path: info.path, ...(info.quotaBytes !== undefined ? { quotaBytes: info.quotaBytes } : {}) });
  }
  const made: string[] = [];
  const undo = async (): Promise<void> => {
    for (const name of made.splice(0)) await volumes.remove(name).catch(() => {});
  };
  try {
    for (let i = 0; i < count; i++) {
      for (const [j, src] of sources.entries()) {
        const name = volumeName(fork, i, j);
        await volumes.create({
          name,
          labels: { 'roost.fork.source': source.id },
          ...(src.quotaBytes !== undefined ? { quotaBytes: src.quotaBytes } : {}),
        });
        made.push(name);
      }
    }
  } catch (e) {
    await undo();
    throw e;
  }
  return {
    whilePaused: () => Promise.all(sources.map((src, j) => copyTree(src.path, volumes.dataPath(volumeName(fork, 0, j))))).then(() => {}),
    rest: async () => {
      const jobs: Promise<void>[] = [];
      for (let i = 1; i < count; i++)
        for (let j = 0; j < sources.length; j++) jobs.push(copyTree(volumes.dataPath(volumeName(fork, 0, j)), volumes.dataPath(volumeName(fork, i, j))));
      await Promise.all(jobs);
    },
    volumesOf: (i) => mounts.map((v, j) => ({ source: volumeName(fork, i, j), target: v.target, ...(v.readOnly ? { readOnly: true } : {}) })),
    undo,
  };
}

/**
 * Copies the tree below `from` into the existing directory `to`, keeping
 * owners, modes, times and extended attributes (the guest's view lives in
 * `user.virtfs.*`), hard links and symlinks as they are; file data is
 * reflinked where the file system can (btrfs, XFS), else copied.
 */
function copyTree(from: string, to: string): Promise<void> {
  return new Promise((resolve, reject) => {
    const child = spawn('cp', ['-a', '--reflink=auto', '--', `${from}/.`, `${to}/`], { stdio: ['ignore', 'ignore', 'pipe'] });
    let err = '';
    child.stderr.on('data', (c: Buffer) => (err += c.toString()).length > 4096 && (err = err.slice(-4096)));
    child.on('error', (e) => reject(new RoostError('INTERNAL', `cannot copy the volume ${from}: ${e.message}`, { cause: e })));
    child.on('close', (code) =>
      code === 0 ? resolve() : reject(new RoostError('INTERNAL', `copying the volume ${from} to ${to} failed (cp exit ${code}): ${err.trim().slice(-500)}`)),
    );
  });
}
