import { describe, expect, it } from 'vitest';
import {
  isRoostError,
  MCP_SESSION_LABEL,
  mcpSettings,
  McpActorToolInputs,
  McpDeploymentToolInputs,
  McpToolInputs,
  McpToolOutputs,
  RoostError,
  type McpLimits,
  type SandboxInfo,
} from '@roost/api';
import { McpHttpSessions } from './http.js';
import { callTool, listTools, TOOL_INPUTS, toolJsonSchema } from './server.js';
import { McpSession, type McpRuntime } from './session.js';
import { encodeContent, type ToolCall } from './tools.js';

const LIMITS: McpLimits = { outputBytes: 8, readBytes: 64, maxSandboxes: 2 };

/** A runtime that makes records and removes them, and nothing else (the tools' VM work is tested in test/mcp.test.ts). */
function fakeRuntime() {
  const boxes = new Map<string, SandboxInfo>();
  let n = 0;
  const removed: string[] = [];
  const sandbox = (info: SandboxInfo) => ({
    id: info.id,
    info,
    remove: async () => {
      boxes.delete(info.id);
      removed.push(info.id);
    },
  });
  const runtime = {
    create: async (o: { labels?: Record<string, string>; detached?: boolean; autoRemove?: boolean }) => {
      const id = (++n).toString(16).padStart(12, '0');
      const info = {
        id,
        status: 'running',
        labels: o.labels ?? {},
        detached: o.detached ?? false,
        autoRemove: o.autoRemove ?? false,
      } as unknown as SandboxInfo;
      boxes.set(id, info);
      return sandbox(info);
    },
    get: async (id: string) => {
      const info = boxes.get(id);
      if (!info) throw new RoostError('NOT_FOUND', `no sandbox ${id}`);
      return sandbox(info);
    },
    list: async () => [...boxes.values()],
    images: {},
  } as unknown as McpRuntime;
  return { runtime, boxes, removed };
}

function callOf(session: McpSession): ToolCall {
  return { session, signal: new AbortController().signal, progress: null };
}

describe('MCP tool schemas', () => {
  it('every tool has object input and output schemas in draft-07, with no top-level $ref', () => {
    const tools = listTools();
    expect(tools.map((t) => t.name).sort()).toEqual(Object.keys(TOOL_INPUTS).sort());
    expect(Object.keys(TOOL_INPUTS).sort()).toEqual(
      [...Object.keys(McpToolInputs), ...Object.keys(McpDeploymentToolInputs), ...Object.keys(McpActorToolInputs)].sort(),
    );
    for (const t of tools) {
      for (const s of [t.inputSchema, t.outputSchema!]) {
        expect(s.type, t.name).toBe('object');
        expect(s, t.name).not.toHaveProperty('$ref');
        expect(s, t.name).not.toHaveProperty('$schema');
        expect(JSON.stringify(s), t.name).not.toContain('$defs');
        // Only JSON Schema's own formats: a client's validator refuses (or warns about) zod's `starts_with`.
        expect(JSON.stringify(s), t.name).not.toMatch(/"format":"(starts_with|ends_with|includes)"/);
      }
      // Strict inputs: an unknown argument is refused, so a typo is not silently ignored.
      expect(t.inputSchema.additionalProperties, t.name).toBe(false);
    }
  });

  it('inlines a schema with an id, keeping the definitions it refers to', () => {
    const s = toolJsonSchema(McpToolOutputs.sandbox_create, 'output');
    expect(s.properties).toHaveProperty('id');
    expect(s.properties).toHaveProperty('confinement');
  });
});

