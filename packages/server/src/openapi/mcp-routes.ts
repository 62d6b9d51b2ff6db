import { z } from 'zod';
import type { Route } from './route.js';

/*
 * `/mcp`: the Model Context Protocol over Streamable HTTP (docs/mcp.md). Its
 * bodies are JSON-RPC messages, made and read by MCP SDKs; the document
 * names the exchange, the MCP specification defines it.
 */

/** A JSON-RPC 2.0 message (an MCP request, notification or response), or a batch of them. */
const JsonRpcMessageSchema = z
  .union([z.looseObject({ jsonrpc: z.literal('2.0') }), z.array(z.looseObject({ jsonrpc: z.literal('2.0') }))])
  .meta({ id: 'JsonRpcMessage', description: 'A JSON-RPC 2.0 message of the Model Context Protocol (or a batch).' });

const sessionHeader = {
  name: 'Mcp-Session-Id',
  in: 'header' as const,
  description: 'The MCP session, as the response to initialize named it (every request after initialize).',
  schema: { type: 'string' },
};

/** A JSON-RPC error of the transport (no session, a session that ended, a body that is not JSON-RPC). */
const rpcErrors = {
  400: { description: 'Not a JSON-RPC message, or no Mcp-Session-Id where one is needed (a JSON-RPC error).', bodies: [{ json: JsonRpcMessageSchema }] },
  404: {
    description: 'The session has ended (idle, deleted, or the daemon restarted): initialize a new one (a JSON-RPC error).',
    bodies: [{ json: JsonRpcMessageSchema }],
  },
};

export const MCP_ROUTES: readonly Route[] = [
  {
    method: 'post',
    path: '/mcp',
    operationId: 'postMcp',
    tag: 'mcp',
    summary: 'Send MCP messages (initialize opens a session)',
    description:
      "An MCP client's requests and notifications. initialize (without Mcp-Session-Id) opens a session, named in the response's Mcp-Session-Id header. " +
      'A request is answered with JSON or with an SSE stream carrying its progress notifications and then its response. Sandboxes a session makes are removed when it ends.',
    params: [{ ...sessionHeader, description: `${sessionHeader.description} Not on initialize.` }],
    body: { schema: JsonRpcMessageSchema, required: true },
    ok: {
      200: { description: 'The response(s).', bodies: [{ json: JsonRpcMessageSchema }, { sse: JsonRpcMessageSchema }] },
      202: { description: 'Notifications or responses only: accepted.', bodies: [{ none: true }] },
      ...rpcErrors,
    },
    errors: [],
  },
  {
    method: 'get',
    path: '/mcp',
    operationId: 'getMcp',
    tag: 'mcp',
    summary: "Listen to a session's server messages (SSE)",
    params: [{ ...sessionHeader, required: true }],
    ok: { 200: { description: 'Server-to-client messages, as SSE.', bodies: [{ sse: JsonRpcMessageSchema }] }, ...rpcErrors },
    errors: [],
  },
  {
    method: 'delete',
    path: '/mcp',
    operationId: 'deleteMcp',
    tag: 'mcp',
    summary: 'End an MCP session (its sandboxes are removed)',
    params: [{ ...sessionHeader, required: true }],
    ok: { 200: { description: 'The session has ended.', bodies: [{ none: true }] }, ...rpcErrors },
    errors: [],
  },
];
