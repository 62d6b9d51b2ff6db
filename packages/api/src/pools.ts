import { z } from 'zod';
import { RoostError } from './errors.js';
import { DEPLOYMENT_LABEL, DEPLOYMENT_REVISION_LABEL, POOL_LABEL, RESERVED_LABELS } from './labels.js';
import { nameSchema } from './names.js';

/*
 * Warm pools: sandboxes restored from a template or snapshot ahead of time
 * and kept paused, so that `create({ pool })` is a hand-over, not a restore.
 * The runtime that owns the home keeps each pool filled (see docs/pools.md).
 */

/** The most sandboxes one pool keeps ready. */
export const MAX_POOL_SIZE = 32;

const poolName = nameSchema('pool');

/** POST /v1/pools */
export const CreatePoolRequestSchema = z
  .object({
    name: poolName,
    /** Restore members from this template's warm snapshot (built on first use). Give this or `snapshot`. */
    template: z.string().min(1).optional(),
    /** Restore members from this snapshot (name or id). Give this or `template`. */
    snapshot: z.string().min(1).optional(),
    /** How many sandboxes to keep ready (0: none; a create then always restores). */
    size: z.number().int().min(0).max(MAX_POOL_SIZE),
    /** The most members at once, those still being restored included, and the ceiling of `size` (default MAX_POOL_SIZE). */
    maxSize: z.number().int().min(1).max(MAX_POOL_SIZE).optional(),
  })
  .strict()
  .superRefine((r, ctx) => {
    if ((r.template === undefined) === (r.snapshot === undefined)) {
      ctx.addIssue({ code: 'custom', path: [r.template === undefined ? 'template' : 'snapshot'], message: 'give one of template and snapshot' });
    }
    if (r.maxSize !== undefined && r.size > r.maxSize) {
      ctx.addIssue({ code: 'custom', path: ['size'], message: `is above maxSize (${r.maxSize})` });
    }
  })
  .meta({ id: 'CreatePoolRequest' });
export type CreatePoolRequest = z.infer<typeof CreatePoolRequestSchema>;

/** POST /v1/pools/{name}/size */
export const ResizePoolRequestSchema = z
  .object({ size: z.number().int().min(0).max(MAX_POOL_SIZE) })
  .strict()
  .meta({ id: 'ResizePoolRequest' });
export type ResizePoolRequest = z.infer<typeof ResizePoolRequestSchema>;

/** Why the pool's last refill failed; cleared by the next one that succeeds. */
export const PoolErrorSchema = z.object({
  code: z.string(),
  message: z.string(),
  /** When it failed (ISO 8601). */
  at: z.string(),
  /** Refills that failed in a row; the next waits longer each time (up to a minute). */
  failures: z.number().int(),
  /** When the next attempt is due (ISO 8601), while the runtime that owns the home waits to retry. */
  retryAt: z.string().nullable(),
});
export type PoolError = z.infer<typeof PoolErrorSchema>;

export const PoolInfoSchema = z
  .object({
    name: z.string(),
    /** Where members come from: exactly one of these. */
    template: z.string().optional(),
    snapshot: z.string().optional(),
    size: z.number().int(),
    maxSize: z.number().int(),
    /** Members ready to be handed over (restored, paused). */
    ready: z.number().int(),
    /** Members being restored now by the runtime that owns the home. */
    starting: z.number().int(),
    /** Sandboxes handed over since the pool was created (warm ones; not the fallback restores). */
    handedOver: z.number().int(),
    /** Creates that found the pool empty and restored instead. */
    fallbacks: z.number().int(),
    createdAt: z.string(),
    /** The ids of the ready members. */
    members: z.array(z.string()),
    lastError: PoolErrorSchema.nullable(),
  })
  .meta({ id: 'PoolInfo' });
export type PoolInfo = z.infer<typeof PoolInfoSchema>;

export const PoolListSchema = z.object({ pools: z.array(PoolInfoSchema) }).meta({ id: 'PoolList' });

/** How a sandbox made with `create({ pool })` came to be: a member handed over (`warm`), or a restore when the pool was empty. */
export const SandboxPoolOriginSchema = z
  .object({
    name: z.string(),
    warm: z.boolean(),
  })
  .meta({ id: 'SandboxPoolOrigin' });
export type SandboxPoolOrigin = z.infer<typeof SandboxPoolOriginSchema>;

/** The create options a hand-over honours (beside `pool`, and the call's `signal`): they change the record, not the VM. */
export const POOL_CREATE_OPTIONS = [
  'pool',
  'labels',
  'env',
  'detached',
  'autoRemove',
  'lifetimeMs',
  'onExpiry',
  'timeoutMs',
  'signal',
  'onPullProgress',
] as const;

/** What each of Roost's own labels marks (for the error that refuses it). */
const RESERVED_LABEL_MARKS: Record<string, string> = {
  [POOL_LABEL]: 'the members of warm pools',
  [DEPLOYMENT_LABEL]: 'the replicas of deployments',
  [DEPLOYMENT_REVISION_LABEL]: 'the revision of a replica',
};

/**
 * A sandbox from a pool has its pool's image, resources and network: a
 * create with `pool` and any option a hand-over cannot honour is
 * INVALID_ARGUMENT naming it; so is a label `roost.pool` on any create.
 * Both faces call it before anything is sent or done.
 */
export function checkPoolCreateOptions(options: Record<string, unknown>): void {
  const labels = options.labels as Record<string, string> | undefined;
  const reserved = labels ? RESERVED_LABELS.find((l) => l in labels) : undefined;
  if (reserved) {
    throw new RoostError('INVALID_ARGUMENT', `labels: ${reserved} is reserved: it marks ${RESERVED_LABEL_MARKS[reserved]}`, {
      details: { field: 'labels' },
    });
  }
  if (options.pool === undefined) return;
  const allowed: readonly string[] = POOL_CREATE_OPTIONS;
  const extra = Object.keys(options).filter((k) => options[k] !== undefined && !allowed.includes(k));
  if (extra.length > 0) {
    throw new RoostError(
      'INVALID_ARGUMENT',
      `${extra.join(', ')}: a sandbox from a pool has the pool's image, resources and network; leave ${extra.length > 1 ? 'them' : 'it'} out (a pool takes ${POOL_CREATE_OPTIONS.slice(1, -2).join(', ')})`,
      { details: { field: extra[0], fields: extra } },
    );
  }
}

/**
 * `runtime.pools`. The runtime that owns the home keeps each pool filled in
 * the background; without one (no daemon, no embedded runtime open), pools
 * keep what they have and are topped up when one opens the home.
 * Concurrency: calls may overlap; refills of one pool are serialized, and a
 * member is handed over to exactly one `create({ pool })`.
 */
export interface PoolsApi {
  /** Defines a pool and starts filling it (NOT_FOUND for an unknown template or snapshot, ALREADY_EXISTS for a name taken); resolves at once, with its fill so far. */
  create(request: CreatePoolRequest): Promise<PoolInfo>;
  /** Every pool, by name, with its fill level. */
  list(): Promise<PoolInfo[]>;
  /** A pool by name; NOT_FOUND when there is none. */
  get(name: string): Promise<PoolInfo>;
  /** Sets how many sandboxes the pool keeps ready: extra members are removed, missing ones restored in the background. */
  resize(name: string, size: number): Promise<PoolInfo>;
  /** Removes the pool and its members (their VMs end); resolves once they are gone. */
  remove(name: string): Promise<void>;
}