describe('MCP sessions', () => {
  it('labels what it makes, counts it against the limit, and not what is kept', async () => {
    const { runtime, boxes } = fakeRuntime();
    const session = new McpSession(runtime, LIMITS, 'session-a');
    const a = await callTool('sandbox_create', {}, callOf(session));
    expect(a.isError).toBeUndefined();
    expect(a.structuredContent).toMatchObject({ labels: { [MCP_SESSION_LABEL]: 'session-a' }, autoRemove: true, detached: false });
    await callTool('sandbox_create', { labels: { team: 'x' } }, callOf(session));
    const over = await callTool('sandbox_create', {}, callOf(session));
    expect(over).toMatchObject({ isError: true, content: [{ type: 'text', text: expect.stringMatching(/^RESOURCE_EXHAUSTED: this MCP session may have 2/) }] });
    const kept = await callTool('sandbox_create', { keep: true }, callOf(session));
    expect(kept.structuredContent).toMatchObject({ detached: true, autoRemove: false });
    expect(session.owned).toHaveLength(2);
    const removed = await callTool('sandbox_remove', { id: session.owned[0] }, callOf(session));
    expect(removed.structuredContent).toEqual({ id: '000000000001', removed: true });
    expect(session.owned).toEqual(['000000000002']);
    await session.close();
    expect([...boxes.keys()]).toEqual([(kept.structuredContent as SandboxInfo).id]);
  });

  it('reserves slots before a create ends, so concurrent calls cannot pass the limit together', async () => {
    const { runtime } = fakeRuntime();
    const session = new McpSession(runtime, LIMITS);
    const results = await Promise.all([1, 2, 3, 4].map(() => callTool('sandbox_create', {}, callOf(session))));
    expect(results.filter((r) => r.isError)).toHaveLength(2);
    const slot = session.reserve(0);
    slot.release();
    expect(() => session.reserve(1)).toThrow(/may have 2/);
  });

  it('a sandbox made while the session ends is removed too, and a closed session makes none', async () => {
    const { runtime, boxes } = fakeRuntime();
    const session = new McpSession(runtime, LIMITS);
    const slot = session.reserve(1);
    const closing = session.close();
    const made = await runtime.create({});
    slot.adopt([made.id]);
    await closing;
    await new Promise((r) => setTimeout(r, 0));
    expect(boxes.size).toBe(0);
    const refused = await callTool('sandbox_create', {}, callOf(session));
    expect((refused.content[0] as { text: string }).text).toMatch(/^UNAVAILABLE: this MCP session has ended/);
  });

  it('turns every failure into a result with the code: unknown tool, bad input, missing sandbox', async () => {
    const { runtime } = fakeRuntime();
    const session = new McpSession(runtime, LIMITS);
    const text = async (name: string, args: unknown) => ((await callTool(name, args, callOf(session))).content[0] as { text: string }).text;
    expect(await text('nope', {})).toMatch(/^NOT_FOUND: no tool "nope"/);
    expect(await text('toString', {})).toMatch(/^NOT_FOUND: no tool/);
    expect(await text('sandbox_get', {})).toMatch(/^INVALID_ARGUMENT: invalid arguments of sandbox_get: id: /);
    expect(await text('sandbox_get', { id: 'abc', extra: 1 })).toMatch(/^INVALID_ARGUMENT: .*extra/);
    expect(await text('sandbox_get', { id: 'abc' })).toMatch(/^NOT_FOUND: no sandbox abc/);
    expect(await text('sandbox_exec', { id: 'abc' })).toMatch(/command: required/);
  });
});

describe('MCP settings and content', () => {
  it('takes each limit from the settings, else the environment, else the default; refuses junk', () => {
    expect(mcpSettings({}, {})).toEqual({ outputBytes: 65536, readBytes: 1048576, maxSandboxes: 8, sessionIdleMs: 1_800_000 });
    expect(mcpSettings({ maxSandboxes: 3 }, { ROOST_MCP_MAX_SANDBOXES: '5', ROOST_MCP_OUTPUT_LIMIT: '100' })).toMatchObject({
      maxSandboxes: 3,
      outputBytes: 100,
    });
    for (const [settings, env] of [
      [{ maxSandboxes: 0 }, {}],
      [{}, { ROOST_MCP_READ_LIMIT: 'lots' }],
      [{}, { ROOST_MCP_SESSION_IDLE_MS: '-1' }],
    ] as const) {
      let err: unknown;
      try {
        mcpSettings(settings, env);
      } catch (e) {
        err = e;
      }
      expect(isRoostError(err, 'INVALID_ARGUMENT'), JSON.stringify([settings, env])).toBe(true);
    }
  });

  it('returns UTF-8 as text and anything else as base64, unless asked', () => {
    expect(encodeContent(Buffer.from('héllo'), '/f')).toEqual({ content: 'héllo', encoding: 'utf8' });
    expect(encodeContent(Buffer.from([0xff, 0x00]), '/f')).toEqual({ content: '/wA=', encoding: 'base64' });
    expect(encodeContent(Buffer.from('hi'), '/f', 'base64')).toEqual({ content: 'aGk=', encoding: 'base64' });
    expect(() => encodeContent(Buffer.from([0xff]), '/f', 'utf8')).toThrow(/not UTF-8/);
  });
});

