import { z } from 'zod';
import { ERROR_CODES } from './errors.js';
import { EntryInfoSchema, FileEventSchema, MAX_VOLUMES, VolumeMountSchema } from './files.js';
import { EgressSpecSchema, NetworkInfoSchema, NetworkModeSchema, PortSpecSchema } from './network.js';
import { SandboxPoolOriginSchema } from './pools.js';
import {
  MAX_LIFETIME_MS,
  MAX_COMMAND_TIMEOUT_MS,
  MAX_CPUS,
  MAX_DISK_MIB,
  MAX_OPERATION_TIMEOUT_MS,
  MAX_PORTS,
  MAX_SIGNAL,
  MAX_TERMINAL_SIZE,
  MIN_DISK_MIB,
  MIN_MEMORY_MIB,
} from './limits.js';

/*
 * The REST API's bodies, as zod schemas: the daemon validates requests with
 * them, the OpenAPI document is generated from them, and the SDK's types are
 * inferred from them. Requests are strict (an unknown field is a 400 naming
 * it); responses may gain fields (additive changes only).
 */

const envName = z.string().regex(/^[^=\0]+$/, 'environment names must be non-empty and contain no "=" or NUL');
const labelKey = z.string().regex(/^[A-Za-z0-9][A-Za-z0-9._/-]{0,62}$/, 'label keys are 1-63 characters of letters, digits, ".", "_", "/" and "-"');

export const EnvSchema = z.record(
  envName,
  z.string().refine((v) => !v.includes('\0'), 'environment values cannot contain NUL'),
);
export const LabelsSchema = z.record(labelKey, z.string().max(256));

export const SandboxStatusSchema = z.enum(['creating', 'running', 'paused', 'stopping', 'stopped', 'failed']);
export type SandboxStatus = z.infer<typeof SandboxStatusSchema>;

export const PullPolicySchema = z.enum(['missing', 'always', 'never']);
export type PullPolicy = z.infer<typeof PullPolicySchema>;

export const SandboxImageSchema = z
  .object({
    /** What the user asked for (`alpine`, `127.0.0.1:5000/app:1`). */
    reference: z.string(),
    /** The image's id (its manifest digest). */
    id: z.string(),
    entrypoint: z.array(z.string()),
    cmd: z.array(z.string()),
  })
  .meta({ id: 'SandboxImage' });
export type SandboxImage = z.infer<typeof SandboxImageSchema>;

/** Everything recorded about a sandbox. */
/**
 * How a sandbox's VMM is confined on the host (docs/security.md): in Roost's
 * jail (its own uid, namespaces, a root holding only what the VM uses, no
 * capabilities, a syscall filter, a cgroup with these limits), or not at all
 * (`ROOST_JAIL=off`, `jail: false`).
 */
export const ConfinementSchema = z
  .object({
    jailed: z.boolean(),
    /** The uid and gid its VMM runs as (no other process on the host has them). */
    uid: z.number().int().optional(),
    gid: z.number().int().optional(),
    /** Its cgroup, e.g. `roost/0123456789ab`. */
    cgroup: z.string().optional(),
    /** What the host enforces: CPU time in cores, the VMM's memory (guest RAM and its own) in bytes, threads. */
    limits: z.object({ cpus: z.number(), memoryBytes: z.number().int(), pids: z.number().int() }).optional(),
  })
  .meta({ id: 'Confinement' });
export type Confinement = z.infer<typeof ConfinementSchema>;

/** What a sandbox's lifetime ending does: remove it (record, disk, logs), stop it, or pause it. */
export const ExpiryActionSchema = z.enum(['remove', 'stop', 'pause']);
export type ExpiryAction = z.infer<typeof ExpiryActionSchema>;

/** A sandbox's lifetime in ms, counted from when it is given. */
export const LifetimeSchema = z.number().int().positive().max(MAX_LIFETIME_MS);

