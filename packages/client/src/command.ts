import {
  abortError,
  checkTerminalSize,
  decodeExecEvent,
  OutputBuffer,
  parseInput,
  pumpStdin,
  RoostError,
  RunOptionsSchema,
  signalNumber,
  type CommandHandleApi,
  type CommandResult,
  type CommandsApi,
  type ExecRequest,
  type OutputCallback,
  type RunOptions,
} from '@roost/api';
import type { StreamingResponse, Transport } from './http.js';
import { NdjsonParser } from './wire.js';

/** Output held for a reader (or a slow callback) before the HTTP response is paused: the daemon then stops reading the guest. */
const OUTPUT_HIGH_WATER = 1 << 20;
/** Stdin bytes sent in one request when writes queue up behind each other. */
const STDIN_BATCH = 1 << 20;
/** `stdin` given as a string or bytes up to this size goes inline in the exec request; larger is streamed. */
const INLINE_STDIN = 512 << 10;
/** Host-side grace after the daemon should have enforced a command's timeout. */
const TIMEOUT_GRACE_MS = 10_000;

/**
 * One output stream of a remote command: the contract's OutputBuffer, whose
 * credit port tells the exec's response reader that a slow reader caught
 * up (the response is paused while the buffer holds OUTPUT_HIGH_WATER).
 */
function remoteOutput(callback: OutputCallback | undefined, changed: () => void): OutputBuffer {
  return new OutputBuffer({ credit: changed }, callback);
}

/** How a command's stream ended. */
type Outcome = { ok: true; exitCode: number; signal: string | null } | { ok: false; error: RoostError };

interface PendingWrite {
  data: Buffer;
  resolve: () => void;
  reject: (e: unknown) => void;
}

/**
 * A command running in a remote sandbox. Output arrives on one NDJSON
 * response (base64, so bytes survive exactly) and is read with the same
 * backpressure as core: a slow reader pauses the response, the daemon stops
 * reading, and the command blocks on a full pipe. Stdin goes through the
 * daemon's stdin endpoint.
 *
 * Concurrency: `write` calls are sent in the order they are made (queued
 * writes are batched into one request); `kill` and `resize` are sent at once,
 * not behind queued writes.
 */
export class RemoteCommandHandle implements CommandHandleApi {
  /** The process id inside the guest. */
  readonly pid: number;
  /** The command's id on the daemon (the REST API's execId). */
  readonly id: string;
  readonly stdout: AsyncIterable<Uint8Array>;
  readonly stderr: AsyncIterable<Uint8Array>;
  #transport: Transport;
  #base: string;
  #result: Promise<CommandResult> | undefined;
  #makeResult: () => Promise<CommandResult>;
  /** Settles when the process has exited (or the stream failed). */
  #done: Promise<Outcome>;
  #exited = false;
  #writes: PendingWrite[] = [];
  #closeRequested = false;
  #closeSent = false;
  #pumping = false;

  /** @internal */
  constructor(transport: Transport, base: string, started: { execId: string; pid: number }, out: OutputBuffer, err: OutputBuffer, outcome: Promise<Outcome>) {
    this.#transport = transport;
    this.#base = base;
    this.pid = started.pid;
    this.id = started.execId;
    this.stdout = out;
    this.stderr = err;
    const ended = outcome.then((o) => {
      this.#exited = true;
      return o;
    });
    // Output is gathered only when wait() asks: a reader may still iterate stdout after the process exited.
    this.#makeResult = () =>
      ended.then(async (o) => {
        const [stdout, stderr] = await Promise.all([out.text(), err.text()]);
        if (!o.ok) {
          const e = o.error;
          // As core: the output so far travels with a TIMEOUT.
          if (e.code === 'TIMEOUT' && e.details.stdout === undefined) Object.assign(e.details, { stdout, stderr });
          throw e;
        }
        return { exitCode: o.exitCode, signal: o.signal as NodeJS.Signals | null, stdout, stderr };
      });
    this.#done = ended;
    ended.catch(() => {});
  }

  /** True once the process has exited (or the daemon or sandbox went away). */
  get exited(): boolean {
    return this.#exited;
  }

  /**
   * Waits for the process to exit. Output not read through the iterables is
   * collected into the result. A non-zero exit is a result; a timeout is a
   * TIMEOUT error, an abort an ABORTED one.
   */
  wait(): Promise<CommandResult> {
    (this.stdout as OutputBuffer).collect();
    (this.stderr as OutputBuffer).collect();
    this.#result ??= this.#makeResult();
    return this.#result;
  }

