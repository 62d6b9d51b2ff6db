import { Readable } from 'node:stream';
import type { ReadableStream as WebReadableStream } from 'node:stream/web';
import { createGunzip } from 'node:zlib';
import { posix } from 'node:path';
import { isRoostError, parseInput, RoostError, type EntryInfo, type FileEvent, type SandboxApi, type WriteData } from '@roost/api';
import { z } from 'zod';
import { ConnectStream } from './connect.js';
import { effectiveUser, guestPath as resolvePath, type GuestProfile } from './profile.js';

/*
 * envd's `filesystem.Filesystem` service (the unary calls, and WatchDir
 * over Roost's files.watch) and its `/files` endpoint (docs/e2b-wire.md §2.5, §3.3-3.4)
 * over Roost's file operations. Relative paths resolve against the user's
 * home, as in E2B (from the guest's /etc/passwd: see ./profile.ts).
 */

/**
 * The most one multipart `/files` upload may carry: a form is read whole
 * before its files are written. An octet-stream upload (the SDK's for
 * streams, gzip and `useOctetStream`) is streamed and has no such bound.
 */
export const MAX_E2B_UPLOAD_BYTES = 256 * 1024 * 1024;

const PathSchema = z.looseObject({ path: z.string().min(1) });
const ListDirSchema = PathSchema.extend({ depth: z.number().int().min(0).max(64).optional() });
const MoveSchema = z.looseObject({ source: z.string().min(1), destination: z.string().min(1) });

const FILE_TYPE: Record<EntryInfo['type'], string> = {
  file: 'FILE_TYPE_FILE',
  dir: 'FILE_TYPE_DIRECTORY',
  symlink: 'FILE_TYPE_SYMLINK',
  other: 'FILE_TYPE_UNSPECIFIED',
};

/** `ls -l`'s permission string of an entry, e.g. `-rw-r--r--`. */
export function permissions(type: EntryInfo['type'], mode: number): string {
  const kind = type === 'dir' ? 'd' : type === 'symlink' ? 'l' : '-';
  let out = kind;
  for (const shift of [6, 3, 0]) {
    const bits = (mode >> shift) & 7;
    out += (bits & 4 ? 'r' : '-') + (bits & 2 ? 'w' : '-') + (bits & 1 ? 'x' : '-');
  }
  return out;
}

/** A Roost entry as envd's EntryInfo, owner and group named from the guest's /etc/passwd and /etc/group (else their ids). */
export function entryInfo(e: EntryInfo, profile?: Pick<GuestProfile, 'userNames' | 'groupNames'>): Record<string, unknown> {
  return {
    name: e.name,
    type: FILE_TYPE[e.type],
    path: e.path,
    size: String(e.size),
    mode: e.mode,
    permissions: permissions(e.type, e.mode),
    owner: profile?.userNames.get(e.uid) ?? (e.uid === 0 ? 'root' : String(e.uid)),
    group: profile?.groupNames.get(e.gid) ?? (e.gid === 0 ? 'root' : String(e.gid)),
    modifiedTime: e.mtime,
    ...(e.symlinkTarget !== undefined ? { symlinkTarget: e.symlinkTarget } : {}),
  };
}

/** Runs one unary Filesystem RPC as `user` (undefined: root). */
export async function filesystemCall(sandbox: SandboxApi, profile: GuestProfile, method: string, message: unknown, user: string | undefined): Promise<object> {
  const files = sandbox.files;
  const as = user ? { user } : {};
  const at = (path: string) => resolvePath(profile, path, user);
  switch (method) {
    case 'Stat': {
      const req = parseInput(PathSchema, message, 'request');
      return { entry: entryInfo(await files.stat(at(req.path), as), profile) };
    }
    case 'ListDir': {
      const req = parseInput(ListDirSchema, message, 'request');
      const entries = await files.list(at(req.path), { ...as, depth: Math.max(1, req.depth ?? 1) });
      return { entries: entries.map((e) => entryInfo(e, profile)) };
    }
    case 'MakeDir': {
      const req = parseInput(PathSchema, message, 'request');
      const path = at(req.path);
      if (!(await files.makeDir(path, as))) throw new RoostError('ALREADY_EXISTS', `directory ${path} already exists`);
      return { entry: entryInfo(await files.stat(path, as), profile) };
    }
    case 'Move': {
      const req = parseInput(MoveSchema, message, 'request');
      return { entry: entryInfo(await files.rename(at(req.source), at(req.destination), as), profile) };
    }
    case 'Remove': {
      const req = parseInput(PathSchema, message, 'request');
      // envd's Remove succeeds when the path is already gone.
      await files.remove(at(req.path), { ...as, recursive: true }).catch((e: unknown) => {
        if (!isRoostError(e, 'NOT_FOUND')) throw e;
      });
      return {};
    }
    default:
      throw new RoostError('INVALID_ARGUMENT', `filesystem.Filesystem/${method} is not served by Roost's E2B face`);
  }
}

