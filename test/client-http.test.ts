import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { apiTokenPath, daemonSocketPath, isRoostError, type RoostEvent, type SandboxInfo } from '@roost/api';
import { RoostClient } from '@roost/client';

/*
 * The client's transport against a scripted HTTP server on a unix socket:
 * wire details (auth, errors, NDJSON and SSE streaming, backpressure,
 * aborts, reconnection) without booting VMs. test/client.test.ts drives the
 * real daemon.
 */

type Handler = (req: http.IncomingMessage, res: http.ServerResponse, body: Buffer) => void | Promise<void>;

const home = mkdtempSync(join(tmpdir(), 'roost-client-http-'));
const socket = daemonSocketPath(home);
const routes = new Map<string, Handler>();
const seen: { method: string; url: string; auth: string | undefined; lastEventId: string | undefined; body: Buffer }[] = [];
let server: http.Server;

const info: SandboxInfo = {
  id: 'abcdefabcdef',
  status: 'running',
  createdAt: new Date().toISOString(),
  cpus: 1,
  memoryMiB: 256,
  diskSizeMiB: 4096,
  detached: false,
  accel: 'tcg',
  pid: 1234,
  env: {},
  labels: {},
  execs: 0,
};

beforeAll(async () => {
  writeFileSync(apiTokenPath(home), 'secret-token\n', { mode: 0o600 });
  routes.set(`GET /v1/sandboxes/${info.id}`, (_req, res) => void res.writeHead(200).end(JSON.stringify(info)));
  server = http.createServer((req, res) => void serveRequest(req, res));
  async function serveRequest(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    const chunks: Buffer[] = [];
    for await (const c of req) chunks.push(c as Buffer);
    const body = Buffer.concat(chunks);
    seen.push({ method: req.method!, url: req.url!, auth: req.headers.authorization, lastEventId: req.headers['last-event-id'] as string | undefined, body });
    const path = req.url!.split('?')[0]!;
    const h = routes.get(`${req.method} ${path}`);
    if (!h) {
      res.writeHead(404, { 'content-type': 'application/json' }).end(JSON.stringify({ error: { code: 'NOT_FOUND', message: `no route ${path}` } }));
      return;
    }
    await h(req, res, body);
  }
  await new Promise<void>((r) => server.listen(socket, r));
});

afterAll(async () => {
  server.closeAllConnections();
  await new Promise((r) => server.close(r));
  rmSync(home, { recursive: true, force: true });
});

const ndjson = (res: http.ServerResponse) => res.writeHead(200, { 'content-type': 'application/x-ndjson' });
const line = (v: unknown) => JSON.stringify(v) + '\n';

