import {
  API_VERSION,
  CreateSandboxRequestSchema,
  DEFAULT_TCP_PORT,
  ErrorBodySchema,
  ExecEventSchema,
  ExecRequestSchema,
  ExecResultSchema,
  HealthSchema,
  ImageInfoSchema,
  ImageListSchema,
  MAX_JSON_BODY,
  PullEventSchema,
  PullRequestSchema,
  ResizeRequestSchema,
  RoostEventSchema,
  RuntimeMetricsSchema,
  SandboxInfoSchema,
  SandboxListSchema,
  SandboxMetricsSchema,
  SignalRequestSchema,
  StartSandboxRequestSchema,
  StopSandboxRequestSchema,
  EVENT_TYPES,
  SandboxStatusSchema,
  EntryInfoSchema,
  WriteInfoSchema,
  EntryListSchema,
  FileWatchLineSchema,
  MakeDirRequestSchema,
  MakeDirResultSchema,
  RenameRequestSchema,
  CreateVolumeRequestSchema,
  VolumeInfoSchema,
  CreateSnapshotRequestSchema,
  CreateTemplateRequestSchema,
  ForkRequestSchema,
  ForkResultSchema,
  SnapshotInfoSchema,
  SnapshotListSchema,
  TemplateInfoSchema,
  TemplateListSchema,
  PortBindingSchema,
} from '@roost/api';
import { z } from 'zod';
import { NetworkStatusSchema, PortListSchema, PortSpecRequestSchema } from './network.js';
import { WarmTemplateRequestSchema } from './snapshots.js';
import { VERSION } from './version.js';

/*
 * The OpenAPI 3.1 document of the REST API: JSON Schemas generated from the
 * API's zod schemas (those with a `.meta({ id })` become components), and
 * every route in one table below. docs/openapi.json is this document
 * (write-openapi.ts writes it; a test fails when they differ), and the
 * integration tests check every response they see against it.
 */

type JsonSchema = Record<string, unknown>;
type Method = 'get' | 'put' | 'post' | 'delete';

/** Request bodies that are not JSON (a command's stdin). */
interface RawBody {
  mediaType: string;
  description: string;
}

/** One response of a route: a JSON body, a stream of JSON lines, SSE, plain text, or nothing. */
type Body = { json: z.ZodType } | { ndjson: z.ZodType } | { sse: z.ZodType } | { text: string } | { binary: string } | { none: true };

interface Param {
  name: string;
  in: 'path' | 'query' | 'header';
  description: string;
  schema: JsonSchema;
  required?: boolean;
  explode?: boolean;
}

interface Route {
  method: Method;
  path: string;
  operationId: string;
  summary: string;
  description?: string;
  tag: 'system' | 'sandboxes' | 'network' | 'execs' | 'files' | 'images' | 'volumes' | 'snapshots' | 'templates' | 'events' | 'metrics';
  params?: Param[];
  /** A JSON body (optional when every field is), or a raw stream. */
  body?: { schema: z.ZodType; required: boolean } | { raw: RawBody };
  /** Success responses by status, each with the body per media type. */
  ok: Record<number, { description: string; bodies: Body[] }>;
  /** Error statuses this route answers besides 401 and 503 (every route has those, and a default). */
  errors: number[];
}

const idParam: Param = {
  name: 'id',
  in: 'path',
  required: true,
  description: 'The sandbox id, or a unique prefix of it.',
  schema: { type: 'string', pattern: '^[0-9a-f]{1,12}$' },
};
const execIdParam: Param = {
  name: 'execId',
  in: 'path',
  required: true,
  description: 'The `execId` of the `started` line of the exec stream.',
  schema: { type: 'string' },
};
const refParam: Param = {
  name: 'ref',
  in: 'path',
  required: true,
  description: 'An image reference (`alpine:3.20`, `host:5000/app@sha256:...`) or id, URL-encoded (`/` as `%2F`).',
  schema: { type: 'string' },
};
const forceParam = (what: string): Param => ({ name: 'force', in: 'query', description: what, schema: { type: 'boolean' } });