export const SandboxInfoSchema = z
  .object({
    id: z.string().regex(/^[0-9a-f]{12}$/),
    status: SandboxStatusSchema,
    createdAt: z.string(),
    /** When it last started running; when it last stopped. */
    startedAt: z.string().nullable().optional(),
    stoppedAt: z.string().nullable().optional(),
    cpus: z.number().int(),
    memoryMiB: z.number().int(),
    diskSizeMiB: z.number().int(),
    detached: z.boolean(),
    /** Removed (record, disk, logs), not kept stopped, when its owner ends: see `autoRemove` of the create request. */
    autoRemove: z.boolean().optional(),
    accel: z.enum(['kvm', 'tcg']),
    /** The QEMU process, while one runs. */
    pid: z.number().int().nullable(),
    env: z.record(z.string(), z.string()),
    labels: z.record(z.string(), z.string()),
    image: SandboxImageSchema.optional(),
    workingDir: z.string().optional(),
    user: z.string().optional(),
    /** Why it failed or stopped, when it did. */
    reason: z.string().optional(),
    agentVersion: z.string().optional(),
    /** Commands started in it so far. */
    execs: z.number().int(),
    /** Volumes mounted into it (named volumes by name). */
    volumes: z.array(VolumeMountSchema).optional(),
    /** The snapshot it was restored from (its id), for a restored or forked sandbox. */
    snapshot: z.string().optional(),
    /** Its network: mode, addresses, published ports, egress policy (absent on records from before networking: none). */
    network: NetworkInfoSchema.optional(),
    /** How its VMM is confined, set each time its VM starts (absent: never started, or started before the jail existed). */
    confinement: ConfinementSchema.optional(),
    /** When its lifetime ends (ISO 8601; absent or null: it lives until removed), and what happens then. */
    expiresAt: z.string().nullable().optional(),
    onExpiry: ExpiryActionSchema.optional(),
    /** Made with `create({ pool })`: the pool, and whether a ready member was handed over (`warm`) or the pool was empty and it was restored. */
    pool: SandboxPoolOriginSchema.optional(),
  })
  .meta({ id: 'SandboxInfo' });
export type SandboxInfo = z.infer<typeof SandboxInfoSchema>;

/** How long an operation (a boot, a stop, a snapshot, a fork) may take, in ms. */
export const OperationTimeoutSchema = z.number().int().positive().max(MAX_OPERATION_TIMEOUT_MS);

/**
 * POST /v1/sandboxes, and the wire fields of `runtime.create()` embedded or
 * remote. Memory is bounded below here and above by the host (the runtime
 * checks it against the host's RAM); cpus likewise against its cores under KVM.
 */