describe('MCP sessions over HTTP', () => {
  const init = (id = 1) =>
    JSON.stringify({
      jsonrpc: '2.0',
      id,
      method: 'initialize',
      params: { protocolVersion: '2025-06-18', capabilities: {}, clientInfo: { name: 't', version: '1' } },
    });
  const post = (body: string, session?: string) =>
    new Request('http://127.0.0.1/mcp', {
      method: 'POST',
      headers: {
        'content-type': 'application/json',
        accept: 'application/json, text/event-stream',
        ...(session ? { 'mcp-session-id': session, 'mcp-protocol-version': '2025-06-18' } : {}),
      },
      body,
    });

  it('opens a session on initialize, answers it by its id, ends it on DELETE (its sandboxes removed) and 404s it after', async () => {
    const { runtime, boxes } = fakeRuntime();
    const ac = new AbortController();
    const sessions = new McpHttpSessions(runtime, { version: 't', shutdown: ac.signal, maxSessions: 2 });
    const opened = await sessions.handle(post(init()));
    expect(opened.status).toBe(200);
    const id = opened.headers.get('mcp-session-id')!;
    expect(id).toMatch(/^[0-9a-f-]{36}$/);
    await opened.text();
    expect((await sessions.handle(post(JSON.stringify({ jsonrpc: '2.0', method: 'notifications/initialized' }), id))).status).toBe(202);
    const created = await sessions.handle(
      post(JSON.stringify({ jsonrpc: '2.0', id: 2, method: 'tools/call', params: { name: 'sandbox_create', arguments: {} } }), id),
    );
    expect(await created.text()).toContain(`"${MCP_SESSION_LABEL}":"${id}"`);
    expect(boxes.size).toBe(1);
    // No session id, or not initialize first: 400; a full house: 503.
    expect((await sessions.handle(post(JSON.stringify({ jsonrpc: '2.0', id: 3, method: 'tools/list' })))).status).toBe(400);
    expect((await sessions.handle(post('{nope'))).status).toBe(400);
    await (await sessions.handle(post(init()))).text();
    expect(sessions.size).toBe(2);
    expect((await sessions.handle(post(init()))).status).toBe(503);
    const deleted = await sessions.handle(
      new Request('http://127.0.0.1/mcp', { method: 'DELETE', headers: { 'mcp-session-id': id, 'mcp-protocol-version': '2025-06-18' } }),
    );
    expect(deleted.status).toBe(200);
    expect(boxes.size).toBe(0);
    expect((await sessions.handle(post(JSON.stringify({ jsonrpc: '2.0', id: 4, method: 'tools/list' }), id))).status).toBe(404);
    ac.abort();
    await sessions.close();
    expect(sessions.size).toBe(0);
    expect((await sessions.handle(post(init()))).status).toBe(503);
  });

  it('ends a session left idle, with its sandboxes (one with a call running: test/mcp.test.ts)', async () => {
    const { runtime, boxes } = fakeRuntime();
    const sessions = new McpHttpSessions(runtime, { version: 't', shutdown: new AbortController().signal, settings: { sessionIdleMs: 50 } });
    const opened = await sessions.handle(post(init()));
    const id = opened.headers.get('mcp-session-id')!;
    await opened.text();
    await (
      await sessions.handle(post(JSON.stringify({ jsonrpc: '2.0', id: 2, method: 'tools/call', params: { name: 'sandbox_create', arguments: {} } }), id))
    ).text();
    expect(boxes.size).toBe(1);
    await new Promise((r) => setTimeout(r, 200));
    expect(sessions.size).toBe(0);
    expect(boxes.size).toBe(0);
  });
});
