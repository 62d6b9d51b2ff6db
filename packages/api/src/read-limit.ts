import { RoostError } from './errors.js';

/*
 * The bound on what a guest may make the host receive (`maxBytes` of
 * `files.read` and `files.readArchive`, `roost cp --max-bytes`). Shared by
 * the runtime (which stops the guest's call), the client and the CLI (which
 * count again what they receive), so every face says the same thing.
 */

/** `n` bytes as a short size: `64 MiB`, `1.5 GiB`, `300 bytes`. */
export function formatByteSize(n: number): string {
  const units = ['KiB', 'MiB', 'GiB', 'TiB'];
  if (n < 1024) return `${n} bytes`;
  let v = n;
  let unit = 'bytes';
  for (const u of units) {
    if (v < 1024) break;
    v /= 1024;
    unit = u;
  }
  return `${Number.isInteger(v) ? v : v.toFixed(1)} ${unit}`;
}

/**
 * The error of a read over its limit: RESOURCE_EXHAUSTED (the copy needs
 * more of the host than it was allowed), naming the limit and how to raise
 * it (`option`: `maxBytes` for the API, `--max-bytes` for the CLI).
 */
export function readLimitError(what: string, maxBytes: number, option = 'maxBytes', path?: string): RoostError {
  return new RoostError(
    'RESOURCE_EXHAUSTED',
    `${what}: the guest sent more than ${formatByteSize(maxBytes)} (${maxBytes} bytes), the limit of this copy ` +
      `(by default the sandbox's disk size); it was stopped. Raise the limit with ${option} if you expect that much`,
    { details: { maxBytes, option, ...(path !== undefined ? { path } : {}) } },
  );
}

/**
 * Passes `source` through until more than `maxBytes` went by, then throws
 * `tooMuch()` (ending the source: breaking out of it stops the read).
 */
export async function* limitBytes(source: AsyncIterable<Uint8Array>, maxBytes: number, tooMuch: () => Error): AsyncGenerator<Uint8Array> {
  let n = 0;
  for await (const chunk of source) {
    n += chunk.byteLength;
    if (n > maxBytes) throw tooMuch();
    yield chunk;
  }
}
