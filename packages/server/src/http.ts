import { diskFullError, errorStatus, MAX_JSON_BODY, RoostError, type ErrorBody } from '@roost/api';
import type { Context } from 'hono';
import { HTTPException } from 'hono/http-exception';
import type { ContentfulStatusCode } from 'hono/utils/http-status';
import type { z } from 'zod';

/*
 * Request parsing and the one error shape. Every failure becomes a
 * RoostError, and every RoostError becomes `{ "error": { code, message,
 * details? } }` with the status of errorStatus (ERROR_STATUS, 507 for a full disk).
 */

/** The body of an error response. */
export function errorBody(err: RoostError): ErrorBody {
  const body: ErrorBody = { error: { code: err.code, message: err.message } };
  if (Object.keys(err.details).length > 0) body.error.details = err.details;
  return body;
}

/** Turns anything thrown into a RoostError (an unexpected one is INTERNAL, its message kept). */
export function toRoostError(err: unknown): RoostError {
  if (err instanceof RoostError) return err;
  if (err instanceof HTTPException) {
    const code = err.status === 401 ? 'UNAUTHENTICATED' : err.status === 404 ? 'NOT_FOUND' : err.status < 500 ? 'INVALID_ARGUMENT' : 'INTERNAL';
    return new RoostError(code, err.message || `HTTP ${err.status}`, { cause: err });
  }
  // A full host disk where the core did not say which (a database write): RESOURCE_EXHAUSTED, 507.
  const full = diskFullError(err);
  if (full) return full;
  const message = err instanceof Error ? err.message : String(err);
  return new RoostError('INTERNAL', `internal error: ${message}`, { cause: err });
}

/** The JSON error response of `err`, with the status of its code (or `status`: 413 for a body over the limit). */
export function errorResponse(c: Context, err: unknown, status?: ContentfulStatusCode): Response {
  const e = toRoostError(err);
  const res = c.json(errorBody(e), status ?? (errorStatus(e) as ContentfulStatusCode));
  if (e.code === 'UNAUTHENTICATED') res.headers.set('WWW-Authenticate', 'Bearer realm="roost"');
  return res;
}

/**
 * The error of a JSON body over MAX_JSON_BODY (answered 413): it names the
 * limit and the routes that take large data as a stream.
 */
export function bodyTooLarge(): RoostError {
  return new RoostError(
    'INVALID_ARGUMENT',
    `request body: larger than the limit of ${MAX_JSON_BODY} bytes (1 MiB) for JSON bodies; send large data as a stream: ` +
      "a file's contents with PUT /v1/sandboxes/{id}/files/content (or an archive with PUT .../files/archive), a command's input with POST .../execs/{execId}/stdin",
    { details: { field: '', maxBytes: MAX_JSON_BODY } },
  );
}

/** A 400 naming the field of the first zod issue, with every issue in `details`. */
export function validationError(where: string, error: z.ZodError): RoostError {
  const issues = error.issues.map((i) => {
    const path = [...i.path.map(String)];
    if (i.code === 'unrecognized_keys')
      return { field: [...path, i.keys[0] ?? ''].join('.'), message: `unknown field${i.keys.length > 1 ? `s ${i.keys.map((k) => `"${k}"`).join(', ')}` : ''}` };
    return { field: path.join('.'), message: i.message };
  });
  const first = issues[0] ?? { field: '', message: 'invalid' };
  const message = first.field ? `${where}: ${first.field}: ${first.message}` : `${where}: ${first.message}`;
  return new RoostError('INVALID_ARGUMENT', message, { details: { field: first.field, issues } });
}

/**
 * Reads and validates a JSON body (already size-limited by bodyLimit). An
 * empty body counts as `{}`, so `POST .../stop` needs none.
 */
export async function parseJsonBody<S extends z.ZodType>(c: Context, schema: S): Promise<z.output<S>> {
  const text = await c.req.text();
  let value: unknown = {};
  if (text.trim() !== '') {
    try {
      value = JSON.parse(text);
    } catch (e) {
      throw new RoostError('INVALID_ARGUMENT', `request body: invalid JSON (${(e as Error).message})`, { details: { field: '' } });
    }
  }
  const r = schema.safeParse(value);
  if (!r.success) throw validationError('request body', r.error);
  return r.data;
}

/** Query parameters, refusing names the route does not know (so a typo is a 400, not a silent default). */
export function queryParams(c: Context, known: readonly string[]): Map<string, string[]> {
  const all = c.req.queries();
  const out = new Map<string, string[]>();
  for (const [name, values] of Object.entries(all)) {
    if (!known.includes(name)) {
      throw new RoostError('INVALID_ARGUMENT', `query: unknown parameter "${name}"${known.length ? ` (known: ${known.join(', ')})` : ''}`, {
        details: { field: name },
      });
    }
    out.set(name, values);
  }
  return out;
}

/** A boolean query parameter (`true`/`false`/`1`/`0`, or present without a value). */
export function boolParam(q: Map<string, string[]>, name: string): boolean {
  const v = q.get(name)?.at(-1);
  if (v === undefined) return false;
  if (v === '' || v === 'true' || v === '1') return true;
  if (v === 'false' || v === '0') return false;
  throw new RoostError('INVALID_ARGUMENT', `query: ${name}: expected true or false, got "${v}"`, { details: { field: name } });
}

/** A non-negative integer query parameter. */
export function intParam(q: Map<string, string[]>, name: string): number | undefined {
  const v = q.get(name)?.at(-1);
  if (v === undefined) return undefined;
  if (!/^\d{1,15}$/.test(v))
    throw new RoostError('INVALID_ARGUMENT', `query: ${name}: expected a non-negative integer, got "${v}"`, { details: { field: name } });
  return Number(v);
}

/** True when the client asked for a single JSON document rather than an NDJSON stream. */
export function wantsJson(c: Context): boolean {
  const accept = c.req.header('accept') ?? '';
  return /\bapplication\/json\b/i.test(accept) && !/\bapplication\/x-ndjson\b/i.test(accept);
}
