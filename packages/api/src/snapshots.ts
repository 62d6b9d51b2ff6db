import { z } from 'zod';
import { NAME_RE, nameSchema } from './names.js';
import { MAX_CPUS, MIN_MEMORY_MIB, MIN_DISK_MIB, MAX_DISK_MIB } from './limits.js';
import { EnvSchema, LabelsSchema, OperationTimeoutSchema, SandboxImageSchema, SandboxInfoSchema } from './schemas.js';
import { VolumeMountSchema } from './files.js';

/*
 * Snapshots, forks and templates (warm pools). A snapshot is a sandbox's
 * memory, device state and writable disk at one instant; restoring one maps
 * its memory copy-on-write, so many sandboxes restored from it share its
 * pages until they write them.
 */

/** Names of snapshots and templates (the shape; see nameSchema for the whole rule). */
export const SNAPSHOT_NAME_RE = NAME_RE;
const snapshotName = nameSchema('snapshot and template');

/** The most copies one fork makes. */
export const MAX_FORK_COUNT = 32;

/** Why a snapshot exists: made by a user, as the base of a fork, or as a template's warm start. */
export const SnapshotKindSchema = z.enum(['user', 'fork', 'template']);
export type SnapshotKind = z.infer<typeof SnapshotKindSchema>;

export const SnapshotInfoSchema = z
  .object({
    id: z.string().regex(/^[0-9a-f]{12}$/),
    name: z.string(),
    kind: SnapshotKindSchema,
    createdAt: z.string(),
    /** The sandbox it was taken of (it may be gone since). */
    sourceSandbox: z.string(),
    /** The snapshot that sandbox was itself restored from: this one's disk is layered on the parent's. */
    parent: z.string().nullable(),
    image: SandboxImageSchema.optional(),
    cpus: z.number().int(),
    memoryMiB: z.number().int(),
    diskSizeMiB: z.number().int(),
    env: z.record(z.string(), z.string()),
    workingDir: z.string().optional(),
    user: z.string().optional(),
    /** Bytes the snapshot's files take on the host disk (memory and disk files are sparse). */
    sizeBytes: z.number().int(),
    /** Whether the guest froze its writable filesystem for the snapshot (false: it had none, or did not answer). */
    frozen: z.boolean(),
    accel: z.enum(['kvm', 'tcg']),
    /** What made it: a snapshot restores only with the same QEMU, kernel and agent. */
    qemuVersion: z.string(),
    agentVersion: z.string(),
    /** The template it is the warm start of. */
    template: z.string().optional(),
    /** The volumes its guest has mounted: a restored sandbox mounts the same sources (their 9P sessions are in the snapshot). */
    volumes: z.array(VolumeMountSchema).optional(),
    /** Sandboxes restored from it that are not removed, and snapshots layered on it. */
    dependents: z.object({ sandboxes: z.array(z.string()), snapshots: z.array(z.string()) }),
  })
  .meta({ id: 'SnapshotInfo' });
export type SnapshotInfo = z.infer<typeof SnapshotInfoSchema>;

export const SnapshotListSchema = z.object({ snapshots: z.array(SnapshotInfoSchema) }).meta({ id: 'SnapshotList' });

/** POST /v1/sandboxes/{id}/snapshot */
export const CreateSnapshotRequestSchema = z
  .object({
    /** Default: `<sandbox id>-<time>`. ALREADY_EXISTS if taken. */
    name: snapshotName.optional(),
    timeoutMs: OperationTimeoutSchema.optional(),
  })
  .strict()
  .meta({ id: 'CreateSnapshotRequest' });
export type CreateSnapshotRequest = z.infer<typeof CreateSnapshotRequestSchema>;

