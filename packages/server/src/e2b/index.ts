import { timingSafeEqual } from 'node:crypto';
import { isRoostError, type SandboxApi } from '@roost/api';
import type { Context } from 'hono';
import type { DaemonRuntime } from '../daemon-runtime.js';
import type { RoostHono } from '../route-context.js';
import { E2bControl, e2bControlRoutes, e2bError, E2B_TEMPLATE_LABEL } from './control.js';
import { filesystemCall, readFile, watchDir, writeFiles } from './files.js';

import { ConnectStream, readEnvelope, readUnary, unaryError } from './connect.js';
import { E2bKeys } from './keys.js';
import { E2bProcesses } from './process.js';
import { effectiveUser, GuestProfiles, startDir } from './profile.js';
import { signedRequest, verifySignature, type FileOperation } from './signature.js';

/** Compares a presented secret with the expected one in constant time. */
function sameSecret(given: string, expected: string): boolean {
  const a = Buffer.from(given);
  const b = Buffer.from(expected);
  return a.length === b.length && timingSafeEqual(a, b);
}

/** The user of an envd request: `Authorization: Basic base64(user:)`, as E2B's SDK sends it. */
export function basicUser(header: string | undefined): string | undefined {
  const m = /^Basic\s+([A-Za-z0-9+/=]+)\s*$/i.exec(header ?? '');
  if (!m) return undefined;
  const user = Buffer.from(m[1]!, 'base64').toString('utf8').split(':')[0];
  return user || undefined;
}

/*
 * The E2B face (issue 18; docs/e2b-wire.md): E2B's control plane and, on
 * the same listener, its in-sandbox daemon ("envd"), routed by the
 * E2b-Sandbox-Id header, so that E2B's SDK, unchanged, drives Roost with
 * E2B_API_URL and E2B_SANDBOX_URL set to the daemon's TCP address.
 * Built so far: the control plane, envd's /health and its process service
 * (no PTYs); the filesystem service and /files are not built yet.
 */

/** Paths of E2B's control plane (authenticated with X-API-KEY). */
const CONTROL_PATH = /^\/((v2\/)?sandboxes|snapshots|templates)(\/|$)/;
/** Paths of envd (authenticated with the sandbox's X-Access-Token, /health with none). */
const ENVD_PATH = /^\/(health|files|envs|process\.Process\/[A-Za-z]+|filesystem\.Filesystem\/[A-Za-z]+)$/;

/** Which face a request is for: E2B's control plane, envd, or Roost's own API. */
export function e2bFaceOf(path: string): 'control' | 'envd' | null {
  if (CONTROL_PATH.test(path)) return 'control';
  if (ENVD_PATH.test(path)) return 'envd';
  return null;
}

/**
 * Registers the E2B face over `control` (the daemon's, shared with its
 * sandbox-host router; default: one of its own); returns the check of a
 * request's E2B credentials (for the app's auth).
 */
