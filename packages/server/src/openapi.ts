import {
  API_VERSION,
  DEFAULT_TCP_PORT,
  ErrorBodySchema,
  MAX_ACTOR_MESSAGE_BYTES,
  MAX_ACTOR_MODULE_BYTES,
  MAX_BUILD_CONTEXT_BYTES,
  MAX_JSON_BODY,
} from '@roost/api';
import { z } from 'zod';
import { ACTOR_ROUTES } from './openapi/actor-routes.js';
import { DEPLOYMENT_ROUTES } from './openapi/deployment-routes.js';
import { withStandardFormats } from './json-schema.js';
import { EXEC_AND_FILE_ROUTES } from './openapi/exec-file-routes.js';
import { MCP_ROUTES } from './openapi/mcp-routes.js';
import type { Body, JsonSchema, Route } from './openapi/route.js';
import { RUNTIME_ROUTES } from './openapi/runtime-routes.js';
import { SANDBOX_ROUTES } from './openapi/sandbox-routes.js';
import { SESSION_ROUTES } from './openapi/session-routes.js';
import { VERSION } from './version.js';

/*
 * The OpenAPI 3.1 document of the REST API: JSON Schemas generated from the
 * API's zod schemas (those with a `.meta({ id })` become components), and
 * every route in one table, ROUTES, whose entries live by group in openapi/.
 * docs/openapi.json is this document (write-openapi.ts writes it; a test
 * fails when they differ), and the integration tests check every response
 * they see against it.
 */

/** The route table: the one place that says what the daemon serves (its order is the document's). */
export const ROUTES: readonly Route[] = [
  ...SANDBOX_ROUTES,
  ...SESSION_ROUTES,
  ...EXEC_AND_FILE_ROUTES,
  ...RUNTIME_ROUTES,
  ...DEPLOYMENT_ROUTES,
  ...ACTOR_ROUTES,
  ...MCP_ROUTES,
];

/** The error responses, shared by the routes as components (status -> name and meaning). */
const ERROR_RESPONSES: Record<number | 'default', { name: string; description: string }> = {
  400: {
    name: 'InvalidArgument',
    description: 'INVALID_ARGUMENT: invalid JSON, an unknown field, a wrong type, or a bad parameter (the message names it).',
  },
  401: { name: 'Unauthenticated', description: 'UNAUTHENTICATED: no bearer token, or a wrong one.' },
  403: {
    name: 'PermissionDenied',
    description:
      'PERMISSION_DENIED: the user may not do this (for a file, details carry `errno` and `path`), or the daemon lacks a privilege (a host port below 1024, bridge networking).',
  },
  404: {
    name: 'NotFound',
    description:
      'NOT_FOUND: no such sandbox, exec, image, volume, snapshot, template, pool, deployment, actor, actor module, file or route (for a file, details carry `errno` and `path`).',
  },
  409: { name: 'InvalidState', description: 'INVALID_STATE: not possible in the current state; or ALREADY_EXISTS.' },
  413: {
    name: 'PayloadTooLarge',
    description: `INVALID_ARGUMENT: a JSON body over ${MAX_JSON_BODY} bytes, a build context over ${MAX_BUILD_CONTEXT_BYTES}, an actor module over ${MAX_ACTOR_MODULE_BYTES} or an actor message over ${MAX_ACTOR_MESSAGE_BYTES} (details carry maxBytes); file contents and a command's input stream through their own routes.`,
  },
  422: {
    name: 'Unprocessable',
    description:
      'BUILD_FAILED: a step of an image build failed (a RUN that exited non-zero): the message names the Dockerfile line and the step and ends with the end of its output; details carry line, exitCode and output. ' +
      "Or ACTOR: an actor's handler failed (trapped, ran out of fuel or wall time, returned non-zero); details carry reason (trap, out_of_fuel, timeout, returned, instantiate, crashed).",
  },
  429: { name: 'ResourceExhausted', description: 'RESOURCE_EXHAUSTED: a runtime limit was reached; retry later.' },
  500: { name: 'InternalError', description: 'BOOT_FAILED, VMM or INTERNAL.' },
  502: { name: 'BadGateway', description: 'AGENT, IMAGE or NETWORK: a guest agent or a registry failed.' },
  503: {
    name: 'Unavailable',
    description:
      'UNAVAILABLE: too many requests in flight (see Retry-After), the daemon is shutting down, or a host port to publish is held by another program; or SETUP_REQUIRED.',
  },
  504: { name: 'Timeout', description: 'TIMEOUT.' },
  507: {
    name: 'InsufficientStorage',
    description:
      "RESOURCE_EXHAUSTED of a full disk: the host's (details `resource: 'disk'`, `errno`, `path`: free space there and retry) or, for a file, the guest's (details `errno: 'ENOSPC'`).",
  },
  default: { name: 'Error', description: 'Any other error, with the status of its code.' },
};

