/** Stable error codes. Clients (the CLI, the daemon's HTTP mapping, the SDK) switch on these, never on messages. */
export type RoostErrorCode =
  | 'INVALID_ARGUMENT'
  | 'UNAUTHENTICATED'
  | 'NOT_FOUND'
  | 'PERMISSION_DENIED'
  | 'ALREADY_EXISTS'
  | 'INVALID_STATE'
  | 'TIMEOUT'
  | 'ABORTED'
  | 'RESOURCE_EXHAUSTED'
  | 'UNAVAILABLE'
  | 'SETUP_REQUIRED'
  | 'BOOT_FAILED'
  | 'BUILD_FAILED'
  | 'AGENT'
  | 'VMM'
  | 'IMAGE'
  | 'NETWORK'
  | 'ACTOR'
  | 'INTERNAL';

/**
 * The HTTP status of each code: the one table the daemon answers with and the
 * client reads back. 499 is "client closed request" (the caller aborted).
 */
export const ERROR_STATUS: Readonly<Record<RoostErrorCode, number>> = {
  INVALID_ARGUMENT: 400,
  UNAUTHENTICATED: 401,
  NOT_FOUND: 404,
  PERMISSION_DENIED: 403,
  ALREADY_EXISTS: 409,
  INVALID_STATE: 409,
  TIMEOUT: 504,
  ABORTED: 499,
  RESOURCE_EXHAUSTED: 429,
  UNAVAILABLE: 503,
  SETUP_REQUIRED: 503,
  BOOT_FAILED: 500,
  /** A step of an image build failed (a RUN exited non-zero): the Dockerfile's doing, not Roost's. */
  BUILD_FAILED: 422,
  AGENT: 502,
  VMM: 500,
  IMAGE: 502,
  NETWORK: 502,
  /** An actor's handler failed (trapped, ran out of fuel or wall time, returned non-zero): the module's doing; `details.reason` says which. */
  ACTOR: 422,
  INTERNAL: 500,
};

export const ERROR_CODES = Object.keys(ERROR_STATUS) as RoostErrorCode[];

/**
 * The status of a RESOURCE_EXHAUSTED that is a full disk (the host's or a
 * guest's): 507 Insufficient Storage. 429 says "retry later", which a full
 * disk will not make true by itself.
 */
export const DISK_FULL_STATUS = 507;

/** True for the details of a full disk: `resource: 'disk'` (the host's), or the errno of a full disk or quota (a guest's). */
export function isDiskFullDetails(details: Record<string, unknown>): boolean {
  return details.resource === 'disk' || details.errno === 'ENOSPC' || details.errno === 'EDQUOT';
}

/** The HTTP status of an error: ERROR_STATUS of its code, but DISK_FULL_STATUS for a full disk. */
export function errorStatus(err: { code: RoostErrorCode; details?: Record<string, unknown> }): number {
  if (err.code === 'RESOURCE_EXHAUSTED' && err.details && isDiskFullDetails(err.details)) return DISK_FULL_STATUS;
  return ERROR_STATUS[err.code];
}

/**
 * The one error type Roost throws, embedded or remote. `code` is stable;
 * `message` says what happened and what to do; `cause` carries the
 * underlying error; `details` carries structured context (for example the
 * last console lines of a guest that did not boot, or the field that failed
 * validation).
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
