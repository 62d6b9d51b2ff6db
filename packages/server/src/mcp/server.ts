import { Server } from '@modelcontextprotocol/sdk/server/index.js';
import {
  CallToolRequestSchema,
  ErrorCode,
  ListResourcesRequestSchema,
  ListResourceTemplatesRequestSchema,
  ListToolsRequestSchema,
  McpError,
  ReadResourceRequestSchema,
  type CallToolResult,
  type ReadResourceResult,
  type Tool,
} from '@modelcontextprotocol/sdk/types.js';
import {
  isRoostError,
  McpActorToolInputs,
  McpActorToolOutputs,
  McpDeploymentToolInputs,
  McpDeploymentToolOutputs,
  McpToolInputs,
  McpToolOutputs,
  parseInput,
  RoostError,
} from '@roost/api';
import { z } from 'zod';
import { withStandardFormats } from '../json-schema.js';
import { ACTOR_TOOLS } from './actor-tools.js';
import { DEPLOYMENT_TOOLS } from './deployment-tools.js';
import type { McpSession } from './session.js';
import { encodeContent, readCapped, TOOLS, type ToolCall, type ToolDef } from './tools.js';

/*
 * Roost's MCP server: tools (./tools.ts) and resources over one session's
 * runtime, on the SDK's low-level Server, so that every input is parsed
 * with @roost/api's schemas and every failure is a tool result carrying the
 * RoostError's code. Transports: stdio (`roost mcp`) and Streamable HTTP
 * (`roost serve`, ./http.ts).
 */

/** Every tool's input schema, by name: the sandbox and image tools' (@roost/api's McpToolInputs), the deployment tools' (McpDeploymentToolInputs), the actor tools' (McpActorToolInputs). */
export const TOOL_INPUTS = { ...McpToolInputs, ...McpDeploymentToolInputs, ...McpActorToolInputs };
/** Every tool's output schema, by name. */
const TOOL_OUTPUTS = { ...McpToolOutputs, ...McpDeploymentToolOutputs, ...McpActorToolOutputs } satisfies Record<ToolName, z.ZodType>;
/** The name of one of Roost's MCP tools. */
export type ToolName = keyof typeof TOOL_INPUTS;
/** Every tool, by name (each entry takes its own input; the name ties them together). */
const ALL_TOOLS: Record<ToolName, ToolDef<never, unknown>> = { ...TOOLS, ...DEPLOYMENT_TOOLS, ...ACTOR_TOOLS };

/**
 * A zod schema as the JSON Schema of a tool: draft-07 (what clients'
 * validators take without options), an object at the top (a schema with an
 * id is a `$ref` there: inlined), its own definitions kept.
 */
export function toolJsonSchema(schema: z.ZodType, io: 'input' | 'output'): Tool['inputSchema'] {
  const json = withStandardFormats(z.toJSONSchema(schema, { io, target: 'draft-7', unrepresentable: 'any' }) as Record<string, unknown>);
  delete json.$schema;
  const ref = typeof json.$ref === 'string' ? /^#\/definitions\/(.+)$/.exec(json.$ref)?.[1] : undefined;
  if (ref) {
    const defs = { ...(json.definitions as Record<string, Record<string, unknown>>) };
    const top = defs[ref]!;
    delete defs[ref];
    delete json.$ref;
    Object.assign(json, top);
    // Its own references to itself, if any, still resolve.
    if (JSON.stringify(json).includes(`"#/definitions/${ref}"`)) defs[ref] = top;
    json.definitions = defs;
    if (Object.keys(defs).length === 0) delete json.definitions;
  }
  if (json.type !== 'object') throw new Error(`an MCP tool's ${io} schema must be an object, not ${String(json.type)}`);
  return json as Tool['inputSchema'];
}

let toolList: Tool[] | undefined;

/** Every tool as `tools/list` describes it (made once). */
export function listTools(): Tool[] {
  toolList ??= (Object.keys(ALL_TOOLS) as ToolName[]).map((name) => {
    const def = ALL_TOOLS[name];
    return {
      name,
      title: def.title,
      description: def.description,
      inputSchema: toolJsonSchema(TOOL_INPUTS[name], 'input'),
      outputSchema: toolJsonSchema(TOOL_OUTPUTS[name], 'output') as Tool['outputSchema'],
      annotations: { title: def.title, ...def.annotations },
    };
  });
  return toolList;
}

/** A failure as an agent reads it: the RoostError's code and message (and never a stack). */
export function toolError(err: unknown): CallToolResult {
  const e = isRoostError(err) ? err : new RoostError('INTERNAL', err instanceof Error ? err.message : String(err));
  return { isError: true, content: [{ type: 'text', text: `${e.code}: ${e.message}` }] };
}

/** Runs one tool call: input parsed, errors turned into results. */
export async function callTool(name: string, args: unknown, call: ToolCall): Promise<CallToolResult> {
  if (!Object.hasOwn(ALL_TOOLS, name)) return toolError(new RoostError('NOT_FOUND', `no tool "${name}": tools/list names them`));
  const tool = name as ToolName;
  try {
    const input = parseInput(TOOL_INPUTS[tool], args ?? {}, `arguments of ${tool}`);
    // Each entry of ALL_TOOLS takes its own input; the name ties them together.
    const output = (await (ALL_TOOLS[tool].run as (i: unknown, c: ToolCall) => Promise<unknown>)(input, call)) as Record<string, unknown>;
    return { content: [{ type: 'text', text: JSON.stringify(output) }], structuredContent: output };
  } catch (e) {
    if (!isRoostError(e)) process.stderr.write(`roost mcp: ${tool}: ${e instanceof Error ? (e.stack ?? e.message) : String(e)}\n`);
    return toolError(e);
  }
}