export const CreateSandboxRequestSchema = z
  .object({
    image: z.string().min(1).optional(),
    pull: PullPolicySchema.optional(),
    cpus: z.number().int().min(1).max(MAX_CPUS).optional(),
    memoryMiB: z.number().int().min(MIN_MEMORY_MIB).optional(),
    /** The writable disk, sparse (default 4096). */
    diskSizeMiB: z.number().int().min(MIN_DISK_MIB).max(MAX_DISK_MIB).optional(),
    env: EnvSchema.optional(),
    labels: LabelsSchema.optional(),
    /** Survives a restart of the runtime that made it (default false: it stops with it). */
    detached: z.boolean().optional(),
    /**
     * Remove the sandbox (record, disk, logs) instead of keeping it stopped when its owner ends: the runtime
     * closing or dying, or (through a daemon) the client's session ending; as `docker run --rm`. Not with `detached`.
     */
    autoRemove: z.boolean().optional(),
    /** Host directories and named volumes to mount (served by Roost's 9P file server), at most MAX_VOLUMES (32). */
    volumes: z.array(VolumeMountSchema).max(MAX_VOLUMES).optional(),
    /** `user` (default: user-mode NAT run by Roost, no root needed), `bridge` (a TAP on a Linux bridge with a leased address; root) or `none`. */
    network: NetworkModeSchema.optional(),
    /** Guest ports to publish on the host: `8080:80`, `127.0.0.1::80` (a free port), `5353:53/udp`, or objects. Bound to 127.0.0.1 unless another address is named. */
    ports: z.array(PortSpecSchema).max(MAX_PORTS).optional(),
    /** Which connections the sandbox may open: `allow` (default), `deny`, or a policy with allow/deny rules. */
    egress: EgressSpecSchema.optional(),
    /**
     * Restore this snapshot (name or id) instead of booting: memory, processes
     * and disk as they were. Its image, cpus, memory and disk size are the
     * snapshot's (giving others is INVALID_ARGUMENT); env and labels apply to
     * later commands and the record.
     */
    snapshot: z.string().min(1).optional(),
    /** Start from this template's warm snapshot, building it on first use. */
    template: z.string().min(1).optional(),
    /**
     * Take a ready sandbox from this warm pool (a hand-over: resumed, given a
     * new clock and entropy); when it is empty, restore one from the pool's
     * template or snapshot. Only labels, env, detached, autoRemove,
     * lifetimeMs, onExpiry and timeoutMs go with it (others are INVALID_ARGUMENT).
     */
    pool: z.string().min(1).optional(),
    /** How long booting may take (ms). */
    timeoutMs: OperationTimeoutSchema.optional(),
    /**
     * End the sandbox this long after it is created (ms; change it later with
     * setLifetime). Enforced by the runtime that owns the home: one that is
     * closed acts when the home is opened again. Default: no end.
     */
    lifetimeMs: LifetimeSchema.optional(),
    /** What the end of its lifetime does: `remove` (default), `stop` or `pause`. */
    onExpiry: ExpiryActionSchema.optional(),
  })
  .strict()
  .meta({ id: 'CreateSandboxRequest' });
export type CreateSandboxRequest = z.infer<typeof CreateSandboxRequestSchema>;

/** GET /v1/sandboxes query */
export const ListSandboxesQuerySchema = z
  .object({
    /** Comma-separated statuses; default every status. */
    status: z.string().optional(),
    /** Image reference or id (prefix). */
    image: z.string().optional(),
    /** `key` or `key=value`; repeatable. */
    label: z.union([z.string(), z.array(z.string())]).optional(),
  })
  .strict();
export type ListSandboxesQuery = z.infer<typeof ListSandboxesQuerySchema>;

export const SandboxListSchema = z.object({ sandboxes: z.array(SandboxInfoSchema) }).meta({ id: 'SandboxList' });

/** POST /v1/sandboxes/{id}/lifetime */
export const SetLifetimeRequestSchema = z
  .object({
    /** The sandbox ends this long from now (ms); null: it lives until removed. */
    lifetimeMs: LifetimeSchema.nullable(),
    /** Keep the current end when it is later than the new one (extend, never shorten). */
    extendOnly: z.boolean().optional(),
    /** What the end does (default: what it was, else `remove`). */
    onExpiry: ExpiryActionSchema.optional(),
  })
  .strict()
  .meta({ id: 'SetLifetimeRequest' });
export type SetLifetimeRequest = z.infer<typeof SetLifetimeRequestSchema>;

export const StopSandboxRequestSchema = z.object({ timeoutMs: OperationTimeoutSchema.optional() }).strict();
export const StartSandboxRequestSchema = z.object({ timeoutMs: OperationTimeoutSchema.optional() }).strict();

const terminalSide = z.number().int().min(1).max(MAX_TERMINAL_SIZE);

/**
 * The options of a command both the wire (ExecRequest) and the call
 * (`commands.run` / `start`, RunOptionsSchema) carry, with their limits.
 */
export const CommandOptionsSchema = z.object({
  /** Arguments: with them, `cmd` is the program itself and no shell is involved. */
  args: z.array(z.string()).optional(),
  env: EnvSchema.optional(),
  cwd: z.string().min(1).optional(),
  user: z.union([z.string().min(1), z.number().int().nonnegative()]).optional(),
  pty: z.union([z.boolean(), z.object({ rows: terminalSide.optional(), cols: terminalSide.optional() }).strict()]).optional(),
  timeoutMs: z.number().int().positive().max(MAX_COMMAND_TIMEOUT_MS).optional(),
});

