import { request as httpRequest, type IncomingMessage } from 'node:http';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { MAX_JSON_BODY } from '@roost/api';
import { serve, type ServeHandle } from '@roost/server';
import { ApiClient, validated } from './api-client.js';
import { TestHome } from './helpers.js';

/*
 * The files routes at the HTTP level, every response checked against
 * docs/openapi.json by ApiClient: statuses, raw bodies both ways past the
 * JSON body limit, errors before the first byte as JSON, the error trailer
 * of a download that fails later, the watch's NDJSON lines.
 */

type Json = Record<string, unknown>;

const home = new TestHome();
let daemon: ServeHandle;
let api: ApiClient;
let base: string;

beforeAll(async () => {
  daemon = await serve({ home: home.root });
  api = new ApiClient({ socketPath: daemon.socketPath }, daemon.token);
  await api.openSession();
  const created = await api.post<Json>('/v1/sandboxes', { timeoutMs: 60_000 });
  expect(created.status).toBe(201);
  base = `/v1/sandboxes/${String(created.body.id)}/files`;
});

afterAll(async () => {
  await daemon?.close();
  await home.cleanup();
});

/** More than twice the JSON body limit. */
const content = 'abcdefghij'.repeat(Math.ceil((MAX_JSON_BODY * 2) / 10) + 7);

const q = (params: Record<string, string>) => new URLSearchParams(params).toString();

/** A raw request over the daemon's socket: the response and its whole body, trailers included. */
function raw(
  method: string,
  path: string,
  body?: Buffer | (() => AsyncIterable<Buffer>),
  headers: Record<string, string> = {},
): Promise<{ res: IncomingMessage; body: Buffer; ms: number }> {
  const started = Date.now();
  return new Promise((resolve, reject) => {
    const req = httpRequest({ socketPath: daemon.socketPath, method, path, headers: { authorization: `Bearer ${daemon.token}`, ...headers } });
    req.on('error', reject);
    req.on('response', (res) => {
      const parts: Buffer[] = [];
      res.on('data', (c: Buffer) => parts.push(c));
      res.on('end', () => resolve({ res, body: Buffer.concat(parts), ms: Date.now() - started }));
      res.on('error', reject);
    });
    if (typeof body === 'function') {
      void (async () => {
        for await (const chunk of body()) {
          if (req.destroyed) return;
          if (!req.write(chunk)) await new Promise((r) => req.once('drain', r));
        }
        req.end();
      })().catch(() => {});
    } else req.end(body);
  });
}

