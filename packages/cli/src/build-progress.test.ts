/* eslint-disable no-control-regex -- the expected output has terminal escapes */
import { afterEach, describe, expect, it, vi } from 'vitest';
import type { BuildProgressEvent } from '@roost/api';
import { buildProgressPrinter, resolveProgressMode, sanitize, stepLabel } from './build-progress.js';

function capture(columns = 80): { stream: { write(s: string): void; columns: number }; text(): string } {
  let out = '';
  return { stream: { write: (s: string) => void (out += s), columns }, text: () => out };
}

const step = (step: number, status: 'cached' | 'running' | 'done', text: string, extra: Partial<BuildProgressEvent> = {}): BuildProgressEvent =>
  ({ type: 'step', stage: '0', step, of: 4, text, status, ...extra }) as BuildProgressEvent;
const output = (step: number, data: string, stream: 'stdout' | 'stderr' = 'stdout'): BuildProgressEvent => ({ type: 'output', step, stream, data });

/** A small build as the engine reports it: a config step, a cached COPY, a RUN with output in pieces, then CMD. */
const BUILD: BuildProgressEvent[] = [
  { type: 'note', message: 'pulling alpine' },
  step(1, 'done', 'WORKDIR /app'),
  step(2, 'cached', 'COPY . /app', { layer: 'sha256:aa' }),
  step(3, 'running', 'RUN make'),
  output(3, 'cc -o app'),
  output(3, ' main.c\nwarn'),
  output(3, 'ing: x\n'),
  output(3, 'an error line\n', 'stderr'),
  output(3, 'linked\nno newline at the end'),
  step(3, 'done', 'RUN make', { layer: 'sha256:bb', durationMs: 1234 }),
  step(4, 'done', 'CMD ["/app/app"]'),
];

describe('--progress plain', () => {
  it('prints every event as lines numbered per step: CACHED, DONE with the time, output under its step', () => {
    const c = capture();
    const p = buildProgressPrinter('plain', c.stream);
    for (const e of BUILD) p.event(e);
    p.end();
    expect(c.text()).toBe(
      [
        'note: pulling alpine',
        '#1 [stage-0 1/4] WORKDIR /app',
        '#1 DONE',
        '#2 [stage-0 2/4] COPY . /app',
        '#2 CACHED',
        '#3 [stage-0 3/4] RUN make',
        '#3 cc -o app main.c',
        '#3 warning: x',
        '#3 an error line',
        '#3 linked',
        '#3 no newline at the end',
        '#3 DONE 1.2s',
        '#4 [stage-0 4/4] CMD ["/app/app"]',
        '#4 DONE',
        '',
      ].join('\n'),
    );
  });

  it('numbers steps across stages, and names a named stage', () => {
    const c = capture();
    const p = buildProgressPrinter('plain', c.stream);
    p.event({ type: 'step', stage: 'builder', step: 1, of: 1, text: 'RUN a', status: 'cached' });
    p.event({ type: 'step', stage: '1', step: 1, of: 1, text: 'COPY --from=builder /a /a', status: 'cached' });
    expect(c.text()).toBe('#1 [builder 1/1] RUN a\n#1 CACHED\n#2 [stage-1 1/1] COPY --from=builder /a /a\n#2 CACHED\n');
  });

  it('prints the unfinished output of a step that failed when the build ends', () => {
    const c = capture();
    const p = buildProgressPrinter('plain', c.stream);
    p.event(step(1, 'running', 'RUN false'));
    p.event(output(1, 'partial'));
    p.end();
    expect(c.text()).toBe('#1 [stage-0 1/4] RUN false\n#1 partial\n');
  });

  it("strips the guest's escape sequences and control characters; a carriage return keeps what was written after it", () => {
    const c = capture();
    const p = buildProgressPrinter('plain', c.stream);
    p.event(step(1, 'running', 'RUN x'));
    p.event(output(1, '\x1b[31mred\x1b[0m \x1b]0;title\x07bell\x07\n10%\r50%\r100%\n'));
    p.end();
    expect(c.text()).toBe('#1 [stage-0 1/4] RUN x\n#1 red bell\n#1 100%\n');
  });
});

