import { join } from 'node:path';

/** The daemon's unix socket under a Roost home (mode 0600). */
export function daemonSocketPath(home: string): string {
  return join(home, 'roost.sock');
}

/** The API token file under a Roost home (0600, made on the daemon's first start). */
export function apiTokenPath(home: string): string {
  return join(home, 'api-token');
}

/** The default TCP port of `roost serve --tcp`. */
export const DEFAULT_TCP_PORT = 7423;
/** Request bodies larger than this are refused with 400 (stdin streams go through their own endpoint). */
export const MAX_JSON_BODY = 1 << 20;
/** Version of the REST API (the path prefix). */
export const API_VERSION = 'v1';
