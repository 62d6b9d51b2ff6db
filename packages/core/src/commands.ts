import { constants as osConstants } from 'node:os';
import { Fd, type ExecExit, type ExecRequest } from '@roost/protocol';
import { randomBytes } from 'node:crypto';
import {
  checkTerminalSize,
  parseInput,
  pumpStdin,
  RunOptionsSchema,
  signalName,
  signalNumber,
  type CommandHandleApi,
  type CommandResult,
  type CommandsApi,
  type OutputBuffer,
  type RunOptions,
} from '@roost/api';
import type { AgentConnection, ExecChannel } from './agent/connection.js';
import { abortError, RoostError } from './errors.js';
import { agentOutput } from './output.js';

export type { OutputCallback, RunOptions, CommandResult } from '@roost/api';

/** @internal What a sandbox hears about its commands (events, counters). */
export interface CommandHooks {
  started?(cmd: { id: string; pid: number; argv: string[] }): void;
  exited?(cmd: { id: string; pid: number; exitCode: number | null; signal: string | null; error?: string; durationMs: number }): void;
  bytes?(stream: 'stdin' | 'stdout' | 'stderr', n: number): void;
}

/** Output window granted per fd: enough to keep the channel busy, small enough to bound memory. */
const OUTPUT_WINDOW = 1 << 20;
/** Host-side grace after the agent should have enforced a timeout. */
const TIMEOUT_GRACE_MS = 5_000;

/**
 * A command running in a sandbox. Read `stdout` / `stderr` as async
 * iterables (backpressure reaches the process), write stdin, signal it, and
 * `wait()` for its result.
 */
export class CommandHandle implements CommandHandleApi {
  /** An id for this command, unique in its runtime (events and the REST API name it). */
  readonly id: string;
  /** The process id inside the guest. */
  readonly pid: number;
  readonly stdout: AsyncIterable<Uint8Array>;
  readonly stderr: AsyncIterable<Uint8Array>;
  #channel: ExecChannel;
  #exit: Promise<ExecExit>;
  #makeResult: () => Promise<CommandResult>;
  #result: Promise<CommandResult> | undefined;
  #exited = false;
  #onStdin: ((n: number) => void) | undefined;

  /** @internal */
  constructor(
    id: string,
    pid: number,
    channel: ExecChannel,
    out: OutputBuffer,
    err: OutputBuffer,
    exit: Promise<ExecExit>,
    description: string,
    onStdin?: (n: number) => void,
  ) {
    this.id = id;
    this.pid = pid;
    this.#onStdin = onStdin;
    this.#channel = channel;
    this.stdout = out;
    this.stderr = err;
    this.#exit = exit.then(
      (e) => {
        this.#exited = true;
        return e;
      },
      (e: unknown) => {
        this.#exited = true;
        throw e;
      },
    );
    this.#exit.catch(() => {});
    // Output is gathered only when wait() asks: a reader may still iterate stdout after the process exited.
    this.#makeResult = () =>
      this.#exit.then(async (e) => {
        const [stdout, stderr] = await Promise.all([out.text(), err.text()]);
        if (e.timedOut) {
          throw new RoostError('TIMEOUT', `${description} timed out and was killed`, { details: { stdout, stderr } });
        }
        const signal = e.signal === null ? null : signalName(e.signal);
        return { exitCode: e.exitCode ?? 128 + (e.signal ?? 0), signal, stdout, stderr };
      });
  }

  /** True once the process has exited (or the sandbox went away). */
  get exited(): boolean {
    return this.#exited;
  }

  /** Waits for the process to exit. Output not read through the iterables is collected into the result. */
  wait(): Promise<CommandResult> {
    (this.stdout as OutputBuffer).collect();
    (this.stderr as OutputBuffer).collect();
    this.#result ??= this.#makeResult();
    return this.#result;
  }

  /** Writes to the process's stdin (start it with `stdin: true`). Resolves when the agent has room for more. */
  async write(data: string | Uint8Array): Promise<void> {
    const bytes = typeof data === 'string' ? Buffer.from(data) : data;
    await this.#channel.writeStdin(bytes);
    this.#onStdin?.(bytes.length);
  }

  /** Closes the process's stdin. */
  closeStdin(): void {
    this.#channel.closeStdin();
  }

  /** Sends a signal to the command's process group (default SIGKILL). */
  kill(signal: NodeJS.Signals | number = 'SIGKILL'): void {
    this.#channel.signal(signalNumber(signal));
  }

  /** Sets the terminal size of a PTY command. */
  resize(size: { rows: number; cols: number }): void {
    checkTerminalSize(size);
    this.#channel.resize(size.rows, size.cols);
  }

  async [Symbol.asyncDispose](): Promise<void> {
    if (!this.#exited) {
      this.kill('SIGKILL');
      await this.#exit.catch(() => {});
    }
  }
}

/** The commands API of a sandbox (`sandbox.commands`). */
export class Commands implements CommandsApi {
  /** @internal */
  constructor(
    private readonly connection: () => Promise<AgentConnection>,
    private readonly defaults: () => { env: Record<string, string>; cwd?: string; user?: string },
    private readonly hooks: CommandHooks = {},
  ) {}

  /**
   * Runs a command to completion and returns its exit code and output.
   * Without `args`, `cmd` is a shell command line (`/bin/sh -c cmd`).
   * A non-zero exit is a result, not an error; a timeout is a TIMEOUT error.
   */
  async run(cmd: string | string[], options: RunOptions = {}): Promise<CommandResult> {
    const handle = await this.start(cmd, options);
    return handle.wait();
  }

