import {
  CreateSandboxRequestSchema,
  CreateSnapshotRequestSchema,
  ForkRequestSchema,
  ForkResultSchema,
  HealthSchema,
  PortBindingSchema,
  SandboxInfoSchema,
  SandboxListSchema,
  SandboxMetricsSchema,
  SetLifetimeRequestSchema,
  SandboxStatusSchema,
  SnapshotInfoSchema,
  StartSandboxRequestSchema,
  StopSandboxRequestSchema,
} from '@roost/api';
import { z } from 'zod';
import { NetworkStatusSchema, PortListSchema, PortSpecRequestSchema } from '../network.js';
import { forceParam, idParam, sessionHeaderParam, VM_ERRORS, type Route } from './route.js';

/*
 * The routes of the daemon itself (health, this document) and of one sandbox
 * as a whole: its lifecycle, snapshot and fork, log, metrics, ports and network.
 */

const EmptyRequestSchema = z.object({}).strict();

/** System and sandbox routes, in the order the document lists them. */
export const SANDBOX_ROUTES: readonly Route[] = [
  {
    method: 'get',
    path: '/v1/health',
    operationId: 'getHealth',
    tag: 'system',
    summary: 'Daemon liveness, version and home',
    ok: { 200: { description: 'The daemon is up.', bodies: [{ json: HealthSchema }] } },
    errors: [],
  },
  {
    method: 'get',
    path: '/v1/openapi.json',
    operationId: 'getOpenApi',
    tag: 'system',
    summary: 'This document',
    ok: { 200: { description: 'The OpenAPI 3.1 document.', bodies: [{ json: z.record(z.string(), z.unknown()) }] } },
    errors: [],
  },
  {
    method: 'post',
    path: '/v1/sandboxes',
    operationId: 'createSandbox',
    tag: 'sandboxes',
    summary: 'Create and boot a sandbox',
    description:
      'Resolves once the guest agent answers. An image that is not stored is pulled first (see `pull`). ' +
      "With `snapshot`, the sandbox is restored from that snapshot (its memory, processes and disk) instead of booted; with `template`, from the template's warm snapshot, which is built first when it has none (or no longer restores); with `pool`, a ready member of that warm pool is handed over (resumed, given the host's clock and fresh entropy; `pool.warm` true), or one is restored when the pool is empty (`pool.warm` false). " +
      "Beyond the runtime's limits on sandboxes or concurrent creations the answer is 429 RESOURCE_EXHAUSTED. " +
      '`ports` are bound before the VM starts: a host port another program holds fails the create with 503 UNAVAILABLE; an invalid mapping or egress rule is 400 (the message says which); ' +
      '`network: bridge` needs a daemon running as root (403 PERMISSION_DENIED otherwise). ' +
      'A sandbox that is not `detached` belongs to the client session named by the `Roost-Session` header (see POST /v1/sessions), and ends when that session ends: without the header the answer is 400.',
    params: [sessionHeaderParam],
    body: { schema: CreateSandboxRequestSchema, required: false },
    ok: { 201: { description: 'The sandbox runs.', bodies: [{ json: SandboxInfoSchema }] } },
    errors: [400, 403, 404, 409, 429, 500, 502, 504, 507],
  },
  {
    method: 'get',
    path: '/v1/sandboxes',
    operationId: 'listSandboxes',
    tag: 'sandboxes',
    summary: 'List sandboxes, newest first',
    params: [
      {
        name: 'status',
        in: 'query',
        description: `Comma-separated statuses (${SandboxStatusSchema.options.join(', ')}); default every status.`,
        schema: { type: 'string' },
      },
      { name: 'image', in: 'query', description: 'Image reference, or id prefix.', schema: { type: 'string' } },
      {
        name: 'label',
        in: 'query',
        description: '`key` (present) or `key=value`; repeat for several (all must match).',
        schema: { type: 'array', items: { type: 'string' } },
        explode: true,
      },
    ],
    ok: { 200: { description: 'The sandboxes that match.', bodies: [{ json: SandboxListSchema }] } },
    errors: [400],
  },
  {
    method: 'get',
    path: '/v1/sandboxes/{id}',
    operationId: 'getSandbox',
    tag: 'sandboxes',
    summary: "A sandbox's record",
    params: [idParam],
    ok: { 200: { description: 'The record.', bodies: [{ json: SandboxInfoSchema }] } },
    errors: [400, 404],
  },
  {
    method: 'delete',
    path: '/v1/sandboxes/{id}',
    operationId: 'deleteSandbox',
    tag: 'sandboxes',
    summary: 'Remove a sandbox and its disk',
    params: [idParam, forceParam('Kill it first when it runs (otherwise a running sandbox is 409 INVALID_STATE).')],
    ok: { 204: { description: 'Removed.', bodies: [{ none: true }] } },
    errors: [400, 404, 409, 507],
  },
  {
    method: 'post',
    path: '/v1/sandboxes/{id}/stop',
    operationId: 'stopSandbox',
    tag: 'sandboxes',
    summary: 'Stop a sandbox (the agent powers it off; killed after timeoutMs)',
    params: [idParam],
    body: { schema: StopSandboxRequestSchema, required: false },
    ok: { 200: { description: 'Stopped.', bodies: [{ json: SandboxInfoSchema }] } },
    errors: [400, 404, 409],
  },
  {
    method: 'post',
    path: '/v1/sandboxes/{id}/start',
    operationId: 'startSandbox',
    tag: 'sandboxes',
    summary: 'Boot a stopped sandbox again, on its disk',
    params: [idParam],
    body: { schema: StartSandboxRequestSchema, required: false },
    ok: { 200: { description: 'Running again.', bodies: [{ json: SandboxInfoSchema }] } },
    errors: [400, 404, 409, 429, 500, 504, 507],
  },
  {
    method: 'post',
    path: '/v1/sandboxes/{id}/kill',
    operationId: 'killSandbox',
    tag: 'sandboxes',
    summary: "Kill a sandbox's VM at once",
    params: [idParam],
    body: { schema: EmptyRequestSchema, required: false },
    ok: { 200: { description: 'Killed (status stopped).', bodies: [{ json: SandboxInfoSchema }] } },
    errors: [400, 404],
  },
  {
    method: 'post',
    path: '/v1/sandboxes/{id}/pause',
    operationId: 'pauseSandbox',
    tag: 'sandboxes',
    summary: "Stop a running sandbox's vCPUs (its memory stays; status paused)",
    description:
      'Commands in it stop where they are; new commands and file calls wait until it is resumed. A paused sandbox stays as it is; one that is neither running nor paused is 409 INVALID_STATE.',
    params: [idParam],
    body: { schema: EmptyRequestSchema, required: false },
    ok: { 200: { description: 'Paused.', bodies: [{ json: SandboxInfoSchema }] } },
    errors: [400, 404, 409],
  },
  {
    method: 'post',
    path: '/v1/sandboxes/{id}/lifetime',
    operationId: 'setSandboxLifetime',
    tag: 'sandboxes',
    summary: 'Set when a sandbox ends (its lifetime), and what its end does',
    description:
      'The sandbox ends lifetimeMs from now (null: never), and is then removed, stopped or paused (onExpiry). With extendOnly, a later end already set is kept. The daemon acts on it; the record says when (expiresAt) and a sandbox.expired event tells.',
    params: [idParam],
    body: { schema: SetLifetimeRequestSchema, required: true },
    ok: { 200: { description: 'The record with its new end.', bodies: [{ json: SandboxInfoSchema }] } },
    errors: [400, 404],
  },
  {
    method: 'post',
    path: '/v1/sandboxes/{id}/resume',
    operationId: 'resumeSandbox',
    tag: 'sandboxes',
    summary: 'Continue a paused sandbox where it was (a running one is left as it is)',
    description:
      'A sandbox Roost paused because the host could not store its disk writes (`reason: "host disk full"`) retries them first: on a disk still full it is paused again, same reason, and the answer is 507.',
    params: [idParam],
    body: { schema: EmptyRequestSchema, required: false },
    ok: { 200: { description: 'Running again.', bodies: [{ json: SandboxInfoSchema }] } },
    errors: [400, 404, 409, 507],
  },
  {
    method: 'post',
    path: '/v1/sandboxes/{id}/snapshot',
    operationId: 'snapshotSandbox',
    tag: 'snapshots',
    summary: "Save a sandbox's memory, device state and disk as a snapshot",
    description:
      "The guest's writable filesystem is frozen while the VM is stopped and saved, then the sandbox runs on (a paused one stays paused). " +
      'A name that is taken is 409 ALREADY_EXISTS. Restore it with `POST /v1/sandboxes` and `snapshot`.',
    params: [idParam],
    body: { schema: CreateSnapshotRequestSchema, required: false },
    ok: { 201: { description: 'Saved.', bodies: [{ json: SnapshotInfoSchema }] } },
    errors: VM_ERRORS,
  },
  {
    method: 'post',
    path: '/v1/sandboxes/{id}/fork',
    operationId: 'forkSandbox',
    tag: 'snapshots',
    summary: 'Running copies of a sandbox',
    description:
      'Each copy has its own id, memory and disk, restored from a snapshot (kind `fork`) of the sandbox taken now; the sandbox runs on. ' +
      'Copies that are not detached belong to the session of the `Roost-Session` header, else to the session that owns the sandbox (400 when neither is there).',
    params: [idParam, sessionHeaderParam],
    body: { schema: ForkRequestSchema, required: false },
    ok: { 201: { description: 'The copies run.', bodies: [{ json: ForkResultSchema }] } },
    errors: VM_ERRORS,
  },
  {
    method: 'get',
    path: '/v1/sandboxes/{id}/logs',
    operationId: 'getSandboxLogs',
    tag: 'sandboxes',
    summary: "The guest's serial console log",
    description: 'At most the last MiB of the log; `tail` keeps its last lines.',
    params: [idParam, { name: 'tail', in: 'query', description: 'Only the last N lines.', schema: { type: 'integer', minimum: 0 } }],
    ok: { 200: { description: 'The log.', bodies: [{ text: 'text/plain' }] } },
    errors: [400, 404],
  },
  {
    method: 'get',
    path: '/v1/sandboxes/{id}/metrics',
    operationId: 'getSandboxMetrics',
    tag: 'metrics',
    summary: 'CPU, memory and exec count of a sandbox',
    params: [idParam],
    ok: { 200: { description: 'The figures now.', bodies: [{ json: SandboxMetricsSchema }] } },
    errors: [400, 404],
  },
  {
    method: 'get',
    path: '/v1/sandboxes/{id}/ports',
    operationId: 'listPorts',
    tag: 'network',
    summary: "A sandbox's published ports",
    params: [idParam],
    ok: { 200: { description: 'Where the host listens, and the guest port each leads to.', bodies: [{ json: PortListSchema }] } },
    errors: [400, 404],
  },
  {
    method: 'post',
    path: '/v1/sandboxes/{id}/ports',
    operationId: 'addPort',
    tag: 'network',
    summary: 'Publish a guest port on the host',
    description:
      'The body is a mapping as `docker run -p` writes it, `[HOST_IP:][HOST_PORT:]GUEST_PORT[/tcp|udp]` (`"8080:80"`, `"127.0.0.1::80"`, `"5353:53/udp"`), or an object. ' +
      'The host listens on 127.0.0.1 unless another address is named; host port 0 or none takes a free one (the answer says which). ' +
      'The sandbox must run (409 INVALID_STATE otherwise, or without a network). A host port this sandbox publishes already is 409 ALREADY_EXISTS; ' +
      'one another program holds is 503 UNAVAILABLE; one below 1024 without the privilege is 403 PERMISSION_DENIED.',
    params: [idParam],
    body: { schema: PortSpecRequestSchema, required: true },
    ok: { 201: { description: 'Published.', bodies: [{ json: PortBindingSchema }] } },
    errors: [400, 403, 404, 409, 502],
  },
  {
    method: 'delete',
    path: '/v1/sandboxes/{id}/ports/{hostPort}',
    operationId: 'removePort',
    tag: 'network',
    summary: 'Stop publishing a host port (its open connections are closed)',
    params: [
      idParam,
      { name: 'hostPort', in: 'path', required: true, description: 'The host port.', schema: { type: 'integer', minimum: 1, maximum: 65535 } },
      { name: 'protocol', in: 'query', description: 'tcp (default) or udp.', schema: { type: 'string', enum: ['tcp', 'udp'] } },
      { name: 'hostIp', in: 'query', description: 'Only the binding on this host address (default: the port on any address).', schema: { type: 'string' } },
    ],
    ok: { 204: { description: 'Removed.', bodies: [{ none: true }] } },
    errors: [400, 404],
  },
  {
    method: 'get',
    path: '/v1/sandboxes/{id}/network',
    operationId: 'getNetwork',
    tag: 'network',
    summary: "A sandbox's network and its traffic counters",
    description:
      'The mode, addresses, published ports and egress policy as recorded, and the counters of its NIC since it last started here (`in`: into the guest; `denied`: connections and DNS names the egress policy refused). A stopped sandbox has zero counters.',
    params: [idParam],
    ok: { 200: { description: 'The network now.', bodies: [{ json: NetworkStatusSchema }] } },
    errors: [400, 404],
  },
];
