import type { Context, Hono } from 'hono';
import type { DaemonRuntime } from './daemon-runtime.js';
import type { ExecRegistry } from './exec-registry.js';
import type { ResponseStream } from './response-stream.js';
import type { SessionRegistry } from './session-registry.js';

/** Per-request state the middleware shares with the routes. */
export interface RoostEnv {
  Variables: {
    /** Gives back this request's in-flight slot (a stream keeps it until it ends). */
    releaseSlot: () => void;
    /** Set when the response is a stream: the slot is released when it ends, not when the handler returns. */
    streaming: boolean;
  };
}

/** The app type every route module registers on. */
export type RoostHono = Hono<RoostEnv>;

/** What route modules share. */
export interface RouteContext {
  runtime: DaemonRuntime;
  execs: ExecRegistry;
  /** Client sessions: the owners of sandboxes that are not detached. */
  sessions: SessionRegistry;
  /** Aborts when the daemon shuts down: streams end, commands started through it are killed. */
  shutdown: AbortSignal;
  /** Interval of SSE heartbeat comments. */
  heartbeatMs: number;
  /** A streamed response that holds the request's in-flight slot until it ends (`errorTrailer`: see ResponseStream.fail). */
  openStream(c: Context<RoostEnv>, contentType: string, options?: { errorTrailer?: string }): ResponseStream;
  /** Aborts when the client of this request goes away before its response was sent. */
  clientGone(c: Context<RoostEnv>): AbortSignal;
}
