import { createHash, timingSafeEqual } from 'node:crypto';
import { setMaxListeners } from 'node:events';
import type { ServerResponse } from 'node:http';
import { DEFAULT_SESSION_GRACE_MS, DEFAULT_SESSION_KEEPALIVE_MS, MAX_JSON_BODY, RoostError, type McpSettings } from '@roost/api';
import { Hono, type Context } from 'hono';
import { bodyLimit } from 'hono/body-limit';
import { actorRawBodyRoute, actorRoutes } from './actors.js';
import type { DaemonRuntime } from './daemon-runtime.js';
import { deploymentRoutes } from './deployments.js';
import { doctorRoutes } from './doctor.js';
import type { E2bControl } from './e2b/control.js';
import { e2bFaceOf, e2bRoutes } from './e2b/index.js';
import { eventRoutes } from './events.js';
import { execRoutes } from './exec.js';
import { ExecRegistry } from './exec-registry.js';
import { FILE_UPLOAD_ROUTE, fileRoutes } from './files.js';
import { bodyTooLarge, errorResponse } from './http.js';
import { imageRoutes } from './images.js';
import { McpHttpSessions } from './mcp/http.js';
import { networkRoutes } from './network.js';
import { openapiDocument } from './openapi.js';
import { PROMETHEUS_CONTENT_TYPE, prometheusText } from './prometheus.js';
import { ResponseStream } from './response-stream.js';
import type { RouteContext, RoostEnv, RoostHono } from './route-context.js';
import { sandboxRoutes } from './sandboxes.js';
import { SessionRegistry } from './session-registry.js';
import { sessionRoutes } from './sessions.js';
import { poolRoutes } from './pools.js';
import { snapshotRoutes } from './snapshots.js';
import { volumeRoutes } from './volumes.js';

/** Limits of the daemon's HTTP face (the runtime's own limits are options of Runtime.open). */
export interface AppLimits {
  /** Requests handled at once, streams included; beyond it, 503 UNAVAILABLE (default 256). */
  maxInFlight?: number;
  /** Interval of the SSE heartbeat comments in ms (default 15 s). */
  sseHeartbeatMs?: number;
  /** How long a client's session waits, once its connection is gone, for the client to resume it before its sandboxes end (ms; default 5 s). */
  sessionGraceMs?: number;
  /** Interval of the keepalive lines of session streams in ms (default 15 s). */
  sessionKeepaliveMs?: number;
}

/** Options of `createApp`. */
export interface AppOptions {
  runtime: DaemonRuntime;
  /** The bearer token every request must carry; null turns auth off (refused by `serve` on any non-loopback address). */
  token: string | null;
  /** Reported by /v1/health. */
  version: string;
  limits?: AppLimits;
  /** Aborting it ends every stream (SSE, exec, pull) and kills the commands started through the app. */
  shutdown?: AbortSignal;
  /** Limits of the MCP sessions at /mcp (default: the environment's, see `mcpSettings`). */
  mcp?: McpSettings;
  /** The E2B face's state, when the caller shares it (`serve` does, with its sandbox-host router); default: the app's own. */
  e2b?: E2bControl;
  /**
   * The TCP listener's `http://host:port`, reported by /v1/health (null, the
   * default: none). A function: the app is made before the listener binds.
   */
  url?: () => string | null;
}

/** The default of `AppLimits.maxInFlight`. */
export const DEFAULT_MAX_IN_FLIGHT = 256;

const STDIN_ROUTE = /^\/v1\/sandboxes\/[^/]+\/execs\/[^/]+\/stdin$/;

/**
 * The daemon's HTTP application: routes parse with the API's zod schemas,
 * call the runtime, and map RoostErrors to statuses with ERROR_STATUS. Serve
 * it with @hono/node-server (see `serve`), or call `app.request()` in tests.
 */
