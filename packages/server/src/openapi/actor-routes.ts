import {
  ActorCallResultSchema,
  ActorInfoSchema,
  ActorListSchema,
  ActorMessageRecordSchema,
  ActorModuleInfoSchema,
  ActorModuleListSchema,
  ActorSendResultSchema,
  ActorStateSchema,
  ActorVersionListSchema,
  ActorVersionSchema,
  CreateActorRequestSchema,
  MAX_ACTOR_MESSAGE_BYTES,
  MAX_ACTOR_MODULE_BYTES,
} from '@roost/api';
import type { Param, Route } from './route.js';

/*
 * The routes of actors (../actors.ts; docs/actors.md): WASM modules,
 * actors with durable state and a mailbox, their messages, calls, state
 * versions and handled-message stream.
 */

const actorParam: Param = {
  name: 'actor',
  in: 'path',
  required: true,
  description: "The actor's id, a unique prefix of it, or its name.",
  schema: { type: 'string' },
};

const messageBody = {
  raw: {
    mediaType: '*/*',
    description: `The message: the raw body, whatever its Content-Type (at most ${MAX_ACTOR_MESSAGE_BYTES} bytes; past that, 413).`,
  },
};

/** Actor routes, in the order the document lists them. */
export const ACTOR_ROUTES: readonly Route[] = [
  {
    method: 'post',
    path: '/v1/actors/modules',
    operationId: 'deployActorModule',
    tag: 'actors',
    summary: 'Deploy a WASM module',
    description:
      'Validates the module against the actor ABI (docs/actors.md), meters it and stores it by its content digest. The same bytes again are the same module: 201 with its info either way. ' +
      'A module that breaks the ABI (an unknown import, no `handle` or `memory` export, malformed WASM) is 400 naming what.',
    body: {
      raw: {
        mediaType: 'application/wasm',
        description: `The WASM binary (Content-Type application/wasm or application/octet-stream), at most ${MAX_ACTOR_MODULE_BYTES} bytes (past that, 413); not bounded by the JSON body limit.`,
      },
    },
    ok: { 201: { description: 'Stored (or already stored).', bodies: [{ json: ActorModuleInfoSchema }] } },
    errors: [400, 413],
  },
  {
    method: 'get',
    path: '/v1/actors/modules',
    operationId: 'listActorModules',
    tag: 'actors',
    summary: 'List the deployed modules',
    ok: { 200: { description: 'The modules, with the number of actors of each.', bodies: [{ json: ActorModuleListSchema }] } },
    errors: [400],
  },
  {
    method: 'delete',
    path: '/v1/actors/modules/{digest}',
    operationId: 'deleteActorModule',
    tag: 'actors',
    summary: 'Remove a module no actor uses',
    description: '409 INVALID_STATE while an actor uses it.',
    params: [{ name: 'digest', in: 'path', required: true, description: 'The module digest (`sha256:` and 64 hex digits).', schema: { type: 'string' } }],
    ok: { 204: { description: 'Removed.', bodies: [{ none: true }] } },
    errors: [400, 404, 409],
  },
  {
    method: 'post',
    path: '/v1/actors',
    operationId: 'createActor',
    tag: 'actors',
    summary: 'Create an actor (or fork one) and run its init',
    description:
      'From a deployed `module`, or `from` another actor (its state at its newest version or `version`). The init bytes (`init` as text or `initBase64`) are the message of its `init` export; an init that fails fails the create (422 ACTOR, details.reason) and leaves nothing. `Location` names the actor.',
    body: { schema: CreateActorRequestSchema, required: true },
    ok: { 201: { description: 'Created.', bodies: [{ json: ActorInfoSchema }] } },
    errors: [400, 404, 409, 422],
  },
  {
    method: 'get',
    path: '/v1/actors',
    operationId: 'listActors',
    tag: 'actors',
    summary: 'List actors',
    ok: { 200: { description: 'The actors.', bodies: [{ json: ActorListSchema }] } },
    errors: [400],
  },
  {
    method: 'get',
    path: '/v1/actors/{actor}',
    operationId: 'getActor',
    tag: 'actors',
    summary: 'Inspect an actor: its version, state size, counters, mailbox, references, grants, limits and last error',
    params: [actorParam],
    ok: { 200: { description: 'The actor.', bodies: [{ json: ActorInfoSchema }] } },
    errors: [400, 404],
  },
  {
    method: 'delete',
    path: '/v1/actors/{actor}',
    operationId: 'deleteActor',
    tag: 'actors',
    summary: 'Remove an actor, its state versions and its mailbox',
    description: 'Messages waiting are dropped; calls waiting fail NOT_FOUND; streams of its messages end.',
    params: [actorParam],
    ok: { 204: { description: 'Removed.', bodies: [{ none: true }] } },
    errors: [400, 404],
  },
  {
    method: 'post',
    path: '/v1/actors/{actor}/messages',
    operationId: 'sendActorMessage',
    tag: 'actors',
    summary: 'Send a message',
    description:
      'Answers once the message is in the mailbox durably: it will be handled exactly once, even across a daemon crash. 429 RESOURCE_EXHAUSTED when the mailbox is full.',
    params: [actorParam],
    body: messageBody,
    ok: { 202: { description: 'In the mailbox.', bodies: [{ json: ActorSendResultSchema }] } },
    errors: [400, 404, 413, 429],
  },
  {
    method: 'post',
    path: '/v1/actors/{actor}/call',
    operationId: 'callActor',
    tag: 'actors',
    summary: 'Send a message and wait for its outcome',
    description:
      "The handler's reply (UTF-8 text in `reply`, else base64 in `replyBase64`; neither when it did not reply). A handler that fails (trap, out of fuel, wall time, a non-zero return) is 422 ACTOR with `details.reason`; 504 TIMEOUT past `timeoutMs` (the message stays in the mailbox). A client that goes away stops the wait, not the message.",
    params: [
      actorParam,
      {
        name: 'timeoutMs',
        in: 'query',
        description: 'How long to wait for the outcome, in ms (default 60000).',
        schema: { type: 'integer', minimum: 1, maximum: 2_147_483_647 },
      },
    ],
    body: messageBody,
    ok: { 200: { description: 'Handled and committed.', bodies: [{ json: ActorCallResultSchema }] } },
    errors: [400, 404, 413, 422, 429, 504],
  },
  {
    method: 'get',
    path: '/v1/actors/{actor}/state',
    operationId: 'getActorState',
    tag: 'actors',
    summary: "An actor's state: every key and value",
    params: [actorParam, { name: 'version', in: 'query', description: 'A kept version (default: the newest).', schema: { type: 'integer', minimum: 0 } }],
    ok: { 200: { description: 'The state, sorted by key bytes.', bodies: [{ json: ActorStateSchema }] } },
    errors: [400, 404],
  },
  {
    method: 'get',
    path: '/v1/actors/{actor}/versions',
    operationId: 'listActorVersions',
    tag: 'actors',
    summary: "An actor's kept state versions",
    params: [actorParam],
    ok: { 200: { description: 'The versions, oldest first.', bodies: [{ json: ActorVersionListSchema }] } },
    errors: [400, 404],
  },
  {
    method: 'post',
    path: '/v1/actors/{actor}/snapshot',
    operationId: 'snapshotActor',
    tag: 'actors',
    summary: 'Pin the newest state version (kept from pruning)',
    params: [actorParam],
    ok: { 200: { description: 'The pinned version.', bodies: [{ json: ActorVersionSchema }] } },
    errors: [400, 404],
  },
  {
    method: 'get',
    path: '/v1/actors/{actor}/messages',
    operationId: 'streamActorMessages',
    tag: 'actors',
    summary: "An actor's handled messages, then new ones as they are handled",
    description:
      'Records oldest first: after `after` (default: the last `limit`, or none when following), as NDJSON, or as Server-Sent Events with `Accept: text/event-stream` (each record an event `message` with `id: <seq>`; a reconnect with `Last-Event-ID` resumes after it). ' +
      'With `follow`, the stream stays open for new records until the client goes, the actor is removed or the daemon stops.',
    params: [
      actorParam,
      { name: 'after', in: 'query', description: 'Records after this seq.', schema: { type: 'integer', minimum: 0 } },
      { name: 'follow', in: 'query', description: 'Keep the stream open for new records.', schema: { type: 'boolean' } },
      { name: 'limit', in: 'query', description: 'Records read from the history (default 100).', schema: { type: 'integer', minimum: 1, maximum: 10_000 } },
      { name: 'Last-Event-ID', in: 'header', description: 'SSE: resume after this seq (wins over `after`).', schema: { type: 'string' } },
    ],
    ok: { 200: { description: 'The records.', bodies: [{ ndjson: ActorMessageRecordSchema }, { sse: ActorMessageRecordSchema }] } },
    errors: [400, 404],
  },
];
