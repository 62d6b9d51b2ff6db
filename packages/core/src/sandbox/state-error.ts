import type { SandboxStatus } from '@roost/api';
import { RoostError } from '../errors.js';

/**
 * INVALID_STATE for an operation that needs a running VM, saying how to get
 * there from `status`: start a stopped or failed sandbox, resume a paused
 * one, wait for one in between. `what` is the operation ("run a command").
 */
export function notRunningError(id: string, status: SandboxStatus, what: string, reason?: string | null): RoostError {
  const way =
    status === 'stopped' || status === 'failed'
      ? `start it first (\`roost start ${id}\`, or \`sandbox.start()\`)`
      : status === 'paused'
        ? `resume it first (\`roost resume ${id}\`, or \`sandbox.resume()\`)`
        : 'wait for it to finish, then try again';
  return new RoostError('INVALID_STATE', `sandbox ${id} is ${status}${reason && reason !== status ? ` (${reason})` : ''}: cannot ${what}; ${way}`, {
    details: { status },
  });
}
