import { z } from 'zod';
import { nameSchema } from './names.js';
import { EgressSpecSchema } from './network.js';

/*
 * Actors: WASM programs with a versioned state tree and a mailbox, Roost's
 * second isolation tier (docs/actors.md). The runtime that owns the home
 * runs them; messages wait in their mailbox while none does.
 */

/** The most bytes of one message, reply, init or state value. */
export const MAX_ACTOR_MESSAGE_BYTES = 1024 * 1024;
/** The most bytes of one WASM module. */
export const MAX_ACTOR_MODULE_BYTES = 16 * 1024 * 1024;
/** The most references an actor is created with. */
export const MAX_ACTOR_REFS = 256;

/** Per-actor limits and their bounds (defaults in ACTOR_LIMIT_DEFAULTS). */
export const ActorLimitsSchema = z
  .object({
    /** Fuel per message: metered instructions (plus bytes of bulk memory operations). */
    fuel: z.number().int().min(1000).max(1e12).optional(),
    /** Linear memory, in bytes (a multiple of 64 KiB is used, rounded down). */
    memoryBytes: z
      .number()
      .int()
      .min(64 * 1024)
      .max(256 * 1024 * 1024)
      .optional(),
    /** Wall time per message: a backstop, the thread running it is terminated. */
    timeoutMs: z.number().int().min(10).max(600_000).optional(),
    /** Messages waiting in the mailbox before sends from outside are refused (RESOURCE_EXHAUSTED). */
    mailbox: z.number().int().min(1).max(1_000_000).optional(),
    /** Bytes of keys and values in the state. */
    stateBytes: z
      .number()
      .int()
      .min(1024)
      .max(16 * 1024 * 1024 * 1024)
      .optional(),
  })
  .strict()
  .meta({ id: 'ActorLimits' });
export type ActorLimits = z.infer<typeof ActorLimitsSchema>;
export type ResolvedActorLimits = Required<ActorLimits>;

export const ACTOR_LIMIT_DEFAULTS: ResolvedActorLimits = {
  fuel: 100_000_000,
  memoryBytes: 16 * 1024 * 1024,
  timeoutMs: 5_000,
  mailbox: 10_000,
  stateBytes: 64 * 1024 * 1024,
};

/** What an actor may reach beyond its own state and references (nothing by default). */
export const ActorGrantsSchema = z
  .object({
    /** A deterministic random generator seeded by the actor and the message. */
    random: z.boolean().optional(),
    /** The wall clock (not deterministic). */
    clock: z.boolean().optional(),
    /** HTTP fetch, through this egress policy (as a sandbox's `network.egress`). */
    fetch: EgressSpecSchema.optional(),
    /** Named microVM sandboxes it may run commands in (by name or id). */
    sandboxes: z.array(z.string().min(1).max(128)).max(64).optional(),
  })
  .strict()
  .meta({ id: 'ActorGrants' });
export type ActorGrants = z.infer<typeof ActorGrantsSchema>;

/** POST /v1/actors (the init bytes: `init` as UTF-8 text, or `initBase64`). */
export const CreateActorRequestSchema = z
  .object({
    name: nameSchema('actor')
      .refine((n) => n !== 'modules', 'an actor may not be named "modules" (/v1/actors/modules is the module list)')
      .optional(),
    /** The module's digest (`sha256:...`), deployed before. Give this or `from`. */
    module: z
      .string()
      .regex(/^sha256:[0-9a-f]{64}$/, 'a module digest is sha256: and 64 lowercase hex digits')
      .optional(),
    /** Fork: the new actor starts from this actor's state (its newest version, or `version`), module, grants and limits; what is given here overrides them. */
    from: z
      .object({ actor: z.string().min(1), version: z.number().int().min(0).optional() })
      .strict()
      .optional(),
    init: z.string().max(MAX_ACTOR_MESSAGE_BYTES).optional(),
    initBase64: z.string().optional(),
    /** Actors (ids or names) it holds references to: its refs 1, 2, ... in this order. */
    refs: z.array(z.string().min(1)).max(MAX_ACTOR_REFS).optional(),
    grants: ActorGrantsSchema.optional(),
    limits: ActorLimitsSchema.optional(),
    /** State versions kept (older ones are pruned, snapshots excepted); default 64. */
    keepVersions: z.number().int().min(1).max(100_000).optional(),
  })
  .strict()
  .superRefine((r, ctx) => {
    if ((r.module === undefined) === (r.from === undefined)) {
      ctx.addIssue({ code: 'custom', path: ['module'], message: 'give one of module and from' });
    }
    if (r.init !== undefined && r.initBase64 !== undefined) {
      ctx.addIssue({ code: 'custom', path: ['initBase64'], message: 'give init or initBase64, not both' });
    }
  })
  .meta({ id: 'CreateActorRequest' });
export type CreateActorRequest = z.infer<typeof CreateActorRequestSchema>;

/** What `runtime.actors.create` takes: the request, with the init as bytes or text. */
export type CreateActorOptions = Omit<CreateActorRequest, 'init' | 'initBase64'> & { init?: Uint8Array | string };