export function createApp(options: AppOptions): RoostHono {
  const app: RoostHono = new Hono<RoostEnv>();
  const started = Date.now();
  const maxInFlight = options.limits?.maxInFlight ?? DEFAULT_MAX_IN_FLIGHT;
  const shutdown = options.shutdown ?? new AbortController().signal;
  // Every stream and boot in flight listens to it: hundreds are normal, not a leak.
  setMaxListeners(0, shutdown);
  const execs = new ExecRegistry();
  const sessions = new SessionRegistry(options.runtime, {
    graceMs: options.limits?.sessionGraceMs ?? DEFAULT_SESSION_GRACE_MS,
    keepaliveMs: options.limits?.sessionKeepaliveMs ?? DEFAULT_SESSION_KEEPALIVE_MS,
  });
  shutdown.addEventListener(
    'abort',
    () => {
      // The runtime's close ends the sessions' sandboxes (those not detached), as it would without sessions.
      sessions.close();
      execs.killAll();
    },
    { once: true },
  );
  let inFlight = 0;

  const ctx: RouteContext = {
    runtime: options.runtime,
    execs,
    sessions,
    shutdown,
    heartbeatMs: options.limits?.sseHeartbeatMs ?? 15_000,
    openStream(c, contentType, streamOptions) {
      c.set('streaming', true);
      const outgoing = (c.env as { outgoing?: ServerResponse } | undefined)?.outgoing;
      const stream = new ResponseStream({ contentType, onEnd: c.get('releaseSlot'), outgoing, ...streamOptions });
      // A client gone before the body was read never cancels it: end it here too.
      clientGone(c).addEventListener('abort', () => stream.abort(), { once: true });
      return stream;
    },
    clientGone,
  };

  app.onError((err, c) => {
    if (!(err instanceof RoostError) && !(err instanceof Error && 'getResponse' in err)) {
      process.stderr.write(`roost serve: ${c.req.method} ${c.req.path}: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
    }
    return errorResponse(c, err);
  });
  app.notFound((c) => errorResponse(c, new RoostError('NOT_FOUND', `no route ${c.req.method} ${c.req.path} (see GET /v1/openapi.json)`)));

  // Auth first: nothing, not even a 404, is answered to a caller without the token.
  const expected = options.token === null ? null : digest(options.token);
  // E2B's face (./e2b) authenticates its own way: X-API-KEY, or a sandbox's access token.
  let e2bAuth: ((c: Context<RoostEnv>) => Promise<boolean>) | null = null;
  app.use('*', async (c, next) => {
    if (e2bAuth && e2bFaceOf(c.req.path)) {
      if (await e2bAuth(c)) return next();
      return c.json({ code: 401, message: 'Invalid API key or access token: make a key with `roost e2b key create`' }, 401);
    }
    if (expected === null) return next();
    const header = c.req.header('authorization') ?? '';
    const m = /^Bearer\s+(\S+)\s*$/i.exec(header);
    // Hashes have equal lengths, so the compare takes the same time whatever was sent.
    if (!m || !timingSafeEqual(digest(m[1]!), expected)) {
      return errorResponse(
        c,
        new RoostError(
          'UNAUTHENTICATED',
          header
            ? 'the bearer token is not valid for this daemon'
            : 'an Authorization: Bearer <token> header is required (the token is in the api-token file of the Roost home)',
        ),
      );
    }
    return next();
  });

  app.use('*', async (c, next) => {
    if (inFlight >= maxInFlight) {
      const res = errorResponse(
        c,
        new RoostError('UNAVAILABLE', `the daemon is handling ${inFlight} requests, its limit: retry shortly`, { details: { maxInFlight } }),
      );
      res.headers.set('Retry-After', '1');
      return res;
    }
    inFlight++;
    let released = false;
    c.set('releaseSlot', () => {
      if (released) return;
      released = true;
      inFlight--;
    });
    c.set('streaming', false);
    try {
      await next();
    } finally {
      // A streamed response keeps its slot until the stream ends.
      if (!c.get('streaming') || c.error) c.get('releaseSlot')();
    }
  });

  // JSON bodies are bounded (413, naming the limit); a command's stdin and file contents stream through their own routes.
  const limit = bodyLimit({ maxSize: MAX_JSON_BODY, onError: (c) => errorResponse(c, bodyTooLarge(), 413) });
  // So do file uploads (PUT .../files/content and .../files/archive), streamed into the guest.
  // And E2B's /files uploads (bounded by the E2B face itself), build contexts (bounded by their route: MAX_BUILD_CONTEXT_BYTES),
  // and actor modules and messages (raw bytes, bounded by their routes: MAX_ACTOR_MODULE_BYTES, MAX_ACTOR_MESSAGE_BYTES).
  const rawBody = (method: string, path: string) =>
    STDIN_ROUTE.test(path) ||
    (method === 'PUT' && FILE_UPLOAD_ROUTE.test(path)) ||
    (method === 'POST' && (path === '/files' || path === '/v1/images/build')) ||
    actorRawBodyRoute(method, path);
  app.use('*', (c, next) => (rawBody(c.req.method, c.req.path) ? next() : limit(c, next)));

  app.get('/v1/health', (c) =>
    c.json({
      status: 'ok' as const,
      version: options.version,
      home: options.runtime.home,
      pid: process.pid,
      uptimeSeconds: (Date.now() - started) / 1000,
      url: options.url?.() ?? null,
    }),
  );
  app.get('/v1/openapi.json', (c) => c.json(openapiDocument()));

  sandboxRoutes(app, ctx);
  sessionRoutes(app, ctx);
  execRoutes(app, ctx);
  imageRoutes(app, ctx);
  eventRoutes(app, ctx);
  volumeRoutes(app, ctx);
  snapshotRoutes(app, ctx);
  poolRoutes(app, ctx);
  deploymentRoutes(app, ctx);
  actorRoutes(app, ctx);
  networkRoutes(app, ctx);
  fileRoutes(app, ctx);
  doctorRoutes(app, ctx);

  // E2B's control plane and envd (./e2b), for E2B's SDK unchanged.
  e2bAuth = e2bRoutes(app, options.runtime, shutdown, options.e2b);

  // MCP over Streamable HTTP (docs/mcp.md): the SDK's transport answers, behind the same token.
  const mcp = new McpHttpSessions(options.runtime, { version: options.version, shutdown, ...(options.mcp ? { settings: options.mcp } : {}) });
  for (const method of ['GET', 'POST', 'DELETE'] as const) app.on(method, '/mcp', (c) => mcp.handle(c.req.raw));

  app.get('/v1/metrics', async (c) => c.json(await options.runtime.metrics()));
  app.get('/metrics', async (c) => c.body(prometheusText(await options.runtime.metrics()), 200, { 'content-type': PROMETHEUS_CONTENT_TYPE }));

  return app;
}

function digest(s: string): Buffer {
  return createHash('sha256').update(s).digest();
}

/**
 * Aborts when the client of a request goes away before its response is
 * complete: through the node response when served by @hono/node-server
 * (its `close` before `finish`), else through the request's own signal.
 */
function clientGone(c: Context<RoostEnv>): AbortSignal {
  const outgoing = (c.env as { outgoing?: ServerResponse } | undefined)?.outgoing;
  if (!outgoing) return c.req.raw.signal;
  const ac = new AbortController();
  if (outgoing.destroyed && !outgoing.writableFinished) ac.abort();
  else outgoing.once('close', () => outgoing.writableFinished || ac.abort());
  return ac.signal;
}
