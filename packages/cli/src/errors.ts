import { CommanderError } from 'commander';
import { diskFullError, ERRNO_CODES, isRoostError, RoostError } from '@roost/api';
import { roostHome } from '@roost/core';

/*
 * How the CLI reports a failure: one line on stderr, never a JavaScript
 * stack trace for a failure a user can cause (a RoostError, a system error
 * of the host such as ENOENT or ECONNREFUSED, a validation error). Anything
 * else is a bug in Roost: it is reported in one line too, naming
 * ROOST_DEBUG=1, which prints the stack trace (and the causes) of every
 * failure.
 */

/** Exit status for errors of Roost itself (as docker does), distinct from the command's own statuses. */
export const EXIT_ROOST_ERROR = 125;
/** Exit status of a usage error (commander has printed it). */
export const EXIT_USAGE = 2;

/** True when ROOST_DEBUG asks for stack traces. */
export function debugEnabled(env: NodeJS.ProcessEnv = process.env): boolean {
  const v = env.ROOST_DEBUG;
  return v !== undefined && v !== '' && v !== '0' && v.toLowerCase() !== 'false';
}

/**
 * Turns an expected failure that is not a RoostError into one: a system
 * error of the host (`code` like ENOENT, with `syscall`), a zod validation
 * error. Returns undefined for anything else (a bug).
 */
export function asExpectedError(e: unknown): RoostError | undefined {
  if (isRoostError(e)) return e;
  if (!(e instanceof Error)) return undefined;
  // A full disk under the home (roost.db, a sandbox's files): SQLite's errors name no path, so the home is named.
  const full = diskFullError(e, (e as NodeJS.ErrnoException).path ?? roostHome());
  if (full) return full;
  const sys = e as NodeJS.ErrnoException;
  if (typeof sys.code === 'string' && /^E[A-Z0-9]+$/.test(sys.code) && (sys.syscall !== undefined || sys.errno !== undefined)) {
    const code = Object.hasOwn(ERRNO_CODES, sys.code)
      ? ERRNO_CODES[sys.code]!
      : sys.code === 'ECONNREFUSED' || sys.code === 'ECONNRESET'
        ? 'UNAVAILABLE'
        : 'INTERNAL';
    // Node's messages already name the call and the path: "ENOENT: no such file or directory, open '/x'".
    return new RoostError(code, sys.message, { cause: e, details: { errno: sys.code, ...(sys.path !== undefined ? { path: sys.path } : {}) } });
  }
  if (e.name === 'ZodError' && Array.isArray((e as { issues?: unknown }).issues)) {
    const issues = (e as unknown as { issues: { path: PropertyKey[]; message: string }[] }).issues;
    const first = issues[0];
    const field = first ? first.path.map(String).join('.') : '';
    return new RoostError('INVALID_ARGUMENT', first ? `${field ? `${field}: ` : ''}${first.message}` : 'invalid input', { cause: e });
  }
  return undefined;
}

/** The stack of `e` and of its causes, for ROOST_DEBUG. */
function stackOf(e: unknown): string {
  const lines: string[] = [];
  for (let cur: unknown = e, depth = 0; cur !== undefined && depth < 8; depth++) {
    lines.push(`${depth > 0 ? 'caused by: ' : ''}${cur instanceof Error ? (cur.stack ?? cur.message) : String(cur)}`);
    cur = cur instanceof Error ? cur.cause : undefined;
  }
  return lines.join('\n');
}

/**
 * Reports a failure of a CLI command on `write` (stderr) and returns the
 * exit status: commander's own errors (already printed) are usage errors,
 * expected failures one line `roost: MESSAGE`, and a bug one line that says
 * so; with ROOST_DEBUG=1 every failure also prints its stack trace.
 */
export function reportError(e: unknown, write: (s: string) => void = (s) => process.stderr.write(s), env: NodeJS.ProcessEnv = process.env): number {
  if (e instanceof CommanderError) {
    if (e.exitCode === 0 || e.code === 'commander.help' || e.code === 'commander.helpDisplayed' || e.code === 'commander.version') return 0;
    return EXIT_USAGE;
  }
  const debug = debugEnabled(env);
  const expected = asExpectedError(e);
  if (expected) write(`roost: ${expected.message}\n`);
  else {
    const message = e instanceof Error ? `${e.name}: ${e.message}` : String(e);
    write(
      `roost: internal error: ${message.split('\n')[0]}${debug ? '' : ' (a bug in Roost: run again with ROOST_DEBUG=1 for its stack trace, and report it)'}\n`,
    );
  }
  if (debug) write(`${stackOf(e)}\n`);
  return EXIT_ROOST_ERROR;
}

/**
 * Runs `fn`; an error whose message names an option to change
 * (`details.option`, like a boot timeout's `timeoutMs`) names `flag`, the
 * CLI flag the user types, instead.
 */
export async function namingFlag<T>(flag: string, fn: () => Promise<T>): Promise<T> {
  try {
    return await fn();
  } catch (e) {
    const option = isRoostError(e) ? e.details.option : undefined;
    if (isRoostError(e) && typeof option === 'string' && e.message.includes(`(${option})`)) {
      throw new RoostError(e.code, e.message.replace(`(${option})`, `(${flag})`), { cause: e, details: { ...e.details, option: flag } });
    }
    throw e;
  }
}
