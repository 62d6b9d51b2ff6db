import { spawn } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StdioClientTransport } from '@modelcontextprotocol/sdk/client/stdio.js';
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';
import type { CallToolResult, Tool } from '@modelcontextprotocol/sdk/types.js';
import { Ajv } from 'ajv';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { MCP_SESSION_LABEL, type DeploymentInfo, type SandboxInfo } from '@roost/api';
import { RoostClient } from '@roost/client';
import { serve, type ServeHandle } from '@roost/server';
import { buildBusyboxImage, startRegistry, type TestRegistry } from '@roost/testkit';
import { eventually, qemusOf, ROOST_BIN, TestHome } from './helpers.js';

/*
 * The MCP face with real clients: the official SDK's Client over Streamable
 * HTTP against `roost serve` and over stdio against `roost mcp` (embedded,
 * and through the home's daemon), and the MCP Inspector's CLI as a client
 * written by others. Every tool result is checked against the output schema
 * its tool declared.
 */

const TOOL_NAMES = [
  'sandbox_create',
  'sandbox_list',
  'sandbox_get',
  'sandbox_stop',
  'sandbox_remove',
  'sandbox_exec',
  'sandbox_write_file',
  'sandbox_read_file',
  'sandbox_list_files',
  'sandbox_remove_file',
  'sandbox_snapshot',
  'sandbox_fork',
  'sandbox_pause',
  'sandbox_resume',
  'sandbox_logs',
  'sandbox_publish_port',
  'image_pull',
  'image_list',
  'deployment_apply',
  'deployment_list',
  'deployment_get',
  'deployment_scale',
  'deployment_rollback',
  'deployment_remove',
  'actor_deploy',
  'actor_create',
  'actor_send',
  'actor_call',
  'actor_state',
  'actor_list',
  'actor_messages',
  'actor_remove',
];

const OUTPUT_LIMIT = 1024;
const READ_LIMIT = 64 * 1024;
const MAX_SANDBOXES = 3;

const home = new TestHome();
let daemon: ServeHandle;
/** The REST client of the daemon, to look at what the MCP sessions did. */
let rest: RoostClient;
let url: URL;
const clients: Client[] = [];
const ajv = new Ajv({ strict: false, allErrors: true });
let tools: Map<string, Tool>;

/** An SDK client on the daemon's /mcp, with the token (or without, `token: null`). */
async function httpClient(token: string | null = daemon.token): Promise<{ client: Client; transport: StreamableHTTPClientTransport }> {
  const transport = new StreamableHTTPClientTransport(url, token ? { requestInit: { headers: { Authorization: `Bearer ${token}` } } } : {});
  const client = new Client({ name: 'roost-test', version: '1.0.0' });
  await client.connect(transport);
  clients.push(client);
  return { client, transport };
}

/** Calls a tool; a success's structured content is checked against the tool's output schema (as well as by the SDK). */
async function call<T = Record<string, unknown>>(client: Client, name: string, args: Record<string, unknown> = {}): Promise<T> {
  const r = (await client.callTool({ name, arguments: args })) as CallToolResult;
  if (r.isError) throw new Error(`${name} failed: ${JSON.stringify(r.content)}`);
  const validate = ajv.compile(tools.get(name)!.outputSchema!);
  expect(validate(r.structuredContent), `${name}: ${ajv.errorsText(validate.errors)}`).toBe(true);
  expect(JSON.parse((r.content[0] as { text: string }).text)).toEqual(r.structuredContent);
  return r.structuredContent as T;
}

/** The text of a tool call that failed. */
async function failure(client: Client, name: string, args: Record<string, unknown>): Promise<string> {
  const r = (await client.callTool({ name, arguments: args })) as CallToolResult;
  expect(r.isError, JSON.stringify(r)).toBe(true);
  return (r.content[0] as { text: string }).text;
}

beforeAll(async () => {
  daemon = await serve({
    home: home.root,
    tcp: { host: '127.0.0.1', port: 0 },
    mcp: { outputBytes: OUTPUT_LIMIT, readBytes: READ_LIMIT, maxSandboxes: MAX_SANDBOXES },
  });
  url = new URL('/mcp', daemon.url!);
  rest = new RoostClient({ host: daemon.url!, token: daemon.token });
});