const pathQuery = (what: string): Param => ({ name: 'path', in: 'query', required: true, description: what, schema: { type: 'string', minLength: 1 } });
const userQuery: Param = {
  name: 'user',
  in: 'query',
  description: "Act as this user: a name, a uid, `uid:gid` or `name:group` (default: the sandbox's user).",
  schema: { type: 'string', minLength: 1 },
};
const FILE_ERRORS = [400, 403, 404, 409, 429, 502];
const TRAILER_NOTE =
  'Errors before the first byte are ordinary error responses. A failure after it, for a client that sent `TE: trailers`, ends the body with the `Roost-Error` trailer ' +
  "(announced in a `Trailer` header) whose value is the JSON of an error body's `error`; for other clients it breaks the connection. A body that ends cleanly without that trailer is complete.";

const EmptyRequestSchema = z.object({}).strict();
const ImageRemovedSchema = z.object({ untagged: z.array(z.string()), deleted: z.array(z.string()) });
const VolumeListSchema = z.object({ volumes: z.array(VolumeInfoSchema) }).meta({ id: 'VolumeList' });
const volumeNameParam: Param = { name: 'name', in: 'path', required: true, description: "The volume's name.", schema: { type: 'string' } };
const snapshotNameParam: Param = { name: 'name', in: 'path', required: true, description: "The snapshot's name or id.", schema: { type: 'string' } };
const templateNameParam: Param = { name: 'name', in: 'path', required: true, description: "The template's name.", schema: { type: 'string' } };
/** Errors of the routes that boot, restore or save VMs. */
const VM_ERRORS = [400, 404, 409, 429, 500, 502, 504];

