import { RoostError, type RoostErrorCode } from '../errors.js';

export interface RetryOptions {
  /** Names the socket in errors. */
  what: string;
  /** Stop once this reports true (the VM is gone), with `exitCode`. */
  vmExited?: (() => boolean) | undefined;
  exitCode?: RoostErrorCode;
  signal?: AbortSignal | undefined;
  /** Epoch ms after which to give up with TIMEOUT. */
  deadline?: number;
}

/**
 * QEMU creates its listening sockets 30-50 ms after it starts: retries
 * `attempt` while it fails with ENOENT or ECONNREFUSED, every 1 to 5 ms (a
 * failed attempt costs microseconds; a restored sandbox is up in under
 * 100 ms, so coarser polling would be a visible part of it), until it
 * connects, the VM exits, the signal fires or the deadline passes. Other
 * errors are thrown as they are.
 */
export async function connectWithRetry<T>(attempt: () => Promise<T>, options: RetryOptions): Promise<T> {
  for (let delay = 1; ; delay = Math.min(delay * 2, 5)) {
    if (options.signal?.aborted) throw new RoostError('ABORTED', `connecting to ${options.what} was aborted`, { cause: options.signal.reason });
    if (options.vmExited?.()) throw new RoostError(options.exitCode ?? 'VMM', `the VM exited before ${options.what} accepted a connection`);
    if (options.deadline !== undefined && Date.now() > options.deadline) throw new RoostError('TIMEOUT', `${options.what} did not accept a connection in time`);
    try {
      return await attempt();
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      if (code !== 'ECONNREFUSED' && code !== 'ENOENT') throw e;
    }
    await new Promise((r) => setTimeout(r, delay));
  }
}
