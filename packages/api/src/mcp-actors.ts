import { z } from 'zod';
import {
  ActorCallResultSchema,
  ActorGrantsSchema,
  ActorInfoSchema,
  ActorLimitsSchema,
  ActorMessageRecordSchema,
  ActorModuleInfoSchema,
  ActorSendResultSchema,
  ActorStateSchema,
  CreateActorRequestSchema,
  MAX_ACTOR_MESSAGE_BYTES,
  MAX_ACTOR_MODULE_BYTES,
  MAX_ACTOR_REFS,
} from './actors.js';

/*
 * The MCP face's actor tools (docs/actors.md): their inputs and outputs,
 * built from the actor schemas, beside the sandbox tools' (mcp.ts) and the
 * deployment tools' (mcp-deployments.ts). Bytes travel as UTF-8 text or as
 * base64 (`...Base64`); the server turns these into the tools' JSON Schemas.
 */

/** The most records `actor_messages` returns at once. */
export const MAX_MCP_ACTOR_MESSAGES = 1000;
/** Records `actor_messages` returns by default. */
export const DEFAULT_MCP_ACTOR_MESSAGES = 20;

/** Base64 of at most `bytes` bytes (4 characters per 3 bytes). */
const base64 = (bytes: number) =>
  z
    .string()
    .max(Math.ceil(bytes / 3) * 4 + 4)
    .regex(/^[A-Za-z0-9+/]*={0,2}$/, 'must be base64 (A-Z, a-z, 0-9, +, /, = padding)');

const actor = z.string().min(1).describe('The actor: its name, id, or a unique id prefix, as actor_create or actor_list returned it.');
const wasmBase64 = base64(MAX_ACTOR_MODULE_BYTES).min(1);
const message = z.string().max(MAX_ACTOR_MESSAGE_BYTES).optional().describe('The message as UTF-8 text.');
const messageBase64 = base64(MAX_ACTOR_MESSAGE_BYTES).optional().describe('The message as base64 (binary messages): give this or `message`.');
const create = CreateActorRequestSchema.shape;

/** Message bytes are `message` (text) or `messageBase64`; neither is the empty message. */
const oneMessage = (i: { message?: string | undefined; messageBase64?: string | undefined }) => i.message === undefined || i.messageBase64 === undefined;
const oneMessageError = { message: 'give the message as `message` (text) or as `messageBase64`, not both', path: ['messageBase64'] };

/** The actor tools' inputs, by tool name. */
export const McpActorToolInputs = {
  actor_deploy: z
    .object({
      wasmBase64: wasmBase64.describe(
        `The WASM module as base64 (at most ${MAX_ACTOR_MODULE_BYTES} bytes): it exports memory and handle (and optionally init), imports only Roost's ABI (docs/actors.md).`,
      ),
    })
    .strict(),
  actor_create: z
    .object({
      name: create.name.describe('A name for the actor (optional: its id names it too).'),
      module: create.module.describe('The module’s digest (sha256:...), as actor_deploy returned it. Give this, `wasmBase64`, or `from`.'),
      wasmBase64: wasmBase64.optional().describe('The module as base64, deployed first (same as actor_deploy, then `module`).'),
      from: create.from.describe(
        'Fork: start from this actor’s state (newest version, or `version`), module, grants and limits; what is given here overrides them.',
      ),
      init: create.init.describe('The init message (UTF-8 text) its `init` export runs with; a failed init fails the create.'),
      initBase64: base64(MAX_ACTOR_MESSAGE_BYTES).optional().describe('The init message as base64 instead.'),
      refs: create.refs.describe(`Actors (names or ids) it holds references to: its refs 1, 2, ... in this order (at most ${MAX_ACTOR_REFS}).`),
      grants: ActorGrantsSchema.optional().describe(
        'What it may reach (nothing by default): random, clock, fetch (an egress policy, e.g. {"default":"deny","allow":["example.com"]}), sandboxes (names or ids of microVM sandboxes it may run commands in).',
      ),
      limits: ActorLimitsSchema.optional().describe(
        'Per-message fuel, memoryBytes, timeoutMs; mailbox length; stateBytes (defaults apply to what is not given).',
      ),
      keepVersions: create.keepVersions.describe('State versions kept (default 64; older ones are pruned, snapshots excepted).'),
    })
    .strict()
    .refine((i) => [i.module, i.wasmBase64, i.from].filter((v) => v !== undefined).length === 1, {
      message: 'give one of module (a digest), wasmBase64 (the module) and from (a fork)',
      path: ['module'],
    })
    .refine((i) => i.init === undefined || i.initBase64 === undefined, { message: 'give init or initBase64, not both', path: ['initBase64'] }),
  actor_send: z.object({ actor, message, messageBase64 }).strict().refine(oneMessage, oneMessageError),
  actor_call: z
    .object({
      actor,
      message,
      messageBase64,
      timeoutMs: z
        .number()
        .int()
        .min(1)
        .max(600_000)
        .optional()
        .describe('How long to wait for the reply (ms, default 60000); past it the result is a TIMEOUT error and the message stays in the mailbox.'),
    })
    .strict()
    .refine(oneMessage, oneMessageError),
  actor_state: z
    .object({
      actor,
      version: z.number().int().min(0).optional().describe('A kept state version (default: the newest).'),
    })
    .strict(),
  actor_list: z.object({}).strict(),
  actor_messages: z
    .object({
      actor,
      last: z
        .number()
        .int()
        .min(1)
        .max(MAX_MCP_ACTOR_MESSAGES)
        .optional()
        .describe(`How many of the newest handled messages (default ${DEFAULT_MCP_ACTOR_MESSAGES}).`),
      after: z.number().int().min(0).optional().describe('Instead, the records after this seq (oldest first, at most `last` of them).'),
    })
    .strict(),
  actor_remove: z.object({ actor }).strict(),
} as const;

/** The actor tools' outputs (their `structuredContent`), by tool name. */
export const McpActorToolOutputs = {
  actor_deploy: ActorModuleInfoSchema,
  actor_create: ActorInfoSchema,
  actor_send: ActorSendResultSchema,
  actor_call: ActorCallResultSchema,
  actor_state: ActorStateSchema,
  actor_list: z.object({ actors: z.array(ActorInfoSchema) }),
  actor_messages: z.object({ messages: z.array(ActorMessageRecordSchema) }),
  actor_remove: z.object({ actor: z.string(), removed: z.literal(true) }),
} satisfies Record<keyof typeof McpActorToolInputs, z.ZodType>;