/** The route table: the one place that says what the daemon serves. */
export const ROUTES: readonly Route[] = [
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
      "With `snapshot`, the sandbox is restored from that snapshot (its memory, processes and disk) instead of booted; with `template`, from the template's warm snapshot, which is built first when it has none (or no longer restores). " +
      "Beyond the runtime's limits on sandboxes or concurrent creations the answer is 429 RESOURCE_EXHAUSTED. " +
      '`ports` are bound before the VM starts: a host port another program holds fails the create with 503 UNAVAILABLE; an invalid mapping or egress rule is 400 (the message says which); ' +
      '`network: bridge` needs a daemon running as root (403 PERMISSION_DENIED otherwise).',
    body: { schema: CreateSandboxRequestSchema, required: false },
    ok: { 201: { description: 'The sandbox runs.', bodies: [{ json: SandboxInfoSchema }] } },
    errors: [400, 403, 404, 409, 429, 500, 502, 504],
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
    errors: [400, 404, 409],
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
    errors: [400, 404, 409, 429, 500, 504],
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
    path: '/v1/sandboxes/{id}/resume',
    operationId: 'resumeSandbox',
    tag: 'sandboxes',
    summary: 'Continue a paused sandbox where it was (a running one is left as it is)',
    params: [idParam],
    body: { schema: EmptyRequestSchema, required: false },
    ok: { 200: { description: 'Running again.', bodies: [{ json: SandboxInfoSchema }] } },
    errors: [400, 404, 409],
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
    description: 'Each copy has its own id, memory and disk, restored from a snapshot (kind `fork`) of the sandbox taken now; the sandbox runs on.',
    params: [idParam],
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
  {
    method: 'post',
    path: '/v1/sandboxes/{id}/exec',
    operationId: 'execCommand',
    tag: 'execs',
    summary: 'Run a command in a sandbox',
    description:
      'With `Accept: application/x-ndjson` (the default), a stream of ExecEvent lines: `started` (with the `execId` for the stdin, signal and resize routes), ' +
      '`stdout`/`stderr` as the command writes (read no faster than the client reads: backpressure reaches the process), then `exit` or `error`. ' +
      'A client that disconnects kills the command. With `Accept: application/json`, one ExecResult once it exits (a timeout is the 504 TIMEOUT error, with the output in `details`).',
    params: [idParam],
    body: { schema: ExecRequestSchema, required: true },
    ok: { 200: { description: 'The command started (stream) or finished (JSON).', bodies: [{ ndjson: ExecEventSchema }, { json: ExecResultSchema }] } },
    errors: [400, 404, 409, 502, 504],
  },
  {
    method: 'post',
    path: '/v1/sandboxes/{id}/execs/{execId}/stdin',
    operationId: 'writeExecStdin',
    tag: 'execs',
    summary: "Stream bytes into an interactive command's stdin",
    description: 'The request body goes to the process as it arrives (any size; not bound by the JSON body limit). `close=true` closes stdin after it.',
    params: [idParam, execIdParam, { name: 'close', in: 'query', description: 'Close stdin after the body.', schema: { type: 'boolean' } }],
    body: { raw: { mediaType: 'application/octet-stream', description: "Bytes for the process's stdin." } },
    ok: { 204: { description: 'Written.', bodies: [{ none: true }] } },
    errors: [400, 404, 409],
  },
  {
    method: 'post',
    path: '/v1/sandboxes/{id}/execs/{execId}/signal',
    operationId: 'signalExec',
    tag: 'execs',
    summary: "Send a signal to a running command's process group",
    params: [idParam, execIdParam],
    body: { schema: SignalRequestSchema, required: true },
    ok: { 204: { description: 'Sent.', bodies: [{ none: true }] } },
    errors: [400, 404],
  },
  {
    method: 'post',
    path: '/v1/sandboxes/{id}/execs/{execId}/resize',
    operationId: 'resizeExec',
    tag: 'execs',
    summary: 'Set the terminal size of a PTY command',
    params: [idParam, execIdParam],
    body: { schema: ResizeRequestSchema, required: true },
    ok: { 204: { description: 'Resized.', bodies: [{ none: true }] } },
    errors: [400, 404],
  },
  {
    method: 'get',
    path: '/v1/sandboxes/{id}/files/content',
    operationId: 'readFile',
    tag: 'files',
    summary: 'Read a file',
    description: `The file's bytes, streamed as the client reads them (a slow client slows the read in the guest). ${TRAILER_NOTE}`,
    params: [idParam, pathQuery('The file (a guest path; relative to `/`).'), userQuery],
    ok: { 200: { description: 'The contents.', bodies: [{ binary: 'application/octet-stream' }] } },
    errors: FILE_ERRORS,
  },
  {
    method: 'put',
    path: '/v1/sandboxes/{id}/files/content',
    operationId: 'writeFile',
    tag: 'files',
    summary: 'Write a file',
    description:
      'The request body, streamed into the guest as it arrives (any size; not bound by the JSON body limit), becomes the file once all of it arrived: a failed or cut upload leaves the old file (or none). Missing parent directories are created.',
    params: [
      idParam,
      pathQuery('The file to write.'),
      userQuery,
      {
        name: 'mode',
        in: 'query',
        description: 'Permission bits, as a decimal integer (default: those of the file replaced, else 0644 = 420).',
        schema: { type: 'integer', minimum: 0, maximum: 0o7777 },
      },
      { name: 'noReplace', in: 'query', description: 'Fail with 409 ALREADY_EXISTS when the file exists.', schema: { type: 'boolean' } },
    ],
    body: { raw: { mediaType: 'application/octet-stream', description: 'The new contents.' } },
    ok: {
      201: { description: 'Written; the file is new.', bodies: [{ json: WriteInfoSchema }] },
      200: { description: 'Written; it replaced a file.', bodies: [{ json: WriteInfoSchema }] },
    },
    errors: FILE_ERRORS,
  },
  {
    method: 'get',
    path: '/v1/sandboxes/{id}/files/stat',
    operationId: 'statFile',
    tag: 'files',
    summary: 'Describe a path (a symlink itself, unless follow)',
    params: [
      idParam,
      pathQuery('The path.'),
      userQuery,
      { name: 'follow', in: 'query', description: 'Describe what a final symlink points to.', schema: { type: 'boolean' } },
    ],
    ok: { 200: { description: 'The entry.', bodies: [{ json: EntryInfoSchema }] } },
    errors: FILE_ERRORS,
  },
  {
    method: 'get',
    path: '/v1/sandboxes/{id}/files/list',
    operationId: 'listFiles',
    tag: 'files',
    summary: 'List the entries below a directory, sorted by path',
    description: 'Symlinks are not followed; unreadable subdirectories are skipped.',
    params: [
      idParam,
      pathQuery('The directory.'),
      userQuery,
      { name: 'depth', in: 'query', description: "Levels to descend (default 1: the directory's own entries).", schema: { type: 'integer', minimum: 1 } },
    ],
    ok: { 200: { description: 'The entries.', bodies: [{ json: EntryListSchema }] } },
    errors: FILE_ERRORS,
  },
  {
    method: 'post',
    path: '/v1/sandboxes/{id}/files/mkdir',
    operationId: 'makeDir',
    tag: 'files',
    summary: 'Create a directory and its missing parents',
    params: [idParam],
    body: { schema: MakeDirRequestSchema, required: true },
    ok: { 200: { description: '`created` is false when it existed already.', bodies: [{ json: MakeDirResultSchema }] } },
    errors: FILE_ERRORS,
  },
  {
    method: 'post',
    path: '/v1/sandboxes/{id}/files/rename',
    operationId: 'renameFile',
    tag: 'files',
    summary: 'Rename (move) a path',
    params: [idParam],
    body: { schema: RenameRequestSchema, required: true },
    ok: { 200: { description: 'The entry under its new name.', bodies: [{ json: EntryInfoSchema }] } },
    errors: FILE_ERRORS,
  },
  {
    method: 'delete',
    path: '/v1/sandboxes/{id}/files',
    operationId: 'removeFile',
    tag: 'files',
    summary: 'Remove a file, a symlink (never its target) or a directory',
    params: [
      idParam,
      pathQuery('The path.'),
      userQuery,
      {
        name: 'recursive',
        in: 'query',
        description: 'Remove a directory with everything below it (default true; false: a non-empty directory is 409).',
        schema: { type: 'boolean' },
      },
    ],
    ok: { 204: { description: 'Removed.', bodies: [{ none: true }] } },
    errors: FILE_ERRORS,
  },
  {
    method: 'get',
    path: '/v1/sandboxes/{id}/files/watch',
    operationId: 'watchFiles',
    tag: 'files',
    summary: 'Watch a directory for changes',
    description:
      'FileWatchLine lines: `{"ready":true}` once the watch is in place, then one FileEvent per change, until the client disconnects or the watched path is removed (a last `remove` event for it). An `error` line ends a watch that failed.',
    params: [
      idParam,
      pathQuery('The directory.'),
      userQuery,
      { name: 'recursive', in: 'query', description: 'Watch subdirectories too (default false).', schema: { type: 'boolean' } },
    ],
    ok: { 200: { description: 'The watch.', bodies: [{ ndjson: FileWatchLineSchema }] } },
    errors: FILE_ERRORS,
  },
  {
    method: 'get',
    path: '/v1/sandboxes/{id}/files/archive',
    operationId: 'readArchive',
    tag: 'files',
    summary: 'A tar stream of a file or directory',
    description: `POSIX pax, entries named \`basename(path)/...\`; symlinks stored as links. ${TRAILER_NOTE}`,
    params: [idParam, pathQuery('The file or directory.'), userQuery],
    ok: { 200: { description: 'The archive.', bodies: [{ binary: 'application/x-tar' }] } },
    errors: FILE_ERRORS,
  },
  {
    method: 'put',
    path: '/v1/sandboxes/{id}/files/archive',
    operationId: 'writeArchive',
    tag: 'files',
    summary: 'Extract a tar stream into a directory',
    description:
      'The directory is created if missing. Names are relative (a leading `/` is dropped; `..` is refused). As root, owners are kept. Streamed as it arrives (any size).',
    params: [idParam, pathQuery('The directory to extract into.'), userQuery],
    body: { raw: { mediaType: 'application/x-tar', description: 'A tar stream (ustar, pax, GNU long names).' } },
    ok: { 204: { description: 'Extracted.', bodies: [{ none: true }] } },
    errors: FILE_ERRORS,
  },
  {
    method: 'post',
    path: '/v1/images/pull',
    operationId: 'pullImage',
    tag: 'images',
    summary: 'Pull an image from its registry',
    description:
      'With `Accept: application/x-ndjson` (the default), PullEvent lines: `progress` per blob (at most about 10 a second each), then `done` or `error`. With `Accept: application/json`, the ImageInfo once pulled.',
    body: { schema: PullRequestSchema, required: true },
    ok: { 200: { description: 'Pulling (stream) or pulled (JSON).', bodies: [{ ndjson: PullEventSchema }, { json: ImageInfoSchema }] } },
    errors: [400, 404, 502],
  },
  {
    method: 'get',
    path: '/v1/images',
    operationId: 'listImages',
    tag: 'images',
    summary: 'List stored images',
    ok: { 200: { description: 'The images.', bodies: [{ json: ImageListSchema }] } },
    errors: [400],
  },
  {
    method: 'get',
    path: '/v1/images/{ref}',
    operationId: 'getImage',
    tag: 'images',
    summary: 'Inspect a stored image',
    params: [refParam],
    ok: { 200: { description: 'The image.', bodies: [{ json: ImageInfoSchema }] } },
    errors: [400, 404],
  },
  {
    method: 'delete',
    path: '/v1/images/{ref}',
    operationId: 'deleteImage',
    tag: 'images',
    summary: 'Untag an image; delete it when no tag is left',
    params: [refParam, forceParam('Delete an image that sandboxes use, or that has other tags.')],
    ok: { 200: { description: 'What was untagged and deleted.', bodies: [{ json: ImageRemovedSchema }] } },
    errors: [400, 404, 409],
  },
  {
    method: 'post',
    path: '/v1/volumes',
    operationId: 'createVolume',
    tag: 'volumes',
    summary: 'Create a named volume',
    description:
      'An empty directory under the Roost home, mounted into sandboxes that name it in `volumes` (which also create it on first use), and kept after them. A name that is taken is 409 ALREADY_EXISTS.',
    body: { schema: CreateVolumeRequestSchema, required: true },
    ok: { 201: { description: 'Created.', bodies: [{ json: VolumeInfoSchema }] } },
    errors: [400, 409],
  },
  {
    method: 'get',
    path: '/v1/volumes',
    operationId: 'listVolumes',
    tag: 'volumes',
    summary: 'List named volumes, by name',
    ok: { 200: { description: 'The volumes, each with the sandboxes that mount it.', bodies: [{ json: VolumeListSchema }] } },
    errors: [400],
  },
  {
    method: 'get',
    path: '/v1/volumes/{name}',
    operationId: 'getVolume',
    tag: 'volumes',
    summary: 'Inspect a named volume',
    params: [volumeNameParam],
    ok: { 200: { description: 'The volume.', bodies: [{ json: VolumeInfoSchema }] } },
    errors: [400, 404],
  },
  {
    method: 'delete',
    path: '/v1/volumes/{name}',
    operationId: 'deleteVolume',
    tag: 'volumes',
    summary: 'Remove a named volume and its data',
    description: 'Refused with 409 INVALID_STATE, naming them, while sandboxes that are not removed (stopped ones included) mount it.',
    params: [volumeNameParam],
    ok: { 204: { description: 'Removed.', bodies: [{ none: true }] } },
    errors: [400, 404, 409],
  },
  {
    method: 'get',
    path: '/v1/snapshots',
    operationId: 'listSnapshots',
    tag: 'snapshots',
    summary: 'List snapshots',
    ok: { 200: { description: 'The snapshots, each with what depends on it.', bodies: [{ json: SnapshotListSchema }] } },
    errors: [400],
  },
  {
    method: 'get',
    path: '/v1/snapshots/{name}',
    operationId: 'getSnapshot',
    tag: 'snapshots',
    summary: 'Inspect a snapshot',
    params: [snapshotNameParam],
    ok: { 200: { description: 'The snapshot.', bodies: [{ json: SnapshotInfoSchema }] } },
    errors: [400, 404],
  },
  {
    method: 'delete',
    path: '/v1/snapshots/{name}',
    operationId: 'deleteSnapshot',
    tag: 'snapshots',
    summary: 'Remove a snapshot and its files',
    description: 'Refused with 409 INVALID_STATE, naming them, while sandboxes restored from it (that are not removed) or snapshots layered on it exist.',
    params: [snapshotNameParam],
    ok: { 204: { description: 'Removed.', bodies: [{ none: true }] } },
    errors: [400, 404, 409],
  },
  {
    method: 'post',
    path: '/v1/templates',
    operationId: 'createTemplate',
    tag: 'templates',
    summary: 'Define a template',
    description:
      'An image, resources and an optional setup command, kept ready as a snapshot: built now with `warm`, else by the first `POST /v1/sandboxes` that names it. A name that is taken is 409 ALREADY_EXISTS.',
    body: { schema: CreateTemplateRequestSchema, required: true },
    ok: { 201: { description: 'Defined (and warm, when asked).', bodies: [{ json: TemplateInfoSchema }] } },
    errors: VM_ERRORS,
  },
  {
    method: 'get',
    path: '/v1/templates',
    operationId: 'listTemplates',
    tag: 'templates',
    summary: 'List templates',
    ok: { 200: { description: 'The templates.', bodies: [{ json: TemplateListSchema }] } },
    errors: [400],
  },
  {
    method: 'get',
    path: '/v1/templates/{name}',
    operationId: 'getTemplate',
    tag: 'templates',
    summary: 'Inspect a template',
    params: [templateNameParam],
    ok: { 200: { description: 'The template.', bodies: [{ json: TemplateInfoSchema }] } },
    errors: [400, 404],
  },
  {
    method: 'delete',
    path: '/v1/templates/{name}',
    operationId: 'deleteTemplate',
    tag: 'templates',
    summary: 'Remove a template',
    description: 'Its snapshot is removed too once no sandbox depends on it.',
    params: [templateNameParam],
    ok: { 204: { description: 'Removed.', bodies: [{ none: true }] } },
    errors: [400, 404, 409],
  },
  {
    method: 'post',
    path: '/v1/templates/{name}/warm',
    operationId: 'warmTemplate',
    tag: 'templates',
    summary: "Build a template's snapshot now (a new one, replacing the one it had)",
    description: 'The snapshot it had is removed once no sandbox restored from it remains.',
    params: [templateNameParam],
    body: { schema: WarmTemplateRequestSchema, required: false },
    ok: { 200: { description: 'Warm: `snapshot` is set.', bodies: [{ json: TemplateInfoSchema }] } },
    errors: VM_ERRORS,
  },
  {
    method: 'get',
    path: '/v1/events',
    operationId: 'streamEvents',
    tag: 'events',
    summary: 'Runtime events as Server-Sent Events',
    description:
      `Each event: \`id:\` (its persisted id), \`event:\` (its type: ${EVENT_TYPES.join(', ')}), \`data:\` (the RoostEvent as JSON). ` +
      'Reconnect with `Last-Event-ID` (or `?after=`) to get every event after that one, then live ones. A comment line every 15 s keeps the stream alive. ' +
      'An `event: error` (data: an Error body) ends a stream that failed.',
    params: [
      { name: 'after', in: 'query', description: 'Replay events with a greater id first.', schema: { type: 'integer', minimum: 0 } },
      { name: 'type', in: 'query', description: 'Comma-separated event types to keep.', schema: { type: 'string' } },
      { name: 'sandbox', in: 'query', description: 'Only events of this sandbox.', schema: { type: 'string' } },
      { name: 'Last-Event-ID', in: 'header', description: 'Resume after this event id (wins over `after`).', schema: { type: 'string', pattern: '^[0-9]+$' } },
    ],
    ok: { 200: { description: 'The event stream.', bodies: [{ sse: RoostEventSchema }] } },
    errors: [400],
  },
  {
    method: 'get',
    path: '/v1/metrics',
    operationId: 'getMetrics',
    tag: 'metrics',
    summary: 'Runtime counters, gauges and per-sandbox figures',
    ok: { 200: { description: 'The metrics.', bodies: [{ json: RuntimeMetricsSchema }] } },
    errors: [],
  },
  {
    method: 'get',
    path: '/metrics',
    operationId: 'getPrometheusMetrics',
    tag: 'metrics',
    summary: 'The metrics in the Prometheus text exposition format',
    ok: { 200: { description: 'Prometheus text format 0.0.4.', bodies: [{ text: 'text/plain' }] } },
    errors: [],
  },
];

