import {
  actorCallResult,
  ActorMessagesQuerySchema,
  CreateActorRequestSchema,
  MAX_ACTOR_MESSAGE_BYTES,
  MAX_ACTOR_MODULE_BYTES,
  RoostError,
  type ActorMessageRecord,
  type ActorReply,
  type CreateActorOptions,
  type CreateActorRequest,
} from '@roost/api';
import type { Context } from 'hono';
import { errorBody, errorResponse, intParam, parseJsonBody, queryParams, toRoostError, validationError } from './http.js';
import type { RouteContext, RoostEnv, RoostHono } from './route-context.js';

/*
 * The REST face of actors (docs/actors.md): modules, actors, messages,
 * calls, state, versions and the handled-message stream, over the
 * contract's ActorsApi. Module and message bodies are raw bytes, bounded
 * here (MAX_ACTOR_MODULE_BYTES, MAX_ACTOR_MESSAGE_BYTES), not by the JSON
 * body limit: see `actorRawBodyRoute`.
 */

/** The longest wait of a call (`?timeoutMs=`): what a timer can wait. */
export const MAX_CALL_TIMEOUT_MS = 2_147_483_647;

/** How long an SSE client waits before reconnecting after the stream drops (the `retry:` field). */
const RETRY_MS = 1_000;

const ACTOR_MESSAGE_ROUTE = /^\/v1\/actors\/[^/]+\/(messages|call)$/;

/** True for the actor routes whose body is raw bytes, bounded by their own limit rather than MAX_JSON_BODY. */
export function actorRawBodyRoute(method: string, path: string): boolean {
  return method === 'POST' && (path === '/v1/actors/modules' || ACTOR_MESSAGE_ROUTE.test(path));
}

/** The error of a raw body over its limit (answered 413). */
function bodyTooLarge(what: string, maxBytes: number): RoostError {
  return new RoostError('INVALID_ARGUMENT', `request body: ${what} is larger than the limit of ${maxBytes} bytes (${maxBytes / 1024 / 1024} MiB)`, {
    details: { field: '', maxBytes },
  });
}

/** Reads a raw request body of at most `maxBytes`; past it (by Content-Length or as it arrives), the 413 answer. */
async function readBody(c: Context<RoostEnv>, what: string, maxBytes: number): Promise<Uint8Array | Response> {
  const length = Number(c.req.header('content-length') ?? NaN);
  if (length > maxBytes) return errorResponse(c, bodyTooLarge(what, maxBytes), 413);
  const body = c.req.raw.body;
  if (!body) return new Uint8Array(0);
  const reader = body.getReader();
  const chunks: Uint8Array[] = [];
  let total = 0;
  try {
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      total += value.byteLength;
      if (total > maxBytes) return errorResponse(c, bodyTooLarge(what, maxBytes), 413);
      chunks.push(value);
    }
  } finally {
    // The rest of a refused body is not read: the connection ends with the answer.
    await reader.cancel().catch(() => {});
  }
  return Buffer.concat(chunks);
}

/** The create request as `runtime.actors.create` takes it: `init` or `initBase64` as bytes. */
function createOptions(req: CreateActorRequest): CreateActorOptions {
  const { init, initBase64, ...rest } = req;
  const options: CreateActorOptions = rest;
  if (init !== undefined) options.init = Buffer.from(init, 'utf8');
  else if (initBase64 !== undefined) {
    if (initBase64.length % 4 !== 0 || !/^[A-Za-z0-9+/]*={0,2}$/.test(initBase64)) {
      throw new RoostError('INVALID_ARGUMENT', 'request body: initBase64: not valid base64', { details: { field: 'initBase64' } });
    }
    options.init = Buffer.from(initBase64, 'base64');
  }
  return options;
}

/** The query of GET .../messages, parsed with the contract's schema; Last-Event-ID (an SSE reconnect) wins over `after`. */
function messagesQuery(c: Context<RoostEnv>): { after?: number; follow: boolean; limit?: number } {
  const q = queryParams(c, ['after', 'follow', 'limit']);
  const raw: Record<string, string> = {};
  for (const [name, values] of q) raw[name] = values.at(-1) ?? '';
  // Present without a value: `?follow`.
  if (raw.follow === '') raw.follow = 'true';
  const r = ActorMessagesQuerySchema.safeParse(raw);
  if (!r.success) throw validationError('query', r.error);
  const out: { after?: number; follow: boolean; limit?: number } = { follow: r.data.follow === '1' || r.data.follow === 'true' };
  if (r.data.after !== undefined) out.after = r.data.after;
  if (r.data.limit !== undefined) out.limit = r.data.limit;
  const lastEventId = c.req.header('last-event-id')?.trim();
  if (lastEventId) {
    if (!/^\d{1,15}$/.test(lastEventId))
      throw new RoostError('INVALID_ARGUMENT', `Last-Event-ID: expected a message seq, got "${lastEventId}"`, { details: { field: 'Last-Event-ID' } });
    out.after = Number(lastEventId);
  }
  return out;
}

const wantsSse = (c: Context<RoostEnv>) => /\btext\/event-stream\b/i.test(c.req.header('accept') ?? '');

