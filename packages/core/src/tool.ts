import { abortError, RoostError, type RoostErrorCode } from './errors.js';
import { COMMAND_NOT_FOUND, privateSpawn } from './state/private.js';

export interface RunToolOptions {
  /** The Debian package that provides the tool (named when it is missing). */
  pkg: string;
  /** The error code of a failure (IMAGE for image builds, VMM for disks). */
  code: RoostErrorCode;
  signal?: AbortSignal | undefined;
  cwd?: string;
}

/**
 * Runs a host tool (mkfs.erofs, setfattr, qemu-img, mkfs.ext4) to completion,
 * with a umask of 077: what it makes in the home is private (state/private.ts).
 * Its stderr becomes the error message; a missing tool is SETUP_REQUIRED
 * naming its package; an abort is ABORTED or TIMEOUT.
 */
export function runTool(cmd: string, args: string[], options: RunToolOptions): Promise<void> {
  const { signal, cwd } = options;
  return new Promise((resolve, reject) => {
    const child = privateSpawn(cmd, args, { stdio: ['ignore', 'ignore', 'pipe'], ...(cwd ? { cwd } : {}), ...(signal ? { signal } : {}) });
    let stderr = '';
    let failed = false;
    child.stderr!.setEncoding('utf8').on('data', (d: string) => (stderr = (stderr + d).slice(-4000)));
    child.on('error', (e: NodeJS.ErrnoException) => {
      failed = true;
      if (e.code === 'ENOENT')
        reject(new RoostError('SETUP_REQUIRED', `${cmd} is not installed: run \`roost setup\` (it installs ${options.pkg})`, { cause: e }));
      else if (e.name === 'AbortError' && signal) reject(abortError(signal, cmd));
      else reject(new RoostError(options.code, `${cmd}: ${e.message}`, { cause: e }));
    });
    child.on('close', (code, sig) => {
      if (failed) return;
      if (code === 0) resolve();
      else if (code === COMMAND_NOT_FOUND && /not found/.test(stderr))
        reject(new RoostError('SETUP_REQUIRED', `${cmd} is not installed: run \`roost setup\` (it installs ${options.pkg})`));
      // The tool's words are kept as the cause, so diskFullError can tell a full disk ("No space left on device").
      else reject(new RoostError(options.code, `${cmd} failed (${sig ?? `exit ${code}`}): ${stderr.trim()}`, { cause: new Error(stderr.trim()) }));
    });
  });
}
