import { RoostError } from '@roost/api';

export { RoostError, isRoostError, ERROR_STATUS, type RoostErrorCode } from '@roost/api';

/** Turns an aborted signal's reason into a RoostError (ABORTED, or TIMEOUT for AbortSignal.timeout). */
export function abortError(signal: AbortSignal, what: string): RoostError {
  const reason: unknown = signal.reason;
  if (reason instanceof RoostError) return reason;
  if (reason instanceof Error && reason.name === 'TimeoutError') {
    return new RoostError('TIMEOUT', `${what} timed out`, { cause: reason });
  }
  return new RoostError('ABORTED', `${what} was aborted`, { cause: reason });
}