/** POST /v1/sandboxes/{id}/exec */
export const ExecRequestSchema = z
  .object({
    /** A shell command line (run with /bin/sh -c), or argv when an array. */
    cmd: z.union([z.string().min(1), z.array(z.string()).min(1)]),
    ...CommandOptionsSchema.shape,
    /** All of stdin at once (closed after). */
    stdin: z.string().optional(),
    /** How `stdin` is encoded (default utf8). */
    stdinEncoding: z.enum(['utf8', 'base64']).optional(),
    /** Keep stdin open for POST .../execs/{execId}/stdin (default false: /dev/null or `stdin`). */
    interactive: z.boolean().optional(),
    /** Encoding of output in the NDJSON stream (default utf8: text decoded across chunk boundaries). */
    encoding: z.enum(['utf8', 'base64']).optional(),
  })
  .strict()
  .meta({ id: 'ExecRequest' });
export type ExecRequest = z.infer<typeof ExecRequestSchema>;

/**
 * One line of an exec's NDJSON stream (`Accept: application/x-ndjson`).
 * `started` comes first, `exit` or `error` last.
 */
export const ExecEventSchema = z
  .discriminatedUnion('type', [
    z.object({ type: z.literal('started'), execId: z.string(), pid: z.number().int() }),
    z.object({ type: z.literal('stdout'), data: z.string() }),
    z.object({ type: z.literal('stderr'), data: z.string() }),
    z.object({ type: z.literal('exit'), exitCode: z.number().int(), signal: z.string().nullable() }),
    z.object({ type: z.literal('error'), error: z.lazy(() => ErrorBodySchema.shape.error) }),
  ])
  .meta({ id: 'ExecEvent' });
export type ExecEvent = z.infer<typeof ExecEventSchema>;

/** The exec result when the client asks for `application/json` (output collected). */
export const ExecResultSchema = z
  .object({
    exitCode: z.number().int(),
    signal: z.string().nullable(),
    stdout: z.string(),
    stderr: z.string(),
  })
  .meta({ id: 'ExecResult' });
export type ExecResult = z.infer<typeof ExecResultSchema>;

export const SignalRequestSchema = z.object({ signal: z.union([z.string().regex(/^SIG[A-Z0-9]+$/), z.number().int().min(1).max(MAX_SIGNAL)]) }).strict();
export const ResizeRequestSchema = z.object({ rows: terminalSide, cols: terminalSide }).strict();

export const ImageInfoSchema = z
  .object({
    /** The platform manifest's digest. */
    id: z.string(),
    /** Fully qualified names pointing at it. */
    tags: z.array(z.string()),
    /** Bytes stored (manifest, config, layers as downloaded). */
    size: z.number().int(),
    configDigest: z.string(),
    created: z.string().nullable(),
    addedAt: z.string(),
    source: z.string(),
    rootfsSize: z.number().int().nullable(),
    layers: z.number().int(),
    config: z.object({
      entrypoint: z.array(z.string()),
      cmd: z.array(z.string()),
      env: z.array(z.string()),
      workingDir: z.string(),
      user: z.string(),
    }),
  })
  .meta({ id: 'ImageInfo' });
export type ImageInfoBody = z.infer<typeof ImageInfoSchema>;

export const ImageListSchema = z.object({ images: z.array(ImageInfoSchema) }).meta({ id: 'ImageList' });

/** POST /v1/images/pull */
export const PullRequestSchema = z
  .object({ reference: z.string().min(1) })
  .strict()
  .meta({ id: 'PullRequest' });

/** Where one blob of a pull is. `done` and `exists` are final for that blob. */
export const PullStatusSchema = z.enum(['waiting', 'downloading', 'verifying', 'exists', 'done', 'retrying', 'failed']);
export type PullStatus = z.infer<typeof PullStatusSchema>;