export const ActorModuleInfoSchema = z
  .object({
    digest: z.string(),
    size: z.number().int(),
    /** The ABI imports it uses (`roost.state_get`, ...). */
    imports: z.array(z.string()),
    exports: z.array(z.string()),
    /** The grants its imports need: an actor of it must have them. */
    grantsNeeded: z.array(z.string()),
    /** Initial and maximum memory it declares, in bytes (null: no maximum). */
    memory: z.object({ initialBytes: z.number().int(), maximumBytes: z.number().int().nullable() }),
    createdAt: z.string(),
    /** Actors of this module. */
    actors: z.number().int(),
  })
  .meta({ id: 'ActorModuleInfo' });
export type ActorModuleInfo = z.infer<typeof ActorModuleInfoSchema>;

export const ActorErrorSchema = z
  .object({
    code: z.string(),
    /** trap | out_of_fuel | timeout | returned | instantiate | crashed */
    reason: z.string(),
    message: z.string(),
    at: z.string(),
  })
  .meta({ id: 'ActorError' });
export type ActorErrorInfo = z.infer<typeof ActorErrorSchema>;

export const ActorInfoSchema = z
  .object({
    id: z.string(),
    name: z.string().nullable(),
    module: z.string(),
    /** The actor that created it (null: made from outside). */
    parent: z.string().nullable(),
    createdAt: z.string(),
    /** The newest committed state version (0: the empty state it was created with, or its fork's). */
    version: z.number().int(),
    /** The state root hash of that version (hex sha256). */
    root: z.string(),
    state: z.object({ entries: z.number().int(), bytes: z.number().int() }),
    /** Its logical clock (a Lamport clock over the messages it handled). */
    clock: z.number().int(),
    /** Messages handled (committed or failed). */
    handled: z.number().int(),
    failed: z.number().int(),
    /** Fuel used by all its messages. */
    ticks: z.number().int(),
    /** Messages waiting (timers not yet due included). */
    mailbox: z.number().int(),
    refs: z.array(z.object({ ref: z.number().int(), actor: z.string() })),
    grants: ActorGrantsSchema,
    limits: ActorLimitsSchema.required(),
    keepVersions: z.number().int(),
    lastError: ActorErrorSchema.nullable(),
  })
  .meta({ id: 'ActorInfo' });
export type ActorInfo = z.infer<typeof ActorInfoSchema>;

export const ActorListSchema = z.object({ actors: z.array(ActorInfoSchema) }).meta({ id: 'ActorList' });
export const ActorModuleListSchema = z.object({ modules: z.array(ActorModuleInfoSchema) }).meta({ id: 'ActorModuleList' });

/** One key and value of a state; each is UTF-8 text unless its encoding says base64. */
export const ActorStateEntrySchema = z
  .object({
    key: z.string(),
    keyEncoding: z.literal('base64').optional(),
    value: z.string(),
    valueEncoding: z.literal('base64').optional(),
  })
  .meta({ id: 'ActorStateEntry' });
export type ActorStateEntry = z.infer<typeof ActorStateEntrySchema>;

export const ActorStateSchema = z
  .object({
    actor: z.string(),
    version: z.number().int(),
    root: z.string(),
    size: z.object({ entries: z.number().int(), bytes: z.number().int() }),
    /** Sorted by key bytes. */
    entries: z.array(ActorStateEntrySchema),
  })
  .meta({ id: 'ActorState' });
export type ActorState = z.infer<typeof ActorStateSchema>;

export const ActorVersionSchema = z
  .object({
    version: z.number().int(),
    root: z.string(),
    /** The message that made it (null: creation or fork). */
    message: z.number().int().nullable(),
    at: z.string(),
    /** Kept from pruning (a snapshot). */
    pinned: z.boolean(),
  })
  .meta({ id: 'ActorVersion' });
export type ActorVersion = z.infer<typeof ActorVersionSchema>;
export const ActorVersionListSchema = z.object({ versions: z.array(ActorVersionSchema) }).meta({ id: 'ActorVersionList' });

/** One handled message, as its history and the message stream give it. */
export const ActorMessageRecordSchema = z
  .object({
    /** The message's sequence number (unique in the home, increasing). */
    seq: z.number().int(),
    actor: z.string(),
    kind: z.enum(['message', 'init', 'timer']),
    /** The sending actor (null: from outside or a timer). */
    from: z.string().nullable(),
    size: z.number().int(),
    ok: z.boolean(),
    error: ActorErrorSchema.nullable(),
    /** The version it committed (null when it failed). */
    version: z.number().int().nullable(),
    ticks: z.number().int(),
    /** The reply's size, and its first 4 KiB as text when it is UTF-8 (else base64 in `replyBase64`). */
    replySize: z.number().int().nullable(),
    reply: z.string().optional(),
    replyBase64: z.string().optional(),
    logs: z.array(z.string()),
    at: z.string(),
  })
  .meta({ id: 'ActorMessageRecord' });
export type ActorMessageRecord = z.infer<typeof ActorMessageRecordSchema>;

/** What a send returns: the message's sequence number once it is in the mailbox (durably). */
export const ActorSendResultSchema = z.object({ seq: z.number().int() }).meta({ id: 'ActorSendResult' });
export type ActorSendResult = z.infer<typeof ActorSendResultSchema>;

