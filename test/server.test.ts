import { execFile, spawn } from 'node:child_process';
import { readFileSync, statSync, writeFileSync, chmodSync, existsSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { apiTokenPath, MAX_JSON_BODY } from '@roost/api';
import { serve, type ServeHandle } from '@roost/server';
import { buildBusyboxImage, startRegistry, type TestRegistry } from '@roost/testkit';
import { ApiClient, openapi, validated, validateResponse, type StreamResponse } from './api-client.js';
import { alive, eventually, qemusOf, TestHome } from './helpers.js';

const execFileP = promisify(execFile);

type Json = Record<string, unknown>;

/** QEMU processes that belong to a Roost home (their command line names its sandbox directories). */
function qemuProcessesOf(home: string): number[] {
  return qemusOf(home).filter((pid) => alive(pid));
}

/** Reads lines of an exec stream until `until` says stop (inclusive); returns them. */
async function readLines(lines: AsyncGenerator<Json>, until: (l: Json) => boolean): Promise<Json[]> {
  const out: Json[] = [];
  for (;;) {
    const { value, done } = await lines.next();
    if (done) return out;
    out.push(value);
    if (until(value)) return out;
  }
}

const joined = (lines: Json[], type: string) =>
  lines
    .filter((l) => l.type === type)
    .map((l) => l.data as string)
    .join('');

describe('roost serve: the REST API over a real runtime', () => {
  let home: TestHome;
  let daemon: ServeHandle;
  let unix: ApiClient;
  let tcp: ApiClient;
  /** A sandbox shared by the tests below (boots cost about a second each). */
  let id: string;

  beforeAll(async () => {
    home = new TestHome();
    daemon = await serve({ home: home.root, tcp: { port: 0 }, limits: { sseHeartbeatMs: 300 } });
    unix = new ApiClient({ socketPath: daemon.socketPath }, daemon.token);
    tcp = new ApiClient({ url: daemon.url! }, daemon.token);
    // Sandboxes that are not detached belong to a client session (as @roost/client opens one).
    await unix.openSession();
  });

  afterAll(async () => {
    unix?.close();
    tcp?.close();
    await daemon?.close();
    // The daemon's close killed its sandboxes: none may be left.
    if (home) await eventually(() => qemuProcessesOf(home.root).length === 0, 10_000, 'no QEMU process left');
    await home?.cleanup();
  });

  it('listens on a unix socket with mode 0600 and on a loopback TCP port, with a 0600 token made on first start', () => {
    expect(statSync(daemon.socketPath).mode & 0o777).toBe(0o600);
    expect(daemon.socketPath).toBe(join(home.root, 'roost.sock'));
    expect(daemon.url).toMatch(/^http:\/\/127\.0\.0\.1:\d+$/);
    expect(daemon.token).toMatch(/^[0-9a-f]{64}$/);
    expect(readFileSync(apiTokenPath(home.root), 'utf8').trim()).toBe(daemon.token);
    expect(statSync(apiTokenPath(home.root)).mode & 0o777).toBe(0o600);
  });

  it('refuses requests without the token or with a wrong one (401), on both listeners and every route', async () => {
    for (const client of [unix, tcp]) {
      for (const path of ['/v1/health', '/v1/sandboxes', '/metrics', '/v1/no-such-route']) {
        const none = await client.get(path, { token: null });
        expect(none.status).toBe(401);
        expect(none.body).toMatchObject({ error: { code: 'UNAUTHENTICATED' } });
        expect(none.headers['www-authenticate']).toMatch(/^Bearer/);
        const wrong = await client.get(path, { token: 'f'.repeat(64) });
        expect(wrong.status).toBe(401);
        expect(wrong.body).toMatchObject({ error: { code: 'UNAUTHENTICATED', message: expect.stringMatching(/not valid/) } });
      }
      expect((await client.get('/v1/health', { headers: { authorization: `Basic ${daemon.token}` } })).status).toBe(401);
    }
  });

  it('answers health and its OpenAPI document (the committed one)', async () => {
    for (const client of [unix, tcp]) {
      const h = await client.get('/v1/health');
      expect(h.status).toBe(200);
      expect(h.body).toMatchObject({ status: 'ok', home: home.root, pid: process.pid, url: daemon.url });
    }
    const doc = await unix.get('/v1/openapi.json');
    expect(doc.status).toBe(200);
    expect(doc.body).toEqual(openapi);
  });

  it('answers 400 naming the field for invalid JSON, unknown fields, wrong types, oversized bodies and bad parameters', async () => {
    const invalid = await unix.request('POST', '/v1/sandboxes', { raw: '{"cpus": 1,', headers: { 'content-type': 'application/json' } });
    expect(invalid.status).toBe(400);
    expect(invalid.body).toMatchObject({ error: { code: 'INVALID_ARGUMENT', message: expect.stringMatching(/invalid JSON/) } });

    const unknown = await unix.post('/v1/sandboxes', { cpus: 1, colour: 'blue' });
    expect(unknown.status).toBe(400);
    expect(unknown.body).toMatchObject({ error: { code: 'INVALID_ARGUMENT', message: expect.stringContaining('colour'), details: { field: 'colour' } } });

    const wrongType = await tcp.post('/v1/sandboxes', { memoryMiB: 'lots' });
    expect(wrongType.status).toBe(400);
    expect(wrongType.body).toMatchObject({
      error: { code: 'INVALID_ARGUMENT', message: expect.stringContaining('memoryMiB'), details: { field: 'memoryMiB' } },
    });

    const nested = await unix.post('/v1/sandboxes', { env: { A: 1 } });
    expect(nested.status).toBe(400);
    expect(nested.body).toMatchObject({ error: { details: { field: 'env.A' } } });

    // Over the limit, with a length given and chunked (no length): refused either way.
    const big = { env: { A: 'x'.repeat(MAX_JSON_BODY) } };
    for (const chunked of [false, true]) {
      const oversized = await unix.post('/v1/sandboxes', big, { chunked });
      expect(oversized.status).toBe(413);
      expect(oversized.body).toMatchObject({
        error: { code: 'INVALID_ARGUMENT', message: expect.stringMatching(/limit of 1048576 bytes/), details: { maxBytes: MAX_JSON_BODY } },
      });
    }

    // A chunked body under the limit is read whole (the request gets as far as the missing sandbox).
    const chunkedOk = await unix.post('/v1/sandboxes/0123456789ab/exec', { cmd: 'true', env: { A: 'y'.repeat(100_000) } }, { chunked: true });
    expect(chunkedOk.status).toBe(404);

    const execMissing = await unix.post('/v1/sandboxes/0123456789ab/exec', {});
    expect(execMissing.status).toBe(400);
    expect(execMissing.body).toMatchObject({ error: { details: { field: 'cmd' } } });

    const interactiveJson = await unix.post('/v1/sandboxes/0123456789ab/exec', { cmd: 'cat', interactive: true }, { headers: { accept: 'application/json' } });
    expect(interactiveJson.status).toBe(400);
    expect(interactiveJson.body).toMatchObject({ error: { details: { field: 'interactive' } } });

    const badQuery = await unix.get('/v1/sandboxes?colour=blue');
    expect(badQuery.status).toBe(400);
    expect(badQuery.body).toMatchObject({ error: { code: 'INVALID_ARGUMENT', message: expect.stringContaining('colour') } });
    const badStatus = await unix.get('/v1/sandboxes?status=running,sleeping');
    expect(badStatus.status).toBe(400);
    expect(badStatus.body).toMatchObject({ error: { message: expect.stringContaining('sleeping') } });
    expect((await unix.delete('/v1/sandboxes/0123456789ab?force=maybe')).status).toBe(400);
    expect((await unix.get('/v1/events?type=sandbox.exploded')).status).toBe(400);
    expect((await unix.get('/v1/sandboxes/not-an-id')).status).toBe(400);
  });

  it('answers 404 in the same shape for unknown routes, sandboxes and images', async () => {
    const route = await unix.get('/v1/nothing/here');
    expect(route.status).toBe(404);
    expect(route.body).toMatchObject({ error: { code: 'NOT_FOUND', message: expect.stringContaining('/v1/nothing/here') } });
    expect((await unix.request('PUT', '/v1/sandboxes')).status).toBe(404);
    const sandbox = await unix.get('/v1/sandboxes/0123456789ab');
    expect(sandbox.status).toBe(404);
    expect(sandbox.body).toMatchObject({ error: { code: 'NOT_FOUND' } });
    expect((await unix.get(`/v1/images/${encodeURIComponent('127.0.0.1:1/none/such:1')}`)).status).toBe(404);
  });

  it('creates a sandbox (201), gets it and lists it with filters', async () => {
    const created = await unix.post<Json>('/v1/sandboxes', { labels: { team: 'api', tier: 'test' }, env: { GREETING: 'hello' }, timeoutMs: 120_000 });
    expect(created.status).toBe(201);
    expect(created.body).toMatchObject({ status: 'running', labels: { team: 'api', tier: 'test' }, env: { GREETING: 'hello' }, detached: false });
    id = created.body.id as string;
    expect(created.headers.location).toBe(`/v1/sandboxes/${id}`);

    const got = await tcp.get<Json>(`/v1/sandboxes/${id}`);
    expect(got.body).toMatchObject({ id, status: 'running' });
    expect((await unix.get<Json>(`/v1/sandboxes/${id.slice(0, 6)}`)).body.id).toBe(id);

    const ids = async (q: string) => (await unix.get<{ sandboxes: Json[] }>(`/v1/sandboxes${q}`)).body.sandboxes.map((s) => s.id);
    expect(await ids('')).toContain(id);
    expect(await ids('?label=team=api')).toEqual([id]);
    expect(await ids('?label=team=api&label=tier')).toEqual([id]);
    expect(await ids('?label=team=api&label=tier=prod')).toEqual([]);
    expect(await ids('?label=team=other')).toEqual([]);
    expect(await ids('?status=running')).toContain(id);
    expect(await ids('?status=stopped,failed')).not.toContain(id);
  });

  it('runs a command with an NDJSON stream: started, stdout, stderr, exit', async () => {
    const s = await unix.stream('POST', `/v1/sandboxes/${id}/exec`, { body: { cmd: 'echo "$GREETING out"; echo err >&2; exit 3' } });
    expect(s.status).toBe(200);
    expect(s.headers['content-type']).toMatch(/^application\/x-ndjson/);
    const lines: Json[] = [];
    for await (const l of s.lines()) lines.push(l);
    expect(lines[0]).toMatchObject({ type: 'started', execId: expect.any(String), pid: expect.any(Number) });
    expect(joined(lines, 'stdout')).toBe('hello out\n');
    expect(joined(lines, 'stderr')).toBe('err\n');
    expect(lines.at(-1)).toEqual({ type: 'exit', exitCode: 3, signal: null });
  });

  it('decodes UTF-8 across chunk boundaries, or sends base64 when asked', async () => {
    const script = "i=0; while [ $i -lt 4000 ]; do printf 'é€😀'; i=$((i+1)); done";
    const lines = (await unix.post<Json[]>(`/v1/sandboxes/${id}/exec`, { cmd: script }, { headers: { accept: 'application/x-ndjson' } })).body;
    expect(joined(lines, 'stdout')).toBe('é€😀'.repeat(4000));

    const bytes = Buffer.from([0, 1, 2, 0xff, 0xfe, 10]);
    const b64 = (
      await unix.post<Json[]>(`/v1/sandboxes/${id}/exec`, { cmd: 'cat', stdin: bytes.toString('base64'), stdinEncoding: 'base64', encoding: 'base64' })
    ).body;
    expect(Buffer.concat(b64.filter((l) => l.type === 'stdout').map((l) => Buffer.from(l.data as string, 'base64')))).toEqual(bytes);
  });

  it('answers one ExecResult with Accept: application/json, stdin included', async () => {
    const r = await tcp.post<Json>(
      `/v1/sandboxes/${id}/exec`,
      { cmd: ['sh', '-c', 'cat; echo done >&2'], stdin: 'from the request\n' },
      { headers: { accept: 'application/json' } },
    );
    expect(r.status).toBe(200);
    expect(r.body).toEqual({ exitCode: 0, signal: null, stdout: 'from the request\n', stderr: 'done\n' });
    const argv = await unix.post<Json>(`/v1/sandboxes/${id}/exec`, { cmd: 'printf', args: ['%s|', 'a b', 'c'] }, { headers: { accept: 'application/json' } });
    expect(argv.body, JSON.stringify(argv.body)).toMatchObject({ exitCode: 0, stdout: 'a b|c|' });
  });

  it('turns a timeout into a TIMEOUT error (504 in JSON, an error line in the stream)', async () => {
    const json = await unix.post<Json>(
      `/v1/sandboxes/${id}/exec`,
      { cmd: 'echo before; sleep 30', timeoutMs: 500 },
      { headers: { accept: 'application/json' } },
    );
    expect(json.status).toBe(504);
    expect(json.body).toMatchObject({ error: { code: 'TIMEOUT', details: { stdout: 'before\n' } } });
    const stream = (await unix.post<Json[]>(`/v1/sandboxes/${id}/exec`, { cmd: 'sleep 30', timeoutMs: 500 })).body;
    expect(stream[0]).toMatchObject({ type: 'started' });
    expect(stream.at(-1)).toMatchObject({ type: 'error', error: { code: 'TIMEOUT' } });
  });

  it('streams stdin into an interactive command, any size, and closes it on request', async () => {
    const s = await unix.stream('POST', `/v1/sandboxes/${id}/exec`, { body: { cmd: 'cat; echo "[eof]"', interactive: true } });
    const lines = s.lines();
    const started = (await lines.next()).value as Json;
    const execId = started.execId as string;
    const stdin = (raw: string | Buffer, q = '') =>
      tcp.request('POST', `/v1/sandboxes/${id}/execs/${execId}/stdin${q}`, { raw, headers: { 'content-type': 'application/octet-stream' } });
    expect((await stdin('hello\n')).status).toBe(204);
    const echoed = await readLines(lines, (l) => joined([l], 'stdout').includes('hello\n'));
    expect(joined(echoed, 'stdout')).toBe('hello\n');
    // More than a JSON body may be: the stdin route is not bound by MAX_JSON_BODY. The
    // output is read meanwhile: cat cannot take more input while its output is not taken.
    const restP = readLines(lines, (l) => l.type === 'exit' || l.type === 'error');
    const big = Buffer.alloc(3 * MAX_JSON_BODY, 'z');
    expect((await stdin(big)).status).toBe(204);
    expect((await stdin('bye', '?close=true')).status).toBe(204);
    const rest = await restP;
    expect(joined(rest, 'stdout')).toBe('z'.repeat(big.length) + 'bye[eof]\n');
    expect(rest.at(-1)).toEqual({ type: 'exit', exitCode: 0, signal: null });
    // The process is gone: so is its exec id.
    const after = await stdin('late');
    expect(after.status).toBe(404);
    expect(after.body).toMatchObject({ error: { code: 'NOT_FOUND' } });
  });

  it('signals and resizes a running command; unknown exec ids are 404', async () => {
    const s = await unix.stream('POST', `/v1/sandboxes/${id}/exec`, { body: { cmd: 'sleep 1; stty size; exec sleep 1000', interactive: true, pty: true } });
    const lines = s.lines();
    const { execId } = (await lines.next()).value as { execId: string };
    expect((await unix.post(`/v1/sandboxes/${id}/execs/${execId}/resize`, { rows: 40, cols: 100 })).status).toBe(204);
    const sized = await readLines(lines, (l) => joined([l], 'stdout').includes('\n'));
    expect(joined(sized, 'stdout')).toMatch(/40 100/);
    expect((await unix.post(`/v1/sandboxes/${id}/execs/${execId}/signal`, { signal: 'SIGNOPE' })).status).toBe(400);
    expect((await unix.post(`/v1/sandboxes/${id}/execs/${execId}/signal`, { signal: 'SIGTERM', extra: 1 })).status).toBe(400);
    expect((await unix.post(`/v1/sandboxes/${id}/execs/${execId}/signal`, { signal: 'SIGTERM' })).status).toBe(204);
    const end = await readLines(lines, (l) => l.type === 'exit' || l.type === 'error');
    expect(end.at(-1)).toEqual({ type: 'exit', exitCode: 143, signal: 'SIGTERM' });

    for (const [route, body] of [
      ['signal', { signal: 'SIGKILL' }],
      ['resize', { rows: 1, cols: 1 }],
    ] as const) {
      const r = await unix.post(`/v1/sandboxes/${id}/execs/0000000000000000/${route}`, body);
      expect(r.status).toBe(404);
      expect(r.body).toMatchObject({ error: { code: 'NOT_FOUND' } });
    }
    expect((await unix.request('POST', `/v1/sandboxes/${id}/execs/0000000000000000/stdin`, { raw: 'x' })).status).toBe(404);
  });

  it('kills the command when the client disconnects mid-stream', async () => {
    const s = await unix.stream('POST', `/v1/sandboxes/${id}/exec`, { body: { cmd: 'echo up; exec sleep 1000' } });
    const lines = s.lines();
    const started = (await lines.next()).value as { execId: string; pid: number };
    await readLines(lines, (l) => l.type === 'stdout');
    // Not started interactive: its stdin is closed.
    const notInteractive = await unix.request('POST', `/v1/sandboxes/${id}/execs/${started.execId}/stdin`, { raw: 'x' });
    expect(notInteractive.status).toBe(409);
    expect(notInteractive.body).toMatchObject({ error: { code: 'INVALID_STATE', message: expect.stringContaining('interactive') } });
    s.close();
    await eventually(
      async () =>
        (
          await unix.post<Json>(
            `/v1/sandboxes/${id}/exec`,
            { cmd: `kill -0 ${started.pid} 2>/dev/null && echo alive || echo gone` },
            { headers: { accept: 'application/json' } },
          )
        ).body.stdout === 'gone\n',
      10_000,
      'the guest process killed after the client left',
    );
    expect((await unix.post(`/v1/sandboxes/${id}/execs/${started.execId}/signal`, { signal: 'SIGKILL' })).status).toBe(404);
  });

  it('reads output no faster than the client does (backpressure reaches the guest)', async () => {
    const stdoutBytes = async () => (await unix.get<{ execBytes: { stdout: number } }>('/v1/metrics')).body.execBytes.stdout;
    const total = 64 * 1024 * 1024;
    const before = await stdoutBytes();
    // dd writes 64 MiB in about 0.1 s when nothing holds it back.
    const s = await unix.stream('POST', `/v1/sandboxes/${id}/exec`, {
      body: { cmd: `dd if=/dev/zero bs=1M count=${total >> 20} 2>/dev/null`, encoding: 'base64' },
    });
    const lines = s.lines();
    const bytesOf = (l: Json) => (l.type === 'stdout' ? Buffer.byteLength(l.data as string, 'base64') : 0);
    let got = (await readLines(lines, (l) => l.type === 'stdout')).reduce((n, l) => n + bytesOf(l), 0);
    // The client stops reading for a while.
    await new Promise((r) => setTimeout(r, 1500));
    const whilePaused = (await stdoutBytes()) - before;
    // The command's 1 MiB window, the daemon's 64 KiB stream queue and the sockets' buffers: no more.
    expect(whilePaused).toBeLessThan(8 * 1024 * 1024);
    let exit: Json | undefined;
    for (;;) {
      const { value, done } = await lines.next();
      if (done) break;
      if (value.type === 'stdout') got += bytesOf(value);
      else exit = value;
    }
    expect(exit).toEqual({ type: 'exit', exitCode: 0, signal: null });
    expect(got).toBe(total);
    expect((await stdoutBytes()) - before).toBe(total);
  });

  it("serves the console log (tail) and the sandbox's metrics", async () => {
    const all = await unix.get<string>(`/v1/sandboxes/${id}/logs`);
    expect(all.status).toBe(200);
    expect(all.headers['content-type']).toMatch(/^text\/plain/);
    const last = await unix.get<string>(`/v1/sandboxes/${id}/logs?tail=2`);
    expect(last.body.split('\n').filter(Boolean).length).toBeLessThanOrEqual(2);
    expect(all.body.endsWith(last.body)).toBe(true);
    const m = await tcp.get<Json>(`/v1/sandboxes/${id}/metrics`);
    expect(m.body).toMatchObject({ id, status: 'running' });
    expect(m.body.memoryRssBytes as number).toBeGreaterThan(0);
    expect(m.body.execs as number).toBeGreaterThan(5);
  });

  it('serves runtime metrics as JSON and in the Prometheus text format', async () => {
    const json = await unix.get<Json>('/v1/metrics');
    expect(json.body).toMatchObject({ sandboxesCreated: 1, sandboxes: { running: 1 } });
    const prom = await tcp.get<string>('/metrics');
    expect(prom.headers['content-type']).toMatch(/^text\/plain; version=0\.0\.4/);
    const text = prom.body;
    for (const name of [
      'roost_sandboxes_created_total',
      'roost_sandboxes_destroyed_total',
      'roost_execs_total',
      'roost_exec_bytes_total',
      'roost_sandboxes',
      'roost_sandbox_cpu_seconds_total',
      'roost_sandbox_memory_rss_bytes',
      'roost_sandbox_memory_pss_bytes',
      'roost_sandbox_execs_total',
    ]) {
      expect(text).toMatch(new RegExp(`^# HELP ${name} `, 'm'));
      expect(text).toMatch(new RegExp(`^# TYPE ${name} (counter|gauge)$`, 'm'));
    }
    expect(text).toMatch(/^roost_sandboxes_created_total 1$/m);
    expect(text).toMatch(/^roost_sandboxes\{status="running"\} 1$/m);
    expect(text).toMatch(/^roost_exec_bytes_total\{stream="stdout"\} \d+$/m);
    expect(text).toMatch(new RegExp(`^roost_sandbox_cpu_seconds_total\\{sandbox="${id}"\\} [0-9.]+$`, 'm'));
    // Every sample line is `name{labels} value`.
    for (const line of text.split('\n').filter((l) => l && !l.startsWith('#'))) expect(line).toMatch(/^[a-z_]+(\{[a-z]+="[^"]*"\})? -?[0-9.e+-]+$/);
  });

  it('is driven by curl over the unix socket', async () => {
    const curl = async (args: string[]) => {
      const { stdout } = await execFileP('curl', [
        '-sS',
        '--unix-socket',
        daemon.socketPath,
        '-H',
        `Authorization: Bearer ${daemon.token}`,
        '-w',
        '\n@@%{http_code} %{content_type}',
        ...args,
      ]);
      const at = stdout.lastIndexOf('\n@@');
      const [status, contentType] = stdout.slice(at + 3).split(' ');
      return { status: Number(status), contentType: contentType ?? '', text: stdout.slice(0, at) };
    };
    const health = await curl(['http://localhost/v1/health']);
    expect(health.status).toBe(200);
    expect(validateResponse('GET', '/v1/health', health.status, health.contentType, health.text)).toMatchObject({ status: 'ok' });

    const exec = await curl([
      '-N',
      '-X',
      'POST',
      '-H',
      'Content-Type: application/json',
      '-d',
      '{"cmd":"echo from curl"}',
      `http://localhost/v1/sandboxes/${id}/exec`,
    ]);
    const lines = validateResponse('POST', `/v1/sandboxes/${id}/exec`, exec.status, exec.contentType, exec.text) as Json[];
    expect(joined(lines, 'stdout')).toBe('from curl\n');
    expect(lines.at(-1)).toEqual({ type: 'exit', exitCode: 0, signal: null });

    const denied = await curl(['-H', 'Authorization: Bearer nope', 'http://localhost/v1/sandboxes']);
    expect(denied.status).toBe(401);
    validateResponse('GET', '/v1/sandboxes', denied.status, denied.contentType, denied.text);
  });

  it('answers 200 concurrent API calls correctly', async () => {
    const calls = Array.from({ length: 200 }, (_, i) => {
      const client = i % 2 ? unix : tcp;
      switch (i % 4) {
        case 0:
          return client.get<Json>('/v1/health').then((r) => r.status === 200 && r.body.status === 'ok');
        case 1:
          return client
            .get<{ sandboxes: Json[] }>('/v1/sandboxes?label=team=api')
            .then((r) => r.status === 200 && r.body.sandboxes.length === 1 && r.body.sandboxes[0]!.id === id);
        case 2:
          return client.get<Json>(`/v1/sandboxes/${id}`).then((r) => r.status === 200 && r.body.id === id);
        default:
          return client.get<Json>('/v1/sandboxes/0123456789ab').then((r) => r.status === 404);
      }
    });
    const results = await Promise.all(calls);
    expect(results.filter((ok) => !ok)).toEqual([]);
  });

  it('streams events as SSE; a client that reconnects with Last-Event-ID misses nothing and gets nothing twice', async () => {
    /** Runs a command; returns its exec id (its exec.exited event marks where a reader may stop). */
    const run = async (cmd: string) => {
      const lines = (await unix.post<Json[]>(`/v1/sandboxes/${id}/exec`, { cmd })).body;
      return lines[0]!.execId as string;
    };
    const readUntil = async (s: StreamResponse, stop: (e: Json) => boolean) => {
      const out: Json[] = [];
      for await (const e of s.events()) {
        out.push(e.json);
        if (stop(e.json)) break;
      }
      s.close();
      return out;
    };
    const isExit = (execId: string) => (e: Json) => e.type === 'exec.exited' && (e.data as Json).id === execId;

    const mark0 = await run('true');
    // A first client reads part of the history, then drops.
    const first = await unix.stream('GET', '/v1/events?after=0');
    expect(first.headers['content-type']).toMatch(/^text\/event-stream/);
    const seen: Json[] = [];
    for await (const e of first.events()) {
      seen.push(e.json);
      if (seen.length === 3) break;
    }
    first.close();
    // Events happen while it is away.
    await run('echo one');
    const mark = await run('echo two');
    // It comes back where it left.
    const resumed = await readUntil(await tcp.stream('GET', '/v1/events', { headers: { 'last-event-id': String(seen.at(-1)!.id) } }), isExit(mark));
    const everything = await readUntil(await unix.stream('GET', '/v1/events?after=0'), isExit(mark));
    const ids = (l: Json[]) => l.map((e) => e.id as number);
    expect([...ids(seen), ...ids(resumed)]).toEqual(ids(everything));
    expect(new Set(ids(everything)).size).toBe(everything.length);
    expect(everything.some(isExit(mark0))).toBe(true);
    expect(everything.map((e) => e.type)).toEqual(expect.arrayContaining(['sandbox.created', 'sandbox.started', 'exec.started', 'exec.exited']));
    // ?after= does the same as the header.
    const viaQuery = await readUntil(await unix.stream('GET', `/v1/events?after=${seen.at(-1)!.id}`), isExit(mark));
    expect(ids(viaQuery)).toEqual(ids(resumed));

    // Filters: by type and sandbox.
    const filtered = await readUntil(await unix.stream('GET', `/v1/events?after=0&type=exec.exited&sandbox=${id}`), isExit(mark));
    expect(filtered.length).toBeGreaterThan(2);
    for (const e of filtered) expect(e).toMatchObject({ type: 'exec.exited', sandboxId: id });

    // A live-only stream gets heartbeats while idle, then the next event.
    const live = await unix.stream('GET', '/v1/events');
    await new Promise((r) => setTimeout(r, 1000));
    const next = run('echo live');
    const liveEvents = await readUntil(live, (e) => e.type === 'exec.exited');
    await next;
    expect(liveEvents[0]!.id as number).toBeGreaterThan(ids(everything).at(-1)!);
    expect(live.comments).toBeGreaterThanOrEqual(3);
  });

  it('stops, starts, kills and deletes the sandbox', async () => {
    const stopped = await unix.post<Json>(`/v1/sandboxes/${id}/stop`, { timeoutMs: 10_000 });
    expect(stopped.status).toBe(200);
    expect(stopped.body).toMatchObject({ id, status: 'stopped', pid: null });
    const refused = await unix.post<Json>(`/v1/sandboxes/${id}/exec`, { cmd: 'true' });
    expect(refused.status).toBe(409);
    expect(refused.body).toMatchObject({ error: { code: 'INVALID_STATE' } });

    const started = await tcp.post<Json>(`/v1/sandboxes/${id}/start`);
    expect(started.status).toBe(200);
    expect(started.body).toMatchObject({ id, status: 'running', pid: expect.any(Number) });
    const pid = started.body.pid as number;
    expect((await unix.post<Json>(`/v1/sandboxes/${id}/exec`, { cmd: 'echo again' }, { headers: { accept: 'application/json' } })).body).toMatchObject({
      stdout: 'again\n',
    });

    const busy = await unix.delete(`/v1/sandboxes/${id}`);
    expect(busy.status).toBe(409);
    expect(busy.body).toMatchObject({ error: { code: 'INVALID_STATE' } });
    expect((await unix.post(`/v1/sandboxes/${id}/kill`, { now: true })).status).toBe(400);
    const killed = await unix.post<Json>(`/v1/sandboxes/${id}/kill`);
    expect(killed.status).toBe(200);
    expect(killed.body).toMatchObject({ status: 'stopped', pid: null });
    expect(alive(pid)).toBe(false);

    const deleted = await unix.delete(`/v1/sandboxes/${id}`);
    expect(deleted.status).toBe(204);
    expect(deleted.text).toBe('');
    expect((await unix.get(`/v1/sandboxes/${id}`)).status).toBe(404);
    // Create and delete-with-force in one go, for the running case.
    const other = await unix.post<Json>('/v1/sandboxes', { timeoutMs: 120_000 });
    expect(other.status).toBe(201);
    expect((await unix.delete(`/v1/sandboxes/${other.body.id as string}?force=true`)).status).toBe(204);
    expect((await unix.get<Json>('/v1/metrics')).body).toMatchObject({ sandboxesCreated: 2, sandboxesDestroyed: 2 });
  });

  it('checked every response against docs/openapi.json', () => {
    // Not a feature: proof that the checking above happened.
    expect(validated.responses).toBeGreaterThan(300);
    expect(validated.lines).toBeGreaterThan(20);
    expect(validated.events).toBeGreaterThan(10);
  });
});

describe('roost serve: limits', () => {
  let home: TestHome;
  let daemon: ServeHandle;
  let api: ApiClient;

  beforeAll(async () => {
    home = new TestHome();
    daemon = await serve({ home: home.root, limits: { maxConcurrentCreates: 3, maxInFlight: 12 } });
    api = new ApiClient({ socketPath: daemon.socketPath }, daemon.token);
  });

  afterAll(async () => {
    api?.close();
    await daemon?.close();
    await home?.cleanup();
  });

  it('answers 10 concurrent creations with 201 or a clear 429, and leaks no QEMU process', async () => {
    // Detached: this test is about the limits (a session stream would hold one of the 12 slots the next test counts).
    const results = await Promise.all(Array.from({ length: 10 }, () => api.post<Json>('/v1/sandboxes', { detached: true, timeoutMs: 120_000 })));
    const ok = results.filter((r) => r.status === 201);
    const limited = results.filter((r) => r.status === 429);
    expect(ok.length + limited.length).toBe(10);
    expect(ok.length).toBeGreaterThanOrEqual(3);
    expect(limited.length).toBeGreaterThanOrEqual(1);
    for (const r of limited) expect(r.body).toMatchObject({ error: { code: 'RESOURCE_EXHAUSTED', message: expect.stringMatching(/limit is 3/) } });
    const listed = (await api.get<{ sandboxes: Json[] }>('/v1/sandboxes')).body.sandboxes;
    expect(listed.map((s) => s.id).sort()).toEqual(ok.map((r) => r.body.id).sort());
    expect(qemuProcessesOf(home.root).length).toBe(ok.length);
    await Promise.all(ok.map(async (r) => expect((await api.delete(`/v1/sandboxes/${r.body.id as string}?force=true`)).status).toBe(204)));
    await eventually(() => qemuProcessesOf(home.root).length === 0, 10_000, 'no QEMU process left');
    expect((await api.get<{ sandboxes: Json[] }>('/v1/sandboxes')).body.sandboxes).toEqual([]);
  });

  it('answers 503 UNAVAILABLE beyond the requests in flight, streams included', async () => {
    const streams = await Promise.all(Array.from({ length: 12 }, () => api.stream('GET', '/v1/events')));
    const refused = await api.get('/v1/health');
    expect(refused.status).toBe(503);
    expect(refused.body).toMatchObject({ error: { code: 'UNAVAILABLE', details: { maxInFlight: 12 } } });
    expect(refused.headers['retry-after']).toBe('1');
    // A dropped stream gives its slot back.
    streams.pop()!.close();
    await eventually(async () => (await api.get('/v1/health')).status === 200, 5_000, 'a free slot');
    for (const s of streams) s.close();
  });

  it('ends event streams when it closes', async () => {
    const s = await api.stream('GET', '/v1/events');
    const ended = (async () => {
      for await (const e of s.events()) void e;
      return true;
    })();
    await daemon.close();
    expect(await ended).toBe(true);
    expect(() => statSync(daemon.socketPath)).toThrow();
  });
});

describe('roost serve: start-up', () => {
  let home: TestHome;

  beforeAll(() => {
    home = new TestHome();
  });
  afterAll(async () => {
    await home?.cleanup();
  });

  it('reuses its token, refuses one others can read, and refuses no-auth off loopback', async () => {
    const a = await serve({ home: home.root });
    const token = a.token;
    await a.close();
    const b = await serve({ home: home.root });
    expect(b.token).toBe(token);
    await b.close();

    chmodSync(apiTokenPath(home.root), 0o644);
    await expect(serve({ home: home.root })).rejects.toMatchObject({ code: 'INVALID_STATE', message: expect.stringMatching(/chmod 600/) });
    chmodSync(apiTokenPath(home.root), 0o600);

    await expect(serve({ home: home.root, tcp: { host: '0.0.0.0', port: 0 }, noAuth: true })).rejects.toMatchObject({
      code: 'INVALID_ARGUMENT',
      message: expect.stringMatching(/without a token/),
    });
    // A non-loopback address is fine with the token (always required).
    const c = await serve({ home: home.root, tcp: { host: '0.0.0.0', port: 0 } });
    const client = new ApiClient({ url: c.url!.replace('0.0.0.0', '127.0.0.1') }, null);
    expect((await client.get('/v1/health')).status).toBe(401);
    client.close();
    await c.close();
  });

  it('replaces a stale socket file, and refuses a socket someone answers on', async () => {
    const path = join(home.root, 'stale.sock');
    // A socket file nobody listens on: bound by a process that died.
    const py = spawn('python3', ['-c', `import socket; s = socket.socket(socket.AF_UNIX); s.bind(${JSON.stringify(path)})`]);
    await new Promise((r) => py.on('exit', r));
    expect(statSync(path).isSocket()).toBe(true);
    const d = await serve({ home: home.root, socket: path });
    expect(statSync(path).mode & 0o777).toBe(0o600);
    const api = new ApiClient({ socketPath: path }, d.token);
    expect((await api.get('/v1/health')).status).toBe(200);
    api.close();
    // A second daemon on the same socket (another home) is refused: someone answers there.
    const other = new TestHome();
    try {
      await expect(serve({ home: other.root, socket: path })).rejects.toMatchObject({ code: 'UNAVAILABLE', message: expect.stringContaining(path) });
    } finally {
      await other.cleanup();
    }
    // And a second runtime on the same home is refused by the home's lock.
    await expect(serve({ home: home.root, socket: join(home.root, 'x.sock') })).rejects.toMatchObject({ code: 'UNAVAILABLE' });
    await d.close();
    writeFileSync(path, 'not a socket');
    await expect(serve({ home: home.root, socket: path })).rejects.toMatchObject({ code: 'INVALID_ARGUMENT' });
  });
});

describe('roost serve: images', () => {
  let home: TestHome;
  let daemon: ServeHandle;
  let api: ApiClient;
  let registry: TestRegistry;
  let work: string;
  let ref: string;

  beforeAll(async () => {
    home = new TestHome();
    work = await mkdtemp(join(tmpdir(), 'roost-server-images-'));
    const busybox = await buildBusyboxImage(join(work, 'busybox'), { tag: '1' });
    registry = await startRegistry({ auth: 'none' });
    await registry.push(busybox.dir, 'roost/busybox:1');
    ref = `${registry.host}/roost/busybox:1`;
    daemon = await serve({ home: home.root });
    api = new ApiClient({ socketPath: daemon.socketPath }, daemon.token);
    await api.openSession();
  });

  afterAll(async () => {
    api?.close();
    await daemon?.close();
    await registry?.stop();
    await home?.cleanup();
    if (work) await rm(work, { recursive: true, force: true });
  });

  it('pulls with an NDJSON progress stream, lists, inspects, runs and deletes an image', async () => {
    const s = await api.stream('POST', '/v1/images/pull', { body: { reference: ref } });
    expect(s.status).toBe(200);
    const lines: Json[] = [];
    for await (const l of s.lines()) lines.push(l);
    const progress = lines.filter((l) => l.type === 'progress');
    expect(progress.length).toBeGreaterThan(0);
    const done = lines.at(-1)!;
    expect(done).toMatchObject({ type: 'done', image: { tags: [ref], layers: 3 } });
    const image = done.image as Json;
    // Every blob's last progress line says it is done.
    const lastByDigest = new Map(progress.map((p) => [p.digest, p]));
    for (const p of lastByDigest.values()) expect(p).toMatchObject({ done: true });
    expect(lastByDigest.size).toBe(4); // the config and three layers

    expect((await api.get<{ images: Json[] }>('/v1/images')).body.images.map((i) => i.id)).toEqual([image.id]);
    expect((await api.get<Json>(`/v1/images/${encodeURIComponent(ref)}`)).body).toMatchObject({ id: image.id, tags: [ref] });
    // Pulled again, stored layers are not fetched again; JSON when asked.
    const again = await api.post<Json>('/v1/images/pull', { reference: ref }, { headers: { accept: 'application/json' } });
    expect(again.status).toBe(200);
    expect(again.body).toMatchObject({ id: image.id });

    const sb = await api.post<Json>('/v1/sandboxes', { image: ref, pull: 'never', timeoutMs: 120_000 });
    expect(sb.status).toBe(201);
    expect(sb.body).toMatchObject({ image: { reference: ref, id: image.id } });
    const os = await api.post<Json>(`/v1/sandboxes/${sb.body.id as string}/exec`, { cmd: 'cat /etc/os-release' }, { headers: { accept: 'application/json' } });
    expect(os.body.stdout).toMatch(/Roost test image/);
    expect((await api.delete(`/v1/sandboxes/${sb.body.id as string}?force=true`)).status).toBe(204);

    const removed = await api.delete<Json>(`/v1/images/${encodeURIComponent(ref)}`);
    expect(removed.status).toBe(200);
    expect(removed.body).toEqual({ untagged: [ref], deleted: [image.id] });
    expect((await api.get(`/v1/images/${encodeURIComponent(ref)}`)).status).toBe(404);
  });

  it('answers a pull that cannot start with an error status, not a stream', async () => {
    const missing = await api.post<Json>('/v1/images/pull', { reference: `${registry.host}/roost/none-such:1` });
    expect(missing.status).toBe(404);
    expect(missing.headers['content-type']).toMatch(/^application\/json/);
    expect(missing.body).toMatchObject({ error: { code: 'NOT_FOUND', message: expect.stringContaining('none-such') } });
    const bad = await api.post<Json>('/v1/images/pull', { reference: 'UPPER/Case::bad' });
    expect(bad.status).toBe(400);
    expect((await api.post('/v1/images/pull', { ref: 'alpine' })).status).toBe(400);
  });
});

describe('roost serve: the CLI command', () => {
  let home: TestHome;
  beforeAll(() => {
    home = new TestHome();
  });
  afterAll(async () => {
    await home?.cleanup();
  });

  it('runs `roost serve --tcp` until SIGTERM, then shuts down cleanly', async () => {
    const root = join(import.meta.dirname, '..');
    const script = join(home.root, 'serve-cli.mjs');
    writeFileSync(
      script,
      `import { Command } from ${JSON.stringify(join(root, 'node_modules', 'commander', 'esm.mjs'))};
       import { addServeCommand } from ${JSON.stringify(join(root, 'packages', 'cli', 'dist', 'serve.js'))};
       const program = new Command('roost').exitOverride();
       addServeCommand(program);
       await program.parseAsync(process.argv);
       process.stderr.write('serve returned\\n');`,
    );
    const child = spawn(process.execPath, [script, 'serve', '--tcp', '127.0.0.1:0', '--max-sandboxes', '2'], {
      env: home.env,
      stdio: ['ignore', 'ignore', 'pipe'],
    });
    let stderr = '';
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    const exited = new Promise<number | null>((r) => child.on('exit', (code) => r(code)));
    try {
      await eventually(() => /listening on (http:\/\/\S+)/.test(stderr), 30_000, 'the daemon listening').catch((e: Error) => {
        throw new Error(`${e.message}; its stderr:\n${stderr}`);
      });
      const url = /listening on (http:\/\/\S+)/.exec(stderr)![1]!;
      expect(stderr).toContain(`listening on unix://${join(home.root, 'roost.sock')}`);
      const token = readFileSync(apiTokenPath(home.root), 'utf8').trim();
      const api = new ApiClient({ url }, token);
      expect((await api.get('/v1/health')).status).toBe(200);
      api.close();
      child.kill('SIGTERM');
      expect(await exited).toBe(0);
      expect(stderr).toMatch(/SIGTERM, shutting down/);
      expect(stderr).toMatch(/serve returned/);
      expect(existsSync(join(home.root, 'roost.sock'))).toBe(false);
    } finally {
      child.kill('SIGKILL');
    }
  });
});
