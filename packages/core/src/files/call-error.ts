import { constants as osConstants } from 'node:os';
import { errnoCode } from '@roost/api';
import type { ErrorRecord } from '@roost/protocol';
import { RoostError } from '../errors.js';

/*
 * What a failed CALL means on the host: the agent's error record (errno,
 * path, message) turned into a RoostError with a stable code.
 */

let errnoNames: Map<number, string> | undefined;

/** The name of a Linux errno (`2` → `ENOENT`), from node's table (the host is Linux). */
export function errnoName(errno: number): string {
  if (!errnoNames) {
    errnoNames = new Map();
    for (const [name, n] of Object.entries(osConstants.errno)) if (!errnoNames.has(n)) errnoNames.set(n, name);
  }
  return errnoNames.get(errno) ?? `errno ${errno}`;
}

/**
 * The RoostError of an error record: the code from the errno (see
 * ERRNO_CODES in @roost/api), `details: { errno: 'ENOENT', path }`, and a
 * message like `read /etc/nope: No such file or directory (ENOENT)`.
 */
export function callError(record: ErrorRecord, what: string, fallbackPath?: string): RoostError {
  const name = errnoName(record.errno);
  const path = record.path || fallbackPath;
  // The agent's MESSAGE is `<what it did>: <strerror>`; the path it did it on is named when it is not the operand.
  let text = record.message.trim() || name;
  const sep = text.indexOf(': ');
  if (record.path && record.path !== fallbackPath && sep > 0) text = `${text.slice(0, sep)} ${record.path}${text.slice(sep)}`;
  const message = `${what}: ${text} (${name})`;
  return new RoostError(errnoCode(name), message, { details: { errno: name, ...(path !== undefined ? { path } : {}) } });
}