  /**
   * Writes to the process's stdin (start it with `stdin: true`). Resolves
   * when the daemon has passed the bytes on; writes keep their order.
   */
  write(data: string | Uint8Array): Promise<void> {
    if (this.#closeRequested) return Promise.reject(new RoostError('INVALID_STATE', 'stdin is closed'));
    const buf = typeof data === 'string' ? Buffer.from(data) : Buffer.from(data.buffer, data.byteOffset, data.byteLength);
    return new Promise<void>((resolve, reject) => {
      this.#writes.push({ data: buf, resolve, reject });
      void this.#pump();
    });
  }

  /** Closes the process's stdin once the writes before it are sent. */
  closeStdin(): void {
    if (this.#closeRequested) return;
    this.#closeRequested = true;
    void this.#pump();
  }

  /** Sends a signal to the command's process group (default SIGKILL). */
  kill(signal: NodeJS.Signals | number = 'SIGKILL'): void {
    signalNumber(signal);
    if (this.#exited) return;
    this.#post('signal', { signal }).catch(() => {
      // The command has already ended.
    });
  }

  /** Sets the terminal size of a PTY command. */
  resize(size: { rows: number; cols: number }): void {
    checkTerminalSize(size);
    if (this.#exited) return;
    this.#post('resize', { rows: size.rows, cols: size.cols }).catch(() => {});
  }

  /** Kills the command if it still runs, and waits for it to end. */
  async [Symbol.asyncDispose](): Promise<void> {
    if (!this.#exited) {
      this.kill('SIGKILL');
      await this.#done.catch(() => {});
    }
  }

  #post(what: 'signal' | 'resize', body: unknown): Promise<unknown> {
    return this.#transport.json('POST', `${this.#base}/execs/${encodeURIComponent(this.id)}/${what}`, { json: body });
  }

  async #pump(): Promise<void> {
    if (this.#pumping) return;
    this.#pumping = true;
    try {
      while (this.#writes.length > 0 || (this.#closeRequested && !this.#closeSent)) {
        const batch: PendingWrite[] = [];
        let size = 0;
        while (this.#writes.length > 0 && (batch.length === 0 || size + this.#writes[0]!.data.length <= STDIN_BATCH)) {
          const w = this.#writes.shift()!;
          batch.push(w);
          size += w.data.length;
        }
        const close = this.#closeRequested && this.#writes.length === 0;
        try {
          await this.#transport.json('POST', `${this.#base}/execs/${encodeURIComponent(this.id)}/stdin`, {
            body: batch.length === 1 ? batch[0]!.data : Buffer.concat(batch.map((w) => w.data)),
            query: close ? { close: 'true' } : {},
            timeoutMs: null,
            what: 'writing stdin',
          });
          batch.forEach((w) => w.resolve());
        } catch (e) {
          batch.forEach((w) => w.reject(e));
        }
        if (close) this.#closeSent = true;
      }
    } finally {
      this.#pumping = false;
    }
  }
}

