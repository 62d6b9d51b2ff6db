import { constants } from 'node:os';

/*
 * How a CLI invocation ends when its user goes away: a signal (Ctrl-C,
 * `kill`, the terminal closing) or a reader of its output that is gone
 * (`roost run ... | head`). What `roost run` made is removed on every such
 * end; SIGKILL leaves that to the daemon (the client's session ends) or to
 * the next runtime that opens the home (the sandbox is marked `autoRemove`).
 */

/** Exit status after EPIPE on stdout or stderr: what a Unix tool killed by SIGPIPE reports to its shell (128 + 13). */
export const EXIT_EPIPE = 128 + constants.signals.SIGPIPE;
/** Exit status when the terminal went away (SIGHUP, or EIO on output): 128 + 1. */
export const EXIT_HANGUP = 128 + constants.signals.SIGHUP;

/** The CLI ends early, quietly, with `exitCode` (its user is gone or asked it to stop). */
export class Interrupted extends Error {
  constructor(
    readonly exitCode: number,
    message: string,
  ) {
    super(message);
    this.name = 'Interrupted';
  }
}

/** The Lifetimes running, the newest last (one at a time in practice). */
const running = new Set<Lifetime>();
let guarded = false;

/**
 * Makes failed writes to stdout or stderr (EPIPE: the reader is gone; EIO:
 * the terminal is) end the process quietly, with no stack trace: through the
 * active Lifetime when one runs (it removes what it owns first), else at once
 * with EXIT_EPIPE (or EXIT_HANGUP). Idempotent.
 */
export function guardOutput(): void {
  if (guarded) return;
  guarded = true;
  for (const [name, stream] of [
    ['stdout', process.stdout],
    ['stderr', process.stderr],
  ] as const) {
    stream.on('error', (e: NodeJS.ErrnoException) => {
      const code = e.code === 'EPIPE' ? EXIT_EPIPE : EXIT_HANGUP;
      const active = [...running].at(-1);
      if (active) active.end(code, `${name}: ${e.code ?? e.message}`);
      else process.exit(code);
    });
  }
}

/**
 * The life of a command that owns something until it exits (`roost run`
 * and its sandbox; `roost exec` and its command): `signal` aborts, with an
 * Interrupted as its reason, on SIGHUP, on a failed write to stdout or
 * stderr, and on SIGINT or SIGTERM (the first of which goes to the running
 * command instead while `forward` is set). A signal after that ends the
 * process at once. One at a time per process.
 */
export class Lifetime implements Disposable {
  readonly #abort = new AbortController();
  #forward: ((signal: NodeJS.Signals) => void) | null = null;
  #forwarded = false;

  constructor() {
    guardOutput();
    running.add(this);
    process.on('SIGINT', this.#onSignal);
    process.on('SIGTERM', this.#onSignal);
    process.on('SIGHUP', this.#onSignal);
  }

  /** Aborts when the command must end (its reason is the Interrupted to throw). */
  get signal(): AbortSignal {
    return this.#abort.signal;
  }

  /** The reason it ended, once it has. */
  get interrupted(): Interrupted | null {
    return this.#abort.signal.aborted ? (this.#abort.signal.reason as Interrupted) : null;
  }

  /** While a command runs: the first SIGINT or SIGTERM goes to `to` (Ctrl-C reaches the command); a second ends the CLI. Returns the undo. */
  forward(to: (signal: NodeJS.Signals) => void): () => void {
    this.#forward = to;
    return () => {
      if (this.#forward === to) this.#forward = null;
    };
  }

  /** Ends it now with `exitCode` (the first end wins). */
  end(exitCode: number, why: string): void {
    if (!this.#abort.signal.aborted) this.#abort.abort(new Interrupted(exitCode, why));
  }

  /** Rethrows a failure as the Interrupted that caused it, when it ended. */
  rethrow(e: unknown): never {
    throw this.interrupted ?? e;
  }

  [Symbol.dispose](): void {
    process.off('SIGINT', this.#onSignal);
    process.off('SIGTERM', this.#onSignal);
    process.off('SIGHUP', this.#onSignal);
    running.delete(this);
  }

  readonly #onSignal = (signal: NodeJS.Signals): void => {
    const code = 128 + (constants.signals[signal] ?? 0);
    // Ending already (removing what it made): the user insists.
    if (this.#abort.signal.aborted) process.exit(code);
    if (signal !== 'SIGHUP' && this.#forward && !this.#forwarded) {
      this.#forwarded = true;
      this.#forward(signal);
      return;
    }
    this.end(code, signal);
  };
}

/**
 * For a foreground server (`roost serve`, `roost volume serve`): resolves
 * once SIGINT or SIGTERM came and `close` has finished (a failed close is
 * reported on stderr, not thrown); a second signal exits at once with 130.
 * The handlers are installed when this is called, so call it before the
 * server announces that it is ready: whoever waits for that may signal at
 * once, and a signal with no handler yet kills the process unclosed.
 */
export function closeOnSignal(name: string, close: () => Promise<void>): Promise<void> {
  return new Promise<void>((done) => {
    let closing = false;
    const onSignal = (signal: NodeJS.Signals): void => {
      if (closing) {
        process.stderr.write(`${name}: ${signal} again, exiting\n`);
        process.exit(130);
      }
      closing = true;
      process.stderr.write(`${name}: ${signal}, shutting down\n`);
      close().then(done, (e: unknown) => {
        process.stderr.write(`${name}: closing failed: ${e instanceof Error ? e.message : String(e)}\n`);
        done();
      });
    };
    process.on('SIGINT', onSignal);
    process.on('SIGTERM', onSignal);
  });
}