const WatchDirSchema = PathSchema.extend({ recursive: z.boolean().optional(), includeEntry: z.boolean().optional() });

const EVENT_TYPE: Record<Exclude<FileEvent['type'], 'overflow'>, string> = {
  create: 'EVENT_TYPE_CREATE',
  write: 'EVENT_TYPE_WRITE',
  remove: 'EVENT_TYPE_REMOVE',
  rename: 'EVENT_TYPE_RENAME',
  chmod: 'EVENT_TYPE_CHMOD',
};

/** What WatchDir needs of the request beyond its message. */
export interface WatchContext {
  /** Connect-Timeout-Ms: the stream ends with deadline_exceeded then (the SDK's default is 60 s). */
  timeoutMs: number | undefined;
  /** A keepalive event after this long without one. */
  keepaliveMs: number | undefined;
}

/**
 * `WatchDir`: a stream of the directory's changes, `start` first (once the
 * watch is in place), then one `filesystem` event per change, named
 * relative to the directory. As fsnotify (envd's watcher) reports a move,
 * a rename is the old name's RENAME and the new name's CREATE. Lost events
 * (the guest's inotify queue overflowed) end the stream with an error
 * rather than leave the watcher silently incomplete.
 */
export async function watchDir(sandbox: SandboxApi, profile: GuestProfile, message: unknown, user: string | undefined, ctx: WatchContext): Promise<Response> {
  const req = parseInput(WatchDirSchema, message, 'request');
  const dir = resolvePath(profile, req.path, user);
  const as = user ? { user } : {};
  const st = await sandbox.files.stat(dir, as);
  if (st.type !== 'dir') throw new RoostError('INVALID_ARGUMENT', `path ${dir} is not a directory`);
  const watch = await sandbox.files.watch(dir, { ...as, recursive: req.recursive ?? false });
  const stream = new ConnectStream(() => void watch.close());
  stream.send({ start: {} });
  const timers: NodeJS.Timeout[] = [];
  if (ctx.keepaliveMs) timers.push(setInterval(() => stream.send({ keepalive: {} }), ctx.keepaliveMs));
  let pastDeadline = false;
  if (ctx.timeoutMs)
    timers.push(
      setTimeout(() => {
        pastDeadline = true;
        void watch.close();
      }, ctx.timeoutMs),
    );
  for (const t of timers) t.unref();
  const emit = async (type: string, path: string, entryOf: boolean) => {
    let entry: Record<string, unknown> | undefined;
    // The entry is read after the event: it may be gone (or changed) by then.
    if (req.includeEntry && entryOf)
      entry = await sandbox.files.stat(path, as).then(
        (e) => entryInfo(e, profile),
        () => undefined,
      );
    stream.send({ filesystem: { name: posix.relative(dir, path), type, ...(entry ? { entry } : {}) } });
  };
  void (async () => {
    let failure: unknown;
    try {
      for await (const e of watch) {
        if (!stream.open) break;
        if (e.type === 'overflow')
          throw new RoostError('RESOURCE_EXHAUSTED', `too many changes under ${dir} at once: events were lost (the guest's inotify queue overflowed)`);
        if (e.type === 'rename') {
          if (e.oldPath !== undefined) await emit(EVENT_TYPE.rename, e.oldPath, false);
          await emit(EVENT_TYPE.create, e.path, true);
        } else await emit(EVENT_TYPE[e.type], e.path, e.type !== 'remove');
      }
    } catch (e) {
      failure = e;
    } finally {
      for (const t of timers) clearTimeout(t);
      await watch.close().catch(() => {});
    }
    stream.end(failure ?? (pastDeadline ? new RoostError('TIMEOUT', 'the watch reached its deadline (Connect-Timeout-Ms)') : undefined));
  })();
  return stream.response;
}

/** `GET /files?path=&username=`: a file's bytes, streamed (as `username`, else the template's default user). */
export async function readFile(sandbox: SandboxApi, profile: GuestProfile, url: URL): Promise<Response> {
  const user = effectiveUser(profile, url.searchParams.get('username') || undefined);
  const path = url.searchParams.get('path');
  if (!path) throw new RoostError('INVALID_ARGUMENT', 'path: required');
  const stream = await sandbox.files.read(resolvePath(profile, path, user), { format: 'stream', ...(user ? { user } : {}) });
  // The first chunk is awaited, so that a missing file or a denied read is an error status, not a broken body.
  const it = stream[Symbol.asyncIterator]();
  const first = await it.next();
  const body = new ReadableStream<Uint8Array>({
    start(controller) {
      if (first.done) controller.close();
      else controller.enqueue(first.value);
    },
    async pull(controller) {
      const next = await it.next();
      if (next.done) controller.close();
      else controller.enqueue(next.value);
    },
    async cancel() {
      await it.return?.();
    },
  });
  return new Response(first.done ? null : body, { status: 200, headers: { 'content-type': 'application/octet-stream' } });
}

