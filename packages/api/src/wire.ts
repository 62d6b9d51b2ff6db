import { ERROR_CODES, RoostError, type RoostErrorCode } from './errors.js';
import type { PullProgress } from './images.js';
import { PushResultSchema, PushStatusSchema, type PushProgress, type PushResult } from './push.js';
import { PullStatusSchema, type ExecEvent, type ImageInfoBody } from './schemas.js';

/*
 * Decoders of what the daemon streams: exec events, pull events, and the
 * error objects inside them and inside error answers. A face that reads the
 * wire (the client) goes through these; what it cannot decode it ignores
 * (additive changes) or reports as the daemon's fault, never as a crash.
 */

const isObject = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);

/** True for a code of the contract's error table. */
export function isErrorCode(code: unknown): code is RoostErrorCode {
  return typeof code === 'string' && (ERROR_CODES as string[]).includes(code);
}

/**
 * Rebuilds a RoostError from the `error` object of the wire
 * (`{ code, message, details }`). A code that is not one of the table's
 * becomes `fallback.code`, a missing message `fallback.message`;
 * `extraDetails` are added to its details.
 */
export function errorFromBody(error: unknown, fallback: { code: RoostErrorCode; message: string }, extraDetails?: Record<string, unknown>): RoostError {
  const e = isObject(error) ? error : {};
  const code = isErrorCode(e.code) ? e.code : fallback.code;
  const message = typeof e.message === 'string' ? e.message : fallback.message;
  const details = isObject(e.details) ? e.details : undefined;
  if (details === undefined && extraDetails === undefined) return new RoostError(code, message);
  return new RoostError(code, message, { details: { ...details, ...extraDetails } });
}

/** True when `error` looks like the wire's error object (a string code and message). */
export function isErrorObject(error: unknown): error is { code: string; message: string; details?: unknown } {
  return isObject(error) && typeof error.code === 'string' && typeof error.message === 'string';
}

/** A decoded exec event: the wire's, with an `error` rebuilt into a RoostError. */
export type DecodedExecEvent = Exclude<ExecEvent, { type: 'error' }> | { type: 'error'; error: RoostError };

/** Decodes one line of an exec's NDJSON stream; null for what it does not know (ignored: additive changes). */
export function decodeExecEvent(value: unknown): DecodedExecEvent | null {
  if (!isObject(value)) return null;
  switch (value.type) {
    case 'started':
      return { type: 'started', execId: String(value.execId), pid: Number(value.pid) };
    case 'stdout':
    case 'stderr':
      return typeof value.data === 'string' ? { type: value.type, data: value.data } : null;
    case 'exit':
      return { type: 'exit', exitCode: Number(value.exitCode), signal: typeof value.signal === 'string' ? value.signal : null };
    case 'error':
      return { type: 'error', error: errorFromBody(value.error, { code: 'INTERNAL', message: 'the command failed' }) };
    default:
      return null;
  }
}

/** A decoded pull event. */
export type DecodedPullEvent = { type: 'progress'; progress: PullProgress } | { type: 'done'; image: ImageInfoBody } | { type: 'error'; error: RoostError };

/** The wire's progress line of one blob (`completed` is PullProgress's `current`; `status` is additive: older daemons send only `done`). */
export function encodePullProgress(
  p: PullProgress,
  done: boolean,
): { type: 'progress'; digest: string; kind: string; completed: number; total: number; done: boolean; status: PullProgress['status'] } {
  return { type: 'progress', digest: p.digest, kind: p.kind, completed: p.current, total: p.total, done, status: p.status };
}

/** Decodes one line of a pull's NDJSON stream (`image`: the reference asked for); null for what it does not know. */
export function decodePullEvent(value: unknown, image: string): DecodedPullEvent | null {
  if (!isObject(value)) return null;
  switch (value.type) {
    case 'progress': {
      const current = Number(value.completed);
      const done = value.done === true;
      const parsed = PullStatusSchema.safeParse(value.status);
      const status = parsed.success ? parsed.data : done ? 'done' : current > 0 ? 'downloading' : 'waiting';
      return {
        type: 'progress',
        progress: { image, digest: String(value.digest), kind: value.kind === 'config' ? 'config' : 'layer', current, total: Number(value.total), status },
      };
    }
    case 'done':
      return isObject(value.image) ? { type: 'done', image: value.image as ImageInfoBody } : null;
    case 'error':
      return { type: 'error', error: errorFromBody(value.error, { code: 'IMAGE', message: `pulling ${image} failed` }) };
    default:
      return null;
  }
}

/** A decoded push event. */
export type DecodedPushEvent = { type: 'progress'; progress: PushProgress } | { type: 'done'; result: PushResult } | { type: 'error'; error: RoostError };

/** Decodes one line of a push's NDJSON stream (`image`: the destination, or the source when none was given); null for what it does not know. */
export function decodePushEvent(value: unknown, image: string): DecodedPushEvent | null {
  if (typeof value !== 'object' || value === null) return null;
  const v = value as Record<string, unknown>;
  switch (v.type) {
    case 'progress': {
      const status = PushStatusSchema.safeParse(v.status);
      if (!status.success) return null;
      return {
        type: 'progress',
        progress: {
          image,
          digest: String(v.digest),
          kind: v.kind === 'config' ? 'config' : 'layer',
          current: Number(v.completed),
          total: Number(v.total),
          status: status.data,
        },
      };
    }
    case 'done': {
      const result = PushResultSchema.safeParse(v.result);
      return result.success ? { type: 'done', result: result.data } : null;
    }
    case 'error':
      return { type: 'error', error: errorFromBody(v.error, { code: 'IMAGE', message: `pushing ${image} failed` }) };
    default:
      return null;
  }
}
