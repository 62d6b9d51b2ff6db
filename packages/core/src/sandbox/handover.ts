import { HelloFlags } from '@roost/protocol';
import type { ExpiryAction } from '@roost/api';
import type { VmHandle } from '../vmm/types.js';
import type { AgentLink } from './agent-link.js';
import type { SandboxNetwork } from './network.js';
import type { SandboxRecord } from './record.js';

/** What a pool member becomes when it is handed over: the caller's options of `create({ pool })`. */
export interface HandOver {
  /** The pool it leaves. */
  pool: string;
  /** Its labels from now on (the pool's label goes). */
  labels: Record<string, string>;
  /** Added to the environment its snapshot gave it. */
  env: Record<string, string>;
  detached: boolean;
  autoRemove: boolean;
  /** Its lifetime, counted from the hand-over. */
  lifetimeMs?: number | undefined;
  onExpiry?: ExpiryAction | undefined;
  /** How long the agent may take to answer the new session. */
  timeoutMs: number;
}

/** What a hand-over changes: the member's record, VM and agent connection. */
export interface HandOverContext {
  readonly record: SandboxRecord;
  readonly vm: VmHandle;
  readonly link: AgentLink;
  readonly net: SandboxNetwork;
}

/**
 * Makes a pool member the caller's sandbox (called serialized with its
 * lifecycle): a paused one is resumed (`sandbox.resumed`); its agent gets a
 * new session on the open connection (`AgentConnection.renew`: the host's
 * clock now, fresh entropy the guest reseeds its CRNG with, and the HELLO
 * flags of its new owner, so a non-detached sandbox powers off with it);
 * then its record is rewritten as a new sandbox's (labels, env, detached,
 * autoRemove, lifetime from now, `createdAt` now, `pool`) with a
 * `pool.handover` event. A failure leaves the member to be removed by the caller.
 */
export async function handOver(ctx: HandOverContext, h: HandOver): Promise<void> {
  const { record, vm, link } = ctx;
  if (record.status === 'paused') {
    await vm.resume();
    link.holdLiveness(false);
    record.save({ status: 'running' }, 'sandbox.resumed', { data: { pool: h.pool } });
  }
  const conn = await link.connection();
  await conn.renew({ flags: h.detached ? 0 : HelloFlags.POWEROFF_ON_DISCONNECT, net: ctx.net.helloConfig(), timeoutMs: h.timeoutMs });
  const now = Date.now();
  record.save(
    {
      labels: { ...h.labels },
      env: { ...record.info.env, ...h.env },
      detached: h.detached,
      autoRemove: h.autoRemove ? true : undefined,
      createdAt: new Date(now).toISOString(),
      expiresAt: h.lifetimeMs ? new Date(now + h.lifetimeMs).toISOString() : undefined,
      onExpiry: h.lifetimeMs ? (h.onExpiry ?? 'remove') : undefined,
      pool: { name: h.pool, warm: true },
      // The pool's warm-up command is not the caller's.
      execs: 0,
    },
    'pool.handover',
    { data: { pool: h.pool, warm: true } },
  );
}
