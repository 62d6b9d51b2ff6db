import { constants as osConstants } from 'node:os';
import { RoostError } from './errors.js';
import { MAX_SIGNAL, MAX_TERMINAL_SIZE } from './limits.js';
import type { CommandHandleApi } from './sandbox.js';

/*
 * The checks and helpers of a command handle that do not depend on where the
 * command runs: both faces' `kill`, `resize` and `stdin` go through these.
 */

/** The number of a signal given by name or number; INVALID_ARGUMENT for one Linux does not have. */
export function signalNumber(signal: NodeJS.Signals | number): number {
  const signo = typeof signal === 'number' ? signal : osConstants.signals[signal];
  if (signo === undefined || !Number.isInteger(signo) || signo < 1 || signo > MAX_SIGNAL) {
    throw new RoostError('INVALID_ARGUMENT', `unknown signal ${String(signal)}`);
  }
  return signo;
}

/** The name of a signal number (`SIGKILL`), or null for one without a name. */
export function signalName(signo: number): NodeJS.Signals | null {
  for (const [name, n] of Object.entries(osConstants.signals)) if (n === signo) return name as NodeJS.Signals;
  return null;
}

/** Checks a terminal size; INVALID_ARGUMENT unless both sides are integers in 1..MAX_TERMINAL_SIZE. */
export function checkTerminalSize(size: { rows: number; cols: number }): void {
  const ok = (n: number) => Number.isInteger(n) && n >= 1 && n <= MAX_TERMINAL_SIZE;
  if (!ok(size.rows) || !ok(size.cols)) {
    throw new RoostError('INVALID_ARGUMENT', `invalid terminal size ${size.rows}x${size.cols}`);
  }
}

/**
 * Writes all of `input` to a command's stdin, then closes it. A process
 * that exits before reading all of it is not an error (a closed pipe).
 */
export async function pumpStdin(
  handle: Pick<CommandHandleApi, 'write' | 'closeStdin'>,
  input: string | Uint8Array | AsyncIterable<Uint8Array | string>,
): Promise<void> {
  try {
    if (typeof input === 'string' || input instanceof Uint8Array) await handle.write(input);
    else for await (const chunk of input) await handle.write(chunk);
    handle.closeStdin();
  } catch {
    // The process exited before reading all of its input, like a closed pipe.
  }
}
