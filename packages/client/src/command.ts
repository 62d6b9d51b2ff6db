import { constants as osConstants } from 'node:os';
import { RoostError, type CommandHandleApi, type CommandResult, type CommandsApi, type ExecRequest, type OutputCallback, type RunOptions } from '@roost/api';
import { abortError, type StreamingResponse, type Transport } from './http.js';
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
 * One output stream of a remote command, with core's semantics: chunks go to
 * the callback (if any), then to an iterator (if one is attached), or are
 * collected for `wait()`. What waits for a reader counts as backlog; the
 * exec's response is paused while there is too much of it.
 */
class OutputQueue implements AsyncIterable<Uint8Array> {
  #queue: Buffer[] = [];
  #queued = 0;
  #collected: Buffer[] = [];
  #collecting = false;
  #iterating = false;
  #ended = false;
  #error: RoostError | null = null;
  #wake: (() => void) | null = null;
  #decoder = new TextDecoder();
  #callbackChain: Promise<void> = Promise.resolve();
  #callbackPending = 0;

  constructor(
    private readonly callback: OutputCallback | undefined,
    private readonly changed: () => void,
  ) {}

  /** Bytes waiting for a reader or a callback. */
  get backlog(): number {
    return this.#queued + this.#callbackPending;
  }

  push(chunk: Buffer): void {
    if (this.callback) {
      const text = this.#decoder.decode(chunk, { stream: true });
      const cb = this.callback;
      const n = chunk.length;
      this.#callbackPending += n;
      this.#callbackChain = this.#callbackChain
        .then(() => cb(text))
        .catch(() => {})
        .finally(() => {
          this.#callbackPending -= n;
          this.changed();
        });
    }
    if (this.#iterating || (!this.#collecting && !this.callback)) {
      this.#queue.push(chunk);
      this.#queued += chunk.length;
      this.#wake?.();
    } else {
      this.#collected.push(chunk);
    }
  }

