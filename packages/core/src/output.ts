import type { Fd } from '@roost/protocol';
import { OutputBuffer, type OutputCallback } from '@roost/api';

export { OutputBuffer as OutputStream } from '@roost/api';

/**
 * @internal The output buffer of one fd of an agent stream: the contract's
 * OutputBuffer with the agent's exec window as its credit port (bytes a
 * reader consumed are granted back to the guest).
 *
 * A reader that stops early either leaves the rest to be collected
 * (commands: `wait()` still returns it), or, with `onEarlyReturn`, discards
 * it and reports that nobody reads any more (file operations end the call).
 */
export function agentOutput(
  fd: Fd,
  grant: (fd: Fd, n: number) => void,
  callback?: OutputCallback,
  onBytes?: (n: number) => void,
  onEarlyReturn?: () => void,
): OutputBuffer {
  return new OutputBuffer({ credit: (n) => grant(fd, n) }, callback, { ...(onBytes ? { onBytes } : {}), ...(onEarlyReturn ? { onEarlyReturn } : {}) });
}