describe('--progress tty', () => {
  afterEach(() => {
    vi.useRealTimers();
  });

  it('prints a line per step, draws the running step with its output below, then replaces them by the final line', () => {
    vi.useFakeTimers();
    const c = capture();
    const p = buildProgressPrinter('tty', c.stream, { color: false });
    // Redraws are at most every 50 ms: time passes between the events.
    for (const e of BUILD) {
      p.event(e);
      vi.advanceTimersByTime(60);
    }
    p.end();
    const text = c.text();
    expect(text).toContain('[stage-0 2/4] COPY . /app ... CACHED\n');
    expect(text).toContain('[stage-0 1/4] WORKDIR /app ... done\n');
    // Output is drawn indented under the running step's line...
    expect(text).toContain('[stage-0 3/4] RUN make ...\n    cc -o app\n');
    expect(text).toContain('[stage-0 3/4] RUN make ...\n    cc -o app main.c\n    warn\n');
    // ...and the region is cleared (cursor up, clear to the end) before the step's final line.
    expect(text).toMatch(/\x1b\[\d+A\r\x1b\[J\[stage-0 3\/4\] RUN make \.\.\. done 1\.2s\n\[stage-0 4\/4\] CMD \["\/app\/app"\] \.\.\. done\n$/);
  });

  it('colors statuses and dims output unless told not to', () => {
    vi.useFakeTimers();
    const c = capture();
    const p = buildProgressPrinter('tty', c.stream);
    p.event(step(1, 'cached', 'COPY a b'));
    p.event(step(2, 'running', 'RUN x'));
    p.event(output(2, 'hi\n'));
    vi.advanceTimersByTime(60);
    p.end();
    expect(c.text()).toContain('COPY a b ... \x1b[36mCACHED\x1b[0m\n');
    expect(c.text()).toContain('\x1b[2m    hi\x1b[0m\n');
  });

  it('keeps the lines of the live region within the terminal width, so redraws move over exactly what was drawn', () => {
    vi.useFakeTimers();
    const c = capture(30);
    const p = buildProgressPrinter('tty', c.stream, { color: false });
    p.event(step(1, 'running', `RUN ${'x'.repeat(100)}`));
    p.event(output(1, `${'y'.repeat(100)}\n`));
    vi.advanceTimersByTime(60);
    p.end();
    for (const line of c.text().split('\n')) expect(line.replace(/\x1b\[\d*[A-Z]|\r/g, '').length).toBeLessThanOrEqual(29);
  });

  it('leaves a failed step and the end of its output on screen', () => {
    const c = capture();
    const p = buildProgressPrinter('tty', c.stream, { color: false });
    p.event(step(1, 'running', 'RUN false'));
    p.event(output(1, 'last words'));
    p.end();
    expect(c.text().endsWith('[stage-0 1/4] RUN false ...\n    last words\n')).toBe(true);
  });
});

describe('helpers', () => {
  it('quiet prints nothing; auto is tty on a terminal, else plain', () => {
    const c = capture();
    const p = buildProgressPrinter('quiet', c.stream);
    for (const e of BUILD) p.event(e);
    p.end();
    expect(c.text()).toBe('');
    expect(resolveProgressMode('auto', true)).toBe('tty');
    expect(resolveProgressMode('auto', false)).toBe('plain');
    expect(resolveProgressMode('plain', true)).toBe('plain');
    expect(() => resolveProgressMode('fancy', true)).toThrow(/--progress fancy/);
  });

  it('labels steps by stage name, or stage-N', () => {
    expect(stepLabel('0', 2, 5)).toBe('[stage-0 2/5]');
    expect(stepLabel('build', 1, 3)).toBe('[build 1/3]');
  });

  it('sanitizes without touching tabs and plain text', () => {
    expect(sanitize('a\tb \x07\x00c\x1b[2Kd')).toBe('a\tb cd');
  });
});