  end(err: RoostError | null = null): void {
    if (this.#ended) return;
    this.#ended = true;
    this.#error = err;
    if (this.callback) {
      const tail = this.#decoder.decode();
      if (tail) {
        const cb = this.callback;
        this.#callbackChain = this.#callbackChain.then(() => cb(tail)).catch(() => {});
      }
    }
    this.#wake?.();
  }

  /** Collect everything not consumed by an iterator (used by wait()). */
  collect(): void {
    if (this.#iterating || this.#collecting) return;
    this.#collecting = true;
    this.#collected.push(...this.#queue.splice(0));
    this.#queued = 0;
    this.changed();
  }

  /** Collected output as text, after callbacks have run. */
  async text(): Promise<string> {
    await this.#callbackChain;
    return Buffer.concat(this.#collected).toString('utf8');
  }

  async *[Symbol.asyncIterator](): AsyncIterator<Uint8Array> {
    if (this.#iterating || this.#collecting) throw new RoostError('INVALID_STATE', 'this output stream is already being read');
    this.#iterating = true;
    try {
      for (;;) {
        const chunk = this.#queue.shift();
        if (chunk) {
          this.#queued -= chunk.length;
          this.changed();
          yield new Uint8Array(chunk.buffer, chunk.byteOffset, chunk.byteLength);
          continue;
        }
        if (this.#ended) {
          if (this.#error) throw this.#error;
          return;
        }
        await new Promise<void>((r) => (this.#wake = r));
        this.#wake = null;
      }
    } finally {
      // A reader that stops early (break) must not leave the command blocked
      // on output nobody will read: the rest is collected for wait().
      if (!this.#ended) {
        this.#iterating = false;
        this.collect();
      }
    }
  }
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
  constructor(transport: Transport, base: string, started: { execId: string; pid: number }, out: OutputQueue, err: OutputQueue, outcome: Promise<Outcome>) {
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
    (this.stdout as OutputQueue).collect();
    (this.stderr as OutputQueue).collect();
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
    const signo = typeof signal === 'number' ? signal : osConstants.signals[signal];
    if (signo === undefined || !Number.isInteger(signo) || signo < 1 || signo > 64) {
      throw new RoostError('INVALID_ARGUMENT', `unknown signal ${String(signal)}`);
    }
    if (this.#exited) return;
    this.#post('signal', { signal }).catch(() => {
      // The command has already ended.
    });
  }

  /** Sets the terminal size of a PTY command. */
  resize(size: { rows: number; cols: number }): void {
    if (!Number.isInteger(size.rows) || !Number.isInteger(size.cols) || size.rows < 1 || size.cols < 1 || size.rows > 65535 || size.cols > 65535) {
      throw new RoostError('INVALID_ARGUMENT', `invalid terminal size ${size.rows}x${size.cols}`);
    }
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
    const opts = checkRunOptions(options);
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
      if (resume && out.backlog < OUTPUT_HIGH_WATER && err.backlog < OUTPUT_HIGH_WATER) {
        const r = resume;
        resume = null;
        r();
      }
    };
    const out = new OutputQueue(opts.onStdout, changed);
    const err = new OutputQueue(opts.onStderr, changed);
    let onStarted!: (s: { execId: string; pid: number }) => void;
    let onStartFailed!: (e: RoostError) => void;
    const started = new Promise<{ execId: string; pid: number }>((res, rej) => ((onStarted = res), (onStartFailed = rej)));
    started.catch(() => {});

    const outcome = (async (): Promise<Outcome> => {
      const parser = new NdjsonParser();
      let end: Outcome | undefined;
      const take = (value: unknown): void => {
        const ev = value as { type?: unknown; [k: string]: unknown };
        switch (ev.type) {
          case 'started':
            onStarted({ execId: String(ev.execId), pid: Number(ev.pid) });
            break;
          case 'stdout':
          case 'stderr':
            if (typeof ev.data !== 'string') break;
            (ev.type === 'stdout' ? out : err).push(Buffer.from(ev.data, 'base64'));
            break;
          case 'exit':
            end = { ok: true, exitCode: Number(ev.exitCode), signal: typeof ev.signal === 'string' ? ev.signal : null };
            break;
          case 'error': {
            const e = ev.error as { code?: string; message?: string; details?: Record<string, unknown> } | undefined;
            end = { ok: false, error: new RoostError((e?.code ?? 'INTERNAL') as RoostError['code'], e?.message ?? 'the command failed', e?.details ? { details: e.details } : {}) };
            break;
          }
          default:
          // Unknown event types are ignored (additive changes).
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
          while (!closed && (out.backlog >= OUTPUT_HIGH_WATER || err.backlog >= OUTPUT_HIGH_WATER)) await new Promise<void>((r) => (resume = r));
        }
        for (const v of parser.end()) take(v);
        if (!end) {
          end = { ok: false, error: new RoostError('UNAVAILABLE', `${description}: the connection to the daemon at ${this.transport.endpoint.display} ended before the command did`) };
        }
      } catch (e) {
        response.abort(e instanceof Error ? e : new Error(String(e)));
        end = { ok: false, error: e instanceof RoostError ? e : new RoostError('UNAVAILABLE', `${description}: the connection to the daemon at ${this.transport.endpoint.display} broke`, { cause: e }) };
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

async function pumpStdin(handle: RemoteCommandHandle, input: string | Uint8Array | AsyncIterable<Uint8Array | string>): Promise<void> {
  try {
    if (typeof input === 'string' || input instanceof Uint8Array) await handle.write(input);
    else for await (const chunk of input) await handle.write(chunk);
    handle.closeStdin();
  } catch {
    // The process exited before reading all of its input, like a closed pipe.
  }
}

const RUN_OPTION_KEYS = new Set(['args', 'env', 'cwd', 'user', 'stdin', 'pty', 'onStdout', 'onStderr', 'timeoutMs', 'signal']);

/** Checks what the daemon cannot (callbacks, the signal, unknown keys); the daemon validates the rest. */
function checkRunOptions(options: RunOptions): RunOptions {
  if (options === null || typeof options !== 'object') throw new RoostError('INVALID_ARGUMENT', 'command options: an object is required');
  for (const k of Object.keys(options)) {
    if (!RUN_OPTION_KEYS.has(k)) throw new RoostError('INVALID_ARGUMENT', `command options: unknown option "${k}"`);
  }
  if (options.onStdout !== undefined && typeof options.onStdout !== 'function') throw new RoostError('INVALID_ARGUMENT', 'command options: onStdout must be a function');
  if (options.onStderr !== undefined && typeof options.onStderr !== 'function') throw new RoostError('INVALID_ARGUMENT', 'command options: onStderr must be a function');
  if (options.signal !== undefined && !(options.signal instanceof AbortSignal)) throw new RoostError('INVALID_ARGUMENT', 'command options: signal must be an AbortSignal');
  const s = options.stdin;
  if (s !== undefined && typeof s !== 'string' && typeof s !== 'boolean' && !(s instanceof Uint8Array) && !(typeof s === 'object' && s !== null && Symbol.asyncIterator in s)) {
    throw new RoostError('INVALID_ARGUMENT', 'command options: stdin must be a string, bytes, an async iterable or true');
  }
  return options;
}
