import type { RoostErrorCode } from './errors.js';

/**
 * The RoostError code of a failed file operation, by the guest's errno name
 * (`details.errno` of the error): the one table the embedded runtime maps
 * agent errors with and a client can read back. Names not listed are AGENT.
 */
export const ERRNO_CODES: Readonly<Record<string, RoostErrorCode>> = {
  ENOENT: 'NOT_FOUND',
  EACCES: 'PERMISSION_DENIED',
  EPERM: 'PERMISSION_DENIED',
  EEXIST: 'ALREADY_EXISTS',
  EISDIR: 'INVALID_STATE',
  ENOTDIR: 'INVALID_STATE',
  ENOTEMPTY: 'INVALID_STATE',
  EROFS: 'INVALID_STATE',
  EBUSY: 'INVALID_STATE',
  EXDEV: 'INVALID_STATE',
  ETXTBSY: 'INVALID_STATE',
  EINVAL: 'INVALID_ARGUMENT',
  ENAMETOOLONG: 'INVALID_ARGUMENT',
  ELOOP: 'INVALID_ARGUMENT',
  ENOSPC: 'RESOURCE_EXHAUSTED',
  EDQUOT: 'RESOURCE_EXHAUSTED',
  EFBIG: 'RESOURCE_EXHAUSTED',
};

/** The RoostError code for an errno name (`ENOENT` → NOT_FOUND); AGENT for one not in ERRNO_CODES. */
export function errnoCode(name: string): RoostErrorCode {
  return Object.hasOwn(ERRNO_CODES, name) ? ERRNO_CODES[name]! : 'AGENT';
}