describe('RoostClient transport', () => {
  it('says no daemon listens when the socket is missing', async () => {
    const client = new RoostClient({ host: `unix://${join(home, 'nothing.sock')}` });
    const err = await client.list().catch((e: unknown) => e);
    expect(isRoostError(err, 'UNAVAILABLE')).toBe(true);
    expect((err as Error).message).toBe(`no daemon listens at unix://${join(home, 'nothing.sock')} (start one with \`roost serve\`)`);
    await client.close();
  });

  it('sends the home token, rebuilds error codes, and passes list filters as the query', async () => {
    routes.set('GET /v1/sandboxes', (_req, res) => void res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ sandboxes: [info] })));
    routes.set(
      'GET /v1/sandboxes/nope',
      (_req, res) =>
        void res
          .writeHead(404, { 'content-type': 'application/json' })
          .end(JSON.stringify({ error: { code: 'NOT_FOUND', message: 'no sandbox nope', details: { id: 'nope' } } })),
    );
    await using client = new RoostClient({ home });
    expect(await client.list({ status: ['running', 'stopped'], labels: ['team=a', 'x'], image: 'alpine' })).toEqual([info]);
    const last = seen.at(-1)!;
    expect(last.auth).toBe('Bearer secret-token');
    expect(new URLSearchParams(last.url.split('?')[1]).getAll('label')).toEqual(['team=a', 'x']);
    expect(last.url).toContain('status=running%2Cstopped');
    const err = await client.get('nope').catch((e: unknown) => e);
    expect(isRoostError(err, 'NOT_FOUND')).toBe(true);
    expect((err as Error).message).toBe('no sandbox nope');
  });

  it('streams exec output as exact bytes, with pid, exit code and signal', async () => {
    const bytes = Buffer.from([0, 1, 2, 0xff, 0xfe, 0xc3, 0x28, 10]);
    routes.set(`POST /v1/sandboxes/${info.id}/exec`, async (_req, res, body) => {
      const req = JSON.parse(body.toString()) as { encoding: string; stdin?: string; stdinEncoding?: string };
      expect(req.encoding).toBe('base64');
      expect(Buffer.from(req.stdin!, 'base64').toString()).toBe('input');
      ndjson(res);
      const text =
        line({ type: 'started', execId: 'e1', pid: 42 }) +
        line({ type: 'stdout', data: bytes.toString('base64') }) +
        line({ type: 'stderr', data: Buffer.from('warn\n').toString('base64') }) +
        line({ type: 'exit', exitCode: 3, signal: null });
      // Cut the stream at odd places: lines arrive in pieces.
      for (let i = 0; i < text.length; i += 7) {
        res.write(text.slice(i, i + 7));
        await new Promise((r) => setImmediate(r));
      }
      res.end();
    });
    await using client = new RoostClient({ home });
    const sandbox = await client.get(info.id);
    let streamed = '';
    const handle = await sandbox.commands.start('x', { stdin: 'input', onStderr: (t) => void (streamed += t) });
    expect(handle.pid).toBe(42);
    expect(handle.id).toBe('e1');
    const got: Buffer[] = [];
    for await (const c of handle.stdout) got.push(Buffer.from(c));
    expect(Buffer.concat(got)).toEqual(bytes);
    const r = await handle.wait();
    expect(r).toMatchObject({ exitCode: 3, signal: null, stdout: '', stderr: 'warn\n' });
    expect(streamed).toBe('warn\n');
    expect(handle.exited).toBe(true);
  });

  it('pauses the response while nobody reads, so the daemon stops writing', async () => {
    const chunk = Buffer.alloc(64 << 10, 'x').toString('base64');
    let written = 0;
    let blocked = 0;
    routes.set(`POST /v1/sandboxes/${info.id}/exec`, async (_req, res) => {
      ndjson(res);
      res.write(line({ type: 'started', execId: 'e2', pid: 7 }));
      for (let i = 0; i < 320; i++) {
        // 20 MiB in all: far more than the client may hold.
        if (!res.write(line({ type: 'stdout', data: chunk }))) {
          blocked++;
          await new Promise((r) => res.once('drain', r));
        }
        written += 64 << 10;
      }
      res.end(line({ type: 'exit', exitCode: 0, signal: null }));
    });
    await using client = new RoostClient({ home });
    const sandbox = await client.get(info.id);
    const handle = await sandbox.commands.start('yes');
    await new Promise((r) => setTimeout(r, 500));
    // What is in flight is bounded: the client's high-water mark plus socket buffers.
    expect(written).toBeLessThan(4 << 20);
    expect(blocked).toBeGreaterThan(0);
    let total = 0;
    for await (const c of handle.stdout) total += c.length;
    expect(total).toBe(320 * (64 << 10));
    expect((await handle.wait()).exitCode).toBe(0);
  });

  it('aborting a command closes its connection and rejects with ABORTED', async () => {
    let closed!: () => void;
    const serverSawClose = new Promise<void>((r) => (closed = r));
    routes.set(`POST /v1/sandboxes/${info.id}/exec`, (_req, res) => {
      ndjson(res);
      res.write(line({ type: 'started', execId: 'e3', pid: 8 }));
      res.on('close', () => closed());
    });
    await using client = new RoostClient({ home });
    const sandbox = await client.get(info.id);
    const ac = new AbortController();
    const handle = await sandbox.commands.start('sleep 100', { signal: ac.signal });
    setTimeout(() => ac.abort(), 50);
    const err = await handle.wait().catch((e: unknown) => e);
    expect(isRoostError(err, 'ABORTED')).toBe(true);
    await serverSawClose;
    // Already aborted: refused before any request.
    const err2 = await sandbox.commands.run('true', { signal: ac.signal }).catch((e: unknown) => e);
    expect(isRoostError(err2, 'ABORTED')).toBe(true);
  });

  it('sends stdin writes in order (batched while one is in flight), then closes stdin', async () => {
    const received: { data: string; close: boolean }[] = [];
    let finish!: () => void;
    routes.set(`POST /v1/sandboxes/${info.id}/exec`, (_req, res, body) => {
      expect(JSON.parse(body.toString())).toMatchObject({ interactive: true });
      ndjson(res);
      res.write(line({ type: 'started', execId: 'e4', pid: 9 }));
      finish = () => res.end(line({ type: 'exit', exitCode: 0, signal: null }));
    });
    routes.set(`POST /v1/sandboxes/${info.id}/execs/e4/stdin`, async (req, res, body) => {
      await new Promise((r) => setTimeout(r, 20));
      const close = req.url!.includes('close=true');
      received.push({ data: body.toString(), close });
      if (close) finish();
      res.writeHead(204).end();
    });
    const signals: unknown[] = [];
    routes.set(`POST /v1/sandboxes/${info.id}/execs/e4/signal`, (_req, res, body) => {
      signals.push(JSON.parse(body.toString()));
      res.writeHead(204).end();
    });
    await using client = new RoostClient({ home });
    const sandbox = await client.get(info.id);
    const handle = await sandbox.commands.start('cat', { stdin: true });
    const writes = Array.from({ length: 20 }, (_, i) => handle.write(`${i},`));
    handle.closeStdin();
    handle.kill('SIGTERM');
    await Promise.all(writes);
    await handle.wait();
    expect(received.map((r) => r.data).join('')).toBe(Array.from({ length: 20 }, (_, i) => `${i},`).join(''));
    expect(received.length).toBeLessThan(20);
    expect(received.filter((r) => r.close)).toHaveLength(1);
    expect(received.at(-1)!.close).toBe(true);
    expect(signals).toEqual([{ signal: 'SIGTERM' }]);
    await expect(handle.write('late')).rejects.toThrow(/stdin is closed/);
  });

  it('reports a TIMEOUT error event as a TIMEOUT error with the output so far', async () => {
    routes.set(`POST /v1/sandboxes/${info.id}/exec`, (_req, res) => {
      ndjson(res);
      res.write(line({ type: 'started', execId: 'e5', pid: 10 }));
      res.write(line({ type: 'stdout', data: Buffer.from('partial').toString('base64') }));
      res.end(line({ type: 'error', error: { code: 'TIMEOUT', message: 'command "sleep 9" timed out and was killed' } }));
    });
    await using client = new RoostClient({ home });
    const sandbox = await client.get(info.id);
    const err = await sandbox.commands.run('sleep 9', { timeoutMs: 100 }).catch((e: unknown) => e);
    expect(isRoostError(err, 'TIMEOUT')).toBe(true);
    expect((err as { details: unknown }).details).toMatchObject({ stdout: 'partial' });
  });

  it('re-opens a dropped event stream with Last-Event-ID and loses nothing', async () => {
    let connection = 0;
    const event = (id: number): RoostEvent => ({ id, time: new Date().toISOString(), type: 'sandbox.created', sandboxId: info.id, data: {} });
    const sse = (e: RoostEvent) => `id: ${e.id}\nevent: ${e.type}\ndata: ${JSON.stringify(e)}\n\n`;
    routes.set('GET /v1/events', (_req, res) => {
      connection++;
      res.writeHead(200, { 'content-type': 'text/event-stream' });
      res.write('retry: 50\n: connected\n\n');
      if (connection === 1) {
        res.write(sse(event(1)) + sse(event(2)));
        // The daemon goes away mid-stream.
        setTimeout(() => res.socket?.destroy(), 20);
      } else if (connection === 2) {
        // A connection that fails at once.
        res.socket?.destroy();
      } else {
        // The replay overlaps what was seen: the client drops the duplicate.
        res.write(sse(event(2)) + sse(event(3)));
      }
    });
    await using client = new RoostClient({ home });
    const ac = new AbortController();
    const got: number[] = [];
    for await (const e of client.events({ after: 0, signal: ac.signal })) {
      got.push(e.id);
      if (e.id === 3) ac.abort();
    }
    expect(got).toEqual([1, 2, 3]);
    const requests = seen.filter((s) => s.url.startsWith('/v1/events'));
    expect(requests.at(-1)!.lastEventId).toBe('2');
    expect(requests.at(-1)!.url).toContain('after=2');
  });

  it('resumes from the newest id a daemon announces on connect, when following only new events', async () => {
    let connection = 0;
    routes.set('GET /v1/events', (_req, res) => {
      connection++;
      res.writeHead(200, { 'content-type': 'text/event-stream' });
      if (connection === 1) {
        // No events yet for this client, but the daemon says where the log is, then drops.
        res.write('retry: 20\nid: 41\n\n');
        setTimeout(() => res.socket?.destroy(), 20);
      } else {
        res.write(`id: 42\nevent: image.pulled\ndata: ${JSON.stringify({ id: 42, time: new Date().toISOString(), type: 'image.pulled', data: {} })}\n\n`);
      }
    });
    await using client = new RoostClient({ home });
    const ac = new AbortController();
    for await (const e of client.events({ signal: ac.signal })) {
      expect(e.id).toBe(42);
      ac.abort();
    }
    const last = seen.filter((s) => s.url.startsWith('/v1/events')).at(-1)!;
    expect(last.lastEventId).toBe('41');
  });

  it('pulls an image with progress lines and returns the image', async () => {
    routes.set('POST /v1/images/pull', (_req, res) => {
      ndjson(res);
      res.write(line({ type: 'progress', digest: 'sha256:aa', kind: 'layer', completed: 5, total: 10, done: false }));
      res.write(line({ type: 'progress', digest: 'sha256:aa', kind: 'layer', completed: 10, total: 10, done: true }));
      res.end(line({ type: 'done', image: { id: 'sha256:bb', tags: ['x'] } }));
    });
    await using client = new RoostClient({ home });
    const progress: number[] = [];
    const image = await client.images.pull('x', { onProgress: (p) => progress.push(p.current) });
    expect(image).toMatchObject({ id: 'sha256:bb' });
    expect(progress).toEqual([5, 10]);
  });
});
