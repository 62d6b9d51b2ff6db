export { RoostError, isRoostError, ERROR_STATUS, abortError, type RoostErrorCode } from '@roost/api';
