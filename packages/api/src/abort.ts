import { RoostError } from './errors.js';

/*
 * Cancellation helpers every face shares: one way to turn an aborted
 * signal into a RoostError, one abortable sleep.
 */

/** Turns an aborted signal's reason into a RoostError: its own RoostError, TIMEOUT for AbortSignal.timeout, else ABORTED. */
export function abortError(signal: AbortSignal, what: string): RoostError {
  const reason: unknown = signal.reason;
  if (reason instanceof RoostError) return reason;
  if (reason instanceof Error && reason.name === 'TimeoutError') {
    return new RoostError('TIMEOUT', `${what} timed out`, { cause: reason });
  }
  return new RoostError('ABORTED', `${what} was aborted`, { cause: reason });
}

/**
 * Resolves after `ms`, or rejects with `abortError(signal, what)` as soon as
 * `signal` aborts (at once if it already has). A caller that wants a quiet
 * wake-up on abort catches the rejection. `unref`: the timer does not keep
 * the process alive (for a wait raced against something that does, such as
 * a VM's exit, which must not hold a program open once it has won).
 */
export function sleep(ms: number, signal?: AbortSignal, what = 'the wait', options: { unref?: boolean } = {}): Promise<void> {
  if (signal?.aborted) return Promise.reject(abortError(signal, what));
  return new Promise((resolve, reject) => {
    const onAbort = () => {
      clearTimeout(timer);
      reject(abortError(signal!, what));
    };
    const timer = setTimeout(() => {
      signal?.removeEventListener('abort', onAbort);
      resolve();
    }, ms);
    if (options.unref) (timer as { unref?: () => void }).unref?.();
    signal?.addEventListener('abort', onAbort, { once: true });
  });
}