describe('the files routes', () => {
  it('PUT and GET .../files/content stream bodies larger than the JSON limit; 201 for a new file, 200 for a replaced one', async () => {
    const put = await api.request<Json>('PUT', `${base}/content?${q({ path: '/tmp/http/big.txt', mode: '416' })}`, {
      raw: content,
      headers: { 'content-type': 'application/octet-stream' },
    });
    expect(put.status).toBe(201);
    expect(put.body).toMatchObject({ path: '/tmp/http/big.txt', type: 'file', size: content.length, mode: 0o640 });
    const again = await api.request<Json>('PUT', `${base}/content?${q({ path: '/tmp/http/big.txt' })}`, { raw: content, chunked: true });
    expect(again.status).toBe(200);
    expect(again.body).toMatchObject({ size: content.length, mode: 0o640 });
    const get = await api.get(`${base}/content?${q({ path: '/tmp/http/big.txt' })}`);
    expect(get.status).toBe(200);
    expect(get.headers['content-type']).toBe('application/octet-stream');
    expect(get.headers.trailer).toBeUndefined(); // announced only to clients that send TE: trailers
    expect(get.text).toBe(content);
    const taken = await api.request<Json>('PUT', `${base}/content?${q({ path: '/tmp/http/big.txt', noReplace: 'true' })}`, { raw: 'x' });
    expect(taken.status).toBe(409);
    expect(taken.body).toMatchObject({ error: { code: 'ALREADY_EXISTS', details: { errno: 'EEXIST', path: '/tmp/http/big.txt' } } });
  });

  it('answers errors before the first byte as JSON, with the status of their code', async () => {
    const missing = await api.get<Json>(`${base}/content?${q({ path: '/nope' })}`);
    expect(missing.status).toBe(404);
    expect(missing.body).toEqual({ error: { code: 'NOT_FOUND', message: expect.any(String), details: { errno: 'ENOENT', path: '/nope' } } });
    const isDir = await api.get<Json>(`${base}/archive?${q({ path: '/nope' })}`);
    expect(isDir.status).toBe(404);
    const denied = await api.get<Json>(`${base}/content?${q({ path: '/tmp/http/big.txt', user: 'nobody' })}`);
    expect(denied.status).toBe(403);
    expect(denied.body).toMatchObject({ error: { code: 'PERMISSION_DENIED', details: { errno: 'EACCES' } } });
    const unknown = await api.get<Json>(`${base}/stat?${q({ path: '/', color: 'red' })}`);
    expect(unknown.status).toBe(400);
    expect(unknown.body).toMatchObject({ error: { code: 'INVALID_ARGUMENT', details: { field: 'color' } } });
    const noPath = await api.get<Json>(`${base}/list`);
    expect(noPath.status).toBe(400);
    expect(noPath.body).toMatchObject({ error: { details: { field: 'path' } } });
    const badBool = await api.get<Json>(`${base}/stat?${q({ path: '/', follow: 'maybe' })}`);
    expect(badBool.status).toBe(400);
    const badMode = await api.request<Json>('PUT', `${base}/content?${q({ path: '/tmp/x', mode: '99999' })}`, { raw: 'x' });
    expect(badMode.status).toBe(400);
    const noSandbox = await api.get<Json>(`/v1/sandboxes/000000000000/files/stat?${q({ path: '/' })}`);
    expect(noSandbox.status).toBe(404);
    expect((noSandbox.body.error as Json).details).toBeUndefined();
  });

  it('stops reading an upload that failed and closes the connection', async () => {
    // 64 MiB would take a while to send: the refusal comes first, and the rest is never read.
    const chunk = Buffer.alloc(1 << 20, 0x61);
    const r = await raw('PUT', `${base}/content?${q({ path: '/root/denied', user: 'nobody' })}`, async function* () {
      for (let i = 0; i < 64; i++) yield chunk;
    });
    expect(r.res.statusCode).toBe(403);
    expect(r.res.headers.connection).toBe('close');
    expect(JSON.parse(r.body.toString())).toMatchObject({ error: { code: 'PERMISSION_DENIED', details: { errno: 'EACCES' } } });
  });

  it('stat, list, mkdir, rename and DELETE', async () => {
    expect((await api.post<Json>(`${base}/mkdir`, { path: '/tmp/http/d/e', mode: 0o700 })).body).toEqual({ created: true });
    expect((await api.post<Json>(`${base}/mkdir`, { path: '/tmp/http/d/e' })).body).toEqual({ created: false });
    expect((await api.post<Json>(`${base}/mkdir`, { path: '/tmp/x', extra: 1 })).status).toBe(400);
    const stat = await api.get<Json>(`${base}/stat?${q({ path: '/tmp/http/d/e' })}`);
    expect(stat.body).toMatchObject({ path: '/tmp/http/d/e', name: 'e', type: 'dir', mode: 0o700 });
    const list = await api.get<{ entries: Json[] }>(`${base}/list?${q({ path: '/tmp/http', depth: '2' })}`);
    expect(list.body.entries.map((e) => e.path)).toEqual(['/tmp/http/big.txt', '/tmp/http/d', '/tmp/http/d/e']);
    const renamed = await api.post<Json>(`${base}/rename`, { from: '/tmp/http/d/e', to: '/tmp/http/f' });
    expect(renamed.body).toMatchObject({ path: '/tmp/http/f', type: 'dir' });
    const del = await api.delete(`${base}?${q({ path: '/tmp/http/d', recursive: 'false' })}`);
    expect(del.status).toBe(204);
    expect((await api.get<Json>(`${base}/stat?${q({ path: '/tmp/http/d' })}`)).status).toBe(404);
    const spaced = '/tmp/http/a name+plus&amp=é';
    expect((await api.request('PUT', `${base}/content?${q({ path: spaced })}`, { raw: 'x' })).status).toBe(201);
    expect((await api.get<Json>(`${base}/stat?${q({ path: spaced })}`)).body).toMatchObject({ path: spaced, name: 'a name+plus&amp=é' });
  });

  it('watches: a ready line, then events, until the client goes', async () => {
    await api.post(`${base}/mkdir`, { path: '/tmp/http/w' });
    const watch = await api.stream('GET', `${base}/watch?${q({ path: '/tmp/http/w' })}`);
    expect(watch.status).toBe(200);
    const lines = watch.lines();
    expect((await lines.next()).value).toEqual({ ready: true });
    await api.post(`${base}/mkdir`, { path: '/tmp/http/w/sub' });
    expect((await lines.next()).value).toEqual({ type: 'create', path: '/tmp/http/w/sub', isDir: true });
    watch.close();
    const missing = await api.stream('GET', `${base}/watch?${q({ path: '/tmp/http/none' })}`);
    expect(missing.status).toBe(404);
  });

  it('archives: GET a tar, PUT it back; a failure after the first bytes comes in the Roost-Error trailer', async () => {
    const tar = await raw('GET', `${base}/archive?${q({ path: '/tmp/http/big.txt' })}`, undefined, { te: 'trailers' });
    expect(tar.res.headers.trailer).toBe('Roost-Error');
    expect(tar.res.statusCode).toBe(200);
    expect(tar.res.headers['content-type']).toBe('application/x-tar');
    expect(tar.res.trailers['roost-error']).toBeUndefined();
    expect(tar.body.length).toBeGreaterThan(MAX_JSON_BODY * 2);
    const put = await raw('PUT', `${base}/archive?${q({ path: '/tmp/http/copy' })}`, tar.body);
    expect(put.res.statusCode).toBe(204);
    const back = await api.get<Json>(`${base}/stat?${q({ path: '/tmp/http/copy/big.txt' })}`);
    expect(back.body).toMatchObject({ size: content.length });

    // Readable first (400 kB), unreadable last: the 200 is out before the agent fails.
    for (const [name, size] of [
      ['a', 400_000],
      ['z', 10],
    ] as const) {
      await api.request('PUT', `${base}/content?${q({ path: `/tmp/http/mixed/${name}`, mode: name === 'z' ? '384' : '420' })}`, { raw: 'm'.repeat(size) });
    }
    const failed = await raw('GET', `${base}/archive?${q({ path: '/tmp/http/mixed', user: 'nobody' })}`, undefined, { te: 'trailers' });
    expect(failed.res.statusCode).toBe(200);
    expect(failed.body.length).toBeGreaterThan(0);
    const trailer = failed.res.trailers['roost-error'];
    expect(trailer).toBeDefined();
    expect(JSON.parse(trailer!)).toMatchObject({
      code: 'PERMISSION_DENIED',
      message: expect.stringMatching(/mixed\/z/),
      details: { errno: 'EACCES', path: '/tmp/http/mixed/z' },
    });
    // A client that did not ask for trailers sees the connection break instead of a clean end.
    const broken = await raw('GET', `${base}/archive?${q({ path: '/tmp/http/mixed', user: 'nobody' })}`).catch((e: unknown) => e);
    expect((broken as Error).message).toMatch(/aborted|socket hang up|ECONNRESET/);
    expect(validated.responses).toBeGreaterThan(10);
  });
});
