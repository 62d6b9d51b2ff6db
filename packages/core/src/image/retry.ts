import { RoostError } from '../errors.js';

/** The first retry waits about this long; each later one about twice as long as the one before. */
export const BACKOFF_BASE_MS = 200;
/** No wait between retries is longer than this. */
export const BACKOFF_CAP_MS = 5000;

/**
 * How long to wait before retry number `attempt` (0 for the first retry):
 * exponential from `baseMs`, capped at `capMs`, and jittered into the upper
 * half of that so that many clients failing together do not retry together.
 */
export function backoffDelay(attempt: number, baseMs = BACKOFF_BASE_MS, capMs = BACKOFF_CAP_MS): number {
  const ceiling = Math.min(capMs, baseMs * 2 ** attempt);
  return ceiling / 2 + (Math.random() * ceiling) / 2;
}

/** The contract's abortable sleep (retry loops wait with it). */
export { sleep } from '@roost/api';

/**
 * True for a transient failure that may succeed when tried again from the
 * start: a connection dropped or stalled in the middle of a transfer. Such
 * errors carry `details.retryable === true`; errors a client already retried
 * as often as it was allowed to do not.
 */
export function isRetryable(err: unknown): err is RoostError {
  return err instanceof RoostError && err.details.retryable === true;
}
