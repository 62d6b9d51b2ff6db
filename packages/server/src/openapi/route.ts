import { SESSION_HEADER } from '@roost/api';
import type { z } from 'zod';

/*
 * The shape of one entry of the route table (see ../openapi.ts), and the
 * parameters and error lists that routes of several groups share.
 */

/** A JSON Schema object as the OpenAPI document holds it. */
export type JsonSchema = Record<string, unknown>;
export type Method = 'get' | 'put' | 'post' | 'delete';

/** Request bodies that are not JSON (a command's stdin). */
export interface RawBody {
  mediaType: string;
  description: string;
}

/** One response of a route: a JSON body, a stream of JSON lines, SSE, plain text, or nothing. */
export type Body = { json: z.ZodType } | { ndjson: z.ZodType } | { sse: z.ZodType } | { text: string } | { binary: string } | { none: true };

export interface Param {
  name: string;
  in: 'path' | 'query' | 'header';
  description: string;
  schema: JsonSchema;
  required?: boolean;
  explode?: boolean;
}

/** One route the daemon serves, as the OpenAPI document describes it. */
export interface Route {
  method: Method;
  path: string;
  operationId: string;
  summary: string;
  description?: string;
  tag:
    | 'system'
    | 'sessions'
    | 'sandboxes'
    | 'network'
    | 'execs'
    | 'files'
    | 'images'
    | 'volumes'
    | 'snapshots'
    | 'templates'
    | 'pools'
    | 'deployments'
    | 'actors'
    | 'events'
    | 'metrics'
    | 'mcp';
  params?: Param[];
  /** A JSON body (optional when every field is), or a raw stream. */
  body?: { schema: z.ZodType; required: boolean } | { raw: RawBody };
  /** Success responses by status, each with the body per media type. */
  ok: Record<number, { description: string; bodies: Body[] }>;
  /** Error statuses this route answers besides 401 and 503 (every route has those, and a default). */
  errors: number[];
}

/** The `{id}` of every route under /v1/sandboxes/{id}. */
export const idParam: Param = {
  name: 'id',
  in: 'path',
  required: true,
  description: 'The sandbox id, or a unique prefix of it.',
  schema: { type: 'string', pattern: '^[0-9a-f]{1,12}$' },
};

/** The `Roost-Session` header of requests that make sandboxes which are not detached. */
export const sessionHeaderParam: Param = {
  name: SESSION_HEADER,
  in: 'header',
  description:
    'The id of an open client session (POST /v1/sessions) that owns the sandboxes made when they are not detached; required for those (400 without it, 404 for a session that has ended).',
  schema: { type: 'string', pattern: '^[0-9a-f]{32}$' },
};

/** The `force` query flag of a removal, saying what it forces. */
export const forceParam = (what: string): Param => ({ name: 'force', in: 'query', description: what, schema: { type: 'boolean' } });

/** Errors of the routes that boot, restore or save VMs. */
export const VM_ERRORS = [400, 404, 409, 429, 500, 502, 504, 507];