/** POST /v1/sandboxes/{id}/fork */
export const ForkRequestSchema = z
  .object({
    /** How many copies (default 1). */
    count: z.number().int().min(1).max(MAX_FORK_COUNT).optional(),
    /** Labels of the copies (default: the source's). */
    labels: LabelsSchema.optional(),
    detached: z.boolean().optional(),
    /**
     * The source's volumes in the copies: `shared` (the default) mounts the
     * same files, each copy with its own 9P session; `copy` gives each copy
     * named volumes of its own holding the volumes' files as they were at
     * the fork (reflinked where the host file system can, else copied), so
     * what a copy writes there reaches nobody else. They are kept after the
     * copies (remove them with `roost volume rm`).
     */
    volumes: z.enum(['shared', 'copy']).optional(),
    timeoutMs: OperationTimeoutSchema.optional(),
  })
  .strict()
  .meta({ id: 'ForkRequest' });
export type ForkRequest = z.infer<typeof ForkRequestSchema>;

export const ForkResultSchema = z.object({ sandboxes: z.array(SandboxInfoSchema) }).meta({ id: 'ForkResult' });

/** A template: an image, resources and an optional setup command, kept ready as a snapshot. */
export const TemplateInfoSchema = z
  .object({
    name: z.string(),
    image: z.string().optional(),
    cpus: z.number().int(),
    memoryMiB: z.number().int(),
    diskSizeMiB: z.number().int(),
    env: z.record(z.string(), z.string()),
    /** Run once (with /bin/sh -c when a string) before the snapshot is taken; it must exit 0. */
    setup: z.union([z.string(), z.array(z.string())]).optional(),
    createdAt: z.string(),
    /** The id of its warm snapshot, once built. */
    snapshot: z.string().nullable(),
  })
  .meta({ id: 'TemplateInfo' });
export type TemplateInfo = z.infer<typeof TemplateInfoSchema>;

export const TemplateListSchema = z.object({ templates: z.array(TemplateInfoSchema) }).meta({ id: 'TemplateList' });

/** POST /v1/templates */
export const CreateTemplateRequestSchema = z
  .object({
    name: snapshotName,
    image: z.string().min(1).optional(),
    cpus: z.number().int().min(1).max(MAX_CPUS).optional(),
    memoryMiB: z.number().int().min(MIN_MEMORY_MIB).optional(),
    diskSizeMiB: z.number().int().min(MIN_DISK_MIB).max(MAX_DISK_MIB).optional(),
    env: EnvSchema.optional(),
    setup: z.union([z.string().min(1), z.array(z.string()).min(1)]).optional(),
    /** Build the snapshot now rather than on the first create (default false). */
    warm: z.boolean().optional(),
    timeoutMs: OperationTimeoutSchema.optional(),
  })
  .strict()
  .meta({ id: 'CreateTemplateRequest' });
export type CreateTemplateRequest = z.infer<typeof CreateTemplateRequestSchema>;

/** `runtime.snapshots`. Concurrency: calls may overlap; snapshots are taken by `sandbox.snapshot()`, serialized with that sandbox's lifecycle. */
export interface SnapshotsApi {
  list(): Promise<SnapshotInfo[]>;
  /** By name or id; NOT_FOUND if there is none. */
  get(nameOrId: string): Promise<SnapshotInfo>;
  /** Removes a snapshot's files and record; INVALID_STATE (naming them) while sandboxes or snapshots depend on it. */
  remove(nameOrId: string): Promise<void>;
}

/** `runtime.templates`. Concurrency: calls may overlap; concurrent builds of one template's snapshot (`warm`, a first `create({ template })`) share one build. */
export interface TemplatesApi {
  /** Defines a template (ALREADY_EXISTS if the name is taken); with `warm`, builds its snapshot now. */
  create(request: CreateTemplateRequest & { signal?: AbortSignal }): Promise<TemplateInfo>;
  get(name: string): Promise<TemplateInfo>;
  list(): Promise<TemplateInfo[]>;
  /** Builds a new snapshot of the template now (the old one is removed once nothing depends on it). `create({ template })` builds one only when there is none or it no longer restores. */
  warm(name: string, options?: { timeoutMs?: number; signal?: AbortSignal }): Promise<TemplateInfo>;
  /** Removes the template, and its snapshot once no sandbox depends on it. */
  remove(name: string): Promise<void>;
}