/** Registers `/v1/actors`: modules, actors, messages and calls, state, versions, snapshots, the message stream. */
export function actorRoutes(app: RoostHono, ctx: RouteContext): void {
  const { runtime } = ctx;
  const actorOf = (c: Context<RoostEnv>) => c.req.param('actor')!;

  // Modules first: GET /v1/actors/modules is not the actor named "modules".
  app.post('/v1/actors/modules', async (c) => {
    queryParams(c, []);
    const type = (c.req.header('content-type') ?? '').split(';')[0]!.trim().toLowerCase();
    if (type !== '' && type !== 'application/wasm' && type !== 'application/octet-stream') {
      throw new RoostError('INVALID_ARGUMENT', `request body: a module is WASM bytes (Content-Type: application/wasm), not ${type}`, {
        details: { field: '' },
      });
    }
    const body = await readBody(c, 'the module', MAX_ACTOR_MODULE_BYTES);
    if (body instanceof Response) return body;
    const info = await runtime.actors.deploy(body, { signal: AbortSignal.any([ctx.clientGone(c), ctx.shutdown]) });
    return c.json(info, 201);
  });

  app.get('/v1/actors/modules', async (c) => {
    queryParams(c, []);
    return c.json({ modules: await runtime.actors.modules() });
  });

  app.delete('/v1/actors/modules/:digest', async (c) => {
    queryParams(c, []);
    await runtime.actors.removeModule(c.req.param('digest'));
    return c.body(null, 204);
  });

  app.post('/v1/actors', async (c) => {
    queryParams(c, []);
    const req = await parseJsonBody(c, CreateActorRequestSchema);
    const info = await runtime.actors.create({ ...createOptions(req), signal: AbortSignal.any([ctx.clientGone(c), ctx.shutdown]) });
    c.header('Location', `/v1/actors/${info.id}`);
    return c.json(info, 201);
  });

  app.get('/v1/actors', async (c) => {
    queryParams(c, []);
    return c.json({ actors: await runtime.actors.list() });
  });

  app.get('/v1/actors/:actor', async (c) => {
    queryParams(c, []);
    return c.json(await runtime.actors.get(actorOf(c)));
  });

  app.delete('/v1/actors/:actor', async (c) => {
    queryParams(c, []);
    await runtime.actors.remove(actorOf(c));
    return c.body(null, 204);
  });

  app.post('/v1/actors/:actor/messages', async (c) => {
    queryParams(c, []);
    const body = await readBody(c, 'the message', MAX_ACTOR_MESSAGE_BYTES);
    if (body instanceof Response) return body;
    const sent = await runtime.actors.send(actorOf(c), body, { signal: AbortSignal.any([ctx.clientGone(c), ctx.shutdown]) });
    return c.json({ seq: sent.seq }, 202);
  });

  app.post('/v1/actors/:actor/call', async (c) => {
    const timeoutMs = intParam(queryParams(c, ['timeoutMs']), 'timeoutMs');
    if (timeoutMs !== undefined && (timeoutMs < 1 || timeoutMs > MAX_CALL_TIMEOUT_MS)) {
      throw new RoostError('INVALID_ARGUMENT', `query: timeoutMs: expected 1 to ${MAX_CALL_TIMEOUT_MS}, got ${timeoutMs}`, { details: { field: 'timeoutMs' } });
    }
    const body = await readBody(c, 'the message', MAX_ACTOR_MESSAGE_BYTES);
    if (body instanceof Response) return body;
    // A client that goes away aborts the wait (the message stays in the mailbox and is handled).
    const r: ActorReply = await runtime.actors.call(actorOf(c), body, {
      signal: AbortSignal.any([ctx.clientGone(c), ctx.shutdown]),
      ...(timeoutMs !== undefined ? { timeoutMs } : {}),
    });
    return c.json(actorCallResult(r));
  });

  app.get('/v1/actors/:actor/state', async (c) => {
    const version = intParam(queryParams(c, ['version']), 'version');
    return c.json(await runtime.actors.state(actorOf(c), version === undefined ? {} : { version }));
  });

  app.get('/v1/actors/:actor/versions', async (c) => {
    queryParams(c, []);
    return c.json({ versions: await runtime.actors.versions(actorOf(c)) });
  });

  app.post('/v1/actors/:actor/snapshot', async (c) => {
    queryParams(c, []);
    return c.json(await runtime.actors.snapshot(actorOf(c)));
  });

  app.get('/v1/actors/:actor/messages', async (c) => {
    const query = messagesQuery(c);
    const sse = wantsSse(c);
    // Resolved first: an unknown actor is a 404, not a stream that fails; and a name reused later is not followed.
    const { id } = await runtime.actors.get(actorOf(c));
    const s = ctx.openStream(c, sse ? 'text/event-stream; charset=utf-8' : 'application/x-ndjson');
    const stop = new AbortController();
    const end = () => stop.abort();
    s.signal.addEventListener('abort', end, { once: true });
    ctx.shutdown.addEventListener('abort', end, { once: true });
    let heartbeat: NodeJS.Timeout | undefined;
    if (sse) {
      s.push(`retry: ${RETRY_MS}\n: connected\n\n`);
      // Comments keep proxies and idle timers from closing a quiet stream.
      heartbeat = setInterval(() => s.push(': heartbeat\n\n'), ctx.heartbeatMs);
      heartbeat.unref();
    }
    const encode = sse
      ? (r: ActorMessageRecord) => `id: ${r.seq}\nevent: message\ndata: ${JSON.stringify(r)}\n\n`
      : (r: ActorMessageRecord) => JSON.stringify(r) + '\n';

    void (async () => {
      try {
        const records = runtime.actors.messages(id, { ...query, signal: stop.signal });
        for await (const r of records) {
          if (!(await s.write(encode(r)))) break;
        }
        s.close();
      } catch (e) {
        if (stop.signal.aborted) s.close();
        else if (sse) {
          s.push(`event: error\ndata: ${JSON.stringify(errorBody(toRoostError(e)))}\n\n`);
          s.close();
        } else s.fail(e instanceof Error ? e : new Error(String(e)));
      } finally {
        clearInterval(heartbeat);
        ctx.shutdown.removeEventListener('abort', end);
        stop.abort();
      }
    })();
    return s.response();
  });
}
