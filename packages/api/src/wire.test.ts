import { describe, expect, it } from 'vitest';
import { decodeExecEvent, decodePullEvent, encodePullProgress, errorFromBody } from './wire.js';
import { isRoostError } from './errors.js';

describe('errorFromBody', () => {
  it('keeps a known code, message and details', () => {
    const e = errorFromBody({ code: 'NOT_FOUND', message: 'no such sandbox', details: { id: 'x' } }, { code: 'INTERNAL', message: 'failed' }, { status: 404 });
    expect(isRoostError(e, 'NOT_FOUND')).toBe(true);
    expect(e.message).toBe('no such sandbox');
    expect(e.details).toEqual({ id: 'x', status: 404 });
  });

  it('replaces a code the table does not know, and a missing message', () => {
    const e = errorFromBody({ code: 'EVIL', details: [1] }, { code: 'UNAVAILABLE', message: 'the stream failed' });
    expect(e.code).toBe('UNAVAILABLE');
    expect(e.message).toBe('the stream failed');
    expect(e.details).toEqual({});
    expect(errorFromBody('garbage', { code: 'INTERNAL', message: 'm' }).code).toBe('INTERNAL');
  });
});

describe('decodeExecEvent', () => {
  it('decodes each event type and ignores unknown ones', () => {
    expect(decodeExecEvent({ type: 'started', execId: 'e1', pid: 7 })).toEqual({ type: 'started', execId: 'e1', pid: 7 });
    expect(decodeExecEvent({ type: 'stdout', data: 'aGk=' })).toEqual({ type: 'stdout', data: 'aGk=' });
    expect(decodeExecEvent({ type: 'stderr', data: 3 })).toBeNull();
    expect(decodeExecEvent({ type: 'exit', exitCode: 1, signal: null })).toEqual({ type: 'exit', exitCode: 1, signal: null });
    expect(decodeExecEvent({ type: 'later-addition' })).toBeNull();
    expect(decodeExecEvent(null)).toBeNull();
    const err = decodeExecEvent({ type: 'error', error: { code: 'TIMEOUT', message: 'too slow' } });
    expect(err?.type === 'error' && err.error.code).toBe('TIMEOUT');
  });
});

describe('pull events', () => {
  it('round-trips progress, status included', () => {
    const p = { image: 'alpine', digest: 'sha256:aa', kind: 'layer' as const, current: 5, total: 10, status: 'verifying' as const };
    expect(decodePullEvent(JSON.parse(JSON.stringify(encodePullProgress(p, false))), 'alpine')).toEqual({ type: 'progress', progress: p });
  });

  it("derives the status from an older daemon's line", () => {
    const line = (completed: number, done: boolean) => ({ type: 'progress', digest: 'd', kind: 'config', completed, total: 10, done });
    const status = (v: unknown) => {
      const e = decodePullEvent(v, 'x');
      return e?.type === 'progress' ? e.progress.status : null;
    };
    expect(status(line(0, false))).toBe('waiting');
    expect(status(line(3, false))).toBe('downloading');
    expect(status(line(10, true))).toBe('done');
  });

  it('rebuilds an error line with IMAGE as the fallback code', () => {
    const e = decodePullEvent({ type: 'error', error: { code: 'nope', message: 'bad manifest' } }, 'x');
    expect(e?.type === 'error' && [e.error.code, e.error.message]).toEqual(['IMAGE', 'bad manifest']);
  });
});
