import { z } from 'zod';
import { RoostError } from './errors.js';
import { EntryInfoSchema, WriteInfoSchema } from './files.js';
import { MAX_COMMAND_TIMEOUT_MS } from './limits.js';
import { PortBindingSchema, PortSpecSchema } from './network.js';
import { CommandOptionsSchema, CreateSandboxRequestSchema, ImageInfoSchema, SandboxInfoSchema, SandboxStatusSchema } from './schemas.js';
import { ForkRequestSchema, SnapshotInfoSchema } from './snapshots.js';

/*
 * The MCP face's contract: the input and output of every tool, as zod
 * schemas built from the REST API's (so a limit set there holds here), and
 * the limits of a session. The server (packages/server/src/mcp) turns them
 * into the tools' JSON Schemas and parses every call with them.
 */

/** The label every sandbox an MCP session makes carries, valued with the session's id. */
export const MCP_SESSION_LABEL = 'roost.mcp/session';
/** Bytes of each of stdout and stderr a `sandbox_exec` result holds by default (the rest is counted, not kept). */
export const DEFAULT_MCP_OUTPUT_LIMIT = 64 * 1024;
/** Bytes `sandbox_read_file` (and a file resource) returns by default; a larger file is RESOURCE_EXHAUSTED. */
export const DEFAULT_MCP_READ_LIMIT = 1024 * 1024;
/** Sandboxes one session may have alive at once by default (those made with `keep` not counted). */
export const DEFAULT_MCP_MAX_SANDBOXES = 8;
/** How long an HTTP session may go without a request before it ends, with its sandboxes (ms). */
export const DEFAULT_MCP_SESSION_IDLE_MS = 30 * 60_000;

/** A session's limits (`roost mcp` flags, `roost serve` flags, or the environment). */
export interface McpLimits {
  /** Bytes of stdout and of stderr a `sandbox_exec` result holds (DEFAULT_MCP_OUTPUT_LIMIT). */
  outputBytes: number;
  /** Bytes a file read returns at most (DEFAULT_MCP_READ_LIMIT). */
  readBytes: number;
  /** Sandboxes a session may have alive at once, `keep` ones aside (DEFAULT_MCP_MAX_SANDBOXES). */
  maxSandboxes: number;
}

const id = z.string().min(1).describe('The sandbox id (or a unique prefix of it), as sandbox_create or sandbox_list returned it.');
const path = z.string().min(1).describe('An absolute path in the sandbox, e.g. /root/main.py.');
const byId = { id };

const create = CreateSandboxRequestSchema.pick({
  image: true,
  template: true,
  snapshot: true,
  pool: true,
  cpus: true,
  memoryMiB: true,
  diskSizeMiB: true,
  env: true,
  labels: true,
  network: true,
  ports: true,
  egress: true,
  timeoutMs: true,
  lifetimeMs: true,
  onExpiry: true,
});