afterAll(async () => {
  await Promise.allSettled(clients.map((c) => c.close()));
  await rest?.close();
  await daemon?.close();
  await home.cleanup();
});

describe('MCP over Streamable HTTP (roost serve)', () => {
  let client: Client;
  let transport: StreamableHTTPClientTransport;
  let id: string;

  beforeAll(async () => {
    ({ client, transport } = await httpClient());
    tools = new Map((await client.listTools()).tools.map((t) => [t.name, t]));
  });

  it('answers nothing without the bearer token: 401, and the SDK client cannot connect', async () => {
    const res = await fetch(url, {
      method: 'POST',
      headers: { 'content-type': 'application/json', accept: 'application/json, text/event-stream' },
      body: JSON.stringify({
        jsonrpc: '2.0',
        id: 1,
        method: 'initialize',
        params: { protocolVersion: '2025-06-18', capabilities: {}, clientInfo: { name: 'x', version: '1' } },
      }),
    });
    expect(res.status).toBe(401);
    expect(((await res.json()) as { error: { code: string } }).error.code).toBe('UNAUTHENTICATED');
    await expect(httpClient(null)).rejects.toThrow(/401|Unauthorized|UNAUTHENTICATED/i);
    await expect(httpClient('x'.repeat(40))).rejects.toThrow(/401|Unauthorized|UNAUTHENTICATED/i);
  });

  it('lists the tools, each with a description, input and output schemas and annotations', () => {
    expect([...tools.keys()].sort()).toEqual([...TOOL_NAMES].sort());
    for (const t of tools.values()) {
      expect(t.description!.length, t.name).toBeGreaterThan(40);
      expect(t.title, t.name).toBeTruthy();
      expect(t.inputSchema.type, t.name).toBe('object');
      expect(t.outputSchema?.type, t.name).toBe('object');
      // Both compile as JSON Schema (draft-07, what clients validate with).
      ajv.compile(t.inputSchema);
      ajv.compile(t.outputSchema!);
      expect(t.annotations, t.name).toMatchObject({
        readOnlyHint: expect.any(Boolean),
        destructiveHint: expect.any(Boolean),
        idempotentHint: expect.any(Boolean),
      });
    }
    expect(tools.get('sandbox_list')!.annotations).toMatchObject({ readOnlyHint: true, destructiveHint: false });
    expect(tools.get('sandbox_remove')!.annotations).toMatchObject({ readOnlyHint: false, destructiveHint: true, idempotentHint: true });
  });

  it('creates a sandbox labelled with its session, and runs commands in it: a non-zero exit is a result', async () => {
    const info = await call<SandboxInfo>(client, 'sandbox_create', { env: { GREETING: 'hello' } });
    id = info.id;
    expect(info).toMatchObject({ status: 'running', labels: { [MCP_SESSION_LABEL]: transport.sessionId } });
    const r = await call(client, 'sandbox_exec', { id, command: 'echo "$GREETING"; echo oops >&2; exit 3' });
    expect(r).toEqual({ exitCode: 3, signal: null, stdout: 'hello\n', stderr: 'oops\n', truncated: false, stdoutBytes: 6, stderrBytes: 5 });
    const argv = await call(client, 'sandbox_exec', { id, command: ['sh', '-c', 'pwd; id -u; cat'], cwd: '/tmp', user: '65534', stdin: 'in\n' });
    expect(argv).toMatchObject({ exitCode: 0, stdout: '/tmp\n65534\nin\n' });
  });

  it('cuts output beyond the limit, with the full sizes', async () => {
    const r = await call<{ stdout: string; truncated: boolean; stdoutBytes: number; stderrBytes: number }>(client, 'sandbox_exec', {
      id,
      command: 'head -c 5000 /dev/zero | tr "\\0" a; echo short >&2',
    });
    expect(r).toMatchObject({ truncated: true, stdoutBytes: 5000, stderrBytes: 6 });
    expect(r.stdout).toBe('a'.repeat(OUTPUT_LIMIT));
  });

  it('writes and reads a binary file, and text as text', async () => {
    const bytes = Buffer.from(Array.from({ length: 256 }, (_, i) => i));
    const w = await call(client, 'sandbox_write_file', { id, path: '/root/all.bin', content: bytes.toString('base64'), encoding: 'base64', mode: 0o600 });
    expect(w).toMatchObject({ path: '/root/all.bin', size: 256, mode: 0o600, type: 'file', created: true });
    expect(await call(client, 'sandbox_read_file', { id, path: '/root/all.bin' })).toEqual({
      path: '/root/all.bin',
      content: bytes.toString('base64'),
      encoding: 'base64',
      size: 256,
    });
    await call(client, 'sandbox_write_file', { id, path: '/root/dir/note.txt', content: 'héllo\n' });
    expect(await call(client, 'sandbox_read_file', { id, path: '/root/dir/note.txt' })).toMatchObject({ content: 'héllo\n', encoding: 'utf8', size: 7 });
    expect(await failure(client, 'sandbox_read_file', { id, path: '/root/all.bin', encoding: 'utf8' })).toMatch(/^INVALID_ARGUMENT: .*not UTF-8/);
    expect(await failure(client, 'sandbox_write_file', { id, path: '/root/x', content: 'not base64!', encoding: 'base64' })).toMatch(
      /^INVALID_ARGUMENT: content/,
    );
    // Over the read limit: refused, saying what to do instead.
    await call(client, 'sandbox_exec', { id, command: `head -c ${READ_LIMIT + 1} /dev/zero > /root/big` });
    expect(await failure(client, 'sandbox_read_file', { id, path: '/root/big' })).toMatch(
      /^RESOURCE_EXHAUSTED: \/root\/big is larger than the 65536 bytes.*sandbox_exec/,
    );
    const listed = await call<{ entries: { name: string }[] }>(client, 'sandbox_list_files', { id, path: '/root', depth: 2 });
    expect(listed.entries.map((e) => e.name)).toEqual(expect.arrayContaining(['all.bin', 'big', 'dir', 'note.txt']));
    expect(await call(client, 'sandbox_remove_file', { id, path: '/root/dir' })).toEqual({ path: '/root/dir', removed: true });
    expect(await failure(client, 'sandbox_read_file', { id, path: '/root/dir/note.txt' })).toMatch(/^NOT_FOUND: /);
  });

  it('sends output as progress notifications while a command runs', async () => {
    const progress: { progress: number; message?: string }[] = [];
    const r = (await client.callTool({ name: 'sandbox_exec', arguments: { id, command: 'for i in 1 2 3; do echo line$i; sleep 0.3; done' } }, undefined, {
      onprogress: (p) => progress.push(p),
    })) as CallToolResult;
    expect(r.structuredContent).toMatchObject({ exitCode: 0, stdout: 'line1\nline2\nline3\n' });
    expect(progress.map((p) => p.message).join('')).toBe('stdout: line1\nstdout: line2\nstdout: line3\n');
    expect(progress.map((p) => p.progress)).toEqual([1, 2, 3]);
  });

  it('kills the command when the client cancels the call', async () => {
    const ac = new AbortController();
    const pending = client.callTool({ name: 'sandbox_exec', arguments: { id, command: 'echo $$ > /tmp/long.pid; exec sleep 60' } }, undefined, {
      signal: ac.signal,
    });
    await eventually(async () => (await call<{ exitCode: number }>(client, 'sandbox_exec', { id, command: 'test -s /tmp/long.pid' })).exitCode === 0, 10_000);
    ac.abort();
    await expect(pending).rejects.toThrow(/abort/i);
    await eventually(
      async () => (await call<{ exitCode: number }>(client, 'sandbox_exec', { id, command: 'kill -0 "$(cat /tmp/long.pid)" 2>/dev/null' })).exitCode !== 0,
      10_000,
      'the cancelled command killed',
    );
  });

  it('a failure is a tool result with the error code: a missing sandbox, a bad argument, a timeout', async () => {
    expect(await failure(client, 'sandbox_get', { id: 'ffffffffffff' })).toMatch(/^NOT_FOUND: no sandbox ffffffffffff/);
    expect(await failure(client, 'sandbox_exec', { id })).toMatch(/^INVALID_ARGUMENT: .*command/);
    expect(await failure(client, 'sandbox_create', { cpus: 0 })).toMatch(/^INVALID_ARGUMENT: .*cpus/);
    expect(await failure(client, 'sandbox_create', { nope: 1 })).toMatch(/^INVALID_ARGUMENT: .*nope/);
    expect(await failure(client, 'no_such_tool', {})).toMatch(/^NOT_FOUND: no tool "no_such_tool"/);
    const timedOut = await failure(client, 'sandbox_exec', { id, command: 'echo before; sleep 30', timeoutMs: 500 });
    expect(timedOut).toMatch(/^TIMEOUT: /);
    expect(timedOut).toMatch(/--- stdout \(7 bytes\) ---\nbefore\n/);
    // The session goes on.
    expect(await call(client, 'sandbox_exec', { id, command: 'true' })).toMatchObject({ exitCode: 0 });
  });

  it('applies, lists, gets, scales, rolls back and removes a deployment (no replica: no VM), each result matching its output schema', async () => {
    const applied = await call<DeploymentInfo>(client, 'deployment_apply', {
      yaml: 'name: mcp-web\nreplicas: 0\ncommand: httpd -f -p 8000\nports: ["127.0.0.1::8000"]\nhealth:\n  http: { port: 8000 }\n',
    });
    expect(applied).toMatchObject({ name: 'mcp-web', generation: 1, spec: { replicas: 0, health: { http: { port: 8000, path: '/' } } } });
    expect(applied.ports[0]!.hostPort).toBeGreaterThan(0);
    expect((await call<{ deployments: DeploymentInfo[] }>(client, 'deployment_list')).deployments.map((d) => d.name)).toEqual(['mcp-web']);
    expect(await failure(client, 'deployment_rollback', { name: 'mcp-web' })).toMatch(/^INVALID_STATE: /);
    await call(client, 'deployment_apply', { spec: { name: 'mcp-web', replicas: 0, command: 'httpd -f -p 8001', ports: ['127.0.0.1::8000'] } });
    expect(await call<DeploymentInfo>(client, 'deployment_rollback', { name: 'mcp-web' })).toMatchObject({
      generation: 3,
      spec: { command: 'httpd -f -p 8000' },
    });
    expect(await call<DeploymentInfo>(client, 'deployment_scale', { name: 'mcp-web', replicas: 0 })).toMatchObject({ generation: 3 });
    expect(await call<DeploymentInfo>(client, 'deployment_get', { name: 'mcp-web' })).toMatchObject({ canRollback: true, ports: applied.ports });
    expect(await failure(client, 'deployment_apply', { yaml: 'name: x\ncommand: true\nreplicas: 65\n' })).toMatch(/\nyaml:3: replicas: /);
    expect(await call(client, 'deployment_remove', { name: 'mcp-web' })).toEqual({ name: 'mcp-web', removed: true });
    expect(await failure(client, 'deployment_get', { name: 'mcp-web' })).toMatch(/^NOT_FOUND: no deployment mcp-web/);
    // Deployments are no session's: the REST face sees what the tools did.
    expect(await rest.deployments.list()).toEqual([]);
  });

  it('snapshots, forks, pauses, resumes, publishes a port, reads logs and lists; resources name the live sandboxes', async () => {
    const listed = await call<{ sandboxes: SandboxInfo[] }>(client, 'sandbox_list', { mine: true });
    expect(listed.sandboxes.map((s) => s.id)).toEqual([id]);
    expect((await call<SandboxInfo>(client, 'sandbox_get', { id })).status).toBe('running');
    expect(await call(client, 'sandbox_pause', { id })).toMatchObject({ status: 'paused' });
    expect(await call(client, 'sandbox_resume', { id })).toMatchObject({ status: 'running' });
    const port = await call<{ address: string; guestPort: number }>(client, 'sandbox_publish_port', { id, port: '8000' });
    expect(port.guestPort).toBe(8000);
    expect(port.address).toMatch(/^127\.0\.0\.1:\d+$/);
    const logs = await call<{ text: string; truncated: boolean }>(client, 'sandbox_logs', { id, tail: 5 });
    expect(logs.text.split('\n').length).toBeLessThanOrEqual(6);
    const snap = await call<{ name: string }>(client, 'sandbox_snapshot', { id, name: 'mcp-snap' });
    expect(snap.name).toBe('mcp-snap');
    const forked = await call<{ sandboxes: SandboxInfo[] }>(client, 'sandbox_fork', { id });
    expect(forked.sandboxes).toHaveLength(1);
    const copy = forked.sandboxes[0]!;
    expect(copy.labels[MCP_SESSION_LABEL]).toBe(transport.sessionId);
    expect(await call(client, 'sandbox_exec', { id: copy.id, command: 'cat /root/all.bin | wc -c' })).toMatchObject({ stdout: '256\n' });

    const resources = await client.listResources();
    expect(resources.resources.map((r) => r.uri)).toEqual(expect.arrayContaining([`roost://sandboxes/${id}/logs`, `roost://sandboxes/${copy.id}/logs`]));
    const templates = await client.listResourceTemplates();
    expect(templates.resourceTemplates.map((t) => t.uriTemplate).sort()).toEqual(['roost://sandboxes/{id}/files{+path}', 'roost://sandboxes/{id}/logs']);
    const file = await client.readResource({ uri: `roost://sandboxes/${id}/files/root/all.bin` });
    expect(file.contents[0]).toMatchObject({
      mimeType: 'application/octet-stream',
      blob: Buffer.from(Array.from({ length: 256 }, (_, i) => i)).toString('base64'),
    });
    const dir = await client.readResource({ uri: `roost://sandboxes/${id}/files/root` });
    expect(JSON.parse((dir.contents[0] as { text: string }).text).map((e: { name: string }) => e.name)).toContain('all.bin');
    const log = await client.readResource({ uri: `roost://sandboxes/${id}/logs` });
    expect((log.contents[0] as { text: string }).text.length).toBeGreaterThan(0);
    await expect(client.readResource({ uri: 'roost://sandboxes/ffffffffffff/logs' })).rejects.toThrow(/NOT_FOUND/);

    expect(await call(client, 'sandbox_stop', { id: copy.id })).toMatchObject({ status: 'stopped' });
    expect(await call(client, 'sandbox_remove', { id: copy.id })).toEqual({ id: copy.id, removed: true });

    // A warm pool of that snapshot hands a sandbox over to the session.
    await rest.pools.create({ name: 'mcp-pool', snapshot: 'mcp-snap', size: 1 });
    try {
      await eventually(async () => (await rest.pools.get('mcp-pool')).ready === 1, 30_000, 'the pool filled');
      const pooled = await call<SandboxInfo>(client, 'sandbox_create', { pool: 'mcp-pool' });
      expect(pooled.pool).toEqual({ name: 'mcp-pool', warm: true });
      expect(pooled.labels[MCP_SESSION_LABEL]).toBe(transport.sessionId);
      expect(await call(client, 'sandbox_exec', { id: pooled.id, command: 'cat /root/all.bin | wc -c' })).toMatchObject({ stdout: '256\n' });
      expect(await call(client, 'sandbox_remove', { id: pooled.id })).toEqual({ id: pooled.id, removed: true });
    } finally {
      await rest.pools.remove('mcp-pool');
    }
    await rest.snapshots.remove('mcp-snap');
  });

  it('limits the live sandboxes of a session; kept ones do not count', async () => {
    const made = [await call<SandboxInfo>(client, 'sandbox_create', {}), await call<SandboxInfo>(client, 'sandbox_create', {})];
    expect(await failure(client, 'sandbox_create', {})).toMatch(/^RESOURCE_EXHAUSTED: this MCP session may have 3 sandboxes at once and has 3/);
    const kept = await call<SandboxInfo>(client, 'sandbox_create', { keep: true });
    expect(kept.detached).toBe(true);
    await call(client, 'sandbox_remove', { id: made[1]!.id });
    expect((await call<SandboxInfo>(client, 'sandbox_create', {})).status).toBe('running');
    keptId = kept.id;
  });

  let keptId: string;

  it('one slow call does not hold up another session', async () => {
    const { client: other } = await httpClient();
    const otherBox = await call<SandboxInfo>(other, 'sandbox_create', {});
    const slow = client.callTool({ name: 'sandbox_exec', arguments: { id, command: 'sleep 3; echo slow' } });
    let slowDone = false;
    void slow.then(() => (slowDone = true));
    expect(await call(other, 'sandbox_exec', { id: otherBox.id, command: 'echo quick' })).toMatchObject({ stdout: 'quick\n' });
    expect(slowDone).toBe(false);
    expect(((await slow) as CallToolResult).structuredContent).toMatchObject({ stdout: 'slow\n' });
    await other.close();
  });

  it('ends the session on DELETE: its sandboxes are removed, kept ones stay, and no QEMU of them is left', async () => {
    const session = transport.sessionId!;
    const mine = (await rest.list({ labels: [`${MCP_SESSION_LABEL}=${session}`] })).filter((s) => s.id !== keptId);
    expect(mine.length).toBeGreaterThanOrEqual(2);
    const pids = mine.map((s) => s.pid!);
    await transport.terminateSession();
    await eventually(async () => (await rest.list({ labels: [`${MCP_SESSION_LABEL}=${session}`] })).every((s) => s.id === keptId), 20_000);
    for (const pid of pids) await eventually(() => !processAlive(pid), 10_000, `QEMU ${pid} gone`);
    expect((await rest.get(keptId)).status).toBe('running');
    // The ended session is gone for good: a request naming it is 404.
    const res = await fetch(url, {
      method: 'POST',
      headers: {
        authorization: `Bearer ${daemon.token}`,
        'content-type': 'application/json',
        accept: 'application/json, text/event-stream',
        'mcp-session-id': session,
      },
      body: JSON.stringify({ jsonrpc: '2.0', id: 2, method: 'tools/list' }),
    });
    expect(res.status).toBe(404);
    await (await rest.get(keptId)).remove({ force: true });
  });
});

