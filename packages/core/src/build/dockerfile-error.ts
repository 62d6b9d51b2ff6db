import { RoostError } from '../errors.js';

/** The name a Dockerfile goes by in messages when the caller gives none. */
export const DEFAULT_DOCKERFILE_NAME = 'Dockerfile';

/**
 * The one error the builder's frontend throws for a Dockerfile it cannot
 * build: INVALID_ARGUMENT, message `FILE:LINE: what` (or `FILE: what` when no
 * line is to blame), `details: { file, line, ...extra }`.
 */
export function dockerfileError(file: string, line: number, message: string, extra: Record<string, unknown> = {}, cause?: unknown): RoostError {
  const where = line > 0 ? `${file}:${line}` : file;
  return new RoostError('INVALID_ARGUMENT', `${where}: ${message}`, { details: { ...extra, file, line }, cause });
}

/** The message of anything thrown (a lexer's Error, a RoostError, a string). */
export function messageOf(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