/** The tools' inputs, by tool name. */
export const McpToolInputs = {
  sandbox_create: create
    .extend({
      image: create.shape.image.describe('An OCI image reference (pulled when missing), e.g. python:3.12-slim. Default: the built-in minimal Linux.'),
      template: create.shape.template.describe('Start from this template (a warm snapshot of a prepared sandbox) instead of an image.'),
      snapshot: create.shape.snapshot.describe('Restore this snapshot (name or id): memory, processes and disk as they were.'),
      pool: create.shape.pool.describe('Take a ready sandbox from this warm pool (a hand-over of a few ms; restored from its source when the pool is empty).'),
      timeoutMs: create.shape.timeoutMs.describe('How long booting may take (ms).'),
      keep: z
        .boolean()
        .optional()
        .describe(
          'Keep the sandbox after this MCP session ends (default false: it is removed with the session). Kept sandboxes do not count against the session limit.',
        ),
    })
    .strict(),
  sandbox_list: z
    .object({
      status: z.array(SandboxStatusSchema).optional().describe('Only sandboxes in these states (default: all).'),
      labels: z.array(z.string().min(1)).optional().describe('Only sandboxes with these labels: `key` (present) or `key=value`.'),
      mine: z.boolean().optional().describe('Only the sandboxes this session made (default false: every sandbox of the runtime).'),
    })
    .strict(),
  sandbox_get: z.object(byId).strict(),
  sandbox_stop: z.object(byId).strict(),
  sandbox_remove: z.object(byId).strict(),
  sandbox_exec: z
    .object({
      id,
      command: z
        .union([z.string().min(1), z.array(z.string()).min(1)], {
          error: (issue) =>
            issue.input === undefined ? 'required: a shell command line, or an argv array' : 'must be a non-empty string or a non-empty array of strings',
        })
        .describe('A shell command line (run with /bin/sh -c), or an argv array run without a shell.'),
      args: CommandOptionsSchema.shape.args.describe('Arguments: with them, `command` is the program itself and no shell is involved.'),
      cwd: CommandOptionsSchema.shape.cwd.describe('Working directory (default: the image’s, else /).'),
      env: CommandOptionsSchema.shape.env.describe('Environment variables, added to the sandbox’s.'),
      user: CommandOptionsSchema.shape.user.describe('A user name, uid, uid:gid or name:group (default: the image’s user, else root).'),
      stdin: z.string().optional().describe('Text written to the command’s standard input, which is then closed (default: empty).'),
      timeoutMs: z
        .number()
        .int()
        .positive()
        .max(MAX_COMMAND_TIMEOUT_MS)
        .optional()
        .describe('Kill the command after this long (ms); the result is then a TIMEOUT error with the output so far.'),
    })
    .strict(),
  sandbox_write_file: z
    .object({
      id,
      path,
      content: z.string().describe('The whole file: text, or base64 with encoding "base64" (binary files).'),
      encoding: z.enum(['utf8', 'base64']).optional().describe('How `content` is encoded (default utf8).'),
      mode: z.number().int().min(0).max(0o7777).optional().describe('Permission bits, e.g. 493 for 0755 (default: the replaced file’s, else 0644).'),
    })
    .strict(),
  sandbox_read_file: z
    .object({
      id,
      path,
      encoding: z
        .enum(['utf8', 'base64'])
        .optional()
        .describe('utf8 for text, base64 for bytes (default: utf8 when the file is valid UTF-8 text, else base64).'),
    })
    .strict(),
  sandbox_list_files: z
    .object({
      id,
      path,
      depth: z.number().int().min(1).max(16).optional().describe('Levels below `path` to list (default 1).'),
    })
    .strict(),
  sandbox_remove_file: z
    .object({
      id,
      path,
      recursive: z.boolean().optional().describe('Remove a directory with everything below it (default true).'),
    })
    .strict(),
  sandbox_snapshot: z
    .object({
      id,
      name: z
        .string()
        .min(1)
        .optional()
        .describe('A name for the snapshot (default: its id); restore it with sandbox_create { snapshot }. The snapshot outlives the session.'),
    })
    .strict(),
  sandbox_fork: z
    .object({
      id,
      count: ForkRequestSchema.shape.count.describe('How many copies (default 1).'),
      volumes: ForkRequestSchema.shape.volumes.describe(
        "The sandbox's volumes in the copies: 'shared' (default, the same files) or 'copy' (each copy gets its own copies, kept as named volumes).",
      ),
      keep: z.boolean().optional().describe('Keep the copies after this MCP session ends (default false).'),
    })
    .strict(),
  sandbox_pause: z.object(byId).strict(),
  sandbox_resume: z.object(byId).strict(),
  sandbox_logs: z
    .object({
      id,
      tail: z.number().int().min(1).max(10_000).optional().describe('Only the last lines (default: the whole log, capped).'),
    })
    .strict(),
  sandbox_publish_port: z
    .object({
      id,
      port: PortSpecSchema.describe('`8080:80` (host 8080 to guest 80), `80` (a free host port), `127.0.0.1:8080:80/udp`, or an object.'),
    })
    .strict(),
  image_pull: z.object({ reference: z.string().min(1).describe('An OCI image reference, e.g. alpine:3.20.') }).strict(),
  image_list: z.object({}).strict(),
} as const;

const removed = z.object({ id: z.string(), removed: z.literal(true) });

