import { RoostError, type BuildProgressEvent } from '@roost/api';

/*
 * How `roost build` shows a build's progress (BuildProgressEvents, the same
 * from the daemon and from an embedded runtime):
 *
 * - `tty`: one line per step, `[stage n/of] TEXT ... CACHED | done 1.2s`;
 *   while a RUN runs, the end of its output is drawn below its line, dimmed
 *   and indented, and replaced by the step's final line when it is done.
 * - `plain` (for logs): every event as lines, numbered per step as BuildKit
 *   does: `#3 [stage-0 2/4] RUN make`, `#3 <output line>`, `#3 DONE 1.2s`,
 *   `#2 CACHED`.
 * - `quiet`: nothing.
 *
 * The guest's output is hostile text: escape sequences and control
 * characters are removed before it reaches a terminal or a log.
 */

/** The progress modes of `--progress` (`auto` is resolved by the caller). */
export type ProgressMode = 'tty' | 'plain' | 'quiet';

/** Where progress goes: a stream (stderr) as the printer needs it. */
export interface ProgressStream {
  write(text: string): unknown;
  columns?: number;
}

/** Lines of a running RUN's output kept on screen in `tty` mode. */
const TTY_TAIL_LINES = 6;
/** Redraws of the live lines are at most this often. */
const TTY_REDRAW_MS = 50;

/** `--progress auto`: `tty` when the stream is a terminal, else `plain`. */
export function resolveProgressMode(mode: string, isTTY: boolean): ProgressMode {
  if (mode === 'auto') return isTTY ? 'tty' : 'plain';
  if (mode === 'tty' || mode === 'plain' || mode === 'quiet') return mode;
  throw new RoostError('INVALID_ARGUMENT', `--progress ${mode}: expected auto, tty, plain or quiet`);
}

/** `[stage-0 2/5]` or `[builder 2/5]`: the stage by name, or `stage-N` for an unnamed one. */
export function stepLabel(stage: string, step: number, of: number): string {
  return `[${/^\d+$/.test(stage) ? `stage-${stage}` : stage} ${step}/${of}]`;
}

/** `1.2s` */
export function seconds(ms: number): string {
  return `${(ms / 1000).toFixed(1)}s`;
}

/* eslint-disable no-control-regex -- these match the control characters a guest may send, on purpose */
/** CSI and OSC sequences, then any other escape with its next character. */
const ESCAPES = /\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?|\x1b./g;
/** Control characters but tab and newline. */
const CONTROLS = /[\x00-\x08\x0b-\x1f\x7f]/g;
/* eslint-enable no-control-regex */

/** Text from the guest made safe to print: escape sequences and control characters (but tabs) removed. */
export function sanitize(text: string): string {
  return text.replace(ESCAPES, '').replace(CONTROLS, '');
}

/** Splits a stream of output chunks into lines (`\r` overwrites as on a terminal: the text after it wins). */
class LineSplitter {
  #partial = '';

  /** The lines completed by `data`. */
  push(data: string): string[] {
    const parts = (this.#partial + data).split('\n');
    this.#partial = parts.pop() ?? '';
    return parts.map(lastRewrite);
  }

  /** The unfinished last line, if any (and forgets it). */
  flush(): string | null {
    const rest = this.#partial;
    this.#partial = '';
    return rest === '' ? null : lastRewrite(rest);
  }

  /** The unfinished last line, kept. */
  get partial(): string {
    return lastRewrite(this.#partial);
  }
}

function lastRewrite(line: string): string {
  const parts = line.replace(/\r+$/, '').split('\r');
  return sanitize(parts[parts.length - 1] ?? '');
}

/** A build's progress printer: `event` for each BuildProgressEvent, `fail` when the build failed (tty: leaves the failing step's output on screen). */
export interface BuildProgressPrinter {
  event(e: BuildProgressEvent): void;
  /** The build ended (for good or not): unfinished output lines are printed, timers stopped. */
  end(): void;
}

/** A printer for `mode` on `stream` (colors on a tty unless NO_COLOR). */
export function buildProgressPrinter(mode: ProgressMode, stream: ProgressStream, options: { color?: boolean } = {}): BuildProgressPrinter {
  if (mode === 'quiet') return { event: () => {}, end: () => {} };
  return mode === 'plain' ? new PlainPrinter(stream) : new TtyPrinter(stream, options.color ?? true);
}

/** `--progress plain`: every event as lines, numbered per step. */
class PlainPrinter implements BuildProgressPrinter {
  readonly #numbers = new Map<string, number>();
  /** The number of the step that is running (RUN output is its), and its output's splitters. */
  #running: { n: number; out: LineSplitter; err: LineSplitter } | null = null;

  constructor(private readonly stream: ProgressStream) {}

  #number(stage: string, step: number): number {
    const key = `${stage}\0${step}`;
    let n = this.#numbers.get(key);
    if (n === undefined) this.#numbers.set(key, (n = this.#numbers.size + 1));
    return n;
  }

  event(e: BuildProgressEvent): void {
    const w = (s: string) => this.stream.write(s);
    switch (e.type) {
      case 'note':
        w(`note: ${sanitize(e.message)}\n`);
        return;
      case 'output': {
        const r = this.#running;
        if (!r) return;
        for (const l of (e.stream === 'stderr' ? r.err : r.out).push(e.data)) w(`#${r.n} ${l}\n`);
        return;
      }
      case 'step': {
        const n = this.#number(e.stage, e.step);
        const head = `#${n} ${stepLabel(e.stage, e.step, e.of)} ${sanitize(e.text)}\n`;
        if (e.status === 'running') {
          this.#flush();
          this.#running = { n, out: new LineSplitter(), err: new LineSplitter() };
          w(head);
        } else if (e.status === 'cached') {
          this.#flush();
          w(head + `#${n} CACHED\n`);
        } else if (this.#running?.n === n) {
          this.#flush();
          w(`#${n} DONE${e.durationMs !== undefined ? ` ${seconds(e.durationMs)}` : ''}\n`);
        } else {
          // A step that changes only the config: done at once, nothing ran.
          this.#flush();
          w(head + `#${n} DONE\n`);
        }
      }
    }
  }

  end(): void {
    this.#flush();
  }

  #flush(): void {
    const r = this.#running;
    if (!r) return;
    this.#running = null;
    for (const s of [r.out, r.err]) {
      const l = s.flush();
      if (l !== null) this.stream.write(`#${r.n} ${l}\n`);
    }
  }
}