/** The error responses, shared by the routes as components (status -> name and meaning). */
const ERROR_RESPONSES: Record<number | 'default', { name: string; description: string }> = {
  400: {
    name: 'InvalidArgument',
    description: 'INVALID_ARGUMENT: invalid JSON, an unknown field, a wrong type, a body over the limit, or a bad parameter (the message names it).',
  },
  401: { name: 'Unauthenticated', description: 'UNAUTHENTICATED: no bearer token, or a wrong one.' },
  403: {
    name: 'PermissionDenied',
    description:
      'PERMISSION_DENIED: the user may not do this (for a file, details carry `errno` and `path`), or the daemon lacks a privilege (a host port below 1024, bridge networking).',
  },
  404: {
    name: 'NotFound',
    description: 'NOT_FOUND: no such sandbox, exec, image, volume, snapshot, template, file or route (for a file, details carry `errno` and `path`).',
  },
  409: { name: 'InvalidState', description: 'INVALID_STATE: not possible in the current state; or ALREADY_EXISTS.' },
  429: { name: 'ResourceExhausted', description: 'RESOURCE_EXHAUSTED: a runtime limit was reached; retry later.' },
  500: { name: 'InternalError', description: 'BOOT_FAILED, VMM or INTERNAL.' },
  502: { name: 'BadGateway', description: 'AGENT, IMAGE or NETWORK: a guest agent or a registry failed.' },
  503: {
    name: 'Unavailable',
    description:
      'UNAVAILABLE: too many requests in flight (see Retry-After), the daemon is shutting down, or a host port to publish is held by another program; or SETUP_REQUIRED.',
  },
  504: { name: 'Timeout', description: 'TIMEOUT.' },
  default: { name: 'Error', description: 'Any other error, with the status of its code.' },
};

