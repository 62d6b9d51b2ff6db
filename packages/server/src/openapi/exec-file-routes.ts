import {
  EntryInfoSchema,
  EntryListSchema,
  ExecEventSchema,
  ExecRequestSchema,
  ExecResultSchema,
  FileWatchLineSchema,
  MakeDirRequestSchema,
  MakeDirResultSchema,
  RenameRequestSchema,
  ResizeRequestSchema,
  SignalRequestSchema,
  WriteInfoSchema,
} from '@roost/api';
import { idParam, type Param, type Route } from './route.js';

/*
 * The routes that reach into a running sandbox: commands (exec and the
 * stdin, signal and resize of one) and files.
 */

const execIdParam: Param = {
  name: 'execId',
  in: 'path',
  required: true,
  description: 'The `execId` of the `started` line of the exec stream.',
  schema: { type: 'string' },
};

const pathQuery = (what: string): Param => ({ name: 'path', in: 'query', required: true, description: what, schema: { type: 'string', minLength: 1 } });
const userQuery: Param = {
  name: 'user',
  in: 'query',
  description: "Act as this user: a name, a uid, `uid:gid` or `name:group` (default: the sandbox's user).",
  schema: { type: 'string', minLength: 1 },
};
const maxBytesQuery: Param = {
  name: 'maxBytes',
  in: 'query',
  description:
    "The most bytes the guest may send (default: the sandbox's disk size). More is `RESOURCE_EXHAUSTED`: before the first byte an error response, after it the error trailer.",
  schema: { type: 'integer', minimum: 1, maximum: Number.MAX_SAFE_INTEGER },
};
const FILE_ERRORS = [400, 403, 404, 409, 429, 502, 507];
const TRAILER_NOTE =
  'Errors before the first byte are ordinary error responses. A failure after it, for a client that sent `TE: trailers`, ends the body with the `Roost-Error` trailer ' +
  "(announced in a `Trailer` header) whose value is the JSON of an error body's `error`; for other clients it breaks the connection. A body that ends cleanly without that trailer is complete.";

/** Exec and file routes, in the order the document lists them. */
export const EXEC_AND_FILE_ROUTES: readonly Route[] = [
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
    params: [idParam, pathQuery('The file (a guest path; relative to `/`).'), userQuery, maxBytesQuery],
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
    params: [idParam, pathQuery('The file or directory.'), userQuery, maxBytesQuery],
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
];