export function e2bRoutes(app: RoostHono, runtime: DaemonRuntime, shutdown?: AbortSignal, control = new E2bControl(runtime)): (c: Context) => Promise<boolean> {
  // Made on first use: registering the routes touches no runtime (the OpenAPI test lists them with none).
  let keys: E2bKeys | undefined;
  e2bControlRoutes(app, runtime, shutdown, control);

  /** E2B's edge answers 502 for a sandbox that is gone: the SDK reads it as "killed or timed out". */
  const gone = (c: Context) => c.json({ code: 502, message: 'The sandbox was not found' }, 502);
  /**
   * An envd route: the sandbox named by E2b-Sandbox-Id (gone: 502), then
   * `fn`; its failures answered by `fail` in the route's own error shape.
   */
  const envd =
    (fn: (sandbox: SandboxApi, c: Context) => Promise<Response>, fail: (e: unknown, c: Context) => Response) =>
    async (c: Context): Promise<Response> => {
      let sandbox: SandboxApi;
      try {
        // A signed /files URL names its sandbox by its signature alone (see the auth check below).
        sandbox = await control.sandbox(c.req.header('e2b-sandbox-id') ?? signedSandbox.get(c.req.raw) ?? '');
      } catch (e) {
        return isRoostError(e, 'NOT_FOUND') ? gone(c) : fail(e, c);
      }
      try {
        return await fn(sandbox, c);
      } catch (e) {
        return fail(e, c);
      }
    };
  /** A streaming call's failure: an end-stream envelope carrying the error. */
  const streamError = (e: unknown) => {
    const stream = new ConnectStream();
    stream.end(e);
    return stream.response;
  };

  // envd's liveness: 204 while the sandbox runs, 502 otherwise.
  app.get(
    '/health',
    envd(
      async (sb, c) => (sb.status === 'running' || sb.status === 'paused' ? c.body(null, 204) : gone(c)),
      (_e, c) => gone(c),
    ),
  );

  // What each guest has (bash, its users and their homes): ./profile.ts.
  const profiles = new GuestProfiles();
  /** The user of an envd call: the Authorization header's, else the template's default. */
  const userOf = async (sandbox: SandboxApi, c: Context) => effectiveUser(await profiles.get(sandbox), basicUser(c.req.header('authorization')));
  const timeoutOf = (c: Context) => {
    const ms = Number(c.req.header('connect-timeout-ms') ?? 0);
    return Number.isSafeInteger(ms) && ms > 0 ? ms : undefined;
  };
  const keepaliveOf = (c: Context) => {
    const s = Number(c.req.header('keepalive-ping-interval') ?? 0);
    return Number.isFinite(s) && s > 0 ? s * 1000 : undefined;
  };

  // envd's process service (./process.ts), over Connect (./connect.ts).
  const processes = new E2bProcesses();
  const isStreaming = (c: Context) => ['Start', 'Connect'].includes(c.req.param('method') ?? '');
  app.post(
    '/process.Process/:method',
    envd(
      async (sandbox, c) => {
        const method = c.req.param('method');
        if (method === 'Start') {
          const message = await readEnvelope(c.req.raw);
          const profile = await profiles.get(sandbox);
          const user = await userOf(sandbox, c);
          return processes.start(sandbox, message, {
            user,
            home: await startDir(sandbox, profile, user),
            timeoutMs: timeoutOf(c),
            keepaliveMs: keepaliveOf(c),
            hasBash: profile.hasBash,
          });
        }
        if (method === 'Connect') return processes.connect(sandbox, await readEnvelope(c.req.raw));
        const message = await readUnary(c.req.raw);
        if (method === 'List') return c.json(processes.list(sandbox));
        if (method === 'SendSignal') return c.json(processes.signal(sandbox, message));
        if (method === 'SendInput') return c.json(await processes.input(sandbox, message));
        if (method === 'CloseStdin') return c.json(processes.closeStdin(sandbox, message));
        if (method === 'Update') return c.json(processes.update(sandbox, message));
        return c.json({ code: 'unimplemented', message: `process.Process/${method} is not served by Roost's E2B face` }, 501);
      },
      (e, c) => (isStreaming(c) ? streamError(e) : unaryError(e)),
    ),
  );

  // envd's filesystem service and /files (./files.ts).
  app.post(
    '/filesystem.Filesystem/:method',
    envd(
      async (sandbox, c) => {
        const method = c.req.param('method')!;
        const profile = await profiles.get(sandbox);
        const user = await userOf(sandbox, c);
        if (method === 'WatchDir')
          return watchDir(sandbox, profile, await readEnvelope(c.req.raw), user, { timeoutMs: timeoutOf(c), keepaliveMs: keepaliveOf(c) });
        return c.json(await filesystemCall(sandbox, profile, method, await readUnary(c.req.raw), user));
      },
      (e, c) => (c.req.param('method') === 'WatchDir' ? streamError(e) : unaryError(e)),
    ),
  );
  // envd's HTTP errors: `{ code: <status>, message }`; 404 is the SDK's FileNotFoundError.
  const files = (fn: (sandbox: SandboxApi, c: Context) => Promise<Response>) => envd(fn, (e, c) => e2bError(c, e));
  app.get(
    '/files',
    files(async (sandbox, c) => readFile(sandbox, await profiles.get(sandbox), new URL(c.req.url))),
  );
  app.post(
    '/files',
    files(async (sandbox, c) => writeFiles(sandbox, await profiles.get(sandbox), c.req.raw, new URL(c.req.url))),
  );

  /**
   * The sandbox a signed /files URL was signed for (docs/e2b-wire.md §3.6).
   * Such a URL carries no sandbox id when E2B_SANDBOX_URL is shared: the
   * sandbox is the one whose access token makes the signature (a SHA-256
   * per live E2B sandbox, computed only for signed requests).
   */
  const signedSandbox = new WeakMap<Request, string>();
  const signedFor = async (c: Context): Promise<string | null> => {
    const claims = signedRequest(new URL(c.req.url));
    if (!claims) return null;
    const op: FileOperation = c.req.method === 'GET' ? 'read' : 'write';
    const named = c.req.header('e2b-sandbox-id');
    const candidates = named ? [named] : (await runtime.list({ labels: [E2B_TEMPLATE_LABEL] })).map((i) => i.id);
    const id = candidates.find((id) => /^[0-9a-f]{12}$/.test(id) && verifySignature(claims, op, control.accessToken(id)));
    if (id) signedSandbox.set(c.req.raw, id);
    return id ?? null;
  };

  return async (c) => {
    const face = e2bFaceOf(c.req.path);
    if (face === 'control') return (keys ??= new E2bKeys(runtime.home)).verify(c.req.header('x-api-key'));
    if (c.req.path === '/health') return true;
    const id = c.req.header('e2b-sandbox-id');
    const token = c.req.header('x-access-token');
    // /files takes a signed URL instead of the token (downloadUrl, uploadUrl).
    if (!token && c.req.path === '/files') return (await signedFor(c)) !== null;
    return !!id && !!token && /^[0-9a-f]{12}$/.test(id) && sameSecret(token, control.accessToken(id));
  };
}

export { E2bKeys, E2B_TEMPLATE_LABEL };