const ERROR_REF = { $ref: '#/components/schemas/Error' };

/** JSON Schema of a zod schema: a reference when it is a component, else inline. */
function schemaOf(schema: z.ZodType): JsonSchema {
  const id = z.globalRegistry.get(schema)?.id;
  if (id) return { $ref: `#/components/schemas/${id}` };
  const json = z.toJSONSchema(schema, { target: 'draft-2020-12', io: 'input', unrepresentable: 'any' }) as JsonSchema;
  delete json.$schema;
  if (json.$defs) throw new Error(`openapi: an inline schema refers to other schemas; give it an id (${JSON.stringify(json).slice(0, 80)})`);
  return json;
}

function content(bodies: Body[]): JsonSchema | undefined {
  const out: JsonSchema = {};
  for (const b of bodies) {
    if ('json' in b) out['application/json'] = { schema: schemaOf(b.json) };
    // Each line is one JSON value of the schema (OpenAPI 3.1 has no item schema for sequential media types).
    else if ('ndjson' in b) out['application/x-ndjson'] = { schema: schemaOf(b.ndjson) };
    else if ('sse' in b) out['text/event-stream'] = { schema: { type: 'string' }, 'x-sse-data': schemaOf(b.sse), 'x-sse-error-data': ERROR_REF };
    else if ('text' in b) out[b.text] = { schema: { type: 'string' } };
    else if ('binary' in b) out[b.binary] = { schema: { type: 'string', format: 'binary' } };
  }
  return Object.keys(out).length ? out : undefined;
}

