import { describe, expect, it } from 'vitest';
import { diskFullErrno, diskFullError, rethrowDiskFull, throwIfDiskFull } from './disk-full.js';
import { errorStatus, RoostError } from './errors.js';

const enospc = () => Object.assign(new Error('ENOSPC: no space left on device, write'), { code: 'ENOSPC', path: '/home/r/snapshots/x/memory' });
const sqliteFull = () => Object.assign(new Error('database or disk is full'), { code: 'SQLITE_FULL' });

describe('diskFullError: one classification of a full host disk', () => {
  it('knows fs errors, quotas, SQLite and tools by their codes and words, through causes', () => {
    expect(diskFullErrno(enospc())).toBe('ENOSPC');
    expect(diskFullErrno(Object.assign(new Error('quota'), { code: 'EDQUOT' }))).toBe('EDQUOT');
    expect(diskFullErrno(sqliteFull())).toBe('ENOSPC');
    expect(diskFullErrno(new Error('qemu-img: Could not write: No space left on device'))).toBe('ENOSPC');
    expect(diskFullErrno(new RoostError('IMAGE', 'storing failed', { cause: enospc() }))).toBe('ENOSPC');
    expect(diskFullErrno(new RoostError('VMM', 'qemu-img failed (exit 1)', { cause: new Error('Disk quota exceeded') }))).toBe('EDQUOT');
  });

  it('leaves other errors alone, and a guest ENOSPC (a file operation in the guest) is not the host disk', () => {
    expect(diskFullErrno(Object.assign(new Error('nope'), { code: 'EACCES' }))).toBeNull();
    expect(diskFullErrno(Object.assign(new Error('locked'), { code: 'SQLITE_BUSY' }))).toBeNull();
    expect(diskFullErrno('ENOSPC')).toBeNull();
    expect(diskFullErrno(null)).toBeNull();
    const guest = new RoostError('RESOURCE_EXHAUSTED', '/big: No space left on device', { details: { errno: 'ENOSPC', path: '/big' } });
    expect(diskFullErrno(guest)).toBeNull();
    expect(diskFullError(guest, '/home/r')).toBeNull();
    expect(diskFullError(new Error('boom'))).toBeNull();
  });

  it('makes RESOURCE_EXHAUSTED with the path written to, details saying disk, and the cause', () => {
    const cause = sqliteFull();
    const e = diskFullError(cause, '/home/r/roost.db')!;
    expect(e).toBeInstanceOf(RoostError);
    expect(e.code).toBe('RESOURCE_EXHAUSTED');
    expect(e.message).toBe('the disk holding /home/r/roost.db is full: free space and retry');
    expect(e.details).toEqual({ resource: 'disk', errno: 'ENOSPC', path: '/home/r/roost.db' });
    expect(e.cause).toBe(cause);
    // An fs error's own path when none is given; a quota says so; none at all: the host's disk.
    expect(diskFullError(enospc())!.message).toBe('the disk holding /home/r/snapshots/x/memory is full: free space and retry');
    expect(diskFullError(Object.assign(new Error('q'), { code: 'EDQUOT' }), '/h')!.message).toBe('the disk holding /h is over its quota: free space and retry');
    expect(diskFullError(sqliteFull())!.message).toBe("the host's disk is full: free space and retry");
    // Already one: returned as it is (an outer layer does not rename the path).
    expect(diskFullError(e, '/elsewhere')).toBe(e);
  });

  it('throws it, or the error itself, or nothing', () => {
    expect(() => rethrowDiskFull(enospc(), '/h')).toThrow(/disk holding \/h is full/);
    expect(() => rethrowDiskFull(new Error('other'), '/h')).toThrow('other');
    expect(() => throwIfDiskFull(enospc(), '/h')).toThrow(RoostError);
    expect(() => throwIfDiskFull(new Error('other'), '/h')).not.toThrow();
  });
});

describe('errorStatus', () => {
  it('is 507 for a full disk (host or guest), 429 for a limit, the table otherwise', () => {
    expect(errorStatus(diskFullError(enospc(), '/h')!)).toBe(507);
    expect(errorStatus(new RoostError('RESOURCE_EXHAUSTED', 'guest full', { details: { errno: 'ENOSPC' } }))).toBe(507);
    expect(errorStatus(new RoostError('RESOURCE_EXHAUSTED', '16 sandboxes boot already'))).toBe(429);
    expect(errorStatus(new RoostError('RESOURCE_EXHAUSTED', 'too big', { details: { errno: 'EFBIG' } }))).toBe(429);
    expect(errorStatus(new RoostError('NOT_FOUND', 'no'))).toBe(404);
    expect(errorStatus({ code: 'INTERNAL' })).toBe(500);
  });
});