/** What a call returns over REST (the embedded call gives the reply as bytes). */
export const ActorCallResultSchema = z
  .object({
    seq: z.number().int(),
    version: z.number().int(),
    ticks: z.number().int(),
    /** The reply as UTF-8 text, or base64 in `replyBase64` when it is not UTF-8; absent when the handler did not reply. */
    reply: z.string().optional(),
    replyBase64: z.string().optional(),
  })
  .meta({ id: 'ActorCallResult' });

export interface ActorReply {
  seq: number;
  /** The version the message committed. */
  version: number;
  ticks: number;
  /** Null when the handler did not reply. */
  reply: Uint8Array | null;
}

/** GET /v1/actors/{id}/messages */
export const ActorMessagesQuerySchema = z
  .object({
    after: z.coerce.number().int().min(0).optional(),
    follow: z.enum(['0', '1', 'true', 'false']).optional(),
    limit: z.coerce.number().int().min(1).max(10_000).optional(),
  })
  .meta({ id: 'ActorMessagesQuery' });

export interface ActorMessagesOptions {
  /** Records after this seq (default: the last `limit`, or none when following). */
  after?: number;
  /** Keep the stream open for new records until `signal` aborts. */
  follow?: boolean;
  limit?: number;
  signal?: AbortSignal;
}

/** Actor messages: bytes, or text sent as UTF-8. */
export type ActorMessage = Uint8Array | string;

/**
 * `runtime.actors`. Concurrency: every call may overlap; messages to one
 * actor are handled one at a time in mailbox order, different actors in
 * parallel.
 */
export interface ActorsApi {
  /** Stores a WASM module by its content digest (the same bytes twice: one module). INVALID_ARGUMENT naming what the module does wrong. */
  deploy(module: Uint8Array, options?: { signal?: AbortSignal }): Promise<ActorModuleInfo>;
  modules(): Promise<ActorModuleInfo[]>;
  /** Removes a module no actor uses (INVALID_STATE while one does). */
  removeModule(digest: string): Promise<void>;
  /** Creates an actor and runs its `init` (a failed init fails the create and leaves nothing). */
  create(options: CreateActorOptions & { signal?: AbortSignal }): Promise<ActorInfo>;
  /** By id, unique id prefix, or name. */
  get(actor: string): Promise<ActorInfo>;
  list(): Promise<ActorInfo[]>;
  /** Puts a message in the actor's mailbox; resolves once it is there durably (it will be handled exactly once). */
  send(actor: string, message: ActorMessage, options?: { signal?: AbortSignal }): Promise<ActorSendResult>;
  /** Sends and waits for the handler's outcome: its reply, or an ACTOR error (trap, out of fuel, timeout, non-zero return). */
  call(actor: string, message: ActorMessage, options?: { timeoutMs?: number; signal?: AbortSignal }): Promise<ActorReply>;
  /** The state at the newest version, or at `version` if it is kept. */
  state(actor: string, options?: { version?: number }): Promise<ActorState>;
  versions(actor: string): Promise<ActorVersion[]>;
  /** Pins the newest version (kept from pruning): the actor's snapshot is its state root. */
  snapshot(actor: string): Promise<ActorVersion>;
  /** Handled messages, oldest first; with `follow`, then new ones as they are handled. */
  messages(actor: string, options?: ActorMessagesOptions): AsyncIterable<ActorMessageRecord>;
  /** Removes the actor, its state versions and its mailbox (messages waiting are dropped; calls waiting fail NOT_FOUND). */
  remove(actor: string): Promise<void>;
}

const strictUtf8 = new TextDecoder('utf-8', { fatal: true });

/** The bytes as text when they are valid UTF-8, else null (how actor bytes travel in JSON: text, or base64 when this is null). */
export function utf8OrNull(bytes: Uint8Array): string | null {
  try {
    return strictUtf8.decode(bytes);
  } catch {
    return null;
  }
}

/** `reply` as UTF-8 text, or `replyBase64` when it is not UTF-8; neither when there is none (ActorCallResult, history records, MCP). */
export function replyFields(reply: Uint8Array | null): { reply?: string; replyBase64?: string } {
  if (reply === null) return {};
  const text = utf8OrNull(reply);
  return text !== null ? { reply: text } : { replyBase64: Buffer.from(reply).toString('base64') };
}

export type ActorCallResult = z.infer<typeof ActorCallResultSchema>;

/** A call's outcome as JSON (REST, the CLI's --json, MCP). */
export function actorCallResult(r: ActorReply): ActorCallResult {
  return { seq: r.seq, version: r.version, ticks: r.ticks, ...replyFields(r.reply) };
}

/** The reply bytes of an ActorCallResult (null when the handler did not reply). */
export function replyBytes(r: { reply?: string; replyBase64?: string }): Uint8Array | null {
  if (r.reply !== undefined) return new Uint8Array(Buffer.from(r.reply, 'utf8'));
  if (r.replyBase64 !== undefined) return new Uint8Array(Buffer.from(r.replyBase64, 'base64'));
  return null;
}