/** `sandbox.commands` of a remote sandbox. */
export class RemoteCommands implements CommandsApi {
  /** @internal */
  constructor(
    private readonly transport: Transport,
    private readonly sandboxId: string,
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

  /**
   * Starts a command and returns once it runs. Aborting `signal` closes the
   * exec's connection (the daemon kills the process) and ends the handle
   * with an ABORTED error.
   */
  async start(cmd: string | string[], options: RunOptions = {}): Promise<RemoteCommandHandle> {
    const opts = parseInput(RunOptionsSchema, options, 'command options') as RunOptions;
    const argv = Array.isArray(cmd) ? cmd : opts.args ? [cmd, ...opts.args] : [cmd];
    const description = `command ${JSON.stringify(argv.join(' ').slice(0, 80))}`;
    if (opts.signal?.aborted) throw abortError(opts.signal, description);

    const request: ExecRequest = { cmd, encoding: 'base64' };
    if (opts.args) request.args = opts.args;
    if (opts.env) request.env = opts.env;
    if (opts.cwd !== undefined) request.cwd = opts.cwd;
    if (opts.user !== undefined) request.user = opts.user;
    if (opts.pty) request.pty = opts.pty;
    if (opts.timeoutMs !== undefined) request.timeoutMs = opts.timeoutMs;
    let streamIn: AsyncIterable<Uint8Array | string> | Uint8Array | string | undefined;
    const stdin = opts.stdin;
    if (stdin === true) request.interactive = true;
    else if (typeof stdin === 'string' || stdin instanceof Uint8Array) {
      const bytes = typeof stdin === 'string' ? Buffer.from(stdin) : Buffer.from(stdin.buffer, stdin.byteOffset, stdin.byteLength);
      if (bytes.length <= INLINE_STDIN) {
        request.stdin = bytes.toString('base64');
        request.stdinEncoding = 'base64';
      } else {
        request.interactive = true;
        streamIn = bytes;
      }
    } else if (stdin !== undefined && stdin !== false) {
      request.interactive = true;
      streamIn = stdin;
    }

    // The backup timer: the daemon enforces timeoutMs; this ends the call if it does not.
    const signals: AbortSignal[] = [];
    if (opts.signal) signals.push(opts.signal);
    const backup = new AbortController();
    signals.push(backup.signal);
    let backupTimer: NodeJS.Timeout | undefined;
    if (opts.timeoutMs !== undefined) {
      backupTimer = setTimeout(
        () => backup.abort(new RoostError('TIMEOUT', `${description} did not end within ${opts.timeoutMs} ms and the daemon did not stop it`)),
        opts.timeoutMs + TIMEOUT_GRACE_MS,
      );
      backupTimer.unref();
    }
    const signal = signals.length === 1 ? signals[0]! : AbortSignal.any(signals);

    const base = `/v1/sandboxes/${encodeURIComponent(this.sandboxId)}`;
    let response: StreamingResponse;
    try {
      response = await this.transport.stream('POST', `${base}/exec`, { json: request, accept: 'application/x-ndjson', signal, what: description });
    } catch (e) {
      clearTimeout(backupTimer);
      throw e;
    }

    let resume: (() => void) | null = null;
    const changed = () => {
      if (resume && out.held < OUTPUT_HIGH_WATER && err.held < OUTPUT_HIGH_WATER) {
        const r = resume;
        resume = null;
        r();
      }
    };
    const out = remoteOutput(opts.onStdout, changed);
    const err = remoteOutput(opts.onStderr, changed);
    let onStarted!: (s: { execId: string; pid: number }) => void;
    let onStartFailed!: (e: RoostError) => void;
    const started = new Promise<{ execId: string; pid: number }>((res, rej) => ((onStarted = res), (onStartFailed = rej)));
    started.catch(() => {});

    const outcome = (async (): Promise<Outcome> => {
      const parser = new NdjsonParser();
      let end: Outcome | undefined;
      const take = (value: unknown): void => {
        // Unknown event types decode to null and are ignored (additive changes).
        const ev = decodeExecEvent(value);
        switch (ev?.type) {
          case 'started':
            onStarted({ execId: ev.execId, pid: ev.pid });
            break;
          case 'stdout':
          case 'stderr':
            (ev.type === 'stdout' ? out : err).push(Buffer.from(ev.data, 'base64'));
            break;
          case 'exit':
            end = { ok: true, exitCode: ev.exitCode, signal: ev.signal };
            break;
          case 'error':
            end = { ok: false, error: ev.error };
            break;
        }
      };
      let closed = false;
      response.res.once('close', () => {
        closed = true;
        resume?.();
      });
      try {
        for await (const chunk of response.res) {
          for (const v of parser.push(chunk as Buffer)) take(v);
          // Backpressure: stop reading the response while a reader is behind (an abort closes it and ends the wait).
          while (!closed && (out.held >= OUTPUT_HIGH_WATER || err.held >= OUTPUT_HIGH_WATER)) await new Promise<void>((r) => (resume = r));
        }
        for (const v of parser.end()) take(v);
        if (!end) {
          end = {
            ok: false,
            error: new RoostError(
              'UNAVAILABLE',
              `${description}: the connection to the daemon at ${this.transport.endpoint.display} ended before the command did`,
            ),
          };
        }
      } catch (e) {
        response.abort(e instanceof Error ? e : new Error(String(e)));
        end = {
          ok: false,
          error:
            e instanceof RoostError
              ? e
              : new RoostError('UNAVAILABLE', `${description}: the connection to the daemon at ${this.transport.endpoint.display} broke`, { cause: e }),
        };
      } finally {
        clearTimeout(backupTimer);
      }
      if (end.ok) {
        out.end();
        err.end();
      } else {
        out.end(end.error);
        err.end(end.error);
        onStartFailed(end.error);
      }
      return end;
    })();
    // Settles `started` if the stream ended without a `started` line (a no-op once it has settled).
    void outcome.then((o) => {
      if (o.ok) onStartFailed(new RoostError('INTERNAL', `${description}: the daemon ended the stream without reporting the command as started`));
    });

    // If the stream fails while nobody holds a handle yet, `started` rejects.
    const s = await started;
    const handle = new RemoteCommandHandle(this.transport, base, s, out, err, outcome);
    if (streamIn !== undefined) void pumpStdin(handle, streamIn);
    return handle;
  }
}
