import { readdirSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import type { SandboxInfo, SandboxStatus } from '@roost/api';
import type { VmHandle } from '../vmm/types.js';
import { isLive } from './record.js';

/**
 * What a runtime opening a home does with a sandbox record it finds:
 * - `keep`: nothing ran (stopped or failed already);
 * - `attach`: a detached sandbox whose VM runs on: watch it again;
 * - `record`: its VM is gone or cannot be trusted: `kill` it if it still
 *   runs, and record `status` with `reason`.
 */
export type RecoveryDecision =
  { action: 'keep' } | { action: 'attach' } | { action: 'record'; kill: boolean; status: Extract<SandboxStatus, 'stopped' | 'failed'>; reason: string };

/**
 * Decides what becomes of a record found at open, given whether its VM
 * process is still there (the recorded pid, and still the sandbox's VM).
 * A half-booted or half-stopped VM, or one bound to its dead owner, cannot
 * be trusted to be whole: it is killed.
 */
export function recoveryDecision(info: Pick<SandboxInfo, 'status' | 'detached'>, vmFound: boolean): RecoveryDecision {
  if (!isLive(info.status)) return { action: 'keep' };
  if (vmFound && (info.status === 'running' || info.status === 'paused') && info.detached) return { action: 'attach' };
  const reason = !vmFound
    ? info.detached
      ? 'the VM process is gone (it crashed or was killed while no runtime watched it)'
      : 'its runtime exited, and the VM with it'
    : info.status === 'creating'
      ? 'the runtime exited while it booted'
      : info.status === 'stopping'
        ? 'stopped'
        : 'its runtime exited';
  const status = info.status === 'stopping' || (!info.detached && (info.status === 'running' || info.status === 'paused')) ? 'stopped' : 'failed';
  return { action: 'record', kill: vmFound, status, reason };
}

/**
 * Whether a record found at open is removed (record, directory, lease)
 * after its decision is carried out: one made to be removed when its owner
 * ends (`autoRemove`, as `roost run` makes them), whose owner was the runtime
 * that died. Whatever its status: `roost run` removes its sandbox whether
 * the command is still running or has exited.
 */
export function removedAtRecovery(info: Pick<SandboxInfo, 'detached' | 'autoRemove'>): boolean {
  return info.autoRemove === true && !info.detached;
}

/**
 * After an attach: a runtime that died in the middle of a snapshot left
 * the VM stopped (and its disk frozen). A VM recorded as running but paused
 * in the VMM is continued, and connected to (`connect`), which thaws the
 * guest: the agent treats the new host as a restore. Failures are left to
 * the liveness checks of the next connection.
 */
export async function reconcileVm(vm: VmHandle, connect: () => Promise<unknown>): Promise<void> {
  try {
    const signal = AbortSignal.timeout(5_000);
    const status = await vm.status({ signal, timeoutMs: 5_000 });
    if (status !== 'paused') return;
    await vm.resume({ signal, timeoutMs: 5_000 });
    await connect();
  } catch {
    // Left to the liveness checks of the next connection.
  }
}

/**
 * Removes the unix sockets (agent, QMP, network) a VM that is gone left in
 * its sandbox's directory: a killed QEMU cannot unlink them, and nothing
 * listens on them any more. Synchronous, so a start that follows makes its
 * sockets after this, never before.
 */
export function removeVmSockets(dir: string): void {
  let names: string[];
  try {
    names = readdirSync(dir);
  } catch {
    return; // removed already
  }
  for (const f of names) if (f.endsWith('.sock')) rmSync(join(dir, f), { force: true });
}
