import {
  isRoostError,
  MCP_SESSION_LABEL,
  RoostError,
  type CommandHandleApi,
  type McpToolInput,
  type McpToolName,
  type McpToolOutput,
  type SandboxApi,
  type SandboxInfo,
} from '@roost/api';
import type { McpSession } from './session.js';

/*
 * Roost's MCP tools: each one parses nothing itself (the server parses the
 * input with McpToolInputs) and calls the runtime's contract, as a REST
 * route does. Descriptions are written for an agent choosing a tool.
 */

/** What a tool call has besides its input. */
export interface ToolCall {
  session: McpSession;
  /** Aborts when the client cancels the request, or the session ends. */
  signal: AbortSignal;
  /** Sends a progress notification, when the client asked for them (a progress token); else null. */
  progress: ((message: string) => Promise<void>) | null;
}

/** MCP tool annotations (hints for the client). */
export interface Annotations {
  readOnlyHint: boolean;
  destructiveHint: boolean;
  idempotentHint: boolean;
  openWorldHint: boolean;
}

/** One tool: what the client is told, and what it does with its parsed input. */
export interface ToolDef<Input, Output> {
  title: string;
  description: string;
  annotations: Annotations;
  run(input: Input, call: ToolCall): Promise<Output>;
}

/** Reads only. */
export const readOnly: Annotations = { readOnlyHint: true, destructiveHint: false, idempotentHint: true, openWorldHint: false };
/** Changes state, adds without destroying, a repeat does it again. */
export const additive: Annotations = { readOnlyHint: false, destructiveHint: false, idempotentHint: false, openWorldHint: false };
/** Changes state in a way a repeat leaves as it is. */
export const settles = (destructive: boolean): Annotations => ({
  readOnlyHint: false,
  destructiveHint: destructive,
  idempotentHint: true,
  openWorldHint: false,
});

/** The `run` of a tool that makes one lifecycle call on a sandbox and returns its record, fresh. */
function lifecycle(act: (sandbox: SandboxApi) => Promise<void>) {
  return async (input: { id: string }, call: ToolCall): Promise<SandboxInfo> => {
    const sandbox = await call.session.runtime.get(input.id);
    await act(sandbox);
    return sandbox.refresh();
  };
}

/** The first `limit` bytes of a stream's text, and its whole size. */
class CappedOutput {
  readonly #decoder = new TextDecoder();
  #text = '';
  #kept = 0;
  bytes = 0;

  constructor(readonly limit: number) {}

