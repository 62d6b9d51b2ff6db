import type { Context } from 'hono';
import type { DaemonRuntime } from '../daemon-runtime.js';
import type { RoostHono } from '../route-context.js';
import { e2bControlRoutes, E2B_TEMPLATE_LABEL } from './control.js';
import { E2bKeys } from './keys.js';

/*
 * The E2B face (issue 18; docs/e2b-wire.md): E2B's control plane and, on
 * the same listener, its in-sandbox daemon ("envd"), routed by the
 * E2b-Sandbox-Id header, so that E2B's SDK, unchanged, drives Roost with
 * E2B_API_URL and E2B_SANDBOX_URL set to the daemon's TCP address.
 * Built so far: the control plane and envd's /health.
 */

/** Paths of E2B's control plane (authenticated with X-API-KEY). */
const CONTROL_PATH = /^\/(v2\/)?sandboxes(\/|$)/;
/** Paths of envd (authenticated with the sandbox's X-Access-Token, /health with none). */
const ENVD_PATH = /^\/(health|files|envs|process\.Process\/[A-Za-z]+|filesystem\.Filesystem\/[A-Za-z]+)$/;

/** Which face a request is for: E2B's control plane, envd, or Roost's own API. */
export function e2bFaceOf(path: string): 'control' | 'envd' | null {
  if (CONTROL_PATH.test(path)) return 'control';
  if (ENVD_PATH.test(path)) return 'envd';
  return null;
}

/** Registers the E2B face; returns the check of a request's E2B credentials (for the app's auth). */
export function e2bRoutes(app: RoostHono, runtime: DaemonRuntime): (c: Context) => Promise<boolean> {
  // Made on first use: registering the routes touches no runtime (the OpenAPI test lists them with none).
  let keys: E2bKeys | undefined;
  const control = e2bControlRoutes(app, runtime);

  // envd's liveness: 204 while the sandbox runs, 502 (E2B's edge for a dead sandbox) otherwise.
  app.get('/health', async (c) => {
    const id = c.req.header('e2b-sandbox-id') ?? '';
    const alive = await control.sandbox(id).then(
      (sb) => sb.status === 'running' || sb.status === 'paused',
      () => false,
    );
    return alive ? c.body(null, 204) : c.json({ code: 502, message: 'The sandbox was not found' }, 502);
  });

  return async (c) => {
    const face = e2bFaceOf(c.req.path);
    if (face === 'control') return (keys ??= new E2bKeys(runtime.home)).verify(c.req.header('x-api-key'));
    if (c.req.path === '/health') return true;
    const id = c.req.header('e2b-sandbox-id');
    const token = c.req.header('x-access-token');
    return !!id && !!token && /^[0-9a-f]{12}$/.test(id) && token === control.accessToken(id);
  };
}

export { E2bKeys, E2B_TEMPLATE_LABEL };
