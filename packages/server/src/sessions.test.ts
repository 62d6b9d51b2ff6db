import { mkdtemp, rm } from 'node:fs/promises';
import { request, type IncomingMessage, type Server } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createAdaptorServer } from '@hono/node-server';
import type { SandboxInfo } from '@roost/api';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { createApp } from './app.js';
import type { DaemonRuntime, DaemonSandbox } from './daemon-runtime.js';

// Client sessions over real HTTP on a unix socket, against a fake runtime (the
// session logic sits above the runtime: what it asks of it is get, kill and remove).

const GRACE_MS = 150;

interface FakeSandbox {
  info: SandboxInfo;
  calls: string[];
}

/** A runtime whose sandboxes are records in a map; create may be held back to race a session's end. */
class FakeRuntime {
  readonly home = '/nonexistent';
  readonly sandboxes = new Map<string, FakeSandbox>();
  readonly ended: string[] = [];
  hold: Promise<void> | null = null;
  #n = 0;

  async create(options: { detached?: boolean; autoRemove?: boolean }): Promise<DaemonSandbox> {
    await this.hold;
    const id = (++this.#n).toString(16).padStart(12, '0');
    const info = { id, status: 'running', detached: !!options.detached, ...(options.autoRemove ? { autoRemove: true } : {}) } as SandboxInfo;
    this.sandboxes.set(id, { info, calls: [] });
    return this.get(id);
  }

  async get(id: string): Promise<DaemonSandbox> {
    const sb = this.sandboxes.get(id);
    if (!sb) throw Object.assign(new Error(`no sandbox ${id}`), { code: 'NOT_FOUND' });
    const sandboxes = this.sandboxes;
    const ended = this.ended;
    const create = (options: { detached?: boolean }) => this.create(options);
    return {
      id,
      get info() {
        return sb.info;
      },
      async kill() {
        sb.calls.push('kill');
        sb.info = { ...sb.info, status: 'stopped' };
        ended.push(id);
      },
      async remove() {
        sb.calls.push('remove');
        sandboxes.delete(id);
        ended.push(id);
      },
      async fork(options: { count?: number; detached?: boolean }) {
        const copies = [];
        for (let i = 0; i < (options.count ?? 1); i++) copies.push(await create({ detached: options.detached ?? sb.info.detached }));
        return copies;
      },
    } as unknown as DaemonSandbox;
  }
}

/** The parts of JSON answers these tests read. */
interface Body {
  id: string;
  error: { code: string; message: string; details?: Record<string, unknown> };
  sandboxes: { id: string }[];
}

let dir: string;
let socketPath: string;
let runtime: FakeRuntime;
let shutdown: AbortController;
let server: Server;

beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'roost-sessions-'));
  socketPath = join(dir, 'roost.sock');
  runtime = new FakeRuntime();
  shutdown = new AbortController();
  const app = createApp({
    runtime: runtime as unknown as DaemonRuntime,
    token: null,
    version: 'test',
    limits: { sessionGraceMs: GRACE_MS, sessionKeepaliveMs: 30 },
    shutdown: shutdown.signal,
  });
  server = createAdaptorServer({ fetch: app.fetch }) as Server;
  await new Promise<void>((r) => server.listen(socketPath, r));
});

afterEach(async () => {
  shutdown.abort();
  server.closeAllConnections();
  await new Promise((r) => server.close(r));
  await rm(dir, { recursive: true, force: true });
});

function send(method: string, path: string, options: { json?: unknown; headers?: Record<string, string> } = {}): Promise<IncomingMessage> {
  return new Promise((resolve, reject) => {
    const body = options.json === undefined ? undefined : JSON.stringify(options.json);
    const req = request({
      socketPath,
      method,
      path,
      headers: { ...options.headers, ...(body ? { 'content-type': 'application/json', 'content-length': String(Buffer.byteLength(body)) } : {}) },
    });
    req.on('response', resolve).on('error', reject);
    req.end(body);
  });
}

async function call(method: string, path: string, options: { json?: unknown; headers?: Record<string, string> } = {}): Promise<{ status: number; body: Body }> {
  const res = await send(method, path, options);
  let text = '';
  for await (const c of res) text += (c as Buffer).toString();
  return { status: res.statusCode!, body: text ? JSON.parse(text) : undefined };
}

