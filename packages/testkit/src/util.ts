import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { lstat, mkdir, rename, writeFile } from 'node:fs/promises';
import { dirname } from 'node:path';

/** True when something (even a dangling symlink) is at `path`. */
export async function exists(path: string): Promise<boolean> {
  return lstat(path).then(
    () => true,
    () => false,
  );
}

/** Writes a file through a temp file and a rename, so readers never see half of it. */
export async function writeAtomic(path: string, data: Buffer | string): Promise<void> {
  const tmp = `${path}.tmp-${process.pid}-${randomBytes(3).toString('hex')}`;
  await mkdir(dirname(path), { recursive: true });
  await writeFile(tmp, data);
  await rename(tmp, path);
}

/** Runs a command; resolves with its stdout, rejects with the tail of its output. */
export function run(cmd: string, args: string[]): Promise<string> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let tail = '';
    child.stdout.on('data', (d: Buffer) => {
      stdout += d.toString();
      tail = (tail + d.toString()).slice(-4000);
    });
    child.stderr.on('data', (d: Buffer) => (tail = (tail + d.toString()).slice(-4000)));
    child.on('error', reject);
    child.on('close', (code, sig) =>
      code === 0 ? resolve(stdout) : reject(new Error(`${cmd} ${args.join(' ')} failed (${sig ?? `exit ${code}`}):\n${tail}`)),
    );
  });
}
