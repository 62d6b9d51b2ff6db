import type { SandboxInfo } from '@roost/api';
import { networkBody } from './network.js';

/*
 * Core records -> API bodies. Fields are picked, not spread: whatever the
 * core keeps for itself stays out of the contract.
 */

/** A sandbox record as the API describes it. */
export function sandboxBody(info: SandboxInfo): SandboxInfo {
  const body: SandboxInfo = {
    id: info.id,
    status: info.status,
    createdAt: info.createdAt,
    startedAt: info.startedAt ?? null,
    stoppedAt: info.stoppedAt ?? null,
    cpus: info.cpus,
    memoryMiB: info.memoryMiB,
    diskSizeMiB: info.diskSizeMiB,
    detached: info.detached,
    accel: info.accel,
    pid: info.pid,
    env: info.env ?? {},
    labels: info.labels ?? {},
    // Records written before exec counting existed have none.
    execs: info.execs ?? 0,
  };
  if (info.autoRemove) body.autoRemove = true;
  if (info.image) body.image = { reference: info.image.reference, id: info.image.id, entrypoint: info.image.entrypoint, cmd: info.image.cmd };
  if (info.workingDir !== undefined) body.workingDir = info.workingDir;
  if (info.user !== undefined) body.user = info.user;
  if (info.reason !== undefined) body.reason = info.reason;
  if (info.agentVersion !== undefined) body.agentVersion = info.agentVersion;
  if (info.volumes !== undefined) body.volumes = info.volumes.map((v) => ({ source: v.source, target: v.target, readOnly: v.readOnly === true }));
  if (info.snapshot !== undefined) body.snapshot = info.snapshot;
  if (info.network !== undefined) body.network = networkBody(info.network);
  if (info.confinement !== undefined) body.confinement = structuredClone(info.confinement);
  if (info.pool !== undefined) body.pool = { name: info.pool.name, warm: info.pool.warm };
  if (info.expiresAt) {
    body.expiresAt = info.expiresAt;
    body.onExpiry = info.onExpiry ?? 'remove';
  }
  return body;
}
