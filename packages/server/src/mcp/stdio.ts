import { StdioServerTransport } from '@modelcontextprotocol/sdk/server/stdio.js';
import { mcpSettings, type McpSettings } from '@roost/api';
import { createMcpServer } from './server.js';
import { McpSession, type McpRuntime } from './session.js';

/** Options of `serveMcpStdio`. */
export interface McpStdioOptions {
  version: string;
  settings?: McpSettings;
  stdin?: NodeJS.ReadableStream & { pause(): unknown };
  stdout?: NodeJS.WritableStream;
}

/**
 * Serves MCP on stdio (`roost mcp`): one session, until the client closes
 * stdin (as MCP clients do to stop a server) or `signal` aborts (SIGTERM,
 * SIGINT). Resolves once the session's sandboxes are removed. Nothing but
 * MCP messages is written to stdout.
 */
export async function serveMcpStdio(runtime: McpRuntime, options: McpStdioOptions, signal?: AbortSignal): Promise<void> {
  const settings = mcpSettings(options.settings);
  const session = new McpSession(runtime, settings);
  const ending = new AbortController();
  const stdin = options.stdin ?? process.stdin;
  const server = createMcpServer(session, { version: options.version, signal: ending.signal });
  const transport = new StdioServerTransport(stdin as typeof process.stdin, (options.stdout ?? process.stdout) as typeof process.stdout);
  const done = new Promise<void>((resolve) => {
    transport.onclose = () => resolve();
    stdin.once('end', () => resolve());
    stdin.once('close', () => resolve());
    if (signal?.aborted) resolve();
    signal?.addEventListener('abort', () => resolve(), { once: true });
  });
  await server.connect(transport);
  await done;
  // Calls in flight end (a running command is killed), then the session's sandboxes go.
  ending.abort();
  await server.close().catch(() => {});
  await session.close();
}