  /** Starts a command and returns once it runs. */
  async start(cmd: string | string[], options: RunOptions = {}): Promise<CommandHandle> {
    const opts = parseInput(RunOptionsSchema, options, 'command options') as RunOptions;
    const argv = commandArgv(cmd, opts.args);
    const description = `command ${JSON.stringify(argv.join(' ').slice(0, 80))}`;
    if (opts.signal?.aborted) throw abortError(opts.signal, description);
    const conn = await this.connection();
    const defaults = this.defaults();
    const hooks = this.hooks;

    const ptySize = typeof opts.pty === 'object' ? opts.pty : {};
    const request: ExecRequest = {
      args: argv,
      env: Object.entries({ ...defaults.env, ...opts.env }).map(([k, v]) => `${k}=${v}`),
      cwd: opts.cwd ?? (defaults.cwd || '/'),
      stdin: opts.stdin !== undefined && opts.stdin !== false,
      window: OUTPUT_WINDOW,
    };
    const user = opts.user ?? (defaults.user || undefined);
    if (user !== undefined) request.user = String(user);
    if (opts.timeoutMs !== undefined) request.timeoutMs = opts.timeoutMs;
    if (opts.pty) {
      request.pty = true;
      request.rows = ptySize.rows ?? 24;
      request.cols = ptySize.cols ?? 80;
    }

    // Assigned once conn.exec returns; the callbacks below run only after that.
    // eslint-disable-next-line prefer-const
    let channel!: ExecChannel;
    const grant = (fd: Fd, n: number) => channel.grant(fd, n);
    const out = agentOutput(Fd.STDOUT, grant, opts.onStdout, hooks.bytes && ((n) => hooks.bytes!('stdout', n)));
    const err = agentOutput(Fd.STDERR, grant, opts.onStderr, hooks.bytes && ((n) => hooks.bytes!('stderr', n)));
    let onStarted!: (pid: number) => void;
    let onStartFailed!: (e: RoostError) => void;
    const started = new Promise<number>((res, rej) => ((onStarted = res), (onStartFailed = rej)));
    let onExit!: (e: ExecExit) => void;
    let onExitFailed!: (e: RoostError) => void;
    const exit = new Promise<ExecExit>((res, rej) => ((onExit = res), (onExitFailed = rej)));
    exit.catch(() => {});

    channel = conn.exec(request, {
      started: (pid) => onStarted(pid),
      data: (fd, chunk) => (fd === Fd.STDOUT ? out : err).push(chunk),
      eof: (fd) => (fd === Fd.STDOUT ? out : err).end(),
      exit: (e) => {
        out.end();
        err.end();
        onExit(e);
      },
      failed: (e) => {
        out.end(e);
        err.end(e);
        onStartFailed(e);
        onExitFailed(e);
      },
    });

    // Cancellation: an abort kills the process; the host-side timer backs up the agent's own timeout.
    const cleanups: (() => void)[] = [];
    if (opts.signal) {
      const onAbort = () => {
        channel.signal(osConstants.signals.SIGKILL);
        const e = abortError(opts.signal!, description);
        channel.abandon();
        out.end(e);
        err.end(e);
        onStartFailed(e);
        onExitFailed(e);
      };
      opts.signal.addEventListener('abort', onAbort, { once: true });
      cleanups.push(() => opts.signal!.removeEventListener('abort', onAbort));
      // Aborted while the connection was being set up: that fired no event.
      if (opts.signal.aborted) onAbort();
    }
    if (opts.timeoutMs !== undefined) {
      const timer = setTimeout(() => {
        channel.signal(osConstants.signals.SIGKILL);
        channel.abandon();
        const e = new RoostError('TIMEOUT', `${description} did not end within ${opts.timeoutMs} ms and the guest did not stop it`);
        out.end(e);
        err.end(e);
        onExitFailed(e);
      }, opts.timeoutMs + TIMEOUT_GRACE_MS);
      timer.unref();
      cleanups.push(() => clearTimeout(timer));
    }
    exit.finally(() => cleanups.forEach((c) => c())).catch(() => {});

    const pid = await started;
    const id = randomBytes(6).toString('hex');
    const startedAt = performance.now();
    hooks.started?.({ id, pid, argv });
    exit
      .then(
        (e) =>
          hooks.exited?.({
            id,
            pid,
            exitCode: e.exitCode,
            signal: e.signal === null ? null : signalName(e.signal),
            ...(e.timedOut ? { error: 'TIMEOUT' } : {}),
            durationMs: Math.round(performance.now() - startedAt),
          }),
        (e: RoostError) => hooks.exited?.({ id, pid, exitCode: null, signal: null, error: e.code, durationMs: Math.round(performance.now() - startedAt) }),
      )
      .catch(() => {});
    const handle = new CommandHandle(id, pid, channel, out, err, exit, description, hooks.bytes && ((n) => hooks.bytes!('stdin', n)));
    if (opts.stdin !== undefined && typeof opts.stdin !== 'boolean') void pumpStdin(handle, opts.stdin);
    return handle;
  }
}

function commandArgv(cmd: string | string[], args: string[] | undefined): string[] {
  if (Array.isArray(cmd)) {
    if (cmd.length === 0 || cmd.some((a) => typeof a !== 'string')) throw new RoostError('INVALID_ARGUMENT', 'cmd: a non-empty array of strings is required');
    if (args) throw new RoostError('INVALID_ARGUMENT', 'args: give arguments either in the cmd array or in args, not both');
    return cmd;
  }
  if (typeof cmd !== 'string' || cmd.length === 0) throw new RoostError('INVALID_ARGUMENT', 'cmd: a non-empty command is required');
  return args ? [cmd, ...args] : ['/bin/sh', '-c', cmd];
}