/** One line of a pull's NDJSON progress stream; `done` or `error` last. `status` was added later (older daemons send only `done`). */
export const PullEventSchema = z
  .discriminatedUnion('type', [
    z.object({
      type: z.literal('progress'),
      digest: z.string(),
      kind: z.string(),
      completed: z.number(),
      total: z.number(),
      done: z.boolean(),
      status: PullStatusSchema.optional(),
    }),
    z.object({ type: z.literal('done'), image: ImageInfoSchema }),
    z.object({ type: z.literal('error'), error: z.lazy(() => ErrorBodySchema.shape.error) }),
  ])
  .meta({ id: 'PullEvent' });

export const EVENT_TYPES = [
  'sandbox.created',
  'sandbox.started',
  'sandbox.exited',
  'sandbox.failed',
  'sandbox.deleted',
  'image.pulled',
  'image.deleted',
  'image.built',
  'volume.created',
  'volume.removed',
  'sandbox.paused',
  'sandbox.resumed',
  'snapshot.created',
  'snapshot.removed',
  'template.created',
  'template.removed',
  'exec.started',
  'exec.exited',
  'port.added',
  'port.removed',
  'network.denied',
  'sandbox.recovered',
  'sandbox.expired',
  'pool.created',
  'pool.resized',
  'pool.removed',
  'pool.handover',
  'deployment.created',
  'deployment.updated',
  'deployment.scaled',
  'deployment.rolledback',
  'deployment.removed',
  'replica.created',
  'replica.healthy',
  'replica.unhealthy',
  'replica.restarted',
  'replica.replaced',
  'replica.removed',
  'image.pushed',
  'actor.module.deployed',
  'actor.created',
  'actor.trapped',
  'actor.removed',
] as const;
export const EventTypeSchema = z.enum(EVENT_TYPES);
export type EventType = z.infer<typeof EventTypeSchema>;

/** A persisted event; `id` increases and is the SSE `id:` (resume with Last-Event-ID). */
export const RoostEventSchema = z
  .object({
    id: z.number().int(),
    time: z.string(),
    type: EventTypeSchema,
    sandboxId: z.string().optional(),
    imageId: z.string().optional(),
    data: z.record(z.string(), z.unknown()),
  })
  .meta({ id: 'RoostEvent' });
export type RoostEvent = z.infer<typeof RoostEventSchema>;

/** Per-sandbox resource figures. */
export const SandboxMetricsSchema = z
  .object({
    id: z.string(),
    status: SandboxStatusSchema,
    /** CPU seconds the VM (QEMU) has used, user + system. */
    cpuSeconds: z.number(),
    /** Host memory of the VM: resident and proportional (shared pages split). */
    memoryRssBytes: z.number().int(),
    memoryPssBytes: z.number().int().nullable(),
    execs: z.number().int(),
    /** Its VMM runs in Roost's jail; false: unconfined (see `confinement` in SandboxInfo). */
    jailed: z.boolean(),
    /** Its memory limit (the VMM's, guest RAM included), when confined by a cgroup. */
    memoryLimitBytes: z.number().int().nullable(),
  })
  .meta({ id: 'SandboxMetrics' });
export type SandboxMetrics = z.infer<typeof SandboxMetricsSchema>;

export const RuntimeMetricsSchema = z
  .object({
    /** Counters since this runtime started. */
    sandboxesCreated: z.number().int(),
    sandboxesDestroyed: z.number().int(),
    execs: z.number().int(),
    execBytes: z.object({ stdin: z.number().int(), stdout: z.number().int(), stderr: z.number().int() }),
    /** Gauges now. */
    sandboxes: z.record(SandboxStatusSchema, z.number().int()),
    uptimeSeconds: z.number(),
    perSandbox: z.array(SandboxMetricsSchema),
  })
  .meta({ id: 'RuntimeMetrics' });
export type RuntimeMetrics = z.infer<typeof RuntimeMetricsSchema>;

export const HealthSchema = z
  .object({
    status: z.literal('ok'),
    version: z.string(),
    home: z.string(),
    pid: z.number().int(),
    uptimeSeconds: z.number(),
    /** The TCP listener (`roost serve --tcp`), `http://host:port`; null when it listens on its unix socket only. */
    url: z.string().nullable(),
  })
  .meta({ id: 'Health' });

