/**
 * @roost/server: roostd, the Roost daemon. The REST API (Hono), Server-Sent
 * Events and Prometheus metrics over one @roost/core runtime.
 *
 * ```ts
 * const daemon = await serve({ tcp: { port: 7423 } });
 * // ... later
 * await daemon.close();
 * ```
 */
export { createApp, DEFAULT_MAX_IN_FLIGHT, type AppOptions, type AppLimits } from './app.js';
export { serve, isLoopback, loadOrCreateToken, type ServeOptions, type ServeHandle, type ServeLimits } from './serve.js';
export { openapiDocument, openapiJson, ROUTES } from './openapi.js';
export { prometheusText, PROMETHEUS_CONTENT_TYPE } from './prometheus.js';
export type { DaemonRuntime, DaemonSandbox } from './daemon-runtime.js';
export { VERSION } from './version.js';
export { sandboxBody } from './mapping.js';
export { createMcpServer, listTools, type McpServerOptions } from './mcp/server.js';
export { McpSession, type McpRuntime } from './mcp/session.js';
export { McpHttpSessions } from './mcp/http.js';
export { serveMcpStdio, type McpStdioOptions } from './mcp/stdio.js';
export { E2bKeys, type E2bKeyInfo } from './e2b/keys.js';
export { parseE2bDomain } from './e2b/router.js';