/** Opens (or resumes) a session; `lines` collects what its stream sends, `drop()` cuts the connection as a killed process would. */
async function openSession(resume?: string): Promise<{ id: string; lines: unknown[]; drop: () => void; res: IncomingMessage }> {
  const res = await send('POST', '/v1/sessions', resume ? { headers: { 'roost-session': resume } } : {});
  expect(res.statusCode).toBe(200);
  expect(res.headers['content-type']).toMatch(/application\/x-ndjson/);
  const lines: unknown[] = [];
  let buf = '';
  let first: (id: string) => void;
  const id = new Promise<string>((r) => (first = r));
  res.on('data', (c: Buffer) => {
    buf += c.toString();
    for (let nl = buf.indexOf('\n'); nl >= 0; nl = buf.indexOf('\n')) {
      const line = JSON.parse(buf.slice(0, nl)) as { id: string };
      buf = buf.slice(nl + 1);
      lines.push(line);
      first(line.id);
    }
  });
  return { id: await id, lines, res, drop: () => res.socket.destroy() };
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

describe('client sessions', () => {
  it('refuses a sandbox that is not detached without a session, naming the header; a detached one needs none', async () => {
    const refused = await call('POST', '/v1/sandboxes', { json: {} });
    expect(refused.status).toBe(400);
    expect(refused.body.error).toMatchObject({ code: 'INVALID_ARGUMENT', details: { field: 'Roost-Session' } });
    expect(refused.body.error.message).toMatch(/Roost-Session header.*POST \/v1\/sessions.*"detached": true/);
    expect(runtime.sandboxes.size).toBe(0);
    expect((await call('POST', '/v1/sandboxes', { json: { detached: true } })).status).toBe(201);
    // Bad bodies are still reported as such first.
    expect((await call('POST', '/v1/sandboxes', { json: { colour: 'blue' } })).body.error.message).toMatch(/colour/);
    const unknown = await call('POST', '/v1/sandboxes', { json: {}, headers: { 'roost-session': 'a'.repeat(32) } });
    expect(unknown).toMatchObject({ status: 404, body: { error: { code: 'NOT_FOUND' } } });
    const malformed = await call('POST', '/v1/sandboxes', { json: {}, headers: { 'roost-session': 'nope' } });
    expect(malformed).toMatchObject({ status: 400, body: { error: { code: 'INVALID_ARGUMENT' } } });
  });

  it('names the session first, then keeps the stream alive with the same line', async () => {
    const s = await openSession();
    expect(s.id).toMatch(/^[0-9a-f]{32}$/);
    await sleep(100);
    expect(s.lines.length).toBeGreaterThan(1);
    for (const line of s.lines) expect(line).toEqual({ id: s.id, graceMs: GRACE_MS, keepaliveMs: 30 });
    s.drop();
  });

  it("ends the session's sandboxes a grace period after its connection is cut: killed, or removed with autoRemove; detached ones untouched", async () => {
    const s = await openSession();
    const headers = { 'roost-session': s.id };
    const plain = (await call('POST', '/v1/sandboxes', { json: {}, headers })).body.id as string;
    const removable = (await call('POST', '/v1/sandboxes', { json: { autoRemove: true }, headers })).body.id as string;
    const detached = (await call('POST', '/v1/sandboxes', { json: { detached: true }, headers })).body.id as string;
    s.drop();
    await sleep(GRACE_MS / 2);
    expect(runtime.ended).toEqual([]);
    await sleep(GRACE_MS);
    expect(runtime.ended.sort()).toEqual([plain, removable].sort());
    expect(runtime.sandboxes.get(plain)!.calls).toEqual(['kill']);
    expect(runtime.sandboxes.has(removable)).toBe(false);
    expect(runtime.sandboxes.get(detached)!.calls).toEqual([]);
    // The session is over: resuming it, or creating in it, is 404.
    expect((await send('POST', '/v1/sessions', { headers })).statusCode).toBe(404);
    expect((await call('POST', '/v1/sandboxes', { json: {}, headers })).status).toBe(404);
  });

  it('keeps the sandboxes of a session resumed within the grace period; DELETE ends it at once', async () => {
    const s = await openSession();
    const headers = { 'roost-session': s.id };
    const id = (await call('POST', '/v1/sandboxes', { json: {}, headers })).body.id as string;
    s.drop();
    await sleep(GRACE_MS / 3);
    const again = await openSession(s.id);
    expect(again.id).toBe(s.id);
    await sleep(GRACE_MS * 2);
    expect(runtime.ended).toEqual([]);
    // Forks that are not detached join the session of their source when the request names none.
    const fork = await call('POST', `/v1/sandboxes/${id}/fork`, { json: { count: 1 } });
    expect(fork.status).toBe(201);
    const copy = fork.body.sandboxes[0]!.id;
    expect((await call('DELETE', `/v1/sessions/${s.id}`)).status).toBe(204);
    expect(runtime.ended.sort()).toEqual([id, copy].sort());
    expect((await call('DELETE', `/v1/sessions/${s.id}`)).status).toBe(404);
    again.drop();
  });

  it('ends a sandbox whose create finished after its session ended, and says so', async () => {
    const s = await openSession();
    let release!: () => void;
    runtime.hold = new Promise((r) => (release = r));
    const creating = call('POST', '/v1/sandboxes', { json: {}, headers: { 'roost-session': s.id } });
    await sleep(20);
    expect((await call('DELETE', `/v1/sessions/${s.id}`)).status).toBe(204);
    release();
    const r = await creating;
    expect(r).toMatchObject({ status: 404, body: { error: { code: 'NOT_FOUND', message: expect.stringMatching(/ended while sandbox/) } } });
    expect(runtime.ended).toHaveLength(1);
    s.drop();
  });

  it('leaves the sandboxes to the runtime when the daemon shuts down (its close ends them)', async () => {
    const s = await openSession();
    await call('POST', '/v1/sandboxes', { json: {}, headers: { 'roost-session': s.id } });
    const closed = new Promise((r) => s.res.once('close', r));
    shutdown.abort();
    await closed;
    await sleep(GRACE_MS * 2);
    expect(runtime.ended).toEqual([]);
  });
});