  push(chunk: Uint8Array): void {
    this.bytes += chunk.byteLength;
    if (this.#kept >= this.limit) return;
    const part = chunk.byteLength <= this.limit - this.#kept ? chunk : chunk.subarray(0, this.limit - this.#kept);
    this.#kept += part.byteLength;
    this.#text += this.#decoder.decode(part, { stream: true });
  }

  get truncated(): boolean {
    return this.bytes > this.#kept;
  }

  text(): string {
    // A character cut at the limit is dropped, not shown half.
    return this.#text + (this.truncated ? '' : this.#decoder.decode());
  }
}

/** Output text of a progress notification, at most this many characters of a chunk. */
const PROGRESS_CHUNK_CHARS = 4096;

async function exec(input: McpToolInput<'sandbox_exec'>, call: ToolCall): Promise<McpToolOutput<'sandbox_exec'>> {
  const { limits, runtime } = call.session;
  const sandbox = await runtime.get(input.id);
  const stdout = new CappedOutput(limits.outputBytes);
  const stderr = new CappedOutput(limits.outputBytes);
  const handle: CommandHandleApi = await sandbox.commands.start(input.command, {
    ...(input.args ? { args: input.args } : {}),
    ...(input.cwd ? { cwd: input.cwd } : {}),
    ...(input.env ? { env: input.env } : {}),
    ...(input.user !== undefined ? { user: input.user } : {}),
    ...(input.stdin !== undefined ? { stdin: input.stdin } : {}),
    ...(input.timeoutMs ? { timeoutMs: input.timeoutMs } : {}),
    signal: call.signal,
  });
  // A cancelled call kills the command (the start's signal covers the start only on some faces).
  const kill = () => handle.kill('SIGKILL');
  call.signal.addEventListener('abort', kill, { once: true });
  if (call.signal.aborted) kill(); // cancelled while it was starting
  const pump = async (from: AsyncIterable<Uint8Array>, into: CappedOutput, name: 'stdout' | 'stderr') => {
    const decoder = new TextDecoder();
    for await (const chunk of from) {
      into.push(chunk);
      if (call.progress) {
        const text = decoder.decode(chunk, { stream: true });
        await call.progress(`${name}: ${text.length > PROGRESS_CHUNK_CHARS ? `${text.slice(0, PROGRESS_CHUNK_CHARS)}…` : text}`).catch(() => {});
      }
    }
  };
  try {
    const pumped = Promise.all([pump(handle.stdout, stdout, 'stdout'), pump(handle.stderr, stderr, 'stderr')]);
    let result;
    try {
      result = await handle.wait();
    } finally {
      await pumped.catch(() => {});
    }
    return {
      exitCode: result.exitCode,
      signal: result.signal,
      stdout: stdout.text(),
      stderr: stderr.text(),
      truncated: stdout.truncated || stderr.truncated,
      stdoutBytes: stdout.bytes,
      stderrBytes: stderr.bytes,
    };
  } catch (e) {
    if (!isRoostError(e)) throw e;
    // What it printed before a timeout is what an agent needs to see why.
    const tail = (name: string, o: CappedOutput) => (o.bytes ? `\n--- ${name} (${o.bytes} bytes${o.truncated ? ', cut' : ''}) ---\n${o.text()}` : '');
    throw new RoostError(e.code, `${e.message}${tail('stdout', stdout)}${tail('stderr', stderr)}`, { cause: e, ...(e.details ? { details: e.details } : {}) });
  } finally {
    call.signal.removeEventListener('abort', kill);
  }
}

/** The bytes of `content` as `encoding` says; INVALID_ARGUMENT for base64 that is not. */
function decodeContent(content: string, encoding: 'utf8' | 'base64'): Buffer {
  if (encoding === 'utf8') return Buffer.from(content, 'utf8');
  const clean = content.replace(/\s+/g, '');
  if (!/^[A-Za-z0-9+/]*={0,2}$/.test(clean) || clean.length % 4 === 1) {
    throw new RoostError('INVALID_ARGUMENT', 'content: not valid base64 (with encoding "base64", content must be the base64 of the bytes)', {
      details: { field: 'content' },
    });
  }
  return Buffer.from(clean, 'base64');
}

/** A file's bytes as text when they are UTF-8 (or `encoding` asks for it), else base64. */
export function encodeContent(bytes: Uint8Array, path: string, encoding?: 'utf8' | 'base64'): { content: string; encoding: 'utf8' | 'base64' } {
  if (encoding !== 'base64') {
    try {
      return { content: new TextDecoder('utf-8', { fatal: true }).decode(bytes), encoding: 'utf8' };
    } catch {
      if (encoding === 'utf8') {
        throw new RoostError('INVALID_ARGUMENT', `${path} is not UTF-8 text: read it with encoding "base64"`, { details: { field: 'encoding', path } });
      }
    }
  }
  return { content: Buffer.from(bytes).toString('base64'), encoding: 'base64' };
}

/** Reads a file for an agent: at most `limit` bytes, else a RESOURCE_EXHAUSTED that says what to do instead. */
export async function readCapped(sandbox: SandboxApi, path: string, limit: number, signal?: AbortSignal): Promise<Uint8Array> {
  try {
    return await sandbox.files.read(path, { format: 'bytes', maxBytes: limit, ...(signal ? { signal } : {}) });
  } catch (e) {
    if (!isRoostError(e, 'RESOURCE_EXHAUSTED') || e.details?.maxBytes === undefined) throw e;
    throw new RoostError(
      'RESOURCE_EXHAUSTED',
      `${path} is larger than the ${limit} bytes a read returns here: read a part of it with sandbox_exec (head -c, tail -c, sed -n), or copy it out with the roost CLI`,
      { cause: e, details: { path, maxBytes: limit } },
    );
  }
}

/** Roost's tools, by name. */
export const TOOLS: { [N in McpToolName]: ToolDef<McpToolInput<N>, McpToolOutput<N>> } = {
  sandbox_create: {
    title: 'Create a sandbox',
    description:
      'Creates and boots a Linux microVM sandbox (hardware-isolated: run untrusted code in it freely) and returns its record; use its `id` with the other tools. ' +
      'Boot takes about a second. From an OCI image (pulled when missing), a template or a snapshot. It is removed when this MCP session ends unless `keep` is true.',
    annotations: { ...additive, openWorldHint: true },
    async run(input, call) {
      const { keep, ...options } = input;
      const slot = keep ? null : call.session.reserve(1);
      try {
        const sandbox = await call.session.runtime.create({
          ...options,
          labels: call.session.labels(options.labels),
          // Kept: it outlives this session's runtime or connection. Else it ends with them even if the session's cleanup never runs.
          ...(keep ? { detached: true } : { autoRemove: true }),
          signal: call.signal,
        });
        slot?.adopt([sandbox.id]);
        return sandbox.info;
      } catch (e) {
        slot?.release();
        throw e;
      }
    },
  },
  sandbox_list: {
    title: 'List sandboxes',
    description: 'Lists sandboxes (newest first) with their id, status, image, resources and labels; filter by status, label, or those of this session.',
    annotations: readOnly,
    async run(input, call) {
      const labels = [...(input.labels ?? []), ...(input.mine ? [`${MCP_SESSION_LABEL}=${call.session.id}`] : [])];
      const sandboxes = await call.session.runtime.list({ ...(input.status ? { status: input.status } : {}), ...(labels.length ? { labels } : {}) });
      return { sandboxes };
    },
  },
  sandbox_get: {
    title: 'Describe a sandbox',
    description: 'Returns one sandbox’s record: status, image, cpus, memory, network, published ports, labels, and why it stopped or failed.',
    annotations: readOnly,
    run: lifecycle(async () => {}),
  },
  sandbox_stop: {
    title: 'Stop a sandbox',
    description:
      'Stops a sandbox’s VM (its disk stays; processes end). A stopped sandbox can be removed, or snapshotted from its disk. Stopping a stopped one does nothing.',
    annotations: settles(true),
    run: lifecycle((sandbox) => sandbox.stop()),
  },
  sandbox_remove: {
    title: 'Remove a sandbox',
    description: 'Removes a sandbox for good: its VM is killed and its disk and logs are deleted. Use it when done with a sandbox.',
    annotations: settles(true),
    async run(input, call) {
      const sandbox = await call.session.runtime.get(input.id);
      await sandbox.remove({ force: true });
      call.session.forget(sandbox.id);
      return { id: sandbox.id, removed: true as const };
    },
  },
  sandbox_exec: {
    title: 'Run a command',
    description:
      'Runs a command in a sandbox and returns its exit code, stdout and stderr (a non-zero exit is a result, not an error). `command` is a shell line (/bin/sh -c) or an argv array. ' +
      'Output beyond the limit is cut (`truncated`, with the full sizes); with a progress token, output arrives as progress notifications while it runs; cancelling the call kills the command.',
    annotations: { ...additive, destructiveHint: true },
    run: exec,
  },
  sandbox_write_file: {
    title: 'Write a file',
    description:
      'Writes a whole file in a sandbox (parent directories are made), replacing it atomically. Text as is, or binary as base64 with encoding "base64".',
    annotations: settles(true),
    async run(input, call) {
      const sandbox = await call.session.runtime.get(input.id);
      const bytes = decodeContent(input.content, input.encoding ?? 'utf8');
      return sandbox.files.write(input.path, bytes, { ...(input.mode !== undefined ? { mode: input.mode } : {}), signal: call.signal });
    },
  },
  sandbox_read_file: {
    title: 'Read a file',
    description:
      'Reads a whole file from a sandbox: as text when it is UTF-8, else base64 (or as `encoding` asks). Files over the size limit are refused; read parts with sandbox_exec.',
    annotations: readOnly,
    async run(input, call) {
      const sandbox = await call.session.runtime.get(input.id);
      const bytes = await readCapped(sandbox, input.path, call.session.limits.readBytes, call.signal);
      return { path: input.path, ...encodeContent(bytes, input.path, input.encoding), size: bytes.byteLength };
    },
  },
  sandbox_list_files: {
    title: 'List a directory',
    description:
      'Lists the entries below a directory in a sandbox (name, type, size, mode, owner, mtime), `depth` levels deep, sorted by path. Symlinks are not followed.',
    annotations: readOnly,
    async run(input, call) {
      const sandbox = await call.session.runtime.get(input.id);
      return { entries: await sandbox.files.list(input.path, { ...(input.depth ? { depth: input.depth } : {}), signal: call.signal }) };
    },
  },
  sandbox_remove_file: {
    title: 'Remove a file',
    description: 'Removes a file, a symlink, or a directory with everything below it, in a sandbox.',
    annotations: settles(true),
    async run(input, call) {
      const sandbox = await call.session.runtime.get(input.id);
      await sandbox.files.remove(input.path, { ...(input.recursive !== undefined ? { recursive: input.recursive } : {}), signal: call.signal });
      return { path: input.path, removed: true as const };
    },
  },
  sandbox_snapshot: {
    title: 'Snapshot a sandbox',
    description:
      'Saves a running sandbox’s memory, processes and disk as a named snapshot (it runs on). Restore it later with sandbox_create { snapshot }, as many times as wanted. Snapshots outlive the session.',
    annotations: additive,
    async run(input, call) {
      const sandbox = await call.session.runtime.get(input.id);
      return sandbox.snapshot({ ...(input.name ? { name: input.name } : {}), signal: call.signal });
    },
  },
  sandbox_fork: {
    title: 'Fork a sandbox',
    description:
      'Makes running copies of a sandbox, each with its own id, memory and disk, as it is now (processes included); the original runs on. Try several approaches in parallel from one state.',
    annotations: additive,
    async run(input, call) {
      const sandbox = await call.session.runtime.get(input.id);
      const count = input.count ?? 1;
      const slot = input.keep ? null : call.session.reserve(count);
      try {
        const copies = await sandbox.fork({
          count,
          labels: call.session.labels(Object.fromEntries(Object.entries(sandbox.info.labels).filter(([k]) => k !== MCP_SESSION_LABEL))),
          ...(input.keep ? { detached: true } : {}),
          ...(input.volumes ? { volumes: input.volumes } : {}),
          signal: call.signal,
        });
        slot?.adopt(copies.map((c) => c.id));
        return { sandboxes: copies.map((c) => c.info) };
      } catch (e) {
        slot?.release();
        throw e;
      }
    },
  },
  sandbox_pause: {
    title: 'Pause a sandbox',
    description: 'Freezes a sandbox’s CPUs (memory stays; commands wait) until sandbox_resume. Pausing a paused one does nothing.',
    annotations: settles(false),
    run: lifecycle((sandbox) => sandbox.pause()),
  },
  sandbox_resume: {
    title: 'Resume a sandbox',
    description: 'Continues a paused sandbox exactly where it was. Resuming a running one does nothing.',
    annotations: settles(false),
    run: lifecycle((sandbox) => sandbox.resume()),
  },
  sandbox_logs: {
    title: 'Read the console log',
    description:
      'Returns a sandbox’s serial console log (kernel and boot messages, what the guest printed to its console), or its last `tail` lines. Useful when a sandbox failed.',
    annotations: readOnly,
    async run(input, call) {
      const sandbox = await call.session.runtime.get(input.id);
      const text = await sandbox.logs({ ...(input.tail ? { tail: input.tail } : {}), signal: call.signal });
      const limit = call.session.limits.readBytes;
      const bytes = Buffer.from(text, 'utf8');
      // The end of a long log is what explains a failure: keep that.
      if (bytes.byteLength <= limit) return { id: sandbox.id, text, truncated: false };
      return { id: sandbox.id, text: new TextDecoder().decode(bytes.subarray(bytes.byteLength - limit)).replace(/^\uFFFD+/, ''), truncated: true };
    },
  },
  sandbox_publish_port: {
    title: 'Publish a port',
    description:
      'Makes a port of a running sandbox reachable from the host (e.g. a web server the agent started in it) and returns the host address to connect to. `80` picks a free host port.',
    annotations: additive,
    async run(input, call) {
      const sandbox = await call.session.runtime.get(input.id);
      const binding = await sandbox.ports.add(input.port);
      return { ...binding, address: `${binding.hostIp}:${binding.hostPort}` };
    },
  },
  image_pull: {
    title: 'Pull an image',
    description:
      'Pulls an OCI image from its registry into the local store (layers already stored are not fetched again), so sandbox_create can use it; with a progress token, reports progress.',
    annotations: { ...settles(false), openWorldHint: true },
    async run(input, call) {
      let last = 0;
      return call.session.runtime.images.pull(input.reference, {
        signal: call.signal,
        onProgress: (p) => {
          // One notification per blob event, at most every 250 ms (pulls report often).
          if (!call.progress || (Date.now() - last < 250 && p.status === 'downloading')) return;
          last = Date.now();
          void call.progress(`${p.kind} ${p.digest.slice(7, 19)} ${p.status} ${p.current}/${p.total} bytes`).catch(() => {});
        },
      });
    },
  },
  image_list: {
    title: 'List images',
    description: 'Lists the OCI images stored locally (usable by sandbox_create without a pull), newest first.',
    annotations: readOnly,
    async run(_input, call) {
      return { images: await call.session.runtime.images.list() };
    },
  },
};