/**
 * `POST /files`: one octet-stream body (gzip too), streamed into the guest,
 * or multipart (one `file` part per file, named by its full path), which is
 * read whole first and bounded by MAX_E2B_UPLOAD_BYTES.
 */
export async function writeFiles(sandbox: SandboxApi, profile: GuestProfile, req: Request, url: URL): Promise<Response> {
  const user = effectiveUser(profile, url.searchParams.get('username') || undefined);
  const queryPath = url.searchParams.get('path') || undefined;
  const as = user ? { user } : {};
  const type = req.headers.get('content-type') ?? '';
  for (const name of req.headers.keys())
    if (name.startsWith('x-metadata-'))
      throw new RoostError('INVALID_ARGUMENT', `file metadata (${name}) is not kept by Roost's E2B face: write without \`metadata\``);
  const written: { name: string; type: 'file'; path: string }[] = [];
  const write = async (path: string, data: WriteData) => {
    const info = await sandbox.files.write(resolvePath(profile, path, user), data, as);
    written.push({ name: info.name, type: 'file', path: info.path });
  };
  if (type.startsWith('multipart/form-data')) {
    const form = await readForm(req, MAX_E2B_UPLOAD_BYTES);
    const parts = form.getAll('file');
    if (parts.length === 0) throw new RoostError('INVALID_ARGUMENT', 'no `file` part in the form');
    const seen = new Set<string>();
    for (const part of parts) {
      if (typeof part === 'string') throw new RoostError('INVALID_ARGUMENT', 'a `file` part is not a file');
      // One file: the query names it; several: each part's file name is its full path.
      const path = parts.length === 1 && queryPath ? queryPath : part.name;
      if (!path) throw new RoostError('INVALID_ARGUMENT', 'a `file` part has no file name (its destination path)');
      if (seen.has(path)) throw new RoostError('INVALID_ARGUMENT', `${path} is given twice`);
      seen.add(path);
      await write(path, new Uint8Array(await part.arrayBuffer()));
    }
  } else if (type.startsWith('application/octet-stream') || type === '') {
    if (!queryPath) throw new RoostError('INVALID_ARGUMENT', 'path: required for an octet-stream upload');
    const body = Readable.fromWeb((req.body ?? new ReadableStream()) as WebReadableStream<Uint8Array>);
    const gzip = (req.headers.get('content-encoding') ?? '').toLowerCase() === 'gzip';
    // Streamed: the file replaces the old one only once all of it arrived (files.write), and the guest's disk bounds it.
    await write(queryPath, gzip ? gunzipped(body) : body);
  } else {
    throw new RoostError('INVALID_ARGUMENT', `Content-Type ${type} is not multipart/form-data or application/octet-stream`);
  }
  return Response.json(written);
}

/** A gzip stream's content; a body that is not gzip fails the write with INVALID_ARGUMENT. */
async function* gunzipped(body: Readable): AsyncGenerator<Uint8Array> {
  const gunzip = createGunzip();
  const out = body.pipe(gunzip);
  body.once('error', (e) => gunzip.destroy(e));
  try {
    for await (const chunk of out) yield chunk as Uint8Array;
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code?.startsWith('Z_')) throw new RoostError('INVALID_ARGUMENT', `the body is not gzip: ${(e as Error).message}`);
    throw e;
  }
}

/**
 * A multipart body as a form, refused (RESOURCE_EXHAUSTED) past `maxBytes`:
 * by its Content-Length at once, else as it arrives (a chunked body has none).
 */
export async function readForm(req: Request, maxBytes: number): Promise<FormData> {
  if (Number(req.headers.get('content-length') ?? NaN) > maxBytes) throw tooLarge(maxBytes);
  let total = 0;
  let exceeded = false;
  const bounded = (req.body ?? new ReadableStream<Uint8Array>()).pipeThrough(
    new TransformStream<Uint8Array, Uint8Array>({
      transform(chunk, controller) {
        total += chunk.byteLength;
        if (total > maxBytes) {
          exceeded = true;
          controller.error(tooLarge(maxBytes));
        } else controller.enqueue(chunk);
      },
    }),
  );
  try {
    return await new Response(bounded, { headers: { 'content-type': req.headers.get('content-type') ?? '' } }).formData();
  } catch (e) {
    if (exceeded) throw tooLarge(maxBytes);
    throw new RoostError('INVALID_ARGUMENT', `the body is not a multipart form: ${e instanceof Error ? e.message : String(e)}`);
  }
}

function tooLarge(maxBytes = MAX_E2B_UPLOAD_BYTES): RoostError {
  return new RoostError(
    'RESOURCE_EXHAUSTED',
    `a multipart upload through E2B's /files may carry at most ${maxBytes} bytes (send large files as one octet-stream body)`,
    { details: { maxBytes } },
  );
}
