import type { Server } from '@modelcontextprotocol/sdk/server/index.js';
import { WebStandardStreamableHTTPServerTransport } from '@modelcontextprotocol/sdk/server/webStandardStreamableHttp.js';
import { isInitializeRequest } from '@modelcontextprotocol/sdk/types.js';
import { MAX_JSON_BODY, mcpSettings, type McpSettings } from '@roost/api';
import { createMcpServer } from './server.js';
import { McpSession, type McpRuntime } from './session.js';

/*
 * MCP over Streamable HTTP at `/mcp` of `roost serve` (behind its bearer
 * token): one MCP session per client, made by its `initialize` POST and named
 * by the Mcp-Session-Id header after. A session ends when its client
 * DELETEs it, after `sessionIdleMs` without a request and with no tool call
 * running, or when the daemon stops; its sandboxes are removed then.
 */

/** Sessions one daemon keeps at once: a client that initializes again and again without DELETE cannot pile them up. */
export const MAX_MCP_SESSIONS = 1024;

interface Entry {
  transport: WebStandardStreamableHTTPServerTransport;
  server: Server;
  session: McpSession;
  timer: NodeJS.Timeout | undefined;
}

/** A JSON-RPC error response with no id (the transport's own shape for errors outside a request). */
function rpcError(status: number, code: number, message: string): Response {
  return Response.json({ jsonrpc: '2.0', error: { code, message }, id: null }, { status });
}

/** The MCP sessions of one daemon. Single-threaded (the event loop). */
export class McpHttpSessions {
  readonly #entries = new Map<string, Entry>();
  readonly #settings: Required<McpSettings>;
  #closing = false;

  constructor(
    private readonly runtime: McpRuntime,
    private readonly options: { version: string; settings?: McpSettings; shutdown: AbortSignal; maxSessions?: number },
  ) {
    this.#settings = mcpSettings(options.settings);
    options.shutdown.addEventListener('abort', () => void this.close(), { once: true });
  }

  /** Sessions alive now. */
  get size(): number {
    return this.#entries.size;
  }

  /** Answers one request to `/mcp`. */
  async handle(req: Request): Promise<Response> {
    if (this.#closing) return Response.json({ error: { code: 'UNAVAILABLE', message: 'the daemon is stopping' } }, { status: 503 });
    const id = req.headers.get('mcp-session-id');
    if (id) {
      const entry = this.#entries.get(id);
      // The Streamable HTTP spec: 404 for a session that has ended, so that the client starts a new one.
      if (!entry) return rpcError(404, -32001, `no MCP session ${id}: it ended (idle, deleted, or the daemon restarted); initialize a new one`);
      this.#touch(id, entry);
      return entry.transport.handleRequest(req);
    }
    if (req.method !== 'POST') return rpcError(400, -32000, 'no Mcp-Session-Id header: POST an initialize request first');
    let body: unknown;
    try {
      body = await req.json();
    } catch {
      return rpcError(400, -32700, 'the body is not JSON');
    }
    if (!isInitializeRequest(body)) return rpcError(400, -32000, 'no Mcp-Session-Id header: the first request of a session is initialize');
    const max = this.options.maxSessions ?? MAX_MCP_SESSIONS;
    if (this.#entries.size >= max) {
      const res = Response.json(
        { error: { code: 'UNAVAILABLE', message: `the daemon has ${max} MCP sessions open: end some (DELETE /mcp) or wait for idle ones to expire` } },
        { status: 503 },
      );
      res.headers.set('Retry-After', '5');
      return res;
    }
    return this.#open().transport.handleRequest(req, { parsedBody: body });
  }

  #open(): Entry {
    const session = new McpSession(this.runtime, this.#settings);
    const transport = new WebStandardStreamableHTTPServerTransport({
      sessionIdGenerator: () => session.id,
      maxRequestBodySize: MAX_JSON_BODY,
      onsessionclosed: (id) => this.end(id),
    });
    const server = createMcpServer(session, { version: this.options.version, signal: this.options.shutdown });
    const entry: Entry = { transport, server, session, timer: undefined };
    this.#entries.set(session.id, entry);
    this.#touch(session.id, entry);
    void server.connect(transport);
    return entry;
  }

  /** The session was used: its idle time starts again. */
  #touch(id: string, entry: Entry): void {
    clearTimeout(entry.timer);
    entry.timer = setTimeout(() => this.#idle(id, entry), this.#settings.sessionIdleMs);
    entry.timer.unref();
  }

  #idle(id: string, entry: Entry): void {
    // A call still running (a long command) keeps it: look again later.
    if (entry.session.calls > 0) return this.#touch(id, entry);
    void this.end(id);
  }

  /** Ends a session: its transport closes and its sandboxes are removed. */
  async end(id: string): Promise<void> {
    const entry = this.#entries.get(id);
    if (!entry) return;
    this.#entries.delete(id);
    clearTimeout(entry.timer);
    await entry.server.close().catch(() => {});
    await entry.session.close();
  }

  /** Ends every session (the daemon stops). */
  async close(): Promise<void> {
    this.#closing = true;
    await Promise.all([...this.#entries.keys()].map((id) => this.end(id)));
  }
}