function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

describe('MCP sessions that end by themselves', () => {
  it('an idle HTTP session ends, with its sandboxes', async () => {
    const idleHome = new TestHome();
    const idle = await serve({ home: idleHome.root, tcp: { host: '127.0.0.1', port: 0 }, mcp: { sessionIdleMs: 1500 } });
    try {
      const transport = new StreamableHTTPClientTransport(new URL('/mcp', idle.url!), { requestInit: { headers: { Authorization: `Bearer ${idle.token}` } } });
      const client = new Client({ name: 'idle', version: '1' });
      await client.connect(transport);
      const r = (await client.callTool({ name: 'sandbox_create', arguments: {} })) as CallToolResult;
      const sid = (r.structuredContent as SandboxInfo).id;
      // A call that runs longer than the idle time keeps the session.
      const long = (await client.callTool({ name: 'sandbox_exec', arguments: { id: sid, command: 'sleep 2.5; echo done' } })) as CallToolResult;
      expect(long.structuredContent).toMatchObject({ stdout: 'done\n' });
      await eventually(() => qemusOf(idleHome.root).length === 0, 15_000, 'the idle session’s sandbox removed');
      await expect(client.callTool({ name: 'sandbox_list', arguments: {} })).rejects.toThrow(/404|session/i);
      await client.close().catch(() => {});
    } finally {
      await idle.close();
      await idleHome.cleanup();
    }
  });
});

