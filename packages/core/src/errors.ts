export { RoostError, isRoostError, ERROR_STATUS, abortError, type RoostErrorCode } from '@roost/api';
export { diskFullError, diskFullErrno, rethrowDiskFull, throwIfDiskFull } from '@roost/api';