const ERROR_REF = { $ref: '#/components/schemas/Error' };

/** JSON Schema of a zod schema: a reference when it is a component, else inline. */
function schemaOf(schema: z.ZodType): JsonSchema {
  const id = z.globalRegistry.get(schema)?.id;
  if (id) return { $ref: `#/components/schemas/${id}` };
  const json = withStandardFormats(z.toJSONSchema(schema, { target: 'draft-2020-12', io: 'input', unrepresentable: 'any' }) as JsonSchema);
  delete json.$schema;
  if (json.$defs) throw new Error(`openapi: an inline schema refers to other schemas; give it an id (${JSON.stringify(json).slice(0, 80)})`);
  return json;
}

function content(bodies: Body[]): JsonSchema | undefined {
  const out: JsonSchema = {};
  for (const b of bodies) {
    if ('json' in b) out['application/json'] = { schema: schemaOf(b.json) };
    // Each line is one JSON value of the schema (OpenAPI 3.1 has no item schema for sequential media types).
    else if ('ndjson' in b) out['application/x-ndjson'] = { schema: schemaOf(b.ndjson) };
    else if ('sse' in b) out['text/event-stream'] = { schema: { type: 'string' }, 'x-sse-data': schemaOf(b.sse), 'x-sse-error-data': ERROR_REF };
    else if ('text' in b) out[b.text] = { schema: { type: 'string' } };
    else if ('binary' in b) out[b.binary] = { schema: { type: 'string', format: 'binary' } };
  }
  return Object.keys(out).length ? out : undefined;
}

function operation(route: Route): JsonSchema {
  const op: JsonSchema = { operationId: route.operationId, summary: route.summary, tags: [route.tag] };
  if (route.description) op.description = route.description;
  if (route.params) {
    op.parameters = route.params.map((p) => {
      const out: JsonSchema = { name: p.name, in: p.in, description: p.description, schema: p.schema };
      if (p.required) out.required = true;
      if (p.explode) Object.assign(out, { style: 'form', explode: true });
      return out;
    });
  }
  if (route.body) {
    op.requestBody =
      'raw' in route.body
        ? { required: true, description: route.body.raw.description, content: { [route.body.raw.mediaType]: { schema: { type: 'string', format: 'binary' } } } }
        : {
            required: route.body.required,
            description: `At most ${MAX_JSON_BODY} bytes.`,
            content: { 'application/json': { schema: schemaOf(route.body.schema) } },
          };
  }
  const responses: JsonSchema = {};
  for (const [status, r] of Object.entries(route.ok)) {
    const c = content(r.bodies);
    responses[status] = c ? { description: r.description, content: c } : { description: r.description };
  }
  // A body over the limit is 413 on every route that can carry one, except the streamed uploads.
  const limited = route.method !== 'get' && !(route.body && 'raw' in route.body) ? [413] : [];
  for (const status of [...new Set([...route.errors, ...limited, 401, 503])].sort()) {
    const r = ERROR_RESPONSES[status];
    if (!r) throw new Error(`openapi: no error response for status ${status}`);
    responses[String(status)] = { $ref: `#/components/responses/${r.name}` };
  }
  responses.default = { $ref: '#/components/responses/Error' };
  op.responses = responses;
  return op;
}

