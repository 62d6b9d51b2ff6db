import { open } from 'node:fs/promises';

/** The most of a console log one `logs()` call reads (its end). */
export const MAX_LOG_BYTES = 1 << 20;

/**
 * The end of a console log: at most MAX_LOG_BYTES (from a line start when
 * the file is longer), and of that the last `tail` lines when asked (a
 * final newline ends the last line rather than starting an empty one).
 * A log that does not exist yet is empty. The one log tail of Roost:
 * `sandbox.logs()` embedded, the daemon's logs route, and so the CLI.
 */
export async function readConsoleLog(path: string, options: { tail?: number } = {}): Promise<string> {
  let fh;
  try {
    fh = await open(path, 'r');
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return '';
    throw e;
  }
  try {
    const { size } = await fh.stat();
    const start = Math.max(0, size - MAX_LOG_BYTES);
    const buf = Buffer.alloc(size - start);
    const { bytesRead } = await fh.read(buf, 0, buf.length, start);
    let text = buf.subarray(0, bytesRead).toString('utf8');
    if (start > 0) text = text.slice(text.indexOf('\n') + 1);
    return options.tail === undefined ? text : tailLines(text, options.tail);
  } finally {
    await fh.close();
  }
}

/** The last `n` lines of a text (a final newline ends the last line). */
export function tailLines(text: string, n: number): string {
  const lines = text.split('\n');
  const trailing = lines.at(-1) === '' ? lines.pop() !== undefined : false;
  return lines.slice(Math.max(0, lines.length - n)).join('\n') + (trailing && n > 0 ? '\n' : '');
}