describe('roost mcp (stdio)', () => {
  let registry: TestRegistry | undefined;
  let work: string | undefined;

  afterAll(async () => {
    await registry?.stop();
    if (work) await rm(work, { recursive: true, force: true });
  });

  /** An SDK client that starts `roost mcp` with this environment. */
  async function stdioClient(env: NodeJS.ProcessEnv, args: string[] = []): Promise<{ client: Client; transport: StdioClientTransport }> {
    const transport = new StdioClientTransport({
      command: process.execPath,
      args: [ROOST_BIN, 'mcp', ...args],
      env: env as Record<string, string>,
      stderr: 'pipe',
    });
    const client = new Client({ name: 'roost-test-stdio', version: '1.0.0' });
    await client.connect(transport);
    return { client, transport };
  }

  it('embedded: runs the tools on its own runtime, and removes its sandboxes when the client closes stdin', async () => {
    const own = new TestHome();
    try {
      const { client, transport } = await stdioClient(own.env, ['--output-limit', '10']);
      tools ??= new Map((await client.listTools()).tools.map((t) => [t.name, t]));
      const box = await call<SandboxInfo>(client, 'sandbox_create', {});
      expect(await call(client, 'sandbox_exec', { id: box.id, command: 'echo 0123456789abcdef' })).toMatchObject({
        stdout: '0123456789',
        truncated: true,
        stdoutBytes: 17,
      });
      // Pull from a local registry, then list.
      work = await mkdtemp(join(tmpdir(), 'roost-mcp-'));
      const busybox = await buildBusyboxImage(join(work, 'busybox'), { tag: '1' });
      registry = await startRegistry({ auth: 'none' });
      await registry.push(busybox.dir, 'roost/busybox:1');
      const ref = `${registry.host}/roost/busybox:1`;
      const pulled = await call<{ tags: string[]; id: string }>(client, 'image_pull', { reference: ref });
      expect(pulled.tags).toContain(ref);
      expect((await call<{ images: { id: string }[] }>(client, 'image_list')).images.map((i) => i.id)).toContain(pulled.id);
      const pid = transport.pid!;
      await client.close();
      await eventually(() => !processAlive(pid), 15_000, 'roost mcp exited');
      expect(qemusOf(own.root)).toEqual([]);
      const runtime = await own.runtime();
      expect(await runtime.list()).toEqual([]);
    } finally {
      await own.cleanup();
    }
  });

  it('through the home’s daemon: its sandboxes are the daemon’s, removed when the client goes', async () => {
    const { client, transport } = await stdioClient(home.env);
    const box = await call<SandboxInfo>(client, 'sandbox_create', {});
    expect((await rest.get(box.id)).status).toBe('running'); // the daemon's
    const listed = await call<{ sandboxes: SandboxInfo[] }>(client, 'sandbox_list', { mine: true });
    expect(listed.sandboxes.map((s) => s.id)).toEqual([box.id]);
    const pid = transport.pid!;
    await client.close();
    await eventually(() => !processAlive(pid), 15_000, 'roost mcp exited');
    await eventually(() => !processAlive(box.pid!), 15_000, 'its sandbox’s QEMU gone');
    const res = await fetch(new URL(`/v1/sandboxes/${box.id}`, daemon.url!), { headers: { authorization: `Bearer ${daemon.token}` } });
    expect(res.status).toBe(404);
  });

  it('the MCP Inspector’s CLI (an independent client) lists the tools and runs sandbox_exec', async () => {
    const own = new TestHome();
    try {
      const inspector = (args: string[]) =>
        runInspector(['--cli', process.execPath, ROOST_BIN, 'mcp', ...args], own.env).then((r) => {
          expect(r.code, r.stderr).toBe(0);
          return JSON.parse(r.stdout) as Record<string, unknown>;
        });
      const listed = (await inspector(['--method', 'tools/list'])) as { tools: Tool[] };
      expect(listed.tools.map((t) => t.name).sort()).toEqual([...TOOL_NAMES].sort());
      // Each Inspector call is its own session (its own `roost mcp`): the sandbox is kept between them.
      const created = (await inspector(['--method', 'tools/call', '--tool-name', 'sandbox_create', '--tool-arg', 'keep=true'])) as CallToolResult;
      const box = created.structuredContent as SandboxInfo;
      const ran = (await inspector([
        '--method',
        'tools/call',
        '--tool-name',
        'sandbox_exec',
        '--tool-arg',
        `id=${box.id}`,
        '--tool-arg',
        'command=echo from-inspector; exit 7',
      ])) as CallToolResult;
      expect(ran.structuredContent).toMatchObject({ exitCode: 7, stdout: 'from-inspector\n' });
      const removed = (await inspector(['--method', 'tools/call', '--tool-name', 'sandbox_remove', '--tool-arg', `id=${box.id}`])) as CallToolResult;
      expect(removed.structuredContent).toEqual({ id: box.id, removed: true });
      expect(qemusOf(own.root)).toEqual([]);
    } finally {
      await own.cleanup();
    }
  });
});

/** Runs the Inspector's CLI (`mcp-inspector`, @modelcontextprotocol/inspector 0.15.0: the newest that runs on Node 20). */
function runInspector(args: string[], env: NodeJS.ProcessEnv): Promise<{ code: number | null; stdout: string; stderr: string }> {
  const bin = join(import.meta.dirname, '..', 'node_modules', '@modelcontextprotocol', 'inspector', 'cli', 'build', 'cli.js');
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [bin, ...args], { env, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    const timer = setTimeout(() => child.kill('SIGKILL'), 60_000);
    child.on('error', reject);
    child.on('close', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
  });
}