/** Keeps the components that the paths reach (the zod registry may hold other schemas with ids). */
function reachable(components: Record<string, JsonSchema>, roots: unknown): Record<string, JsonSchema> {
  const seen = new Set<string>();
  const visit = (v: unknown): void => {
    if (Array.isArray(v)) return v.forEach(visit);
    if (v === null || typeof v !== 'object') return;
    for (const [k, child] of Object.entries(v)) {
      if (k === '$ref' && typeof child === 'string' && child.startsWith('#/components/schemas/')) {
        const name = child.slice('#/components/schemas/'.length);
        if (seen.has(name)) continue;
        if (!components[name]) throw new Error(`openapi: no component ${name}`);
        seen.add(name);
        visit(components[name]);
      } else visit(child);
    }
  };
  visit(roots);
  return Object.fromEntries([...seen].sort().map((n) => [n, components[n]!]));
}

let cached: JsonSchema | undefined;

/** The OpenAPI 3.1 document of the daemon (built once). */
export function openapiDocument(): JsonSchema {
  if (cached) return cached;
  const generated = z.toJSONSchema(z.globalRegistry, { target: 'draft-2020-12', io: 'input', uri: (id) => `#/components/schemas/${id}` }) as {
    schemas: Record<string, JsonSchema>;
  };
  const components: Record<string, JsonSchema> = {};
  for (const [name, schema] of Object.entries(generated.schemas)) {
    const rest = { ...schema };
    delete rest.$schema;
    delete rest.$id;
    components[name] = withStandardFormats(rest);
  }
  // The error body is referenced by hand (ERROR_REF): make sure it is the API's.
  if (z.globalRegistry.get(ErrorBodySchema)?.id !== 'Error') throw new Error('openapi: ErrorBodySchema is not the Error component');

  const paths: JsonSchema = {};
  for (const route of ROUTES) {
    const item = (paths[route.path] ??= {}) as JsonSchema;
    item[route.method] = operation(route);
  }
  cached = {
    openapi: '3.1.0',
    info: {
      title: 'Roost API',
      version: VERSION,
      description:
        'The REST API of `roost serve`: sandboxes (microVMs), their networks and published ports, commands in them, files, images, volumes, snapshots, templates, warm pools and deployments, actors, events and metrics. ' +
        'Every request carries `Authorization: Bearer <token>` (the token is in the `api-token` file of the Roost home). ' +
        'Errors are `{ "error": { "code", "message", "details"? } }` with the status of their code.',
      license: { name: 'Apache-2.0', identifier: 'Apache-2.0' },
    },
    servers: [
      {
        url: `http://127.0.0.1:${DEFAULT_TCP_PORT}`,
        description: `roost serve --tcp (the default is a unix socket, roost.sock in the Roost home; API ${API_VERSION})`,
      },
    ],
    security: [{ bearerAuth: [] }],
    tags: [
      { name: 'system' },
      { name: 'sandboxes' },
      { name: 'sessions' },
      { name: 'network' },
      { name: 'execs' },
      { name: 'files' },
      { name: 'images' },
      { name: 'volumes' },
      { name: 'snapshots' },
      { name: 'templates' },
      { name: 'pools', description: 'Warm pools: sandboxes restored ahead of time and kept paused; POST /v1/sandboxes with `pool` takes one.' },
      {
        name: 'deployments',
        description:
          'Deployments: a workload, a replica count, a health check and service ports, kept true by the daemon (replicas restarted, replaced and rolled out); docs/deployments.md.',
      },
      {
        name: 'actors',
        description: 'Actors: WASM programs with a versioned state tree and a mailbox, handled one message at a time as transactions; docs/actors.md.',
      },
      { name: 'events' },
      { name: 'metrics' },
      { name: 'mcp', description: 'The Model Context Protocol over Streamable HTTP: the tools of docs/mcp.md for AI agents.' },
    ],
    paths,
    components: {
      schemas: reachable(components, [paths, ERROR_REF]),
      responses: Object.fromEntries(
        Object.values(ERROR_RESPONSES).map((r) => [r.name, { description: r.description, content: { 'application/json': { schema: ERROR_REF } } }]),
      ),
      securitySchemes: { bearerAuth: { type: 'http', scheme: 'bearer', description: 'The token in `<ROOST_HOME>/api-token`.' } },
    },
  };
  return cached;
}

/** The document as docs/openapi.json holds it. */
export function openapiJson(): string {
  return JSON.stringify(openapiDocument(), null, 2) + '\n';
}