/** The tools' outputs (their `structuredContent`), by tool name. */
export const McpToolOutputs = {
  sandbox_create: SandboxInfoSchema,
  sandbox_list: z.object({ sandboxes: z.array(SandboxInfoSchema) }),
  sandbox_get: SandboxInfoSchema,
  sandbox_stop: SandboxInfoSchema,
  sandbox_remove: removed,
  sandbox_exec: z.object({
    exitCode: z.number().int().describe('The exit status; 128 + n when signal n ended it.'),
    signal: z.string().nullable(),
    stdout: z.string(),
    stderr: z.string(),
    truncated: z.boolean().describe('True when stdout or stderr was longer than the limit and was cut.'),
    stdoutBytes: z.number().int().nonnegative().describe('The full size of stdout.'),
    stderrBytes: z.number().int().nonnegative().describe('The full size of stderr.'),
  }),
  sandbox_write_file: WriteInfoSchema,
  sandbox_read_file: z.object({
    path: z.string(),
    content: z.string(),
    encoding: z.enum(['utf8', 'base64']),
    size: z.number().int().nonnegative(),
  }),
  sandbox_list_files: z.object({ entries: z.array(EntryInfoSchema) }),
  sandbox_remove_file: z.object({ path: z.string(), removed: z.literal(true) }),
  sandbox_snapshot: SnapshotInfoSchema,
  sandbox_fork: z.object({ sandboxes: z.array(SandboxInfoSchema) }),
  sandbox_pause: SandboxInfoSchema,
  sandbox_resume: SandboxInfoSchema,
  sandbox_logs: z.object({ id: z.string(), text: z.string(), truncated: z.boolean() }),
  sandbox_publish_port: PortBindingSchema.extend({ address: z.string().describe('host:port where the host reaches the guest port.') }),
  image_pull: ImageInfoSchema,
  image_list: z.object({ images: z.array(ImageInfoSchema) }),
} satisfies Record<keyof typeof McpToolInputs, z.ZodType>;

/** The name of an MCP tool of Roost. */
export type McpToolName = keyof typeof McpToolInputs;
export type McpToolInput<T extends McpToolName> = z.infer<(typeof McpToolInputs)[T]>;
export type McpToolOutput<T extends McpToolName> = z.infer<(typeof McpToolOutputs)[T]>;

/** What a deployment may set of the MCP limits (flags, options), and the session idle time. */
export interface McpSettings extends Partial<McpLimits> {
  /** HTTP sessions without a request for this long end (ms; DEFAULT_MCP_SESSION_IDLE_MS). */
  sessionIdleMs?: number;
}

const MCP_ENV: Record<keyof McpSettings, string> = {
  outputBytes: 'ROOST_MCP_OUTPUT_LIMIT',
  readBytes: 'ROOST_MCP_READ_LIMIT',
  maxSandboxes: 'ROOST_MCP_MAX_SANDBOXES',
  sessionIdleMs: 'ROOST_MCP_SESSION_IDLE_MS',
};

/**
 * The MCP limits: each from `settings`, else its environment variable
 * (ROOST_MCP_OUTPUT_LIMIT, ROOST_MCP_READ_LIMIT, ROOST_MCP_MAX_SANDBOXES,
 * ROOST_MCP_SESSION_IDLE_MS), else its default. INVALID_ARGUMENT for a value
 * that is not a positive whole number.
 */
export function mcpSettings(settings: McpSettings = {}, env: NodeJS.ProcessEnv = process.env): Required<McpSettings> {
  const pick = (key: keyof McpSettings, fallback: number): number => {
    const given = settings[key];
    const raw = given ?? (env[MCP_ENV[key]]?.trim() ? Number(env[MCP_ENV[key]]) : undefined);
    const value = raw ?? fallback;
    if (!Number.isSafeInteger(value) || value < 1) {
      const from = given !== undefined ? key : MCP_ENV[key];
      throw new RoostError('INVALID_ARGUMENT', `${from} must be a positive whole number, not ${String(given ?? env[MCP_ENV[key]])}`, {
        details: { field: key },
      });
    }
    return value;
  };
  return {
    outputBytes: pick('outputBytes', DEFAULT_MCP_OUTPUT_LIMIT),
    readBytes: pick('readBytes', DEFAULT_MCP_READ_LIMIT),
    maxSandboxes: pick('maxSandboxes', DEFAULT_MCP_MAX_SANDBOXES),
    sessionIdleMs: pick('sessionIdleMs', DEFAULT_MCP_SESSION_IDLE_MS),
  };
}