const LOGS_TEMPLATE = 'roost://sandboxes/{id}/logs';
const FILES_TEMPLATE = 'roost://sandboxes/{id}/files{+path}';
const RESOURCE_URI = /^roost:\/\/sandboxes\/([^/]+)\/(logs|files(\/.*))$/;

/** Reads `roost://sandboxes/{id}/logs` or `roost://sandboxes/{id}/files/{path}` (a directory: its listing as JSON). */
async function readResource(session: McpSession, uri: string, signal: AbortSignal): Promise<ReadResourceResult> {
  const m = RESOURCE_URI.exec(uri);
  if (!m) throw new McpError(ErrorCode.InvalidParams, `not a Roost resource: ${uri} (see resources/templates/list)`);
  try {
    const sandbox = await session.runtime.get(decodeURIComponent(m[1]!));
    if (m[2] === 'logs') return { contents: [{ uri, mimeType: 'text/plain', text: await sandbox.logs({ signal }) }] };
    const path = decodeURIComponent(m[3]!);
    const entry = await sandbox.files.stat(path, { follow: true, signal });
    if (entry.type === 'dir') {
      return { contents: [{ uri, mimeType: 'application/json', text: JSON.stringify(await sandbox.files.list(path, { signal })) }] };
    }
    const bytes = await readCapped(sandbox, path, session.limits.readBytes, signal);
    const body = encodeContent(bytes, path);
    return {
      contents: [
        body.encoding === 'utf8' ? { uri, mimeType: 'text/plain', text: body.content } : { uri, mimeType: 'application/octet-stream', blob: body.content },
      ],
    };
  } catch (e) {
    if (!isRoostError(e)) throw e;
    // -32002: the MCP spec's "resource not found".
    throw new McpError(
      e.code === 'NOT_FOUND' ? -32002 : e.code === 'INVALID_ARGUMENT' ? ErrorCode.InvalidParams : ErrorCode.InternalError,
      `${e.code}: ${e.message}`,
      {
        uri,
        code: e.code,
      },
    );
  }
}

/** Options of `createMcpServer`. */
export interface McpServerOptions {
  /** Reported to clients as the server's version. */
  version: string;
  /** Aborts every call in flight (the session or the daemon is ending). */
  signal?: AbortSignal;
}

/** An MCP server for one session: connect it to one transport. */
export function createMcpServer(session: McpSession, options: McpServerOptions): Server {
  const server = new Server(
    { name: 'roost', title: 'Roost sandboxes', version: options.version },
    {
      capabilities: { tools: { listChanged: false }, resources: { listChanged: false } },
      instructions:
        'Roost runs code in hardware-isolated Linux microVMs. Create a sandbox (sandbox_create), run commands in it (sandbox_exec), move files in and out ' +
        '(sandbox_write_file, sandbox_read_file), snapshot or fork it, and remove it when done (sandbox_remove). Sandboxes made in this session are removed when it ends unless made with keep: true. ' +
        'For a long-running service (kept running, health-checked, behind a host port), use deployment_apply; deployments outlive the session until deployment_remove. ' +
        'For small stateful programs (WASM actors with durable state and a mailbox, started in microseconds), use actor_deploy, actor_create and actor_call; actors outlive the session until actor_remove.',
    },
  );
  const ending = options.signal;
  server.setRequestHandler(ListToolsRequestSchema, () => ({ tools: listTools() }));
  server.setRequestHandler(CallToolRequestSchema, async (request, extra) => {
    const signal = ending ? AbortSignal.any([extra.signal, ending]) : extra.signal;
    const token = request.params._meta?.progressToken;
    let n = 0;
    const progress =
      token === undefined
        ? null
        : (message: string) => extra.sendNotification({ method: 'notifications/progress', params: { progressToken: token, progress: ++n, message } });
    const end = session.begin();
    try {
      return await callTool(request.params.name, request.params.arguments, { session, signal, progress });
    } finally {
      end();
    }
  });
  server.setRequestHandler(ListResourceTemplatesRequestSchema, () => ({
    resourceTemplates: [
      { uriTemplate: LOGS_TEMPLATE, name: 'sandbox-logs', title: 'A sandbox’s console log', mimeType: 'text/plain' },
      { uriTemplate: FILES_TEMPLATE, name: 'sandbox-file', title: 'A file (or directory listing) in a sandbox, by absolute path' },
    ],
  }));
  server.setRequestHandler(ListResourcesRequestSchema, async () => {
    const live = await session.runtime.list({ status: ['running', 'paused'] });
    return {
      resources: live.map((s) => ({
        uri: `roost://sandboxes/${s.id}/logs`,
        name: `sandbox-${s.id}-logs`,
        title: `Console log of sandbox ${s.id}${s.image ? ` (${s.image.reference})` : ''}`,
        mimeType: 'text/plain',
      })),
    };
  });
  server.setRequestHandler(ReadResourceRequestSchema, (request, extra) =>
    readResource(session, request.params.uri, ending ? AbortSignal.any([extra.signal, ending]) : extra.signal),
  );
  return server;
}
