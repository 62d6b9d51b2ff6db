/** Stable error codes. Clients (the CLI, the daemon's HTTP mapping) switch on these, never on messages. */
export type RoostErrorCode =
  | 'INVALID_ARGUMENT'
  | 'NOT_FOUND'
  | 'INVALID_STATE'
  | 'TIMEOUT'
  | 'ABORTED'
  | 'SETUP_REQUIRED'
  | 'BOOT_FAILED'
  | 'AGENT'
  | 'VMM'
  | 'IMAGE'
  | 'NETWORK'
  | 'INTERNAL';

/**
 * The one error type Roost throws. `code` is stable; `message` says what
 * happened and what to do; `cause` carries the underlying error; `details`
 * carries structured context (for example the last console lines of a guest
 * that did not boot, or the field that failed validation).
 */
export class RoostError extends Error {
  override readonly name = 'RoostError';
  readonly code: RoostErrorCode;
  readonly details: Record<string, unknown>;

  constructor(code: RoostErrorCode, message: string, options: { cause?: unknown; details?: Record<string, unknown> } = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.code = code;
    this.details = options.details ?? {};
  }

  toJSON(): { code: RoostErrorCode; message: string; details: Record<string, unknown> } {
    return { code: this.code, message: this.message, details: this.details };
  }
}

/** True when `err` is a RoostError, optionally with the given code. */
export function isRoostError(err: unknown, code?: RoostErrorCode): err is RoostError {
  return err instanceof RoostError && (code === undefined || err.code === code);
}

/** Turns an aborted signal's reason into a RoostError (ABORTED, or TIMEOUT for AbortSignal.timeout). */
export function abortError(signal: AbortSignal, what: string): RoostError {
  const reason: unknown = signal.reason;
  if (reason instanceof RoostError) return reason;
  if (reason instanceof Error && reason.name === 'TimeoutError') {
    return new RoostError('TIMEOUT', `${what} timed out`, { cause: reason });
  }
  return new RoostError('ABORTED', `${what} was aborted`, { cause: reason });
}
