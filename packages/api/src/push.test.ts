import { describe, expect, it } from 'vitest';
import { encodePushProgress, PushEventSchema, pushProgressDone, PushImageOptionsSchema, PushImageRequestSchema, type PushResult } from './push.js';
import { decodePushEvent } from './wire.js';

const result: PushResult = {
  imageId: 'sha256:aa',
  destination: 'r:5000/team/app:1',
  manifestDigest: 'sha256:aa',
  mediaType: 'application/vnd.oci.image.manifest.v1+json',
  blobs: { exists: 1, mounted: 1, pushed: 2 },
  bytes: { pushed: 10, total: 20 },
};

describe('push events', () => {
  it('round-trips progress lines, which match the event schema', () => {
    const p = { image: 'r:5000/team/app:1', digest: 'sha256:aa', kind: 'layer' as const, current: 5, total: 10, status: 'uploading' as const };
    const line = JSON.parse(JSON.stringify(encodePushProgress(p)));
    expect(PushEventSchema.safeParse(line).success).toBe(true);
    expect(line.done).toBe(false);
    expect(decodePushEvent(line, 'r:5000/team/app:1')).toEqual({ type: 'progress', progress: p });
    expect(encodePushProgress({ ...p, status: 'mounted' }).done).toBe(true);
  });

  it('decodes the result, rebuilds errors, and ignores what it does not know', () => {
    expect(decodePushEvent({ type: 'done', result }, 'x')).toEqual({ type: 'done', result });
    const e = decodePushEvent({ type: 'error', error: { code: 'nope', message: 'denied' } }, 'x');
    expect(e?.type === 'error' && [e.error.code, e.error.message]).toEqual(['IMAGE', 'denied']);
    expect(decodePushEvent({ type: 'progress', digest: 'd', kind: 'layer', completed: 1, total: 2, done: false, status: 'teleporting' }, 'x')).toBeNull();
    expect(decodePushEvent({ type: 'later' }, 'x')).toBeNull();
    expect(decodePushEvent('junk', 'x')).toBeNull();
  });

  it('says which statuses are final', () => {
    expect(['exists', 'mounted', 'pushed'].every((status) => pushProgressDone({ status: status as never }))).toBe(true);
    expect(['waiting', 'checking', 'uploading', 'retrying', 'failed'].some((status) => pushProgressDone({ status: status as never }))).toBe(false);
  });
});

describe('push inputs', () => {
  it('takes a source and an optional destination, nothing else', () => {
    expect(PushImageRequestSchema.safeParse({ source: 'app:1' }).success).toBe(true);
    expect(PushImageRequestSchema.safeParse({ source: 'app:1', destination: 'r:5000/x:1' }).success).toBe(true);
    expect(PushImageRequestSchema.safeParse({ source: '' }).success).toBe(false);
    expect(PushImageRequestSchema.safeParse({ source: 'a', tag: 'b' }).success).toBe(false);
    expect(PushImageOptionsSchema.safeParse({ onProgress: () => {}, signal: new AbortController().signal }).success).toBe(true);
    expect(PushImageOptionsSchema.safeParse({ onProgress: 'no' }).success).toBe(false);
  });
});