function operation(route: Route): JsonSchema {
  const op: JsonSchema = { operationId: route.operationId, summary: route.summary, tags: [route.tag] };
  if (route.description) op.description = route.description;
  if (route.params) {
    op.parameters = route.params.map((p) => {
      const out: JsonSchema = { name: p.name, in: p.in, description: p.description, schema: p.schema };
      if (p.required) out.required = true;
      if (p.explode) Object.assign(out, { style: 'form', explode: true });
      return out;
    });
  }
  if (route.body) {
    op.requestBody =
      'raw' in route.body
        ? { required: true, description: route.body.raw.description, content: { [route.body.raw.mediaType]: { schema: { type: 'string', format: 'binary' } } } }
        : {
            required: route.body.required,
            description: `At most ${MAX_JSON_BODY} bytes.`,
            content: { 'application/json': { schema: schemaOf(route.body.schema) } },
          };
  }
  const responses: JsonSchema = {};
  for (const [status, r] of Object.entries(route.ok)) {
    const c = content(r.bodies);
    responses[status] = c ? { description: r.description, content: c } : { description: r.description };
  }
  for (const status of [...new Set([...route.errors, 401, 503])].sort()) {
    const r = ERROR_RESPONSES[status];
    if (!r) throw new Error(`openapi: no error response for status ${status}`);
    responses[String(status)] = { $ref: `#/components/responses/${r.name}` };
  }
  responses.default = { $ref: '#/components/responses/Error' };
  op.responses = responses;
  return op;
}