/** Every error response: `{ "error": { "code", "message" } }`. */
export const ErrorBodySchema = z
  .object({
    error: z.object({
      code: z.enum(ERROR_CODES as [string, ...string[]]),
      message: z.string(),
      details: z.record(z.string(), z.unknown()).optional(),
    }),
  })
  .meta({ id: 'Error' });
export type ErrorBody = z.infer<typeof ErrorBodySchema>;

// ---- the files routes: /v1/sandboxes/{id}/files/... --------------------------

const FileUserSchema = z.union([z.string().min(1), z.number().int().nonnegative()]);

/** POST /v1/sandboxes/{id}/files/mkdir */
export const MakeDirRequestSchema = z
  .object({
    path: z.string().min(1),
    /** Permission bits (default 0o755). */
    mode: z.number().int().min(0).max(0o7777).optional(),
    user: FileUserSchema.optional(),
  })
  .strict()
  .meta({ id: 'MakeDirRequest' });

export const MakeDirResultSchema = z
  .object({
    /** False when the directory existed already. */
    created: z.boolean(),
  })
  .meta({ id: 'MakeDirResult' });

/** POST /v1/sandboxes/{id}/files/rename */
export const RenameRequestSchema = z
  .object({
    from: z.string().min(1),
    to: z.string().min(1),
    /** Fail with ALREADY_EXISTS instead of replacing `to`. */
    noReplace: z.boolean().optional(),
    user: FileUserSchema.optional(),
  })
  .strict()
  .meta({ id: 'RenameRequest' });

/** GET /v1/sandboxes/{id}/files/list */
export const EntryListSchema = z.object({ entries: z.array(EntryInfoSchema) }).meta({ id: 'EntryList' });

/**
 * One line of GET /v1/sandboxes/{id}/files/watch: `{"ready":true}` first
 * (the watch is in place), then FileEvents; an `error` line ends a watch
 * that failed.
 */
export const FileWatchLineSchema = z
  .union([z.object({ ready: z.literal(true) }).strict(), FileEventSchema, z.object({ error: z.lazy(() => ErrorBodySchema.shape.error) }).strict()])
  .meta({ id: 'FileWatchLine' });
export type FileWatchLine = z.infer<typeof FileWatchLineSchema>;

/*
 * Query strings of the files routes (values as they arrive: strings; a
 * repeated parameter counts by its last value). `user` is a name, a uid,
 * `uid:gid` or `name:group`.
 */
const queryBool = z.enum(['true', 'false', '1', '0', '']).transform((v) => v === 'true' || v === '1' || v === '');
const queryInt = (max: number) =>
  z
    .string()
    .regex(/^\d{1,10}$/, 'expected a non-negative integer')
    .transform(Number)
    .pipe(z.number().max(max));

export const FileQuerySchema = z.object({ path: z.string().min(1), user: z.string().min(1).optional() }).strict();
/** Reads (content, archive): `maxBytes`, the most bytes the guest may send (default: the sandbox's disk size). */
export const ReadQuerySchema = FileQuerySchema.extend({
  maxBytes: z
    .string()
    .regex(/^[1-9]\d{0,15}$/, 'expected a positive integer')
    .transform(Number)
    .pipe(z.number().max(Number.MAX_SAFE_INTEGER)),
})
  .partial({ maxBytes: true })
  .strict();
export const StatQuerySchema = FileQuerySchema.extend({ follow: queryBool.optional() }).strict();
export const ListQuerySchema = FileQuerySchema.extend({ depth: queryInt(0xffffffff).optional() }).strict();
export const WriteQuerySchema = FileQuerySchema.extend({ mode: queryInt(0o7777).optional(), noReplace: queryBool.optional() }).strict();
/** DELETE and watch: `recursive` (DELETE defaults to true). */
export const RecursiveQuerySchema = FileQuerySchema.extend({ recursive: queryBool.optional() }).strict();
