import { z } from 'zod';
import { RoostError } from './errors.js';
import { MAX_FILE_MODE } from './limits.js';
import { CommandOptionsSchema, CreateSandboxRequestSchema } from './schemas.js';
import { CreateSnapshotRequestSchema, ForkRequestSchema } from './snapshots.js';

/*
 * The inputs of calls (as opposed to request bodies): the wire schemas
 * extended with what only a call carries (signals, callbacks, streams).
 * Core parses every call with these; the client checks early with the same
 * objects before anything goes on the wire.
 */

const signalSchema = z.instanceof(AbortSignal);
const callbackSchema = z.function();

/** `runtime.create(options)`: the request body, a signal, and the pull's progress callback. */
export const CreateOptionsSchema = CreateSandboxRequestSchema.extend({
  signal: signalSchema.optional(),
  /** Progress of the image pull, per blob (see PullProgress). */
  onPullProgress: callbackSchema.optional(),
}).strict();

/** `sandbox.snapshot(options)`: the request body and a signal. */
export const SnapshotOptionsSchema = CreateSnapshotRequestSchema.extend({ signal: signalSchema.optional() }).strict();

/** `sandbox.fork(options)`: the request body and a signal. */
export const ForkOptionsSchema = ForkRequestSchema.extend({ signal: signalSchema.optional() }).strict();

/** `images.pull(reference, options)`: a signal and the progress callback (the reference is PullRequestSchema's). */
export const PullImageOptionsSchema = z.object({ onProgress: callbackSchema.optional(), signal: signalSchema.optional() }).strict();

/** `images.remove(reference, options)`. */
export const RemoveImageOptionsSchema = z.object({ force: z.boolean().optional() }).strict();

const isStdin = (v: unknown): boolean =>
  typeof v === 'string' || typeof v === 'boolean' || v instanceof Uint8Array || (typeof v === 'object' && v !== null && Symbol.asyncIterator in v);

/** `commands.run` / `commands.start` options (see RunOptions). */
export const RunOptionsSchema = CommandOptionsSchema.extend({
  stdin: z.custom<unknown>(isStdin, 'must be a string, bytes, an async iterable or true').optional(),
  onStdout: callbackSchema.optional(),
  onStderr: callbackSchema.optional(),
  signal: signalSchema.optional(),
}).strict();

// ---- file operations (`sandbox.files`) ------------------------------------------

/** A guest path operand of a file operation (relative ones resolve against `/`). */
export const GuestPathSchema = z
  .string({ error: 'must be a string' })
  .min(1, 'must be a non-empty path')
  .refine((p) => !p.includes('\0'), 'must not contain a NUL byte');

/** A user name, a uid, `uid:gid` or `name:group`. */
export const FileUserSchema = z.union([
  z
    .string()
    .min(1, 'must be a non-empty user name or id')
    .refine((u) => !u.includes('\0'), 'must not contain a NUL byte'),
  z.number().int().nonnegative(),
]);
const fileMode = z.number().int().min(0).max(MAX_FILE_MODE);
const fileBase = { user: FileUserSchema.optional(), signal: signalSchema.optional() };

/** Options every file operation takes (readArchive, writeArchive, exists). */
export const FileOptionsSchema = z.object(fileBase).strict();
/** A read's bound on what the guest may send (`maxBytes`): a positive whole number of bytes. */
const maxBytes = z.number().int().positive().max(Number.MAX_SAFE_INTEGER);
export const ReadOptionsSchema = z.object({ ...fileBase, format: z.enum(['text', 'bytes', 'stream']).optional(), maxBytes: maxBytes.optional() }).strict();
/** Options of `readArchive`: those of every operation, and `maxBytes`. */
export const ReadArchiveOptionsSchema = z.object({ ...fileBase, maxBytes: maxBytes.optional() }).strict();
export const WriteOptionsSchema = z.object({ ...fileBase, mode: fileMode.optional(), noReplace: z.boolean().optional() }).strict();
export const ListOptionsSchema = z.object({ ...fileBase, depth: z.number().int().min(1).max(0xffffffff).optional() }).strict();
export const StatOptionsSchema = z.object({ ...fileBase, follow: z.boolean().optional() }).strict();
export const MakeDirOptionsSchema = z.object({ ...fileBase, mode: fileMode.optional() }).strict();
export const RemoveOptionsSchema = z.object({ ...fileBase, recursive: z.boolean().optional() }).strict();
export const RenameOptionsSchema = z.object({ ...fileBase, noReplace: z.boolean().optional() }).strict();
export const WatchOptionsSchema = z.object({ ...fileBase, recursive: z.boolean().optional() }).strict();

/**
 * Validates a call's input with its schema; on failure throws
 * INVALID_ARGUMENT naming every offending field (`memoryMiB: must be at
 * least 64`), with the fields in `details.fields`.
 */
export function parseInput<T extends z.ZodType>(schema: T, value: unknown, what: string): z.infer<T> {
  const r = schema.safeParse(value ?? {});
  if (r.success) return r.data;
  const problems = r.error.issues.map((i) => {
    const field = i.path.length > 0 ? i.path.join('.') : i.code === 'unrecognized_keys' ? (i as { keys: string[] }).keys.join(', ') : what;
    return `${field}: ${i.message}`;
  });
  throw new RoostError('INVALID_ARGUMENT', `invalid ${what}: ${problems.join('; ')}`, {
    details: { fields: r.error.issues.map((i) => ({ path: i.path.join('.'), message: i.message })) },
  });
}