/** Keeps the components that the paths reach (the zod registry may hold other schemas with ids). */
function reachable(components: Record<string, JsonSchema>, roots: unknown): Record<string, JsonSchema> {
  const seen = new Set<string>();
  const visit = (v: unknown): void => {
    if (Array.isArray(v)) return v.forEach(visit);
    if (v === null || typeof v !== 'object') return;
    for (const [k, child] of Object.entries(v)) {
      if (k === '$ref' && typeof child === 'string' && child.startsWith('#/components/schemas/')) {
        const name = child.slice('#/components/schemas/'.length);
        if (seen.has(name)) continue;
        if (!components[name]) throw new Error(`openapi: no component ${name}`);
        seen.add(name);
        visit(components[name]);
      } else visit(child);
    }
  };
  visit(roots);
  return Object.fromEntries([...seen].sort().map((n) => [n, components[n]!]));
}

let cached: JsonSchema | undefined;

/** The OpenAPI 3.1 document of the daemon (built once). */
export function openapiDocument(): JsonSchema {
  if (cached) return cached;
  const generated = z.toJSONSchema(z.globalRegistry, { target: 'draft-2020-12', io: 'input', uri: (id) => `#/components/schemas/${id}` }) as {
    schemas: Record<string, JsonSchema>;
  };
  const components: Record<string, JsonSchema> = {};
  for (const [name, schema] of Object.entries(generated.schemas)) {
    const rest = { ...schema };
    delete rest.$schema;
    delete rest.$id;
    components[name] = rest;
  }
  // The error body is referenced by hand (ERROR_REF): make sure it is the API's.
  if (z.globalRegistry.get(ErrorBodySchema)?.id !== 'Error') throw new Error('openapi: ErrorBodySchema is not the Error component');

  const paths: JsonSchema = {};
  for (const route of ROUTES) {
    const item = (paths[route.path] ??= {}) as JsonSchema;
    item[route.method] = operation(route);
  }
  cached = {
    openapi: '3.1.0',
    info: {
      title: 'Roost API',
      version: VERSION,
      description:
        'The REST API of `roost serve`: sandboxes (microVMs), their networks and published ports, commands in them, files, images, volumes, snapshots and templates, events and metrics. ' +
        'Every request carries `Authorization: Bearer <token>` (the token is in the `api-token` file of the Roost home). ' +
        'Errors are `{ "error": { "code", "message", "details"? } }` with the status of their code.',
      license: { name: 'Apache-2.0', identifier: 'Apache-2.0' },
    },
    servers: [
      {
        url: `http://127.0.0.1:${DEFAULT_TCP_PORT}`,
        description: `roost serve --tcp (the default is a unix socket, roost.sock in the Roost home; API ${API_VERSION})`,
      },
    ],
    security: [{ bearerAuth: [] }],
    tags: [
      { name: 'system' },
      { name: 'sandboxes' },
      { name: 'network' },
      { name: 'execs' },
      { name: 'files' },
      { name: 'images' },
      { name: 'volumes' },
      { name: 'snapshots' },
      { name: 'templates' },
      { name: 'events' },
      { name: 'metrics' },
    ],
    paths,
    components: {
      schemas: reachable(components, [paths, ERROR_REF]),
      responses: Object.fromEntries(
        Object.values(ERROR_RESPONSES).map((r) => [r.name, { description: r.description, content: { 'application/json': { schema: ERROR_REF } } }]),
      ),
      securitySchemes: { bearerAuth: { type: 'http', scheme: 'bearer', description: 'The token in `<ROOST_HOME>/api-token`.' } },
    },
  };
  return cached;
}

/** The document as docs/openapi.json holds it. */
export function openapiJson(): string {
  return JSON.stringify(openapiDocument(), null, 2) + '\n';
}