/** On a terminal: a line per step, the running RUN's last output lines drawn below it. */
class TtyPrinter implements BuildProgressPrinter {
  /** The running step: its line, and its output's last lines. */
  #running: { stage: string; step: number; line: string; out: LineSplitter; err: LineSplitter; tail: string[] } | null = null;
  /** Lines drawn by the live region (the step's line and its tail), under which the cursor is. */
  #drawn = 0;
  #lastDraw = 0;
  #timer: NodeJS.Timeout | null = null;

  constructor(
    private readonly stream: ProgressStream,
    private readonly color: boolean,
  ) {}

  #paint(code: string, s: string): string {
    return this.color ? `\x1b[${code}m${s}\x1b[0m` : s;
  }

  #width(): number {
    return Math.max(20, (this.stream.columns || 80) - 1);
  }

  #fit(s: string): string {
    const w = this.#width();
    return s.length <= w ? s : `${s.slice(0, w - 1)}…`;
  }

  event(e: BuildProgressEvent): void {
    switch (e.type) {
      case 'note':
        this.#above(this.#paint('2', `note: ${sanitize(e.message)}`));
        return;
      case 'output': {
        const r = this.#running;
        if (!r) return;
        r.tail.push(...(e.stream === 'stderr' ? r.err : r.out).push(e.data));
        if (r.tail.length > TTY_TAIL_LINES) r.tail.splice(0, r.tail.length - TTY_TAIL_LINES);
        this.#scheduleDraw();
        return;
      }
      case 'step': {
        const line = `${stepLabel(e.stage, e.step, e.of)} ${sanitize(e.text)}`;
        if (e.status === 'running') {
          this.#finishRunning();
          this.#running = { stage: e.stage, step: e.step, line, out: new LineSplitter(), err: new LineSplitter(), tail: [] };
          this.#draw();
          return;
        }
        const status =
          e.status === 'cached' ? this.#paint('36', 'CACHED') : this.#paint('32', `done${e.durationMs !== undefined ? ` ${seconds(e.durationMs)}` : ''}`);
        const r = this.#running;
        if (r && r.stage === e.stage && r.step === e.step) {
          // The step is done: its live lines give way to its final line.
          this.#running = null;
          this.#clear();
        }
        this.#above(`${line} ... ${status}`);
      }
    }
  }

  end(): void {
    // A build that ended with a step running (it failed, or was cancelled): its output stays on screen, whole lines.
    if (this.#timer) clearTimeout(this.#timer);
    this.#timer = null;
    this.#finishRunning();
  }

  /** Leaves the running step's line and tail on screen as they are (with its unfinished line) and forgets it. */
  #finishRunning(): void {
    const r = this.#running;
    if (!r) return;
    for (const s of [r.out, r.err]) {
      const l = s.flush();
      if (l !== null) r.tail.push(l);
    }
    if (r.tail.length > TTY_TAIL_LINES) r.tail.splice(0, r.tail.length - TTY_TAIL_LINES);
    this.#draw();
    this.#running = null;
    this.#drawn = 0;
  }

  /** Prints a permanent line above the live region (which is drawn again under it). */
  #above(text: string): void {
    this.#clear();
    this.stream.write(`${text}\n`);
    if (this.#running) this.#draw();
  }

  #clear(): void {
    if (this.#drawn > 0) this.stream.write(`\x1b[${this.#drawn}A\r\x1b[J`);
    this.#drawn = 0;
  }

  #scheduleDraw(): void {
    const wait = TTY_REDRAW_MS - (Date.now() - this.#lastDraw);
    if (wait <= 0) return this.#draw();
    this.#timer ??= setTimeout(() => {
      this.#timer = null;
      this.#draw();
    }, wait);
    this.#timer.unref?.();
  }

  #draw(): void {
    const r = this.#running;
    if (!r) return;
    this.#lastDraw = Date.now();
    const partial = [r.out.partial, r.err.partial].filter((p) => p !== '');
    const tail = [...r.tail, ...partial].slice(-TTY_TAIL_LINES);
    let out = this.#drawn > 0 ? `\x1b[${this.#drawn}A\r\x1b[J` : '';
    out += `${this.#fit(`${r.line} ...`)}\n`;
    for (const l of tail) out += `${this.#paint('2', this.#fit(`    ${l}`))}\n`;
    this.#drawn = 1 + tail.length;
    this.stream.write(out);
  }
}
